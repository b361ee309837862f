//! The published-port relay: a userland TCP/UDP proxy in the host namespace, used when the host
//! routes nothing for berth (see `firewall::routed_traffic_blocked`).
//!
//! Why: a client on another machine (or a container of another network) reaches a published
//! port by a packet the host must *route* into the network's switch, and routed packets cross
//! the FORWARD hook, where Docker's `policy drop` ends them; netfilter has no way to overrule a
//! drop from another table, and berth does not edit Docker's chains. A connection the host
//! accepts itself (INPUT) and opens again towards the container (OUTPUT) is never routed, so
//! the relay takes those clients instead: the DNAT of the nat prerouting hook is left out then,
//! and the relay listens on the published address. Connections from the host itself keep the
//! kernel's DNAT (nat output), which is faster and keeps them off the relay.
//!
//! The cost, as with Docker's own userland proxy: the container sees the host's address
//! (the uplink gateway) as the client's, not the real client's.
//!
//! Outbound TCP goes the same way for the same reason: a container's connection to the outside
//! world is routed by the host. In relay mode the nat prerouting hook redirects each network's
//! outbound TCP (destinations the host routes out of a non-berth interface) to a listener of
//! this relay on the network's gateway address; the relay reads the original destination from
//! conntrack (`SO_ORIGINAL_DST`, as transparent proxies on REDIRECT do) and connects there from
//! the host. UDP and ICMP to the outside are not relayed and stay under the host's policy.
//!
//! TCP: one task per connection, `copy_bidirectional`, a backend picked round-robin over the
//! port's current backends, connect bounded by `CONNECT_TIMEOUT`. UDP: one connected socket per
//! client address towards the backend, dropped after `UDP_IDLE` without traffic, at most
//! `UDP_MAX_FLOWS` at once (the oldest goes). Backends change in place (`Relay::update`), so a
//! rolling update moves new connections at once and leaves open ones alone.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

use crate::firewall::{PortRule, Proto};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const UDP_IDLE: Duration = Duration::from_secs(60);
pub const UDP_MAX_FLOWS: usize = 4096;

/// Where a published port listens: protocol, host address (None: all of them) and port.
pub type PortKey = (Proto, Option<Ipv4Addr>, u16);

struct Backends {
    list: Mutex<Vec<SocketAddrV4>>,
    next: AtomicUsize,
}

impl Backends {
    fn pick(&self) -> Option<SocketAddrV4> {
        let l = self.list.lock().unwrap();
        if l.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % l.len();
        Some(l[i])
    }
}

struct Port {
    backends: Arc<Backends>,
    task: JoinHandle<()>,
}

impl Drop for Port {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The outbound listener of one network.
struct Outbound {
    gateway: Ipv4Addr,
    port: u16,
    task: JoinHandle<()>,
}

impl Drop for Outbound {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The relay's listeners, one per published port and one per network for outbound TCP.
/// Dropping it closes them all (open TCP connections and UDP flows are tasks of their own and
/// end with their peers or idle time).
#[derive(Default)]
pub struct Relay {
    ports: HashMap<PortKey, Port>,
    outbound: HashMap<String, Outbound>,
}

fn key_of(p: &PortRule) -> Option<PortKey> {
    let host = match p.host_ip {
        None => None,
        Some(std::net::IpAddr::V4(a)) if a.is_unspecified() => None,
        Some(std::net::IpAddr::V4(a)) => Some(a),
        // IPv6 host addresses are not published (see `firewall::script`).
        Some(std::net::IpAddr::V6(a)) if a.is_unspecified() => None,
        Some(std::net::IpAddr::V6(_)) => return None,
    };
    Some((p.protocol, host, p.host_port))
}

impl Relay {
    pub fn new() -> Relay {
        Relay::default()
    }

    /// The ports listened on now.
    pub fn ports(&self) -> Vec<PortKey> {
        let mut v: Vec<PortKey> = self.ports.keys().copied().collect();
        v.sort();
        v
    }

    /// Listen on exactly the ports of `rules` with their backends: new ports are bound, gone
    /// ones closed, the others get their new backends in place. Must run inside a tokio
    /// runtime. Binding errors are returned after every other port was handled (the port stays
    /// unserved by the relay; its kernel rules are unaffected).
    pub fn update(&mut self, rules: &[PortRule]) -> std::io::Result<()> {
        let mut want: HashMap<PortKey, Vec<SocketAddrV4>> = HashMap::new();
        for r in rules {
            if let Some(k) = key_of(r) {
                let e = want.entry(k).or_default();
                e.extend(r.backends.iter().map(|(a, p)| SocketAddrV4::new(*a, *p)));
            }
        }
        self.ports.retain(|k, _| want.contains_key(k));
        let mut first_err = None;
        for (k, list) in want {
            if let Some(p) = self.ports.get(&k) {
                *p.backends.list.lock().unwrap() = list;
                continue;
            }
            let backends = Arc::new(Backends {
                list: Mutex::new(list),
                next: AtomicUsize::new(0),
            });
            match listen(k, backends.clone()) {
                Ok(task) => {
                    self.ports.insert(k, Port { backends, task });
                }
                Err(e) => {
                    tracing::warn!("relay {} {:?}:{}: {e}", k.0, k.1, k.2);
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Listen for the redirected outbound TCP of exactly the networks `nets` (host link name,
    /// gateway address): one listener per network on its gateway, an ephemeral port kept for as
    /// long as the network is listed. Returns (link, port) for each network listened for,
    /// sorted, for `firewall::ProjectFirewall::outbound`. Must run inside a tokio runtime.
    pub fn update_outbound(&mut self, nets: &[(String, Ipv4Addr)]) -> Vec<(String, u16)> {
        self.outbound
            .retain(|link, o| nets.iter().any(|(l, g)| l == link && *g == o.gateway));
        for (link, gateway) in nets {
            if self.outbound.contains_key(link) {
                continue;
            }
            match listen_outbound(*gateway) {
                Ok((port, task)) => {
                    self.outbound.insert(
                        link.clone(),
                        Outbound {
                            gateway: *gateway,
                            port,
                            task,
                        },
                    );
                }
                Err(e) => tracing::warn!("relay: outbound listener on {gateway}: {e}"),
            }
        }
        let mut v: Vec<(String, u16)> = self
            .outbound
            .iter()
            .map(|(l, o)| (l.clone(), o.port))
            .collect();
        v.sort();
        v
    }

    /// Close every listener.
    pub fn clear(&mut self) {
        self.ports.clear();
        self.outbound.clear();
    }
}

fn listen_outbound(gateway: Ipv4Addr) -> std::io::Result<(u16, JoinHandle<()>)> {
    let std = std::net::TcpListener::bind((gateway, 0))?;
    std.set_nonblocking(true)?;
    let port = std.local_addr()?.port();
    let l = TcpListener::from_std(std)?;
    Ok((port, tokio::spawn(serve_outbound(l))))
}

/// The destination a REDIRECTed connection was addressed to (conntrack's original tuple).
pub fn original_destination(s: &TcpStream) -> std::io::Result<SocketAddrV4> {
    use std::os::fd::AsRawFd;
    // SAFETY: getsockopt writes at most `len` bytes into `addr`, a plain C struct.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_IP,
            libc::SO_ORIGINAL_DST,
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
        u16::from_be(addr.sin_port),
    ))
}

async fn serve_outbound(l: TcpListener) {
    let own = l.local_addr().ok();
    // Only redirected connections have somewhere to go; one made to the listener itself (its
    // original destination is the listener) is closed.
    serve_tcp_to(l, move |client| {
        original_destination(client)
            .ok()
            .filter(|to| own != Some(SocketAddr::V4(*to)))
    })
    .await
}

/// Accept forever; each connection goes to `dest(client)` (closed when None), copied both ways
/// in a task of its own, the connect bounded by `CONNECT_TIMEOUT`.
async fn serve_tcp_to(l: TcpListener, dest: impl Fn(&TcpStream) -> Option<SocketAddrV4>) {
    loop {
        let (mut client, _) = match l.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                tracing::warn!("relay accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(to) = dest(&client) else {
            continue;
        };
        tokio::spawn(async move {
            let up = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(to)).await;
            let Ok(Ok(mut up)) = up else {
                return; // the client sees its connection closed, as after a refusal
            };
            let _ = client.set_nodelay(true);
            let _ = up.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
        });
    }
}

fn bind_addr(k: &PortKey) -> SocketAddr {
    SocketAddr::from((k.1.unwrap_or(Ipv4Addr::UNSPECIFIED), k.2))
}

/// Makes a published port's socket, bound (and listening, for TCP) on the address: for a
/// caller whose sockets must come from another network namespace than its own (a rootless
/// berth: a socket stays in the netns where it was made, so one made by a process in the
/// host's netns listens there, and the relay, in its own netns, still reaches the backends).
pub type Binder = dyn Fn(Proto, SocketAddr) -> std::io::Result<std::os::fd::OwnedFd> + Send + Sync;

static BINDER: std::sync::OnceLock<Box<Binder>> = std::sync::OnceLock::new();

/// Take published ports' sockets from `b` instead of binding them here. Once per process;
/// false when a binder was already set.
pub fn set_binder(b: Box<Binder>) -> bool {
    BINDER.set(b).is_ok()
}

/// Bind now (so errors are the caller's), serve in a task.
fn listen(k: PortKey, backends: Arc<Backends>) -> std::io::Result<JoinHandle<()>> {
    let addr = bind_addr(&k);
    if let Some(b) = BINDER.get() {
        let fd = b(k.0, addr)?;
        return match k.0 {
            Proto::Tcp => {
                let std = std::net::TcpListener::from(fd);
                std.set_nonblocking(true)?;
                let l = TcpListener::from_std(std)?;
                Ok(tokio::spawn(serve_tcp(l, backends)))
            }
            Proto::Udp => {
                let std = std::net::UdpSocket::from(fd);
                std.set_nonblocking(true)?;
                let s = Arc::new(UdpSocket::from_std(std)?);
                Ok(tokio::spawn(serve_udp(s, backends)))
            }
        };
    }
    match k.0 {
        Proto::Tcp => {
            let std = std::net::TcpListener::bind(addr)?;
            std.set_nonblocking(true)?;
            let l = TcpListener::from_std(std)?;
            Ok(tokio::spawn(serve_tcp(l, backends)))
        }
        Proto::Udp => {
            let std = std::net::UdpSocket::bind(addr)?;
            std.set_nonblocking(true)?;
            let s = Arc::new(UdpSocket::from_std(std)?);
            Ok(tokio::spawn(serve_udp(s, backends)))
        }
    }
}

async fn serve_tcp(l: TcpListener, backends: Arc<Backends>) {
    // No backend running: refuse by closing.
    serve_tcp_to(l, move |_| backends.pick()).await
}

struct Flow {
    sock: Arc<UdpSocket>,
    last: Arc<Mutex<Instant>>,
    task: JoinHandle<()>,
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_udp(s: Arc<UdpSocket>, backends: Arc<Backends>) {
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    let mut sweep = Instant::now();
    loop {
        let (n, from) = match s.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(_) => continue, // ICMP errors of earlier sends surface here; not fatal
        };
        let now = Instant::now();
        if now.duration_since(sweep) > Duration::from_secs(5) || flows.len() >= UDP_MAX_FLOWS {
            sweep = now;
            flows.retain(|_, f| now.duration_since(*f.last.lock().unwrap()) < UDP_IDLE);
            if flows.len() >= UDP_MAX_FLOWS {
                if let Some(oldest) = flows
                    .iter()
                    .min_by_key(|(_, f)| *f.last.lock().unwrap())
                    .map(|(a, _)| *a)
                {
                    flows.remove(&oldest);
                }
            }
        }
        if let Some(f) = flows.get(&from) {
            if !f.task.is_finished() {
                *f.last.lock().unwrap() = now;
                let _ = f.sock.send(&buf[..n]).await;
                continue;
            }
            flows.remove(&from);
        }
        let Some(to) = backends.pick() else {
            continue;
        };
        let Ok(up) = UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))).await else {
            continue;
        };
        if up.connect(to).await.is_err() {
            continue;
        }
        let up = Arc::new(up);
        let last = Arc::new(Mutex::new(now));
        let _ = up.send(&buf[..n]).await;
        let task = tokio::spawn(udp_replies(up.clone(), s.clone(), from, last.clone()));
        flows.insert(
            from,
            Flow {
                sock: up,
                last,
                task,
            },
        );
    }
}

/// Backend → client for one flow, until it has been idle for `UDP_IDLE`.
async fn udp_replies(
    up: Arc<UdpSocket>,
    down: Arc<UdpSocket>,
    client: SocketAddr,
    last: Arc<Mutex<Instant>>,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        let idle_for = Instant::now().duration_since(*last.lock().unwrap());
        let Some(left) = UDP_IDLE.checked_sub(idle_for) else {
            return;
        };
        match tokio::time::timeout(left, up.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                *last.lock().unwrap() = Instant::now();
                let _ = down.send_to(&buf[..n], client).await;
            }
            Ok(Err(_)) => {
                // ECONNREFUSED from the backend's ICMP: keep the flow, the backend may come back.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(_) => {} // timed out: re-check the idle time (the client may have sent)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn rule(proto: Proto, port: u16, backends: &[SocketAddr]) -> PortRule {
        PortRule {
            host_ip: Some("127.0.0.1".parse().unwrap()),
            host_port: port,
            protocol: proto,
            backends: backends
                .iter()
                .map(|a| match a {
                    SocketAddr::V4(a) => (*a.ip(), a.port()),
                    SocketAddr::V6(_) => unreachable!(),
                })
                .collect(),
        }
    }

    fn free_port(proto: Proto) -> u16 {
        match proto {
            Proto::Tcp => std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port(),
            Proto::Udp => std::net::UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port(),
        }
    }

    /// A TCP backend that answers every connection with its tag and the bytes it got.
    async fn tcp_backend(tag: &'static str) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut c, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut b = [0u8; 64];
                    let n = c.read(&mut b).await.unwrap();
                    let mut out = tag.as_bytes().to_vec();
                    out.extend_from_slice(&b[..n]);
                    c.write_all(&out).await.unwrap();
                });
            }
        });
        a
    }

    async fn tcp_ask(port: u16, what: &[u8]) -> String {
        let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        c.write_all(what).await.unwrap();
        let mut s = String::new();
        tokio::time::timeout(Duration::from_secs(5), c.read_to_string(&mut s))
            .await
            .expect("relay answered in time")
            .unwrap();
        s
    }

    #[tokio::test]
    async fn tcp_is_relayed_round_robin_and_backends_change_in_place() {
        let a = tcp_backend("a:").await;
        let b = tcp_backend("b:").await;
        let port = free_port(Proto::Tcp);
        let mut r = Relay::new();
        r.update(&[rule(Proto::Tcp, port, &[a, b])]).unwrap();
        let mut got = vec![tcp_ask(port, b"x").await, tcp_ask(port, b"y").await];
        got.sort();
        assert_eq!(got, vec!["a:x".to_string(), "b:y".to_string()]);
        // A rolling update: only b now, on the same listener.
        r.update(&[rule(Proto::Tcp, port, &[b])]).unwrap();
        assert_eq!(
            r.ports(),
            vec![(Proto::Tcp, Some(Ipv4Addr::LOCALHOST), port)]
        );
        for _ in 0..3 {
            assert_eq!(tcp_ask(port, b"z").await, "b:z");
        }
        // No backend: the connection is closed (or reset) without data.
        r.update(&[rule(Proto::Tcp, port, &[])]).unwrap();
        let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut s = String::new();
        let got = tokio::time::timeout(Duration::from_secs(5), c.read_to_string(&mut s))
            .await
            .expect("closed in time");
        assert!(
            matches!(&got, Ok(0))
                || got
                    .as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "{got:?} {s:?}"
        );
        // Gone from the rules: the port is free again.
        r.update(&[]).unwrap();
        assert!(r.ports().is_empty());
        tokio::time::sleep(Duration::from_millis(50)).await;
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("port released");
    }

    #[tokio::test]
    async fn udp_flows_get_their_own_replies() {
        // Backend: echoes with a tag, to whoever sent.
        let be = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let be_addr = be.local_addr().unwrap();
        tokio::spawn(async move {
            let mut b = [0u8; 64];
            loop {
                let (n, from) = be.recv_from(&mut b).await.unwrap();
                let mut out = b"echo:".to_vec();
                out.extend_from_slice(&b[..n]);
                be.send_to(&out, from).await.unwrap();
            }
        });
        let port = free_port(Proto::Udp);
        let mut r = Relay::new();
        r.update(&[rule(Proto::Udp, port, &[be_addr])]).unwrap();
        let c1 = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let c2 = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut buf = [0u8; 64];
        for round in 0..3 {
            for (c, tag) in [(&c1, "one"), (&c2, "two")] {
                let msg = format!("{tag}{round}");
                c.send_to(msg.as_bytes(), ("127.0.0.1", port))
                    .await
                    .unwrap();
                let n = tokio::time::timeout(Duration::from_secs(5), c.recv(&mut buf))
                    .await
                    .expect("udp reply in time")
                    .unwrap();
                assert_eq!(&buf[..n], format!("echo:{msg}").as_bytes());
            }
        }
    }

    #[tokio::test]
    async fn outbound_listeners_follow_the_networks_and_refuse_direct_connections() {
        let mut r = Relay::new();
        let lo = Ipv4Addr::LOCALHOST;
        let a = r.update_outbound(&[("berthbra".into(), lo), ("berthbrb".into(), lo)]);
        assert_eq!(a.len(), 2);
        assert_ne!(a[0].1, a[1].1);
        // The same networks keep their ports; a gone one is closed.
        let b = r.update_outbound(&[("berthbra".into(), lo)]);
        assert_eq!(b, vec![a[0].clone()]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        std::net::TcpListener::bind((lo, a[1].1)).expect("the gone network's port is free");
        // Not redirected: no original destination elsewhere (ENOENT without conntrack, the
        // listener itself with it), so closed without data.
        let mut c = TcpStream::connect((lo, b[0].1)).await.unwrap();
        match original_destination(&c) {
            Err(_) => {}
            Ok(d) => assert_eq!(d, SocketAddrV4::new(lo, b[0].1)),
        }
        let mut s = String::new();
        let got = tokio::time::timeout(Duration::from_secs(5), c.read_to_string(&mut s))
            .await
            .expect("closed in time");
        assert!(matches!(got, Ok(0)) || got.is_err(), "{got:?} {s:?}");
        r.clear();
        assert!(r.update_outbound(&[]).is_empty());
    }

    #[tokio::test]
    async fn a_busy_port_is_an_error_and_others_still_listen() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let busy = held.local_addr().unwrap().port();
        let free = free_port(Proto::Tcp);
        let a = tcp_backend("a:").await;
        let mut r = Relay::new();
        let e = r
            .update(&[rule(Proto::Tcp, busy, &[a]), rule(Proto::Tcp, free, &[a])])
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
        assert_eq!(
            r.ports(),
            vec![(Proto::Tcp, Some(Ipv4Addr::LOCALHOST), free)]
        );
        assert_eq!(tcp_ask(free, b"k").await, "a:k");
    }
}
