//! Calls into the container runtime. Anything that creates processes in new namespaces runs
//! in a re-exec of this binary (`berth __runtime …`, single-threaded, no tokio); calls that do
//! not fork (state, kill, delete) could run in-process, but going through the same CLI keeps
//! one code path and one error format.
//!
//! `create` goes through a fork server (`berth __runtime serve`, `berth_runtime::serve`): one
//! re-exec per supervisor, started on the first container and ended after a while
//! without a request (`server_idle`), which forks a single-threaded child per `create` instead of an execve of
//! the binary (plus its read-only re-exec) per container. `BERTH_RUNTIME_FORK=0` in the
//! supervisor's environment goes back to one re-exec per `create`.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use berth_runtime::serve;
use tokio::io::unix::AsyncFd;
use tokio::process::{Child, Command};

/// The binary to re-exec: our own executable.
/// After an upgrade the running binary is unlinked (`… (deleted)`); a long-lived supervisor
/// then re-execs the new binary at the same path.
pub fn self_exe() -> PathBuf {
    match std::env::current_exe() {
        Ok(p) => {
            let s = p.to_string_lossy();
            match s.strip_suffix(" (deleted)") {
                Some(orig) if std::path::Path::new(orig).exists() => PathBuf::from(orig),
                _ => p,
            }
        }
        Err(_) => PathBuf::from("/proc/self/exe"),
    }
}

pub struct Runtime {
    pub root: PathBuf,
    /// The fork server, while one runs (see the module's comment).
    server: Arc<StdMutex<Option<Arc<ForkServer>>>>,
    /// Holds the cgroup migration lock's fast path open from `warm` until the `create`
    /// returned (`berth_runtime::warm`).
    cg_warmer: berth_runtime::warm::Warmer,
    /// Directories of per-container mounts (rootfs overlays, netns mounts) left out of the fork
    /// server's mount template (`berth_runtime::mnttmpl`); empty: no template.
    template_prune: Vec<PathBuf>,
}

/// Ends the warming an `up` asked for (`Runtime::warm_for_up`) when dropped.
pub struct WarmGuard(berth_runtime::warm::Warmer);

impl Drop for WarmGuard {
    fn drop(&mut self) {
        self.0.arrived();
    }
}

/// The container's stdio, handed to `create` (runc pass-through mode); `None` is /dev/null.
#[derive(Default)]
pub struct CreateIo {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// A fork server ends after this long without a request (a later `create` starts another):
/// no process of berth's stays beside an idle supervisor, and an upgraded binary is picked up.
/// 5 s; `BERTH_RUNTIME_FORK_IDLE_MS` in the supervisor's environment sets it (tests).
fn server_idle() -> Duration {
    static IDLE: std::sync::LazyLock<Duration> = std::sync::LazyLock::new(|| {
        std::env::var("BERTH_RUNTIME_FORK_IDLE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(Duration::from_secs(5), Duration::from_millis)
    });
    *IDLE
}

/// One running `berth __runtime serve`.
struct ForkServer {
    /// Our end of the control socket (`SOCK_SEQPACKET`); closing it ends the server.
    ctl: AsyncFd<OwnedFd>,
    /// Requests sent and not yet answered, and when the last one ended (for the idle end).
    in_flight: AtomicUsize,
    last_use: StdMutex<Instant>,
    /// Held so that tokio reaps it once it exits (it is never killed: it ends on EOF).
    _child: Child,
}

/// Why a request did not get an exit code from the server.
enum Unserved {
    /// The server was gone before it forked for the request (nothing ran): `create` re-execs
    /// instead, and the next one starts another server.
    Gone,
    /// Anything else; the request may have run.
    Failed(anyhow::Error),
}

fn fork_server_enabled() -> bool {
    static ON: std::sync::LazyLock<bool> =
        std::sync::LazyLock::new(|| std::env::var("BERTH_RUNTIME_FORK").map_or(true, |v| v != "0"));
    *ON
}

fn seqpacket_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(std::io::Error::from)
}

fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let fl = fcntl(fd, FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
    fcntl(
        fd,
        FcntlArg::F_SETFL(OFlag::from_bits_retain(fl) | OFlag::O_NONBLOCK),
    )
    .map_err(std::io::Error::from)?;
    Ok(())
}

fn nix_io(e: nix::Error) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

impl ForkServer {
    /// Send one request; `Unserved::Gone` when the server no longer reads its socket.
    async fn send(
        &self,
        payload: &[u8],
        fds: &[RawFd; serve::REQUEST_FDS],
    ) -> Result<(), Unserved> {
        loop {
            let mut guard = self
                .ctl
                .writable()
                .await
                .map_err(|e| Unserved::Failed(e.into()))?;
            match guard.try_io(|fd| {
                serve::send_request(fd.get_ref().as_raw_fd(), payload, fds).map_err(nix_io)
            }) {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e))
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EPIPE | libc::ECONNRESET | libc::ECONNREFUSED)
                    ) =>
                {
                    return Err(Unserved::Gone)
                }
                Ok(Err(e)) => {
                    return Err(Unserved::Failed(
                        anyhow::Error::from(e).context("sending to the runtime's fork server"),
                    ))
                }
                Err(_would_block) => continue,
            }
        }
    }
}

/// Wait for the exit code on a request's reply socket: `Ok(code)`, `Err(Gone)` if the socket
/// closed before the server forked for it (nothing ran), else `Err(Failed)`.
async fn await_reply(reply: OwnedFd) -> Result<i32, Unserved> {
    let failed = |e: std::io::Error| {
        Unserved::Failed(anyhow::Error::from(e).context("waiting for the runtime's fork server"))
    };
    set_nonblocking(&reply).map_err(failed)?;
    // SAFETY: the AsyncFd owns the fd and closes it only when it (and its registration) is
    // dropped, the I/O-safety contract `register` asks for.
    let reply = unsafe { AsyncFd::register(reply) }.map_err(|e| failed(e.into()))?;
    let mut forked = false;
    loop {
        let mut guard = reply.readable().await.map_err(failed)?;
        match guard.try_io(|fd| serve::read_reply(fd.get_ref().as_raw_fd()).map_err(nix_io)) {
            Ok(Ok(serve::Reply::Forked)) => forked = true,
            Ok(Ok(serve::Reply::Exit(code))) => return Ok(code),
            Ok(Ok(serve::Reply::Closed)) if !forked => return Err(Unserved::Gone),
            Ok(Ok(serve::Reply::Closed)) => {
                return Err(Unserved::Failed(anyhow!(
                    "the runtime's fork server ended before the command did"
                )))
            }
            Ok(Err(e)) => return Err(failed(e)),
            Err(_would_block) => continue,
        }
    }
}

impl Runtime {
    pub fn new(root: &Path) -> Runtime {
        Runtime {
            root: root.to_path_buf(),
            server: Default::default(),
            cg_warmer: Default::default(),
            template_prune: Vec::new(),
        }
    }

    /// Containers made through the fork server start from a mount namespace without the
    /// mounts below `dirs` (each container's rootfs and netns mount), so that a create costs
    /// the same with 500 containers running as with none (`berth_runtime::mnttmpl`).
    /// `BERTH_MOUNT_TEMPLATE=0` in the supervisor's environment turns it off.
    pub fn with_mount_template(mut self, dirs: Vec<PathBuf>) -> Runtime {
        if std::env::var("BERTH_MOUNT_TEMPLATE").map_or(true, |v| v != "0") {
            self.template_prune = dirs;
        }
        self
    }

    /// A `create` follows (call it when preparing a container begins): start the fork
    /// server now if none runs, without waiting for it, so that its start-up overlaps the
    /// work before the first `create` (snapshot, netns, veths, bundle); and keep the kernel's
    /// cgroup migration lock on its fast path until that `create` returned (or
    /// [`Runtime::not_coming`]), so that the grace period its first writer waits for is
    /// waited out meanwhile (`berth_runtime::warm`). Needs a tokio runtime.
    pub fn warm(&self) {
        self.cg_warmer.expect();
        if !fork_server_enabled() {
            return;
        }
        if let Err(e) = self.server() {
            tracing::debug!("the runtime's fork server did not start: {e:#}");
        }
    }

    /// An `up` began: hold the cgroup migration lock's fast path from now until the guard is
    /// dropped (the fork server is not started here). The warming thread's first write waits
    /// out the RCU grace period while holding the kernel's `cgroup_mutex`, so a container's
    /// cgroup `mkdir` that comes during it waits too: started with the container's preparation
    /// only, that first write fell on the `create` of a lone container (5-11 ms of its trace,
    /// once the networks and the bundle got faster); started with the `up`, it is over by then.
    pub fn warm_for_up(&self) -> WarmGuard {
        self.cg_warmer.expect();
        WarmGuard(self.cg_warmer.clone())
    }

    /// The `create` a [`Runtime::warm`] announced will not come (preparing it failed).
    pub fn not_coming(&self) {
        self.cg_warmer.arrived();
    }

    /// End the fork server and reap it (bounded), for a supervisor about to exit: otherwise it
    /// would outlive its parent for an instant and be reaped, and recorded as an orphan, by
    /// the keeper.
    pub async fn shutdown(&self) {
        let Some(s) = self.server.lock().unwrap().take() else {
            return;
        };
        if let Ok(ForkServer {
            ctl,
            _child: mut child,
            ..
        }) = Arc::try_unwrap(s)
        {
            drop(ctl);
            let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
        }
    }

    /// The running fork server, started if none runs.
    fn server(&self) -> anyhow::Result<Arc<ForkServer>> {
        let mut slot = self.server.lock().unwrap();
        if let Some(s) = slot.as_ref() {
            return Ok(s.clone());
        }
        let (ours, theirs) = seqpacket_pair().context("socketpair for the fork server")?;
        set_nonblocking(&ours)?;
        let mut c = self.cmd();
        c.arg("serve");
        if !self.template_prune.is_empty() {
            if let Ok(v) = std::env::join_paths(&self.template_prune) {
                c.env(berth_runtime::mnttmpl::ENV, v);
            }
        }
        c.stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = c.spawn().context("starting the runtime's fork server")?;
        // SAFETY: as in `await_reply`: the AsyncFd owns the fd.
        let ctl = unsafe { AsyncFd::register(ours) }?;
        let s = Arc::new(ForkServer {
            ctl,
            in_flight: AtomicUsize::new(0),
            last_use: StdMutex::new(Instant::now()),
            _child: child,
        });
        *slot = Some(s.clone());
        // The idle end: drop the slot's handle once nothing used it for a while (requests
        // in flight hold their own handles, so the socket closes after the last one).
        let (weak, holder) = (Arc::downgrade(&s), self.server.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(server_idle() / 4).await;
                let Some(s) = weak.upgrade() else { return };
                let mut slot = holder.lock().unwrap();
                let idle = s.in_flight.load(Ordering::SeqCst) == 0
                    && s.last_use.lock().unwrap().elapsed() >= server_idle();
                if idle {
                    if slot.as_ref().is_some_and(|cur| Arc::ptr_eq(cur, &s)) {
                        *slot = None;
                    }
                    return;
                }
            }
        });
        Ok(s)
    }

    /// Run one runtime command through the fork server: its exit code.
    async fn served(
        &self,
        args: &[String],
        env: &[(&str, &Path)],
        io: &CreateIo,
    ) -> Result<i32, Unserved> {
        let req = serve::Request {
            args: args.to_vec(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string_lossy().into_owned()))
                .collect(),
        };
        let payload = serve::encode(&req);
        let null = std::fs::File::open("/dev/null").map_err(|e| Unserved::Failed(e.into()))?;
        let fd = |f: &Option<OwnedFd>| f.as_ref().map_or(null.as_raw_fd(), |f| f.as_raw_fd());
        let (reply, theirs) = seqpacket_pair().map_err(|e| Unserved::Failed(e.into()))?;
        let fds = [
            theirs.as_raw_fd(),
            fd(&io.stdin),
            fd(&io.stdout),
            fd(&io.stderr),
        ];
        let server = self.server().map_err(Unserved::Failed)?;
        server.in_flight.fetch_add(1, Ordering::SeqCst);
        let sent = server.send(&payload, &fds).await;
        // The message holds its own references to the fds now.
        drop(theirs);
        drop(null);
        let r = match sent {
            Ok(()) => await_reply(reply).await,
            Err(e) => Err(e),
        };
        *server.last_use.lock().unwrap() = Instant::now();
        server.in_flight.fetch_sub(1, Ordering::SeqCst);
        if matches!(r, Err(Unserved::Gone)) {
            // Gone before it ran this request: the next `create` starts another server.
            let mut slot = self.server.lock().unwrap();
            if slot.as_ref().is_some_and(|cur| Arc::ptr_eq(cur, &server)) {
                *slot = None;
            }
        }
        r
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(self_exe());
        c.arg("__runtime").arg("--root").arg(&self.root);
        c.kill_on_drop(false);
        c
    }

    /// `create`: returns the container init's pid once it waits for `start`.
    pub async fn create(
        &self,
        id: &str,
        bundle: &Path,
        io: CreateIo,
        console_socket: Option<&Path>,
    ) -> anyhow::Result<i32> {
        let r = self.create_inner(id, bundle, io, console_socket).await;
        // Its cgroup write is done (or never comes): `warm`'s expectation is met.
        self.cg_warmer.arrived();
        r
    }

    async fn create_inner(
        &self,
        id: &str,
        bundle: &Path,
        io: CreateIo,
        console_socket: Option<&Path>,
    ) -> anyhow::Result<i32> {
        // The runtime reports its own errors on stderr, which is the container's stderr here;
        // it also writes them to a file in the bundle so we can show them.
        let err_file = bundle.join("create.err");
        let _ = std::fs::remove_file(&err_file);
        let mut args: Vec<String> = vec![
            "--root".into(),
            self.root.to_string_lossy().into_owned(),
            "create".into(),
            "--bundle".into(),
            bundle.to_string_lossy().into_owned(),
        ];
        if let Some(s) = console_socket {
            args.push("--console-socket".into());
            args.push(s.to_string_lossy().into_owned());
        }
        args.push(id.to_string());
        // BERTH_TRACE=1: the runtime appends its own steps to a file in the bundle.
        let trace_file = crate::trace::enabled().then(|| bundle.join("create.trace"));
        let mut env = vec![("BERTH_RUNTIME_ERROR_FILE", err_file.as_path())];
        if let Some(t) = &trace_file {
            let _ = std::fs::remove_file(t);
            env.push((berth_runtime::trace::ENV, t.as_path()));
        }
        let mut status = None;
        if fork_server_enabled() {
            crate::trace::step(|| format!("{id}: runtime create (fork server)"));
            match self.served(&args, &env, &io).await {
                Ok(code) => status = Some(code),
                Err(Unserved::Gone) => {}
                Err(Unserved::Failed(e)) => return Err(e.context(format!("creating {id}"))),
            }
        }
        let code = match status {
            Some(code) => code,
            None => {
                crate::trace::step(|| format!("{id}: runtime create (re-exec)"));
                let mut c = Command::new(self_exe());
                c.arg("__runtime").args(&args).kill_on_drop(false);
                let stdio = |f: Option<OwnedFd>| f.map_or_else(Stdio::null, Stdio::from);
                c.stdin(stdio(io.stdin))
                    .stdout(stdio(io.stdout))
                    .stderr(stdio(io.stderr));
                for (k, v) in &env {
                    c.env(k, v);
                }
                let status = c.status().await.context("running the container runtime")?;
                berth_runtime::raw_status_to_code(std::os::unix::process::ExitStatusExt::into_raw(
                    status,
                ))
            }
        };
        if let Some(t) = &trace_file {
            let text = std::fs::read_to_string(t).unwrap_or_default();
            let _ = std::fs::remove_file(t);
            for (us, pid, what) in text.lines().filter_map(berth_runtime::trace::parse_line) {
                crate::trace::step_at(us, pid, &format!("{id}: runtime {what}"));
            }
        }
        if code != 0 {
            let msg = std::fs::read_to_string(&err_file).unwrap_or_default();
            let msg = msg.trim();
            if msg.is_empty() {
                bail!("the runtime failed to create {id} (exit code {code})");
            }
            bail!("{msg}");
        }
        // The init's pid from the runtime's state (no `--pid-file`: a file made and renamed
        // per create, and removed at the next).
        let pid = berth_runtime::state::load(&self.root, id)
            .with_context(|| format!("reading the runtime state of {id}"))?
            .pid;
        crate::trace::step(|| format!("{id}: runtime created, init {pid}"));
        Ok(pid)
    }

    async fn simple(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut c = self.cmd();
        c.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = c.output().await.context("running the container runtime")?;
        if !out.status.success() {
            bail!(
                "runtime {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// `start` and `delete` fork nothing, so they run in-process (on a blocking thread): two
    /// process spawns fewer per container lifecycle.
    pub async fn start(&self, id: &str) -> anyhow::Result<()> {
        let (root, id) = (self.root.clone(), id.to_string());
        let id2 = id.clone();
        tokio::task::spawn_blocking(move || berth_runtime::container::start(&root, &id)).await??;
        crate::trace::step(|| format!("{id2}: runtime start"));
        Ok(())
    }

    pub async fn delete(&self, id: &str, force: bool) -> anyhow::Result<()> {
        let (root, id) = (self.root.clone(), id.to_string());
        tokio::task::spawn_blocking(move || berth_runtime::container::delete(&root, &id, force))
            .await??;
        Ok(())
    }

    pub async fn pause(&self, id: &str) -> anyhow::Result<()> {
        self.simple(&["pause", id]).await.map(|_| ())
    }

    pub async fn resume(&self, id: &str) -> anyhow::Result<()> {
        self.simple(&["resume", id]).await.map(|_| ())
    }

    /// Host pids of the container's processes.
    pub async fn ps(&self, id: &str) -> anyhow::Result<Vec<i32>> {
        let out = self.simple(&["ps", "--format", "json", id]).await?;
        let v: Vec<i32> = serde_json::from_str(out.trim()).context("parsing runtime ps output")?;
        Ok(v)
    }

    /// An `exec` process: the caller decides stdio; the child exits with the command's status.
    pub fn exec(&self, id: &str, opts: &ExecOpts) -> anyhow::Result<Child> {
        let mut c = self.cmd();
        c.arg("exec");
        if opts.tty {
            c.arg("--tty");
        }
        if let Some(cwd) = &opts.cwd {
            c.arg("--cwd").arg(cwd);
        }
        for e in &opts.env {
            c.arg("--env").arg(e);
        }
        if let Some(u) = &opts.user {
            c.arg("--user").arg(u);
        }
        c.arg(id).args(&opts.args);
        c.stdin(if opts.stdin {
            Stdio::inherit()
        } else {
            Stdio::null()
        });
        if opts.capture {
            c.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        c.kill_on_drop(true);
        c.spawn().context("starting exec")
    }
}

#[derive(Debug, Clone, Default)]
pub struct ExecOpts {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<String>,
    pub user: Option<String>,
    pub tty: bool,
    pub stdin: bool,
    pub capture: bool,
}
