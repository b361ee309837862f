//! The process side: the sync channel between the runtime and the container's first process,
//! the in-container init sequence (youki / runc `standard_init_linux.go` order), the shared
//! "become the user process" tail used by both init and exec, and the optional mini init.
use std::ffi::CString;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{LinuxNamespaceType, PosixRlimitType, Process, Spec};

use crate::error::{io_err, sys_err, Result, RuntimeError};

/// One end of a SOCK_SEQPACKET socketpair: each send is one message.
pub struct Chan(pub OwnedFd);

impl Chan {
    pub fn pair() -> Result<(Chan, Chan)> {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(sys_err("socketpair"))?;
        Ok((Chan(a), Chan(b)))
    }

    pub fn send(&self, msg: &[u8]) -> Result<()> {
        self.send_fd(msg, None)
    }

    pub fn send_fd(&self, msg: &[u8], fd: Option<RawFd>) -> Result<()> {
        let iov = [IoSlice::new(msg)];
        let fds;
        let cmsg: Vec<ControlMessage> = match fd {
            Some(f) => {
                fds = [f];
                vec![ControlMessage::ScmRights(&fds)]
            }
            None => vec![],
        };
        sendmsg::<()>(
            self.0.as_raw_fd(),
            &iov,
            &cmsg,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(sys_err("sendmsg"))?;
        Ok(())
    }

    /// Wait up to `ms` milliseconds for a message; false on timeout.
    pub fn wait_readable(&self, ms: u32) -> bool {
        use std::os::fd::AsFd;
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(ms as u64);
        loop {
            let mut pfd = [nix::poll::PollFd::new(
                self.0.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let t = nix::poll::PollTimeout::try_from(left.as_millis().min(60_000) as i32)
                .unwrap_or(nix::poll::PollTimeout::MAX);
            match nix::poll::poll(&mut pfd, t) {
                Ok(n) if n > 0 => return true,
                Ok(_) if left.is_zero() => return false,
                Ok(_) | Err(nix::Error::EINTR) => continue,
                Err(_) => return true, // let recv report it
            }
        }
    }

    /// Receive one message (empty on EOF) and at most one passed fd.
    pub fn recv(&self) -> Result<(Vec<u8>, Option<OwnedFd>)> {
        let mut buf = vec![0u8; 65536];
        let mut cbuf = nix::cmsg_space!([RawFd; 1]);
        let (n, fd) = loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match recvmsg::<()>(
                self.0.as_raw_fd(),
                &mut iov,
                Some(&mut cbuf),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(m) => {
                    let mut fd = None;
                    if let Ok(cmsgs) = m.cmsgs() {
                        for c in cmsgs {
                            if let ControlMessageOwned::ScmRights(v) = c {
                                for f in v {
                                    // SAFETY: the kernel just installed this fd for us.
                                    let o = unsafe { OwnedFd::from_raw_fd(f) };
                                    if fd.is_none() {
                                        fd = Some(o);
                                    }
                                }
                            }
                        }
                    }
                    break (m.bytes, fd);
                }
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(sys_err("recvmsg")(e)),
            }
        };
        buf.truncate(n);
        Ok((buf, fd))
    }
}

/// Report an error to the parent and leave without running any destructor of the parent's
/// state (we are a forked child).
pub fn fail(chan: &Chan, e: &RuntimeError) -> ! {
    let mut msg = b"err:".to_vec();
    msg.extend_from_slice(e.to_string().as_bytes());
    if chan.send(&msg).is_err() {
        // The runtime no longer listens (the container was already reported ready): the
        // container's stderr is the only place left.
        eprintln!("berth-runtime: {e}");
    }
    // SAFETY: _exit is always safe; it skips atexit handlers that belong to the parent.
    unsafe { libc::_exit(1) }
}

pub fn ns_flag(t: LinuxNamespaceType) -> nix::sched::CloneFlags {
    nix::sched::CloneFlags::from_bits_retain(t as i32)
}

fn rlimit_resource(t: PosixRlimitType) -> Option<libc::__rlimit_resource_t> {
    Some(match t {
        PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
        #[allow(unreachable_patterns)]
        _ => return None,
    })
}

pub fn set_rlimits(p: &Process) -> Result<()> {
    for r in p.rlimits().iter().flatten() {
        let Some(res) = rlimit_resource(r.typ()) else {
            continue;
        };
        let lim = libc::rlimit {
            rlim_cur: r.soft(),
            rlim_max: r.hard(),
        };
        // SAFETY: plain syscall with a valid struct.
        if unsafe { libc::setrlimit(res, &lim) } != 0 {
            return Err(io_err("setrlimit", format!("{:?}", r.typ()))(
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

/// runc: when the env has no HOME, take it from the container's /etc/passwd (or `/`).
/// Call after pivot_root.
pub fn ensure_home(env: &mut Vec<String>, uid: u32) {
    if env.iter().any(|e| e.starts_with("HOME=")) {
        return;
    }
    let home = std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 5 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[5].to_string())
            })
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".to_string());
    env.push(format!("HOME={home}"));
}

/// Look `arg0` up in the container's PATH (from its env), as execvp would, inside the
/// (already pivoted) root.
pub fn find_executable(arg0: &str, env: &[String]) -> Result<PathBuf> {
    if arg0.contains('/') {
        return Ok(PathBuf::from(arg0));
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let cand = Path::new(dir).join(arg0);
        if let Ok(md) = std::fs::metadata(&cand) {
            use std::os::unix::fs::PermissionsExt;
            if md.is_file() && md.permissions().mode() & 0o111 != 0 {
                return Ok(cand);
            }
        }
    }
    Err(RuntimeError::NotFoundInPath(arg0.to_string()))
}

/// True in a user namespace where setgroups(2) is denied (`/proc/self/setgroups` is "deny").
fn setgroups_denied() -> bool {
    std::fs::read_to_string("/proc/self/setgroups").is_ok_and(|s| s.trim() == "deny")
}

/// Groups, ids, capabilities, NNP and seccomp in youki's order. `spec` gives the container's
/// Linux settings (seccomp); `p` the process to become.
pub fn become_user(spec: &Spec, p: &Process) -> Result<()> {
    let user = p.user();
    let nnp = p.no_new_privileges().unwrap_or(false);
    if nnp {
        nix::sys::prctl::set_no_new_privs().map_err(sys_err("PR_SET_NO_NEW_PRIVS"))?;
    }
    let groups: Vec<Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| Gid::from_raw(*g))
        .collect();
    match nix::unistd::setgroups(&groups) {
        Ok(()) => {}
        // A user namespace whose gid map was written without privilege (a rootless berth with
        // one id mapped) denies setgroups for good; the process keeps the groups it has
        // (unmapped ones show as the overflow gid), as with runc and crun there.
        Err(nix::errno::Errno::EPERM) if setgroups_denied() => {}
        Err(e) => return Err(sys_err("setgroups")(e)),
    }
    nix::sys::prctl::set_keepcaps(true).map_err(sys_err("PR_SET_KEEPCAPS"))?;
    let (uid, gid) = (Uid::from_raw(user.uid()), Gid::from_raw(user.gid()));
    nix::unistd::setresgid(gid, gid, gid).map_err(sys_err(format!("setresgid {gid}")))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(sys_err(format!("setresuid {uid}")))?;
    nix::sys::prctl::set_keepcaps(false).map_err(sys_err("PR_SET_KEEPCAPS"))?;
    crate::capabilities::reset_effective()?;
    crate::trace::step(|| "init: groups, uid, gid".into());
    let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
    if let Some(s) = &seccomp {
        if !nnp {
            // Loading a filter without NNP needs CAP_SYS_ADMIN: before the drop.
            crate::seccomp::load(s)?;
            crate::trace::step(|| "init: seccomp filter loaded".into());
        }
    }
    if let Some(c) = p.capabilities() {
        crate::capabilities::drop_bounding(c)?;
        crate::capabilities::set_process_caps(c)?;
        crate::trace::step(|| "init: capabilities set".into());
    } else {
        // No capabilities object: none at all (runc).
        let empty = oci_spec::runtime::LinuxCapabilitiesBuilder::default()
            .bounding(std::collections::HashSet::new())
            .effective(std::collections::HashSet::new())
            .permitted(std::collections::HashSet::new())
            .inheritable(std::collections::HashSet::new())
            .ambient(std::collections::HashSet::new())
            .build()
            .map_err(|e| RuntimeError::Caps(e.to_string()))?;
        crate::capabilities::drop_bounding(&empty)?;
        crate::capabilities::set_process_caps(&empty)?;
    }
    if let Some(s) = &seccomp {
        if nnp {
            crate::seccomp::load(s)?;
        }
    }
    Ok(())
}

pub fn cstrings(v: &[String]) -> Result<Vec<CString>> {
    v.iter()
        .map(|s| {
            CString::new(s.as_bytes())
                .map_err(|_| RuntimeError::InvalidSpec(format!("NUL in {s:?}")))
        })
        .collect()
}

/// Mark every fd above stderr close-on-exec (no fd of the caller leaks into the container).
pub fn cloexec_from(first: u32) {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc != 0 {
        // Old kernel: walk /proc/self/fd.
        if let Ok(rd) = std::fs::read_dir("/proc/self/fd") {
            let fds: Vec<i32> = rd
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect();
            for fd in fds {
                if fd >= first as i32 {
                    // SAFETY: fcntl on a possibly-closed fd is harmless.
                    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
                }
            }
        }
    }
}

/// Close every fd above stderr except `keep` (fds leaked by our caller must not reach the
/// container, not even before execve: CVE-2024-21626 used one as the process cwd).
pub fn close_fds_except(keep: &[RawFd]) {
    let fds: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(rd) => rd
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => return,
    };
    for fd in fds {
        if fd > 2 && !keep.contains(&fd) {
            // SAFETY: closing fds we do not use; the read_dir fd is already closed (or EBADF).
            unsafe { libc::close(fd) };
        }
    }
}

/// The container starts with every signal at its default disposition and none blocked:
/// neither Rust's ignored SIGPIPE nor whatever our caller ignored leaks in.
pub fn reset_signals() {
    reset_dispositions();
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
}

/// Every signal back to its default disposition (the mask is left alone).
fn reset_dispositions() {
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: libc::c_ulong,
        restorer: usize,
        mask: u64,
    }
    let act = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: raw rt_sigaction (glibc refuses its internal signals 32/33) with a valid
        // struct; errors (invalid numbers) are harmless.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                &act as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                8usize,
            )
        };
    }
}

/// execve, never returning on success.
pub fn exec(path: &Path, args: &[String], env: &[String]) -> RuntimeError {
    let p = match CString::new(path.as_os_str().as_bytes()) {
        Ok(p) => p,
        Err(_) => return RuntimeError::InvalidSpec("NUL in path".into()),
    };
    let (a, e) = match (cstrings(args), cstrings(env)) {
        (Ok(a), Ok(e)) => (a, e),
        (Err(x), _) | (_, Err(x)) => return x,
    };
    reset_signals();
    match nix::unistd::execve(&p, &a, &e) {
        Err(source) => RuntimeError::Sys {
            op: format!("exec {}", path.display()),
            source,
        },
        Ok(never) => match never {},
    }
}

/// The container init (`init/berth-init.rs`, built by `build.rs`): a static executable of a
/// few kilobytes, empty on targets it does not support.
static INIT_IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/berth-init"));

/// A sealed, close-on-exec memfd holding the init image, to hand to [`mini_init`]. `None`
/// when there is no image for this target or the kernel refuses (then `mini_init` reaps
/// in-process).
///
/// Call it in the container's init process before the spec's rlimits (RLIMIT_FSIZE) and
/// seccomp filter apply: the pages are charged to the container's cgroup, and only
/// `execveat` is left to do under the filter.
pub fn init_image() -> Option<OwnedFd> {
    if INIT_IMAGE.is_empty() {
        return None;
    }
    const MFD_EXEC: libc::c_uint = 0x10;
    let name = c"berth-init";
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: memfd_create with a valid name; MFD_EXEC (Linux 6.3) keeps the file executable
    // under vm.memfd_noexec=1; older kernels reject the flag and default to executable.
    let mut fd = unsafe { libc::memfd_create(name.as_ptr(), flags | MFD_EXEC) };
    if fd < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // SAFETY: as above.
        fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    }
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh fd from the kernel, owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut f = std::fs::File::from(fd);
    std::io::Write::write_all(&mut f, INIT_IMAGE).ok()?;
    let fd = OwnedFd::from(f);
    // Nobody (not even a container process that gets hold of /proc/1/exe) can change it.
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl on our own fd.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return None;
    }
    Some(fd)
}

/// `berth.init=true`: stay as pid 1, run the user process as a child, reap every zombie,
/// forward signals, and exit with the child's status (128+n for a signal).
///
/// With `image` (from [`init_image`]) pid 1 executes the tiny static init from it, which does
/// exactly that: a fresh image of a few pages, where staying in this process would keep a
/// forked copy of the runtime (its heap, its relocated data: 0.5-2 MiB of private memory per
/// container) alive as pid 1 for the container's lifetime. Re-executing the runtime binary
/// instead is no option: after pivot_root its ELF interpreter and shared libraries would come
/// from the container's rootfs. Signals stay blocked across the exec, so none sent meanwhile
/// is lost. If the exec fails (an LSM or seccomp profile refusing execveat, say) the same loop
/// runs here.
///
/// `orig_mask` is the signal mask the user process must start with: the caller has already
/// blocked every signal with [`block_all_signals`] before `start` could return.
pub fn mini_init(
    path: &Path,
    args: &[String],
    env: &[String],
    image: Option<&OwnedFd>,
    orig_mask: u64,
) -> RuntimeError {
    use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    if let Some(fd) = image {
        exec_init_image(fd, path, args, env, orig_mask);
    }
    let all = SigSet::all();
    if let Err(e) = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&all), None) {
        return sys_err("sigprocmask")(e);
    }
    // SAFETY: single-threaded; the child only calls async-signal-safe functions before execve
    // (sigprocmask, setpgid) and Rust code that does not take locks held by other threads.
    match unsafe { nix::unistd::fork() } {
        Err(e) => sys_err("fork")(e),
        Ok(nix::unistd::ForkResult::Child) => {
            set_raw_mask(orig_mask);
            let e = exec(path, args, env);
            eprintln!("berth-init: {e}");
            // SAFETY: leaving the forked child.
            unsafe { libc::_exit(127) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => loop {
            let sig = match all.wait() {
                Ok(s) => s,
                Err(_) => continue,
            };
            if sig == Signal::SIGCHLD {
                loop {
                    match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                        Ok(WaitStatus::Exited(p, code)) if p == child => {
                            drain_zombies();
                            // SAFETY: exit of the init.
                            unsafe { libc::_exit(code) }
                        }
                        Ok(WaitStatus::Signaled(p, s, _)) if p == child => {
                            drain_zombies();
                            // SAFETY: as above.
                            unsafe { libc::_exit(128 + s as i32) }
                        }
                        Ok(WaitStatus::StillAlive) | Err(_) => break,
                        Ok(_) => continue,
                    }
                }
            } else {
                let _ = nix::sys::signal::kill(child, sig);
            }
        },
    }
}

/// execveat the init image as `berth-init PATH ARGS...` with `env`; returns only on failure.
fn exec_init_image(fd: &OwnedFd, path: &Path, args: &[String], env: &[String], orig_mask: u64) {
    let Ok(p) = CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    let (Ok(a), Ok(e)) = (cstrings(args), cstrings(env)) else {
        return;
    };
    let mut argv: Vec<*const libc::c_char> = vec![c"berth-init".as_ptr(), p.as_ptr()];
    argv.extend(a.iter().map(|s| s.as_ptr()));
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = e.iter().map(|s| s.as_ptr()).collect();
    envp.push(std::ptr::null());
    // Every signal is blocked already (the mask survives execve, and the init blocks
    // everything itself): none sent meanwhile is lost. Handlers do not survive an exec,
    // ignored signals do: reset them so the user process starts from the defaults.
    reset_dispositions();
    // SAFETY: execveat with NUL-terminated argv/envp arrays that outlive the call and an
    // empty path on our own fd (AT_EMPTY_PATH).
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd.as_raw_fd(),
            c"".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    set_raw_mask(orig_mask);
}

/// Block every signal (raw rt_sigprocmask: glibc's `sigfillset` would leave 32 and 33 open);
/// returns the mask before. pid 1 of a pid namespace drops a signal it has no handler for at
/// the moment it is sent, unless the signal is blocked (then it stays pending): an `init: true`
/// container blocks everything before `start` can return, so a stop sent the instant after it
/// reaches berth-init, which forwards it once it runs.
pub fn block_all_signals() -> u64 {
    let all: u64 = !0;
    let mut old: u64 = 0;
    // SAFETY: rt_sigprocmask with 8-byte kernel sigsets.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &all as *const u64,
            &mut old as *mut u64,
            8usize,
        )
    };
    old
}

fn set_raw_mask(mask: u64) {
    // SAFETY: rt_sigprocmask with an 8-byte kernel sigset.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &mask as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize,
        )
    };
}

fn drain_zombies() {
    while let Ok(s) = nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
        if s == nix::sys::wait::WaitStatus::StillAlive {
            break;
        }
    }
}

/// Docker's exit code for a wait status: the code, or 128+n for a signal.
pub fn exit_status_to_code(status: nix::sys::wait::WaitStatus) -> i32 {
    use nix::sys::wait::WaitStatus as W;
    match status {
        W::Exited(_, c) => c,
        W::Signaled(_, s, _) => 128 + s as i32,
        _ => 255,
    }
}

/// The same from a raw `waitid`/`waitpid` status word.
pub fn raw_status_to_code(raw: i32) -> i32 {
    if libc::WIFEXITED(raw) {
        libc::WEXITSTATUS(raw)
    } else if libc::WIFSIGNALED(raw) {
        128 + libc::WTERMSIG(raw)
    } else {
        255
    }
}

/// Create a pty from the container's /dev/ptmx; returns (master, slave, slave path).
pub fn open_pty() -> Result<(OwnedFd, OwnedFd, PathBuf)> {
    use nix::fcntl::OFlag;
    let master = nix::fcntl::open(
        "/dev/ptmx",
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(sys_err("open /dev/ptmx"))?;
    let mut unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK takes a pointer to int.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &mut unlock) } != 0 {
        return Err(io_err("unlock pty", "/dev/ptmx")(
            std::io::Error::last_os_error(),
        ));
    }
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN takes a pointer to unsigned int.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) } != 0 {
        return Err(io_err("pty number", "/dev/ptmx")(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: TIOCGPTPEER returns a new fd for the slave, opened via the master (no path race).
    let s = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if s < 0 {
        return Err(io_err("open pty peer", "/dev/ptmx")(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: fresh fd from the kernel.
    let slave = unsafe { OwnedFd::from_raw_fd(s) };
    Ok((master, slave, PathBuf::from(format!("/dev/pts/{n}"))))
}

/// Make `slave` the controlling terminal and stdio of this (session-leader) process.
pub fn attach_tty(slave: &OwnedFd) -> Result<()> {
    for t in 0..3 {
        // SAFETY: dup2 onto the standard fds, which this process owns.
        if unsafe { libc::dup2(slave.as_raw_fd(), t) } < 0 {
            return Err(io_err("dup2", "pty")(std::io::Error::last_os_error()));
        }
    }
    // SAFETY: TIOCSCTTY on our own tty.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
        return Err(io_err("TIOCSCTTY", "/dev/console")(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

pub fn set_winsize(fd: RawFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ with a valid struct.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
}

/// Send a pty master over a runc-style console socket.
pub fn send_console(sock: &OwnedFd, master: &OwnedFd) -> Result<()> {
    let name = b"/dev/ptmx";
    let iov = [IoSlice::new(name)];
    let fds = [master.as_raw_fd()];
    sendmsg::<()>(
        sock.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(sys_err("send console"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        use nix::sys::wait::WaitStatus;
        use nix::unistd::Pid;
        let p = Pid::from_raw(1);
        assert_eq!(exit_status_to_code(WaitStatus::Exited(p, 3)), 3);
        assert_eq!(
            exit_status_to_code(WaitStatus::Signaled(
                p,
                nix::sys::signal::Signal::SIGKILL,
                false
            )),
            137
        );
        assert_eq!(raw_status_to_code(3 << 8), 3);
        assert_eq!(raw_status_to_code(9), 137);
    }

    #[test]
    fn path_lookup() {
        let env = vec!["PATH=/nonexistent:/bin:/usr/bin".to_string()];
        assert!(find_executable("sh", &env).is_ok());
        assert!(matches!(
            find_executable("no-such-binary-xyz", &env),
            Err(RuntimeError::NotFoundInPath(_))
        ));
        assert_eq!(
            find_executable("/x/y", &env).unwrap(),
            PathBuf::from("/x/y")
        );
    }

    #[test]
    fn chan_roundtrip() {
        let (a, b) = Chan::pair().unwrap();
        a.send(b"hello").unwrap();
        assert_eq!(b.recv().unwrap().0, b"hello");
        drop(a);
        assert!(b.recv().unwrap().0.is_empty());
    }
}
