//! End-to-end: injection, volumes, secrets, restart policies, healthchecks, published ports,
//! supervisor crash and adoption, attached `up` and Ctrl-C (as root, real containers).

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::*;

fn logs(b: &Berth, f: &std::path::Path, svc: &str) -> String {
    b.ok(f, &["logs", "--no-log-prefix", svc])
}

#[test]
fn environment_and_arguments_are_injected_exactly() {
    let b = Berth::new();
    let p = unique("env");
    std::fs::write(
        b.dir.path().join("app.env"),
        "FROM_FILE=file\nOVERRIDDEN=file\n",
    )
    .unwrap();
    let f = b.compose(&p, &stack("environment_and_arguments_are_injected_exactly"));
    b.ok(&f, &["up", "-d"]);
    let out = wait_for("the output", Duration::from_secs(10), || {
        let l = logs(&b, &f, "show");
        l.contains("WITH_SPACE").then_some(l)
    });
    assert!(out.contains("ARGS=first,second arg,"), "{out}");
    assert!(out.contains("CWD=/tmp"), "{out}");
    assert!(out.contains("ID=1000:1000"), "{out}");
    assert!(out.contains("FROM_FILE=file"), "{out}");
    assert!(
        out.contains("OVERRIDDEN=service"),
        "environment beats env_file: {out}"
    );
    assert!(out.contains("WITH_SPACE=a b  c"), "{out}");
    assert!(
        out.contains("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        "image Env: {out}"
    );
    assert!(out.contains(&format!("HOSTNAME={p}-show-1")), "{out}");
}

#[test]
fn named_volume_is_shared_and_survives_down_unless_v() {
    let b = Berth::new();
    let p = unique("vol");
    let f = b.compose(
        &p,
        &stack("named_volume_is_shared_and_survives_down_unless_v"),
    );
    b.ok(&f, &["up", "-d"]);
    wait_for(
        "the reader to see the writer's line",
        Duration::from_secs(10),
        || {
            let l = logs(&b, &f, "reader");
            (!l.trim().is_empty()).then_some(())
        },
    );
    let ro = b.ok(
        &f,
        &[
            "exec",
            "-T",
            "reader",
            "sh",
            "-c",
            "touch /data/x 2>&1; echo rc=$?",
        ],
    );
    assert!(
        ro.contains("Read-only file system"),
        "read_only volume: {ro}"
    );
    b.ok(&f, &["down", "-t", "1"]);
    b.ok(&f, &["up", "-d"]);
    let lines = wait_for(
        "two lines after the second up",
        Duration::from_secs(10),
        || {
            let out = b.ok(&f, &["exec", "-T", "writer", "cat", "/data/log"]);
            (out.lines().count() == 2).then_some(out)
        },
    );
    assert_eq!(
        lines.lines().count(),
        2,
        "the volume kept the first run's line"
    );
    b.ok(&f, &["down", "-v", "-t", "1"]);
    assert!(
        !b.root
            .path()
            .join(format!("data/volumes/{p}_shared"))
            .exists(),
        "down -v removes the volume"
    );
}

#[test]
fn bind_mounts_tmpfs_secrets_and_configs() {
    let b = Berth::new();
    let p = unique("mnt");
    let host = b.dir.path().join("hostdir");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("in.txt"), "from host").unwrap();
    std::fs::write(b.dir.path().join("secret.txt"), "s3cret").unwrap();
    let f = b.compose(&p, &stack("bind_mounts_tmpfs_secrets_and_configs"));
    b.ok(&f, &["up", "-d"]);
    let out = wait_for("the output", Duration::from_secs(10), || {
        let l = logs(&b, &f, "app");
        l.contains("answer=42").then_some(l)
    });
    assert!(out.contains("from host"), "{out}");
    assert_eq!(
        std::fs::read_to_string(host.join("out.txt")).unwrap(),
        "out\n",
        "bind mount is writable"
    );
    assert!(out.contains("tmpfs on /scratch"), "{out}");
    assert!(out.contains("400 1000:0"), "secret mode and uid: {out}");
    assert!(out.contains("444 0:0"), "config default mode: {out}");
    assert!(out.contains("s3cret"), "{out}");
}

#[test]
fn restart_on_failure_retries_with_backoff_then_gives_up() {
    let b = Berth::new();
    let p = unique("rst");
    let f = b.compose(
        &p,
        &stack("restart_on_failure_retries_with_backoff_then_gives_up"),
    );
    b.ok(&f, &["up", "-d"]);
    let st = wait_for("two restarts", Duration::from_secs(10), || {
        let s = b.state(&p)?;
        let c = s["containers"][0].clone();
        (c["restart_count"] == 2 && c["status"] == "exited").then_some(c)
    });
    assert_eq!(st["exit_code"], 1);
    std::thread::sleep(Duration::from_millis(800));
    let runs = logs(&b, &f, "failing")
        .lines()
        .filter(|l| *l == "run")
        .count();
    assert_eq!(runs, 3, "one run and two restarts");
    // Docker's backoff: 100 ms then 200 ms between the runs.
    let raw = b.ok(&f, &["logs", "-t", "--no-log-prefix", "failing"]);
    let times: Vec<f64> = raw
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|t| {
            let secs = &t[17..t.len() - 1];
            let mins: f64 = t[14..16].parse().ok()?;
            Some(mins * 60.0 + secs.parse::<f64>().ok()?)
        })
        .collect();
    assert_eq!(times.len(), 3, "{raw}");
    let (d1, d2) = (times[1] - times[0], times[2] - times[1]);
    assert!(
        d1 >= 0.09 && d2 >= 0.19,
        "delays of at least 100 ms then 200 ms: {d1:.3}s then {d2:.3}s"
    );
}

#[test]
fn healthy_gated_chain_starts_in_order() {
    let b = Berth::new();
    let p = unique("chain");
    let f = b.compose(&p, &stack("healthy_gated_chain_starts_in_order"));
    let t0 = Instant::now();
    b.ok(&f, &["up", "-d"]);
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "up waited for db to be healthy"
    );
    let ps: serde_json::Value = json_lines(&b.ok(&f, &["ps", "--format", "json"]));
    let db = ps
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["Service"] == "db")
        .unwrap();
    assert_eq!(db["Health"], "healthy");
    assert!(db["Status"].as_str().unwrap().contains("healthy"));
}

#[test]
fn published_port_reaches_the_container_from_loopback() {
    let b = Berth::new();
    let p = unique("port");
    let f = b.compose(
        &p,
        &stack("published_port_reaches_the_container_from_loopback"),
    );
    b.ok(&f, &["up", "-d"]);
    let port = b.port(&f, "web", 80, 1);
    let body = wait_for(
        "an answer through the published port",
        Duration::from_secs(10),
        || http_get(port, "/").filter(|b| b.contains("hello from berth")),
    );
    assert!(body.starts_with("HTTP/1."), "{body}");
}

#[test]
fn supervisor_killed_then_up_adopts_and_down_cleans() {
    let b = Berth::new();
    let p = unique("adopt");
    let f = b.compose(
        &p,
        &stack("supervisor_killed_then_up_adopts_and_down_cleans"),
    );
    b.ok(&f, &["up", "-d"]);
    let st = b.state(&p).unwrap();
    let pid = st["containers"][0]["pid"].as_i64().unwrap() as i32;
    let sup = b.supervisor_pid(&p);
    // SAFETY: killing the supervisor we started.
    unsafe { libc::kill(sup, libc::SIGKILL) };
    wait_for("the supervisor to die", Duration::from_secs(5), || {
        let s = std::fs::read_to_string(format!("/proc/{sup}/stat")).unwrap_or_default();
        (s.is_empty() || s.contains(") Z")).then_some(())
    });
    // The container still runs; a second up adopts it instead of starting another.
    b.ok(&f, &["up", "-d"]);
    let st = b.state(&p).unwrap();
    assert_eq!(st["containers"].as_array().unwrap().len(), 1);
    assert_eq!(
        st["containers"][0]["pid"].as_i64().unwrap() as i32,
        pid,
        "the same process, adopted"
    );
    // Kill the new supervisor too: down must work without one.
    let sup2 = b.supervisor_pid(&p);
    // SAFETY: killing the supervisor we started.
    unsafe { libc::kill(sup2, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(200));
    b.ok(&f, &["down", "-t", "1"]);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists() || {
            let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            s.contains(") Z")
        }
    );
}

#[test]
fn attached_up_streams_logs_and_ctrl_c_stops_the_stack() {
    let b = Berth::new();
    let p = unique("attach");
    let f = b.compose(
        &p,
        &stack("attached_up_streams_logs_and_ctrl_c_stops_the_stack"),
    );
    let mut child = b
        .cmd()
        .arg("-f")
        .arg(&f)
        .args(["up", "--no-color"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    wait_for("the container to run", Duration::from_secs(10), || {
        let s = b.state(&p)?;
        (s["containers"][0]["status"] == "running").then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = wait_for("up to return", Duration::from_secs(15), || {
        child.try_wait().ok().flatten()
    });
    let stdout = reader.join().unwrap();
    assert!(
        stdout.contains(&format!("{p}-ticker-1  | started")),
        "logs with compose's prefix: {stdout:?}"
    );
    assert_eq!(status.code(), Some(130));
    let st = b.state(&p).unwrap();
    assert_eq!(
        st["containers"][0]["status"], "exited",
        "Ctrl-C stopped the stack"
    );
}

#[test]
fn volumes_from_devices_stdin_open_and_network_modes() {
    let b = Berth::new();
    let p = unique("misc");
    let f = b.compose(
        &p,
        &stack("volumes_from_devices_stdin_open_and_network_modes"),
    );
    b.ok(&f, &["up", "-d"]);
    let out = wait_for("user's output", Duration::from_secs(10), || {
        let l = logs(&b, &f, "user");
        l.contains("mynull").then_some(l)
    });
    assert!(
        out.contains("shared"),
        "volumes_from shares the anonymous volume: {out}"
    );
    let dev = out.lines().find(|l| l.contains("/dev/mynull")).unwrap();
    let fields: Vec<&str> = dev.split_whitespace().collect();
    assert!(
        dev.starts_with('c') && fields[4] == "1," && fields[5] == "3",
        "char device 1:3: {dev}"
    );
    let ro = b.ok(
        &f,
        &[
            "exec",
            "-T",
            "user",
            "sh",
            "-c",
            "touch /data/y 2>&1; echo rc=$?",
        ],
    );
    assert!(ro.contains("Read-only"), "volumes_from :ro: {ro}");
    std::thread::sleep(Duration::from_millis(500));
    let ps = b.ok(&f, &["ps", "--services", "--status", "running"]);
    assert!(
        ps.lines().any(|l| l == "reader"),
        "cat on an open stdin keeps running: {ps}"
    );
    let links = wait_for("isolated's output", Duration::from_secs(10), || {
        let l = logs(&b, &f, "isolated");
        l.contains(',').then_some(l)
    });
    assert_eq!(links.trim(), "lo,", "network_mode none has only loopback");
}

#[test]
fn restart_policies_always_unless_stopped_and_no() {
    let b = Berth::new();
    let p = unique("pol");
    let f = b.compose(&p, &stack("restart_policies_always_unless_stopped_and_no"));
    b.ok(&f, &["up", "-d"]);
    let count = |svc: &str| -> u64 { b.container(&p, svc)["restart_count"].as_u64().unwrap() };
    wait_for(
        "always and unless-stopped to restart",
        Duration::from_secs(15),
        || (count("always") >= 2 && count("unless") >= 2).then_some(()),
    );
    assert_eq!(count("never"), 0, "restart: no never restarts");
    // A container stopped by the user stays stopped, whatever its policy.
    b.ok(&f, &["stop", "-t", "1", "unless", "always"]);
    let (a, u) = (count("always"), count("unless"));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        (count("always"), count("unless")),
        (a, u),
        "no restart after a user stop"
    );
    let st = b.state(&p).unwrap();
    for c in st["containers"].as_array().unwrap() {
        assert_eq!(c["status"], "exited", "{c}");
    }
    // start brings them back.
    b.ok(&f, &["start", "unless"]);
    wait_for("unless to run again", Duration::from_secs(10), || {
        (count("unless") > u || {
            let st = b.state(&p).unwrap();
            st["containers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["service"] == "unless" && c["status"] == "running")
        })
        .then_some(())
    });
}

#[test]
fn logs_tail_follow_and_timestamps() {
    let b = Berth::new();
    let p = unique("logs");
    let f = b.compose(&p, &stack("logs_tail_follow_and_timestamps"));
    b.ok(&f, &["up", "-d"]);
    wait_for("a few lines", Duration::from_secs(10), || {
        let l = logs(&b, &f, "talker");
        l.contains("line7").then_some(())
    });
    let tail = b.ok(&f, &["logs", "--no-log-prefix", "--tail", "2", "talker"]);
    assert_eq!(tail.lines().count(), 2, "{tail}");
    let n: Vec<u32> = tail
        .lines()
        .map(|l| l.trim_start_matches("line").parse().unwrap())
        .collect();
    assert_eq!(n[0] + 1, n[1], "the last two lines, in order: {tail}");
    let ts = b.ok(&f, &["logs", "-t", "--tail", "1", "talker"]);
    assert!(
        ts.contains(&format!("{p}-talker-1  | 20")) && ts.contains('T') && ts.contains("Z line"),
        "{ts}"
    );
    // -f keeps printing new lines as they come.
    let mut child = b
        .cmd()
        .arg("-f")
        .arg(&f)
        .args(["logs", "-f", "--no-log-prefix", "--tail", "0", "talker"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let _ = child.kill();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let _ = child.wait();
    assert!(out.lines().count() >= 3, "followed new lines: {out:?}");
    assert!(out.lines().all(|l| l.starts_with("line")), "{out:?}");
}
