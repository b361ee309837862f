//! `berth attach` (and the terminal of `berth run -it`): the caller's terminal on a running
//! `tty: true` container's pty, through the supervisor that holds its master (see
//! `supervisor/attach.rs`), relayed by `tty.rs`. Without a tty: the container's output from
//! now on, the caller's stdin into a `stdin_open: true` container's stdin FIFO, and the
//! caller's signals sent on to the container (`--sig-proxy`), as docker attach does. And
//! `berth create`: `up --no-start`.

use anyhow::{bail, Context};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
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
    if !crate::engine::container::bundle_terminal(&c.dir) {
        return attach_plain(&paths, &project, c, args);
    }
    let mask = tty::block_signals()?;
    let keys = tty::parse_detach_keys(
        args.detach_keys
            .as_deref()
            .unwrap_or(tty::DEFAULT_DETACH_KEYS),
    )?;
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

/// `berth attach` to a container without a tty: its output (stdout and stderr, from its log)
/// from now on until it exits, the caller's stdin written into its stdin when it has
/// `stdin_open: true`, and with `--sig-proxy` (the default) the signals the CLI receives sent
/// to its main process (a third SIGINT ends the CLI, for a process that ignores them);
/// without, a SIGINT or SIGTERM leaves it running and ends the CLI. The container's exit code
/// is the CLI's.
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
    let project_dir = paths.project(project);
    let mut tail = crate::commands::logs::Tailer::new(&project_dir);
    let mut printer = crate::commands::logs::Printer::new(false, false, false, &[]);
    let only = |st: ProjectState| -> ProjectState {
        let mut st = st;
        st.containers.retain(|x| x.name == c.name);
        st
    };
    if let Some(st) = ProjectState::load(paths, project)? {
        tail.skip_existing(&only(st));
    }
    if !args.no_stdin {
        forward_stdin(paths, project, &c.name)?;
    }
    let sig_proxy = args.sig_proxy.unwrap_or(true);
    let mut interrupts = 0;
    let mut st = None;
    loop {
        // Output first, then wait for a signal, the container's end, or the next look.
        if let Some(s) = ProjectState::load(paths, project)? {
            let s = only(s);
            if !tail.pump_until(&s, &|_| true, &mut printer, None)? {
                st = Some(s);
            } else {
                continue;
            }
        }
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
        // SAFETY: two pollfds we own; bounded wait, the log is looked at again after it.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, 100) };
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
        let s = ProjectState::load(paths, project)?.map(only).or(st.take());
        let rec = s.as_ref().and_then(|s| s.container(&c.name));
        let ended = match rec {
            None => Some(0),
            Some(r) if r.status == Status::Exited => Some(r.exit_code.unwrap_or(0)),
            // Restarted by its policy already: that run's code is not kept.
            Some(r) if r.pid != Some(pid) && r.status == Status::Running => Some(0),
            Some(_) => None,
        };
        if let Some(s) = &s {
            tail.pump_until(s, &|_| true, &mut printer, None)?;
        }
        if let Some(code) = ended {
            return Ok(code.clamp(0, 255) as u8);
        }
        if std::time::Instant::now() > deadline {
            bail!("{} ended, yet its record says it has not exited", c.name);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
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
