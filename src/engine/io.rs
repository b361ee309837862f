//! Container stdio: pipes whose write ends become the container's stdout/stderr and whose read
//! ends the supervisor copies, line by line, into the container's log file.

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::unix::pipe;

use crate::logs::LogWriter;

/// A pipe: (read end, write end), both close-on-exec (the runtime dup2()s the write end onto
/// the container's stdout, which clears the flag on the copy only).
pub fn pipe_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just created them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Optional live tap of a container's output (attached `up`, `run`).
pub type Tap = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// Copy a pipe's lines into the log until the writer side closes.
pub async fn copy_to_log(
    read: OwnedFd,
    stream: &'static str,
    log: Arc<Mutex<LogWriter>>,
    tap: Option<Tap>,
) {
    let Ok(rx) = pipe::Receiver::from_owned_fd(read) else {
        return;
    };
    let mut reader = BufReader::with_capacity(16 * 1024, rx);
    let mut buf = Vec::with_capacity(256);
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                }
                if buf.last() == Some(&b'\r') {
                    buf.pop();
                }
                let line = String::from_utf8_lossy(&buf);
                if let Ok(mut w) = log.lock() {
                    let _ = w.write_line(stream, &line, SystemTime::now());
                }
                if let Some(t) = &tap {
                    t(stream, &line);
                }
            }
        }
    }
}
