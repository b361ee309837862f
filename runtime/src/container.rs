//! Container lifecycle: create (fork the init), start, state, kill, delete, list, pause,
//! resume, exec. The functions that do not fork (`state`, `kill`, `delete`, `list`, `pids`,
//! `stats`, `pause`, `resume`, `start`) may be called in-process by a multi-threaded caller.
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::unistd::{ForkResult, Pid};
use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};

use crate::cgroups::Cgroup;
use crate::error::{io_err, sys_err, Result, RuntimeError};
use crate::process::{self, Chan};
use crate::state::{self, Record, State, Status, EXEC_FIFO, SPEC_FILE};

/// Annotation that asks for the runtime's own init as pid 1 (Compose `init: true`).
pub const INIT_ANNOTATION: &str = "berth.init";

#[derive(Debug, Clone, Default)]
pub struct CreateOpts {
    pub root: PathBuf,
    pub id: String,
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
}

pub fn load_spec(path: &Path) -> Result<Spec> {
    open_spec(path).map(|(_, spec)| spec)
}

/// The spec at `path` and the file it was read from.
fn open_spec(path: &Path) -> Result<(fs::File, Spec)> {
    let err = |source| RuntimeError::Spec {
        path: path.to_path_buf(),
        source,
    };
    let f = fs::File::open(path).map_err(|e| err(oci_spec::OciSpecError::Io(e)))?;
    let spec = serde_json::from_reader(std::io::BufReader::new(&f))
        .map_err(|e| err(oci_spec::OciSpecError::SerDe(e)))?;
    Ok((f, spec))
}

fn cgroup_of(rec: &Record) -> Option<Cgroup> {
    rec.cgroups_path
        .as_deref()
        .and_then(|p| Cgroup::new(p).ok())
}

fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let tmp = path.with_extension("tmp-berth");
    fs::write(&tmp, pid.to_string()).map_err(io_err("write", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("rename", path))
}

/// Create the container: everything is set up and the init waits for `start`. Returns the
/// init's pid. The container's stdio are this process's fds 0-2.
///
/// Forks: call only from a single-threaded process (the CLI).
pub fn create(o: &CreateOpts) -> Result<i32> {
    crate::trace::open_from_env();
    crate::trace::step(|| "create: start".into());
    state::validate_id(&o.id)?;
    let bundle = fs::canonicalize(&o.bundle).map_err(io_err("bundle", &o.bundle))?;
    // Read through one open file, which the state dir then links to (below): the spec kept is
    // exactly the one this create used.
    let (spec_file, spec) = open_spec(&bundle.join("config.json"))?;
    let root_path = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .ok_or_else(|| RuntimeError::InvalidSpec("no root".into()))?;
    let rootfs = if root_path.is_absolute() {
        root_path
    } else {
        bundle.join(root_path)
    };
    let rootfs = fs::canonicalize(&rootfs).map_err(io_err("rootfs", &rootfs))?;
    let proc_ = spec
        .process()
        .clone()
        .ok_or_else(|| RuntimeError::InvalidSpec("no process".into()))?;
    if proc_.args().as_ref().map(|a| a.is_empty()).unwrap_or(true) {
        return Err(RuntimeError::InvalidSpec("process.args is empty".into()));
    }
    let terminal = proc_.terminal().unwrap_or(false);
    if terminal && o.console_socket.is_none() {
        return Err(RuntimeError::Usage(
            "process.terminal needs --console-socket".into(),
        ));
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(&o.root)
        .map_err(io_err("create", &o.root))?;
    let sdir = state::dir(&o.root, &o.id);
    match fs::DirBuilder::new().mode(0o711).create(&sdir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(RuntimeError::Exists(o.id.clone()))
        }
        Err(e) => return Err(io_err("create", &sdir)(e)),
    }
    let cg_path = spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().clone())
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| crate::cgroups::default_path(&o.id));
    let mut cleanup = CreateCleanup {
        sdir: sdir.clone(),
        cgroup: None,
        child: None,
    };
    let r = create_inner(
        o,
        &spec,
        &spec_file,
        &proc_,
        &bundle,
        &rootfs,
        &sdir,
        &cg_path,
        &mut cleanup,
    );
    match r {
        Ok(pid) => {
            cleanup.disarm();
            Ok(pid)
        }
        Err(e) => Err(e), // cleanup runs in Drop
    }
}

struct CreateCleanup {
    sdir: PathBuf,
    cgroup: Option<Cgroup>,
    child: Option<Pid>,
}

impl CreateCleanup {
    fn disarm(&mut self) {
        self.cgroup = None;
        self.child = None;
        self.sdir = PathBuf::new();
    }
}

impl Drop for CreateCleanup {
    fn drop(&mut self) {
        if let Some(c) = self.child {
            let _ = nix::sys::signal::kill(c, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(c, None);
        }
        if let Some(cg) = &self.cgroup {
            cg.kill_all();
            let _ = cg.remove();
        }
        if !self.sdir.as_os_str().is_empty() {
            let _ = fs::remove_dir_all(&self.sdir);
        }
    }
}

/// Link the open file `f` at `to` (`linkat(AT_EMPTY_PATH)`, which needs
/// CAP_DAC_READ_SEARCH; else through /proc/self/fd).
fn linkat_fd(f: &fs::File, to: &Path) -> std::io::Result<()> {
    use rustix::fs::AtFlags;
    rustix::fs::linkat(f, "", rustix::fs::CWD, to, AtFlags::EMPTY_PATH)
        .or_else(|_| {
            let p = format!("/proc/self/fd/{}", f.as_raw_fd());
            rustix::fs::linkat(
                rustix::fs::CWD,
                p.as_str(),
                rustix::fs::CWD,
                to,
                AtFlags::SYMLINK_FOLLOW,
            )
        })
        .map_err(std::io::Error::from)
}

#[allow(clippy::too_many_arguments)]
fn create_inner(
    o: &CreateOpts,
    spec: &Spec,
    spec_file: &fs::File,
    proc_: &Process,
    bundle: &Path,
    rootfs: &Path,
    sdir: &Path,
    cg_path: &str,
    cleanup: &mut CreateCleanup,
) -> Result<i32> {
    // The state dir's spec: a hard link to the bundle's file this create read (no new inode
    // per container where both are on one file system: on ext4 without a journal every new
    // inode walks past the ones freed in the last ~35 s, so the previous `down`'s); a copy
    // elsewhere (the state on a tmpfs, the bundle on a disk).
    if linkat_fd(spec_file, &sdir.join(SPEC_FILE)).is_err() {
        let spec_json = serde_json::to_vec(spec).map_err(|source| RuntimeError::State {
            path: sdir.join(SPEC_FILE),
            source,
        })?;
        fs::write(sdir.join(SPEC_FILE), spec_json)
            .map_err(io_err("write", sdir.join(SPEC_FILE)))?;
    }
    let fifo = sdir.join(EXEC_FIFO);
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o622))
        .map_err(sys_err(format!("mkfifo {}", fifo.display())))?;
    // mkfifo is subject to the umask: make sure the container user can open it for writing.
    nix::sys::stat::fchmodat(
        nix::fcntl::AT_FDCWD,
        &fifo,
        nix::sys::stat::Mode::from_bits_truncate(0o622),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
    .map_err(sys_err("chmod fifo"))?;
    let fifo_fd = nix::fcntl::open(
        &fifo,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(sys_err("open fifo"))?;

    crate::trace::step(|| "create: state dir, spec copy, exec fifo".into());
    let cg = Cgroup::new(cg_path)?;
    cleanup.cgroup = Some(cg.clone());
    // A rootless berth without a delegated, writable cgroup subtree runs its containers
    // without a cgroup of their own (as podman does with cgroupfs rootless).
    let cg_usable = match cg.create() {
        Ok(()) => true,
        // (The caller says so when limits were asked for: berth's `up` does.)
        Err(e) if crate::cgroups::unwritable_in_user_namespace(&e) => {
            cleanup.cgroup = None;
            false
        }
        Err(e) => return Err(e),
    };
    crate::trace::step(|| "create: cgroup made".into());
    if let Some(res) = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .filter(|_| cg_usable)
    {
        let mut extra = crate::rootfs::default_device_rules();
        for d in spec
            .linux()
            .as_ref()
            .and_then(|l| l.devices().clone())
            .unwrap_or_default()
        {
            if let Ok(r) = oci_spec::runtime::LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(d.typ())
                .major(d.major())
                .minor(d.minor())
                .access("rwm")
                .build()
            {
                extra.push(r);
            }
        }
        cg.apply(res, &extra)?;
        crate::trace::step(|| "create: cgroup limits written".into());
    }

    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    if namespaces
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::User)
    {
        return Err(RuntimeError::InvalidSpec(
            "user namespaces are not supported yet".into(),
        ));
    }
    // The time namespace too applies to children; offsets must be written before any
    // process is in it.
    if let Some(tns) = namespaces
        .iter()
        .find(|n| n.typ() == LinuxNamespaceType::Time)
    {
        let newtime = CloneFlags::from_bits_retain(libc::CLONE_NEWTIME);
        match tns.path() {
            Some(p) => {
                let f = fs::File::open(p).map_err(io_err("open time namespace", p))?;
                nix::sched::setns(f, newtime).map_err(sys_err("setns time"))?;
            }
            None => {
                nix::sched::unshare(newtime).map_err(sys_err("unshare time"))?;
                let offsets = spec
                    .linux()
                    .as_ref()
                    .and_then(|l| l.time_offsets().clone())
                    .unwrap_or_default();
                let mut text = String::new();
                for (clock, off) in &offsets {
                    if clock != "monotonic" && clock != "boottime" {
                        return Err(RuntimeError::InvalidSpec(format!(
                            "time offset clock {clock}"
                        )));
                    }
                    text.push_str(&format!(
                        "{clock} {} {}\n",
                        off.secs().unwrap_or(0),
                        off.nanosecs().unwrap_or(0)
                    ));
                }
                if !text.is_empty() {
                    fs::write("/proc/self/timens_offsets", text)
                        .map_err(io_err("write", "/proc/self/timens_offsets"))?;
                }
            }
        }
    }
    // The pid namespace applies to children: enter or create it here, before the fork.
    if let Some(pidns) = namespaces
        .iter()
        .find(|n| n.typ() == LinuxNamespaceType::Pid)
    {
        match pidns.path() {
            Some(p) => {
                let f = fs::File::open(p).map_err(io_err("open pid namespace", p))?;
                nix::sched::setns(f, CloneFlags::CLONE_NEWPID).map_err(sys_err("setns pid"))?;
            }
            None => {
                nix::sched::unshare(CloneFlags::CLONE_NEWPID).map_err(sys_err("unshare pid"))?
            }
        }
    }
    let console = match &o.console_socket {
        Some(p) => Some(OwnedFd::from(
            std::os::unix::net::UnixStream::connect(p)
                .map_err(io_err("connect console socket", p))?,
        )),
        None => None,
    };
    if let Some(sc) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        // Compiled (or read from the cache) here, inherited by the init across the fork.
        crate::seccomp::precompile(&o.root.join(".seccomp-cache"), sc)?;
    }
    let (parent, child) = Chan::pair()?;
    // SAFETY: the CLI is single-threaded (checked by the caller); the child runs the init
    // sequence and never returns.
    match unsafe { nix::unistd::fork() }.map_err(sys_err("fork"))? {
        ForkResult::Child => {
            drop(parent);
            let mut keep = vec![child.0.as_raw_fd(), fifo_fd.as_raw_fd()];
            keep.extend(console.as_ref().map(|c| c.as_raw_fd()));
            keep.extend(crate::trace::fd());
            keep.extend(crate::mnttmpl::raw_fd());
            process::close_fds_except(&keep);
            let ctx = InitCtx {
                spec,
                proc_,
                bundle,
                rootfs,
                cgroup: &cg,
                fifo_fd: &fifo_fd,
                console: console.as_ref(),
            };
            let e = init(&child, &ctx);
            process::fail(&child, &e)
        }
        ForkResult::Parent { child: pid } => {
            drop(child);
            drop(console);
            cleanup.child = Some(pid);
            crate::trace::step(|| "create: init forked".into());
            if cg_usable {
                cg.add_pid(pid.as_raw())?;
            }
            crate::trace::step(|| "create: init moved into its cgroup".into());
            parent.send(b"go")?;
            // A setup that hangs (a stuck mount source, say) must not hang the caller.
            let limit = std::env::var("BERTH_RUNTIME_CREATE_TIMEOUT_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(120_000);
            if !parent.wait_readable(limit) {
                return Err(RuntimeError::Init(format!(
                    "the container init did not finish its setup within {limit} ms"
                )));
            }
            let (msg, _) = parent.recv()?;
            if msg != b"ready" {
                let text =
                    String::from_utf8_lossy(msg.strip_prefix(b"err:").unwrap_or(&msg)).into_owned();
                let text = if text.is_empty() {
                    "the container init exited during setup".to_string()
                } else {
                    text
                };
                return Err(RuntimeError::Init(text));
            }
            crate::trace::step(|| "create: init ready".into());
            let (_, start_time) = state::proc_stat(pid.as_raw())
                .ok_or_else(|| RuntimeError::Init("the container init died".into()))?;
            let rec = Record {
                id: o.id.clone(),
                pid: pid.as_raw(),
                start_time,
                bundle: bundle.to_path_buf(),
                rootfs: rootfs.to_path_buf(),
                annotations: spec.annotations().clone().unwrap_or_default(),
                cgroups_path: Some(cg_path.to_string()),
                created: state::now_rfc3339(),
            };
            state::save(&o.root, &rec)?;
            if let Some(pf) = &o.pid_file {
                write_pid_file(pf, pid.as_raw())?;
            }
            crate::trace::step(|| "create: state saved".into());
            Ok(pid.as_raw())
        }
    }
}

struct InitCtx<'a> {
    spec: &'a Spec,
    proc_: &'a Process,
    bundle: &'a Path,
    rootfs: &'a Path,
    cgroup: &'a Cgroup,
    fifo_fd: &'a OwnedFd,
    console: Option<&'a OwnedFd>,
}

/// The container init (runs in the forked child, pid 1 of the new pid namespace). Returns only
/// on error.
fn init(chan: &Chan, c: &InitCtx) -> RuntimeError {
    match init_inner(chan, c) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

enum Never {}

fn init_inner(chan: &Chan, c: &InitCtx) -> Result<Never> {
    // Nobody in the container may open /proc/<init>/exe (our binary) while we run.
    let _ = nix::sys::prctl::set_dumpable(false);
    let (go, _) = chan.recv()?;
    if go != b"go" {
        return Err(RuntimeError::Init("the runtime went away".into()));
    }
    nix::unistd::setsid().map_err(sys_err("setsid"))?;
    let init = c
        .spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(INIT_ANNOTATION))
        .map(|v| v == "true")
        .unwrap_or(false);
    // The tiny init's image, made now: in the container's cgroup, before rlimits and seccomp.
    let init_image = if init { process::init_image() } else { None };
    let linux = c.spec.linux().clone().unwrap_or_default();
    let namespaces = linux.namespaces().clone().unwrap_or_default();
    let mut unshare = CloneFlags::empty();
    let mut mnt_path = None;
    let mut cgroup_ns = false;
    for ns in &namespaces {
        let t = ns.typ();
        if matches!(
            t,
            LinuxNamespaceType::Pid | LinuxNamespaceType::User | LinuxNamespaceType::Time
        ) {
            continue;
        }
        if t == LinuxNamespaceType::Cgroup {
            cgroup_ns = true;
        }
        match ns.path() {
            Some(p) if t == LinuxNamespaceType::Mount => mnt_path = Some(p.clone()),
            Some(p) => {
                let f = fs::File::open(p).map_err(io_err("open namespace", p))?;
                nix::sched::setns(f, process::ns_flag(t))
                    .map_err(sys_err(format!("setns {}", p.display())))?;
                if t == LinuxNamespaceType::Cgroup {
                    cgroup_ns = false;
                }
            }
            None => unshare |= process::ns_flag(t),
        }
    }
    crate::trace::step(|| "init: go, namespace paths joined".into());
    // A new mount namespace from the fork server's template (`mnttmpl`): a copy of the host's
    // own mounts, not of every container's. Not with a user namespace (its mounts are copied
    // into it as locked mounts) nor when joining a mount namespace.
    let pre = if unshare.contains(CloneFlags::CLONE_NEWNS)
        && mnt_path.is_none()
        && !namespaces
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::User)
        && crate::mnttmpl::available()
    {
        crate::mnttmpl::enter(c.rootfs, &crate::rootfs::bind_sources(c.spec, c.bundle))?
    } else {
        None
    };
    if pre.is_some() {
        crate::trace::step(|| "init: mount template joined".into());
    }
    nix::sched::unshare(unshare).map_err(sys_err("unshare"))?;
    crate::trace::step(|| "init: namespaces unshared".into());
    if let Some(p) = mnt_path {
        let f = fs::File::open(&p).map_err(io_err("open namespace", &p))?;
        nix::sched::setns(f, CloneFlags::CLONE_NEWNS).map_err(sys_err("setns mnt"))?;
    }
    let new_uts = unshare.contains(CloneFlags::CLONE_NEWUTS);
    if let Some(h) = c.spec.hostname() {
        if new_uts {
            nix::unistd::sethostname(h).map_err(sys_err("sethostname"))?;
        }
    }
    if let Some(d) = c.spec.domainname() {
        if new_uts {
            let cs = std::ffi::CString::new(d.as_bytes())
                .map_err(|_| RuntimeError::InvalidSpec("domainname".into()))?;
            // SAFETY: valid pointer and length.
            if unsafe { libc::setdomainname(cs.as_ptr(), d.len()) } != 0 {
                return Err(io_err("setdomainname", d)(std::io::Error::last_os_error()));
            }
        }
    }
    process::set_rlimits(c.proc_)?;
    if let Some(adj) = c.proc_.oom_score_adj() {
        fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(io_err("write", "/proc/self/oom_score_adj"))?;
    }
    let ctx = crate::rootfs::RootfsCtx {
        rootfs: c.rootfs,
        bundle: c.bundle,
        cgroup_ns,
        cgroup: Some(c.cgroup),
        terminal: c.proc_.terminal().unwrap_or(false),
    };
    crate::rootfs::prepare(c.spec, &ctx, pre.as_ref())?;
    crate::trace::step(|| "init: rootfs mounts and devices".into());
    if ctx.terminal {
        // /dev/console must exist as a mount target before the rootfs may become read-only.
        let p = c.rootfs.join("dev/console");
        if !p.exists() {
            fs::write(&p, b"").map_err(io_err("create", &p))?;
        }
    }
    crate::rootfs::pivot(c.rootfs)?;
    if ctx.terminal {
        let (master, slave, path) = process::open_pty()?;
        if let Some(sz) = c.proc_.console_size() {
            process::set_winsize(master.as_raw_fd(), sz.height() as u16, sz.width() as u16);
        }
        nix::mount::mount(
            Some(&path),
            "/dev/console",
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(sys_err("bind /dev/console"))?;
        if let Some(sock) = c.console {
            process::send_console(sock, &master)?;
        }
        drop(master);
        process::attach_tty(&slave)?;
    }
    crate::trace::step(|| "init: pivot_root, old root detached".into());
    crate::rootfs::finalize(c.spec)?;
    crate::trace::step(|| "init: sysctls, read-only and masked paths".into());
    let umask = c.proc_.user().umask().unwrap_or(0o022);
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(
        umask as libc::mode_t,
    ));
    let cwd = c.proc_.cwd();
    let cwd = if cwd.as_os_str().is_empty() {
        Path::new("/")
    } else {
        cwd.as_path()
    };
    let _ = fs::create_dir_all(cwd);
    std::env::set_current_dir(cwd).map_err(io_err("chdir", cwd))?;
    let mut env = c.proc_.env().clone().unwrap_or_default();
    process::ensure_home(&mut env, c.proc_.user().uid());
    let args = c.proc_.args().clone().unwrap_or_default();
    let exe = process::find_executable(&args[0], &env)?;
    crate::trace::step(|| "init: cwd, executable found".into());
    process::become_user(c.spec, c.proc_)?;
    // The cwd must still be inside the container (CVE-2024-21626).
    check_cwd()?;
    crate::trace::step(|| "init: user, capabilities, seccomp".into());
    // `init: true`: a signal sent once `create` has returned (a stop the instant `start`
    // returns, or even before it) must reach berth-init, not be dropped by pid 1 (see
    // `process::block_all_signals`); the user process gets the mask we had.
    let orig_mask = if init {
        process::block_all_signals()
    } else {
        0
    };
    chan.send(b"ready")?;
    // From here on errors go to the container's stderr (see process::fail).
    let _ = nix::sys::socket::shutdown(chan.0.as_raw_fd(), nix::sys::socket::Shutdown::Both);
    // Block until `start` opens the fifo for reading.
    let path = format!("/proc/self/fd/{}", c.fifo_fd.as_raw_fd());
    let w = nix::fcntl::open(
        path.as_str(),
        nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(sys_err("open exec fifo"))?;
    nix::unistd::write(&w, b"0").map_err(sys_err("write exec fifo"))?;
    drop(w);
    process::cloexec_from(3);
    let e = if init {
        process::mini_init(&exe, &args, &env, init_image.as_ref(), orig_mask)
    } else {
        process::exec(&exe, &args, &env)
    };
    Err(e)
}

fn check_cwd() -> Result<()> {
    match std::env::current_dir() {
        Ok(p) if p.is_absolute() => Ok(()),
        _ => Err(RuntimeError::Init(
            "working directory is outside the container".into(),
        )),
    }
}

/// Let the created container's process run.
pub fn start(root: &Path, id: &str) -> Result<()> {
    let rec = state::load(root, id)?;
    let st = state::status(root, &rec);
    if st != Status::Created {
        return Err(RuntimeError::BadStatus {
            id: id.into(),
            status: st.to_string(),
            wanted: "cannot start a container that is not created",
        });
    }
    let fifo = state::dir(root, id).join(EXEC_FIFO);
    let f = nix::fcntl::open(
        &fifo,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(sys_err("open exec fifo"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut pfd = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(&f),
            nix::poll::PollFlags::POLLIN,
        )];
        let n = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(100u16)).unwrap_or(0);
        if n > 0 {
            let mut b = [0u8; 1];
            match nix::unistd::read(&f, &mut b) {
                Ok(1) => break,
                Ok(_) | Err(nix::Error::EAGAIN) => {}
                Err(e) => return Err(sys_err("read exec fifo")(e)),
            }
        }
        if !state::init_alive(&rec) {
            let _ = fs::remove_file(&fifo);
            return Err(RuntimeError::Init(
                "the container init died before start".into(),
            ));
        }
        if Instant::now() > deadline {
            return Err(RuntimeError::Init(
                "timed out waiting for the container init".into(),
            ));
        }
    }
    fs::remove_file(&fifo).map_err(io_err("remove", &fifo))
}

/// The OCI state of a container.
pub fn state(root: &Path, id: &str) -> Result<State> {
    let rec = state::load(root, id)?;
    Ok(state::to_state(root, &rec))
}

/// Every container under `root`.
pub fn list(root: &Path) -> Result<Vec<State>> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(root) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err("read", root)(e)),
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Ok(rec) = state::load(root, &name) {
            out.push(state::to_state(root, &rec));
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// `SIGTERM`, `TERM`, `term`, `15` → the signal.
pub fn parse_signal(s: &str) -> Result<Signal> {
    Signal::try_from(parse_signal_number(s)?).map_err(|_| RuntimeError::BadSignal(s.into()))
}

/// Like [`parse_signal`] but also real-time signals: `SIGRTMIN+3`, `RTMAX-1`, `37`
/// (Compose `stop_signal` for systemd images).
pub fn parse_signal_number(s: &str) -> Result<i32> {
    let bad = || RuntimeError::BadSignal(s.into());
    if let Ok(n) = s.parse::<i32>() {
        return if (1..=libc::SIGRTMAX()).contains(&n) {
            Ok(n)
        } else {
            Err(bad())
        };
    }
    let up = s.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    let rt = |base: i32, rest: &str| -> Result<i32> {
        let n = match rest {
            "" => base,
            r if r.starts_with('+') => base + r[1..].parse::<i32>().map_err(|_| bad())?,
            r if r.starts_with('-') => base - r[1..].parse::<i32>().map_err(|_| bad())?,
            _ => return Err(bad()),
        };
        if (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&n) {
            Ok(n)
        } else {
            Err(bad())
        }
    };
    if let Some(rest) = name.strip_prefix("RTMIN") {
        return rt(libc::SIGRTMIN(), rest);
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        return rt(libc::SIGRTMAX(), rest);
    }
    format!("SIG{name}")
        .parse::<Signal>()
        .map(|s| s as i32)
        .map_err(|_| bad())
}

/// Send `sig` to the container's init (or, with `all`, to every process in its cgroup).
pub fn kill(root: &Path, id: &str, sig: Signal, all: bool) -> Result<()> {
    kill_number(root, id, sig as i32, all)
}

/// [`kill`] with a raw signal number (real-time signals included).
pub fn kill_number(root: &Path, id: &str, signo: i32, all: bool) -> Result<()> {
    let rec = state::load(root, id)?;
    let st = state::status(root, &rec);
    if st == Status::Stopped {
        return Err(RuntimeError::BadStatus {
            id: id.into(),
            status: st.to_string(),
            wanted: "cannot signal a stopped container",
        });
    }
    let send = |pid: i32| -> std::io::Result<()> {
        // SAFETY: kill(2) with a pid and signal number.
        if unsafe { libc::kill(pid, signo) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    let is_kill = signo == libc::SIGKILL;
    if all {
        if let Some(cg) = cgroup_of(&rec) {
            for p in cg.pids() {
                let _ = send(p);
            }
            if is_kill && cg.frozen() {
                let _ = cg.freeze(false);
            }
            return Ok(());
        }
    }
    send(rec.pid).map_err(io_err("kill", format!("pid {}", rec.pid)))?;
    if is_kill && st == Status::Paused {
        if let Some(cg) = cgroup_of(&rec) {
            let _ = cg.freeze(false);
        }
    }
    Ok(())
}

/// Remove the container: its processes (created, or any state with `force`), its cgroups and
/// its state directory. Nothing of it is left afterwards.
pub fn delete(root: &Path, id: &str, force: bool) -> Result<()> {
    let rec = match state::load(root, id) {
        Ok(r) => r,
        Err(RuntimeError::NotFound(_)) if force => return remove_partial(root, id),
        Err(e) => return Err(e),
    };
    let st = state::status(root, &rec);
    match st {
        Status::Stopped | Status::Created => {}
        Status::Running | Status::Paused | Status::Creating if force => {}
        _ => {
            return Err(RuntimeError::BadStatus {
                id: id.into(),
                status: st.to_string(),
                wanted: "cannot delete a running container without --force",
            })
        }
    }
    if st != Status::Stopped {
        let _ = nix::sys::signal::kill(Pid::from_raw(rec.pid), Signal::SIGKILL);
    }
    if let Some(cg) = cgroup_of(&rec) {
        cg.kill_all();
        cg.remove()?;
    }
    let d = state::dir(root, id);
    fs::remove_dir_all(&d).map_err(io_err("remove", &d))
}

/// A create that died before writing state.json (killed runtime): the state dir holds the
/// spec copy, which names the cgroup. Remove both so the id can be used again.
fn remove_partial(root: &Path, id: &str) -> Result<()> {
    let d = state::dir(root, id);
    if !d.exists() {
        return Ok(());
    }
    if let Ok(spec) = spec_of(root, id) {
        let path = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().clone())
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| crate::cgroups::default_path(id));
        if let Ok(cg) = Cgroup::new(&path) {
            cg.kill_all();
            cg.remove()?;
        }
    }
    fs::remove_dir_all(&d).map_err(io_err("remove", &d))
}

/// Host pids of every process of the container.
pub fn pids(root: &Path, id: &str) -> Result<Vec<i32>> {
    let rec = state::load(root, id)?;
    Ok(cgroup_of(&rec).map(|c| c.pids()).unwrap_or_default())
}

/// Memory, cpu and pids statistics of the container's cgroup.
pub fn stats(root: &Path, id: &str) -> Result<crate::cgroups::Stats> {
    let rec = state::load(root, id)?;
    Ok(cgroup_of(&rec).map(|c| c.stats()).unwrap_or_default())
}

pub fn pause(root: &Path, id: &str) -> Result<()> {
    let rec = state::load(root, id)?;
    let st = state::status(root, &rec);
    if st != Status::Running && st != Status::Created {
        return Err(RuntimeError::BadStatus {
            id: id.into(),
            status: st.to_string(),
            wanted: "cannot pause a container that is not running",
        });
    }
    cgroup_of(&rec)
        .ok_or_else(|| RuntimeError::InvalidSpec("no cgroup".into()))?
        .freeze(true)
}

pub fn resume(root: &Path, id: &str) -> Result<()> {
    let rec = state::load(root, id)?;
    let st = state::status(root, &rec);
    if st != Status::Paused {
        return Err(RuntimeError::BadStatus {
            id: id.into(),
            status: st.to_string(),
            wanted: "cannot resume a container that is not paused",
        });
    }
    cgroup_of(&rec)
        .ok_or_else(|| RuntimeError::InvalidSpec("no cgroup".into()))?
        .freeze(false)
}

/// Wait for a child pid (the CLI's own children only) and return Docker's exit code.
pub fn wait_child(pid: i32) -> i32 {
    loop {
        match nix::sys::wait::waitpid(Pid::from_raw(pid), None) {
            Ok(s @ nix::sys::wait::WaitStatus::Exited(..))
            | Ok(s @ nix::sys::wait::WaitStatus::Signaled(..)) => {
                return process::exit_status_to_code(s)
            }
            Ok(_) => continue,
            Err(nix::Error::EINTR) => continue,
            Err(_) => return 255,
        }
    }
}

pub fn spec_of(root: &Path, id: &str) -> Result<Spec> {
    load_spec(&state::dir(root, id).join(SPEC_FILE))
}

/// Options of `exec`.
#[derive(Debug, Clone, Default)]
pub struct ExecOpts {
    pub root: PathBuf,
    pub id: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub user: Option<String>,
    pub additional_gids: Vec<String>,
    pub tty: bool,
    pub detach: bool,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub process_file: Option<PathBuf>,
    pub cap_add: Vec<String>,
    pub no_new_privs: bool,
}

/// Run a new process in a running container; returns its exit code (0 with `detach`).
/// Forks: single-threaded callers only.
pub fn exec(o: &ExecOpts) -> Result<i32> {
    let rec = state::load(&o.root, &o.id)?;
    let st = state::status(&o.root, &rec);
    if st != Status::Running {
        return Err(RuntimeError::BadStatus {
            id: o.id.clone(),
            status: st.to_string(),
            wanted: "cannot exec in a container that is not running",
        });
    }
    let spec = spec_of(&o.root, &o.id)?;
    let p = exec_process(&spec, o, rec.pid)?;
    if p.args().as_ref().map(|a| a.is_empty()).unwrap_or(true) {
        return Err(RuntimeError::InvalidSpec("process.args is empty".into()));
    }
    let ns_order = [
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ];
    let own = |n: &str| fs::read_link(format!("/proc/self/ns/{n}")).ok();
    let mut fds = Vec::new();
    for (n, f) in ns_order {
        let path = format!("/proc/{}/ns/{n}", rec.pid);
        if fs::read_link(&path).ok() == own(n) {
            continue;
        }
        let fd = fs::File::open(&path).map_err(io_err("open namespace", &path))?;
        fds.push((fd, f));
    }
    let timens = format!("/proc/{}/ns/time", rec.pid);
    if fs::read_link(&timens).ok() != own("time") && Path::new(&timens).exists() {
        let f = fs::File::open(&timens).map_err(io_err("open namespace", &timens))?;
        nix::sched::setns(f, CloneFlags::from_bits_retain(libc::CLONE_NEWTIME))
            .map_err(sys_err("setns time"))?;
    }
    let pidns = format!("/proc/{}/ns/pid", rec.pid);
    if fs::read_link(&pidns).ok() != own("pid") {
        let f = fs::File::open(&pidns).map_err(io_err("open namespace", &pidns))?;
        nix::sched::setns(f, CloneFlags::CLONE_NEWPID).map_err(sys_err("setns pid"))?;
    }
    // Absent when the container runs without a cgroup (rootless without delegation).
    let cg = cgroup_of(&rec).filter(|c| c.exists());
    let console = match &o.console_socket {
        Some(s) => Some(OwnedFd::from(
            std::os::unix::net::UnixStream::connect(s)
                .map_err(io_err("connect console socket", s))?,
        )),
        None => None,
    };
    let (parent, child) = Chan::pair()?;
    // SAFETY: single-threaded CLI; the child execs or _exits.
    match unsafe { nix::unistd::fork() }.map_err(sys_err("fork"))? {
        ForkResult::Child => {
            drop(parent);
            let mut keep = vec![child.0.as_raw_fd()];
            keep.extend(console.as_ref().map(|c| c.as_raw_fd()));
            keep.extend(fds.iter().map(|(f, _)| f.as_raw_fd()));
            process::close_fds_except(&keep);
            let r = (|| -> Result<Never> {
                let _ = nix::sys::prctl::set_dumpable(false);
                if let Some(cg) = &cg {
                    cg.add_pid(std::process::id() as i32)?;
                }
                for (fd, f) in fds {
                    nix::sched::setns(fd, f).map_err(sys_err(format!("setns {f:?}")))?;
                }
                nix::unistd::setsid().map_err(sys_err("setsid"))?;
                if o.tty {
                    let (master, slave, _) = process::open_pty()?;
                    match &console {
                        Some(sock) => process::send_console(sock, &master)?,
                        None => child.send_fd(b"pty", Some(master.as_raw_fd()))?,
                    }
                    drop(master);
                    process::attach_tty(&slave)?;
                }
                process::set_rlimits(&p)?;
                let cwd = p.cwd();
                let cwd = if cwd.as_os_str().is_empty() {
                    Path::new("/")
                } else {
                    cwd.as_path()
                };
                std::env::set_current_dir(cwd).map_err(io_err("chdir", cwd))?;
                let mut env = p.env().clone().unwrap_or_default();
                process::ensure_home(&mut env, p.user().uid());
                let args = p.args().clone().unwrap_or_default();
                let exe = process::find_executable(&args[0], &env)?;
                process::become_user(&spec, &p)?;
                check_cwd()?;
                process::cloexec_from(3);
                Err(process::exec(&exe, &args, &env))
            })();
            let e = match r {
                Ok(never) => match never {},
                Err(e) => e,
            };
            process::fail(&child, &e)
        }
        ForkResult::Parent { child: pid } => {
            drop(child);
            drop(console);
            let mut pty = None;
            loop {
                let (msg, fd) = parent.recv()?;
                if msg.is_empty() {
                    break; // exec succeeded (CLOEXEC closed the channel)
                }
                if msg == b"pty" {
                    pty = fd;
                    continue;
                }
                let _ = nix::sys::wait::waitpid(pid, None);
                let text =
                    String::from_utf8_lossy(msg.strip_prefix(b"err:").unwrap_or(&msg)).into_owned();
                return Err(RuntimeError::Init(text));
            }
            if let Some(pf) = &o.pid_file {
                write_pid_file(pf, pid.as_raw())?;
            }
            if o.detach {
                return Ok(0);
            }
            if let Some(m) = pty {
                crate::tty::proxy(&m, pid.as_raw());
            }
            Ok(wait_child(pid.as_raw()))
        }
    }
}

fn exec_process(spec: &Spec, o: &ExecOpts, init_pid: i32) -> Result<Process> {
    if let Some(f) = &o.process_file {
        let data = fs::read(f).map_err(io_err("read", f))?;
        return serde_json::from_slice(&data).map_err(|source| RuntimeError::State {
            path: f.clone(),
            source,
        });
    }
    let mut p = spec
        .process()
        .clone()
        .ok_or_else(|| RuntimeError::InvalidSpec("no process".into()))?;
    if o.args.is_empty() {
        return Err(RuntimeError::Usage("exec needs a command".into()));
    }
    p.set_args(Some(o.args.clone()));
    p.set_terminal(Some(o.tty));
    let mut env = p.env().clone().unwrap_or_default();
    for kv in &o.env {
        let key = kv.split('=').next().unwrap_or("");
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(kv.clone());
    }
    p.set_env(Some(env));
    if let Some(c) = &o.cwd {
        p.set_cwd(c.clone());
    }
    if let Some(u) = &o.user {
        let rootfs = PathBuf::from(format!("/proc/{init_pid}/root"));
        let r = crate::user::resolve(&rootfs, u, &o.additional_gids)?;
        let mut user = p.user().clone();
        user.set_uid(r.uid);
        user.set_gid(r.gid);
        user.set_additional_gids(Some(r.additional_gids));
        p.set_user(user);
    }
    if o.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    if !o.cap_add.is_empty() {
        if let Some(mut caps) = p.capabilities().clone() {
            for c in &o.cap_add {
                let name = crate::capabilities::canonical(c);
                if let Ok(cap) = serde_json::from_value::<oci_spec::runtime::Capability>(
                    serde_json::Value::String(name),
                ) {
                    let add = |s: &Option<oci_spec::runtime::Capabilities>| {
                        let mut s = s.clone().unwrap_or_default();
                        s.insert(cap);
                        Some(s)
                    };
                    caps.set_bounding(add(caps.bounding()));
                    caps.set_effective(add(caps.effective()));
                    caps.set_permitted(add(caps.permitted()));
                }
            }
            p.set_capabilities(Some(caps));
        }
    }
    Ok(p)
}

/// `create` + `start` + wait (+ delete unless `detach`). Returns the exit code.
pub fn run(o: &CreateOpts, detach: bool) -> Result<i32> {
    let pid = create(o)?;
    if let Err(e) = start(&o.root, &o.id) {
        let _ = delete(&o.root, &o.id, true);
        return Err(e);
    }
    if detach {
        return Ok(0);
    }
    let code = forward_signals_and_wait(pid);
    delete(&o.root, &o.id, true)?;
    Ok(code)
}

/// Foreground `run`: forward every signal we get (Ctrl-C, TERM, …) to the container's init
/// and return its exit code, like runc's signal handler.
fn forward_signals_and_wait(pid: i32) -> i32 {
    use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let mut set = SigSet::all();
    // Keep the synchronous fault signals deliverable.
    for s in [
        Signal::SIGSEGV,
        Signal::SIGBUS,
        Signal::SIGILL,
        Signal::SIGFPE,
    ] {
        set.remove(s);
    }
    if sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None).is_err() {
        return wait_child(pid);
    }
    let child = Pid::from_raw(pid);
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(s @ WaitStatus::Exited(..)) | Ok(s @ WaitStatus::Signaled(..)) => {
                return process::exit_status_to_code(s)
            }
            Err(nix::Error::ECHILD) => return 255,
            _ => {}
        }
        match set.wait() {
            Ok(Signal::SIGCHLD) => continue,
            Ok(sig) => {
                let _ = nix::sys::signal::kill(child, sig);
            }
            Err(_) => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names() {
        assert_eq!(parse_signal("SIGTERM").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("term").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("9").unwrap(), Signal::SIGKILL);
        assert_eq!(
            parse_signal_number("SIGRTMIN+3").unwrap(),
            libc::SIGRTMIN() + 3
        );
        assert_eq!(
            parse_signal_number("RTMAX-1").unwrap(),
            libc::SIGRTMAX() - 1
        );
        assert_eq!(parse_signal_number("40").unwrap(), 40);
        assert!(parse_signal_number("SIGNOPE").is_err());
        assert!(parse_signal_number("0").is_err());
        assert!(parse_signal_number("RTMIN+99").is_err());
        assert!(parse_signal("40").is_err());
    }
}
