//! End-to-end: `run -it` and `attach` on a real pty, as a user at a terminal drives them,
//! through the supervisor that holds the container's pty master. The test is the terminal:
//! berth runs as a session leader whose controlling tty is the slave of a pty we hold the
//! master of, so resizing the master sends berth a real SIGWINCH.

mod common;

use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

use common::pty::*;
use common::*;

#[test]
fn run_it_is_a_real_terminal_through_the_supervisor() {
    let b = Berth::new();
    let p = unique("runit");
    let f = b.compose(
        &p,
        "services:\n  box:\n    image: berth-test/busybox:1\n    command: [\"sleep\", \"3600\"]\n",
    );
    // No `tty: true` in the service: `run` on a terminal gives the one-off one (compose).
    let t = Terminal::spawn(&b, &f, &["run", "-it", "--rm", "box", "sh"]);
    // The shell's first prompt is there (held until the CLI attached).
    let at = t.expect(0, "# ");
    // A pty inside, size and resize, raw mode while attached, input reaches a reader.
    assert_terminal_basics(&t, at);
    // The container's exit status is the CLI's; --rm removes the one-off.
    t.type_(b"exit 7\r");
    let (code, err) = t.wait();
    assert_eq!(code, 7, "stderr: {err}");
    let ps = b.ok(&f, &["ps", "-a", "--format", "{{.Name}}"]);
    assert!(
        !ps.contains("-run-"),
        "the --rm one-off is still there: {ps}"
    );

    // A one-off that is done before the CLI could attach: its output and status still come.
    let t = Terminal::spawn(
        &b,
        &f,
        &["run", "--rm", "box", "sh", "-c", "echo qu\"\"ick; exit 4"],
    );
    t.expect(0, "quick");
    let (code, err) = t.wait();
    assert_eq!(code, 4, "stderr: {err}");

    // Without a tty, stdin is forwarded (compose run): a pipe in, its EOF the container's.
    let mut c = b
        .cmd()
        .arg("-f")
        .arg(&f)
        .args([
            "run",
            "--rm",
            "box",
            "sh",
            "-c",
            "read x; echo got-$x; wc -l",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut i = c.stdin.take().unwrap();
        i.write_all(b"piped\na\nb\nc\n").unwrap();
    }
    let st = wait_for("run with a piped stdin", Duration::from_secs(30), || {
        c.try_wait().unwrap()
    });
    assert!(st.success(), "{st}");
    let mut so = String::new();
    c.stdout.take().unwrap().read_to_string(&mut so).unwrap();
    assert!(so.contains("got-piped"), "{so:?}");
    assert!(so.lines().any(|l| l.trim() == "3"), "{so:?}");

    // -T on a terminal: no tty, output still shown, status still returned.
    let t = Terminal::spawn(
        &b,
        &f,
        &["run", "-T", "--rm", "box", "sh", "-c", "tty; exit 3"],
    );
    let out = t.out.clone();
    let (code, err) = t.wait();
    assert_eq!(code, 3, "stderr: {err}");
    let shown = wait_for("the -T output", Duration::from_secs(5), || {
        let s = String::from_utf8_lossy(&out.lock().unwrap()).to_string();
        s.contains("not a tty").then_some(s)
    });
    assert!(!shown.contains("/dev/pts"), "{shown:?}");
    b.ok(&f, &["down", "-t", "1"]);
}

#[test]
fn attach_to_a_tty_service_detach_and_reattach() {
    let b = Berth::new();
    let p = unique("attach");
    let f = b.compose(
        &p,
        "services:\n  sh:\n    image: berth-test/busybox:1\n    command: [\"sh\"]\n    tty: true\n    stdin_open: true\n  plain:\n    image: berth-test/busybox:1\n    command: [\"sh\", \"-c\", \"i=0; while true; do echo tick-$$i; i=$$((i+1)); sleep 0.2; done\"]\n",
    );
    b.ok(&f, &["up", "-d"]);
    let t = Terminal::spawn(&b, &f, &["attach", "sh"]);
    // Let the attach settle before typing (docker's attach shows nothing until output).
    std::thread::sleep(Duration::from_millis(500));
    t.type_(b"echo $$ > /tmp/pid; echo h\"\"i\r");
    let at = t.expect(0, "hi\r\n");
    set_size(&t.master, 40, 100);
    std::thread::sleep(Duration::from_millis(200));
    t.type_(b"stty size\r");
    t.expect(at, "40 100\r\n");
    // ctrl-p ctrl-q: the CLI leaves, the container runs on.
    t.type_(&[0x10, 0x11]);
    let (code, err) = t.wait();
    assert_eq!(code, 0, "stderr: {err}");
    assert!(err.contains("read escape sequence"), "{err}");
    let ps = b.ok(&f, &["ps", "--format", "{{.Service}} {{.State}}"]);
    assert!(ps.contains("sh running"), "{ps}");

    // Reattach (with other detach keys): the same shell.
    let t = Terminal::spawn(&b, &f, &["attach", "--detach-keys", "ctrl-a,x", "sh"]);
    std::thread::sleep(Duration::from_millis(500));
    // Prints same-0-shell only in the shell that wrote /tmp/pid (the echo of the typed line
    // holds the expression, not its value).
    t.type_(b"echo same-$(( $(cat /tmp/pid) - $$ ))-shell\r");
    t.expect(0, "same-0-shell");
    t.type_(&[0x01, b'x']);
    let (code, err) = t.wait();
    assert_eq!(code, 0, "stderr: {err}");

    // A container without a tty: its output from now on, live (not its earlier log).
    let mut c = b
        .cmd()
        .arg("-f")
        .arg(&f)
        .args(["attach", "plain"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = c.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut seen = String::new();
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            if seen.matches("tick-").count() >= 2 {
                break;
            }
        }
        let _ = tx.send(seen);
    });
    let seen = rx.recv_timeout(Duration::from_secs(20));
    let _ = c.kill();
    let _ = c.wait();
    let seen = seen.expect("no live output from attach to a container without a tty");
    assert!(
        !seen.contains("tick-0\n"),
        "the earlier log was shown: {seen:?}"
    );

    // The shell exits through an attached terminal: attach returns its status.
    let t = Terminal::spawn(&b, &f, &["attach", "sh"]);
    std::thread::sleep(Duration::from_millis(500));
    t.type_(b"exit 5\r");
    let (code, err) = t.wait();
    assert_eq!(code, 5, "stderr: {err}");
    b.ok(&f, &["down", "-t", "1"]);
}

#[test]
fn create_makes_containers_that_start_starts() {
    let b = Berth::new();
    let p = unique("create");
    let f = b.compose(
        &p,
        "services:\n  a:\n    image: berth-test/busybox:1\n    command: [\"sleep\", \"3600\"]\n  b:\n    image: berth-test/busybox:1\n    command: [\"sleep\", \"3600\"]\n",
    );
    // --dry-run says what it would make and makes nothing.
    let dry = b
        .cmd()
        .arg("-f")
        .arg(&f)
        .args(["--dry-run", "create"])
        .output()
        .unwrap();
    assert!(dry.status.success());
    let dry = String::from_utf8_lossy(&dry.stderr);
    let want = format!("DRY-RUN MODE -  Container {p}-a-1  Created");
    assert!(dry.contains(&want), "{dry}");
    assert!(!dry.contains("Started"), "{dry}");
    let none = b.ok(&f, &["ps", "-a", "--format", "{{.Name}}"]);
    assert!(none.trim().is_empty(), "{none}");
    b.ok(&f, &["create", "--scale", "a=2"]);
    let ps = b.ok(&f, &["ps", "-a", "--format", "{{.Service}} {{.State}}"]);
    assert_eq!(ps.matches("a created").count(), 2, "{ps}");
    assert_eq!(ps.matches("b created").count(), 1, "{ps}");
    assert!(!ps.contains("running"), "{ps}");
    b.ok(&f, &["start"]);
    let ps = b.ok(&f, &["ps", "--format", "{{.Service}} {{.State}}"]);
    assert_eq!(ps.matches("a running").count(), 2, "{ps}");
    assert_eq!(ps.matches("b running").count(), 1, "{ps}");
    let e = b.fails(&f, &["create", "--force-recreate", "--no-recreate"]);
    assert!(
        e.contains("--no-recreate") || e.contains("cannot be used"),
        "{e}"
    );
    b.ok(&f, &["down", "-t", "1"]);
}

#[test]
fn a_tty_survives_a_supervisor_kill_while_attached_and_reattaches() {
    let b = Berth::new();
    let p = unique("ttyadopt");
    let f = b.compose(
        &p,
        "services:\n  sh:\n    image: berth-test/busybox:1\n    command: [\"sh\"]\n    tty: true\n    stdin_open: true\n",
    );
    b.ok(&f, &["up", "-d"]);
    let t = Terminal::spawn(&b, &f, &["attach", "sh"]);
    std::thread::sleep(Duration::from_millis(500));
    t.type_(b"echo $$ > /tmp/pid; echo fir\"\"st\r");
    t.expect(0, "first\r\n");
    let sup = b.supervisor_pid(&p);
    // SAFETY: killing the supervisor this test started.
    unsafe { libc::kill(sup, libc::SIGKILL) };
    // The attach ends with a clear message; the container runs on.
    let (code, err) = t.wait();
    assert_ne!(code, 0, "stderr: {err}");
    assert!(err.contains("supervisor went away"), "{err}");
    wait_for("the supervisor to die", Duration::from_secs(5), || {
        let s = std::fs::read_to_string(format!("/proc/{sup}/stat")).unwrap_or_default();
        (s.is_empty() || s.contains(") Z")).then_some(())
    });
    // A new supervisor adopts it (with its terminal: no hang-up, the same shell).
    b.ok(&f, &["up", "-d"]);
    let t = Terminal::spawn(&b, &f, &["attach", "sh"]);
    std::thread::sleep(Duration::from_millis(500));
    t.type_(b"echo same-$(( $(cat /tmp/pid) - $$ ))-shell\r");
    t.expect(0, "same-0-shell");
    t.type_(&[0x10, 0x11]);
    let (code, err) = t.wait();
    assert_eq!(code, 0, "stderr: {err}");
    // Its output is logged by the new supervisor too.
    let logs = wait_for("the adopted tty's log", Duration::from_secs(10), || {
        let l = b.ok(&f, &["logs", "sh"]);
        l.contains("same-0-shell").then_some(l)
    });
    assert!(logs.contains("first"), "{logs}");
    b.ok(&f, &["down", "-t", "1"]);
}

/// Read `from` on a thread until `want` shows up (20 s at most); everything read by then.
fn read_until(
    mut from: impl Read + Send + 'static,
    want: &'static str,
) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut seen = String::new();
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            if seen.contains(want) {
                break;
            }
        }
        let _ = tx.send(seen);
    });
    rx
}

#[test]
fn attach_without_a_tty_forwards_stdin_and_signals() {
    use std::io::Write;
    let b = Berth::new();
    let p = unique("attachio");
    let f = b.compose(
        &p,
        "services:\n  cat:\n    image: berth-test/busybox:1\n    command: [\"sh\", \"-c\", \"trap '' INT; while read l; do echo got-$$l; done; echo stdin-ended\"]\n    stdin_open: true\n  trap:\n    image: berth-test/busybox:1\n    command: [\"sh\", \"-c\", \"trap 'echo got-TERM; exit 7' TERM; while true; do echo tick; sleep 0.2; done\"]\n",
    );
    b.ok(&f, &["up", "-d"]);

    // stdin_open: a line written to attach's stdin reaches the container's, its answer comes
    // back on attach's stdout.
    let attach = |extra: &[&str], svc: &str| {
        b.cmd()
            .arg("-f")
            .arg(&f)
            .arg("attach")
            .args(extra)
            .arg(svc)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut c = attach(&["--sig-proxy=false"], "cat");
    let mut input = c.stdin.take().unwrap();
    let seen = read_until(c.stdout.take().unwrap(), "got-second");
    // The first line may be written before the CLI opened the container's stdin: it is
    // then waiting in the CLI's own pipe, and still arrives.
    input.write_all(b"first\n").unwrap();
    input.write_all(b"second\n").unwrap();
    input.flush().unwrap();
    let seen = seen
        .recv_timeout(Duration::from_secs(20))
        .expect("no answer through attach");
    assert!(
        seen.contains("got-first\n") && seen.contains("got-second\n"),
        "{seen:?}"
    );
    // The CLI's input ends: the container's does not (docker attach without stdin_once).
    drop(input);
    // --sig-proxy=false: ^C ends the CLI only.
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: signalling the CLI this test started.
    unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
    let st = wait_for("attach to end on SIGINT", Duration::from_secs(10), || {
        c.try_wait().unwrap()
    });
    assert_eq!(st.code(), Some(130), "{st}");
    std::thread::sleep(Duration::from_millis(300));
    let ps = b.ok(&f, &["ps", "--format", "{{.Service}} {{.State}}"]);
    assert!(ps.contains("cat running"), "{ps}");
    assert!(
        !b.ok(&f, &["logs", "cat"]).contains("stdin-ended"),
        "the container read EOF"
    );
    // A second attacher writes into the same stdin.
    let mut c = attach(&[], "cat");
    let mut input = c.stdin.take().unwrap();
    let seen = read_until(c.stdout.take().unwrap(), "got-again");
    input.write_all(b"again\n").unwrap();
    let seen = seen.recv_timeout(Duration::from_secs(20));
    assert!(seen.is_ok_and(|s| s.contains("got-again")));
    // With --sig-proxy, ^C goes to the container, whose shell ignores it: the third ^C leaves
    // it running and ends the CLI.
    for _ in 0..3 {
        // SAFETY: signalling the CLI this test started.
        unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = wait_for(
        "attach to end on the third SIGINT",
        Duration::from_secs(10),
        || c.try_wait().unwrap(),
    );
    assert_eq!(st.code(), Some(130), "{st}");
    let ps = b.ok(&f, &["ps", "--format", "{{.Service}} {{.State}}"]);
    assert!(ps.contains("cat running"), "{ps}");

    // --sig-proxy (the default): the CLI's SIGTERM goes to the container's process, whose
    // trap answers; its exit ends the attach with its code.
    let mut c = attach(&[], "trap");
    let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    {
        let (mut from, out) = (c.stdout.take().unwrap(), out.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 {
                    break;
                }
                out.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
    }
    // Its output shows: the CLI is attached (and has its signal handling in place).
    wait_for("attach's first output", Duration::from_secs(20), || {
        out.lock().unwrap().contains("tick\n").then_some(())
    });
    // SAFETY: signalling the CLI this test started.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let st = wait_for(
        "attach to end with the container",
        Duration::from_secs(15),
        || c.try_wait().unwrap(),
    );
    // The trap's last words came through the CLI (written before it ended).
    wait_for("the trap's output", Duration::from_secs(5), || {
        out.lock().unwrap().contains("got-TERM").then_some(())
    });
    assert_eq!(st.code(), Some(7), "{st}");
    let ps = b.ok(&f, &["ps", "-a", "--format", "{{.Service}} {{.State}}"]);
    assert!(ps.contains("trap exited"), "{ps}");
    b.ok(&f, &["down", "-t", "1"]);
}

/// Copy `from` into a shared buffer on a thread until it ends.
fn collect(mut from: impl Read + Send + 'static) -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let into = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    seen
}

fn text(b: &std::sync::Arc<std::sync::Mutex<Vec<u8>>>) -> String {
    String::from_utf8_lossy(&b.lock().unwrap()).to_string()
}

#[test]
fn attach_without_a_tty_keeps_stdout_and_stderr_apart_and_returns_the_exit_code() {
    use std::io::Write;
    let b = Berth::new();
    let p = unique("attachsplit");
    let f = b.compose(
        &p,
        r#"services:
  split:
    image: berth-test/busybox:1
    stdin_open: true
    command:
      - sh
      - -c
      - 'while read l; do if [ "$$l" = quit ]; then echo bye-err >&2; exit 3; fi; echo "out-$$l"; echo "err-$$l" >&2; done'
"#,
    );
    b.ok(&f, &["up", "-d"]);
    let mut c = b
        .cmd()
        .arg("-f")
        .arg(&f)
        .args(["attach", "split"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = c.stdin.take().unwrap();
    let out = collect(c.stdout.take().unwrap());
    let err = collect(c.stderr.take().unwrap());
    input.write_all(b"one\n").unwrap();
    wait_for(
        "both streams through attach",
        Duration::from_secs(20),
        || (text(&out).contains("out-one\n") && text(&err).contains("err-one\n")).then_some(()),
    );
    // ctrl-p ctrl-q without a tty: docker looks for the detach keys on a tty only, so they are
    // bytes for the container like any other, and the CLI stays attached.
    input.write_all(b"\x10\x11two\n").unwrap();
    wait_for(
        "the keys to reach the container",
        Duration::from_secs(20),
        || text(&out).contains("out-\u{10}\u{11}two\n").then_some(()),
    );
    assert!(
        c.try_wait().unwrap().is_none(),
        "attach left on the detach keys without a tty"
    );
    // Bad detach keys are refused with or without a tty, as docker does.
    let e = b.fails(&f, &["attach", "--detach-keys", "ctrl-1", "split"]);
    assert!(e.contains("ctrl-1"), "{e}");
    // The container ends by itself while attached: its last words (on stderr), then its code.
    input.write_all(b"quit\n").unwrap();
    let st = wait_for(
        "attach to end with the container",
        Duration::from_secs(20),
        || c.try_wait().unwrap(),
    );
    assert_eq!(st.code(), Some(3), "{st}; stderr: {}", text(&err));
    wait_for("the last line on stderr", Duration::from_secs(5), || {
        text(&err).contains("bye-err\n").then_some(())
    });
    let (o, e) = (text(&out), text(&err));
    assert!(
        !o.contains("err-") && !o.contains("bye-err"),
        "stderr on stdout: {o:?}"
    );
    assert!(!e.contains("out-"), "stdout on stderr: {e:?}");
    let ps = b.ok(&f, &["ps", "-a", "--format", "{{.Service}} {{.State}}"]);
    assert!(ps.contains("split exited"), "{ps}");
    b.ok(&f, &["down", "-t", "1"]);
}

#[test]
fn attach_no_stdin_leaves_the_callers_input_unread() {
    use std::io::Write;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let b = Berth::new();
    let p = unique("attachnoin");
    let f = b.compose(
        &p,
        "services:\n  cat:\n    image: berth-test/busybox:1\n    stdin_open: true\n    command: [\"sh\", \"-c\", \"while read l; do echo got-$$l; done\"]\n",
    );
    b.ok(&f, &["up", "-d"]);
    // attach's stdin: a pipe with a line already in it, whose read end we keep a copy of to
    // see whether anything was taken from it.
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds, ours from then on.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mut wr = std::fs::File::from(wr);
    wr.write_all(b"hidden\n").unwrap();
    let unread = |fd: &OwnedFd| {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD into an int on a pipe we hold.
        unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
        n
    };
    let mut quiet = b
        .cmd()
        .arg("-f")
        .arg(&f)
        .args(["attach", "--no-stdin", "--sig-proxy=false", "cat"])
        .stdin(Stdio::from(rd.try_clone().unwrap()))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let shown = collect(quiet.stdout.take().unwrap());
    // Another attacher's line makes output: the --no-stdin one shows it (it is attached).
    let mut other = b
        .cmd()
        .arg("-f")
        .arg(&f)
        .args(["attach", "--sig-proxy=false", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut input = other.stdin.take().unwrap();
    // Attached once a line written now shows (the first ones may come before it looked).
    wait_for(
        "the --no-stdin attach to show output",
        Duration::from_secs(30),
        || {
            input.write_all(b"ping\n").unwrap();
            std::thread::sleep(Duration::from_millis(300));
            text(&shown).contains("got-ping").then_some(())
        },
    );
    assert_eq!(unread(&rd), 7, "attach --no-stdin read the caller's stdin");
    for c in [&mut quiet, &mut other] {
        // SAFETY: signalling a CLI this test started.
        unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
        let st = wait_for("attach to end on SIGINT", Duration::from_secs(10), || {
            c.try_wait().unwrap()
        });
        assert_eq!(st.code(), Some(130), "{st}");
    }
    assert_eq!(unread(&rd), 7, "attach --no-stdin read the caller's stdin");
    let logs = b.ok(&f, &["logs", "cat"]);
    assert!(
        logs.contains("got-ping") && !logs.contains("got-hidden"),
        "{logs}"
    );
    b.ok(&f, &["down", "-t", "1"]);
}
