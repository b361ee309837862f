//! End-to-end: replicas and zero-downtime rolling updates (as root, real containers).

mod common;

use std::time::Duration;

use common::*;

/// The client fetches `http://web/version` by name through the embedded DNS (busybox wget,
/// static glibc resolver, one lookup per fetch) `fetches` times, each bounded by `timeout`.
fn web_yaml(version: &str, health: &str, fetches: u32) -> String {
    format!(
        r#"services:
  web:
    image: {IMAGE}
    init: true
    environment:
      VERSION: "{version}"
    command: ["sh", "-c", "echo $$VERSION > /www/version; exec httpd -f -p 80 -h /www"]
    deploy:
      replicas: 3
      update_config:
        parallelism: 1
        order: start-first
        failure_action: rollback
    healthcheck:
      test: ["CMD-SHELL", "{health}"]
      interval: 200ms
      timeout: 3s
      retries: 5
  client:
    image: {IMAGE}
    init: true
    depends_on:
      web:
        condition: service_healthy
    command: ["sh", "-c", "i=0; while [ $$i -lt {fetches} ]; do i=$$((i+1)); r=$$(timeout 10 wget -q -O- http://web/version 2>&1) && echo OK $$r || echo FAIL $$r; sleep 0.03; done; echo DONE; sleep 60"]
"#
    )
}

fn counts(log: &str) -> (usize, usize, usize, usize) {
    let ok1 = ok(log, "v1");
    let ok2 = ok(log, "v2");
    let fail = log.lines().filter(|l| l.contains("FAIL")).count();
    let done = log.lines().filter(|l| l.contains("DONE")).count();
    (ok1, ok2, fail, done)
}

fn ok(log: &str, version: &str) -> usize {
    log.lines()
        .filter(|l| l.trim() == format!("OK {version}"))
        .count()
}

/// The client's whole log once its bounded loop printed DONE.
fn client_log_when_done(b: &Berth, f: &std::path::Path) -> String {
    wait_for(
        "the client to finish its loop",
        Duration::from_secs(60),
        || {
            let l = b.ok(f, &["logs", "--no-log-prefix", "client"]);
            (counts(&l).3 == 1).then_some(l)
        },
    )
}

/// Two rolling updates, one by `up -d` and one by the watcher (`up --watch`), while a client
/// in the project fetches the service by name 1,500 times (issue 19): every fetch succeeds, and
/// the answers go from v1 to v2 to v3.
#[test]
fn start_first_rollouts_by_up_and_by_the_watcher_have_no_failed_request() {
    const FETCHES: usize = 1500;
    let b = Berth::new();
    let p = unique("roll");
    let healthy = "wget -q -O /dev/null http://127.0.0.1/version";
    let yaml = |v: &str| web_yaml(v, healthy, FETCHES as u32);
    let f = b.compose(&p, &yaml("v1"));
    b.ok(&f, &["up", "-d", "--wait"]);
    let webs = |b: &Berth| -> Vec<serde_json::Value> {
        b.state(&p).unwrap()["containers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["service"] == "web")
            .cloned()
            .collect()
    };
    assert_eq!(webs(&b).len(), 3, "three replicas");
    let v1_hash = webs(&b)[0]["config_hash"].clone();
    wait_for("the client to get answers", Duration::from_secs(20), || {
        let l = b.ok(&f, &["logs", "--no-log-prefix", "client"]);
        (counts(&l).0 >= 5).then_some(())
    });
    // Rollout 1: change the version and converge with `up -d`, replica by replica.
    std::fs::write(&f, format!("name: {p}\n{}", yaml("v2"))).unwrap();
    b.ok(&f, &["up", "-d"]);
    let w = webs(&b);
    assert_eq!(w.len(), 3, "still three replicas after the rollout");
    assert!(
        w.iter().all(|c| c["generation"] == 2),
        "ps shows generation 2 for every replica: {w:?}"
    );
    assert!(
        w.iter().all(|c| c["config_hash"] != v1_hash),
        "all replicas run the new config"
    );
    let v2_hash = w[0]["config_hash"].clone();
    wait_for("v2 answers", Duration::from_secs(20), || {
        let l = b.ok(&f, &["logs", "--no-log-prefix", "client"]);
        (ok(&l, "v2") >= 5).then_some(())
    });
    // Rollout 2: the watcher sees the edit and rolls it out by itself.
    b.ok(&f, &["up", "-d", "--watch"]);
    std::fs::write(&f, format!("name: {p}\n{}", yaml("v3"))).unwrap();
    wait_for(
        "the watcher to roll v3 out to every replica",
        Duration::from_secs(120),
        || {
            let w = webs(&b);
            (w.len() == 3
                && w.iter().all(|c| {
                    c["config_hash"] != v2_hash
                        && c["config_hash"] != v1_hash
                        && c["status"] == "running"
                        && c["health"] == "healthy"
                }))
            .then_some(())
        },
    );
    let log = b.ok(&f, &["logs", "--no-log-prefix", "client"]);
    assert_eq!(
        counts(&log).3,
        0,
        "the client was still fetching when both rollouts were over"
    );

    // Replica numbers after two rollouts are 7, 8, 9; --index 1..3 reaches them in order.
    let mut numbers: Vec<u64> = webs(&b)
        .iter()
        .map(|c| c["number"].as_u64().unwrap())
        .collect();
    numbers.sort();
    assert!(numbers[0] > 3, "rollouts gave new numbers: {numbers:?}");
    for (i, n) in numbers.iter().enumerate() {
        let host = b.ok(
            &f,
            &[
                "exec",
                "-T",
                "--index",
                &(i + 1).to_string(),
                "web",
                "hostname",
            ],
        );
        assert_eq!(host.trim(), format!("{p}-web-{n}"), "--index {}", i + 1);
    }
    let err = b.fails(&f, &["exec", "-T", "--index", "4", "web", "true"]);
    assert!(err.contains("1..3"), "{err}");
    b.ok(&f, &["logs", "--index", "3", "web"]);

    let log = wait_for(
        "the client to finish its loop",
        Duration::from_secs(300),
        || {
            let l = b.ok(&f, &["logs", "--no-log-prefix", "client"]);
            (counts(&l).3 == 1).then_some(l)
        },
    );
    let (ok1, ok2, fail, _) = counts(&log);
    let ok3 = ok(&log, "v3");
    eprintln!("client fetches by name: {ok1} v1, {ok2} v2, {ok3} v3, {fail} failed");
    let fails: Vec<&str> = log.lines().filter(|l| l.contains("FAIL")).collect();
    assert_eq!(
        fail, 0,
        "no fetch failed during two rollouts ({ok1} v1, {ok2} v2, {ok3} v3): {fails:?}"
    );
    assert_eq!(ok1 + ok2 + ok3, FETCHES, "every fetch answered");
    assert!(
        ok1 > 0 && ok2 > 0 && ok3 > 0,
        "answers went v1, v2, v3 ({ok1}, {ok2}, {ok3})"
    );
    let versions: Vec<&str> = log
        .lines()
        .filter_map(|l| l.trim().strip_prefix("OK "))
        .collect();
    let last_v1 = versions.iter().rposition(|v| *v == "v1").unwrap();
    let first_v3 = versions.iter().position(|v| *v == "v3").unwrap();
    assert!(last_v1 < first_v3, "no v1 answer after the first v3");
    assert_eq!(
        versions.last(),
        Some(&"v3"),
        "after the rollouts every answer is v3"
    );
}

#[test]
fn a_broken_version_rolls_back_and_keeps_serving() {
    let b = Berth::new();
    let p = unique("rollbk");
    let healthy = "wget -q -O /dev/null http://127.0.0.1/version";
    let f = b.compose(&p, &web_yaml("v1", healthy, 400));
    b.ok(&f, &["up", "-d", "--wait"]);
    let st = b.state(&p).unwrap();
    let old_hash = st["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["service"] == "web")
        .unwrap()["config_hash"]
        .clone();
    wait_for("the client to get answers", Duration::from_secs(20), || {
        let l = b.ok(&f, &["logs", "--no-log-prefix", "client"]);
        (counts(&l).0 >= 5).then_some(())
    });
    // v2's healthcheck always fails: the rollout must roll back by itself.
    std::fs::write(&f, format!("name: {p}\n{}", web_yaml("v2", "exit 1", 400))).unwrap();
    let err = b.fails(&f, &["up", "-d"]);
    assert!(err.contains("rolled back"), "{err}");
    let st = b.state(&p).unwrap();
    let webs: Vec<_> = st["containers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["service"] == "web")
        .cloned()
        .collect();
    assert_eq!(
        webs.len(),
        3,
        "the service never lost its replicas: {webs:?}"
    );
    assert!(
        webs.iter()
            .all(|c| c["config_hash"] == old_hash && c["status"] == "running"),
        "all back on v1: {webs:?}"
    );
    let log = client_log_when_done(&b, &f);
    let (ok1, ok2, fail, _) = counts(&log);
    let fails: Vec<&str> = log.lines().filter(|l| l.contains("FAIL")).collect();
    assert_eq!(
        fail, 0,
        "requests kept succeeding ({ok1} v1, {ok2} v2): {fails:?}"
    );
    assert_eq!(ok2, 0, "the broken version never took traffic");
}

#[test]
fn scale_up_and_down_on_a_running_project() {
    let b = Berth::new();
    let p = unique("scale");
    let f = b.compose(
        &p,
        &format!(
            r#"services:
  worker:
    image: {IMAGE}
    init: true
    command: ["sleep", "60"]
"#
        ),
    );
    b.ok(&f, &["up", "-d"]);
    b.ok(&f, &["scale", "worker=3"]);
    let names = b.ok(&f, &["ps", "-q"]);
    assert_eq!(names.lines().count(), 3, "{names}");
    assert!(names.contains(&format!("{p}-worker-3")));
    b.ok(&f, &["up", "-d", "--scale", "worker=1"]);
    let names = b.ok(&f, &["ps", "-q"]);
    assert_eq!(
        names.trim(),
        format!("{p}-worker-1"),
        "scaling down removes the highest numbers"
    );
}

#[test]
fn the_watcher_converges_on_file_edits_and_ignores_invalid_ones() {
    let b = Berth::new();
    let p = unique("watch");
    let one = format!(
        r#"services:
  a:
    image: {IMAGE}
    init: true
    command: ["sleep", "60"]
"#
    );
    let f = b.compose(&p, &one);
    b.ok(&f, &["up", "-d", "--watch"]);
    let running = |b: &Berth| -> Vec<String> {
        let mut v: Vec<String> = b
            .ok(&f, &["ps", "--services"])
            .lines()
            .map(String::from)
            .collect();
        v.sort();
        v
    };
    assert_eq!(running(&b), vec!["a"]);
    // Adding a service starts just that service.
    let a_pid = b.state(&p).unwrap()["containers"][0]["pid"].clone();
    let two = format!(
        "{one}  b:\n    image: {IMAGE}\n    init: true\n    command: [\"sleep\", \"60\"]\n"
    );
    std::fs::write(&f, format!("name: {p}\n{two}")).unwrap();
    wait_for("b to start", Duration::from_secs(15), || {
        (running(&b) == vec!["a", "b"]).then_some(())
    });
    let st = b.state(&p).unwrap();
    let a = st["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["service"] == "a")
        .unwrap()
        .clone();
    assert_eq!(a["pid"], a_pid, "a was not touched");
    // An invalid edit is reported and nothing running is touched.
    std::fs::write(
        &f,
        format!("name: {p}\nservices:\n  a:\n    image: {IMAGE}\n    wrongField: 1\n"),
    )
    .unwrap();
    let events = wait_for(
        "the invalid edit to be reported",
        Duration::from_secs(15),
        || {
            let o = b
                .cmd()
                .args(["-p", &p, "events", "--since", "1h", "--until", "0s"])
                .output()
                .unwrap();
            let e = String::from_utf8_lossy(&o.stdout).to_string();
            e.contains("invalid").then_some(e)
        },
    );
    assert!(events.contains("nothing changed"), "{events}");
    // (ps reads the record, not the file: both services still run)
    let st = b.state(&p).unwrap();
    assert_eq!(st["containers"].as_array().unwrap().len(), 2);
    // Removing b (a fixed file) stops just b.
    std::fs::write(&f, format!("name: {p}\n{one}")).unwrap();

    wait_for("b to stop", Duration::from_secs(15), || {
        let st = b.state(&p)?;
        let n = st["containers"].as_array()?.len();
        (n == 1).then_some(())
    });
    let st = b.state(&p).unwrap();
    assert_eq!(st["containers"][0]["pid"], a_pid, "a still untouched");
    // A fixed edit that changes a is rolled out to a.
    let a_hash = st["containers"][0]["config_hash"].clone();
    let changed = one.replace(
        "command: [\"sleep\", \"60\"]",
        "command: [\"sleep\", \"61\"]",
    );
    std::fs::write(&f, format!("name: {p}\n{changed}")).unwrap();
    wait_for("a to run its new config", Duration::from_secs(15), || {
        let st = b.state(&p)?;
        let c = st["containers"].as_array()?.first()?.clone();
        (c["config_hash"] != a_hash && c["status"] == "running").then_some(())
    });
}

#[test]
fn rollout_through_a_published_port_has_no_failed_request() {
    let b = Berth::new();
    let p = unique("pport");
    let yaml = |v: &str| {
        format!(
            r#"services:
  web:
    image: {IMAGE}
    init: true
    environment:
      VERSION: "{v}"
    command: ["sh", "-c", "echo $$VERSION > /www/version; exec httpd -f -p 80 -h /www"]
    ports: ["127.0.0.1::80"]
    deploy:
      replicas: 3
      update_config:
        parallelism: 1
        order: start-first
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1/version"]
      interval: 200ms
      retries: 3
"#
        )
    };
    let f = b.compose(&p, &yaml("v1"));
    b.ok(&f, &["up", "-d", "--wait"]);
    let port: u16 = b.port(&f, "web", 80, 1);
    for i in 2..=3 {
        let other: u16 = b.port(&f, "web", 80, i);
        assert_eq!(other, port, "all replicas share one host port");
    }
    wait_for(
        "the published port to answer",
        Duration::from_secs(10),
        || http_get(port, "/version"),
    );
    // A client on the host hammers the port (bounded: 600 requests) while the rollout runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let client = std::thread::spawn(move || {
        let (mut ok, mut fail, mut v2) = (0, 0, 0);
        for _ in 0..600 {
            if s2.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            match http_get(port, "/version") {
                Some(body) => {
                    ok += 1;
                    if body.trim_end().ends_with("v2") {
                        v2 += 1;
                    }
                }
                None => fail += 1,
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        (ok, fail, v2)
    });
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&f, format!("name: {p}\n{}", yaml("v2"))).unwrap();
    b.ok(&f, &["up", "-d"]);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, fail, v2) = client.join().unwrap();
    assert_eq!(
        fail, 0,
        "no request through the published port failed ({ok} ok, {v2} from v2)"
    );
    assert!(v2 > 0, "answers switched to v2");
    let body = http_get(port, "/version").unwrap();
    assert!(body.trim_end().ends_with("v2"));
}
