//! Helpers for the kernel-facing tests: real namespaces, bridges and nftables, each owned by a
//! guard that cleans up on drop (also when an assertion fails).

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_network::{bridge, endpoint, firewall, ipam, netns};
use ipnet::Ipv4Net;

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests need root (real namespaces, netlink, nftables)"
    );
}

static N: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call.
pub fn uniq(tag: &str) -> String {
    format!(
        "{tag}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

pub struct Net {
    pub key: String,
    pub bridge: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub internal: bool,
    pub ipam: Arc<ipam::Ipam>,
}

impl Net {
    pub fn new(ipam: &Arc<ipam::Ipam>, internal: bool) -> Net {
        let key = uniq("net");
        let alloc = ipam.allocate_network(&key, None).unwrap();
        let bridge = bridge::bridge_name(&key);
        let net = Net {
            key,
            bridge,
            subnet: alloc.subnet,
            gateway: alloc.gateway,
            internal,
            ipam: ipam.clone(),
        };
        bridge::ensure(&bridge::BridgeSpec {
            name: net.bridge.clone(),
            gateway: Ipv4Net::new(alloc.gateway, alloc.subnet.prefix_len()).unwrap(),
            mtu: None,
            internal,
        })
        .unwrap();
        net
    }

    pub fn rule(&self) -> firewall::NetRule {
        firewall::NetRule {
            bridge: self.bridge.clone(),
            subnet: self.subnet,
            internal: self.internal,
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = bridge::remove(&self.bridge);
        let _ = self.ipam.release_network(&self.key);
    }
}

/// A container-like namespace with one endpoint per network given.
pub struct Ns {
    pub path: PathBuf,
    pub owner: String,
    pub addrs: Vec<Ipv4Addr>,
    pub links: Vec<String>,
    pub nets: Vec<(Arc<ipam::Ipam>, String)>,
}

impl Ns {
    pub fn new(dir: &Path, nets: &[&Net]) -> Ns {
        let owner = uniq("ctr");
        let path = dir.join(&owner);
        netns::create(&path).unwrap();
        let mut ns = Ns {
            path,
            owner,
            addrs: vec![],
            links: vec![],
            nets: vec![],
        };
        for (i, net) in nets.iter().enumerate() {
            let ip = net
                .ipam
                .allocate_address(&net.key, &ns.owner, None)
                .unwrap();
            ns.nets.push((net.ipam.clone(), net.key.clone()));
            let host_ifname = endpoint::veth_name(&ns.owner, i);
            ns.links.push(host_ifname.clone());
            endpoint::attach(&endpoint::EndpointSpec {
                netns: ns.path.clone(),
                bridge: net.bridge.clone(),
                host_ifname,
                container_ifname: format!("eth{i}"),
                address: Ipv4Net::new(ip, net.subnet.prefix_len()).unwrap(),
                gateway: if i == 0 && !net.internal {
                    Some(net.gateway)
                } else {
                    None
                },
                mac: None,
                mtu: None,
            })
            .unwrap();
            ns.addrs.push(ip);
        }
        ns
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.addrs[0]
    }

    /// `busybox ARGS…` inside the namespace.
    pub fn busybox(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.path.display()))
            .arg("busybox")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running nsenter")
    }

    /// `busybox wget` inside the namespace, bounded by `timeout` (this busybox's own `-T`
    /// crashes): the body on success.
    pub fn wget(&self, url: &str, secs: u32) -> Option<String> {
        let o = Command::new("timeout")
            .arg(secs.to_string())
            .arg("nsenter")
            .arg(format!("--net={}", self.path.display()))
            .args(["busybox", "wget", "-q", "-O", "-", url])
            .stdin(Stdio::null())
            .output()
            .expect("running nsenter");
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    pub fn spawn_busybox(&self, args: &[&str]) -> Proc {
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.path.display()))
            .arg("busybox")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning nsenter");
        Proc(child)
    }

    /// `busybox httpd` serving `body` as index.html on port 80; waits until it answers.
    pub fn httpd(&self, dir: &Path, body: &str) -> Proc {
        let www = dir.join(format!("www-{}", self.owner));
        std::fs::create_dir_all(&www).unwrap();
        std::fs::write(www.join("index.html"), body).unwrap();
        let p = self.spawn_busybox(&["httpd", "-f", "-p", "80", "-h", www.to_str().unwrap()]);
        let url = "http://127.0.0.1:80/";
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.wget(url, 1).is_some() {
                return p;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("httpd in {} did not come up", self.path.display());
    }

    /// One datagram to `to` from inside the namespace (a thread in it); the reply.
    pub fn udp_roundtrip(&self, to: SocketAddr, msg: &[u8]) -> Option<Vec<u8>> {
        let ns = std::fs::File::open(&self.path).unwrap();
        let msg = msg.to_vec();
        std::thread::spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
            udp_roundtrip(to, &msg)
        })
        .join()
        .unwrap()
    }

    /// A UDP echo server on `port` inside the namespace (a thread in that namespace).
    pub fn udp_echo(&self, port: u16, tag: &'static str) -> Echo {
        let ns = std::fs::File::open(&self.path).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let h = std::thread::spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let sock = UdpSocket::bind(("0.0.0.0", port)).unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            tx.send(()).unwrap();
            let mut buf = [0u8; 1500];
            while !s2.load(Ordering::SeqCst) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let mut reply = tag.as_bytes().to_vec();
                    reply.extend_from_slice(&buf[..n]);
                    let _ = sock.send_to(&reply, from);
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        Echo {
            stop,
            handle: Some(h),
        }
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        for l in &self.links {
            let _ = endpoint::detach(l);
        }
        let _ = netns::remove(&self.path);
        for (ipam, key) in &self.nets {
            let _ = ipam.release_address(key, &self.owner);
        }
    }
}

pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Echo {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

pub struct Fw(pub String);

impl Drop for Fw {
    fn drop(&mut self) {
        let _ = firewall::remove(&self.0);
    }
}

/// Send one datagram to `to` from the host and return the reply.
pub fn udp_roundtrip(to: SocketAddr, msg: &[u8]) -> Option<Vec<u8>> {
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

/// `busybox wget` from the host.
pub fn host_wget(url: &str) -> Option<String> {
    let o = Command::new("timeout")
        .args(["3", "busybox", "wget", "-q", "-O", "-", url])
        .output()
        .ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The host's first global IPv4 address outside berth's links.
pub fn host_address() -> Ipv4Addr {
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

pub fn ip_link_names() -> String {
    String::from_utf8_lossy(
        &Command::new("ip")
            .args(["-o", "link"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned()
}

pub fn nft_ruleset() -> String {
    String::from_utf8_lossy(
        &Command::new("nft")
            .args(["list", "ruleset"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned()
}

/// `nft list ruleset` inside the namespace at `ns` (a switch's, say).
pub fn nft_ruleset_in(ns: &Path) -> String {
    let o = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(["nft", "list", "ruleset"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn mounts() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap()
}

/// A tiny HTTP server inside `ns_path` answering every request with the client's address as
/// the kernel saw it (checks NAT). Stops when dropped.
pub fn whoami_server(ns_path: &Path, port: u16) -> Echo {
    use std::io::{Read, Write};
    let ns = std::fs::File::open(ns_path).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let l = std::net::TcpListener::bind(("0.0.0.0", port)).unwrap();
        l.set_nonblocking(true).unwrap();
        tx.send(()).unwrap();
        while !s2.load(Ordering::SeqCst) {
            match l.accept() {
                Ok((mut c, peer)) => {
                    c.set_nonblocking(false).unwrap();
                    c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                    let mut buf = [0u8; 1024];
                    let _ = c.read(&mut buf);
                    let body = peer.ip().to_string();
                    let _ = write!(
                        c,
                        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    Echo {
        stop,
        handle: Some(h),
    }
}

/// Run `f` on a thread inside the network namespace at `path`; its result.
pub fn in_netns<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = std::fs::File::open(path).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// An empty network namespace of the test's own (no links), removed when dropped.
pub struct BareNs {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl BareNs {
    pub fn new() -> BareNs {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ns");
        netns::create(&path).unwrap();
        BareNs { path, _dir: dir }
    }

    /// `args` run inside the namespace (nsenter); whether it succeeded.
    pub fn run(&self, args: &[&str]) -> bool {
        Command::new("nsenter")
            .arg(format!("--net={}", self.path.display()))
            .args(args)
            .status()
            .unwrap()
            .success()
    }
}

impl Drop for BareNs {
    fn drop(&mut self) {
        let _ = netns::remove(&self.path);
    }
}
