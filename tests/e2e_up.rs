//! End-to-end: `berth up`, `logs`, `ps`, `exec`, `down` on real containers (as root).

mod common;

use std::time::Duration;

use common::*;

#[test]
fn one_service_up_logs_down() {
    let b = Berth::new();
    let p = unique("one");
    let f = b.compose(
        &p,
        &format!(
            r#"services:
  hello:
    image: {IMAGE}
    environment:
      GREETING: "hi there"
    command: ["sh", "-c", "echo $$GREETING from $$(hostname); echo to-stderr >&2; sleep 30"]
"#
        ),
    );
    b.ok(&f, &["up", "-d"]);
    let logs = wait_for("the container's output", Duration::from_secs(10), || {
        let l = b.ok(&f, &["logs", "--no-log-prefix"]);
        (l.contains("hi there") && l.contains("to-stderr")).then_some(l)
    });
    assert!(
        logs.contains(&format!("hi there from {p}-hello-1")),
        "{logs}"
    );
    let ps: serde_json::Value =
        serde_json::from_str(&b.ok(&f, &["ps", "--format", "json"])).unwrap();
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
    let f = b.compose(
        &p,
        &format!(
            r#"services:
  web:
    image: {IMAGE}
    command: ["httpd", "-f", "-p", "80", "-h", "/www"]
  client:
    image: {IMAGE}
    depends_on: [web]
    command: ["sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do timeout 2 wget -q -O- http://web/ && break; sleep 0.3; done; sleep 30"]
"#
        ),
    );
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
    b.ok(&f, &["down", "-t", "1"]);
}

#[test]
fn a_failing_dependency_aborts_up_and_leaves_nothing() {
    let b = Berth::new();
    let p = unique("fail");
    let f = b.compose(
        &p,
        &format!(
            r#"services:
  db:
    image: {IMAGE}
    command: ["sh", "-c", "exit 3"]
  app:
    image: {IMAGE}
    command: ["sleep", "30"]
    depends_on:
      db:
        condition: service_completed_successfully
"#
        ),
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
