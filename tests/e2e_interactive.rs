//! End-to-end: `exec -it` on a real pty, as a user at a terminal drives it. The test is the
//! terminal: berth runs as a session leader whose controlling tty is the slave of a pty we
//! hold the master of, so resizing the master sends berth a real SIGWINCH.

mod common;

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const STACK: &str = "services:\n  box:\n    image: berth-test/busybox:1\n    command: [\"sleep\", \"3600\"]\n    init: true\n";

struct Terminal {
    master: OwnedFd,
    slave: OwnedFd,
    out: Arc<Mutex<Vec<u8>>>,
    child: Child,
    stderr: std::process::ChildStderr,
}

fn set_size(fd: &OwnedFd, rows: u16, cols: u16) {
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

impl Terminal {
    /// `berth -f F ARGS…` with a fresh 24x80 pty as its controlling terminal and stdio.
    fn spawn(b: &Berth, f: &Path, args: &[&str]) -> Terminal {
        let p = nix::pty::openpty(None, None).expect("openpty");
        // openpty(3) does not set close-on-exec: without it berth would inherit the master of
        // its own terminal and never see it hang up.
        for fd in [&p.master, &p.slave] {
            // SAFETY: F_SETFD on fds we own.
            assert_eq!(
                unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) },
                0
            );
        }
        set_size(&p.master, 24, 80);
        let mut cmd = b.cmd();
        cmd.arg("-f")
            .arg(f)
            .args(args)
            .stdin(Stdio::from(p.slave.try_clone().unwrap()))
            .stdout(Stdio::from(p.slave.try_clone().unwrap()))
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
        let child = cmd.spawn().unwrap();
        let out = Arc::new(Mutex::new(Vec::new()));
        let reader = p.master.try_clone().unwrap();
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
        let mut child = child;
        let stderr = child.stderr.take().unwrap();
        Terminal {
            master: p.master,
            slave: p.slave,
            out,
            child,
            stderr,
        }
    }

    fn type_(&self, s: &[u8]) {
        nix::unistd::write(&self.master, s).unwrap();
    }

    fn output(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).to_string()
    }

    /// Wait until the output holds `want` (after everything seen so far is older than `from`).
    fn expect(&self, from: usize, want: &str) -> usize {
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

    fn wait(mut self) -> (i32, String) {
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

fn lflags(fd: &OwnedFd) -> nix::sys::termios::LocalFlags {
    nix::sys::termios::tcgetattr(fd).unwrap().local_flags
}

#[test]
fn exec_it_is_a_real_terminal_both_ways() {
    let b = Berth::new();
    let p = unique("exit");
    let f = b.compose(&p, STACK);
    b.ok(&f, &["up", "-d"]);

    // Type commands, read their output; the size is the caller's and follows a resize.
    let t = Terminal::spawn(&b, &f, &["exec", "-it", "box", "sh"]);
    let cooked = lflags(&t.slave);
    assert!(cooked.contains(nix::sys::termios::LocalFlags::ECHO));
    t.type_(b"tty; stty size; echo mark-$((6*7))\r");
    let at = t.expect(0, "mark-42");
    let o = t.output();
    assert!(o.contains("/dev/pts/"), "{o:?}");
    assert!(o.contains("24 80"), "{o:?}");
    // While attached the caller's terminal is raw (no local echo, no line editing).
    assert!(!lflags(&t.slave).contains(nix::sys::termios::LocalFlags::ICANON));
    set_size(&t.master, 50, 132);
    std::thread::sleep(Duration::from_millis(200));
    t.type_(b"stty size\r");
    t.expect(at, "50 132\r\n");
    // Input reaches a program reading stdin; ^C is the container's, not ours.
    t.type_(b"read x; echo got-$x\rhello\r");
    t.expect(at, "got-hello");
    t.type_(b"sleep 30\r");
    std::thread::sleep(Duration::from_millis(300));
    t.type_(&[3]);
    t.type_(b"echo after-ctrl-\"c\"\r");
    t.expect(at, "after-ctrl-c");
    // The exit status is ours; the terminal is back in its cooked mode.
    t.type_(b"exit 7\r");
    let slave = t.slave.try_clone().unwrap();
    let (code, err) = t.wait();
    assert_eq!(code, 7, "stderr: {err}");
    assert_eq!(lflags(&slave), cooked, "terminal mode restored");

    // Detach keys: the default ctrl-p ctrl-q leaves the process running.
    let t = Terminal::spawn(&b, &f, &["exec", "box", "sh"]);
    t.type_(b"echo $$ > /tmp/sh.pid; echo sto\"\"red\r");
    t.expect(0, "stored");
    // A lone ctrl-p is held back, then released when the sequence breaks (^P reaches sh).
    t.type_(&[0x10, 0x10, 0x11]);
    let (code, err) = t.wait();
    assert_eq!(code, 0, "stderr: {err}");
    assert!(err.contains("read escape sequence"), "{err}");
    let alive = b.ok(
        &f,
        &[
            "exec",
            "-T",
            "box",
            "sh",
            "-c",
            "kill -0 $(cat /tmp/sh.pid) && echo alive",
        ],
    );
    assert_eq!(alive.trim(), "alive");

    // --detach-keys replaces the sequence.
    let t = Terminal::spawn(&b, &f, &["exec", "--detach-keys", "ctrl-a,x", "box", "sh"]);
    t.type_(b"echo rea\"\"dy\r");
    t.expect(0, "ready");
    t.type_(&[0x01, b'x']);
    let (code, err) = t.wait();
    assert_eq!(code, 0, "stderr: {err}");
    assert!(err.contains("read escape sequence"), "{err}");

    // -T: no terminal even on one; the status still comes back.
    let t = Terminal::spawn(&b, &f, &["exec", "-T", "box", "sh", "-c", "tty; exit 3"]);
    let out = t.out.clone();
    let (code, err) = t.wait();
    assert_eq!(code, 3, "stderr: {err}");
    let shown = wait_for("the -T output", Duration::from_secs(5), || {
        let s = String::from_utf8_lossy(&out.lock().unwrap()).to_string();
        s.contains("not a tty").then_some(s)
    });
    assert!(!shown.contains("/dev/pts"), "{shown:?}");

    // A caller whose stdin is not a terminal gets no tty (as compose) and its stdin is the
    // process's.
    let mut c = b
        .cmd()
        .arg("-f")
        .arg(&f)
        .args(["exec", "box", "sh", "-c", "tty; cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut i = c.stdin.take().unwrap();
        i.write_all(b"piped-in\n").unwrap();
    }
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout), "not a tty\npiped-in\n");

    // The terminal hangs up (SIGHUP, as when the window closes): berth restores the mode and
    // ends with 128+1; the session's shell loses its terminal.
    let t = Terminal::spawn(&b, &f, &["exec", "box", "sh"]);
    t.type_(b"echo $$ > /tmp/hup.pid; echo hu\"\"p-ready\r");
    t.expect(0, "hup-ready");
    let slave = t.slave.try_clone().unwrap();
    // SAFETY: signalling the berth process this test spawned.
    unsafe { libc::kill(t.child.id() as i32, libc::SIGHUP) };
    let (code, err) = t.wait();
    assert_eq!(code, 129, "stderr: {err}");
    assert_eq!(lflags(&slave), cooked, "terminal mode restored");
    wait_for(
        "the shell to lose its terminal",
        Duration::from_secs(10),
        || {
            let o = b
                .cmd()
                .arg("-f")
                .arg(&f)
                .args([
                    "exec",
                    "-T",
                    "box",
                    "sh",
                    "-c",
                    "kill -0 $(cat /tmp/hup.pid) || echo gone",
                ])
                .output()
                .ok()?;
            String::from_utf8_lossy(&o.stdout)
                .contains("gone")
                .then_some(())
        },
    );

    // A command that cannot start: the runtime's error reaches the caller, the status is not 0
    // and the terminal is left as it was.
    let t = Terminal::spawn(&b, &f, &["exec", "box", "no-such-command"]);
    let slave = t.slave.try_clone().unwrap();
    let (code, err) = t.wait();
    assert_ne!(code, 0);
    assert!(err.contains("no-such-command"), "{err}");
    assert_eq!(lflags(&slave), cooked, "terminal mode restored");

    // A bad --detach-keys is a clear error.
    let e = b.fails(&f, &["exec", "--detach-keys", "ctrl-1", "box", "true"]);
    assert!(e.contains("invalid detach key \"ctrl-1\""), "{e}");

    b.ok(&f, &["down", "-t", "1"]);
}
