//! End-to-end: a replicated service reached by name through the embedded DNS, from the clients
//! real images have (as root, real containers). Issue 19.
//!
//! The issue's client ran `wget -T 2`: Debian's busybox-static 1.35 is built without wget's
//! timeout feature, yet still parses `-T` and stores its value through a NULL pointer, so that
//! wget dies of SIGSEGV before it opens any socket, on an IP literal too and under Docker as
//! well. These clients bound each fetch with busybox's `timeout` applet instead.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// The issue's stack: three replicas of a busybox httpd, healthy, and a static-busybox client
/// that starts once they are and fetches `http://web/` by name three times, then asks
/// `nslookup web`.
fn issue_yaml() -> String {
    format!(
        r#"services:
  web:
    image: {IMAGE}
    command: ["sh", "-c", "mkdir -p /srv && echo v1 > /srv/index.html && exec httpd -f -p 80 -h /srv"]
    healthcheck: {{test: ["CMD", "wget", "-q", "-O-", "http://localhost/"], interval: 1s, retries: 30}}
    deploy: {{replicas: 3}}
  client:
    image: {IMAGE}
    depends_on: {{web: {{condition: service_healthy}}}}
    command: ["sh", "-c", "for i in 1 2 3; do r=$$(timeout -s KILL 10 wget -q -O- http://web/) && echo OKREQ $$r || echo FAILREQ $$?; done; nslookup web; echo NSDONE; sleep 120"]
"#
    )
}

/// (container name, netns, bundle dir, address) of each container of `service`.
fn containers(b: &Berth, p: &str, service: &str) -> Vec<(String, PathBuf, PathBuf, String)> {
    let st = b.state(p).expect("project state");
    st["containers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["service"] == service)
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                PathBuf::from(c["netns"].as_str().unwrap()),
                PathBuf::from(c["dir"].as_str().unwrap()),
                c["endpoints"][0]["ip"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn client_log(b: &Berth, f: &Path) -> String {
    wait_for(
        "the client to fetch three times and run nslookup",
        Duration::from_secs(90),
        || {
            let l = b.ok(f, &["logs", "--no-log-prefix", "client"]);
            l.contains("NSDONE").then_some(l)
        },
    )
}

#[test]
fn a_static_busybox_client_reaches_replicas_by_name() {
    let b = Berth::new();
    let p = unique("dnsbb");
    let f = b.compose(&p, &issue_yaml());
    b.ok(&f, &["up", "-d"]);
    let log = client_log(&b, &f);
    let ok = log.lines().filter(|l| l.trim() == "OKREQ v1").count();
    let failed: Vec<&str> = log.lines().filter(|l| l.contains("FAILREQ")).collect();
    assert_eq!(
        (ok, failed.len()),
        (3, 0),
        "3 of 3 fetches of http://web/ succeed: {log}"
    );
    assert!(!log.contains("Segmentation fault"), "{log}");

    // busybox nslookup (A and AAAA queries) lists every replica, and only them.
    let webs: BTreeSet<String> = containers(&b, &p, "web").into_iter().map(|c| c.3).collect();
    assert_eq!(webs.len(), 3);
    let after_name = log.split("Name:").skip(1).collect::<Vec<_>>().join("");
    let answered: BTreeSet<String> = after_name
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Address:"))
        .map(|a| a.trim().to_string())
        .collect();
    assert_eq!(answered, webs, "nslookup web: {log}");

    // resolv.conf and hosts as Docker writes them behind its embedded server.
    let (client, _, _, client_ip) = containers(&b, &p, "client").remove(0);
    let resolv = b.ok(&f, &["exec", "-T", "client", "cat", "/etc/resolv.conf"]);
    let ns: Vec<&str> = resolv
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver "))
        .collect();
    assert_eq!(ns.len(), 1, "one nameserver, the embedded server: {resolv}");
    assert!(ns[0].starts_with("10."), "{resolv}");
    assert!(
        resolv
            .lines()
            .any(|l| l.starts_with("options ") && l.split_whitespace().any(|o| o == "ndots:0")),
        "options ndots:0 as Docker: {resolv}"
    );
    let hosts = b.ok(&f, &["exec", "-T", "client", "cat", "/etc/hosts"]);
    assert!(hosts.starts_with("127.0.0.1\tlocalhost\n"), "{hosts}");
    assert!(
        hosts.contains(&format!("{client_ip}\t{client}\n")),
        "{hosts}"
    );
    // Docker writes no nsswitch.conf; neither does berth (the test image has none).
    let nss = b
        .cmd()
        .arg("-f")
        .arg(&f)
        .args(["exec", "-T", "client", "cat", "/etc/nsswitch.conf"])
        .output()
        .unwrap();
    assert!(!nss.status.success(), "no /etc/nsswitch.conf is written");
}

/// `getent` of the host (glibc, dynamic: NSS `files dns`, A and AAAA sent in parallel on one
/// socket) run in the client's network namespace with the client's resolv.conf and hosts.
fn glibc_getent(netns: &Path, dir: &Path, args: &[&str]) -> (bool, String) {
    let nss = dir.join("test-nsswitch.conf");
    std::fs::write(&nss, "hosts: files dns\n").unwrap();
    let script = format!(
        "mount --bind {r} /etc/resolv.conf && mount --bind {h} /etc/hosts && \
         mount --bind {n} /etc/nsswitch.conf && exec timeout 20 getent \"$@\"",
        r = dir.join("resolv.conf").display(),
        h = dir.join("hosts").display(),
        n = nss.display(),
    );
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args([
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "getent",
        ])
        .args(args)
        .output()
        .expect("nsenter/unshare/getent");
    let _ = std::fs::remove_file(&nss);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn a_glibc_client_resolves_replicas_through_the_embedded_dns() {
    let b = Berth::new();
    let p = unique("dnsgl");
    let f = b.compose(&p, &issue_yaml());
    b.ok(&f, &["up", "-d", "--wait"]);
    let webs: BTreeSet<String> = containers(&b, &p, "web").into_iter().map(|c| c.3).collect();
    let (client, netns, dir, client_ip) = containers(&b, &p, "client").remove(0);
    // AF_UNSPEC: glibc asks A and AAAA at once; the AAAA is NODATA, the A has every replica.
    for args in [["ahosts", "web"], ["hosts", "web"], ["ahostsv4", "WEB"]] {
        let (ok, out) = glibc_getent(&netns, &dir, &args);
        assert!(ok, "getent {args:?}: {out}");
        let got: BTreeSet<String> = out
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(String::from)
            .collect();
        assert_eq!(got, webs, "getent {args:?}: {out}");
    }
    // A replica by its container name; the client itself from /etc/hosts.
    let one = containers(&b, &p, "web").remove(0);
    let (ok, out) = glibc_getent(&netns, &dir, &["ahostsv4", &one.0]);
    assert!(ok && out.starts_with(&format!("{} ", one.3)), "{out}");
    let (ok, out) = glibc_getent(&netns, &dir, &["hosts", &client]);
    assert!(ok && out.starts_with(&client_ip), "{out}");
    // An unknown single-label name is not found (the trailing dot keeps the host's search
    // domains, copied into resolv.conf as Docker does, out of it).
    let (ok, out) = glibc_getent(&netns, &dir, &["hosts", "nosuchservice."]);
    assert!(!ok, "{out}");
}

/// A container in another's network namespace (`network_mode: service:`) uses that one's
/// resolv.conf and hosts, as in Docker, so it resolves the project's names too.
#[test]
fn a_container_sharing_a_netns_shares_its_resolver() {
    let b = Berth::new();
    let p = unique("dnssh");
    let f = b.compose(
        &p,
        &format!(
            r#"services:
  app:
    image: {IMAGE}
    init: true
    command: ["sleep", "120"]
  side:
    image: {IMAGE}
    init: true
    network_mode: "service:app"
    depends_on: [app]
    command: ["sleep", "120"]
"#
        ),
    );
    b.ok(&f, &["up", "-d"]);
    let cat = |svc: &str, file: &str| b.ok(&f, &["exec", "-T", svc, "cat", file]);
    let resolv = cat("app", "/etc/resolv.conf");
    assert!(resolv.contains("ndots:0"), "{resolv}");
    assert_eq!(cat("side", "/etc/resolv.conf"), resolv);
    assert_eq!(cat("side", "/etc/hosts"), cat("app", "/etc/hosts"));
    let app_ip = containers(&b, &p, "app").remove(0).3;
    let out = b.ok(
        &f,
        &[
            "exec", "-T", "side", "timeout", "-s", "KILL", "10", "nslookup", "app",
        ],
    );
    assert!(out.contains(&format!("Address: {app_ip}")), "{out}");
}
