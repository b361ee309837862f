//! `serve`: a fork server for the runtime's commands, so that a caller that makes many
//! containers (berth's supervisor) pays the binary's execve, dynamic loading and start-up, and
//! the read-only re-exec of `selfclone`, once instead of twice per container.
//!
//! The caller (a multi-threaded process that must never fork) re-execs ONE
//! `berth __runtime --root R serve` with one end of a `SOCK_SEQPACKET` socketpair as its stdin.
//! The server is single-threaded (but for the mount template's thread at its start, joined
//! before it serves: `mnttmpl`): it re-executes itself from the read-only bind of its binary
//! (`selfclone`, CVE-2019-5736) and goes back to its caller's mount namespace (so that it pins
//! none of the mounts of the private one, which is then gone; the read-only mount of the binary
//! lives on as its `exe`). Each request is one message:
//!
//! - data: JSON `{"args": [runtime CLI arguments after the global flags' root], "env": [[k, v]]}`;
//! - `SCM_RIGHTS`: exactly four fds: the reply socket (`SOCK_SEQPACKET`), then the command's
//!   stdin, stdout and stderr.
//!
//! For each request it forks a child (and says so on the reply socket: one byte), which becomes exactly what a `berth __runtime …` process
//! would be: the given fds as its stdio and nothing else open, in its caller's mount namespace
//! (or a slave copy of it where `selfclone` needs one), the request's environment added, and the same
//! CLI (`cli::main`). The server waits for the child (its pidfd) and writes its exit code (an
//! `i32`, native byte order, 128 + signal for a killed child) to the reply socket, then closes
//! it. An end of file on the control socket (the caller closed it or died) ends the server once
//! the children it has are done, so it never outlives its caller's interest.
use std::ffi::OsString;
use std::io::{IoSlice, IoSliceMut, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use nix::unistd::{ForkResult, Pid};
use serde::{Deserialize, Serialize};

use crate::error::{sys_err, Result, RuntimeError};

/// Environment variable carrying the caller's mount namespace fd across the `selfclone`
/// re-exec (the first pass opens it without `O_CLOEXEC`).
const HOST_MNT: &str = "_BERTH_SERVE_HOST_MNT";

/// How many fds a request carries: reply, stdin, stdout, stderr.
pub const REQUEST_FDS: usize = 4;

/// Largest request the server reads (arguments and environment as JSON).
pub const MAX_REQUEST: usize = 64 * 1024;

/// One request's payload (the fds travel beside it).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Request {
    /// The runtime CLI's arguments, as `berth __runtime` gets them (`--root R create …`).
    pub args: Vec<String>,
    /// Variables set in the child on top of the server's environment.
    pub env: Vec<(String, String)>,
}

/// Encode a request (the caller's side).
pub fn encode(req: &Request) -> Vec<u8> {
    serde_json::to_vec(req).unwrap_or_default()
}

/// Send one request on the control socket with its fds (`REQUEST_FDS` of them: reply, stdin,
/// stdout, stderr). `MSG_DONTWAIT`: a full socket reports `EAGAIN` for the caller to wait on.
pub fn send_request(ctl: RawFd, payload: &[u8], fds: &[RawFd]) -> nix::Result<()> {
    let iov = [IoSlice::new(payload)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    sendmsg::<()>(
        ctl,
        &iov,
        &cmsg,
        MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        None,
    )
    .map(|_| ())
}

/// One message on a request's reply socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// The child was forked: the request runs (sent first, one byte).
    Forked,
    /// Its exit code (the last message).
    Exit(i32),
    /// End of file: the server went away. Without `Forked` before it, nothing ran.
    Closed,
}

/// Read one reply message (the caller's side); `EAGAIN` when none is there yet.
pub fn read_reply(reply: RawFd) -> nix::Result<Reply> {
    let mut b = [0u8; 4];
    let n = nix::sys::socket::recv(reply, &mut b, MsgFlags::MSG_DONTWAIT)?;
    Ok(match n {
        0 => Reply::Closed,
        4 => Reply::Exit(i32::from_ne_bytes(b)),
        _ => Reply::Forked,
    })
}

/// The server's main (`berth __runtime serve`): stdin is the control socket. Returns the
/// process's exit code.
pub fn main() -> Result<i32> {
    if std::env::var_os(HOST_MNT).is_none() {
        // First pass: keep the caller's mount namespace open across the re-exec.
        let f = std::fs::File::open("/proc/self/ns/mnt")
            .map_err(crate::error::io_err("open", "/proc/self/ns/mnt"))?;
        let fd = OwnedFd::from(f);
        nix::fcntl::fcntl(
            fd.as_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )
        .map_err(sys_err("fcntl"))?;
        std::env::set_var(HOST_MNT, fd.into_raw_fd().to_string());
    }
    crate::selfclone::ensure_cloned()?;
    let host = std::env::var(HOST_MNT)
        .ok()
        .and_then(|v| v.parse::<RawFd>().ok())
        .ok_or_else(|| RuntimeError::Usage(format!("serve: {HOST_MNT} is not an fd")))?;
    std::env::remove_var(HOST_MNT);
    // SAFETY: the fd was opened above (first pass) and inherited across the re-exec; nothing
    // else owns it.
    let host = unsafe { OwnedFd::from_raw_fd(host) };
    nix::sched::setns(&host, nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(sys_err("setns to the caller's mount namespace"))?;
    drop(host);
    // Children run from this read-only clone already: they skip `ensure_cloned`'s re-exec.
    crate::selfclone::mark_cloned();
    // The control socket is stdin; stdin becomes /dev/null.
    let ctl = nix::fcntl::fcntl(
        std::io::stdin().as_fd(),
        nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3),
    )
    .map_err(sys_err("dup the control socket"))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new fd that we own.
    let ctl = unsafe { OwnedFd::from_raw_fd(ctl) };
    let null =
        std::fs::File::open("/dev/null").map_err(crate::error::io_err("open", "/dev/null"))?;
    // SAFETY: dup2 onto stdin, which this process owns.
    if unsafe { libc::dup2(null.as_raw_fd(), 0) } < 0 {
        return Err(crate::error::io_err("dup2", "/dev/null")(
            std::io::Error::last_os_error(),
        ));
    }
    drop(null);
    // The mount template (`mnttmpl`), where the caller asks for one, as real root on a kernel
    // where the runtime needs no mount namespace of its own. Without it, the usual path.
    let template = std::env::var_os(crate::mnttmpl::ENV)
        .filter(|_| !crate::selfclone::private_ns() && !crate::cgroups::in_user_namespace())
        .and_then(|v| {
            let dirs: Vec<std::path::PathBuf> = std::env::split_paths(&v)
                .filter(|p| p.is_absolute())
                .collect();
            match crate::mnttmpl::make(&dirs) {
                Ok(fd) => Some(fd),
                Err(e) => {
                    eprintln!("berth-runtime serve: no mount template: {e}");
                    None
                }
            }
        });
    std::env::remove_var(crate::mnttmpl::ENV);
    serve(ctl, template.as_ref().map(|t| t.as_raw_fd()))
}

/// A child being waited for.
struct Pending {
    pid: Pid,
    pidfd: OwnedFd,
    reply: OwnedFd,
}

fn serve(ctl: OwnedFd, template: Option<RawFd>) -> Result<i32> {
    let mut pending: Vec<Pending> = Vec::new();
    let mut open = true;
    loop {
        if !open && pending.is_empty() {
            return Ok(0);
        }
        let mut pfds: Vec<nix::poll::PollFd> = Vec::with_capacity(pending.len() + 1);
        for p in &pending {
            pfds.push(nix::poll::PollFd::new(
                p.pidfd.as_fd(),
                nix::poll::PollFlags::POLLIN,
            ));
        }
        if open {
            pfds.push(nix::poll::PollFd::new(
                ctl.as_fd(),
                nix::poll::PollFlags::POLLIN,
            ));
        }
        match nix::poll::poll(&mut pfds, nix::poll::PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(sys_err("poll")(e)),
        }
        let ready: Vec<bool> = pfds
            .iter()
            .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        let ctl_ready = open && ready.last().copied().unwrap_or(false);
        drop(pfds);
        // Children that ended: reap, reply (from the end: `ready` matches by position).
        for k in (0..pending.len()).rev() {
            if ready[k] {
                finish(pending.remove(k));
            }
        }
        if ctl_ready {
            match receive(&ctl) {
                Ok(None) => open = false,
                Ok(Some((req, fds))) => {
                    if let Some(p) = run(req, fds, template) {
                        pending.push(p);
                    }
                }
                Err(e) => eprintln!("berth-runtime serve: {e}"),
            }
        }
    }
}

/// Reap a child and send its exit code.
fn finish(p: Pending) {
    let code = loop {
        match nix::sys::wait::waitpid(p.pid, None) {
            Ok(s) => break crate::process::exit_status_to_code(s),
            Err(nix::Error::EINTR) => continue,
            Err(_) => break 255,
        }
    };
    let _ = nix::sys::socket::send(
        p.reply.as_raw_fd(),
        &code.to_ne_bytes(),
        MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
    );
    drop(p.pidfd);
}

/// One message from the control socket: `None` at end of file. A malformed request is
/// answered (when it brought a reply socket) with exit code 125 and skipped.
#[allow(clippy::type_complexity)]
fn receive(ctl: &OwnedFd) -> Result<Option<(Request, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut cbuf = nix::cmsg_space!([RawFd; REQUEST_FDS]);
    let (n, fds, truncated) = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(
            ctl.as_raw_fd(),
            &mut iov,
            Some(&mut cbuf),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => {
                let mut fds = Vec::new();
                if let Ok(cmsgs) = m.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmRights(v) = c {
                            // SAFETY: the kernel just installed these fds for us.
                            fds.extend(v.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
                        }
                    }
                }
                let truncated = m
                    .flags
                    .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
                break (m.bytes, fds, truncated);
            }
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(sys_err("recvmsg")(e)),
        }
    };
    if n == 0 && fds.is_empty() {
        return Ok(None);
    }
    let req = if truncated || fds.len() != REQUEST_FDS {
        None
    } else {
        serde_json::from_slice::<Request>(&buf[..n]).ok()
    };
    match req {
        Some(r) => Ok(Some((r, fds))),
        None => {
            if let Some(reply) = fds.first() {
                let _ = nix::sys::socket::send(
                    reply.as_raw_fd(),
                    &125i32.to_ne_bytes(),
                    MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
                );
            }
            Err(RuntimeError::Usage(format!(
                "serve: malformed request ({n} bytes, {} fds)",
                fds.len()
            )))
        }
    }
}

/// Fork the request's child; the server keeps its pidfd and the reply socket.
fn run(req: Request, fds: Vec<OwnedFd>, template: Option<RawFd>) -> Option<Pending> {
    let mut fds = fds.into_iter();
    let (reply, stdin, stdout, stderr) = (fds.next()?, fds.next()?, fds.next()?, fds.next()?);
    // SAFETY: this process is single-threaded (its one other thread, the mount template's,
    // was joined before the first request); the child
    // only runs the runtime's CLI, as a freshly executed `berth __runtime` would, and exits.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => {
            let code = child(req, [stdin, stdout, stderr], template);
            let _ = std::io::stdout().flush();
            let _ = std::io::stderr().flush();
            // SAFETY: leaving the forked child without running the server's destructors.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => {
            // The caller now knows the request runs (an end of file before this means it
            // never did, and may be tried another way).
            let _ = nix::sys::socket::send(
                reply.as_raw_fd(),
                b"f",
                MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
            );
            let pidfd = match pidfd_open(child) {
                Ok(p) => p,
                Err(e) => {
                    // Cannot watch it: wait for it here rather than lose its status.
                    eprintln!("berth-runtime serve: pidfd_open: {e}");
                    let status = nix::sys::wait::waitpid(child, None);
                    let code = status.map_or(255, crate::process::exit_status_to_code);
                    let _ = nix::sys::socket::send(
                        reply.as_raw_fd(),
                        &code.to_ne_bytes(),
                        MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
                    );
                    return None;
                }
            };
            Some(Pending {
                pid: child,
                pidfd,
                reply,
            })
        }
        Err(e) => {
            eprintln!("berth-runtime serve: fork: {e}");
            let _ = nix::sys::socket::send(
                reply.as_raw_fd(),
                &126i32.to_ne_bytes(),
                MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
            );
            None
        }
    }
}

/// The forked child: become a `berth __runtime` process with the request's stdio and
/// environment, then run the CLI.
fn child(req: Request, stdio: [OwnedFd; 3], template: Option<RawFd>) -> i32 {
    for (fd, target) in stdio.iter().zip(0..) {
        // SAFETY: dup2 onto this child's own stdio.
        if unsafe { libc::dup2(fd.as_raw_fd(), target) } < 0 {
            return 126;
        }
    }
    drop(stdio);
    // The mount template goes on as fd 3 (for the init this child forks).
    let first_closed = match template {
        // SAFETY: dup2 onto fd 3 of this child, whose fds from 3 up are all the server's.
        Some(t) if unsafe { libc::dup2(t, 3) } == 3 => 4u32,
        _ => 3u32,
    };
    // Nothing of the server (control socket, other requests' replies and pidfds) goes on:
    // one close_range(2) (Linux 5.9), else a walk of /proc/self/fd.
    // SAFETY: closes fds from `first_closed` up, none of which this child uses any more.
    if unsafe { libc::syscall(libc::SYS_close_range, first_closed, u32::MAX, 0u32) } != 0 {
        crate::process::close_fds_except(if first_closed == 4 { &[3] } else { &[] });
    }
    if first_closed == 4 {
        // SAFETY: fd 3 is the template's copy made above; this child owns it now.
        let t = unsafe { OwnedFd::from_raw_fd(3) };
        let _ = nix::fcntl::fcntl(
            t.as_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        crate::mnttmpl::set(t);
    }
    // Where `selfclone` gives every runtime process a mount namespace of its own (kernels
    // without the detached mount), the same: a slave copy of the caller's. Elsewhere none, as
    // a re-exec'd runtime runs in its caller's (a copy is O(mounts on the host)).
    if crate::selfclone::private_ns() {
        if let Err(e) = crate::selfclone::slave_mount_ns() {
            eprintln!("berth-runtime: {e}");
            return 1;
        }
    }
    for (k, v) in &req.env {
        std::env::set_var(k, v);
    }
    crate::cli::main(req.args.into_iter().map(OsString::from).collect())
}

fn pidfd_open(pid: Pid) -> std::io::Result<OwnedFd> {
    // SAFETY: a plain syscall; on success it returns a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: see above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip() {
        let r = Request {
            args: vec!["--root".into(), "/r".into(), "create".into(), "x".into()],
            env: vec![("BERTH_RUNTIME_ERROR_FILE".into(), "/b/create.err".into())],
        };
        let back: Request = serde_json::from_slice(&encode(&r)).unwrap();
        assert_eq!(back, r);
    }
}
