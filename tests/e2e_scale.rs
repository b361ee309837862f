//! End-to-end at scale (issue 18): 200 independent services come up on one network, each
//! name resolves through the embedded DNS to the address the state records for it, and
//! `down` leaves nothing behind (the leak check of `common`, run when `Berth` drops).
//!
//! All-pairs resolution would be 40,000 lookups, each a fork and exec of busybox `nslookup`
//! inside a container (about 200 s on the CI machine): instead one container looks up every
//! service, and a spread sample of containers (the first, the last and every 40th) looks up a
//! sample of names (the first, the last, every 40th and itself). Each container has its own
//! network namespace and resolv.conf, so the sample covers the per-requester paths (subnet
//! check, listener, answer) on every kind of position; the full set of names covers the
//! records. The full 500 runs in `benches/scale.sh`.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::*;

const N: usize = 200;

fn yaml() -> String {
    let mut y = String::from("services:\n");
    for i in 1..=N {
        y.push_str(&format!(
            "  s{i:03}:\n    image: {IMAGE}\n    command: [\"sleep\", \"100000\"]\n    init: true\n"
        ));
    }
    y
}

/// service → address, from the state record.
fn addresses(b: &Berth, p: &str) -> HashMap<String, String> {
    let st = b.state(p).expect("project state");
    st["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["service"].as_str().unwrap().to_string(),
                c["endpoints"][0]["ip"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Look `names` up from `from`'s container: name → the addresses busybox nslookup printed
/// (in its answer section, after the server's own lines).
fn lookups(b: &Berth, f: &Path, from: &str, names: &[String]) -> HashMap<String, Vec<String>> {
    let script = format!(
        "for n in {}; do echo \"== $n\"; nslookup $n 2>&1; done; true",
        names.join(" ")
    );
    let out = b.ok(f, &["exec", "-T", from, "sh", "-c", &script]);
    let mut res: HashMap<String, Vec<String>> = HashMap::new();
    let mut cur: Option<String> = None;
    let mut in_answer = false;
    for line in out.lines() {
        if let Some(n) = line.strip_prefix("== ") {
            cur = Some(n.to_string());
            in_answer = false;
            res.entry(n.to_string()).or_default();
        } else if line.starts_with("Name:") {
            in_answer = true;
        } else if in_answer && line.starts_with("Address") {
            if let (Some(n), Some(a)) = (&cur, line.split_whitespace().last()) {
                res.get_mut(n).unwrap().push(a.to_string());
            }
        }
    }
    res
}

#[test]
fn two_hundred_services_resolve_each_other_and_go_down_clean() {
    let b = Berth::new();
    let p = unique("sc");
    let f = b.compose(&p, &yaml());
    b.ok(&f, &["up", "-d"]);
    let running = b.ok(&f, &["ps", "-q", "--status", "running"]);
    assert_eq!(running.lines().count(), N, "ps -q --status running");
    let addr = addresses(&b, &p);
    assert_eq!(addr.len(), N);
    let distinct: std::collections::HashSet<&String> = addr.values().collect();
    assert_eq!(distinct.len(), N, "every container its own address");

    let all: Vec<String> = (1..=N).map(|i| format!("s{i:03}")).collect();
    let check = |from: &str, names: &[String]| {
        let got = lookups(&b, &f, from, names);
        for n in names {
            assert_eq!(
                got.get(n).map(|v| v.as_slice()),
                Some(std::slice::from_ref(&addr[n])),
                "{n} from {from}"
            );
        }
    };
    check("s001", &all);
    let spread: Vec<usize> = (1..=N)
        .filter(|i| *i == 1 || *i == N || i % 40 == 0)
        .collect();
    for &i in &spread {
        let me = format!("s{i:03}");
        let mut names: Vec<String> = spread.iter().map(|j| format!("s{j:03}")).collect();
        if !names.contains(&me) {
            names.push(me.clone());
        }
        check(&me, &names);
    }
    // An unknown single-label name is NXDOMAIN, not a stale or invented address.
    let out = b.ok(
        &f,
        &["exec", "-T", "s100", "sh", "-c", "nslookup s999 2>&1; true"],
    );
    assert!(out.contains("NXDOMAIN"), "s999 from s100: {out}");

    b.ok(&f, &["down"]);
    assert!(b.state(&p).is_none(), "the project's record is gone");
}
