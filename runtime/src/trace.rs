//! Step trace of the runtime's `create`, for berth's `BERTH_TRACE=1`: when the caller names a
//! file in `BERTH_RUNTIME_TRACE`, the create process and the container's init (until it says
//! "ready") append one line per step to it: wall-clock µs since the epoch, the pid, the step.
//! The caller reads the file once `create` returned and puts the lines on its own timeline.
//! Off (the variable unset, the default), a step is one relaxed atomic load.
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};

/// The environment variable naming the trace file.
pub const ENV: &str = "BERTH_RUNTIME_TRACE";

static FD: AtomicI32 = AtomicI32::new(-1);

/// Open the trace file named in the environment, if any (close-on-exec, appending).
pub fn open_from_env() {
    let Some(path) = std::env::var_os(ENV) else {
        return;
    };
    if let Ok(fd) = nix::fcntl::open(
        path.as_os_str(),
        nix::fcntl::OFlag::O_WRONLY
            | nix::fcntl::OFlag::O_APPEND
            | nix::fcntl::OFlag::O_CREAT
            | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    ) {
        FD.store(std::os::fd::IntoRawFd::into_raw_fd(fd), Ordering::Relaxed);
    }
}

/// The trace file's fd while tracing (a forked init keeps it until it execs).
pub fn fd() -> Option<RawFd> {
    Some(FD.load(Ordering::Relaxed)).filter(|f| *f >= 0)
}

/// Record one step; `what` is formatted only when tracing.
pub fn step(what: impl FnOnce() -> String) {
    let Some(fd) = fd() else { return };
    let us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    let line = format!("{us} {} {}\n", std::process::id(), what());
    // One write on an O_APPEND fd: lines of the two processes do not interleave.
    // SAFETY: a write of our own buffer to an fd this module opened.
    let _ = unsafe { libc::write(fd, line.as_ptr().cast(), line.len()) };
}

/// Parse one line of a trace file: (µs since the epoch, pid, step).
pub fn parse_line(line: &str) -> Option<(u64, u32, &str)> {
    let mut f = line.splitn(3, ' ');
    let us = f.next()?.parse().ok()?;
    let pid = f.next()?.parse().ok()?;
    Some((us, pid, f.next()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_back() {
        assert_eq!(
            parse_line("1700000000123456 42 cgroup created"),
            Some((1_700_000_000_123_456, 42, "cgroup created"))
        );
        assert_eq!(parse_line("x 42 step"), None);
        assert_eq!(parse_line("1 2"), None);
    }
}
