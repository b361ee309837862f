//! Rootless berth (owns: entering the per-user rootless namespace, its holder process, the
//! host-side port binder and the rootless state paths).
//!
//! As rootlesskit and podman do, a berth run by a non-root uid runs the whole engine inside a
//! per-user "rootless namespace": a user namespace (uid 0 inside = the user, plus the user's
//! `/etc/subuid` and `/etc/subgid` ranges through `newuidmap`/`newgidmap` when both exist, else
//! the one id), a mount namespace and a network namespace. Inside, berth is root over what it
//! owns: bridges, veths, nftables, the embedded DNS and overlay snapshots work unchanged.
//!
//! The namespaces are kept by `berth __rootless-hold <dir>`, started by the first command of the
//! user, single-threaded and never using tokio:
//! - the holder process itself stays in the host's namespaces as the user and binds published
//!   ports there for the supervisor (see below);
//! - its forked child unshares the namespaces and sleeps (`PR_SET_PDEATHSIG`: it dies with the
//!   holder). Every berth command of the user joins the child's namespaces with one
//!   `setns(pidfd, USER|MNT|NET)` at the top of `main`, before any thread exists (a threaded
//!   process cannot join a user namespace), and everything it starts (the supervisor, the
//!   runtime) inherits them.
//!
//! Published ports: a socket belongs to the network namespace where `socket()` was called, so
//! the holder (host netns) binds the published address and hands the bound socket to the
//! supervisor over `ports.sock` (SCM_RIGHTS); the supervisor's userland relay
//! (`berth_network::relay`, with a binder set by `install_port_binder`) accepts on it and
//! connects to the container inside the rootless netns. Chosen over `pasta`/slirp4netns:
//! no extra package, no packet translation (the relay already exists for hosts that route
//! nothing), the client connects to the real host port, and outbound internet (the other half
//! of what slirp/pasta give) is not wanted here.
//!
//! The holder exits when the last project of the user goes down (`release_if_idle`, after
//! `down`), so nothing of berth stays running for a user with no stack up. A holder killed
//! while a stack runs is replaced by one that joins that stack's supervisor's namespaces
//! (`live_namespace`). `config`, `version` and `completion` never enter (see `main`).
//!
//! Ports: `up` also checks each published port on the host (`check_host_port`), and a random
//! host port comes from the host's free ports (`pick_host_port`): the rootless netns's own view
//! of free ports says nothing about the host's.
//!
//! State: data under `$XDG_DATA_HOME/berth` (`~/.local/share/berth`), runtime state under
//! `$XDG_RUNTIME_DIR/berth` (or `/tmp/berth-<uid>`, 0700); `BERTH_ROOT` still moves both.
//! The holder's files are in `<run>/rootless/`: `lock`, `ns.pid` ("<holder> <child>"),
//! `ports.sock`.
//!
//! cgroups: the holder, started in the cgroup of the user's first command, looks for a cgroup
//! delegated to the user (`prepare_cgroup`: the highest ancestor of its own cgroup whose
//! directory and cgroup.procs the user may write, as systemd's `Delegate=yes` user@.service
//! makes; v1: the same path delegated in every hierarchy). On v2 it moves the processes of
//! that cgroup into a leaf (`berth-leaf`: no internal processes) and enables cpu, memory,
//! pids (io where delegated) for its children. Its answer is in `<run>/rootless/cgroup`;
//! every command then puts containers under `<delegated>/berth/<project>/<id>` (the runtime
//! only sees a longer cgroupsPath). Without one, the runtime creates no cgroup, and `up`
//! names the services whose limits are not applied and what to enable (`warn_limits`).

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Set (inherited by every child) once a process runs inside the rootless namespace.
pub const INSIDE_ENV: &str = "BERTH_ROOTLESS";
const DATA_ENV: &str = "BERTH_ROOTLESS_DATA";
const RUN_ENV: &str = "BERTH_ROOTLESS_RUN";
pub const HOLD_ARG: &str = "__rootless-hold";

/// This command's shared hold on `<run>/rootless/lock` (see `enter`).
static LOCK: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();

/// True in a berth process that runs inside a rootless namespace.
pub fn active() -> bool {
    std::env::var_os(INSIDE_ENV).is_some()
}

/// (data, run) of a rootless berth, when this process is one.
pub fn dirs() -> Option<(PathBuf, PathBuf)> {
    if !active() {
        return None;
    }
    Some((
        PathBuf::from(std::env::var_os(DATA_ENV)?),
        PathBuf::from(std::env::var_os(RUN_ENV)?),
    ))
}

/// The default (data, run) directories of a non-root user (before `BERTH_ROOT`).
pub fn default_dirs(
    uid: u32,
    xdg_data: Option<OsString>,
    home: Option<OsString>,
    xdg_runtime: Option<OsString>,
) -> Result<(PathBuf, PathBuf), String> {
    let nonempty = |v: Option<OsString>| v.filter(|s| !s.is_empty()).map(PathBuf::from);
    let data = match (nonempty(xdg_data), nonempty(home)) {
        (Some(x), _) if x.is_absolute() => x.join("berth"),
        (_, Some(h)) if h.is_absolute() => h.join(".local/share/berth"),
        _ => {
            return Err(
                "rootless berth needs HOME or XDG_DATA_HOME (an absolute path) for its data".into(),
            )
        }
    };
    let run = match nonempty(xdg_runtime) {
        Some(x) if x.is_absolute() => x.join("berth"),
        _ => PathBuf::from(format!("/tmp/berth-{uid}")),
    };
    Ok((data, run))
}

/// Make `dir` (and parents) and check it is ours and private: a run dir in /tmp could have
/// been made by someone else first.
fn private_dir(dir: &Path, uid: u32) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let md = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !md.is_dir() || md.uid() != uid {
        return Err(format!(
            "{} is not a directory owned by uid {uid}; remove it or set XDG_RUNTIME_DIR",
            dir.display()
        ));
    }
    if md.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("chmod {}: {e}", dir.display()))?;
    }
    Ok(())
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: a plain syscall; the returned fd is owned by us.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: fd is a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The holder's pids ("<holder> <child>") if it runs: both alive and both berth holders.
fn running_holder(rdir: &Path) -> Option<(i32, i32)> {
    let text = std::fs::read_to_string(rdir.join("ns.pid")).ok()?;
    let mut it = text.split_whitespace().map(|s| s.parse::<i32>().ok());
    let (holder, child) = (it.next()??, it.next()??);
    let is_holder = |pid: i32| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| {
                c.split(|b| *b == 0)
                    .nth(1)
                    .map(|a| a == HOLD_ARG.as_bytes())
                    .unwrap_or(false)
            })
            .unwrap_or(false)
    };
    let parent_of = |pid: i32| -> Option<i32> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        s.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    (is_holder(holder) && is_holder(child) && parent_of(child) == Some(holder))
        .then_some((holder, child))
}

/// Join the user's rootless namespace when berth runs as a non-root user, starting its holder
/// if none runs. Must be called first in `main`, while the process has one thread.
pub fn enter() -> Result<(), String> {
    // SAFETY: plain getters.
    let (euid, uid) = unsafe { (libc::geteuid(), libc::getuid()) };
    if euid == 0 {
        return Ok(());
    }
    if uid != euid {
        return Err("berth does not run setuid; run it as root or as a plain user".into());
    }
    let (data, run) = match std::env::var_os("BERTH_ROOT").filter(|r| !r.is_empty()) {
        Some(root) => (
            PathBuf::from(&root).join("data"),
            PathBuf::from(root).join("run"),
        ),
        None => default_dirs(
            uid,
            std::env::var_os("XDG_DATA_HOME"),
            std::env::var_os("HOME"),
            std::env::var_os("XDG_RUNTIME_DIR"),
        )?,
    };
    private_dir(&run, uid)?;
    std::fs::create_dir_all(&data).map_err(|e| format!("creating {}: {e}", data.display()))?;
    let rdir = run.join("rootless");
    let lock = lock_rootless_dir(&run, &rdir, uid)?;
    let child = match running_holder(&rdir) {
        Some((_, c)) => c,
        None => start_holder(&rdir, live_namespace(&run))?,
    };
    let pidfd = pidfd_open(child).map_err(|e| format!("rootless namespace holder: {e}"))?;
    let cwd = std::env::current_dir().ok();
    // SAFETY: setns on a pidfd we own; this process is single-threaded here (top of main).
    let rc = unsafe {
        libc::setns(
            pidfd.as_raw_fd(),
            libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWNET,
        )
    };
    if rc != 0 {
        return Err(format!(
            "joining the rootless namespace (holder pid {child}): {}",
            errno()
        ));
    }
    // Held shared for this command's life (not by what it execs: the descriptor is
    // close-on-exec), so `release_if_idle` never stops the holder under a running command.
    // SAFETY: flock on a descriptor we own.
    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_SH) };
    let _ = LOCK.set(lock);
    // Joining a mount namespace moves the root and working directory to its root.
    if let Some(cwd) = cwd {
        if let Err(e) = std::env::set_current_dir(&cwd) {
            return Err(format!(
                "the working directory {} is not reachable inside the rootless namespace: {e}",
                cwd.display()
            ));
        }
    }
    // SAFETY: setting the environment before any thread exists.
    unsafe {
        std::env::set_var(INSIDE_ENV, "1");
        match std::fs::read_to_string(rdir.join(CGROUP_FILE)) {
            Ok(t) if t.starts_with("ok /") => std::env::set_var(CGROUP_ENV, t[3..].trim_end()),
            Ok(t) => std::env::set_var(
                CGROUP_WHY_ENV,
                t.strip_prefix("no ").unwrap_or(&t).trim_end(),
            ),
            Err(_) => {}
        }
        std::env::set_var(DATA_ENV, &data);
        std::env::set_var(RUN_ENV, &run);
        // Root's tools (nft) are in the sbin dirs, which a plain user's PATH often lacks.
        std::env::set_var("PATH", with_sbin(std::env::var_os("PATH")));
    }
    Ok(())
}

/// Make `<run>/rootless` and take its lock exclusively. A `release_if_idle` that held the lock
/// before us has removed the file (and maybe the dirs): then make them again and retry.
fn lock_rootless_dir(run: &Path, rdir: &Path, uid: u32) -> Result<std::fs::File, String> {
    let path = rdir.join("lock");
    for _ in 0..10 {
        private_dir(run, uid)?;
        private_dir(rdir, uid)?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        // SAFETY: flock on a descriptor we own; released when `lock` is closed.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(format!("locking {}: {}", path.display(), errno()));
        }
        let linked = lock.metadata().map(|m| m.nlink() > 0).unwrap_or(false);
        if linked {
            return Ok(lock);
        }
    }
    Err(format!(
        "{}: removed again and again under us",
        path.display()
    ))
}

/// `path` with /usr/local/sbin, /usr/sbin and /sbin added at its end when missing.
fn with_sbin(path: Option<OsString>) -> OsString {
    let mut dirs: Vec<PathBuf> = path
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in ["/usr/local/sbin", "/usr/sbin", "/sbin"] {
        if !dirs.iter().any(|x| x == Path::new(d)) {
            dirs.push(PathBuf::from(d));
        }
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

/// A supervisor of the user that still runs in a rootless namespace while no holder does (the
/// holder was killed): the new holder keeps that namespace instead of making an empty one, so
/// the running stacks stay reachable (`exec`, `cp`, new published ports).
fn live_namespace(run: &Path) -> Option<i32> {
    // SAFETY: a plain getter.
    let uid = unsafe { libc::getuid() };
    let own = std::fs::read_link("/proc/self/ns/user").ok()?;
    std::fs::read_dir(run.join("projects"))
        .ok()?
        .flatten()
        .filter_map(|p| {
            std::fs::read_to_string(p.path().join("supervisor.pid"))
                .ok()?
                .trim()
                .parse::<i32>()
                .ok()
        })
        .find(|pid| {
            let proc_ = PathBuf::from(format!("/proc/{pid}"));
            *pid > 0
                && std::fs::metadata(&proc_).is_ok_and(|m| m.uid() == uid)
                && std::fs::read_link(proc_.join("ns/user")).is_ok_and(|ns| ns != own)
        })
}

/// Start `berth __rootless-hold <rdir>` detached (its own session) and wait for it to report
/// "ok <child pid>" or an error on its stdout.
fn start_holder(rdir: &Path, join: Option<i32>) -> Result<i32, String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding berth's binary: {e}"))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg(HOLD_ARG).arg(rdir);
    if let Some(pid) = join {
        cmd.arg("--join").arg(pid.to_string());
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(errno());
            }
            Ok(())
        });
    }
    let mut ch = cmd
        .spawn()
        .map_err(|e| format!("starting the rootless namespace holder: {e}"))?;
    let mut out = String::new();
    let _ = ch
        .stdout
        .take()
        .expect("piped")
        .take(4096)
        .read_to_string(&mut out);
    let out = out.trim();
    if let Some(pid) = out.strip_prefix("ok ").and_then(|p| p.parse::<i32>().ok()) {
        return Ok(pid);
    }
    let _ = ch.kill();
    let _ = ch.wait();
    Err(if out.is_empty() {
        "the rootless namespace holder exited without a word".to_string()
    } else {
        out.to_string()
    })
}

/// One `/etc/subuid` or `/etc/subgid` range of the user: (start, count).
pub fn sub_range(text: &str, name: Option<&str>, id: u32) -> Option<(u32, u32)> {
    text.lines().find_map(|l| {
        let l = l.trim();
        if l.starts_with('#') {
            return None;
        }
        let mut f = l.split(':');
        let (who, start, count) = (f.next()?, f.next()?, f.next()?);
        let me = Some(who) == name || who.parse::<u32>().ok() == Some(id);
        let (start, count) = (start.parse().ok()?, count.parse::<u32>().ok()?);
        (me && count > 0).then_some((start, count))
    })
}

fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let _pw = f.next()?;
        (f.next()?.parse::<u32>().ok()? == uid).then(|| name.to_string())
    })
}

fn find_tool(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

/// Write the child's uid and gid maps: the user's sub-ranges through the setuid helpers when
/// both exist, else the user's own ids only (then files owned by other ids in an image cannot
/// be given their owner).
fn write_maps(pid: i32, uid: u32, gid: u32) -> Result<(), String> {
    let name = user_name(uid);
    let subuid = std::fs::read_to_string("/etc/subuid").unwrap_or_default();
    let subgid = std::fs::read_to_string("/etc/subgid").unwrap_or_default();
    let ranges = (
        sub_range(&subuid, name.as_deref(), uid),
        sub_range(&subgid, name.as_deref(), gid),
    );
    let tools = (find_tool("newuidmap"), find_tool("newgidmap"));
    if let ((Some(ur), Some(gr)), (Some(nu), Some(ng))) = (ranges, tools) {
        for (tool, id, (start, count)) in [(nu, uid, ur), (ng, gid, gr)] {
            let out = std::process::Command::new(&tool)
                .args([pid.to_string(), "0".into(), id.to_string(), "1".into()])
                .args(["1".to_string(), start.to_string(), count.to_string()])
                .stdin(std::process::Stdio::null())
                .output()
                .map_err(|e| format!("{}: {e}", tool.display()))?;
            if !out.status.success() {
                return Err(format!(
                    "{} failed: {} (check /etc/subuid and /etc/subgid for user {})",
                    tool.display(),
                    String::from_utf8_lossy(&out.stderr).trim(),
                    name.as_deref().unwrap_or("?")
                ));
            }
        }
        return Ok(());
    }
    let w = |f: &str, s: String| {
        std::fs::write(format!("/proc/{pid}/{f}"), s).map_err(|e| format!("writing {f}: {e}"))
    };
    w("uid_map", format!("0 {uid} 1\n"))?;
    w("setgroups", "deny\n".into())?;
    w("gid_map", format!("0 {gid} 1\n"))
}

fn read_byte(fd: &OwnedFd) -> Option<u8> {
    let mut b = [0u8; 1];
    // SAFETY: reading into a local buffer.
    let n = unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
    (n == 1).then_some(b[0])
}

fn write_bytes(fd: &OwnedFd, b: &[u8]) {
    // SAFETY: writing from a local buffer.
    unsafe { libc::write(fd.as_raw_fd(), b.as_ptr().cast(), b.len()) };
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(errno());
    }
    // SAFETY: fresh descriptors.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Bring `lo` up in the current network namespace.
fn loopback_up() -> std::io::Result<()> {
    // SAFETY: an ioctl on a socket we own with a zeroed, then filled, ifreq.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return Err(errno());
        }
        let s = OwnedFd::from_raw_fd(s);
        let mut ifr: libc::ifreq = std::mem::zeroed();
        ifr.ifr_name[0] = b'l' as libc::c_char;
        ifr.ifr_name[1] = b'o' as libc::c_char;
        if libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) != 0 {
            return Err(errno());
        }
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) != 0 {
            return Err(errno());
        }
    }
    Ok(())
}

/// Host-wide directories the network crate keeps its locks and switch records in (`/run/lock`,
/// `/run/berth-switch`): the host's belong to root's berth, so the rootless namespace gets
/// private ones (dirs of `<run>/rootless/` bound over them), as its bridges are its own.
const PRIVATE_HOST_DIRS: [(&str, &str); 2] = [
    ("locks", "/run/lock"),
    ("switch", berth_network::bridge::SWITCH_DIR),
];

fn mount_c(
    src: &Path,
    dst: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let src = CString::new(src.as_os_str().as_bytes())?;
    let dst = CString::new(dst.as_os_str().as_bytes())?;
    let fstype = fstype.map(CString::new).transpose()?;
    let data = data.map(CString::new).transpose()?;
    // SAFETY: mount(2) with valid C strings (or null) that outlive the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |f| f.as_ptr()),
            flags,
            data.as_ref()
                .map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    };
    if rc != 0 {
        return Err(errno());
    }
    Ok(())
}

/// Make the namespace's `/run` a tmpfs of its own that shows every entry of the host's `/run`
/// (bound back, recursively, so `/run/user/<uid>` and the host's resolver files stay as they
/// are): the network crate's host-wide dirs (`/run/berth-switch`) can then be made inside even
/// where root's berth never ran, and never touch the host's.
fn writable_run(rdir: &Path) -> std::io::Result<()> {
    let host = rdir.join("hostrun");
    std::fs::create_dir_all(&host)?;
    mount_c(
        Path::new("/run"),
        &host,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )?;
    // The copy stays reachable through this descriptor once the tmpfs hides its path (the run
    // dir may itself be under /run).
    let host_fd = std::fs::File::open(&host)?;
    let base = PathBuf::from(format!("/proc/self/fd/{}", host_fd.as_raw_fd()));
    mount_c(
        Path::new("tmpfs"),
        Path::new("/run"),
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=755"),
    )?;
    for e in std::fs::read_dir(&base)?.flatten() {
        let (src, dst) = (e.path(), Path::new("/run").join(e.file_name()));
        let Ok(md) = std::fs::symlink_metadata(&src) else {
            continue;
        };
        // An entry that cannot be bound back is left out rather than failing the namespace.
        let _ = if md.file_type().is_symlink() {
            std::fs::read_link(&src).and_then(|t| std::os::unix::fs::symlink(t, &dst))
        } else if md.is_dir() {
            std::fs::create_dir(&dst)
                .and_then(|_| mount_c(&src, &dst, None, libc::MS_BIND | libc::MS_REC, None))
        } else {
            std::fs::File::create(&dst).and_then(|_| mount_c(&src, &dst, None, libc::MS_BIND, None))
        };
    }
    // SAFETY: detaching the copy made above, through its descriptor.
    unsafe {
        let p = std::ffi::CString::new(base.as_os_str().as_encoded_bytes())?;
        libc::umount2(p.as_ptr(), libc::MNT_DETACH);
    }
    drop(host_fd);
    let _ = std::fs::remove_dir(&host);
    std::fs::create_dir_all(berth_network::bridge::SWITCH_DIR)
}

fn bind_private(private: &Path, host: &str) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    std::fs::create_dir_all(private)?;
    let src = CString::new(private.as_os_str().as_bytes())?;
    let dst = CString::new(host)?;
    if !Path::new(host).is_dir() {
        return Err(std::io::Error::other(format!(
            "{host} does not exist on this host (create it as root, or run berth once as root)"
        )));
    }
    // SAFETY: a bind mount in our own mount namespace with valid C strings.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(errno());
    }
    Ok(())
}

/// The namespaces' side of the holder (forked child): unshare, wait for the maps, sleep.
fn hold_child(
    rdir: &Path,
    join: Option<&OwnedFd>,
    to_parent: OwnedFd,
    from_parent: OwnedFd,
    parent: i32,
) -> ! {
    let fail = |what: &str, e: std::io::Error| -> ! {
        write_bytes(&to_parent, format!("E{what}: {e}").as_bytes());
        // SAFETY: leaving the forked child without running the parent's destructors.
        unsafe { libc::_exit(1) }
    };
    // SAFETY: plain syscalls in a single-threaded child.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        // The starting CLI reads the holder's stdout to its end: not ours to keep open.
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 1);
            libc::close(null);
        }
        if libc::getppid() != parent {
            libc::_exit(1);
        }
        match join {
            // Keep a running supervisor's namespaces (see `live_namespace`).
            Some(fd) => {
                let all = libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWNET;
                if libc::setns(fd.as_raw_fd(), all) != 0 {
                    fail("joining the running stack's namespaces", errno());
                }
            }
            None => {
                if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                    fail("creating a user namespace", errno());
                }
            }
        }
    }
    write_bytes(&to_parent, b"u");
    if read_byte(&from_parent) != Some(b'g') {
        // SAFETY: as above.
        unsafe { libc::_exit(1) };
    }
    if join.is_none() {
        if let Err((what, e)) = make_namespaces(rdir) {
            fail(&what, e);
        }
    }
    write_bytes(&to_parent, b"r");
    drop(to_parent);
    drop(from_parent);
    loop {
        // SAFETY: sleeping until a signal (SIGKILL when the holder dies).
        unsafe { libc::pause() };
    }
}

/// The mount and network namespaces, made by a holder child that is root in its new user
/// namespace.
fn make_namespaces(rdir: &Path) -> Result<(), (String, std::io::Error)> {
    // SAFETY: plain syscalls in the single-threaded holder child.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWNET) != 0 {
            return Err(("creating mount and network namespaces".into(), errno()));
        }
        // Mounts made inside stay inside; the host's new mounts still come in.
        libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        );
    }
    if let Err(e) = writable_run(rdir) {
        return Err(("making /run writable inside".into(), e));
    }
    for (private, host) in PRIVATE_HOST_DIRS {
        if let Err(e) = bind_private(&rdir.join(private), host) {
            return Err((format!("binding a private {host}"), e));
        }
    }
    loopback_up().map_err(|e| ("bringing lo up".to_string(), e))
}

/// `berth __rootless-hold <dir>`: see the module comment. Reports "ok <child>" or an error
/// on stdout, then serves port binds until its child dies or it is told to stop (SIGTERM).
pub fn hold(args: &[OsString]) -> u8 {
    let Some(rdir) = args.first().map(PathBuf::from) else {
        println!("usage: berth {HOLD_ARG} DIR");
        return 2;
    };
    let join = match (args.get(1).and_then(|a| a.to_str()), args.get(2)) {
        (Some("--join"), Some(p)) => match p.to_str().and_then(|p| p.parse::<i32>().ok()) {
            Some(p) => Some(p),
            None => {
                println!("usage: berth {HOLD_ARG} DIR [--join PID]");
                return 2;
            }
        },
        _ => None,
    };
    match hold_inner(&rdir, join) {
        Ok(()) => 0,
        Err(e) => {
            println!("{e}");
            1
        }
    }
}

fn hold_inner(rdir: &Path, join: Option<i32>) -> Result<(), String> {
    // SAFETY: plain getters.
    let (uid, gid, me) = unsafe { (libc::getuid(), libc::getgid(), libc::getpid()) };
    let join = join
        .map(|pid| pidfd_open(pid).map_err(|e| format!("rootless: process {pid}: {e}")))
        .transpose()?;
    // Before the fork: the holder and its child go to the leaf with the rest (v2).
    let cg = match prepare_cgroup() {
        Ok(prefix) => format!("ok {prefix}\n"),
        Err(why) => format!("no {why}\n"),
    };
    std::fs::write(rdir.join(CGROUP_FILE), cg)
        .map_err(|e| format!("writing {}: {e}", rdir.join(CGROUP_FILE).display()))?;
    let (c_r, c_w) = pipe().map_err(|e| e.to_string())?;
    let (p_r, p_w) = pipe().map_err(|e| e.to_string())?;
    // SAFETY: this process is single-threaded (re-exec entry, before anything else).
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(format!("fork: {}", errno()));
    }
    if child == 0 {
        drop(c_r);
        drop(p_w);
        hold_child(rdir, join.as_ref(), c_w, p_r, me);
    }
    drop(c_w);
    drop(p_r);
    let kill_child = |e: String| -> String {
        // SAFETY: our own child.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
        e
    };
    let mut r = std::fs::File::from(c_r);
    let mut first = [0u8; 1];
    if r.read_exact(&mut first).is_err() || first[0] != b'u' {
        let mut msg = String::new();
        let _ = r.read_to_string(&mut msg);
        return Err(kill_child(rootless_unavailable(&msg)));
    }
    if join.is_none() {
        write_maps(child, uid, gid).map_err(kill_child)?;
    }
    write_bytes(&p_w, b"g");
    let mut ready = [0u8; 1];
    if r.read_exact(&mut ready).is_err() || ready[0] != b'r' {
        let mut msg = String::new();
        let _ = r.read_to_string(&mut msg);
        return Err(kill_child(format!(
            "rootless namespace: {}",
            msg.trim_start_matches('E')
        )));
    }
    let sock = rdir.join("ports.sock");
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock)
        .map_err(|e| kill_child(format!("binding {}: {e}", sock.display())))?;
    std::fs::write(rdir.join("ns.pid"), format!("{me} {child}\n"))
        .map_err(|e| kill_child(format!("writing {}: {e}", rdir.join("ns.pid").display())))?;
    println!("ok {child}");
    let _ = std::io::stdout().flush();
    // Nobody reads our output any more.
    // SAFETY: replacing fd 1 with /dev/null.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 1);
            libc::close(null);
        }
    }
    serve_ports(&listener, child, uid);
    let _ = std::fs::remove_file(&sock);
    Ok(())
}

/// What to tell the user when the kernel refuses the user namespace.
fn rootless_unavailable(msg: &str) -> String {
    let msg = msg.trim_start_matches('E').trim();
    let max = std::fs::read_to_string("/proc/sys/user/max_user_namespaces").unwrap_or_default();
    let mut s = format!("rootless berth cannot start: {msg}");
    if max.trim() == "0" {
        s.push_str("; user namespaces are disabled: set user.max_user_namespaces > 0 (sysctl)");
    } else if let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/unprivileged_userns_clone") {
        if v.trim() == "0" {
            s.push_str("; set kernel.unprivileged_userns_clone=1 (sysctl)");
        }
    } else if let Ok(v) =
        std::fs::read_to_string("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
    {
        if v.trim() == "1" {
            s.push_str(
                "; AppArmor restricts unprivileged user namespaces: set \
                 kernel.apparmor_restrict_unprivileged_userns=0 or give berth a profile",
            );
        }
    }
    s.push_str(" (or run berth as root)");
    s
}

/// Serve `ports.sock` one request at a time until the child dies.
fn serve_ports(listener: &UnixListener, child: i32, uid: u32) {
    let Ok(child_fd) = pidfd_open(child) else {
        return;
    };
    loop {
        let mut fds = [
            libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: child_fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: polling two descriptors we own.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if errno().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if fds[1].revents != 0 {
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
            return;
        }
        if fds[0].revents != 0 {
            if let Ok((conn, _)) = listener.accept() {
                let _ = serve_one(conn, uid);
            }
        }
    }
}

fn peer_uid(s: &UnixStream) -> Option<u32> {
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt into a local struct of the right size.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(cred.uid)
}

/// A request is one line, `tcp|udp <ip> <port>`; the answer `ok` with the bound socket
/// attached, or `err <message>`.
fn serve_one(mut conn: UnixStream, uid: u32) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
    if peer_uid(&conn) != Some(uid) {
        return Ok(());
    }
    let mut line = String::new();
    BufReader::new((&conn).take(256)).read_line(&mut line)?;
    let bound: Result<OwnedFd, String> = (|| {
        let mut f = line.split_whitespace();
        let (proto, ip, port) = (f.next(), f.next(), f.next());
        let addr: SocketAddr = format!("{}:{}", ip.unwrap_or(""), port.unwrap_or(""))
            .parse()
            .map_err(|_| format!("bad request {line:?}"))?;
        let r = match proto {
            Some("tcp") => std::net::TcpListener::bind(addr).map(OwnedFd::from),
            Some("udp") => std::net::UdpSocket::bind(addr).map(OwnedFd::from),
            _ => return Err(format!("bad request {line:?}")),
        };
        r.map_err(|e| {
            let mut m = format!("binding {} {addr}: {e}", proto.unwrap_or(""));
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                let start =
                    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
                        .unwrap_or_default();
                m.push_str(&format!(
                    " (a user may publish ports from net.ipv4.ip_unprivileged_port_start = {} \
                     up: choose a higher host port, or lower that sysctl as root)",
                    start.trim()
                ));
            }
            m
        })
    })();
    match bound {
        Ok(fd) => send_fd(&conn, b"ok\n", &fd),
        Err(e) => conn.write_all(format!("err {e}\n").as_bytes()),
    }
}

fn send_fd(s: &UnixStream, msg: &[u8], fd: &OwnedFd) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let iov = [std::io::IoSlice::new(msg)];
    let fds = [fd.as_raw_fd()];
    sendmsg::<()>(
        s.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(std::io::Error::from)?;
    Ok(())
}

/// Ask the holder (host network namespace) for a socket bound to `addr`.
pub fn bind_on_host(sock: &Path, proto: &str, addr: SocketAddr) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("{proto} {} {}\n", addr.ip(), addr.port()).as_bytes())?;
    let mut buf = [0u8; 512];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        s.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(std::io::Error::from)?;
    let mut got = None;
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for fd in fds {
                // SAFETY: descriptors just received are ours.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                got.get_or_insert(fd);
            }
        }
    }
    let n = msg.bytes;
    let text = String::from_utf8_lossy(&buf[..n]).trim().to_string();
    match got {
        Some(fd) if text == "ok" => Ok(fd),
        _ => Err(std::io::Error::other(
            text.strip_prefix("err ").unwrap_or(&text).to_string(),
        )),
    }
}

/// In a rootless berth, whether the host can give the published port: the supervisor's own
/// check sees only the rootless network namespace, where every port is free. The probe socket
/// is closed at once.
pub fn check_host_port(protocol: &str, host_ip: Option<&str>, port: u16) -> anyhow::Result<()> {
    let Some((_, run)) = dirs() else {
        return Ok(());
    };
    let ip: std::net::IpAddr = match host_ip.filter(|h| !h.is_empty()) {
        None => std::net::Ipv4Addr::UNSPECIFIED.into(),
        Some(h) => match h.trim_matches(|c| c == '[' || c == ']').parse() {
            Ok(std::net::IpAddr::V6(_)) => return Ok(()), // IPv6 hosts are not published
            Ok(ip) => ip,
            Err(_) => return Ok(()), // the caller's own check names a bad address
        },
    };
    let proto = if protocol == "udp" { "udp" } else { "tcp" };
    let sock = run.join("rootless").join("ports.sock");
    bind_on_host(&sock, proto, SocketAddr::new(ip, port))
        .map(drop)
        .map_err(|e| anyhow::anyhow!("port {port}/{proto} on the host: {e}"))
}

/// In a rootless berth, a random host port for `ports: ["80"]` comes from the host's
/// ephemeral range (the rootless netns's own free ports say nothing about the host's), and
/// is one no project of the user publishes. None when not rootless.
pub fn pick_host_port(protocol: &str, host_ip: Option<&str>) -> Option<anyhow::Result<u16>> {
    let (_, run) = dirs()?;
    let proto = if protocol == "udp" { "udp" } else { "tcp" };
    let ip: std::net::IpAddr = match host_ip.filter(|h| !h.is_empty()).map(|h| h.parse()) {
        None => std::net::Ipv4Addr::UNSPECIFIED.into(),
        Some(Ok(ip)) => ip,
        Some(Err(_)) => return None, // the usual path names the bad address
    };
    let sock = run.join("rootless").join("ports.sock");
    Some((|| {
        for _ in 0..64 {
            let fd = bind_on_host(&sock, proto, SocketAddr::new(ip, 0))?;
            let port = if proto == "udp" {
                std::net::UdpSocket::from(fd).local_addr()?.port()
            } else {
                std::net::TcpListener::from(fd).local_addr()?.port()
            };
            if berth_network::firewall::check_port_free_for(None, proto, host_ip, port).is_ok() {
                return Ok(port);
            }
        }
        Err(anyhow::anyhow!("no free {proto} port on the host"))
    })())
}

/// In a rootless berth, published ports are bound in the host's network namespace by the
/// holder (see the module comment); the relay takes its sockets from there.
pub fn install_port_binder() {
    let Some((_, run)) = dirs() else { return };
    let sock = run.join("rootless").join("ports.sock");
    berth_network::relay::set_binder(Box::new(move |proto, addr| {
        let p = match proto {
            berth_network::firewall::Proto::Tcp => "tcp",
            berth_network::firewall::Proto::Udp => "udp",
        };
        bind_on_host(&sock, p, addr)
    }));
}

/// Once per `up`: name the services (given as name and "asks for a resource limit") whose
/// limits a rootless berth cannot apply, when the cgroup tree is not writable here (no
/// delegated subtree).
pub fn warn_limits<'a>(services: impl IntoIterator<Item = (&'a str, bool)>) {
    if !active() || cgroup_writable() {
        return;
    }
    let limited: Vec<&str> = services
        .into_iter()
        .filter(|(_, limited)| *limited)
        .map(|(n, _)| n)
        .collect();
    if !limited.is_empty() {
        let why = std::env::var(CGROUP_WHY_ENV).unwrap_or_else(|_| NO_DELEGATION.to_string());
        eprintln!(
            "WARN[0000] rootless: no writable cgroup: the resource limits of {} are not \
             applied: {why}",
            limited.join(", ")
        );
    }
}

fn cgroup_writable() -> bool {
    if cgroup_prefix().is_some() {
        return true;
    }
    // SAFETY: access(2) on a constant path.
    unsafe { libc::access(c"/sys/fs/cgroup".as_ptr(), libc::W_OK) == 0 }
}

/// The delegated cgroup (relative to the hierarchy roots, e.g.
/// `/user.slice/user-1000.slice/user@1000.service`) this rootless berth makes its containers'
/// cgroups under (`<prefix>/berth/<project>/<id>`), when the holder found one.
pub fn cgroup_prefix() -> Option<String> {
    std::env::var(CGROUP_ENV).ok().filter(|p| !p.is_empty())
}

/// `cgroupsPath` for a container of berth: under the delegated cgroup when there is one.
pub fn cgroups_path(rest: &str) -> String {
    format!("{}{rest}", cgroup_prefix().unwrap_or_default())
}

const CGROUP_ENV: &str = "BERTH_ROOTLESS_CGROUP";
const CGROUP_WHY_ENV: &str = "BERTH_ROOTLESS_NO_CGROUP";
const CGROUP_FILE: &str = "cgroup";
const CG: &str = "/sys/fs/cgroup";
/// Controllers a container's limits need (`io` is used where delegated, not required).
const WANTED_V2: &[&str] = &["cpu", "memory", "pids"];
/// The hierarchies berth's runtime makes a v1 cgroup in (see berth_runtime::cgroups).
const V1_HIERARCHIES: &[&str] = &[
    "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids",
];
/// The leaf the processes of the delegated cgroup move to (cgroup v2's no-internal-processes
/// rule: a cgroup that enables controllers for its children holds no process itself).
pub const CGROUP_LEAF: &str = "berth-leaf";

fn writable(p: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: access(2) on a NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

/// The highest ancestor of `rel` (itself included) under `root` that this user may manage
/// (the directory and its cgroup.procs writable): the delegation boundary.
fn delegation_boundary(root: &Path, rel: &str) -> Option<String> {
    let mut best = None;
    let mut cur = String::new();
    let mut levels = vec![String::new()];
    for c in rel.split('/').filter(|c| !c.is_empty()) {
        cur = format!("{cur}/{c}");
        levels.push(cur.clone());
    }
    for l in levels.iter().rev() {
        let d = root.join(l.trim_start_matches('/'));
        if writable(&d) && writable(&d.join("cgroup.procs")) {
            best = Some(l.clone());
        } else {
            break;
        }
    }
    best.filter(|b| !b.is_empty())
}

/// This process's cgroup path per hierarchy, from /proc/self/cgroup: ("" for v2, path).
fn own_cgroups(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let (_, ctrls, path) = (it.next()?, it.next()?, it.next()?);
            Some((ctrls.to_string(), path.to_string()))
        })
        .collect()
}

const NO_DELEGATION: &str = "no cgroup delegation for this user (with systemd: `Delegate=yes` \
     for user@.service, e.g. `systemctl edit user@.service` with `[Service]` and \
     `Delegate=cpu memory pids io`, then log in again)";

/// Run by the holder, in the cgroup the user's first berth command was started in: find the
/// delegated cgroup and prepare it (v2: move its processes into a leaf, enable the
/// controllers for its children). Ok(prefix) or Err(what to enable).
fn prepare_cgroup() -> Result<String, String> {
    let own = own_cgroups(&std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default());
    if Path::new(CG).join("cgroup.controllers").exists() {
        let rel = own
            .iter()
            .find(|(c, _)| c.is_empty())
            .map(|(_, p)| p.clone())
            .ok_or_else(|| "no cgroup v2 entry in /proc/self/cgroup".to_string())?;
        let d = delegation_boundary(Path::new(CG), &rel).ok_or(NO_DELEGATION)?;
        let dir = Path::new(CG).join(d.trim_start_matches('/'));
        let avail = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
        let avail: Vec<&str> = avail.split_whitespace().collect();
        let missing: Vec<&str> = WANTED_V2
            .iter()
            .copied()
            .filter(|c| !avail.contains(c))
            .collect();
        if !missing.is_empty() {
            let parent = dir.parent().unwrap_or(&dir);
            return Err(format!(
                "cgroup {d} is delegated, but the controllers {} are missing from {}/cgroup.subtree_control \
                 (with systemd: `Delegate=cpu memory pids io` for user@.service)",
                missing.join(", "),
                parent.display()
            ));
        }
        if !writable(&dir.join("cgroup.subtree_control")) {
            return Err(format!(
                "{d}/cgroup.subtree_control is not writable: {NO_DELEGATION}"
            ));
        }
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        if !procs.trim().is_empty() {
            let leaf = dir.join(CGROUP_LEAF);
            match std::fs::create_dir(&leaf) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("creating {}: {e}", leaf.display())),
            }
            for pid in procs.split_whitespace() {
                // A process that exited meanwhile is fine (ESRCH).
                let _ = std::fs::write(leaf.join("cgroup.procs"), pid);
            }
        }
        let on: Vec<String> = ["cpu", "memory", "pids", "io"]
            .iter()
            .filter(|c| avail.contains(c))
            .map(|c| format!("+{c}"))
            .collect();
        std::fs::write(dir.join("cgroup.subtree_control"), on.join(" ")).map_err(|e| {
            format!(
                "enabling {} in {}/cgroup.subtree_control: {e}",
                on.join(" "),
                dir.display()
            )
        })?;
        Ok(d)
    } else {
        // cgroup v1: the same delegated path, writable, in every hierarchy the runtime uses.
        let rel = own
            .iter()
            .find(|(c, _)| c.split(',').any(|c| c == "memory"))
            .map(|(_, p)| p.clone())
            .ok_or_else(|| "no memory cgroup in /proc/self/cgroup".to_string())?;
        let d = delegation_boundary(&Path::new(CG).join("memory"), &rel).ok_or(NO_DELEGATION)?;
        for h in V1_HIERARCHIES {
            let root = Path::new(CG).join(h);
            if !root.exists() {
                continue;
            }
            let dir = root.join(d.trim_start_matches('/'));
            if !(writable(&dir) && writable(&dir.join("cgroup.procs"))) {
                return Err(format!(
                    "cgroup v1: {} is not delegated to this user ({d} is, in the memory \
                     hierarchy); {NO_DELEGATION}",
                    dir.display()
                ));
            }
        }
        Ok(d)
    }
}

/// After `down`: when no project of this user runs any more (no supervisor, no container),
/// stop the holder, so the namespaces and every process of berth go away, and remove the
/// run dir's empty leftovers.
pub fn release_if_idle() {
    let Some((_, run)) = dirs() else { return };
    // `down` has asked the supervisors to exit; give them a moment to.
    for _ in 0..50 {
        if !busy(&run) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if busy(&run) {
        return;
    }
    // Another berth command of the user still runs (it holds the lock shared): keep the holder.
    let Some(lock) = LOCK.get() else { return };
    // SAFETY: flock on a descriptor we own (from shared to exclusive, without waiting).
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return;
    }
    let rdir = run.join("rootless");
    if let Some((holder, _)) = running_holder(&rdir) {
        // SAFETY: signalling the holder we verified by its command line.
        unsafe { libc::kill(holder, libc::SIGTERM) };
    }
    for f in ["ns.pid", "ports.sock", "lock", CGROUP_FILE] {
        let _ = std::fs::remove_file(rdir.join(f));
    }
    for (private, _) in PRIVATE_HOST_DIRS {
        let _ = std::fs::remove_dir_all(rdir.join(private));
    }
    // The runtime's seccomp cache is only a cache.
    let _ = std::fs::remove_dir_all(run.join("runtime").join(".seccomp-cache"));
    remove_empty_dirs(&run);
}

/// A supervisor alive, or a container recorded by the runtime.
fn busy(run: &Path) -> bool {
    // Containers (the runtime's state dirs; its own dot-dirs are caches).
    let runtime_busy = std::fs::read_dir(run.join("runtime"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| !e.file_name().to_string_lossy().starts_with('.'));
    let sup_alive = std::fs::read_dir(run.join("projects"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|p| {
            std::fs::read_to_string(p.path().join("supervisor.pid"))
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
                // SAFETY: signal 0 only checks existence.
                .map(|pid| pid > 0 && unsafe { libc::kill(pid, 0) } == 0)
                .unwrap_or(false)
        });
    runtime_busy || sup_alive
}

fn remove_empty_dirs(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_empty_dirs(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cgroups_of_a_v2_and_a_hybrid_host() {
        let v2 =
            own_cgroups("0::/user.slice/user-1000.slice/user@1000.service/app.slice/x.scope\n");
        assert_eq!(
            v2,
            [(
                String::new(),
                "/user.slice/user-1000.slice/user@1000.service/app.slice/x.scope".to_string()
            )]
        );
        let v1 = own_cgroups("4:memory:/a/b\n3:cpu,cpuacct:/c\n1:name=systemd:/d:e\n0::/\n");
        assert_eq!(v1[0], ("memory".to_string(), "/a/b".to_string()));
        assert_eq!(v1[1], ("cpu,cpuacct".to_string(), "/c".to_string()));
        // A path may hold ':'.
        assert_eq!(v1[2].1, "/d:e");
        assert_eq!(v1[3], (String::new(), "/".to_string()));
    }

    #[test]
    fn sub_ranges_by_name_or_uid() {
        let t = "# comment\nalice:100000:65536\n1001:200000:1000\nbob:300000:0\n";
        assert_eq!(sub_range(t, Some("alice"), 5), Some((100000, 65536)));
        assert_eq!(sub_range(t, Some("carol"), 1001), Some((200000, 1000)));
        assert_eq!(sub_range(t, Some("bob"), 7), None);
        assert_eq!(sub_range(t, None, 9), None);
    }

    /// The holder's port protocol end to end in one process: a bound, listening socket comes
    /// back over SCM_RIGHTS; a refused bind comes back as the bind's error.
    #[test]
    fn port_binder_hands_over_bound_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("ports.sock");
        let l = UnixListener::bind(&sock).unwrap();
        // SAFETY: a plain getter.
        let uid = unsafe { libc::getuid() };
        let server = std::thread::spawn(move || {
            for _ in 0..2 {
                let (c, _) = l.accept().unwrap();
                serve_one(c, uid).unwrap();
            }
        });
        let fd = bind_on_host(&sock, "tcp", "127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = std::net::TcpListener::from(fd);
        let addr = listener.local_addr().unwrap();
        assert!(addr.ip().is_loopback() && addr.port() != 0);
        // Listening already: a connection is accepted.
        let _c = std::net::TcpStream::connect(addr).unwrap();
        let (_s, _) = listener.accept().unwrap();
        // The same port again: the bind's own error.
        let e = bind_on_host(&sock, "tcp", addr).unwrap_err();
        assert!(e.to_string().contains("binding tcp"), "{e}");
        server.join().unwrap();
    }

    #[test]
    fn sbin_dirs_added_once() {
        assert_eq!(
            with_sbin(Some("/usr/bin:/bin:/usr/sbin".into())),
            OsString::from("/usr/bin:/bin:/usr/sbin:/usr/local/sbin:/sbin")
        );
        assert_eq!(
            with_sbin(None),
            OsString::from("/usr/local/sbin:/usr/sbin:/sbin")
        );
    }

    #[test]
    fn default_dirs_follow_xdg() {
        let (d, r) = default_dirs(
            1000,
            None,
            Some("/home/u".into()),
            Some("/run/user/1000".into()),
        )
        .unwrap();
        assert_eq!(d, PathBuf::from("/home/u/.local/share/berth"));
        assert_eq!(r, PathBuf::from("/run/user/1000/berth"));
        let (d, r) = default_dirs(
            1000,
            Some("/x/data".into()),
            Some("/home/u".into()),
            Some("".into()),
        )
        .unwrap();
        assert_eq!(d, PathBuf::from("/x/data/berth"));
        assert_eq!(r, PathBuf::from("/tmp/berth-1000"));
        assert!(default_dirs(1000, None, None, None).is_err());
        assert!(default_dirs(1000, Some("rel".into()), Some("rel".into()), None).is_err());
    }
}
