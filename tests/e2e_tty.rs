//! End-to-end: `tty: true` services run on a pty whose master the supervisor receives over a
//! console socket; its output is logged as stdout with the pty's CRLF; `exec` and `run` keep
//! working; a killed supervisor leaves the terminal whole (a holder keeps the pty master), the
//! container runs on, is adopted with its terminal, and `down` leaves nothing, console sockets
//! included.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::pty::openpty;
use common::*;

/// The JSON records of a container's log file.
fn log_records(b: &Berth, p: &str, name: &str) -> Vec<serde_json::Value> {
    let f = b
        .root
        .path()
        .join(format!("data/projects/{p}/logs/{name}.log"));
    std::fs::read_to_string(f)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Console sockets anywhere under the state root.
fn console_sockets(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![root.join("run")];
    while let Some(d) = dirs.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "console") {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

/// Run berth with a terminal as stdin and stdout (as a user at a shell would); its output.
fn on_terminal(b: &Berth, f: &Path, args: &[&str]) -> String {
    let (master, slave) = openpty();
    let mut child = b
        .cmd()
        .arg("-f")
        .arg(f)
        .args(args)
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read the master on a thread: EIO once the child (the last slave holder) is gone.
    let reader = std::thread::spawn(move || {
        let mut f = std::fs::File::from(master);
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match f.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        out
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("berth {args:?} on a terminal did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    assert!(status.success(), "berth {args:?} failed ({status}): {err}");
    String::from_utf8_lossy(&reader.join().unwrap()).to_string()
}

#[test]
fn tty_services_run_on_a_pty_and_log_its_output() {
    let b = Berth::new();
    let p = unique("tty");
    let f = b.compose(&p, &stack("tty_services_run_on_a_pty"));
    b.ok(&f, &["up", "-d", "term", "interactive"]);
    let term = format!("{p}-term-1");
    let logs = wait_for("the tty's output", Duration::from_secs(10), || {
        let l = b.ok(&f, &["logs", "--no-log-prefix", "term"]);
        l.contains("to-stderr").then_some(l)
    });
    for want in [
        "/dev/pts/0\r\n",
        "33 101\r\n",
        "is-a-tty\r\n",
        "to-stderr\r\n",
    ] {
        assert!(logs.contains(want), "{want:?} in {logs:?}");
    }
    // A tty has one stream; its lines keep the pty's CR (as Docker logs them).
    let recs = log_records(&b, &p, &term);
    assert!(recs.len() >= 4, "{recs:?}");
    for r in &recs {
        assert_eq!(r["s"], "stdout", "{r}");
        assert!(r["l"].as_str().unwrap().ends_with('\r'), "{r}");
    }
    let ps: serde_json::Value = json_lines(&b.ok(&f, &["ps", "--format", "json", "term"]));
    assert_eq!(ps[0]["State"], "running", "{ps}");
    // The socket went once the master was received.
    assert!(
        console_sockets(b.root.path()).is_empty(),
        "{:?}",
        console_sockets(b.root.path())
    );

    // The exit is recorded only once the output is drained (3000 lines, then exit 3).
    let inter = format!("{p}-interactive-1");
    let code = wait_for("interactive to exit", Duration::from_secs(20), || {
        let st = b.state(&p)?;
        let c = st["containers"]
            .as_array()?
            .iter()
            .find(|c| c["name"] == inter.as_str())?
            .clone();
        (c["status"] == "exited").then(|| c["exit_code"].clone())
    });
    assert_eq!(code, 3);
    let recs = log_records(&b, &p, &inter);
    let lines: Vec<&str> = recs.iter().map(|r| r["l"].as_str().unwrap()).collect();
    assert_eq!(
        lines.first(),
        Some(&"stdin-is-a-tty\r"),
        "stdin is the pty too"
    );
    assert_eq!(lines.len(), 3001, "every line logged before the exit");
    assert_eq!(lines.last(), Some(&"3000\r"));

    // exec: a tty only when asked for and on a terminal.
    let out = b.ok(&f, &["exec", "-T", "term", "sh", "-c", "tty || true"]);
    assert_eq!(out.trim(), "not a tty");
    let out = on_terminal(&b, &f, &["exec", "term", "sh", "-c", "tty; echo in-exec"]);
    assert!(out.contains("/dev/pts/"), "{out:?}");
    assert!(out.contains("in-exec"), "{out:?}");

    // run: compose's rule, a tty only with a terminal stdin and no -T.
    let out = b.ok(
        &f,
        &["run", "--rm", "term", "sh", "-c", "tty; echo from-run"],
    );
    assert!(
        out.contains("not a tty") && out.contains("from-run"),
        "{out:?}"
    );
    let out = on_terminal(&b, &f, &["run", "--rm", "term", "sh", "-c", "tty; exit 0"]);
    assert!(out.contains("/dev/pts/0"), "{out:?}");
    let out = on_terminal(
        &b,
        &f,
        &["run", "--rm", "-T", "term", "sh", "-c", "tty || true"],
    );
    assert!(out.contains("not a tty"), "{out:?}");

    b.ok(&f, &["down", "-t", "1"]);
    assert!(b.state(&p).is_none());
    assert!(console_sockets(b.root.path()).is_empty());
}

/// A SIGKILLed supervisor: the pty master is kept by its holder (supervisor/attach.rs), so the
/// container's pid 1 runs on, its terminal is not hung up; `up` adopts it, the same process,
/// and logs what it writes to the terminal again; `down` ends it. (e2e_attach.rs attaches to
/// the terminal after such a kill.)
#[test]
fn a_killed_supervisor_leaves_the_tty_whole_and_up_adopts_it() {
    let b = Berth::new();
    let p = unique("ttyk");
    let f = b.compose(&p, &stack("tty_services_run_on_a_pty"));
    b.ok(&f, &["up", "-d", "term"]);
    wait_for("the tty's output", Duration::from_secs(10), || {
        let l = b.ok(&f, &["logs", "term"]);
        l.contains("is-a-tty").then_some(())
    });
    let pid_of_term =
        |b: &Berth| -> serde_json::Value { b.state(&p).unwrap()["containers"][0]["pid"].clone() };
    let before = pid_of_term(&b);
    assert!(before.is_i64(), "{before}");
    let sup = b.supervisor_pid(&p);
    // SAFETY: killing the supervisor this test started.
    unsafe { libc::kill(sup, libc::SIGKILL) };
    wait_for("the supervisor to die", Duration::from_secs(5), || {
        let s = std::fs::read_to_string(format!("/proc/{sup}/stat")).unwrap_or_default();
        (s.is_empty() || s.contains(") Z")).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    b.ok(&f, &["up", "-d", "term"]);
    let ps: serde_json::Value = json_lines(&b.ok(&f, &["ps", "--format", "json"]));
    assert_eq!(ps[0]["State"], "running", "{ps}");
    assert_eq!(pid_of_term(&b), before, "adopted, not restarted");
    // The terminal outlived the supervisor: pid 1 can still write to it (a hung-up pty gives
    // EIO) and the adopting supervisor logs what it writes.
    b.ok(
        &f,
        &[
            "exec",
            "-T",
            "term",
            "sh",
            "-c",
            "echo after-adoption > /proc/1/fd/1",
        ],
    );
    wait_for(
        "the write after adoption in the log",
        Duration::from_secs(10),
        || {
            let l = b.ok(&f, &["logs", "term"]);
            l.contains("after-adoption").then_some(())
        },
    );
    b.ok(&f, &["down", "-t", "1"]);
    assert!(console_sockets(b.root.path()).is_empty());
}
