//! Benchmarks (ignored by default; root):
//! `cargo test --release -p berth-network --features dns --test bench -- --ignored --nocapture`
//! dnsperf from inside a namespace (service name, forwarded name) and iperf3 between two
//! containers, through a published port, and over a bare veth pair.

#![cfg(feature = "dns")]

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use berth_network::dns::{DnsServer, Records};
use berth_network::firewall::{self, PortRule, ProjectFirewall, Proto};
use berth_network::{ipam, netns};
use common::*;

fn field(out: &str, key: &str) -> f64 {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn dnsperf(
    ns: &Ns,
    server: std::net::Ipv4Addr,
    query: &str,
    dir: &std::path::Path,
) -> (f64, f64, String) {
    dnsperf_args(ns, server, query, dir, &["-c", "4", "-q", "64"])
}

fn dnsperf_args(
    ns: &Ns,
    server: std::net::Ipv4Addr,
    query: &str,
    dir: &std::path::Path,
    extra: &[&str],
) -> (f64, f64, String) {
    let file = dir.join(format!("q-{}", query.replace(' ', "_")));
    std::fs::write(&file, format!("{query}\n")).unwrap();
    let o = Command::new("timeout")
        .args(["30", "nsenter"])
        .arg(format!("--net={}", ns.path.display()))
        .args([
            "dnsperf",
            "-s",
            &server.to_string(),
            "-d",
            file.to_str().unwrap(),
            "-l",
            "5",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    (
        field(&out, "Queries per second:"),
        field(&out, "Average Latency (s):"),
        out,
    )
}

/// user+system CPU of this process (the DNS server's threads; nothing else runs meanwhile).
fn self_cpu_seconds() -> f64 {
    cpu_seconds(libc::RUSAGE_SELF)
}

/// user+system CPU of `who` (RUSAGE_SELF, or RUSAGE_CHILDREN: the waited-for children, such
/// as dnsperf).
fn cpu_seconds(who: i32) -> f64 {
    // SAFETY: getrusage fills the struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut ru) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn iperf_client(prefix: &[&str], target: &str, port: u16) -> f64 {
    let mut cmd = Command::new("timeout");
    cmd.arg("20");
    cmd.args(prefix);
    cmd.args([
        "iperf3",
        "-c",
        target,
        "-p",
        &port.to_string(),
        "-t",
        "3",
        "-J",
    ]);
    let o = cmd.stdin(Stdio::null()).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9
}

fn iperf_server(ns: &std::path::Path, port: u16) -> Proc {
    let p = Proc(
        Command::new("nsenter")
            .arg(format!("--net={}", ns.display()))
            .args(["iperf3", "-s", "-1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(300));
    p
}

#[test]
#[ignore]
fn bench_dns_and_throughput() {
    require_root();
    let d = tempfile::tempdir().unwrap();
    let ipam = Arc::new(ipam::Ipam::open(&d.path().join("ipam")).unwrap());
    let t0 = std::time::Instant::now();
    let net = Net::new(&ipam, false);
    let t_net = t0.elapsed();
    let t0 = std::time::Instant::now();
    let many: Vec<Ns> = (0..20).map(|_| Ns::new(d.path(), &[&net])).collect();
    let t_eps = t0.elapsed();
    let t0 = std::time::Instant::now();
    drop(many);
    let t_rm = t0.elapsed();
    println!(
        "setup: network (IPAM + switch namespace + bridge) {:.1} ms; netns + IPAM + endpoint {:.2} ms each; teardown {:.2} ms each",
        t_net.as_secs_f64() * 1e3,
        t_eps.as_secs_f64() * 1e3 / 20.0,
        t_rm.as_secs_f64() * 1e3 / 20.0
    );
    let a = Ns::new(d.path(), &[&net]);
    let b = Ns::new(d.path(), &[&net]);

    // dnsmasq upstream on loopback.
    let up_port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _dnsmasq = Proc(
        Command::new("dnsmasq")
            .args([
                "--no-daemon",
                "--user=root",
                "--group=root",
                &format!("--port={up_port}"),
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
                "--address=/example.test/10.9.9.9",
                &format!("--pid-file={}", d.path().join("dm.pid").display()),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(300));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _server = rt.block_on(async {
        let s = DnsServer::start();
        let mut r = Records::default();
        r.add_network(&net.key, net.gateway, false);
        r.add(&net.key, &["web".into()], b.ip());
        r.set_upstreams(vec![format!("127.0.0.1:{up_port}").parse().unwrap()]);
        s.set_records(r);
        s.add_listener(&net.key, net.gateway).await.unwrap();
        s
    });
    let (q1, l1, out1) = dnsperf(&a, net.gateway, "web A", d.path());
    let (q2, l2, out2) = dnsperf(&a, net.gateway, "host.example.test A", d.path());
    println!(
        "dnsperf service name: {q1:.0} q/s, avg latency {:.3} ms",
        l1 * 1e3
    );
    println!("dnsperf forwarded name (upstream TTL 0, so every query goes upstream): {q2:.0} q/s, avg latency {:.3} ms", l2 * 1e3);
    assert!(q1 > 0.0, "{out1}");
    assert!(q2 > 0.0, "{out2}");
    // The way ../shared/peers/bench-dns.sh asks: dnsperf's defaults (one client thread, up to
    // 100 queries in flight), then 1000 queries/s with per-query latencies.
    let (cpu0, client0) = (self_cpu_seconds(), cpu_seconds(libc::RUSAGE_CHILDREN));
    let (q3, l3, out3) = dnsperf_args(&a, net.gateway, "web A", d.path(), &[]);
    let cpu = self_cpu_seconds() - cpu0;
    let client = cpu_seconds(libc::RUSAGE_CHILDREN) - client0;
    assert!(q3 > 0.0, "{out3}");
    let done = field(&out3, "Queries completed:");
    println!(
        "dnsperf service name, dnsperf defaults: {q3:.0} q/s, avg latency {:.3} ms; server CPU {:.2} us/query; dnsperf CPU {:.2} us/query ({:.2} cores over its 5 s)",
        l3 * 1e3,
        cpu * 1e6 / done.max(1.0),
        client * 1e6 / done.max(1.0),
        client / 5.0
    );
    let (_, _, out4) = dnsperf_args(&a, net.gateway, "web A", d.path(), &["-Q", "1000", "-v"]);
    let mut lat: Vec<f64> = out4
        .lines()
        .filter(|l| l.starts_with("> "))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|s| s * 1e3)
        .collect();
    lat.sort_by(f64::total_cmp);
    assert!(lat.len() > 1000, "{out4}");
    println!(
        "dnsperf service name at 1000 q/s: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} answers)",
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100],
        lat[lat.len() - 1],
        lat.len()
    );

    // iperf3: container to container over the network.
    let bpath = b.path.to_str().unwrap().to_string();
    let apath = format!("--net={}", a.path.display());
    let _s = iperf_server(&b.path, 5201);
    let c2c = iperf_client(&["nsenter", &apath], &b.ip().to_string(), 5201);
    // Through a published port from the host.
    let port = firewall::pick_free_port("tcp", None).unwrap();
    let project = uniq("bench");
    let _fw = Fw(project.clone());
    firewall::apply(&ProjectFirewall {
        relay: false,
        outbound: vec![],
        project,
        networks: vec![net.rule()],
        ports: vec![PortRule {
            host_ip: None,
            host_port: port,
            protocol: Proto::Tcp,
            backends: vec![(b.ip(), 5202)],
        }],
    })
    .unwrap();
    let _s2 = iperf_server(std::path::Path::new(&bpath), 5202);
    let published = iperf_client(&[], "127.0.0.1", port);
    // Bare veth pair between two fresh namespaces.
    let x = d.path().join(uniq("vx"));
    let y = d.path().join(uniq("vy"));
    netns::create(&x).unwrap();
    netns::create(&y).unwrap();
    struct N(Vec<std::path::PathBuf>);
    impl Drop for N {
        fn drop(&mut self) {
            for p in &self.0 {
                let _ = netns::remove(p);
            }
        }
    }
    let _n = N(vec![x.clone(), y.clone()]);
    let xs = format!("--net={}", x.display());
    let ys = format!("--net={}", y.display());
    let sh = |ns: &str, cmd: &str| {
        assert!(
            Command::new("nsenter")
                .args([ns, "sh", "-c", cmd])
                .status()
                .unwrap()
                .success(),
            "{cmd}"
        );
    };
    sh(
        &xs,
        &format!(
            "ip link add v0 type veth peer name v1 netns {}",
            y.display()
        ),
    );
    sh(
        &xs,
        "ip addr add 192.168.250.1/30 dev v0 && ip link set v0 up",
    );
    sh(
        &ys,
        "ip addr add 192.168.250.2/30 dev v1 && ip link set v1 up",
    );
    let _s3 = iperf_server(&y, 5203);
    let bare = iperf_client(&["nsenter", &xs], "192.168.250.2", 5203);
    println!("iperf3 container->container: {c2c:.2} Gbit/s; host->published port: {published:.2} Gbit/s; bare veth pair: {bare:.2} Gbit/s");
    assert!(c2c > 0.0 && published > 0.0 && bare > 0.0);
}

/// IPAM per address at 500 addresses: 500 `allocate_address` into one /20, then 500
/// `release_address`, with the per-call time of the first and the last 50 (flat when a call
/// does not grow with the number of addresses held). No root needed.
#[test]
#[ignore]
fn ipam_500_addresses() {
    let d = tempfile::tempdir().unwrap();
    let ipam =
        ipam::Ipam::open_with_global(&d.path().join("st"), &d.path().join("global.lock")).unwrap();
    let req = ipam::IpamRequest {
        subnet: Some("10.77.0.0/20".parse().unwrap()),
        ..Default::default()
    };
    ipam.allocate_network("b_default", Some(req)).unwrap();
    let owner = |i: usize| format!("b-s{i:03}-1");
    let mut each = Vec::with_capacity(500);
    let t = std::time::Instant::now();
    for i in 0..500 {
        let t1 = std::time::Instant::now();
        ipam.allocate_address("b_default", &owner(i), None).unwrap();
        each.push(t1.elapsed());
    }
    let alloc = t.elapsed();
    let t = std::time::Instant::now();
    for i in 0..500 {
        ipam.release_address("b_default", &owner(i)).unwrap();
    }
    let release = t.elapsed();
    let avg = |s: &[std::time::Duration]| s.iter().sum::<std::time::Duration>() / s.len() as u32;
    println!(
        "ipam: 500 allocations {alloc:?} (first 50: {:?} each, last 50: {:?} each), 500 releases {release:?}",
        avg(&each[..50]),
        avg(&each[450..])
    );
}
