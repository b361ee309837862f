//! Copying between the CLI's stdio and a pty master (`exec --tty` without a console socket).
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Copy stdin → master and master → stdout until the master closes or `pid` exits.
pub fn proxy(master: &OwnedFd, pid: i32) {
    // SAFETY: fds 0 and 1 are ours for the duration of the call.
    let stdin = unsafe { BorrowedFd::borrow_raw(0) };
    let stdout = unsafe { BorrowedFd::borrow_raw(1) };
    let mut stdin_open = true;
    let mut buf = [0u8; 8192];
    loop {
        let mut fds = vec![PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        if stdin_open {
            fds.push(PollFd::new(stdin, PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::from(200u16)) {
            Ok(0) => {
                // Child gone and nothing more to read?
                if nix::sys::wait::waitpid(
                    nix::unistd::Pid::from_raw(pid),
                    Some(
                        nix::sys::wait::WaitPidFlag::WNOHANG | nix::sys::wait::WaitPidFlag::WNOWAIT,
                    ),
                )
                .map(|s| s != nix::sys::wait::WaitStatus::StillAlive)
                .unwrap_or(true)
                {
                    return;
                }
                continue;
            }
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(_) => return,
        }
        let m_rev = fds[0].revents().unwrap_or(PollFlags::empty());
        let s_rev = if stdin_open {
            fds[1].revents().unwrap_or(PollFlags::empty())
        } else {
            PollFlags::empty()
        };
        if m_rev.intersects(PollFlags::POLLIN) {
            match nix::unistd::read(master, &mut buf) {
                Ok(0) | Err(_) => return, // EIO: the slave side closed
                Ok(n) => {
                    let _ = write_all(stdout, &buf[..n]);
                }
            }
        } else if m_rev.intersects(PollFlags::POLLHUP | PollFlags::POLLERR) {
            return;
        }
        if s_rev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP) {
            match nix::unistd::read(stdin, &mut buf) {
                Ok(0) | Err(_) => {
                    stdin_open = false;
                    // EOF on stdin: send ^D so the terminal's reader sees end of input.
                    let _ = write_all(master.as_fd(), &[4]);
                }
                Ok(n) => {
                    let _ = write_all(master.as_fd(), &buf[..n]);
                }
            }
        }
    }
}

fn write_all(fd: BorrowedFd, mut b: &[u8]) -> nix::Result<()> {
    while !b.is_empty() {
        match nix::unistd::write(fd, b) {
            Ok(n) => b = &b[n..],
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    let _ = fd.as_raw_fd();
    Ok(())
}
