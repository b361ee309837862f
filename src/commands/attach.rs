//! `berth attach` (and the terminal of `berth run -it`): the caller's terminal on a running
//! `tty: true` container's pty, through the supervisor that holds its master (see
//! `supervisor/attach.rs`), relayed by `tty.rs`. Without a tty, as docker attach does: the
//! container's output from now on, read from its log as the supervisor writes it (its stdout
//! on the CLI's stdout, its stderr on the CLI's stderr), the caller's stdin into a
//! `stdin_open: true` container's stdin FIFO (no detach keys: docker looks for them on a tty
//! only), the caller's signals sent on to the container (`--sig-proxy`), and its exit code as
//! the CLI's. And `berth create`: `up --no-start`.

use anyhow::{bail, Context};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};

use crate::cli::{AttachArgs, CreateArgs, ProjectOpts, UpArgs};
use crate::commands::tty::{self, Outcome};
use crate::paths::Paths;
use crate::state::{ContainerRecord, ProjectState, Status};
use crate::supervisor::client::Client;

/// Relay the caller's terminal to container `name`'s pty until it ends, the detach keys, or
/// a signal. `mask`: from `tty::block_signals`, taken before any thread was made.
pub fn attach_terminal(
    paths: &Paths,
    project: &str,
    name: &str,
    detach_keys: &[u8],
    stdin: bool,
    mask: &SigSet,
) -> anyhow::Result<Outcome> {
    let client = Client::connect(paths, project)
        .context("no supervisor runs for this project (berth up first)")?;
    let (conn, master) = client.attach(name)?;
    tty::relay(
        mask,
        conn.as_fd(),
        master.as_fd(),
        detach_keys,
        stdin,
        &mut || false,
    )
}

/// `berth attach SERVICE`.
pub fn attach(p: &ProjectOpts, args: &AttachArgs) -> anyhow::Result<u8> {
    let paths = Paths::from_env();
    let project = crate::commands::project_name(p)?;
    let st = ProjectState::load(&paths, &project)?
        .ok_or_else(|| anyhow::anyhow!("no such project: {project}"))?;
    let c = crate::commands::inspect::replica(&st.containers, &args.service, args.index)?;
    if crate::commands::ps::live_status(c) != Status::Running {
        bail!("container {} is not running", c.name);
    }
    // Checked with or without a tty (docker's daemon refuses invalid keys either way).
    let keys = tty::parse_detach_keys(
        args.detach_keys
            .as_deref()
            .unwrap_or(tty::DEFAULT_DETACH_KEYS),
    )?;
    if !crate::engine::container::bundle_terminal(&c.dir) {
        // Without a tty the keys are not looked for: docker applies them to a tty only (the
        // CLI wraps stdin in its escape proxy only for a tty, and so does the daemon), so the
        // bytes reach the container's stdin like any other.
        return attach_plain(&paths, &project, c, args);
    }
    let mask = tty::block_signals()?;
    // --sig-proxy: a tty container gets the caller's signals as keys (^C is a byte on the
    // pty in raw mode), as with docker attach; the flag is accepted for compose's scripts.
    let _ = args.sig_proxy;
    match attach_terminal(&paths, &project, &c.name, &keys, !args.no_stdin, &mask)? {
        Outcome::Detached => {
            eprintln!("read escape sequence");
            Ok(0)
        }
        Outcome::Signal(s) => Ok((128 + s).clamp(0, 255) as u8),
        Outcome::Exited => {
            if !Client::answers(&paths, &project) {
                bail!(
                    "the supervisor went away while attached; {} runs on (attach again)",
                    c.name
                );
            }
            // docker attach returns the container's exit code.
            match wait_exit(&paths, &project, &c.name) {
                Some(code) => Ok(code),
                None => bail!("the terminal of {} closed, yet it has not exited", c.name),
            }
        }
    }
}

/// Signals `attach` without a tty passes on to the container (`--sig-proxy`, Docker's set
/// without the ones that stop or kill the CLI itself, SIGCHLD and SIGWINCH). Blocked in every
/// thread and read from a signalfd.
const PROXIED: [Signal; 8] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
    Signal::SIGWINCH,
];

/// `berth attach` to a container without a tty: its output from now on until it exits (its
/// stdout on ours, its stderr on ours, as docker attach keeps them apart without a tty), the
/// caller's stdin written into its stdin when it has `stdin_open: true` (unless `--no-stdin`),
/// and with `--sig-proxy` (the default) the signals the CLI receives sent to its main process
/// (a third SIGINT ends the CLI, for a process that ignores them); without, a SIGINT or
/// SIGTERM leaves it running and ends the CLI. The container's exit code is the CLI's.
fn attach_plain(
    paths: &Paths,
    project: &str,
    c: &ContainerRecord,
    args: &AttachArgs,
) -> anyhow::Result<u8> {
    use std::os::fd::AsRawFd;
    // Before any thread: every thread inherits the mask, the signalfd sees them all.
    let mut mask = SigSet::empty();
    for s in PROXIED {
        mask.add(s);
    }
    mask.thread_block().context("blocking signals")?;
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
    let Some(pid) = c.pid else {
        bail!("container {} is not running", c.name);
    };
    // The pidfd first, then the check: it then surely names the recorded run.
    let pidfd = crate::engine::proc::pidfd_open(pid)
        .ok()
        .filter(|_| crate::state::pid_matches(pid, c.pid_start))
        .ok_or_else(|| anyhow::anyhow!("container {} is not running", c.name))?;
    let mut tail = StreamTail::at_end(crate::logs::log_path(&paths.project(project), &c.name));
    let pump = |tail: &mut StreamTail| -> anyhow::Result<bool> {
        tail.pump(&mut std::io::stdout().lock(), &mut std::io::stderr().lock())
            .context("showing the container's output")
    };
    if !args.no_stdin {
        forward_stdin(paths, project, &c.name)?;
    }
    let sig_proxy = args.sig_proxy.unwrap_or(true);
    let mut interrupts = 0;
    loop {
        // Output first, then wait for a signal, the container's end, or the next look (at
        // once when there was output: a chatty container must not starve the signals).
        let shown = pump(&mut tail)?;
        let mut fds = [
            libc::pollfd {
                fd: sfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let wait = if shown { 0 } else { 100 };
        // SAFETY: two pollfds we own; bounded wait, the log is looked at again after it.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, wait) };
        while let Ok(Some(info)) = sfd.read_signal() {
            let sig = info.ssi_signo as i32;
            if sig == libc::SIGWINCH {
                continue;
            }
            if sig_proxy {
                // A container that is gone meanwhile: its end is seen below.
                let _ = crate::engine::proc::pidfd_send_signal(&pidfd, sig);
                // A process that ignores SIGINT (a pid 1 without a handler does) would keep a
                // user who types ^C attached for good: the third one leaves it running.
                if sig == libc::SIGINT {
                    interrupts += 1;
                    if interrupts >= 3 {
                        eprintln!("{} ignores SIGINT: leaving it running", c.name);
                        return Ok(130);
                    }
                }
            } else if sig == libc::SIGINT || sig == libc::SIGTERM || sig == libc::SIGHUP {
                return Ok((128 + sig).clamp(0, 255) as u8);
            }
        }
        if fds[1].revents & libc::POLLIN != 0 {
            break;
        }
    }
    // Its run ended: the supervisor records the exit once its output is all in the log.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let s = ProjectState::load(paths, project)?;
        let rec = s.as_ref().and_then(|s| s.container(&c.name));
        let ended = match rec {
            // Removed meanwhile (down): no code is kept.
            None => Some(0),
            Some(r) if r.status == Status::Exited => Some(r.exit_code.unwrap_or(0)),
            // Restarted by its policy already: that run's code is not kept.
            Some(r) if r.pid != Some(pid) && r.status == Status::Running => Some(0),
            Some(_) => None,
        };
        pump(&mut tail)?;
        if let Some(code) = ended {
            return Ok(code.clamp(0, 255) as u8);
        }
        if std::time::Instant::now() > deadline {
            bail!("{} ended, yet its record says it has not exited", c.name);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Follows one container's log from where it ends when made, and writes each new line to the
/// stream it came from: stdout lines to `out`, stderr lines to `err`. It keeps the file open:
/// a rotation (a rename, see `logs::LogWriter`) shows as another inode at the path, and the
/// old file is read to its end before the new one is taken; a truncation in place (max-file
/// 1) as a size below what was read.
struct StreamTail {
    path: std::path::PathBuf,
    /// The open log file and its inode.
    file: Option<(std::fs::File, u64)>,
    /// How far `file` is read.
    pos: u64,
    /// The start of a line whose end is not written yet.
    partial: Vec<u8>,
}

impl StreamTail {
    fn at_end(path: std::path::PathBuf) -> StreamTail {
        use std::os::unix::fs::MetadataExt;
        let mut t = StreamTail {
            path,
            file: None,
            pos: 0,
            partial: Vec::new(),
        };
        if let Ok(f) = std::fs::File::open(&t.path) {
            if let Ok(m) = f.metadata() {
                t.pos = m.len();
                t.file = Some((f, m.ino()));
            }
        }
        t
    }

    /// Write the lines logged since the last call, each to its stream; whether there were any.
    fn pump(&mut self, out: &mut dyn Write, err: &mut dyn Write) -> std::io::Result<bool> {
        use std::io::{Read, Seek, SeekFrom};
        use std::os::unix::fs::MetadataExt;
        let (mut to_out, mut to_err) = (Vec::new(), Vec::new());
        // Bounded: one rotation seen per call at most is followed at once.
        for _ in 0..2 {
            if self.file.is_none() {
                match std::fs::File::open(&self.path) {
                    Ok(f) => {
                        let ino = f.metadata()?.ino();
                        self.file = Some((f, ino));
                        self.pos = 0;
                        self.partial.clear();
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) => return Err(e),
                }
            }
            let Some((f, ino)) = self.file.as_mut() else {
                break;
            };
            // The path first, then the read: a rotated file is written no more once renamed,
            // so reading it to its end after seeing the rename misses nothing.
            let rotated = std::fs::metadata(&self.path).is_ok_and(|m| m.ino() != *ino);
            if f.metadata()?.len() < self.pos {
                self.pos = 0;
                self.partial.clear();
            }
            f.seek(SeekFrom::Start(self.pos))?;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match f.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                self.pos += n as u64;
                self.partial.extend_from_slice(&buf[..n]);
                route_lines(&mut self.partial, &mut to_out, &mut to_err);
            }
            if !rotated {
                break;
            }
            self.file = None;
        }
        if !to_out.is_empty() {
            out.write_all(&to_out)?;
            out.flush()?;
        }
        if !to_err.is_empty() {
            err.write_all(&to_err)?;
            err.flush()?;
        }
        Ok(!to_out.is_empty() || !to_err.is_empty())
    }
}

/// Take the complete log lines off the front of `pending` and append each one's text (with
/// its newline) to `out` or `err` by its stream; a partial last line stays in `pending`.
fn route_lines(pending: &mut Vec<u8>, out: &mut Vec<u8>, err: &mut Vec<u8>) {
    let Some(last) = pending.iter().rposition(|&b| b == b'\n') else {
        return;
    };
    for line in pending[..last].split(|&b| b == b'\n') {
        let Ok(l) = serde_json::from_slice::<crate::logs::LogLine>(line) else {
            continue;
        };
        let to = if l.s == "stderr" {
            &mut *err
        } else {
            &mut *out
        };
        to.extend_from_slice(l.l.as_bytes());
        to.push(b'\n');
    }
    pending.drain(..=last);
}

/// Write the caller's stdin into the stdin FIFO of container `name` (a `stdin_open: true` one)
/// from a thread of its own, until the caller's input ends; the container does not see that
/// end (docker attach's `stdin_open` without `stdin_once`). A container without one is told.
fn forward_stdin(paths: &Paths, project: &str, name: &str) -> anyhow::Result<()> {
    let path = crate::engine::io::io_dir(&paths.project_run(project)).join(format!("{name}.stdin"));
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // Non-blocking: opening a FIFO for writing must not wait for a reader (the container holds
    // one; without it, ENXIO).
    // SAFETY: a NUL-terminated path; returns a new fd or -1.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENXIO)) {
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                eprintln!("{name} has no tty nor stdin_open: showing its output; stdin is not forwarded to it");
            }
            return Ok(());
        }
        return Err(e).with_context(|| format!("opening {}", path.display()));
    }
    // SAFETY: the kernel just made it ours.
    let mut fifo =
        std::fs::File::from(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    // SAFETY: fcntl on an fd we own: writes block while the container does not read.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK);
    }
    std::thread::spawn(move || {
        // A write after the container is gone gets EPIPE, not a SIGPIPE that kills the CLI.
        let mut set = SigSet::empty();
        set.add(Signal::SIGPIPE);
        let _ = set.thread_block();
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut fifo);
    });
    Ok(())
}

/// The exit code of container `name` once its record says it exited (bounded: 10 s).
pub fn wait_exit(paths: &Paths, project: &str, name: &str) -> Option<u8> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let st = ProjectState::load(paths, project).ok().flatten()?;
        let c = st.container(name)?;
        if c.status == Status::Exited {
            return Some(c.exit_code.unwrap_or(0).clamp(0, 255) as u8);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `berth create`: `up --no-start` (containers made, not started; `start` starts them).
pub fn create(p: &ProjectOpts, args: &CreateArgs) -> anyhow::Result<u8> {
    crate::commands::up::run(p, &as_up(args))
}

/// The `up` that `create` is (also what `create --dry-run` shows).
pub fn as_up(args: &CreateArgs) -> UpArgs {
    UpArgs {
        detach: true,
        no_start: true,
        services: args.services.clone(),
        scale: args.scale.clone(),
        force_recreate: args.force_recreate,
        no_recreate: args.no_recreate,
        pull: args.pull.clone(),
        quiet_pull: args.quiet_pull,
        remove_orphans: args.remove_orphans,
        yes: args.yes,
        build: args.build,
        no_build: args.no_build,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::LogWriter;
    use std::time::SystemTime;

    fn pump(t: &mut StreamTail) -> (String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        t.pump(&mut out, &mut err).unwrap();
        (
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[test]
    fn each_line_goes_to_its_own_stream_from_the_end_on() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.log");
        let mut w = LogWriter::open(&p, None, 1).unwrap();
        w.write_lines("stdout", &[b"before"], SystemTime::now())
            .unwrap();
        let mut t = StreamTail::at_end(p.clone());
        assert_eq!(pump(&mut t), (String::new(), String::new()));
        w.write_lines("stdout", &[b"out-1", b"out-2"], SystemTime::now())
            .unwrap();
        w.write_lines("stderr", &[b"err-1"], SystemTime::now())
            .unwrap();
        w.write_lines("stdout", &[b"out-3"], SystemTime::now())
            .unwrap();
        assert_eq!(
            pump(&mut t),
            ("out-1\nout-2\nout-3\n".into(), "err-1\n".into())
        );
        // Nothing new: nothing shown, and says so.
        let (mut o, mut e) = (Vec::new(), Vec::new());
        assert!(!t.pump(&mut o, &mut e).unwrap());
    }

    #[test]
    fn a_line_half_written_waits_for_its_end() {
        let mut pending = br#"{"t":"x","s":"stderr","l":"whole"}
{"t":"x","s":"stdout","l":"ha"#
            .to_vec();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        route_lines(&mut pending, &mut out, &mut err);
        assert_eq!(
            (out.as_slice(), err.as_slice()),
            (&b""[..], &b"whole\n"[..])
        );
        pending.extend_from_slice(b"lf\"}\n");
        route_lines(&mut pending, &mut out, &mut err);
        assert_eq!(out, b"half\n");
        assert!(pending.is_empty());
    }

    #[test]
    fn a_rotation_loses_no_line_and_follows_the_new_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.log");
        // Rotates after every line or so (max-size in bytes), keeping 3 files.
        let mut w = LogWriter::open(&p, Some(80), 3).unwrap();
        let mut t = StreamTail::at_end(p.clone());
        w.write_lines("stdout", &[b"a-1"], SystemTime::now())
            .unwrap();
        let (o, _) = pump(&mut t);
        assert_eq!(o, "a-1\n");
        let mut want_out = String::new();
        let mut want_err = String::new();
        let (mut got_out, mut got_err) = (String::new(), String::new());
        for i in 0..20 {
            let (s, want) = if i % 3 == 0 {
                ("stderr", &mut want_err)
            } else {
                ("stdout", &mut want_out)
            };
            let l = format!("line-{i}");
            w.write_lines(s, &[l.as_bytes()], SystemTime::now())
                .unwrap();
            want.push_str(&l);
            want.push('\n');
            // Looked at after every line: each rotation is seen once.
            let (o, e) = pump(&mut t);
            got_out.push_str(&o);
            got_err.push_str(&e);
        }
        assert!(d.path().join("c.log.2").exists(), "the log never rotated");
        assert_eq!(got_out, want_out);
        assert_eq!(got_err, want_err);
        // Truncated in place (max-file 1): read again from its start.
        let q = d.path().join("t.log");
        let mut w = LogWriter::open(&q, Some(60), 1).unwrap();
        let mut t = StreamTail::at_end(q.clone());
        w.write_lines("stdout", &[b"first-line-long-enough"], SystemTime::now())
            .unwrap();
        assert_eq!(pump(&mut t).0, "first-line-long-enough\n");
        w.write_lines("stderr", &[b"x"], SystemTime::now()).unwrap();
        assert_eq!(pump(&mut t).1, "x\n");
    }
}
