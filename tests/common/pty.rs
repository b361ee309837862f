//! A real terminal for the end-to-end tests: the test holds a pty's master and berth runs as
//! a session leader whose controlling tty is the slave, so resizing the master sends berth a
//! real SIGWINCH and hanging it up is a real hangup.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Berth;

/// A fresh pty pair (master, slave), both close-on-exec. openpty(3) does not set it: without
/// it berth would inherit the master of its own terminal and never see it hang up.
pub fn openpty() -> (OwnedFd, OwnedFd) {
    let p = nix::pty::openpty(None, None).expect("openpty");
    for fd in [&p.master, &p.slave] {
        // SAFETY: F_SETFD on fds we own.
        assert_eq!(
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) },
            0
        );
    }
    (p.master, p.slave)
}

pub fn set_size(fd: &OwnedFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ with a valid struct on a pty fd we own.
    assert_eq!(
        unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) },
        0
    );
}

pub fn lflags(fd: &OwnedFd) -> nix::sys::termios::LocalFlags {
    nix::sys::termios::tcgetattr(fd).unwrap().local_flags
}

pub struct Terminal {
    pub master: OwnedFd,
    pub slave: OwnedFd,
    pub out: Arc<Mutex<Vec<u8>>>,
    pub child: Child,
    pub stderr: std::process::ChildStderr,
}

impl Terminal {
    /// `berth -f F ARGS…` with a fresh 24x80 pty as its controlling terminal and stdio.
    pub fn spawn(b: &Berth, f: &Path, args: &[&str]) -> Terminal {
        let (master, slave) = openpty();
        set_size(&master, 24, 80);
        let mut cmd = b.cmd();
        cmd.arg("-f")
            .arg(f)
            .args(args)
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::piped());
        // SAFETY: setsid and TIOCSCTTY are async-signal-safe; fd 0 is the slave by now.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap();
        let out = Arc::new(Mutex::new(Vec::new()));
        let reader = master.try_clone().unwrap();
        let sink = out.clone();
        std::thread::spawn(move || {
            let mut f = std::fs::File::from(reader);
            let mut buf = [0u8; 4096];
            // Ends with EIO once the test drops its slave and berth is gone.
            while let Ok(n) = f.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let stderr = child.stderr.take().unwrap();
        Terminal {
            master,
            slave,
            out,
            child,
            stderr,
        }
    }

    /// Type `s` at the terminal.
    pub fn type_(&self, s: &[u8]) {
        nix::unistd::write(&self.master, s).unwrap();
    }

    /// Everything the terminal has shown so far.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).to_string()
    }

    /// Wait until the output holds `want` (after everything seen so far is older than `from`).
    pub fn expect(&self, from: usize, want: &str) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let o = self.output();
            if let Some(i) = o.get(from..).and_then(|t| t.find(want)) {
                return from + i + want.len();
            }
            assert!(
                Instant::now() < deadline,
                "no {want:?} on the terminal; it shows {:?}",
                &o
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait for berth to exit: its exit code and stderr.
    pub fn wait(mut self) -> (i32, String) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let st = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("berth did not exit; terminal: {:?}", self.output());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // Its stderr must reach EOF once it is gone (nothing it left running may hold it).
        let (tx, rx) = std::sync::mpsc::channel();
        let mut stderr = self.stderr;
        std::thread::spawn(move || {
            let mut err = String::new();
            let _ = stderr.read_to_string(&mut err);
            let _ = tx.send(err);
        });
        let err = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("berth's stderr is still held open after it exited");
        (st.code().unwrap_or(-1), err)
    }
}

/// What every interactive command (`exec -it`, `run -it`, `attach`) must give a shell at the
/// caller's terminal: a pty inside, the caller's size and then its resize, raw mode on the
/// caller's side while attached, typed input reaching a reader. Reads from `from`; returns the
/// offset after the last check.
pub fn assert_terminal_basics(t: &Terminal, from: usize) -> usize {
    t.type_(b"tty; stty size; echo mark-$((6*7))\r");
    let at = t.expect(from, "mark-42");
    let o = t.output();
    assert!(o.contains("/dev/pts/"), "{o:?}");
    assert!(o.contains("24 80"), "{o:?}");
    assert!(!lflags(&t.slave).contains(nix::sys::termios::LocalFlags::ICANON));
    set_size(&t.master, 50, 132);
    std::thread::sleep(Duration::from_millis(200));
    t.type_(b"stty size\r");
    let at = t.expect(at, "50 132\r\n");
    t.type_(b"read x; echo got-$x\rhello\r");
    t.expect(at, "got-hello")
}
