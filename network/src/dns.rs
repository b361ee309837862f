//! The embedded DNS server: one UDP and one TCP listener per network, on the network's gateway
//! address, port 53. A query is answered from the listener's network only (a name on network B
//! is unknown on network A): A records of every running replica, shuffled, TTL 0; PTR for their
//! addresses; NXDOMAIN for unknown single-label names (they are the project's namespace and must
//! not leak to the host's resolvers). Other names are forwarded to the upstreams (the
//! requesting container's own `dns:` servers, else the records' upstreams, else the host's
//! resolv.conf) through one shared upstream socket with query-id remapping, and positive and
//! negative answers are cached (TTL-bounded). Internal networks never forward.
//!
//! The answers have the shape of Docker's embedded server (127.0.0.11, compared packet by
//! packet for issue 19): QR and RA set, RD echoed, no AA; every replica's A record in one
//! answer, shuffled; a known name asked for another type (AAAA) is NOERROR with no record and
//! no SOA in the authority section. Differences kept on purpose: TTL 0 (Docker 600, see
//! `LOCAL_TTL`), unknown single-label names are NXDOMAIN here (Docker forwards them), and ANY
//! gets the A records (Docker does not answer it).
//!
//! The records are an immutable snapshot in an `ArcSwap`: the supervisor changes its working
//! copy by differences (`Incremental`: per owner, the entries that went and came) and swaps a
//! clone in with one store, so a removed container disappears at once. A clone is cheap: each
//! network's maps are cut into copy-on-write shards (`Shards`), and a change copies the shards
//! it touches, so an event costs the same with 5 containers or 500.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

use crate::{Error, Result};

const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_PENDING: usize = 8192;
const MAX_CACHE: usize = 10_000;
const MAX_CACHE_TTL: u32 = 300;
const NEGATIVE_TTL: u32 = 30;
const TCP_IDLE: Duration = Duration::from_secs(10);
/// TTL of the project's own records. Docker's server says 600, aardvark-dns (podman) 0. berth
/// keeps 0: a replica leaves DNS before it is stopped, and a client that caches answers for
/// their TTL (nginx's `resolver`, a caching stub) would keep sending to a removed replica for
/// ten minutes after a rolling update with 600. No resolver tried minds 0 (glibc static and
/// dynamic, busybox nslookup; issue 19, where busybox wget's crash turned out to be its `-T`).
pub const LOCAL_TTL: u32 = 0;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct NetRecords {
    gateway: Option<Ipv4Addr>,
    internal: bool,
    /// When known, only requesters inside it (or the gateway itself) get answers: a container
    /// of another network reaching this gateway by routing is refused.
    subnet: Option<ipnet::Ipv4Net>,
    /// lowercase name → addresses (one per running replica, in address order)
    names: Shards<String, Vec<Ipv4Addr>>,
    /// address → the first name given for it
    reverse: Shards<Ipv4Addr, String>,
}

/// Number of copy-on-write pieces a network's maps are cut into. A change copies one piece
/// (with 500 services of four names each, 8 names at 256), a snapshot copies 256 pointers.
const SHARDS: usize = 256;

/// A map cut into `SHARDS` pieces behind `Arc`s: a clone shares every piece, and a change
/// copies the one piece it touches (`Arc::make_mut`). So a snapshot costs `SHARDS` pointer
/// copies and changing one name copies 1/`SHARDS` of the map, whatever the project's size.
#[derive(Debug, Clone)]
struct Shards<K, V>(Vec<Arc<HashMap<K, V>>>);

impl<K: std::hash::Hash + Eq, V: PartialEq> PartialEq for Shards<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .all(|(a, b)| Arc::ptr_eq(a, b) || a == b)
    }
}

impl<K: std::hash::Hash + Eq, V: Eq> Eq for Shards<K, V> {}

impl<K, V> Default for Shards<K, V> {
    fn default() -> Self {
        Shards((0..SHARDS).map(|_| Arc::new(HashMap::new())).collect())
    }
}

trait ShardKey {
    fn shard(&self) -> usize;
}

impl ShardKey for str {
    fn shard(&self) -> usize {
        // FNV-1a: cheap, and the same in every process (tests compare snapshots).
        let h = self.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
        (h % SHARDS as u64) as usize
    }
}

impl ShardKey for String {
    fn shard(&self) -> usize {
        self.as_str().shard()
    }
}

impl ShardKey for Ipv4Addr {
    fn shard(&self) -> usize {
        (u32::from(*self) as usize) % SHARDS
    }
}

impl<K: ShardKey + std::hash::Hash + Eq + Clone, V: Clone> Shards<K, V> {
    fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: ShardKey + std::hash::Hash + Eq + ?Sized,
    {
        self.0[key.shard()].get(key)
    }

    /// The piece `key` lives in, copied first if a snapshot still shares it.
    fn piece_mut<Q: ShardKey + ?Sized>(&mut self, key: &Q) -> &mut HashMap<K, V> {
        Arc::make_mut(&mut self.0[key.shard()])
    }

    fn len(&self) -> usize {
        self.0.iter().map(|m| m.len()).sum()
    }
}

/// Everything the server answers from: a snapshot, changed by `Records::add`/`remove` on a
/// working copy (cheap to clone, see `Shards`) and swapped in whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Records {
    networks: HashMap<String, NetRecords>,
    upstreams: Option<Vec<SocketAddr>>,
    container_upstreams: Arc<HashMap<Ipv4Addr, Vec<SocketAddr>>>,
}

/// One address's records on one network: `names` resolve to `ip` there (the first is its
/// PTR), and queries from `ip` go to `upstreams` when not empty (the container's `dns:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub network: String,
    pub names: Vec<String>,
    pub ip: Ipv4Addr,
    pub upstreams: Vec<SocketAddr>,
}

/// Records kept up to date by differences: each owner (a service) states its entries, and only
/// what differs from what it stated before is removed from and added to the working copy, so
/// an event costs what its owner has, not what the project has. `snapshot` is what the server
/// gets (one swap per batch of changes).
#[derive(Debug, Default)]
pub struct Incremental {
    records: Records,
    owners: HashMap<String, Vec<Entry>>,
    networks: Vec<(String, Ipv4Addr, bool, Option<ipnet::Ipv4Net>)>,
}

impl Incremental {
    /// `owner`'s entries are now `entries` (empty: it has none). Whether anything changed.
    pub fn set(&mut self, owner: &str, entries: Vec<Entry>) -> bool {
        let old = self.owners.remove(owner).unwrap_or_default();
        if old == entries {
            if !old.is_empty() {
                self.owners.insert(owner.to_string(), old);
            }
            return false;
        }
        for e in old.iter().filter(|e| !entries.contains(e)) {
            self.records.remove(&e.network, &e.names, e.ip);
            if !e.upstreams.is_empty() {
                self.records.remove_container_upstreams(e.ip);
            }
        }
        for e in entries.iter().filter(|e| !old.contains(e)) {
            self.records.add(&e.network, &e.names, e.ip);
            if !e.upstreams.is_empty() {
                self.records
                    .set_container_upstreams(e.ip, e.upstreams.clone());
            }
        }
        if !entries.is_empty() {
            self.owners.insert(owner.to_string(), entries);
        }
        true
    }

    /// Owners with entries.
    pub fn owners(&self) -> impl Iterator<Item = &String> {
        self.owners.keys()
    }

    /// The networks answered on: (key, gateway, internal, subnet). Networks that went are
    /// forgotten with their records; new ones start empty. Whether anything changed.
    pub fn set_networks(
        &mut self,
        nets: Vec<(String, Ipv4Addr, bool, Option<ipnet::Ipv4Net>)>,
    ) -> bool {
        if nets == self.networks {
            return false;
        }
        for (key, ..) in &self.networks {
            if !nets.iter().any(|n| n.0 == *key) {
                self.records.remove_network(key);
            }
        }
        for (key, gw, internal, subnet) in &nets {
            self.records.add_network(key, *gw, *internal);
            if let Some(s) = subnet {
                self.records.set_subnet(key, *s);
            }
        }
        // Entries on a network that came back must be there again: re-add them all (rare).
        let owners: Vec<(String, Vec<Entry>)> = self.owners.drain().collect();
        for (o, e) in owners {
            for x in &e {
                if self.networks.iter().all(|n| n.0 != x.network) {
                    self.records.add(&x.network, &x.names, x.ip);
                }
            }
            self.owners.insert(o, e);
        }
        self.networks = nets;
        true
    }

    /// The upstreams of forwarded queries. Whether they changed.
    pub fn set_upstreams(&mut self, upstreams: Vec<SocketAddr>) -> bool {
        if self.records.upstreams.as_ref() == Some(&upstreams) {
            return false;
        }
        self.records.set_upstreams(upstreams);
        true
    }

    /// The records as they are now, to swap into the server (cheap: see `Shards`).
    pub fn snapshot(&self) -> Records {
        self.records.clone()
    }
}

/// What a query gets (pure lookup result).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    A(Vec<Ipv4Addr>),
    Ptr(String),
    /// The name exists but has no record of that type.
    NoData,
    NxDomain,
    /// Ask upstream: these servers, or None for the server's defaults (host resolv.conf).
    Forward(Option<Vec<SocketAddr>>),
    /// Not a network this server knows.
    Refused,
}

fn norm(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// d.c.b.a.in-addr.arpa → a.b.c.d
pub fn parse_ptr_name(name: &str) -> Option<Ipv4Addr> {
    let n = norm(name);
    let rest = n.strip_suffix(".in-addr.arpa")?;
    let parts: Vec<u8> = rest
        .split('.')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    if parts.len() != 4 {
        return None;
    }
    Some(Ipv4Addr::new(parts[3], parts[2], parts[1], parts[0]))
}

impl Records {
    /// Declare a network (it answers even with no container yet).
    pub fn add_network(&mut self, network: &str, gateway: Ipv4Addr, internal: bool) {
        let n = self.networks.entry(network.to_string()).or_default();
        n.gateway = Some(gateway);
        n.internal = internal;
    }

    /// Restrict the network's listener to requesters inside `subnet` (see `NetRecords`).
    pub fn set_subnet(&mut self, network: &str, subnet: ipnet::Ipv4Net) {
        self.networks.entry(network.to_string()).or_default().subnet = Some(subnet.trunc());
    }

    /// `names` (service, container name, aliases, hostname…) resolve to `ip` on `network`; the
    /// first name is what the address's PTR gives.
    pub fn add(&mut self, network: &str, names: &[String], ip: Ipv4Addr) {
        let n = self.networks.entry(network.to_string()).or_default();
        for name in names {
            let key = norm(name);
            if key.is_empty() {
                continue;
            }
            let v = n.names.piece_mut(&key).entry(key).or_default();
            if let Err(i) = v.binary_search(&ip) {
                v.insert(i, ip);
            }
        }
        if let Some(first) = names.iter().map(|s| norm(s)).find(|s| !s.is_empty()) {
            n.reverse.piece_mut(&ip).entry(ip).or_insert(first);
        }
    }

    /// Undo `add(network, names, ip)`: `ip` no longer answers to `names` there (other
    /// addresses of the same names stay), and its PTR goes.
    pub fn remove(&mut self, network: &str, names: &[String], ip: Ipv4Addr) {
        let Some(n) = self.networks.get_mut(network) else {
            return;
        };
        for name in names {
            let key = norm(name);
            if n.names.get(&key).is_none_or(|v| !v.contains(&ip)) {
                continue;
            }
            let piece = n.names.piece_mut(&key);
            if let Some(v) = piece.get_mut(&key) {
                v.retain(|a| *a != ip);
                if v.is_empty() {
                    piece.remove(&key);
                }
            }
        }
        if n.reverse.get(&ip).is_some() {
            n.reverse.piece_mut(&ip).remove(&ip);
        }
    }

    /// Forget `network` and everything on it.
    pub fn remove_network(&mut self, network: &str) {
        self.networks.remove(network);
    }

    /// Upstreams for every forwarded query (instead of the host's resolv.conf).
    pub fn set_upstreams(&mut self, upstreams: Vec<SocketAddr>) {
        self.upstreams = Some(upstreams);
    }

    /// A container's own `dns:` servers, by its address.
    pub fn set_container_upstreams(&mut self, ip: Ipv4Addr, upstreams: Vec<SocketAddr>) {
        Arc::make_mut(&mut self.container_upstreams).insert(ip, upstreams);
    }

    /// Forget the `dns:` servers of the container at `ip`.
    pub fn remove_container_upstreams(&mut self, ip: Ipv4Addr) {
        if self.container_upstreams.contains_key(&ip) {
            Arc::make_mut(&mut self.container_upstreams).remove(&ip);
        }
    }

    /// How many names `network` answers (tests, benches).
    pub fn name_count(&self, network: &str) -> usize {
        self.networks.get(network).map_or(0, |n| n.names.len())
    }

    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }

    /// The answer for `qname`/`qtype` asked on `network` by `requester` (pure).
    pub fn lookup(
        &self,
        network: &str,
        requester: Option<Ipv4Addr>,
        qname: &str,
        qtype: RecordType,
    ) -> Answer {
        self.lookup_normed(network, requester, &norm(qname), qtype)
    }

    /// `lookup` for a name already lowercased and without its trailing dot.
    fn lookup_normed(
        &self,
        network: &str,
        requester: Option<Ipv4Addr>,
        name: &str,
        qtype: RecordType,
    ) -> Answer {
        let Some(net) = self.networks.get(network) else {
            return Answer::Refused;
        };
        if let (Some(subnet), Some(r)) = (net.subnet, requester) {
            if !subnet.contains(&r) && Some(r) != net.gateway {
                return Answer::Refused;
            }
        }
        let forward = || {
            if net.internal {
                return Answer::NxDomain;
            }
            let own = requester
                .and_then(|r| self.container_upstreams.get(&r))
                .filter(|u| !u.is_empty());
            Answer::Forward(own.cloned().or_else(|| self.upstreams.clone()))
        };
        if let Some(ip) = name
            .ends_with(".in-addr.arpa")
            .then(|| parse_ptr_name(name))
            .flatten()
        {
            if qtype != RecordType::PTR {
                return forward();
            }
            return match net.reverse.get(&ip) {
                Some(n) => Answer::Ptr(n.clone()),
                None => forward(),
            };
        }
        if let Some(addrs) = net.names.get(name) {
            return match qtype {
                RecordType::A | RecordType::ANY => Answer::A(addrs.clone()),
                _ => Answer::NoData,
            };
        }
        if name.is_empty() || !name.contains('.') {
            return Answer::NxDomain;
        }
        forward()
    }
}

struct Pending {
    client_id: u16,
    client: SocketAddr,
    reply: Arc<std::net::UdpSocket>,
    upstream: SocketAddr,
    key: (String, u16),
    sent: Instant,
}

struct CacheEntry {
    msg: Message,
    stored: Instant,
    ttl: u32,
    /// The answer as sent for whole second `wire_age` of its life (TTLs already lowered):
    /// rebuilt at most once a second, so a hot cached name costs a copy, not a serialisation.
    wire: Vec<u8>,
    wire_age: u64,
}

struct Upstream {
    sock: UdpSocket,
    pending: Mutex<HashMap<u16, Pending>>,
    next_id: AtomicU16,
}

struct Listener {
    addr: SocketAddr,
    /// The TCP accept task.
    tasks: Vec<JoinHandle<()>>,
    /// The UDP serving thread: its stop flag, its socket and its handle.
    udp: Option<(
        Arc<AtomicBool>,
        Arc<std::net::UdpSocket>,
        std::thread::JoinHandle<()>,
    )>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some((stop, sock, thread)) = self.udp.take() {
            stop.store(true, Ordering::Release);
            // Wakes the thread out of recvmmsg (Linux wakes blocked readers of an unconnected
            // UDP socket on shutdown, though the call reports ENOTCONN); it then sees the flag.
            // SAFETY: shutdown on a socket fd we own.
            unsafe { libc::shutdown(sock.as_raw_fd(), libc::SHUT_RDWR) };
            drop(sock);
            // Joined so the port is free again when this returns (a replacing listener binds
            // the same address at once).
            let _ = thread.join();
        }
    }
}

struct Inner {
    records: Arc<ArcSwap<Records>>,
    listeners: Mutex<HashMap<String, Listener>>,
    upstream: tokio::sync::OnceCell<Arc<Upstream>>,
    upstream_task: Mutex<Option<JoinHandle<()>>>,
    default_upstreams: Vec<SocketAddr>,
    cache: Mutex<HashMap<(String, u16), CacheEntry>>,
    rng: AtomicU64,
    rr: AtomicUsize,
}

/// The server. Cheap to make; listeners are added per network.
pub struct DnsServer {
    inner: Arc<Inner>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        if let Ok(mut l) = self.inner.listeners.lock() {
            l.clear();
        }
        if let Ok(mut t) = self.inner.upstream_task.lock() {
            if let Some(t) = t.take() {
                t.abort();
            }
        }
    }
}

/// What the wire fast path did with a query.
#[derive(Debug, PartialEq, Eq)]
enum Fast {
    /// The answer is in the output buffer.
    Answered,
    /// Not a case the fast path handles: take the general path.
    Slow,
    /// Not a query: no answer at all.
    Drop,
}

enum Action {
    Reply(Vec<u8>),
    Forward {
        query: Vec<u8>,
        id: u16,
        upstreams: Vec<SocketAddr>,
        key: (String, u16),
    },
    Drop,
}

fn host_upstreams() -> Vec<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    crate::files::parse_resolv_conf(&text)
        .0
        .into_iter()
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

impl DnsServer {
    /// A server with empty records and the host's resolv.conf as default upstreams.
    pub fn start() -> DnsServer {
        Self::with_records(Arc::new(ArcSwap::from_pointee(Records::default())))
    }

    /// A server answering from a snapshot the caller swaps itself.
    pub fn with_records(records: Arc<ArcSwap<Records>>) -> DnsServer {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        DnsServer {
            inner: Arc::new(Inner {
                records,
                listeners: Mutex::new(HashMap::new()),
                upstream: tokio::sync::OnceCell::new(),
                upstream_task: Mutex::new(None),
                default_upstreams: host_upstreams(),
                cache: Mutex::new(HashMap::new()),
                rng: AtomicU64::new(seed | 1),
                rr: AtomicUsize::new(0),
            }),
        }
    }

    pub fn records(&self) -> Arc<ArcSwap<Records>> {
        self.inner.records.clone()
    }

    /// Swap the whole record set (takes effect for the next query).
    pub fn set_records(&self, records: Records) {
        self.inner.records.store(Arc::new(records));
    }

    /// Listen on `addr`:53 for `network` (idempotent; a new address replaces the old listener).
    pub async fn add_listener(&self, network: &str, addr: Ipv4Addr) -> Result<()> {
        self.add_listener_at(network, SocketAddr::from((addr, 53)))
            .await
    }

    /// As `add_listener`, on any socket address (tests, or a port other than 53).
    pub async fn add_listener_at(&self, network: &str, addr: SocketAddr) -> Result<()> {
        if self
            .inner
            .listeners
            .lock()
            .map(|l| l.get(network).map(|x| x.addr) == Some(addr))
            .unwrap_or(false)
        {
            return Ok(());
        }
        self.remove_listener(network);
        let bind_err = |source| Error::Bind { addr, source };
        let udp = Arc::new(std::net::UdpSocket::bind(addr).map_err(bind_err)?);
        let tcp = TcpListener::bind(addr).await.map_err(bind_err)?;
        let inner = self.inner.clone();
        let net = network.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let rt = tokio::runtime::Handle::current();
        let thread = {
            let (inner, net, udp, stop) = (inner.clone(), net.clone(), udp.clone(), stop.clone());
            std::thread::Builder::new()
                .name("berth-dns".into())
                .spawn(move || udp_serve(inner, net, udp, stop, rt))
                .map_err(bind_err)?
        };
        let t = tokio::spawn(tcp_loop(inner, net, tcp));
        if let Ok(mut l) = self.inner.listeners.lock() {
            l.insert(
                network.to_string(),
                Listener {
                    addr,
                    tasks: vec![t],
                    udp: Some((stop, udp, thread)),
                },
            );
        }
        Ok(())
    }

    /// Stop listening for `network` (the sockets close at once).
    pub fn remove_listener(&self, network: &str) {
        let old = self
            .inner
            .listeners
            .lock()
            .ok()
            .and_then(|mut l| l.remove(network));
        drop(old);
    }

    /// Networks with a listener, and where.
    pub fn listeners(&self) -> Vec<(String, SocketAddr)> {
        self.inner
            .listeners
            .lock()
            .map(|l| l.iter().map(|(k, v)| (k.clone(), v.addr)).collect())
            .unwrap_or_default()
    }
}

impl Inner {
    fn random(&self) -> u64 {
        // xorshift64*; quality is plenty for shuffling answers and ids.
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.store(x, Ordering::Relaxed);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn shuffle(&self, v: &mut [Ipv4Addr]) {
        for i in (1..v.len()).rev() {
            let j = (self.random() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }

    /// Answer the common query straight from its wire bytes into `out`, without building
    /// hickory messages: one question of class IN whose name is plain letters, digits, `-` and
    /// `_`, answered from the project's records (A, PTR, NODATA, NXDOMAIN, REFUSED). The
    /// question is copied verbatim (its case preserved, as 0x20-randomising clients expect) and
    /// every answer's owner is a pointer back to it. Forwarded names, other opcodes and
    /// unusual headers take the general path. `max` is the largest answer the transport allows
    /// (512 for UDP, or what the client's EDNS OPT advertises; 65535 for TCP): answers that do
    /// not fit are cut and the answer flagged truncated, so the client retries over TCP.
    fn answer_fast(
        &self,
        network: &str,
        requester: Option<Ipv4Addr>,
        q: &[u8],
        out: &mut Vec<u8>,
        max: usize,
    ) -> Fast {
        let be16 = |i: usize| u16::from_be_bytes([q[i], q[i + 1]]);
        if q.len() < 12 {
            return Fast::Drop;
        }
        let flags = q[2];
        if flags & 0x80 != 0 {
            return Fast::Drop;
        }
        if (flags >> 3) & 0x0f != 0 || be16(4) != 1 || be16(6) != 0 || be16(8) != 0 {
            return Fast::Slow;
        }
        let additional = be16(10);
        if additional > 1 {
            return Fast::Slow;
        }
        let mut name = String::with_capacity(64);
        let mut i = 12;
        loop {
            let Some(&len) = q.get(i) else {
                return Fast::Slow;
            };
            i += 1;
            if len == 0 {
                break;
            }
            let Some(label) = q.get(i..i + usize::from(len)) else {
                return Fast::Slow;
            };
            if len > 63
                || !label
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
            {
                return Fast::Slow;
            }
            if !name.is_empty() {
                name.push('.');
            }
            name.extend(label.iter().map(|b| char::from(b.to_ascii_lowercase())));
            i += usize::from(len);
            if name.len() > 253 {
                return Fast::Slow;
            }
        }
        if q.len() < i + 4 || be16(i + 2) != 1 {
            return Fast::Slow;
        }
        let qtype = be16(i);
        let qend = i + 4;
        let mut max = max;
        if additional == 1 && max == 512 {
            // An EDNS OPT record (root owner, type 41) advertises the client's UDP size.
            if q.len() >= qend + 11 && q[qend] == 0 && be16(qend + 1) == 41 {
                max = usize::from(be16(qend + 3)).clamp(512, 4096);
            } else {
                return Fast::Slow;
            }
        }
        let records = self.records.load();
        let answer = records.lookup_normed(network, requester, &name, RecordType::from(qtype));
        let rcode = match &answer {
            Answer::A(_) | Answer::Ptr(_) | Answer::NoData => 0,
            Answer::NxDomain => 3,
            Answer::Refused => 5,
            Answer::Forward(_) => return Fast::Slow,
        };
        out.clear();
        out.extend_from_slice(&q[..2]);
        // QR, the query's RD echoed, no AA (as Docker's server); RA.
        out.push(0x80 | (flags & 0x01));
        out.push(0x80 | rcode);
        out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&q[12..qend]);
        let mut count: u16 = 0;
        match answer {
            Answer::A(mut addrs) => {
                self.shuffle(&mut addrs);
                for a in addrs {
                    if out.len() + 16 > max {
                        out[2] |= 0x02;
                        break;
                    }
                    out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
                    out.extend_from_slice(&LOCAL_TTL.to_be_bytes());
                    out.extend_from_slice(&[0, 4]);
                    out.extend_from_slice(&a.octets());
                    count += 1;
                }
            }
            Answer::Ptr(target) => {
                let mut rdata = Vec::with_capacity(target.len() + 2);
                for label in target.split('.').filter(|l| !l.is_empty()) {
                    if label.len() > 63 {
                        return Fast::Slow;
                    }
                    rdata.push(label.len() as u8);
                    rdata.extend_from_slice(label.as_bytes());
                }
                rdata.push(0);
                out.extend_from_slice(&[0xc0, 0x0c, 0, 12, 0, 1]);
                out.extend_from_slice(&LOCAL_TTL.to_be_bytes());
                out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
                out.extend_from_slice(&rdata);
                count = 1;
                if out.len() > max {
                    return Fast::Slow;
                }
            }
            _ => {}
        }
        out[6..8].copy_from_slice(&count.to_be_bytes());
        Fast::Answered
    }

    fn handle(&self, network: &str, requester: Option<Ipv4Addr>, bytes: &[u8]) -> Action {
        let req = match Message::from_vec(bytes) {
            Ok(m) => m,
            Err(_) => {
                if bytes.len() < 12 {
                    return Action::Drop;
                }
                let id = u16::from_be_bytes([bytes[0], bytes[1]]);
                return reply(Message::error_msg(id, OpCode::Query, ResponseCode::FormErr));
            }
        };
        let id = req.metadata.id;
        if req.metadata.message_type != MessageType::Query {
            return Action::Drop;
        }
        if req.metadata.op_code != OpCode::Query {
            return reply(Message::error_msg(
                id,
                req.metadata.op_code,
                ResponseCode::NotImp,
            ));
        }
        if req.queries.len() != 1 {
            return reply(Message::error_msg(id, OpCode::Query, ResponseCode::FormErr));
        }
        let q = req.queries[0].clone();
        let qname = q.name().to_ascii();
        let qtype = q.query_type();
        let records = self.records.load();
        let answer = records.lookup(network, requester, &qname, qtype);
        let mut resp = Message::response(id, OpCode::Query);
        resp.metadata.recursion_desired = req.metadata.recursion_desired;
        resp.metadata.recursion_available = true;
        resp.add_query(q.clone());
        match answer {
            Answer::A(mut addrs) => {
                self.shuffle(&mut addrs);
                for a in addrs {
                    resp.add_answer(Record::from_rdata(
                        q.name().clone(),
                        LOCAL_TTL,
                        RData::A(A(a)),
                    ));
                }
            }
            Answer::Ptr(n) => match Name::from_ascii(format!("{n}.")) {
                Ok(target) => {
                    resp.add_answer(Record::from_rdata(
                        q.name().clone(),
                        LOCAL_TTL,
                        RData::PTR(PTR(target)),
                    ));
                }
                Err(_) => resp.metadata.response_code = ResponseCode::ServFail,
            },
            Answer::NoData => {}
            Answer::NxDomain => resp.metadata.response_code = ResponseCode::NXDomain,
            Answer::Refused => resp.metadata.response_code = ResponseCode::Refused,
            Answer::Forward(ups) => {
                let key = (norm(&qname), u16::from(qtype));
                if let Some(mut wire) = self.cached(&key) {
                    wire[..2].copy_from_slice(&id.to_be_bytes());
                    return Action::Reply(wire);
                }
                let upstreams = ups.unwrap_or_else(|| self.default_upstreams.clone());
                if upstreams.is_empty() {
                    resp.metadata.response_code = ResponseCode::ServFail;
                    return reply(resp);
                }
                return Action::Forward {
                    query: bytes.to_vec(),
                    id,
                    upstreams,
                    key,
                };
            }
        }
        reply(resp)
    }

    /// A cached answer's wire bytes with TTLs lowered by its age (the id is the caller's to set).
    fn cached(&self, key: &(String, u16)) -> Option<Vec<u8>> {
        let mut cache = self.cache.lock().ok()?;
        let e = cache.get_mut(key)?;
        let age = e.stored.elapsed().as_secs();
        if age >= u64::from(e.ttl) {
            return None;
        }
        if e.wire.is_empty() || e.wire_age != age {
            let mut m = e.msg.clone();
            for r in m
                .answers
                .iter_mut()
                .chain(m.authorities.iter_mut())
                .chain(m.additionals.iter_mut())
            {
                r.ttl = r.ttl.saturating_sub(age as u32);
            }
            e.wire = m.to_vec().ok()?;
            e.wire_age = age;
        }
        Some(e.wire.clone())
    }

    fn store(&self, key: (String, u16), bytes: &[u8]) {
        let Ok(msg) = Message::from_vec(bytes) else {
            return;
        };
        if msg.metadata.truncation {
            return;
        }
        let ttl = match msg.metadata.response_code {
            ResponseCode::NoError if !msg.answers.is_empty() => {
                msg.answers.iter().map(|r| r.ttl).min().unwrap_or(0)
            }
            ResponseCode::NoError | ResponseCode::NXDomain => msg
                .authorities
                .iter()
                .map(|r| r.ttl)
                .min()
                .unwrap_or(NEGATIVE_TTL)
                .min(NEGATIVE_TTL),
            _ => 0,
        }
        .min(MAX_CACHE_TTL);
        if ttl == 0 {
            return;
        }
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= MAX_CACHE {
                cache.retain(|_, e| e.stored.elapsed().as_secs() < u64::from(e.ttl));
                if cache.len() >= MAX_CACHE {
                    cache.clear();
                }
            }
            cache.insert(
                key,
                CacheEntry {
                    msg,
                    stored: Instant::now(),
                    ttl,
                    wire: Vec::new(),
                    wire_age: 0,
                },
            );
        }
    }

    fn pick(&self, upstreams: &[SocketAddr]) -> SocketAddr {
        upstreams[self.rr.fetch_add(1, Ordering::Relaxed) % upstreams.len()]
    }

    async fn upstream(self: &Arc<Self>) -> std::io::Result<Arc<Upstream>> {
        let me = self.clone();
        self.upstream
            .get_or_try_init(|| async move {
                let sock = UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))).await?;
                let up = Arc::new(Upstream {
                    sock,
                    pending: Mutex::new(HashMap::new()),
                    next_id: AtomicU16::new(me.random() as u16),
                });
                let task = tokio::spawn(upstream_loop(Arc::downgrade(&me), up.clone()));
                if let Ok(mut t) = me.upstream_task.lock() {
                    *t = Some(task);
                }
                Ok(up)
            })
            .await
            .cloned()
    }

    async fn forward_udp(
        self: &Arc<Self>,
        mut query: Vec<u8>,
        client_id: u16,
        client: SocketAddr,
        reply: Arc<std::net::UdpSocket>,
        upstreams: Vec<SocketAddr>,
        key: (String, u16),
    ) {
        let Ok(up) = self.upstream().await else {
            let _ = reply.send_to(&servfail(client_id, &query), client);
            return;
        };
        let target = self.pick(&upstreams);
        let new_id = {
            let Ok(mut pending) = up.pending.lock() else {
                return;
            };
            if pending.len() >= MAX_PENDING {
                pending.retain(|_, p| p.sent.elapsed() < UPSTREAM_TIMEOUT);
            }
            if pending.len() >= MAX_PENDING {
                None
            } else {
                let mut id = up.next_id.fetch_add(1, Ordering::Relaxed);
                while pending.contains_key(&id) {
                    id = up.next_id.fetch_add(1, Ordering::Relaxed);
                }
                pending.insert(
                    id,
                    Pending {
                        client_id,
                        client,
                        reply: reply.clone(),
                        upstream: target,
                        key,
                        sent: Instant::now(),
                    },
                );
                Some(id)
            }
        };
        let Some(new_id) = new_id else {
            let _ = reply.send_to(&servfail(client_id, &query), client);
            return;
        };
        query[..2].copy_from_slice(&new_id.to_be_bytes());
        if up.sock.send_to(&query, target).await.is_err() {
            if let Ok(mut p) = up.pending.lock() {
                p.remove(&new_id);
            }
            let _ = reply.send_to(&servfail(client_id, &query), client);
        }
    }
}

fn reply(m: Message) -> Action {
    match m.to_vec() {
        Ok(v) => Action::Reply(v),
        Err(_) => Action::Drop,
    }
}

fn servfail(id: u16, query: &[u8]) -> Vec<u8> {
    let mut m = Message::error_msg(id, OpCode::Query, ResponseCode::ServFail);
    if let Ok(q) = Message::from_vec(query) {
        for x in q.queries {
            m.add_query(x);
        }
    }
    m.to_vec().unwrap_or_default()
}

fn v4(a: SocketAddr) -> Option<Ipv4Addr> {
    match a.ip() {
        IpAddr::V4(x) => Some(x),
        IpAddr::V6(x) => x.to_ipv4_mapped(),
    }
}

/// Queries taken per `recvmmsg` and answers sent per `sendmmsg` under load.
const BATCH: usize = 32;
/// Largest UDP query read (EDNS clients send small queries; anything longer is cut and fails
/// to parse, which is answered FORMERR like any malformed query).
const UDP_BUF: usize = 4096;

/// The UDP side of one listener, on its own thread with a blocking socket: under load one
/// `recvmmsg` takes up to `BATCH` queries and one `sendmmsg` answers them (two system calls for
/// the batch instead of three or four per query through the async reactor), and at light load a
/// query wakes this thread directly, without waiting for a runtime worker that may be busy with
/// the supervisor's other work (log copying, health checks). Under load it coalesces
/// (`COALESCE`) and sends runs of answers to one client as UDP GSO trains (`send_answers`).
/// Forwarded queries are handed to the async runtime, which owns the upstream socket.
fn udp_serve(
    inner: Arc<Inner>,
    network: String,
    sock: Arc<std::net::UdpSocket>,
    stop: Arc<AtomicBool>,
    rt: tokio::runtime::Handle,
) {
    latency_sensitive();
    let fd = sock.as_raw_fd();
    let mut bufs = vec![0u8; BATCH * UDP_BUF];
    // SAFETY (all the zeroed values below): plain C structs for which all-zero is valid.
    let mut names: Vec<libc::sockaddr_storage> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut iovs: Vec<libc::iovec> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut hdrs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut outs: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(512)).collect();
    let mut out_names: Vec<libc::sockaddr_storage> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut out_lens: Vec<libc::socklen_t> = vec![0; BATCH];
    let mut send_bufs = SendBufs::new();
    let mut gso = true;
    let mut last_batch = 0usize;
    while !stop.load(Ordering::Acquire) {
        if last_batch >= COALESCE_FROM {
            // Under load: let queries gather for a moment (see `COALESCE`).
            std::thread::sleep(COALESCE);
        }
        for k in 0..BATCH {
            iovs[k] = libc::iovec {
                iov_base: bufs[k * UDP_BUF..].as_mut_ptr().cast(),
                iov_len: UDP_BUF,
            };
            let h = &mut hdrs[k];
            h.msg_len = 0;
            h.msg_hdr.msg_name = (&mut names[k] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as _;
            h.msg_hdr.msg_iov = &mut iovs[k];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
        }
        // SAFETY: every header points at live buffers of the sizes given.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                BATCH as _,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            if stop.load(Ordering::Acquire) {
                return;
            }
            let e = std::io::Error::last_os_error();
            if n < 0 && e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            // An error a retry may clear (ENOMEM, a pending ICMP error): do not spin on it.
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let mut m = 0;
        for k in 0..n as usize {
            let len = (hdrs[k].msg_len as usize).min(UDP_BUF);
            let Some(src) = sockaddr_to_std(&names[k], hdrs[k].msg_hdr.msg_namelen) else {
                continue;
            };
            let query = &bufs[k * UDP_BUF..k * UDP_BUF + len];
            let out = &mut outs[m];
            let answered = match inner.answer_fast(&network, v4(src), query, out, 512) {
                Fast::Answered => true,
                Fast::Drop => false,
                Fast::Slow => match inner.handle(&network, v4(src), query) {
                    Action::Reply(v) => {
                        *out = v;
                        true
                    }
                    Action::Forward {
                        query,
                        id,
                        upstreams,
                        key,
                    } => {
                        let (inner, sock) = (inner.clone(), sock.clone());
                        rt.spawn(async move {
                            inner
                                .forward_udp(query, id, src, sock, upstreams, key)
                                .await;
                        });
                        false
                    }
                    Action::Drop => false,
                },
            };
            if answered {
                out_names[m] = names[k];
                out_lens[m] = hdrs[k].msg_hdr.msg_namelen;
                m += 1;
            }
        }
        if gso && m > 2 {
            group_by_client(m, &mut outs, &mut out_names, &mut out_lens);
        }
        send_answers(
            fd,
            m,
            &mut outs,
            &out_names,
            &out_lens,
            &mut gso,
            &mut send_bufs,
        );
        last_batch = n as usize;
    }
}

/// Interrupt coalescing, as a NIC does it: when a read found `COALESCE_FROM` or more queries
/// waiting (the thread is not keeping the queue empty by itself: clients are sending faster
/// than one wake-up per query), the thread sleeps `COALESCE` before reading again, so the next
/// read takes a batch instead of one or two queries. A wake-up, two system calls and (with GSO)
/// one trip through the network path are then shared by the batch. At light load every read
/// finds one query and nothing waits. The sleep is an hrtimer with the thread's timer slack
/// cut to 1 µs (`latency_sensitive`).
const COALESCE: Duration = Duration::from_micros(50);
const COALESCE_FROM: usize = 2;

/// Most datagrams one UDP GSO send may carry (the kernel's UDP_MAX_SEGMENTS is 64 on older
/// kernels, 128 since 6.2), and most bytes (an IPv4 datagram's payload).
const GSO_MAX_SEGMENTS: usize = 64;
const GSO_MAX_BYTES: usize = 65_000;

/// Scratch space for `send_answers`, kept across batches.
struct SendBufs {
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// One control buffer (a UDP_SEGMENT cmsg) per message; u64 for cmsghdr alignment.
    ctrl: Vec<[u64; 4]>,
}

impl SendBufs {
    fn new() -> SendBufs {
        // SAFETY: plain C structs for which all-zero is valid.
        SendBufs {
            iovs: vec![unsafe { std::mem::zeroed() }; BATCH],
            hdrs: vec![unsafe { std::mem::zeroed() }; BATCH],
            ctrl: vec![[0u64; 4]; BATCH],
        }
    }
}

/// Put answers `0..m` to the same client (and of the same length) next to each other, so
/// that clients with several sockets in flight (dnsperf -c, a resolver pool) get GSO runs too.
/// Stable: the answers to one client keep their order within one length.
fn group_by_client(
    m: usize,
    outs: &mut [Vec<u8>],
    names: &mut [libc::sockaddr_storage],
    lens: &mut [libc::socklen_t],
) {
    let key = |k: usize| (addr_bytes(&names[k], lens[k]), outs[k].len());
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|a, b| key(*a).cmp(&key(*b)));
    if order.iter().enumerate().all(|(i, k)| i == *k) {
        return;
    }
    let mut o2: Vec<Vec<u8>> = order
        .iter()
        .map(|&k| std::mem::take(&mut outs[k]))
        .collect();
    let n2: Vec<libc::sockaddr_storage> = order.iter().map(|&k| names[k]).collect();
    let l2: Vec<libc::socklen_t> = order.iter().map(|&k| lens[k]).collect();
    for i in 0..m {
        outs[i] = std::mem::take(&mut o2[i]);
        names[i] = n2[i];
        lens[i] = l2[i];
    }
}

/// The `len` bytes of a peer address that `recvmmsg` filled in.
fn addr_bytes(ss: &libc::sockaddr_storage, len: libc::socklen_t) -> &[u8] {
    let n = (len as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
    // SAFETY: `n` bytes of the storage, within its size.
    unsafe { std::slice::from_raw_parts((ss as *const libc::sockaddr_storage).cast::<u8>(), n) }
}

/// Runs of consecutive answers to one client address with one length: (first, count). Each
/// run longer than one goes out as a single UDP GSO send (pure; unit-tested).
fn gso_runs(lens: &[usize], same_dest: impl Fn(usize, usize) -> bool) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut k = 0;
    while k < lens.len() {
        let mut n = 1;
        while k + n < lens.len()
            && n < GSO_MAX_SEGMENTS
            && lens[k + n] == lens[k]
            && lens[k] * (n + 1) <= GSO_MAX_BYTES
            && same_dest(k, k + n)
        {
            n += 1;
        }
        runs.push((k, n));
        k += n;
    }
    runs
}

/// Send answers `0..m`. Answers to one client with one length (a client that pipelines
/// queries on one socket, as load generators and caching resolvers do) go out as one UDP GSO
/// datagram train: one trip through routing, netfilter, the veths and the bridge for the whole
/// run, cut into datagrams only at the client's socket (`group_by_client` first puts each
/// client's answers together). Without kernel support (`gso` is cleared on the first refusal)
/// every answer is a message of its own. All messages of the batch go in one `sendmmsg`.
fn send_answers(
    fd: i32,
    m: usize,
    outs: &mut [Vec<u8>],
    names: &[libc::sockaddr_storage],
    lens: &[libc::socklen_t],
    gso: &mut bool,
    b: &mut SendBufs,
) {
    let same =
        |a: usize, c: usize| addr_bytes(&names[a], lens[a]) == addr_bytes(&names[c], lens[c]);
    let sizes: Vec<usize> = outs[..m].iter().map(|o| o.len()).collect();
    let runs = if *gso {
        gso_runs(&sizes, same)
    } else {
        (0..m).map(|k| (k, 1)).collect()
    };
    for (iov, o) in b.iovs.iter_mut().zip(outs[..m].iter_mut()) {
        *iov = libc::iovec {
            iov_base: o.as_mut_ptr().cast(),
            iov_len: o.len(),
        };
    }
    if let Err(from) = send_runs(fd, &runs, &sizes, names, lens, b) {
        // GSO refused (an old kernel, a path without checksum offload): stop using it and
        // send the rest one answer per message.
        *gso = false;
        let single: Vec<(usize, usize)> = (from..m).map(|k| (k, 1)).collect();
        let _ = send_runs(fd, &single, &sizes, names, lens, b);
    }
}

/// One message per run (first answer, count) of the answers whose iovecs are in `b.iovs`, a
/// run of more than one with a UDP_SEGMENT of its answers' size; all in `sendmmsg` calls. An
/// answer that cannot go (its client vanished, say) is skipped, as a lost UDP answer the
/// client retries. Err(first answer of the run) when the kernel refuses a GSO run.
fn send_runs(
    fd: i32,
    runs: &[(usize, usize)],
    sizes: &[usize],
    names: &[libc::sockaddr_storage],
    lens: &[libc::socklen_t],
    b: &mut SendBufs,
) -> std::result::Result<(), usize> {
    for (i, &(first, n)) in runs.iter().enumerate() {
        let h = &mut b.hdrs[i];
        h.msg_len = 0;
        h.msg_hdr.msg_name = (&names[first] as *const libc::sockaddr_storage)
            .cast_mut()
            .cast();
        h.msg_hdr.msg_namelen = lens[first];
        h.msg_hdr.msg_iov = &mut b.iovs[first];
        h.msg_hdr.msg_iovlen = n as _;
        h.msg_hdr.msg_flags = 0;
        if n > 1 {
            let ctrl = &mut b.ctrl[i];
            h.msg_hdr.msg_control = ctrl.as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE of a u16 fits the 32-byte buffer; the header and its data are
            // written inside it.
            unsafe {
                h.msg_hdr.msg_controllen = libc::CMSG_SPACE(2) as _;
                let c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                (*c).cmsg_level = libc::SOL_UDP;
                (*c).cmsg_type = libc::UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(2) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), sizes[first] as u16);
            }
        } else {
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
        }
    }
    let mut sent = 0;
    while sent < runs.len() {
        // SAFETY: headers sent.. point at live iovecs, names and control buffers.
        let r =
            unsafe { libc::sendmmsg(fd, b.hdrs[sent..].as_mut_ptr(), (runs.len() - sent) as _, 0) };
        if r > 0 {
            sent += r as usize;
            continue;
        }
        let (first, n) = runs[sent];
        if n > 1 {
            return Err(first);
        }
        sent += 1;
    }
    Ok(())
}

/// A hint to the scheduler that this thread runs briefly and wants to run soon after waking:
/// a short EEVDF slice (`sched_attr.sched_runtime`, Linux 6.6+; 0.1 ms) earns an early virtual
/// deadline, so an answer is not queued behind a CPU-bound task for a full default slice
/// (about 3 ms on this kind of machine, which showed as a 3 ms p99 at only 1000 queries/s).
/// Plain SCHED_OTHER at nice 0: no real-time priority, no extra CPU share. Older kernels ignore
/// the field or refuse the call, and nothing changes.
fn latency_sensitive() {
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        sched_policy: u32,
        sched_flags: u64,
        sched_nice: i32,
        sched_priority: u32,
        sched_runtime: u64,
        sched_deadline: u64,
        sched_period: u64,
    }
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        sched_policy: libc::SCHED_OTHER as u32,
        sched_flags: 0,
        sched_nice: 0,
        sched_priority: 0,
        sched_runtime: 100_000,
        sched_deadline: 0,
        sched_period: 0,
    };
    // SAFETY: sched_setattr(0 = this thread, attr, flags 0) reads `size` bytes of `attr`.
    unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    // Short sleeps of this thread end on time (the default slack is 50 µs).
    // SAFETY: PR_SET_TIMERSLACK takes a value in nanoseconds and affects this thread only.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };
}

fn sockaddr_to_std(ss: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET if len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::from((
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::from((
                std::net::Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
            )))
        }
        _ => None,
    }
}

async fn upstream_loop(inner: std::sync::Weak<Inner>, up: Arc<Upstream>) {
    let mut buf = vec![0u8; 65535];
    loop {
        let Ok((n, src)) = up.sock.recv_from(&mut buf).await else {
            continue;
        };
        if n < 12 {
            continue;
        }
        let id = u16::from_be_bytes([buf[0], buf[1]]);
        let p = {
            let Ok(mut pending) = up.pending.lock() else {
                continue;
            };
            match pending.get(&id) {
                Some(p) if p.upstream == src => pending.remove(&id),
                _ => None,
            }
        };
        let Some(p) = p else { continue };
        let Some(inner) = inner.upgrade() else { return };
        buf[..2].copy_from_slice(&p.client_id.to_be_bytes());
        let _ = p.reply.send_to(&buf[..n], p.client);
        inner.store(p.key, &buf[..n]);
    }
}

async fn tcp_loop(inner: Arc<Inner>, network: String, listener: TcpListener) {
    loop {
        let Ok((stream, src)) = listener.accept().await else {
            continue;
        };
        let inner = inner.clone();
        let network = network.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(
                Duration::from_secs(60),
                tcp_conn(inner, network, stream, src),
            )
            .await;
        });
    }
}

async fn read_frame(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let len = s.read_u16().await? as usize;
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame(s: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    let len =
        u16::try_from(data.len()).map_err(|_| std::io::Error::other("DNS message too long"))?;
    let mut out = Vec::with_capacity(data.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data);
    s.write_all(&out).await
}

async fn tcp_conn(
    inner: Arc<Inner>,
    network: String,
    mut stream: TcpStream,
    src: SocketAddr,
) -> std::io::Result<()> {
    loop {
        let q = match tokio::time::timeout(TCP_IDLE, read_frame(&mut stream)).await {
            Ok(r) => r?,
            Err(_) => return Ok(()),
        };
        let mut fast = Vec::new();
        if inner.answer_fast(&network, v4(src), &q, &mut fast, 65535) == Fast::Answered {
            write_frame(&mut stream, &fast).await?;
            continue;
        }
        let out = match inner.handle(&network, v4(src), &q) {
            Action::Reply(v) => v,
            Action::Drop => continue,
            Action::Forward {
                query,
                id,
                upstreams,
                key,
            } => {
                let target = inner.pick(&upstreams);
                match tokio::time::timeout(UPSTREAM_TIMEOUT, tcp_forward(target, &query)).await {
                    Ok(Ok(mut resp)) if resp.len() >= 2 => {
                        inner.store(key, &resp);
                        resp[..2].copy_from_slice(&id.to_be_bytes());
                        resp
                    }
                    _ => servfail(id, &query),
                }
            }
        };
        write_frame(&mut stream, &out).await?;
    }
}

async fn tcp_forward(target: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(target).await?;
    write_frame(&mut s, query).await?;
    read_frame(&mut s).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recs() -> Records {
        let mut r = Records::default();
        r.add_network("front", "10.89.0.1".parse().unwrap(), false);
        r.add_network("back", "10.89.1.1".parse().unwrap(), true);
        for (i, ip) in ["10.89.0.2", "10.89.0.3", "10.89.0.4"].iter().enumerate() {
            r.add(
                "front",
                &["web".into(), format!("proj-web-{}", i + 1), "www".into()],
                ip.parse().unwrap(),
            );
        }
        r.add(
            "back",
            &["db".into(), "proj-db-1".into()],
            "10.89.1.2".parse().unwrap(),
        );
        r
    }

    #[test]
    fn lookup_scopes_by_network() {
        let r = recs();
        match r.lookup("front", None, "web.", RecordType::A) {
            Answer::A(v) => assert_eq!(v.len(), 3),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            r.lookup("front", None, "PROJ-WEB-2", RecordType::A),
            Answer::A(vec!["10.89.0.3".parse().unwrap()])
        );
        assert_eq!(
            r.lookup("front", None, "www", RecordType::A).clone(),
            r.lookup("front", None, "web", RecordType::A)
        );
        assert_eq!(
            r.lookup("front", None, "db", RecordType::A),
            Answer::NxDomain
        );
        assert_eq!(
            r.lookup("back", None, "db", RecordType::A),
            Answer::A(vec!["10.89.1.2".parse().unwrap()])
        );
        assert_eq!(
            r.lookup("front", None, "web", RecordType::AAAA),
            Answer::NoData
        );
        assert_eq!(
            r.lookup("nope", None, "web", RecordType::A),
            Answer::Refused
        );
    }

    #[test]
    fn forwarding_rules() {
        let mut r = recs();
        assert_eq!(
            r.lookup("front", None, "example.test", RecordType::A),
            Answer::Forward(None)
        );
        // Internal networks never forward.
        assert_eq!(
            r.lookup("back", None, "example.test", RecordType::A),
            Answer::NxDomain
        );
        let up: SocketAddr = "127.0.0.1:5300".parse().unwrap();
        r.set_upstreams(vec![up]);
        assert_eq!(
            r.lookup("front", None, "example.test", RecordType::A),
            Answer::Forward(Some(vec![up]))
        );
        let own: SocketAddr = "127.0.0.1:5301".parse().unwrap();
        r.set_container_upstreams("10.89.0.3".parse().unwrap(), vec![own]);
        assert_eq!(
            r.lookup(
                "front",
                Some("10.89.0.3".parse().unwrap()),
                "example.test",
                RecordType::A
            ),
            Answer::Forward(Some(vec![own]))
        );
        assert_eq!(
            r.lookup(
                "front",
                Some("10.89.0.2".parse().unwrap()),
                "example.test",
                RecordType::A
            ),
            Answer::Forward(Some(vec![up]))
        );
    }

    #[test]
    fn requesters_outside_the_subnet_are_refused() {
        let mut r = recs();
        // Without a subnet anyone on the listener gets answers.
        assert!(matches!(
            r.lookup(
                "front",
                Some("10.89.7.7".parse().unwrap()),
                "web",
                RecordType::A
            ),
            Answer::A(_)
        ));
        r.set_subnet("front", "10.89.0.0/24".parse().unwrap());
        assert_eq!(
            r.lookup(
                "front",
                Some("10.89.7.7".parse().unwrap()),
                "web",
                RecordType::A
            ),
            Answer::Refused
        );
        assert!(matches!(
            r.lookup(
                "front",
                Some("10.89.0.9".parse().unwrap()),
                "web",
                RecordType::A
            ),
            Answer::A(_)
        ));
        assert!(matches!(
            r.lookup(
                "front",
                Some("10.89.0.1".parse().unwrap()),
                "web",
                RecordType::A
            ),
            Answer::A(_)
        ));
        assert!(matches!(
            r.lookup("front", None, "web", RecordType::A),
            Answer::A(_)
        ));
    }

    #[test]
    fn reverse_lookups() {
        let r = recs();
        assert_eq!(
            parse_ptr_name("3.0.89.10.in-addr.arpa."),
            Some("10.89.0.3".parse().unwrap())
        );
        assert_eq!(parse_ptr_name("0.89.10.in-addr.arpa"), None);
        assert_eq!(
            r.lookup("front", None, "3.0.89.10.in-addr.arpa.", RecordType::PTR),
            Answer::Ptr("web".into())
        );
        assert_eq!(
            r.lookup("front", None, "9.9.9.9.in-addr.arpa.", RecordType::PTR),
            Answer::Forward(None)
        );
        assert_eq!(
            r.lookup("back", None, "9.9.9.9.in-addr.arpa.", RecordType::PTR),
            Answer::NxDomain
        );
    }

    /// Records built whole from `owners`, as the supervisor did before `Incremental`.
    fn rebuilt(
        nets: &[(String, Ipv4Addr, bool, Option<ipnet::Ipv4Net>)],
        owners: &HashMap<String, Vec<Entry>>,
        upstreams: &[SocketAddr],
    ) -> Records {
        let mut r = Records::default();
        r.set_upstreams(upstreams.to_vec());
        for (k, gw, internal, subnet) in nets {
            r.add_network(k, *gw, *internal);
            if let Some(s) = subnet {
                r.set_subnet(k, *s);
            }
        }
        for e in owners.values().flatten() {
            r.add(&e.network, &e.names, e.ip);
            if !e.upstreams.is_empty() {
                r.set_container_upstreams(e.ip, e.upstreams.clone());
            }
        }
        r
    }

    #[test]
    fn differences_give_the_records_a_rebuild_gives() {
        let nets = vec![
            (
                "a".to_string(),
                Ipv4Addr::new(10, 9, 0, 1),
                false,
                Some("10.9.0.0/24".parse().unwrap()),
            ),
            ("b".to_string(), Ipv4Addr::new(10, 9, 1, 1), true, None),
        ];
        let ups: Vec<SocketAddr> = vec!["192.0.2.53:53".parse().unwrap()];
        let mut inc = Incremental::default();
        assert!(inc.set_networks(nets.clone()));
        assert!(!inc.set_networks(nets.clone()));
        assert!(inc.set_upstreams(ups.clone()));
        let mut want: HashMap<String, Vec<Entry>> = HashMap::new();
        // A fixed pseudo-random walk: owners (services) gain and lose replicas, names are
        // shared between owners (a common alias), some replicas have their own upstreams.
        let mut x: u64 = 0x2545F4914F6CDD1D;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        for step in 0..400 {
            let owner = format!("s{}", next(12));
            let n = next(4);
            let o: u64 = owner[1..].parse().unwrap();
            let entries: Vec<Entry> = (0..n)
                .map(|r| {
                    let net = if (o + r).is_multiple_of(3) { "b" } else { "a" };
                    let third = if net == "a" { 0 } else { 1 };
                    let mut names = vec![owner.clone(), format!("p-{owner}-{r}")];
                    if o.is_multiple_of(4) {
                        names.push("shared".into());
                    }
                    Entry {
                        network: net.into(),
                        names,
                        ip: Ipv4Addr::new(10, 9, third, (o * 10 + r + 2) as u8),
                        upstreams: if o == 5 { ups.clone() } else { vec![] },
                    }
                })
                .collect();
            let before = inc.snapshot();
            let changed = inc.set(&owner, entries.clone());
            let prev = want
                .insert(owner.clone(), entries.clone())
                .unwrap_or_default();
            assert_eq!(changed, prev != entries, "step {step}");
            want.retain(|_, v| !v.is_empty());
            assert_eq!(inc.snapshot(), rebuilt(&nets, &want, &ups), "step {step}");
            // A snapshot taken before is not changed by it (copy on write).
            let mut owners_before = want.clone();
            owners_before.insert(owner.clone(), prev);
            owners_before.retain(|_, v| !v.is_empty());
            assert_eq!(before, rebuilt(&nets, &owners_before, &ups), "step {step}");
        }
        assert!(inc.owners().count() <= 12);
        // Everything gone: no name left.
        for o in 0..12 {
            inc.set(&format!("s{o}"), vec![]);
        }
        assert_eq!(
            inc.snapshot().name_count("a") + inc.snapshot().name_count("b"),
            0
        );
        // A network that goes takes its names along; back, it has them again.
        let e = Entry {
            network: "b".into(),
            names: vec!["db".into()],
            ip: Ipv4Addr::new(10, 9, 1, 9),
            upstreams: vec![],
        };
        inc.set("db", vec![e]);
        inc.set_networks(nets[..1].to_vec());
        assert_eq!(
            inc.snapshot().lookup("b", None, "db", RecordType::A),
            Answer::Refused
        );
        inc.set_networks(nets.clone());
        assert_eq!(
            inc.snapshot().lookup("b", None, "db", RecordType::A),
            Answer::A(vec![Ipv4Addr::new(10, 9, 1, 9)])
        );
    }

    #[test]
    fn removal_is_a_new_snapshot() {
        let sw = ArcSwap::from_pointee(recs());
        let mut next = Records::default();
        next.add_network("front", "10.89.0.1".parse().unwrap(), false);
        next.add("front", &["web".into()], "10.89.0.2".parse().unwrap());
        sw.store(Arc::new(next));
        assert_eq!(
            sw.load().lookup("front", None, "web", RecordType::A),
            Answer::A(vec!["10.89.0.2".parse().unwrap()])
        );
        assert_eq!(
            sw.load().lookup("front", None, "proj-web-3", RecordType::A),
            Answer::NxDomain
        );
    }

    fn server_with(r: Records) -> Inner {
        Inner {
            records: Arc::new(ArcSwap::from_pointee(r)),
            listeners: Mutex::new(HashMap::new()),
            upstream: tokio::sync::OnceCell::new(),
            upstream_task: Mutex::new(None),
            default_upstreams: vec![],
            cache: Mutex::new(HashMap::new()),
            rng: AtomicU64::new(7),
            rr: AtomicUsize::new(0),
        }
    }

    fn query_bytes(id: u16, name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut q = Message::new(id, MessageType::Query, OpCode::Query);
        q.metadata.recursion_desired = true;
        q.add_query(hickory_proto::op::Query::query(
            Name::from_ascii(name).unwrap(),
            qtype,
        ));
        if let Some(size) = edns {
            let mut e = hickory_proto::op::Edns::new();
            e.set_max_payload(size);
            q.set_edns(e);
        }
        q.to_vec().unwrap()
    }

    fn sorted_answers(m: &Message) -> Vec<String> {
        let mut v: Vec<String> = m.answers.iter().map(|r| r.to_string()).collect();
        v.sort();
        v
    }

    /// The header and sections Docker's server (dockerd 20.10) gave for a service of three
    /// replicas, on both of berth's paths: A: NOERROR, QR RD RA, no AA, three records, nothing
    /// in authority or additional; AAAA of the same name: NOERROR, no record, no SOA.
    #[test]
    fn answers_have_the_shape_of_dockers() {
        let inner = server_with(recs());
        for (qtype, rcode, count) in [
            (RecordType::A, ResponseCode::NoError, 3),
            (RecordType::AAAA, ResponseCode::NoError, 0),
        ] {
            for edns in [None, Some(1232)] {
                let q = query_bytes(0x1234, "web.", qtype, edns);
                let mut out = Vec::new();
                assert_eq!(
                    inner.answer_fast("front", None, &q, &mut out, 512),
                    Fast::Answered
                );
                let Action::Reply(slow) = inner.handle("front", None, &q) else {
                    panic!("no answer");
                };
                for wire in [out, slow] {
                    let m = Message::from_vec(&wire).unwrap();
                    let what = format!("{qtype:?} edns {edns:?}");
                    assert_eq!(m.metadata.response_code, rcode, "{what}");
                    assert!(!m.metadata.authoritative, "{what}: no AA, as Docker");
                    assert!(m.metadata.recursion_desired, "{what}: RD echoed");
                    assert!(m.metadata.recursion_available, "{what}");
                    assert_eq!(m.answers.len(), count, "{what}");
                    assert!(m.answers.iter().all(|a| a.ttl == LOCAL_TTL), "{what}");
                    assert!(m.authorities.is_empty(), "{what}: no SOA on NODATA");
                    assert!(m.additionals.is_empty(), "{what}");
                }
            }
        }
        // Without RD in the query, none in the answer.
        let mut q = query_bytes(7, "web.", RecordType::A, None);
        q[2] &= !0x01;
        let mut out = Vec::new();
        inner.answer_fast("front", None, &q, &mut out, 512);
        assert!(!Message::from_vec(&out).unwrap().metadata.recursion_desired);
    }

    #[test]
    fn fast_path_agrees_with_the_general_path() {
        let mut r = recs();
        r.set_subnet("back", "10.89.1.0/24".parse().unwrap());
        let inner = server_with(r);
        type Case<'a> = (&'a str, &'a str, Option<Ipv4Addr>, RecordType, Option<u16>);
        let cases: Vec<Case> = vec![
            ("front", "web.", None, RecordType::A, None),
            ("front", "WeB.", None, RecordType::A, None),
            ("front", "proj-web-2", None, RecordType::A, None),
            ("front", "web.", None, RecordType::AAAA, None),
            ("front", "web.", None, RecordType::A, Some(1232)),
            ("front", "nothere.", None, RecordType::A, None),
            (
                "front",
                "3.0.89.10.in-addr.arpa.",
                None,
                RecordType::PTR,
                None,
            ),
            (
                "back",
                "db.",
                Some("10.89.7.7".parse().unwrap()),
                RecordType::A,
                None,
            ),
            (
                "back",
                "db.",
                Some("10.89.1.9".parse().unwrap()),
                RecordType::A,
                None,
            ),
            ("back", "example.test.", None, RecordType::A, None),
            ("nowhere", "web.", None, RecordType::A, None),
        ];
        for (net, name, from, qtype, edns) in cases {
            let q = query_bytes(0xbeef, name, qtype, edns);
            let mut out = Vec::new();
            assert_eq!(
                inner.answer_fast(net, from, &q, &mut out, 512),
                Fast::Answered,
                "{net} {name} {qtype:?}"
            );
            let fast = Message::from_vec(&out).expect("fast answer parses");
            let Action::Reply(slow) = inner.handle(net, from, &q) else {
                panic!("general path did not answer {name}");
            };
            let slow = Message::from_vec(&slow).unwrap();
            let what = format!("{net} {name} {qtype:?}");
            assert_eq!(fast.metadata.id, 0xbeef, "{what}");
            assert_eq!(fast.metadata.message_type, MessageType::Response, "{what}");
            assert_eq!(
                fast.metadata.response_code, slow.metadata.response_code,
                "{what}"
            );
            assert_eq!(
                fast.metadata.authoritative, slow.metadata.authoritative,
                "{what}"
            );
            assert_eq!(
                fast.metadata.recursion_desired,
                slow.metadata.recursion_desired
            );
            assert_eq!(
                fast.metadata.recursion_available,
                slow.metadata.recursion_available
            );
            assert!(!fast.metadata.truncation);
            assert_eq!(
                fast.queries, slow.queries,
                "{what}: question copied with its case"
            );
            assert_eq!(sorted_answers(&fast), sorted_answers(&slow), "{what}");
        }
        // Forwarded names, answers to answers and other opcodes are not the fast path's.
        let mut out = Vec::new();
        let fwd = query_bytes(1, "example.test.", RecordType::A, None);
        assert_eq!(
            inner.answer_fast("front", None, &fwd, &mut out, 512),
            Fast::Slow
        );
        let mut resp = query_bytes(1, "web.", RecordType::A, None);
        resp[2] |= 0x80;
        assert_eq!(
            inner.answer_fast("front", None, &resp, &mut out, 512),
            Fast::Drop
        );
        let mut notify = query_bytes(1, "web.", RecordType::A, None);
        notify[2] |= 4 << 3;
        assert_eq!(
            inner.answer_fast("front", None, &notify, &mut out, 512),
            Fast::Slow
        );
        assert_eq!(
            inner.answer_fast("front", None, &[0; 5], &mut out, 512),
            Fast::Drop
        );
        // Cut short anywhere: never a panic, never an answer built from garbage.
        let full = query_bytes(9, "web.", RecordType::A, None);
        for n in 12..full.len() {
            assert_eq!(
                inner.answer_fast("front", None, &full[..n], &mut out, 512),
                Fast::Slow,
                "cut at {n}"
            );
        }
    }

    #[test]
    fn big_answers_are_truncated_for_plain_udp_only() {
        let mut r = Records::default();
        r.add_network("front", "10.89.0.1".parse().unwrap(), false);
        for i in 0..60u8 {
            r.add("front", &["many".into()], Ipv4Addr::new(10, 89, 0, 10 + i));
        }
        let inner = server_with(r);
        let mut out = Vec::new();
        let plain = query_bytes(3, "many.", RecordType::A, None);
        assert_eq!(
            inner.answer_fast("front", None, &plain, &mut out, 512),
            Fast::Answered
        );
        assert!(out.len() <= 512);
        let m = Message::from_vec(&out).unwrap();
        assert!(m.metadata.truncation, "a cut answer says so");
        assert!(!m.answers.is_empty() && m.answers.len() < 60);
        let edns = query_bytes(3, "many.", RecordType::A, Some(4096));
        assert_eq!(
            inner.answer_fast("front", None, &edns, &mut out, 512),
            Fast::Answered
        );
        let m = Message::from_vec(&out).unwrap();
        assert!(!m.metadata.truncation);
        assert_eq!(m.answers.len(), 60);
        assert_eq!(
            inner.answer_fast("front", None, &plain, &mut out, 65535),
            Fast::Answered
        );
        assert_eq!(Message::from_vec(&out).unwrap().answers.len(), 60);
    }

    /// A fake upstream on loopback that answers `count` queries with an A record of TTL 60 and
    /// then goes silent; returns its address and how many queries it saw.
    async fn fake_upstream(count: usize) -> (SocketAddr, Arc<AtomicUsize>) {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let s2 = seen.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                    return;
                };
                let k = s2.fetch_add(1, Ordering::SeqCst);
                if k >= count {
                    continue;
                }
                let q = Message::from_vec(&buf[..n]).unwrap();
                let mut r = Message::response(q.metadata.id, OpCode::Query);
                let qq = q.queries[0].clone();
                r.add_answer(Record::from_rdata(
                    qq.name().clone(),
                    60,
                    RData::A(A("10.7.7.7".parse().unwrap())),
                ));
                r.add_query(qq);
                sock.send_to(&r.to_vec().unwrap(), from).await.unwrap();
            }
        });
        (addr, seen)
    }

    async fn ask(server: SocketAddr, name: &str, id: u16, wait_ms: u64) -> Option<Message> {
        let mut q = Message::new(id, MessageType::Query, OpCode::Query);
        q.metadata.recursion_desired = true;
        q.add_query(hickory_proto::op::Query::query(
            Name::from_ascii(name).unwrap(),
            RecordType::A,
        ));
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        c.send_to(&q.to_vec().unwrap(), server).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let (n, _) = tokio::time::timeout(Duration::from_millis(wait_ms), c.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        Message::from_vec(&buf[..n]).ok()
    }

    #[tokio::test]
    async fn forwarded_answers_keep_the_client_id_and_are_cached() {
        let (up, seen) = fake_upstream(1).await;
        let server = DnsServer::start();
        let mut r = recs();
        r.set_upstreams(vec![up]);
        server.set_records(r);
        let addr: SocketAddr = "127.0.0.1:53532".parse().unwrap();
        server.add_listener_at("front", addr).await.unwrap();
        let first = ask(addr, "cached.example.", 0x1234, 2000)
            .await
            .expect("forwarded answer");
        assert_eq!(first.metadata.id, 0x1234);
        assert_eq!(first.answers.len(), 1);
        // The upstream is silent now: the second answer can only come from the cache.
        let second = ask(addr, "CACHED.example.", 0x4321, 2000)
            .await
            .expect("cached answer");
        assert_eq!(second.metadata.id, 0x4321);
        assert_eq!(
            second.answers[0].data,
            RData::A(A("10.7.7.7".parse().unwrap()))
        );
        assert!(second.answers[0].ttl <= 60);
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        // A name the upstream never answers: the client gets nothing back from us either (it
        // retries), and nothing is cached.
        assert!(ask(addr, "other.example.", 7, 300).await.is_none());
        assert_eq!(seen.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn gso_runs_group_one_client_and_one_length() {
        let all_same = |_: usize, _: usize| true;
        assert_eq!(gso_runs(&[], all_same), vec![]);
        assert_eq!(gso_runs(&[40, 40, 40], all_same), vec![(0, 3)]);
        assert_eq!(
            gso_runs(&[40, 40, 60, 60, 40], all_same),
            vec![(0, 2), (2, 2), (4, 1)]
        );
        // Another client breaks a run even at the same length.
        let dest = [1, 1, 2, 2, 1];
        assert_eq!(
            gso_runs(&[40; 5], |a, b| dest[a] == dest[b]),
            vec![(0, 2), (2, 2), (4, 1)]
        );
        // At most GSO_MAX_SEGMENTS datagrams and GSO_MAX_BYTES bytes per run.
        let many = vec![10; GSO_MAX_SEGMENTS + 3];
        assert_eq!(
            gso_runs(&many, all_same),
            vec![(0, GSO_MAX_SEGMENTS), (GSO_MAX_SEGMENTS, 3)]
        );
        let big = vec![30_000; 3];
        assert_eq!(gso_runs(&big, all_same), vec![(0, 2), (2, 1)]);
    }

    #[test]
    fn answers_are_grouped_by_client_keeping_their_order() {
        let addr = |port: u16| {
            // SAFETY: all-zero is a valid sockaddr_storage.
            let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: port.to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(Ipv4Addr::new(10, 0, 0, 2)).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: a sockaddr_in fits in a sockaddr_storage.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            ss
        };
        let ports = [7u16, 9, 7, 9, 7];
        let mut outs: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10]).collect();
        let mut names: Vec<libc::sockaddr_storage> = ports.iter().map(|p| addr(*p)).collect();
        let mut lens = vec![std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t; 5];
        group_by_client(5, &mut outs, &mut names, &mut lens);
        let order: Vec<u8> = outs.iter().map(|o| o[0]).collect();
        assert_eq!(order, vec![0, 2, 4, 1, 3]);
        let got: Vec<SocketAddr> = (0..5)
            .map(|k| sockaddr_to_std(&names[k], lens[k]).unwrap())
            .collect();
        assert_eq!(got[0].port(), 7);
        assert_eq!(got[2].port(), 7);
        assert_eq!(got[3].port(), 9);
        // Then one GSO run per client.
        let sizes: Vec<usize> = outs.iter().map(|o| o.len()).collect();
        assert_eq!(
            gso_runs(&sizes, |a, b| got[a] == got[b]),
            vec![(0, 3), (3, 2)]
        );
    }

    /// A client pipelining many queries on one socket (as dnsperf and caching resolvers do):
    /// answers of one length to it leave as UDP GSO trains, and must still arrive as one
    /// datagram per answer, each whole and matching its query.
    #[tokio::test]
    async fn pipelined_queries_on_one_socket_get_every_answer() {
        let server = DnsServer::start();
        let mut r = recs();
        r.set_upstreams(vec![]);
        server.set_records(r);
        let addr: SocketAddr = "127.0.0.1:53533".parse().unwrap();
        server.add_listener_at("front", addr).await.unwrap();
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // 400 queries, up to 64 in flight (dnsperf keeps 100): first "web." (3 records), then
        // "nothere." (NXDOMAIN), so runs of equal answers form.
        const N: u16 = 400;
        const WINDOW: u16 = 64;
        let send = |id: u16| {
            let name = if id < N / 2 { "web." } else { "nothere." };
            query_bytes(id, name, RecordType::A, None)
        };
        let mut next = 0u16;
        while next < WINDOW {
            c.send_to(&send(next), addr).await.unwrap();
            next += 1;
        }
        let mut seen = vec![false; N as usize];
        let mut buf = vec![0u8; 65536];
        for _ in 0..N {
            let (n, _) = tokio::time::timeout(Duration::from_secs(3), c.recv_from(&mut buf))
                .await
                .expect("every answer in time")
                .unwrap();
            let m = Message::from_vec(&buf[..n]).expect("one whole DNS message per datagram");
            let id = m.metadata.id;
            assert!(!seen[id as usize], "answer {id} twice");
            seen[id as usize] = true;
            if id < N / 2 {
                assert_eq!(m.answers.len(), 3, "answer {id}");
            } else {
                assert_eq!(
                    m.metadata.response_code,
                    ResponseCode::NXDomain,
                    "answer {id}"
                );
            }
            if next < N {
                c.send_to(&send(next), addr).await.unwrap();
                next += 1;
            }
        }
        assert!(seen.iter().all(|s| *s));
        server.remove_listener("front");
    }

    #[tokio::test]
    async fn answers_over_udp_and_tcp_on_loopback() {
        let server = DnsServer::start();
        let mut r = recs();
        r.set_upstreams(vec![]);
        server.set_records(r);
        // A fixed high port used by no other test.
        let addr: SocketAddr = "127.0.0.1:53531".parse().unwrap();
        server.add_listener_at("front", addr).await.unwrap();
        server.add_listener_at("front", addr).await.unwrap(); // idempotent

        let mut q = Message::query();
        q.metadata.recursion_desired = true;
        q.add_query(hickory_proto::op::Query::query(
            Name::from_ascii("web.").unwrap(),
            RecordType::A,
        ));
        let bytes = q.to_vec().unwrap();
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        c.send_to(&bytes, addr).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let (n, _) = tokio::time::timeout(Duration::from_secs(2), c.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let resp = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(resp.metadata.id, q.metadata.id);
        assert_eq!(resp.answers.len(), 3);
        assert!(resp.answers.iter().all(|a| a.ttl == 0));

        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut q2 = Message::query();
        q2.add_query(hickory_proto::op::Query::query(
            Name::from_ascii("nothere.").unwrap(),
            RecordType::A,
        ));
        write_frame(&mut s, &q2.to_vec().unwrap()).await.unwrap();
        let resp = Message::from_vec(&read_frame(&mut s).await.unwrap()).unwrap();
        assert_eq!(resp.metadata.response_code, ResponseCode::NXDomain);

        server.remove_listener("front");
        assert!(server.listeners().is_empty());
        // The port is free again once the aborted tasks have been dropped.
        let mut freed = false;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if UdpSocket::bind(addr).await.is_ok() {
                freed = true;
                break;
            }
        }
        assert!(freed, "listener socket still bound after remove_listener");
    }
}
