//! Waiting for container processes without pid races: pidfd + tokio `AsyncFd` + `waitid(P_PIDFD)`
//! (the conmon-rs child reaper, minus its pid race). The supervisor is a child subreaper, so the
//! container init becomes its child once `runtime create` exits.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;

/// How a container's init ended, reported like Docker: exit code, or 128+signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// It ended, the status could not be learned (adopted after a supervisor restart and
    /// reaped by someone else on a kernel older than 6.15, or gone before the adoption).
    Unknown,
}

impl Exit {
    /// From a wait(2) status word.
    pub fn from_wait_status(status: i32) -> Exit {
        if libc::WIFEXITED(status) {
            Exit::Code(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            Exit::Signal(libc::WTERMSIG(status))
        } else {
            Exit::Unknown
        }
    }

    pub fn code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
            Exit::Unknown => 255,
        }
    }
}

pub fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

pub fn pidfd_send_signal(fd: &OwnedFd, sig: i32) -> std::io::Result<()> {
    // SAFETY: plain syscall on an fd we own.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig,
            std::ptr::null::<u8>(),
            0,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

struct Fd(OwnedFd);
impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Wait until the process behind `pidfd` exits and reap it if it is our child.
pub async fn wait_pidfd(pidfd: OwnedFd) -> std::io::Result<Exit> {
    // SAFETY: `Fd` owns the pidfd and closes it only when the AsyncFd (and its registration)
    // is dropped, which is the I/O-safety contract `register_with_interest` asks for.
    let afd = unsafe { AsyncFd::register_with_interest(Fd(pidfd), tokio::io::Interest::READABLE) }
        .map_err(std::io::Error::from)?;
    loop {
        let mut guard = afd.readable().await?;
        match waitid_pidfd(afd.get_ref().0.as_raw_fd(), libc::WNOHANG) {
            Ok(Some(exit)) => return Ok(exit),
            Ok(None) => {
                // Readable but not yet waitable: should not happen; poll again.
                guard.clear_ready();
            }
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {
                return Ok(non_child_exit(&afd.get_ref().0).await)
            }
            Err(e) => return Err(e),
        }
    }
}

/// The exit status of a process that is not our child (adopted after a supervisor restart),
/// once its pidfd reports the exit. Linux 6.15+ keeps it with the pidfd when the process is
/// reaped (`PIDFD_INFO_EXIT`); until then (or on older kernels) the zombie's /proc stat shows
/// it. Waits a little for the reaper, then gives up: `Unknown`.
async fn non_child_exit(pidfd: &OwnedFd) -> Exit {
    for _ in 0..20 {
        let Some((pid, exit)) = pidfd_info(pidfd) else {
            // Reaped, and the kernel keeps no status for pidfds.
            return Exit::Unknown;
        };
        if let Some(status) = exit {
            return Exit::from_wait_status(status);
        }
        // Not reaped yet: its zombie shows the status. Read between two looks at the pidfd
        // that both find it unreaped, the pid was this process's all along.
        let zombie = zombie_status(pid);
        match pidfd_info(pidfd) {
            Some((_, Some(status))) => return Exit::from_wait_status(status),
            Some((_, None)) => {
                if let Some(status) = zombie {
                    return Exit::from_wait_status(status);
                }
            }
            None => return Exit::Unknown,
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    Exit::Unknown
}

/// `ioctl(PIDFD_GET_INFO)`: (pid, wait status once reaped); None once reaped without a kept
/// status (kernels before 6.15) or where the ioctl does not exist.
fn pidfd_info(pidfd: &OwnedFd) -> Option<(i32, Option<i32>)> {
    const PIDFD_INFO_PID: u64 = 1 << 0;
    const PIDFD_INFO_EXIT: u64 = 1 << 3;
    // struct pidfd_info (VER0, 64 bytes): mask, cgroupid, pid, tgid, ppid, 8 ids, exit_code.
    #[repr(C)]
    #[derive(Default)]
    struct Info {
        mask: u64,
        cgroupid: u64,
        pid: u32,
        tgid: u32,
        ppid: u32,
        ids: [u32; 8],
        exit_code: i32,
    }
    const _: () = assert!(std::mem::size_of::<Info>() == 64);
    // _IOWR(PIDFS_IOCTL_MAGIC 0xFF, 11, struct pidfd_info)
    const PIDFD_GET_INFO: u64 = (3 << 30) | (64 << 16) | (0xFF << 8) | 11;
    let mut info = Info {
        mask: PIDFD_INFO_PID | PIDFD_INFO_EXIT,
        ..Default::default()
    };
    // SAFETY: the kernel fills at most the 64 bytes the request number announces.
    let rc = unsafe { libc::ioctl(pidfd.as_raw_fd(), PIDFD_GET_INFO as _, &mut info) };
    if rc < 0 {
        return None;
    }
    let exit = (info.mask & PIDFD_INFO_EXIT != 0).then_some(info.exit_code);
    Some((info.pid as i32, exit))
}

/// A zombie's wait status (field 52 of /proc/PID/stat); None unless `pid` is a zombie.
fn zombie_status(pid: i32) -> Option<i32> {
    if pid <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.get(stat.rfind(')')? + 2..)?;
    let mut f = after.split_whitespace();
    if f.next()? != "Z" {
        return None;
    }
    // Fields after the comm start at 3 (state); exit_code is field 52.
    f.nth(52 - 4)?.parse().ok()
}

fn waitid_pidfd(fd: RawFd, extra: i32) -> std::io::Result<Option<Exit>> {
    // SAFETY: siginfo is plain data, filled by the kernel.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            fd as libc::id_t,
            &mut info,
            libc::WEXITED | extra,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: reading the union fields the kernel filled for a child event.
    let (pid, status, code) = unsafe { (info.si_pid(), info.si_status(), info.si_code) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(match code {
        libc::CLD_EXITED => Exit::Code(status),
        _ => Exit::Signal(status),
    }))
}

/// Become the reaper of orphaned descendants (the container inits created by `runtime create`).
pub fn set_child_subreaper() -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

pub fn signal_number(name: &str) -> Option<i32> {
    let n = name.trim().to_ascii_uppercase();
    if let Ok(num) = n.parse::<i32>() {
        return Some(num);
    }
    let n = n.strip_prefix("SIG").unwrap_or(&n);
    Some(match n {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "ILL" => libc::SIGILL,
        "TRAP" => libc::SIGTRAP,
        "ABRT" | "IOT" => libc::SIGABRT,
        "BUS" => libc::SIGBUS,
        "FPE" => libc::SIGFPE,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "SEGV" => libc::SIGSEGV,
        "USR2" => libc::SIGUSR2,
        "PIPE" => libc::SIGPIPE,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "CHLD" => libc::SIGCHLD,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "TSTP" => libc::SIGTSTP,
        "TTIN" => libc::SIGTTIN,
        "TTOU" => libc::SIGTTOU,
        "URG" => libc::SIGURG,
        "XCPU" => libc::SIGXCPU,
        "XFSZ" => libc::SIGXFSZ,
        "VTALRM" => libc::SIGVTALRM,
        "PROF" => libc::SIGPROF,
        "WINCH" => libc::SIGWINCH,
        "IO" | "POLL" => libc::SIGIO,
        "PWR" => libc::SIGPWR,
        "SYS" => libc::SIGSYS,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names() {
        assert_eq!(signal_number("SIGTERM"), Some(15));
        assert_eq!(signal_number("term"), Some(15));
        assert_eq!(signal_number("9"), Some(9));
        assert_eq!(signal_number("SIGWHAT"), None);
        assert_eq!(Exit::Signal(9).code(), 137);
        assert_eq!(Exit::Code(3).code(), 3);
    }

    // The children are reaped through their pidfds, which clippy cannot see.
    #[allow(clippy::zombie_processes)]
    #[tokio::test]
    async fn waits_for_a_child_through_its_pidfd() {
        let child = std::process::Command::new("sh")
            .args(["-c", "exit 7"])
            .spawn()
            .unwrap();
        let fd = pidfd_open(child.id() as i32).unwrap();
        assert_eq!(wait_pidfd(fd).await.unwrap(), Exit::Code(7));
        let child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        let fd = pidfd_open(child.id() as i32).unwrap();
        pidfd_send_signal(&fd, libc::SIGKILL).unwrap();
        assert_eq!(wait_pidfd(fd).await.unwrap(), Exit::Signal(9));
    }
}
