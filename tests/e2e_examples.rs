//! The page-count example runs as its README says: three web replicas behind one published
//! port, counting visits in the store (as root, real containers).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn pagecount_counts_visits_across_replicas() {
    let b = Berth::new();
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let tar = b.dir.path().join("pagecount.tar");
    let st = Command::new(root.join("examples/mkimage.sh"))
        .arg(&tar)
        .arg("berth-example/busybox:1")
        .arg(root.join("examples/pagecount/image"))
        .status()
        .unwrap();
    assert!(st.success());
    let out = b.run(&["load", "-q", "-i", tar.to_str().unwrap()]);
    assert!(out.status.success());
    // The example as shipped, with a project name of the test's and a free host port.
    let yaml = std::fs::read_to_string(root.join("examples/pagecount/compose.yaml")).unwrap();
    let p = unique("pc");
    let yaml = yaml
        .replace("name: pagecount\n", "")
        .replace("\"8080:80\"", "\"127.0.0.1::80\"");
    let f = b.compose(&p, &yaml);
    b.ok(&f, &["up", "-d", "--wait"]);
    let port: u16 = b.port(&f, "web", 80, 1);
    let mut hosts = std::collections::BTreeSet::new();
    let mut counts = Vec::new();
    for _ in 0..12 {
        let body = wait_for("a page", Duration::from_secs(10), || {
            http_get(port, "/cgi-bin/index").filter(|b| b.contains("viewed"))
        });
        let line = body.lines().last().unwrap().to_string();
        // "Hello from pc…-web-2: this page has been viewed 7 times."
        hosts.insert(line.split(':').next().unwrap().to_string());
        counts.push(
            line.split_whitespace()
                .rev()
                .nth(1)
                .unwrap()
                .parse::<u32>()
                .unwrap(),
        );
    }
    assert_eq!(
        counts,
        (1..=12).collect::<Vec<u32>>(),
        "every visit counted once, in order"
    );
    assert!(
        hosts.len() >= 2,
        "the published port spreads over the replicas: {hosts:?}"
    );
    // The count survives down/up (named volume) and goes with down -v.
    b.ok(&f, &["down", "-t", "1"]);
    b.ok(&f, &["up", "-d", "--wait"]);
    let n = b.ok(&f, &["exec", "-T", "store", "cat", "/data/hits"]);
    assert_eq!(n.trim(), "12");
}
