//! End-to-end: a project's supervisor dies (SIGKILL) while its containers run. Read commands
//! say so at once; the next one without `BERTH_NO_RESPAWN=1` starts a new supervisor, which
//! adopts what runs and applies the restart policy, with the real exit code, to what exited
//! meanwhile. A stopped project is never revived.

mod common;

use std::time::{Duration, Instant};

use common::*;

const STACK: &str = r#"
services:
  always:
    image: berth-test/busybox:1
    command: ["sleep", "3600"]
    restart: always
  once:
    image: berth-test/busybox:1
    # Exits 7 on SIGTERM (a pid namespace's init only gets the signals it handles).
    command: ["sh", "-c", "trap 'exit 7' TERM; while :; do sleep 0.1; done"]
    restart: "no"
"#;

fn kill(pid: i32, sig: i32) {
    // SAFETY: signalling a process this test started.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill {pid}");
}

fn gone(pid: i32) -> bool {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    s.is_empty() || s.contains(") Z")
}

fn container<'a>(st: &'a serde_json::Value, service: &str) -> &'a serde_json::Value {
    st["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["service"] == service)
        .unwrap_or_else(|| panic!("no {service} in {st}"))
}

fn pid_of(b: &Berth, p: &str, service: &str) -> i32 {
    container(&b.state(p).unwrap(), service)["pid"]
        .as_i64()
        .unwrap() as i32
}

/// `berth ps --format json` with or without respawn: (entries, stderr).
fn ps(b: &Berth, f: &std::path::Path, respawn: bool) -> (serde_json::Value, String) {
    let mut c = b.cmd();
    if !respawn {
        c.env("BERTH_NO_RESPAWN", "1");
    }
    let out = c
        .arg("-f")
        .arg(f)
        .args(["ps", "-a", "--format", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    (
        // One JSON object per line, as compose prints `ps --format json`.
        json_lines(&String::from_utf8_lossy(&out.stdout)),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn a_dead_supervisor_is_reported_then_respawned_by_the_next_command() {
    let b = Berth::new();
    let p = unique("respawn");
    let f = b.compose(&p, STACK);
    b.ok(&f, &["up", "-d"]);
    let (list, err) = ps(&b, &f, true);
    assert!(err.is_empty(), "no warning with a supervisor: {err}");
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|e| e["Supervisor"] == "running"),
        "{list}"
    );
    let always = pid_of(&b, &p, "always");
    let once = pid_of(&b, &p, "once");

    // SIGKILL the supervisor: within a second, ps says so, in text and JSON.
    let sup = b.supervisor_pid(&p);
    let killed = Instant::now();
    kill(sup, libc::SIGKILL);
    wait_for("the supervisor to die", Duration::from_secs(5), || {
        gone(sup).then_some(())
    });
    let (list, err) = ps(&b, &f, false);
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(1), "ps warned after {took:?}");
    assert!(
        err.contains("supervisor of project") && err.contains("not running"),
        "{err}"
    );
    assert!(
        err.contains("restart policies"),
        "names what is not enforced: {err}"
    );
    assert!(err.contains("up -d"), "names the fix: {err}");
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|e| e["Supervisor"] == "not running"),
        "{list}"
    );
    assert!(
        !b.root
            .path()
            .join(format!("run/projects/{p}/supervisor.sock"))
            .exists()
            || std::os::unix::net::UnixStream::connect(
                b.root
                    .path()
                    .join(format!("run/projects/{p}/supervisor.sock"))
            )
            .is_err(),
        "BERTH_NO_RESPAWN=1 started no supervisor"
    );

    // Both containers die while no supervisor runs.
    kill(once, libc::SIGTERM);
    kill(always, libc::SIGKILL);
    // Reaped, not left as zombies whose status a new supervisor could still read: the exit
    // codes below come from the supervisor's keeper, which reaped them.
    let reaped = |pid: i32| !std::path::Path::new(&format!("/proc/{pid}")).exists();
    wait_for(
        "both containers to be reaped",
        Duration::from_secs(10),
        || (reaped(once) && reaped(always)).then_some(()),
    );

    // The next command brings a supervisor back.
    let (list, err) = ps(&b, &f, true);
    assert!(err.contains("started a new one"), "{err}");
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|e| e["Supervisor"] == "respawned"),
        "{list}"
    );
    let sup2 = b.supervisor_pid(&p);
    assert_ne!(sup2, sup);
    // restart: always is restarted (a new process), restart: "no" stays exited with its code.
    let st = wait_for("always to be restarted", Duration::from_secs(20), || {
        let st = b.state(&p)?;
        let c = container(&st, "always");
        (c["status"] == "running" && c["pid"].as_i64().is_some_and(|x| x as i32 != always))
            .then_some(st)
    });
    assert_eq!(container(&st, "always")["restart_count"], 1, "{st}");
    let c = container(&st, "once");
    assert_eq!(c["status"], "exited", "{st}");
    assert_eq!(c["exit_code"], 7, "its real exit code: {st}");
    let c = container(&st, "always");
    let events = b.ok(&f, &["events", "--since", "1h", "--until", "0s"]);
    assert!(events.contains("started again by `berth ps`"), "{events}");
    assert!(
        events.contains(&format!(
            "{} exited with 7 while no supervisor ran; restart policy: it stays exited",
            container(&st, "once")["name"].as_str().unwrap()
        )),
        "{events}"
    );
    assert!(
        events.contains(&format!(
            "{} exited with 137 while no supervisor ran; restart policy: restarting",
            c["name"].as_str().unwrap()
        )),
        "{events}"
    );
    // Supervised again: the restarted container is watched; the next exit restarts it too.
    let again = c["pid"].as_i64().unwrap() as i32;
    kill(again, libc::SIGKILL);
    wait_for(
        "always to be restarted again",
        Duration::from_secs(20),
        || {
            let st = b.state(&p)?;
            let c = container(&st, "always");
            (c["status"] == "running"
                && c["pid"].as_i64().is_some_and(|x| x as i32 != again)
                && c["restart_count"] == 2)
                .then_some(())
        },
    );
    b.ok(&f, &["down", "-t", "1"]);
    assert!(b.state(&p).is_none(), "down removed the record");
}

#[test]
fn a_stopped_project_is_not_revived() {
    let b = Berth::new();
    let p = unique("norevive");
    let f = b.compose(&p, STACK);
    b.ok(&f, &["up", "-d"]);
    b.ok(&f, &["stop", "-t", "1"]);
    let sup = b.supervisor_pid(&p);
    kill(sup, libc::SIGKILL);
    wait_for("the supervisor to die", Duration::from_secs(5), || {
        gone(sup).then_some(())
    });
    let (list, err) = ps(&b, &f, true);
    assert!(err.is_empty(), "a stopped project is not a problem: {err}");
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|e| e["Supervisor"] == "not running" && e["State"] == "exited"),
        "{list}"
    );
    let out = b
        .cmd()
        .arg("-f")
        .arg(&f)
        .args(["ls", "-a", "--format", "json"])
        .output()
        .unwrap();
    let ls: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let me = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["Name"] == p.as_str())
        .unwrap_or_else(|| panic!("{ls}"));
    assert_eq!(me["Supervisor"], "not running", "{ls}");
    assert!(
        !b.root
            .path()
            .join(format!("run/projects/{p}/supervisor.pid"))
            .exists()
            || gone(b.supervisor_pid(&p)),
        "no supervisor was started"
    );
    let st = b.state(&p).unwrap();
    for c in st["containers"].as_array().unwrap() {
        assert_eq!(c["status"], "exited", "{st}");
    }
    b.ok(&f, &["down", "-t", "1"]);
}
