//! End-to-end: `berth up`, `logs`, `ps`, `exec`, `down` on real containers (as root).

mod common;

use std::time::Duration;

use common::*;

#[test]
fn one_service_up_logs_down() {
    let b = Berth::new();
    let p = unique("one");
    let f = b.compose(&p, &stack("one_service_up_logs_down"));
    b.ok(&f, &["up", "-d"]);
    let logs = wait_for("the container's output", Duration::from_secs(10), || {
        let l = b.ok(&f, &["logs", "--no-log-prefix"]);
        (l.contains("hi there") && l.contains("to-stderr")).then_some(l)
    });
    assert!(
        logs.contains(&format!("hi there from {p}-hello-1")),
        "{logs}"
    );
    let ps: serde_json::Value = json_lines(&b.ok(&f, &["ps", "--format", "json"]));
    let row = &ps.as_array().unwrap()[0];
    assert_eq!(row["Name"], format!("{p}-hello-1"));
    assert_eq!(row["Service"], "hello");
    assert_eq!(row["State"], "running");
    let out = b.ok(&f, &["exec", "-T", "hello", "cat", "/proc/1/cmdline"]);
    assert!(
        out.starts_with("sleep"),
        "pid 1 inside is the service's command: {out:?}"
    );
    b.ok(&f, &["down", "-t", "1"]);
    assert!(b.state(&p).is_none(), "down removes the project record");
    let ps = b.ok(&f, &["ps", "-q"]);
    assert!(ps.trim().is_empty());
}

#[test]
fn two_services_find_each_other_by_name() {
    let b = Berth::new();
    let p = unique("dns");
    let f = b.compose(&p, &stack("two_services_find_each_other_by_name"));
    b.ok(&f, &["up", "-d"]);
    let logs = wait_for(
        "the client to fetch the page",
        Duration::from_secs(15),
        || {
            let l = b.ok(&f, &["logs", "client"]);
            l.contains("hello from berth").then_some(l)
        },
    );
    assert!(logs.contains(&format!("{p}-client-1")), "{logs}");
    wait_for("a links alias to resolve", Duration::from_secs(15), || {
        let l = b.ok(&f, &["logs", "linker"]);
        l.contains("hello from berth").then_some(())
    });
    b.ok(&f, &["down", "-t", "1"]);
}

#[test]
fn a_failing_dependency_aborts_up_and_leaves_nothing() {
    let b = Berth::new();
    let p = unique("fail");
    let f = b.compose(
        &p,
        &stack("a_failing_dependency_aborts_up_and_leaves_nothing"),
    );
    let err = b.fails(&f, &["up", "-d"]);
    assert!(err.contains("db"), "the error names the dependency: {err}");
    let st = b.state(&p);
    let containers = st
        .as_ref()
        .map(|s| s["containers"].as_array().unwrap().len())
        .unwrap_or(0);
    assert_eq!(containers, 0, "a failed up removes what it made: {st:?}");
}

#[test]
fn run_a_one_off_command_and_inspect() {
    let b = Berth::new();
    let p = unique("run");
    let f = b.compose(&p, &stack("run_a_one_off_command_and_inspect"));
    // run starts the dependencies, streams the output, exits with the command's code.
    let out = b
        .cmd()
        .arg("-f")
        .arg(&f)
        .args([
            "run",
            "--rm",
            "-e",
            "EXTRA=1",
            "tool",
            "sh",
            "-c",
            "echo $WHO $EXTRA; nslookup db >/dev/null && echo db-resolves; exit 3",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "exit code of the one-off: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("compose 1"), "{stdout}");
    assert!(stdout.contains("db-resolves"), "{stdout}");
    let st = b.state(&p).unwrap();
    let names: Vec<String> = st["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        vec![format!("{p}-db-1")],
        "--rm removed the one-off; db was started for it"
    );
    // run -d prints the name and leaves it running.
    let out = b
        .cmd()
        .arg("-f")
        .arg(&f)
        .args([
            "run",
            "-d",
            "--name",
            &format!("{p}-job"),
            "tool",
            "sh",
            "-c",
            "sleep 0.5; exit 4",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{p}-job")
    );
    let inspect = b.ok(&f, &["inspect", "db"]);
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(v[0]["service"], "db");
}

#[test]
fn wait_prints_the_exit_code_when_the_service_stops() {
    let b = Berth::new();
    let p = unique("wait");
    let f = b.compose(
        &p,
        &stack("wait_prints_the_exit_code_when_the_service_stops"),
    );
    b.ok(&f, &["up", "-d"]);
    let out = b
        .cmd()
        .arg("-f")
        .arg(&f)
        .args(["wait", "job"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "4");
    assert_eq!(out.status.code(), Some(4));
}

/// No container of an `up` runs before its networks' firewall rules are in (their isolation
/// from other networks and the outside): the rules go in while the containers are made, and
/// each `start` waits for them. Held up here by holding berth's nft lock (as another project's
/// apply would): the container is made, its process stays the runtime's, waiting for `start`,
/// until the lock is let go.
#[test]
fn containers_start_only_once_their_networks_rules_are_in() {
    use std::os::fd::AsRawFd;
    let b = Berth::new();
    let p = unique("fwgate");
    let f = b.compose(
        &p,
        "services:\n  a:\n    image: berth-test/busybox:1\n    command: [\"sleep\", \"300\"]\n",
    );
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(berth_network::firewall::LOCK)
        .unwrap();
    // SAFETY: flock on an fd we own.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let up = b
        .cmd()
        .arg("-f")
        .arg(&f)
        .args(["up", "-d"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let comm = |pid: i64| {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let pid = wait_for("the container to be made", Duration::from_secs(20), || {
        b.state(&p)?["containers"]
            .as_array()?
            .iter()
            .find(|c| c["service"] == "a")?["pid"]
            .as_i64()
    });
    // Made; while the rules cannot go in, it does not start.
    let until = std::time::Instant::now() + Duration::from_millis(1500);
    while std::time::Instant::now() < until {
        assert_eq!(
            comm(pid),
            "berth",
            "the container started before its network's rules were in"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(lock);
    let out = up.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "up: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "the container's own process",
        Duration::from_secs(10),
        || (comm(pid) == "sleep").then_some(()),
    );
    b.ok(&f, &["down", "-t", "1"]);
}
