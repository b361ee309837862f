//! The DNS server against real namespaces (root): busybox nslookup inside a container-like
//! namespace asks the gateway; forwarding goes to a dnsmasq the test runs on loopback.

#![cfg(feature = "dns")]

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_network::dns::{DnsServer, Records};
use berth_network::ipam;
use common::*;

/// (success, IPv4 addresses of the answer) of `busybox nslookup NAME SERVER` inside `ns`.
fn nslookup(ns: &Ns, name: &str, server: Ipv4Addr) -> (bool, Vec<String>) {
    let o = Command::new("timeout")
        .args(["5", "nsenter"])
        .arg(format!("--net={}", ns.path.display()))
        .args(["busybox", "nslookup", name, &server.to_string()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let mut addrs = vec![];
    let mut in_answer = false;
    for line in out.lines() {
        if line.starts_with("Name:") {
            in_answer = true;
        } else if in_answer {
            if let Some(a) = line.strip_prefix("Address:") {
                let a = a.trim();
                if a.parse::<Ipv4Addr>().is_ok() {
                    addrs.push(a.to_string());
                }
            }
        }
    }
    addrs.sort();
    // busybox prints "can't find" for the AAAA half of a name that only has A records, so
    // success means: some IPv4 answer came back.
    (!addrs.is_empty(), addrs)
}

/// `dig +short` (a PTR or a name) from inside the namespace.
fn dig_short(ns: &Ns, args: &[&str]) -> String {
    let o = Command::new("timeout")
        .args(["5", "nsenter"])
        .arg(format!("--net={}", ns.path.display()))
        .args(["dig", "+short", "+tries=1", "+time=2"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// The rcode dig reports ("NOERROR", "NXDOMAIN", …); "" when no answer came.
fn dig_status(ns: &Ns, server: Ipv4Addr, name: &str) -> String {
    let o = Command::new("timeout")
        .args(["5", "nsenter"])
        .arg(format!("--net={}", ns.path.display()))
        .args(["dig", "+tries=1", "+time=2", &format!("@{server}"), name])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    out.split("status: ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap_or_default()
        .to_string()
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// dnsmasq on 127.0.0.1:port answering example.test with 10.9.9.9 and nothing else upstream.
fn local_upstream(dir: &std::path::Path) -> (Proc, SocketAddr) {
    for _ in 0..5 {
        let port = free_udp_port();
        let child = Command::new("dnsmasq")
            .args([
                "--no-daemon",
                "--user=root",
                "--group=root",
                "--keep-in-foreground",
                &format!("--port={port}"),
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
                "--address=/example.test/10.9.9.9",
                &format!("--pid-file={}", dir.join("dnsmasq.pid").display()),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq");
        let mut p = Proc(child);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = p.0.try_wait() {
                break; // lost the port race; try another
            }
            let q = Command::new("dig")
                .args([
                    "+short",
                    "+tries=1",
                    "+time=1",
                    "-p",
                    &port.to_string(),
                    "@127.0.0.1",
                    "a.example.test",
                ])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&q.stdout).contains("10.9.9.9") {
                return (p, addr);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = p.0.kill();
    }
    panic!("dnsmasq did not start");
}

#[test]
fn names_resolve_per_network_and_forward_to_the_local_upstream() {
    require_root();
    let d = tempfile::tempdir().unwrap();
    let ipam = Arc::new(ipam::Ipam::open(&d.path().join("ipam")).unwrap());
    let front = Net::new(&ipam, false);
    let back = Net::new(&ipam, true);
    let replicas: Vec<Ns> = (0..3).map(|_| Ns::new(d.path(), &[&front])).collect();
    let db = Ns::new(d.path(), &[&back]);
    let client = Ns::new(d.path(), &[&front]);
    let inner = Ns::new(d.path(), &[&back]);
    let (_dnsmasq, upstream) = local_upstream(d.path());

    let build = |n: usize| {
        let mut r = Records::default();
        r.add_network(&front.key, front.gateway, false);
        r.add_network(&back.key, back.gateway, true);
        for (i, c) in replicas.iter().take(n).enumerate() {
            r.add(
                &front.key,
                &[
                    "web".into(),
                    format!("proj-web-{}", i + 1),
                    "frontdoor".into(),
                ],
                c.ip(),
            );
        }
        r.add(&back.key, &["db".into(), "proj-db-1".into()], db.ip());
        r.set_subnet(&front.key, front.subnet);
        r.set_subnet(&back.key, back.subnet);
        // Never the host's resolvers: only the loopback dnsmasq.
        r.set_upstreams(vec![upstream]);
        r
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(async {
        let s = DnsServer::start();
        s.set_records(build(3));
        s.add_listener(&front.key, front.gateway).await.unwrap();
        s.add_listener(&back.key, back.gateway).await.unwrap();
        s
    });

    let mut all: Vec<String> = replicas.iter().map(|c| c.ip().to_string()).collect();
    all.sort();
    // Service name: every replica.
    assert_eq!(nslookup(&client, "web", front.gateway), (true, all.clone()));
    // Alias and container name.
    assert_eq!(
        nslookup(&client, "frontdoor", front.gateway),
        (true, all.clone())
    );
    assert_eq!(
        nslookup(&client, "proj-web-2", front.gateway),
        (true, vec![replicas[1].ip().to_string()])
    );
    // Scoped by network: db lives only on the back network.
    assert!(!nslookup(&client, "db", front.gateway).0);
    assert_eq!(dig_status(&client, front.gateway, "db"), "NXDOMAIN");
    assert_eq!(
        nslookup(&inner, "db", back.gateway),
        (true, vec![db.ip().to_string()])
    );
    assert_eq!(dig_status(&inner, back.gateway, "web"), "NXDOMAIN");
    // Asking another network's listener (routed to the host) is refused.
    assert_eq!(dig_status(&client, back.gateway, "db"), "REFUSED");
    // Reverse.
    let rev = dig_short(
        &client,
        &[
            &format!("@{}", front.gateway),
            "-x",
            &replicas[0].ip().to_string(),
        ],
    );
    assert_eq!(rev, "web.");
    // External names go to the loopback upstream; internal networks never forward.
    assert_eq!(
        nslookup(&client, "host.example.test", front.gateway),
        (true, vec!["10.9.9.9".to_string()])
    );
    assert_eq!(
        dig_status(&inner, back.gateway, "host.example.test"),
        "NXDOMAIN"
    );
    // Over TCP too.
    let tcp = dig_short(
        &client,
        &["+tcp", &format!("@{}", front.gateway), "proj-web-1"],
    );
    assert_eq!(tcp, replicas[0].ip().to_string());
    let tcp_fwd = dig_short(
        &client,
        &["+tcp", &format!("@{}", front.gateway), "x.example.test"],
    );
    assert_eq!(tcp_fwd, "10.9.9.9");

    // Port 53 published on the gateway's address does not take DNS away from berth's server.
    let project = uniq("dns53");
    let _fw = Fw(project.clone());
    berth_network::firewall::apply(&berth_network::firewall::ProjectFirewall {
        relay: false,
        outbound: vec![],
        project,
        networks: vec![front.rule()],
        ports: vec![berth_network::firewall::PortRule {
            host_ip: Some(front.gateway.into()),
            host_port: 53,
            protocol: berth_network::firewall::Proto::Udp,
            backends: vec![(replicas[0].ip(), 53)],
        }],
    })
    .unwrap();
    assert_eq!(nslookup(&client, "web", front.gateway), (true, all.clone()));

    // A removed replica disappears at once.
    server.set_records(build(2));
    let mut two: Vec<String> = replicas
        .iter()
        .take(2)
        .map(|c| c.ip().to_string())
        .collect();
    two.sort();
    assert_eq!(nslookup(&client, "web", front.gateway), (true, two));
    assert_eq!(dig_status(&client, front.gateway, "proj-web-3"), "NXDOMAIN");

    // Answers come shuffled (3 replicas: the first address is not always the same).
    server.set_records(build(3));
    let mut firsts = std::collections::HashSet::new();
    for _ in 0..20 {
        let out = dig_short(&client, &[&format!("@{}", front.gateway), "web"]);
        firsts.insert(out.lines().next().unwrap_or_default().to_string());
        if firsts.len() > 1 {
            break;
        }
    }
    assert!(firsts.len() > 1, "answers never shuffled: {firsts:?}");

    server.remove_listener(&front.key);
    drop(server);
    drop(rt);
}
