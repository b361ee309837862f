//! End-to-end (root): berth under a foreign forward-drop policy, the way Docker leaves a host
//! (iptables FORWARD policy DROP). The test makes its own nftables table with a base chain at the
//! forward hook, priority 0, policy drop: in netfilter terms the same thing, since a drop in any
//! base chain of a hook is final. It is global host state, so it is removed by a guard even when
//! the test fails; other tests running meanwhile are meant to pass under it too.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn nft(script: &str) -> bool {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("running nft");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    child.wait().unwrap().success()
}

/// The tests of this file change the host's forward policy: one at a time, so that each one
/// sees the policy it set (and the one that starts without a drop really starts without it).
static HOST_POLICY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn host_policy() -> std::sync::MutexGuard<'static, ()> {
    HOST_POLICY.lock().unwrap_or_else(|e| e.into_inner())
}

/// `table ip berthtest_drop_<pid>`: forward hook, priority 0, policy drop. Deleted on drop.
struct ForwardDrop(String);

impl ForwardDrop {
    fn new() -> ForwardDrop {
        // A run killed before its guard ran leaves its table behind: remove those of dead pids.
        let list = Command::new("nft")
            .args(["list", "tables"])
            .output()
            .unwrap();
        for line in String::from_utf8_lossy(&list.stdout).lines() {
            let Some(pid) = line.trim().strip_prefix("table ip berthtest_drop_") else {
                continue;
            };
            if pid.parse::<u32>().is_ok() && !std::path::Path::new("/proc").join(pid).exists() {
                nft(&format!("delete table ip berthtest_drop_{pid}\n"));
            }
        }
        let name = format!("berthtest_drop_{}", std::process::id());
        let guard = ForwardDrop(name.clone());
        assert!(nft(&format!(
            "add table ip {name}\nadd chain ip {name} filter {{ type filter hook forward priority 0; policy drop; }}\n"
        )));
        guard
    }
}

impl Drop for ForwardDrop {
    fn drop(&mut self) {
        let ok = nft(&format!("delete table ip {}\n", self.0));
        if !std::thread::panicking() {
            assert!(ok, "could not delete table ip {}", self.0);
        }
    }
}

/// The host's first global IPv4 address outside berth's links.
fn host_address() -> Ipv4Addr {
    let o = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .unwrap();
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.len() > 3 && !w[1].starts_with("berth") && w[2] == "inet" {
            return w[3].split('/').next().unwrap().parse().unwrap();
        }
    }
    panic!("no global IPv4 address on the host");
}

/// GET http://addr:port/ from the host; the body of a 200.
fn host_get(addr: Ipv4Addr, port: u16) -> Option<String> {
    let to = SocketAddr::from((addr, port));
    let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut r = String::new();
    s.read_to_string(&mut r).ok()?;
    (r.starts_with("HTTP/1.") && r.lines().next().is_some_and(|l| l.contains(" 200")))
        .then(|| r.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

/// One datagram to `to` (from the calling thread's namespace); the reply.
fn udp_roundtrip(to: SocketAddr, msg: &[u8]) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    for _ in 0..4 {
        s.send_to(msg, to).ok()?;
        let mut buf = [0u8; 1500];
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            return Some(buf[..n].to_vec());
        }
    }
    None
}

/// Run `f` on a thread inside the network namespace at `ns` (a container's).
fn in_netns<T: Send + 'static>(ns: &PathBuf, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(ns).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// A UDP echo server on `port` in the namespace at `ns` until the returned flag is set.
fn udp_echo(
    ns: &PathBuf,
    port: u16,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<()>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let file = std::fs::File::open(ns).unwrap();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let sock = UdpSocket::bind(("0.0.0.0", port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        tx.send(()).unwrap();
        let mut buf = [0u8; 1500];
        // Bounded: a minute at most, whatever happens to the test.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !s2.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let mut reply = b"echo:".to_vec();
                reply.extend_from_slice(&buf[..n]);
                let _ = sock.send_to(&reply, from);
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    (stop, h)
}

/// A "remote host": a namespace joined to the host by a veth pair on 198.18.N.0/30 (RFC 2544's
/// benchmarking range), the host end .1, the remote .2 with its default route through the host.
/// Deleted on drop.
struct Remote {
    ns: String,
    host_if: String,
    host: Ipv4Addr,
    addr: Ipv4Addr,
}

impl Remote {
    fn new() -> Remote {
        let id = std::process::id();
        let n = (id % 250) as u8;
        let r = Remote {
            ns: format!("berthtest-remote-{id}"),
            host_if: format!("btr{}", id % 100_000_000),
            host: Ipv4Addr::new(198, 18, n, 1),
            addr: Ipv4Addr::new(198, 18, n, 2),
        };
        let ip = |args: &[&str]| {
            let o = Command::new("ip").args(args).output().unwrap();
            assert!(
                o.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        };
        let _ = Command::new("ip").args(["netns", "del", &r.ns]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &r.host_if])
            .output();
        ip(&["netns", "add", &r.ns]);
        ip(&[
            "link", "add", &r.host_if, "type", "veth", "peer", "name", "eth0", "netns", &r.ns,
        ]);
        ip(&["addr", "add", &format!("{}/30", r.host), "dev", &r.host_if]);
        ip(&["link", "set", &r.host_if, "up"]);
        let a = format!("{}/30", r.addr);
        let h = r.host.to_string();
        for args in [
            vec!["addr", "add", &a, "dev", "eth0"],
            vec!["link", "set", "eth0", "up"],
            vec!["link", "set", "lo", "up"],
            vec!["route", "add", "default", "via", &h],
        ] {
            let mut full = vec!["-n", r.ns.as_str()];
            full.extend(args);
            ip(&full);
        }
        r
    }

    fn netns(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.ns)
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

#[test]
fn published_ports_and_hairpin_work_under_a_forward_drop_policy() {
    let _one = host_policy();
    let b = Berth::new();
    let _drop = ForwardDrop::new();
    let p = unique("fwdrop");
    let f = b.compose(
        &p,
        &stack("published_ports_and_hairpin_work_under_a_forward_drop_policy"),
    );
    b.ok(&f, &["up", "-d"]);
    let tcp = b.port(&f, "web", 80, 1);
    let out = b.ok(&f, &["port", "--protocol", "udp", "web", "7000"]);
    let udp: u16 = out.trim().rsplit(':').next().unwrap().parse().unwrap();
    let host = host_address();
    let st = b.state(&p).unwrap();
    let netns = |service: &str| -> PathBuf {
        let c = st["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["service"] == service)
            .unwrap();
        PathBuf::from(c["netns"].as_str().unwrap())
    };
    let (web_ns, client_ns) = (netns("web"), netns("client"));
    let (stop, echo) = udp_echo(&web_ns, 7000);

    // `wget URL` in a service's container (3 s at most); the body when it succeeded.
    let wget = |svc: &str, url: &str| {
        let o = b
            .cmd()
            .arg("-f")
            .arg(&f)
            .args(["exec", "-T", svc, "timeout", "3", "wget", "-q", "-O-", url])
            .output()
            .unwrap();
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).to_string())
    };

    // Container to container, by service name (bridged inside the network's switch).
    let body = wait_for(
        "client to reach web by name",
        Duration::from_secs(10),
        || wget("client", "http://web/"),
    );
    assert!(body.contains("hello from berth"), "{body}");

    // The host to the published ports, on 127.0.0.1 and on its own address.
    for addr in [Ipv4Addr::LOCALHOST, host] {
        let body = host_get(addr, tcp);
        assert!(
            body.as_deref()
                .is_some_and(|b| b.contains("hello from berth")),
            "tcp {addr}:{tcp} from the host: {body:?}"
        );
        let r = udp_roundtrip(SocketAddr::new(IpAddr::V4(addr), udp), b"host");
        assert_eq!(r.as_deref(), Some(&b"echo:host"[..]), "udp {addr}:{udp}");
    }

    // Hairpin: a container to the host's address and a published port of its network, from a
    // sibling and from the backend itself.
    for svc in ["client", "web"] {
        let url = format!("http://{host}:{tcp}/");
        let got = wget(svc, &url);
        assert!(
            got.as_deref()
                .is_some_and(|b| b.contains("hello from berth")),
            "tcp hairpin from {svc} to {url}: {got:?}"
        );
    }
    for (svc, ns) in [("client", &client_ns), ("web", &web_ns)] {
        let to = SocketAddr::new(IpAddr::V4(host), udp);
        let r = in_netns(ns, move || udp_roundtrip(to, b"hairpin"));
        assert_eq!(
            r.as_deref(),
            Some(&b"echo:hairpin"[..]),
            "udp hairpin from {svc} to {to}"
        );
    }

    // Clients the host would have to route: a published port of another network reached from
    // a container through the host's address, and a client on another host. The kernel's DNAT
    // would send both into the dropping FORWARD hook; berth's relay accepts them on the host
    // and connects again from there (see berth_network::relay).
    let other = b.port(&f, "other", 80, 1);
    assert!(
        host_get(host, other).is_some_and(|b| b.contains("hello from berth")),
        "the other network's port from the host"
    );
    let url = format!("http://{host}:{other}/");
    let got = wait_for(
        "the relay to serve another network's port",
        Duration::from_secs(15),
        || wget("client", &url),
    );
    assert!(got.contains("hello from berth"), "{url} from client: {got}");
    let remote = Remote::new();
    for port in [tcp, other] {
        let to = remote.host;
        let got = in_netns(&remote.netns(), move || host_get(to, port));
        assert!(
            got.as_deref()
                .is_some_and(|b| b.contains("hello from berth")),
            "tcp {to}:{port} from a remote host: {got:?}"
        );
    }
    let to = SocketAddr::new(IpAddr::V4(remote.host), udp);
    let r = in_netns(&remote.netns(), move || udp_roundtrip(to, b"remote"));
    assert_eq!(
        r.as_deref(),
        Some(&b"echo:remote"[..]),
        "udp {to} from a remote host"
    );

    // Outbound TCP from a container is relayed too: the remote host sees the host's address.
    let addr = remote.addr;
    let listener = in_netns(&remote.netns(), move || {
        std::net::TcpListener::bind((addr, 8099)).unwrap()
    });
    listener.set_nonblocking(true).unwrap();
    let to = SocketAddr::from((remote.addr, 8099));
    let sent = in_netns(&client_ns, move || {
        let mut c = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(3)).ok()?;
        c.write_all(b"from a container").ok()?;
        Some(c.local_addr().ok()?.ip())
    });
    let client_ip = sent.expect("outbound TCP from a container under the drop policy");
    let (mut conn, peer) = wait_for("the remote host to accept", Duration::from_secs(5), || {
        listener.accept().ok()
    });
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut got = vec![0u8; 16];
    conn.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"from a container");
    assert_eq!(peer.ip(), IpAddr::V4(remote.host), "seen from {peer}");
    assert_ne!(peer.ip(), client_ip);

    // The policy really is in force: what the host does route is dropped. UDP from a container
    // to the remote host is such traffic (routed and masqueraded by the host, not relayed).
    let (stop_r, echo_r) = udp_echo(&remote.netns(), 8098);
    let to = SocketAddr::from((remote.addr, 8098));
    assert_eq!(
        udp_roundtrip(to, b"host").as_deref(),
        Some(&b"echo:host"[..]),
        "the remote echo from the host"
    );
    let routed = in_netns(&client_ns, move || udp_roundtrip(to, b"routed"));
    assert_eq!(
        routed, None,
        "the forward drop policy is not in force: {to} answered a container"
    );
    stop_r.store(true, std::sync::atomic::Ordering::SeqCst);
    echo_r.join().unwrap();

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    echo.join().unwrap();
    // The switches (and the hairpin rules inside them) go with the project.
    let switches: Vec<PathBuf> = st["networks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| PathBuf::from("/run/berth-switch").join(n["bridge"].as_str().unwrap()))
        .collect();
    assert_eq!(switches.len(), 2, "{st}");
    assert!(switches.iter().all(|s| s.exists()), "{switches:?}");
    b.ok(&f, &["down", "-t", "1"]);
    for s in &switches {
        assert!(!s.exists(), "{} left behind", s.display());
    }
}

/// Whether something listens on TCP `port` in the host's namespace (the relay does; with
/// DNAT, nothing on the host does).
fn host_listens(port: u16) -> bool {
    let hex = format!(":{port:04X} ");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .any(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.len() > 3 && format!("{} ", w[1]).ends_with(&hex) && w[3] == "0A"
            })
    })
}

/// The host's other nftables tables, their chains and rules, without their counters (which
/// move): what berth must leave alone.
fn foreign_ruleset() -> Vec<String> {
    let tables = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    let mut out = vec![];
    for t in String::from_utf8_lossy(&tables.stdout).lines() {
        let w: Vec<&str> = t.split_whitespace().collect();
        if w.len() != 3 || (w[1] == "inet" && w[2] == "berth") {
            continue;
        }
        let l = Command::new("nft")
            .args(["list", "table", w[1], w[2]])
            .output()
            .unwrap();
        for line in String::from_utf8_lossy(&l.stdout).lines() {
            let kept: Vec<&str> = line
                .split_whitespace()
                .filter(|x| !x.chars().all(|c| c.is_ascii_digit()))
                .collect();
            out.push(format!("{} {}", t, kept.join(" ")));
        }
    }
    out
}

#[test]
fn a_forward_drop_set_after_up_is_seen_at_once_and_ports_keep_working() {
    let _one = host_policy();
    let b = Berth::new();
    let p = unique("fwlate");
    let f = b.compose(
        &p,
        "services:\n  web:\n    image: berth-test/busybox:1\n    init: true\n    command: [\"httpd\", \"-f\", \"-p\", \"80\", \"-h\", \"/www\"]\n    ports: [\"80\"]\n",
    );
    b.ok(&f, &["up", "-d"]);
    let port = b.port(&f, "web", 80, 1);
    let remote = Remote::new();
    let to = remote.host;
    let get = move |ns: &PathBuf| in_netns(ns, move || host_get_within(to, port, 300));
    // No drop yet: the remote client is DNATed by the kernel, nothing listens on the host.
    let body = wait_for(
        "the remote client to reach web",
        Duration::from_secs(10),
        || get(&remote.netns()),
    );
    assert!(body.contains("hello from berth"), "{body}");
    assert!(!host_listens(port), "relay mode without any drop policy");
    let before = foreign_ruleset();

    // Docker (or an admin) drops routed traffic now: the supervisor hears of it from the
    // kernel's nftables notifications and moves the port to its relay. Its old 10 s poll
    // would not do in 1 s; the fallback poll, 60 s, not at all.
    let drop = ForwardDrop::new();
    let t0 = std::time::Instant::now();
    while !host_listens(port) && t0.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(2));
    }
    eprintln!(
        "relay listening {:?} after the drop policy appeared",
        t0.elapsed()
    );
    let mut served = None;
    while t0.elapsed() < Duration::from_secs(1) {
        if let Some(b) = get(&remote.netns()) {
            served = Some((b, t0.elapsed()));
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (body, after) = served.unwrap_or_else(|| {
        panic!(
            "the published port did not work again within 1 s of the forward drop (relay \
             listening: {})",
            host_listens(port)
        )
    });
    assert!(body.contains("hello from berth"), "{body}");
    assert!(host_listens(port), "served without the relay? ({after:?})");
    eprintln!("served through the relay {after:?} after the drop policy appeared");
    // The drop is really in force for what the host routes, and berth touched nothing of the
    // other tables: the test's own drop chain, Docker's or anyone's, as they were.
    let mut with_drop = before.clone();
    with_drop.extend(
        foreign_ruleset()
            .into_iter()
            .filter(|l| l.contains(&drop.0)),
    );
    with_drop.sort();
    let mut now = foreign_ruleset();
    now.sort();
    assert_eq!(now, with_drop, "berth changed another table");
    assert!(
        now.iter()
            .any(|l| l.contains("hook forward") && l.contains("policy drop")),
        "{now:#?}"
    );

    // The drop goes: back to the kernel's DNAT just as fast (the relay stops listening).
    std::mem::drop(drop);
    wait_for(
        "the relay to stop once the drop is gone",
        Duration::from_secs(2),
        || (!host_listens(port)).then_some(()),
    );
    let body = wait_for("the remote client again", Duration::from_secs(2), || {
        get(&remote.netns())
    });
    assert!(body.contains("hello from berth"), "{body}");
    b.ok(&f, &["down", "-t", "1"]);
}

/// GET http://addr:port/ from the calling thread's namespace, connecting within `ms`.
fn host_get_within(addr: Ipv4Addr, port: u16, ms: u64) -> Option<String> {
    let to = SocketAddr::from((addr, port));
    let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_millis(ms)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut r = String::new();
    s.read_to_string(&mut r).ok()?;
    r.lines()
        .next()
        .is_some_and(|l| l.contains(" 200"))
        .then(|| r.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

/// `table ip berthtest_input_<pid>`: an input-hook chain with policy drop, as ufw leaves a
/// host (`INPUT` policy DROP), that lets in everything but what comes in through `links` (the
/// test's own project's bridge and remote host), so that other tests and the machine itself
/// are not touched by it. Deleted on drop, also when the test fails.
struct InputDrop(String);

impl InputDrop {
    fn new(links: &[&str]) -> InputDrop {
        let list = Command::new("nft")
            .args(["list", "tables"])
            .output()
            .unwrap();
        for line in String::from_utf8_lossy(&list.stdout).lines() {
            let Some(pid) = line.trim().strip_prefix("table ip berthtest_input_") else {
                continue;
            };
            if pid.parse::<u32>().is_ok() && !std::path::Path::new("/proc").join(pid).exists() {
                nft(&format!("delete table ip berthtest_input_{pid}\n"));
            }
        }
        let name = format!("berthtest_input_{}", std::process::id());
        let guard = InputDrop(name.clone());
        let set: Vec<String> = links.iter().map(|l| format!("\"{l}\"")).collect();
        assert!(nft(&format!(
            "add table ip {name}\nadd chain ip {name} input {{ type filter hook input priority 0; policy drop; }}\nadd rule ip {name} input iifname != {{ {} }} accept\n",
            set.join(", ")
        )));
        guard
    }

    /// The chain's rules as nft lists them.
    fn listing(&self) -> String {
        let o = Command::new("nft")
            .args(["list", "table", "ip", &self.0])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for InputDrop {
    fn drop(&mut self) {
        let ok = nft(&format!("delete table ip {}\n", self.0));
        if !std::thread::panicking() {
            assert!(ok, "could not delete table ip {}", self.0);
        }
    }
}

#[test]
fn dns_and_relayed_ports_work_under_an_input_drop_policy() {
    let _one = host_policy();
    let b = Berth::new();
    let p = unique("indrop");
    let f = b.compose(
        &p,
        "services:\n  web:\n    image: berth-test/busybox:1\n    init: true\n    command: [\"httpd\", \"-f\", \"-p\", \"80\", \"-h\", \"/www\"]\n    ports: [\"80\"]\n  client:\n    image: berth-test/busybox:1\n    init: true\n    command: [\"sleep\", \"300\"]\n",
    );
    b.ok(&f, &["up", "-d"]);
    let port = b.port(&f, "web", 80, 1);
    let st = b.state(&p).unwrap();
    let bridge = st["networks"][0]["bridge"].as_str().unwrap().to_string();
    let remote = Remote::new();
    let wget = |url: &str| {
        let o = b
            .cmd()
            .arg("-f")
            .arg(&f)
            .args([
                "exec", "-T", "client", "timeout", "3", "wget", "-q", "-O-", url,
            ])
            .output()
            .unwrap();
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).to_string())
    };
    let body = wait_for(
        "client to reach web by name",
        Duration::from_secs(10),
        || wget("http://web/"),
    );
    assert!(body.contains("hello from berth"), "{body}");

    // ufw's defaults: input and forward dropped (forward: the ports move to the relay, which
    // serves them on the host, so through the input hook).
    let input = InputDrop::new(&[&bridge, &remote.host_if]);
    let _fwd = ForwardDrop::new();
    // This project's accepts only: other tests' projects (in this binary, or elsewhere on the
    // machine) put theirs in the same chain.
    let tag = format!(
        "comment \"berth {} ",
        berth_network::firewall::chain_prefix(&p)
    );
    let tag = tag.as_str();
    let listing = wait_for(
        "berth's accepts in the input chain",
        Duration::from_secs(5),
        || {
            let l = input.listing();
            (l.contains(tag) && l.contains(&format!("dport {port} accept"))).then_some(l)
        },
    );
    assert!(
        listing.contains(&format!("iifname \"{bridge}\"")) && listing.contains("dport 53"),
        "{listing}"
    );
    // DNS on the gateway through the input drop: the name still resolves.
    let body = wait_for("DNS under the input drop", Duration::from_secs(5), || {
        wget("http://web/")
    });
    assert!(body.contains("hello from berth"), "{body}");
    // The published port, relayed on the host, from the remote host.
    let to = remote.host;
    let body = wait_for(
        "the relayed port under the input drop",
        Duration::from_secs(5),
        || in_netns(&remote.netns(), move || host_get_within(to, port, 500)),
    );
    assert!(body.contains("hello from berth"), "{body}");
    // The drop is in force for the rest: a port the host serves that berth did not publish.
    let other = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let other_port = other.local_addr().unwrap().port();
    let reached = in_netns(&remote.netns(), move || {
        std::net::TcpStream::connect_timeout(
            &SocketAddr::from((to, other_port)),
            Duration::from_millis(500),
        )
        .is_ok()
    });
    assert!(!reached, "the input drop is not in force: {listing}");

    // The drop policy goes: berth's accepts go with it, the chain keeps its own rule.
    nft(&format!(
        "add chain ip {} input {{ type filter hook input priority 0; policy accept; }}\n",
        input.0
    ));
    wait_for(
        "berth's accepts to go with the policy",
        Duration::from_secs(5),
        || (!input.listing().contains(tag)).then_some(()),
    );
    nft(&format!(
        "add chain ip {} input {{ type filter hook input priority 0; policy drop; }}\n",
        input.0
    ));
    wait_for(
        "berth's accepts to come back",
        Duration::from_secs(5),
        || input.listing().contains(tag).then_some(()),
    );
    // down removes exactly berth's own.
    b.ok(&f, &["down", "-t", "1"]);
    let after = input.listing();
    assert!(!after.contains(tag), "{after}");
    assert!(after.contains("iifname != {"), "{after}");
}
