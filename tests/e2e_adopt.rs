//! End-to-end: a supervisor SIGKILLed while a container streams output. The container neither
//! dies (no SIGPIPE) nor loses a line: its output waits in its stream FIFOs until `up` starts a
//! new supervisor, which adopts it and logs the rest; its exit status is still known.

mod common;

use std::time::Duration;

use common::*;

fn kill_and_reap_wait(pid: i32) {
    // SAFETY: killing the supervisor we started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_for("the supervisor to die", Duration::from_secs(5), || {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        (s.is_empty() || s.contains(") Z")).then_some(())
    });
}

/// Lines in the container's log file so far.
fn logged(b: &Berth, p: &str, name: &str) -> usize {
    let f = b
        .root
        .path()
        .join(format!("data/projects/{p}/logs/{name}.log"));
    std::fs::read_to_string(f)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// The host pids of `pid`'s children.
fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Whether `pid` sleeps in a pipe write (`pipe_write`, or `anon_pipe_write` on newer kernels).
fn blocked_writing(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/wchan"))
        .unwrap_or_default()
        .ends_with("pipe_write")
}

#[test]
fn supervisor_killed_mid_stream_loses_no_output() {
    let b = Berth::new();
    let p = unique("stream");
    let f = b.compose(&p, &stack("supervisor_killed_mid_stream_loses_no_output"));
    let name = format!("{p}-chatty-1");
    b.ok(&f, &["up", "-d"]);
    let st = b.state(&p).unwrap();
    let pid = st["containers"][0]["pid"].as_i64().unwrap() as i32;
    let io = b.root.path().join(format!("run/projects/{p}/io"));
    for s in ["stdout", "stderr"] {
        use std::os::unix::fs::FileTypeExt;
        let m = std::fs::symlink_metadata(io.join(format!("{name}.{s}"))).unwrap();
        assert!(m.file_type().is_fifo(), "{s} is a named FIFO");
    }
    wait_for("output to flow", Duration::from_secs(30), || {
        (logged(&b, &p, &name) >= 200).then_some(())
    });
    kill_and_reap_wait(b.supervisor_pid(&p));
    let at_kill = logged(&b, &p, &name);
    // No supervisor reads: the shell fills the pipe (64 KiB, ~640 lines) and then waits in
    // its write. It neither dies of SIGPIPE nor moves on.
    let sh = wait_for(
        "the shell to block on its full stdout",
        Duration::from_secs(30),
        || children(pid).into_iter().find(|c| blocked_writing(*c)),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(blocked_writing(sh), "still blocked, alive");
    assert_eq!(logged(&b, &p, &name), at_kill, "nobody logged meanwhile");
    // A new supervisor adopts the container and drains the backlog.
    b.ok(&f, &["up", "-d"]);
    let st = b.state(&p).unwrap();
    assert_eq!(st["containers"].as_array().unwrap().len(), 1);
    assert_eq!(st["containers"][0]["pid"].as_i64().unwrap() as i32, pid);
    let st = wait_for("the container to finish", Duration::from_secs(120), || {
        let s = b.state(&p)?;
        (s["containers"][0]["status"] == "exited").then_some(s)
    });
    let c = &st["containers"][0];
    assert_eq!(
        c["exit_code"], 3,
        "ran to its end, status known though adopted"
    );
    assert_eq!(c["restart_count"], 0);
    let out = b.ok(&f, &["logs", "--no-log-prefix", "chatty"]);
    let nums: Vec<u32> = out
        .lines()
        .filter_map(|l| l.strip_prefix("line "))
        .map(|l| l[..5].parse().unwrap())
        .collect();
    let want: Vec<u32> = (1..=3000).collect();
    if nums != want {
        let dup: Vec<_> = nums.windows(2).filter(|w| w[0] + 1 != w[1]).collect();
        panic!("{} lines, breaks in the sequence: {dup:?}", nums.len());
    }
    let errs: Vec<u32> = out
        .lines()
        .filter_map(|l| l.strip_prefix("err "))
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(errs, (1..=30).map(|i| i * 100).collect::<Vec<_>>());
    assert!(
        out.lines()
            .all(|l| l.starts_with("line ") || l.starts_with("err ")),
        "no torn lines"
    );
    b.ok(&f, &["down", "-t", "1"]);
    assert!(!io.exists(), "down leaves no FIFO behind");
}

/// A project recorded by a berth from before the per-container records (one `state.json`):
/// the new supervisor adopts its running containers, answers for them in DNS, and on its first
/// save replaces the old file with `project.json` and one file per container; stop/start and
/// `down` work on the new record.
#[test]
fn a_record_in_the_old_single_file_format_is_adopted_and_upgraded() {
    let b = Berth::new();
    let p = unique("legacy");
    let f = b.compose(
        &p,
        &format!(
            "services:\n  web:\n    image: {IMAGE}\n    init: true\n    command: [\"sleep\", \"1000\"]\n    deploy:\n      replicas: 2\n  db:\n    image: {IMAGE}\n    init: true\n    command: [\"sleep\", \"1000\"]\n"
        ),
    );
    b.ok(&f, &["up", "-d"]);
    let before = b.state(&p).unwrap();
    let pids: Vec<i64> = before["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["pid"].as_i64().unwrap())
        .collect();
    assert_eq!(pids.len(), 3);
    kill_and_reap_wait(b.supervisor_pid(&p));
    // What an older berth left: the same record as one document, no per-container files.
    let dir = b.root.path().join("data/projects").join(&p);
    std::fs::write(dir.join("state.json"), serde_json::to_vec(&before).unwrap()).unwrap();
    std::fs::remove_file(dir.join("project.json")).unwrap();
    std::fs::remove_dir_all(dir.join("containers")).unwrap();
    assert_eq!(b.state(&p).unwrap()["containers"], before["containers"]);
    // `ps` reads it as it is.
    let ps = b.ok(&f, &["ps", "-q", "--status", "running"]);
    assert_eq!(ps.lines().count(), 3, "{ps}");
    // `up` adopts the same processes (nothing recreated) and writes the new format.
    b.ok(&f, &["up", "-d"]);
    let st = b.state(&p).unwrap();
    let now: Vec<i64> = st["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["pid"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(now, pids, "the same processes, adopted");
    // The first save after the adoption (stop/start below at the latest) replaces the old file.
    b.ok(&f, &["stop", "-t", "1", "db"]);
    assert!(!dir.join("state.json").exists(), "the old file is replaced");
    assert!(dir.join("project.json").exists());
    // (Dot files are the supervisor's previous versions, see state.rs `swap_in_file`.)
    let files = std::fs::read_dir(dir.join("containers"))
        .unwrap()
        .filter(|e| {
            !e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.')
        })
        .count();
    assert_eq!(files, 3, "one file per container");
    assert_eq!(b.container(&p, "db")["status"], "exited");
    b.ok(&f, &["start", "db"]);
    assert_eq!(b.container(&p, "db")["status"], "running");
    // The adopted replicas answer in DNS (the new supervisor's records).
    let out = b.ok(&f, &["exec", "-T", "db", "nslookup", "web"]);
    let answers = out.matches("Address").count();
    assert!(answers >= 2, "both web replicas: {out}");
    b.ok(&f, &["down", "-t", "1"]);
    assert!(b.state(&p).is_none());
}
