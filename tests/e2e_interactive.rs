//! End-to-end: `exec -it` on a real pty, as a user at a terminal drives it. The test is the
//! terminal: berth runs as a session leader whose controlling tty is the slave of a pty we
//! hold the master of, so resizing the master sends berth a real SIGWINCH.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::pty::*;
use common::*;

const STACK: &str = "services:\n  box:\n    image: berth-test/busybox:1\n    command: [\"sleep\", \"3600\"]\n    init: true\n";

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
    // A pty inside, size and resize, raw mode while attached, input reaches a reader.
    let at = assert_terminal_basics(&t, 0);
    // ^C is the container's, not ours.
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
