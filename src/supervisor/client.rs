//! The CLI side of the control socket (synchronous: commands stay simple).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::proto::{Reply, Request};
use crate::paths::Paths;

pub struct Client {
    stream: UnixStream,
}

impl Client {
    /// Connect to the running supervisor of `project`, if any.
    pub fn connect(paths: &Paths, project: &str) -> Option<Client> {
        let sock = paths.supervisor_socket(project);
        let stream = UnixStream::connect(&sock).ok()?;
        Some(Client { stream })
    }

    /// Connect, starting a detached supervisor first when none runs.
    pub fn connect_or_start(paths: &Paths, project: &str) -> anyhow::Result<Client> {
        if let Some(c) = Client::connect(paths, project) {
            return Ok(c);
        }
        Client::start(paths, project, None)
    }

    /// Start a detached supervisor (its keeper, see `keeper.rs`) and connect to it.
    /// `respawned_by`: the command that found the previous one dead (logged in `events`).
    pub fn start(
        paths: &Paths,
        project: &str,
        respawned_by: Option<&str>,
    ) -> anyhow::Result<Client> {
        let run = paths.project_run(project);
        std::fs::create_dir_all(&run)?;
        std::fs::create_dir_all(paths.project(project))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(paths.project(project).join("supervisor.log"))
            .context("opening the supervisor log")?;
        let mut cmd = Command::new(crate::engine::runtime::self_exe());
        cmd.arg("__supervisor").arg("--project").arg(project);
        // The supervisor says it listens by a byte on this pipe (`signal_ready`): the wait
        // below wakes then, instead of every 5 ms. Without it (no pipe), the polling alone.
        let ready = ReadyPipe::new().ok();
        if let Some(r) = &ready {
            cmd.env(READY_FD_ENV, r.write_raw.to_string());
        }
        let ready_w = ready.as_ref().map_or(-1, |r| r.write_raw);
        if let Some(by) = respawned_by {
            cmd.env(super::respawn::RESPAWNED_BY_ENV, by);
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Its own session: the supervisor outlives this command and the terminal.
        cmd.process_group(0);
        // SAFETY: setsid is async-signal-safe; called in the child before exec.
        unsafe {
            cmd.pre_exec(move || {
                libc::setsid();
                // Nothing of the caller's beyond stdio: a shell's or a test harness's fds left
                // without close-on-exec would otherwise stay open in the supervisor for its
                // whole life (and in everything it starts before it execs). Close-on-exec,
                // not close: std's own exec-error pipe must survive until the exec.
                // Linux 5.11+; on older kernels the fds are inherited as before.
                libc::syscall(
                    libc::SYS_close_range,
                    3u32,
                    u32::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                );
                // Except the readiness pipe's write side, which the keeper and then the
                // supervisor inherit.
                if ready_w >= 0 {
                    libc::fcntl(ready_w, libc::F_SETFD, 0);
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().context("starting the supervisor")?;
        // Ours goes: the pipe then reads EOF once the keeper and supervisor are gone.
        let mut ready = ready.map(|r| r.read);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(c) = Client::connect(paths, project) {
                // The supervisor double-forks nothing: reap our direct child when it exits later
                // is not possible from here, so let init adopt it (we exit soon anyway).
                std::mem::forget(child);
                return Ok(c);
            }
            if let Ok(Some(st)) = child.try_wait() {
                if st.success() {
                    // Another supervisor serves the project (started by a concurrent
                    // command): connect to it.
                    if Instant::now() > deadline {
                        bail!("the supervisor did not start within 10 s");
                    }
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                bail!(
                    "the supervisor exited at start ({st}); see {}",
                    paths.project(project).join("supervisor.log").display()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("the supervisor did not start within 10 s");
            }
            match ready.as_ref().map(|r| wait_readable(r, 50)) {
                // A byte: it listens (connect above); EOF: it is gone without (or another
                // serves the project): poll from now on.
                Some(Some(true)) => {}
                Some(Some(false)) | Some(None) => ready = None,
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// Whether a supervisor serves `project` and answers (a `Ping` within 2 s): a dying one
    /// may still take a connection for an instant.
    pub fn answers(paths: &Paths, project: &str) -> bool {
        let Some(c) = Client::connect(paths, project) else {
            return false;
        };
        if c.stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .is_err()
        {
            return false;
        }
        matches!(c.call(&Request::Ping, &mut |_| {}), Ok((true, _, _)))
    }

    /// Attach to container `name`'s terminal (see `attach.rs`): the connection, which now
    /// carries the container's raw output, and a dup of its pty master (for input and the
    /// window size). An error is the supervisor's reason (no such container, no tty).
    pub fn attach(mut self, name: &str) -> anyhow::Result<(UnixStream, OwnedFd)> {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        use std::os::fd::{AsRawFd, FromRawFd};
        let mut line = serde_json::to_vec(&Request::Attach {
            name: name.to_string(),
        })?;
        line.push(b'\n');
        self.stream
            .write_all(&line)
            .context("talking to the supervisor")?;
        self.stream
            .set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut first = [0u8; 1];
        let mut iov = [std::io::IoSliceMut::new(&mut first)];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(
            self.stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .context("attaching through the supervisor")?;
        let got = msg.bytes;
        let mut fd = None;
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                // SAFETY: the kernel just installed these fds in our table for us.
                for (i, &f) in fds.iter().enumerate() {
                    let f = unsafe { OwnedFd::from_raw_fd(f) };
                    if i == 0 {
                        fd = Some(f);
                    }
                }
            }
        }
        if let Some(fd) = fd {
            self.stream.set_read_timeout(None)?;
            return Ok((self.stream, fd));
        }
        if got == 0 {
            bail!("the supervisor closed the connection before answering (see its log)");
        }
        // A refusal: the `Done` line, whose first byte came with the recvmsg.
        let mut rest = String::new();
        BufReader::new(self.stream).read_line(&mut rest)?;
        let l = format!("{}{rest}", first[0] as char);
        match serde_json::from_str::<Reply>(&l) {
            Ok(Reply::Done { error, .. }) => {
                let e = error.unwrap_or_default();
                bail!("{}", e.strip_prefix("error: ").unwrap_or(&e))
            }
            _ => bail!("bad reply {l:?}"),
        }
    }

    /// Send one request and hand every reply to `on_reply` until `Done`.
    pub fn call(
        mut self,
        req: &Request,
        on_reply: &mut dyn FnMut(&Reply),
    ) -> anyhow::Result<(bool, Option<String>, i32)> {
        let mut line = serde_json::to_vec(req)?;
        line.push(b'\n');
        self.stream
            .write_all(&line)
            .context("talking to the supervisor")?;
        let reader = BufReader::new(self.stream);
        for l in reader.lines() {
            let l = l.context("reading from the supervisor")?;
            let reply: Reply =
                serde_json::from_str(&l).with_context(|| format!("bad reply {l:?}"))?;
            if let Reply::Done { ok, error, code } = &reply {
                return Ok((*ok, error.clone(), *code));
            }
            on_reply(&reply);
        }
        bail!("the supervisor closed the connection before answering (see its log)")
    }
}

/// The environment variable that names the readiness pipe's write side in the keeper and the
/// supervisor started by `Client::start`.
const READY_FD_ENV: &str = "BERTH_READY_FD";

struct ReadyPipe {
    read: OwnedFd,
    /// The write side (close-on-exec here; kept open across the exec in the child).
    _write: OwnedFd,
    write_raw: RawFd,
}

impl ReadyPipe {
    fn new() -> std::io::Result<ReadyPipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 fills in two fds on success.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: both fds were just made and are owned by nothing else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(ReadyPipe {
            read,
            write_raw: write.as_raw_fd(),
            _write: write,
        })
    }
}

/// Wait up to `ms` for the readiness pipe: `Some(true)` a byte came (consumed), `Some(false)`
/// EOF, `None` nothing yet or an error.
fn wait_readable(fd: &OwnedFd, ms: i32) -> Option<bool> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    if n <= 0 {
        return None;
    }
    let mut b = [0u8; 1];
    // SAFETY: reading into a 1-byte buffer we own.
    match unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), 1) } {
        1 => Some(true),
        0 => Some(false),
        _ => None,
    }
}

/// In the keeper and the supervisor, before any thread: take the readiness pipe's write side
/// from the environment (so nothing they start inherits the variable). Only a pipe counts.
pub(crate) fn take_ready_fd() -> Option<OwnedFd> {
    let v = std::env::var(READY_FD_ENV).ok()?;
    // Single-threaded here (the callers' contract).
    std::env::remove_var(READY_FD_ENV);
    let fd: RawFd = v.parse().ok().filter(|f| *f > 2)?;
    // SAFETY: fstat on any fd number is harmless; a zeroed stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFIFO {
        return None;
    }
    // SAFETY: the fd was handed to this process for this use alone (`Client::start`).
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

static READY: std::sync::Mutex<Option<OwnedFd>> = std::sync::Mutex::new(None);

/// In the supervisor: keep the readiness pipe until `signal_ready`.
pub(crate) fn hold_ready_fd(fd: Option<OwnedFd>) {
    *READY.lock().unwrap() = fd;
}

/// In the supervisor, once its socket listens: wake the CLI that started it (one byte), and
/// close the pipe.
pub(crate) fn signal_ready() {
    if let Some(fd) = READY.lock().unwrap().take() {
        // SAFETY: writing one byte from a buffer we own.
        unsafe { libc::write(fd.as_raw_fd(), b"1".as_ptr().cast(), 1) };
    }
}
