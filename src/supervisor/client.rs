//! The CLI side of the control socket (synchronous: commands stay simple).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
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
            cmd.pre_exec(|| {
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
                Ok(())
            });
        }
        let mut child = cmd.spawn().context("starting the supervisor")?;
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
            std::thread::sleep(Duration::from_millis(5));
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
