//! nftables: one table `inet berth` shared by every project. Each project owns five base chains
//! in it (`p_<name>_<hash>_{raw,pre,out,post,fwd}`), rewritten together in one `nft -f -`
//! transaction, so a port's backends (a rolling update, a scale change) swap atomically. The
//! table goes when the last project's chains go. A host-global flock serialises berth's own
//! writers; the kernel makes each transaction atomic for everyone else.
//!
//! Per network (bridge B, subnet S):
//!   * fwd: B→B accepted (bridged traffic seen through br_netfilter), replies and DNATed
//!     (published) connections into B accepted, anything else into B dropped (no reaching a
//!     container from another network or from outside except through a published port);
//!     internal networks also drop anything leaving B.
//!   * post: masquerade S leaving by another interface (not internal); masquerade 127.0.0.0/8
//!     sources going into B (published ports on localhost, with route_localnet on B) and S→S
//!     DNATed traffic (hairpin: a container reaching a sibling through a published port).
//!
//! Per published port: `fib daddr type local` (any of the host's addresses, or the one given)
//! and protocol and port → dnat to the backend, or to `numgen random mod N map {…}` over N backends
//! (per connection, since NAT rules only see a connection's first packet), in prerouting (from
//! outside and from containers) and output (from the host itself, 127.0.0.1 included).
//!
//! Coexisting with Docker (FORWARD policy DROP in iptables-nft `table ip filter`, br_netfilter
//! with bridge-nf-call-iptables=1): netfilter runs every base chain of a hook and a drop in any of
//! them is final, so no accept in berth's table can overrule Docker's policy, and berth never
//! touches Docker's tables. Instead berth keeps its traffic out of that hook:
//!   * container↔container: bridged inside the network's own switch namespace (see
//!     `bridge::ensure`), where the host's iptables and its br_netfilter setting do not apply;
//!   * published ports from the host (127.0.0.1 and the host's addresses): DNATed in the nat
//!     output hook and sent out as locally generated traffic; replies are delivered locally
//!     (INPUT). Neither crosses FORWARD;
//!   * hairpin (a container reaching a published port of its own network through one of the
//!     host's addresses): served by the switch itself, see below.
//!
//! Hairpin in the switch. Each non-internal network's switch namespace gets its own small
//! ruleset (tables `bridge berth` and `ip berth` there, replaced in one transaction by `apply`;
//! they live and die with that namespace, nothing of them is in the host's ruleset):
//!   * bridge prerouting: a frame from a container port to one of the host's addresses (a set,
//!     refreshed on every `apply`) and to a published port whose backends are all in this
//!     network is handed to the switch's own IP stack (destination MAC set to a local address
//!     of the bridge), as is anything addressed to `bridge::HAIRPIN_SOURCE` (the replies);
//!     DNS to the network's gateway never is;
//!   * ip nat: the same DNAT as the host's, then SNAT to `bridge::HAIRPIN_SOURCE`, so the
//!     backend's replies come back through the switch (via the container's gateway, whose
//!     frames the first rule takes) and are un-NATed there. The switch routes the connection
//!     back onto its bridge (`bridge::switch_l3`): no packet of it ever reaches the host.
//!
//! The backend sees `HAIRPIN_SOURCE` as the client's address (through the host it saw the
//! gateway). TCP and UDP alike; each port of a range is a rule of its own.
//!
//! Traffic that really is routed by the host (containers to the outside world, outside clients
//! or other networks to a published port, including a container reaching a published port of a
//! container on another network through a host address) crosses FORWARD and is subject to
//! Docker's policy, like any other router's on that host: netfilter has no way around a drop,
//! and the two switches have no path to each other but through the host. Verified by hand with
//! Debian's dockerd 20.10 running (policy drop, br_netfilter on): a plain host bridge loses
//! 100% of pings. For published ports berth takes those clients off the routed path: when some
//! other table's forward hook has policy drop (`routed_traffic_blocked`, looked at by the
//! supervisor whenever `nfevents` announces a change), the project is applied with `relay`
//! set, the prerouting rules only count, and the supervisor's userland relay (`crate::relay`)
//! accepts the connections on the host and opens them again to the container. Containers
//! reaching the outside world stay routed, and so stay under that policy.

use std::fmt;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;

use crate::{check_ifname, io_err, Error, Result};

pub const TABLE: &str = "berth";
pub const LOCK: &str = "/run/lock/berth-nft.lock";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(&self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl AsRef<str> for Proto {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Proto {
    type Err = Error;
    fn from_str(s: &str) -> Result<Proto> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" | "" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            other => Err(Error::BadProtocol(other.to_string())),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetRule {
    pub bridge: String,
    pub subnet: Ipv4Net,
    pub internal: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRule {
    /// None, 0.0.0.0 or ::: every address of the host.
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub protocol: Proto,
    /// (container address, container port); several spread connections over them; none keeps
    /// the port reserved without forwarding it.
    pub backends: Vec<(Ipv4Addr, u16)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProjectFirewall {
    /// Published ports are served by the userland relay (`crate::relay`) for clients the host
    /// would have to route: the nat prerouting hook counts them and leaves them to the relay's
    /// sockets instead of DNATing them into a FORWARD hook that drops them (see
    /// `routed_traffic_blocked`). Connections from the host itself keep their DNAT.
    pub relay: bool,
    /// In relay mode: (network link, port of the relay's outbound listener on its gateway).
    /// That network's TCP to destinations the host routes out of a non-berth interface is
    /// redirected there (see `crate::relay`).
    pub outbound: Vec<(String, u16)>,
    pub project: String,
    pub networks: Vec<NetRule>,
    pub ports: Vec<PortRule>,
}

/// `p_<sanitised name>_<hash>`: a valid nft identifier, unique per project name.
pub fn chain_prefix(project: &str) -> String {
    let mut san: String = project
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    san.truncate(24);
    format!(
        "p_{san}_{}",
        crate::short_hash(&format!("project:{project}"), 6)
    )
}

const CHAINS: [(&str, &str); 5] = [
    (
        "raw",
        "type filter hook prerouting priority raw; policy accept;",
    ),
    (
        "pre",
        "type nat hook prerouting priority dstnat; policy accept;",
    ),
    ("out", "type nat hook output priority -100; policy accept;"),
    (
        "post",
        "type nat hook postrouting priority srcnat; policy accept;",
    ),
    (
        "fwd",
        "type filter hook forward priority filter; policy accept;",
    ),
];

fn wildcard(ip: Option<IpAddr>) -> Option<Option<Ipv4Addr>> {
    match ip {
        None => Some(None),
        Some(IpAddr::V4(a)) if a.is_unspecified() => Some(None),
        Some(IpAddr::V6(a)) if a.is_unspecified() => Some(None),
        Some(IpAddr::V4(a)) => Some(Some(a)),
        // An IPv6 host address cannot be DNATed to IPv4 backends.
        Some(IpAddr::V6(_)) => None,
    }
}

fn port_comment(p: Proto, host: Option<Ipv4Addr>, port: u16) -> String {
    format!(
        "berth-port {p} {} {port}",
        host.map(|h| h.to_string()).unwrap_or_else(|| "*".into())
    )
}

/// `dnat` to one backend, or spread over several per connection; a bare counter for none.
fn dnat_target(backends: &[(Ipv4Addr, u16)]) -> String {
    match backends {
        [] => "counter".to_string(),
        [(a, port)] => format!("dnat ip to {a}:{port}"),
        many => {
            let elems: Vec<String> = many
                .iter()
                .enumerate()
                .map(|(i, (a, port))| format!("{i} : {a} . {port}"))
                .collect();
            format!(
                "dnat ip to numgen random mod {} map {{ {} }}",
                many.len(),
                elems.join(", ")
            )
        }
    }
}

/// The whole transaction that replaces a project's content (pure; unit-tested).
pub fn script(fw: &ProjectFirewall) -> Result<String> {
    let pre = chain_prefix(&fw.project);
    let t = format!("inet {TABLE}");
    let mut s = format!("add table {t}\n");
    for (c, spec) in CHAINS {
        s.push_str(&format!(
            "add chain {t} {pre}_{c} {{ {spec} }}\nflush chain {t} {pre}_{c}\n"
        ));
    }
    let fwd = format!("add rule {t} {pre}_fwd");
    let post = format!("add rule {t} {pre}_post");
    // DNS to a network's own gateway is berth's DNS server, whatever is published on port 53:
    // no project's DNAT may take it (every project's chain starts with this).
    s.push_str(&format!(
        "add rule {t} {pre}_pre iifname \"{}*\" fib daddr . iif type local meta l4proto {{ tcp, udp }} th dport 53 return\n",
        crate::LINK_PREFIX
    ));
    for n in &fw.networks {
        check_ifname(&n.bridge)?;
        if n.bridge.contains('"') || n.bridge.contains('\\') {
            return Err(Error::InvalidIfName(n.bridge.clone()));
        }
    }
    // route_localnet (needed for published ports on 127.0.0.1) would also let a container
    // with raw sockets reach the host's loopback-only services by sending to 127.x through
    // the gateway (the kube-proxy CVE-2020-8558 pattern): nothing addressed to 127/8 may come
    // in from a network.
    for n in &fw.networks {
        s.push_str(&format!(
            "add rule {t} {pre}_raw iifname \"{}\" ip daddr 127.0.0.0/8 drop\n",
            n.bridge
        ));
    }
    // First what may enter each network (for all of them), then what may leave: a packet
    // between two networks must meet the "drop into B" of its destination before any
    // "accept out of A" of its source.
    for n in &fw.networks {
        let b = &n.bridge;
        s.push_str(&format!("{fwd} iifname \"{b}\" oifname \"{b}\" accept\n"));
        s.push_str(&format!(
            "{fwd} oifname \"{b}\" ct state established,related accept\n"
        ));
        if !n.internal {
            s.push_str(&format!("{fwd} oifname \"{b}\" ct status dnat accept\n"));
        }
        s.push_str(&format!("{fwd} oifname \"{b}\" drop\n"));
    }
    for n in &fw.networks {
        let b = &n.bridge;
        let sn = n.subnet.trunc();
        if n.internal {
            s.push_str(&format!("{fwd} iifname \"{b}\" drop\n"));
        } else {
            s.push_str(&format!("{fwd} iifname \"{b}\" accept\n"));
            s.push_str(&format!(
                "{post} ip saddr {sn} oifname != \"{b}\" masquerade\n"
            ));
        }
        s.push_str(&format!(
            "{post} oifname \"{b}\" ip saddr 127.0.0.0/8 masquerade\n"
        ));
        s.push_str(&format!(
            "{post} oifname \"{b}\" ip saddr {sn} ct status dnat masquerade\n"
        ));
    }
    for (link, port) in &fw.outbound {
        check_ifname(link)?;
        s.push_str(&format!(
            "add rule {t} {pre}_pre iifname \"{link}\" fib daddr type unicast fib daddr oifname != \"{}*\" meta l4proto tcp redirect to :{port}\n",
            crate::LINK_PREFIX
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for p in &fw.ports {
        let Some(host) = wildcard(p.host_ip) else {
            tracing::warn!(
                "port {}: IPv6 host address {:?} not supported, skipped",
                p.host_port,
                p.host_ip
            );
            continue;
        };
        if !seen.insert((p.protocol, host, p.host_port)) {
            return Err(Error::PortInUse {
                protocol: p.protocol.to_string(),
                host_ip: host.map(|h| h.to_string()).unwrap_or_else(|| "*".into()),
                port: p.host_port,
                by: " (twice in one project)".into(),
            });
        }
        let m = format!(
            "fib daddr type local{} meta l4proto {} th dport {}",
            host.map(|h| format!(" ip daddr {h}")).unwrap_or_default(),
            p.protocol,
            p.host_port
        );
        let target = dnat_target(&p.backends);
        let comment = port_comment(p.protocol, host, p.host_port);
        // The prerouting rule stays with its comment in relay mode: other projects find the
        // port taken by it (`published_by_other`).
        let pre_target = if fw.relay { "counter" } else { &target };
        s.push_str(&format!(
            "add rule {t} {pre}_pre {m} {pre_target} comment \"{comment}\"\n"
        ));
        s.push_str(&format!(
            "add rule {t} {pre}_out {m} {target} comment \"{comment}\"\n"
        ));
    }
    Ok(s)
}

/// A published port the switch of a network serves itself (hairpin): the host address it is
/// published on (None: all of them) and its rule.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hairpin {
    host: Option<Ipv4Addr>,
    rule: PortRule,
}

/// The published ports that the switch of network `n` serves for its own containers: those
/// whose every rule for that protocol and port (on an address a container can reach: not
/// 127/8) forwards to backends all inside `n`. Others are left to the host, which serves them
/// as before (routed, so through its FORWARD hook). None for internal networks, nor for a
/// subnet that holds `bridge::HAIRPIN_SOURCE` (a container could have that address).
fn hairpin_ports(n: &NetRule, ports: &[PortRule]) -> Vec<Hairpin> {
    if n.internal || n.subnet.contains(&crate::bridge::HAIRPIN_SOURCE) {
        return vec![];
    }
    let reachable: Vec<(Option<Ipv4Addr>, &PortRule)> = ports
        .iter()
        .filter_map(|p| match wildcard(p.host_ip) {
            Some(Some(a)) if a.is_loopback() => None,
            Some(h) => Some((h, p)),
            None => None,
        })
        .collect();
    let served = |p: &PortRule| {
        !p.backends.is_empty() && p.backends.iter().all(|(a, _)| n.subnet.contains(a))
    };
    reachable
        .iter()
        .filter(|(_, p)| {
            reachable
                .iter()
                .filter(|(_, q)| q.protocol == p.protocol && q.host_port == p.host_port)
                .all(|(_, q)| served(q))
        })
        .map(|(h, p)| Hairpin {
            host: *h,
            rule: (*p).clone(),
        })
        .collect()
}

/// The transaction that replaces the ruleset of network `n`'s switch namespace (see the module
/// docs; pure, unit-tested): tables `bridge berth` and `ip berth`, or none at all when the
/// switch serves no port. `hosts`: the host's addresses; `mac`: a local address of the switch's
/// bridge (`bridge::switch_l3`).
fn switch_script(n: &NetRule, ports: &[Hairpin], hosts: &[Ipv4Addr], mac: [u8; 6]) -> String {
    let mut s = String::new();
    for t in ["bridge berth", "ip berth"] {
        s.push_str(&format!("add table {t}\ndelete table {t}\n"));
    }
    if ports.is_empty() {
        return s;
    }
    let src = crate::bridge::HAIRPIN_SOURCE;
    let to_stack = format!(
        "ether daddr set {} meta pkttype set host accept",
        crate::endpoint::format_mac(&mac)
    );
    let hosts_set = |t: &str| {
        let mut s = format!("add set {t} hosts {{ type ipv4_addr; }}\n");
        if !hosts.is_empty() {
            let list: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
            s.push_str(&format!(
                "add element {t} hosts {{ {} }}\n",
                list.join(", ")
            ));
        }
        s
    };
    let mut wild = vec![];
    let mut pinned = vec![];
    for h in ports {
        let (proto, port) = (h.rule.protocol, h.rule.host_port);
        match h.host {
            None => wild.push(format!("{proto} . {port}")),
            Some(a) => pinned.push(format!("{a} . {proto} . {port}")),
        }
    }
    wild.sort();
    wild.dedup();
    pinned.sort();
    pinned.dedup();

    let b = "bridge berth";
    s.push_str(&format!("add table {b}\n"));
    s.push_str(&hosts_set(b));
    s.push_str(&format!(
        "add set {b} wild {{ type inet_proto . inet_service; }}\n"
    ));
    if !wild.is_empty() {
        s.push_str(&format!("add element {b} wild {{ {} }}\n", wild.join(", ")));
    }
    s.push_str(&format!(
        "add set {b} pinned {{ type ipv4_addr . inet_proto . inet_service; }}\n"
    ));
    if !pinned.is_empty() {
        s.push_str(&format!(
            "add element {b} pinned {{ {} }}\n",
            pinned.join(", ")
        ));
    }
    // Priority -300 (dstnat): before anything else of the bridge, which has no other rule.
    s.push_str(&format!(
        "add chain {b} pre {{ type filter hook prerouting priority -300; policy accept; }}\n"
    ));
    let rule = format!("add rule {b} pre");
    s.push_str(&format!(
        "{rule} iifname \"{}\" accept\n",
        crate::bridge::SWITCH_UPLINK
    ));
    s.push_str(&format!("{rule} ip daddr {src} {to_stack}\n"));
    s.push_str(&format!(
        "{rule} ip daddr {} meta l4proto {{ tcp, udp }} th dport 53 accept\n",
        n.subnet.trunc()
    ));
    s.push_str(&format!(
        "{rule} ip daddr @hosts meta l4proto . th dport @wild {to_stack}\n"
    ));
    s.push_str(&format!(
        "{rule} ip daddr . meta l4proto . th dport @pinned {to_stack}\n"
    ));

    let t = "ip berth";
    s.push_str(&format!("add table {t}\n"));
    s.push_str(&hosts_set(t));
    s.push_str(&format!(
        "add chain {t} pre {{ type nat hook prerouting priority dstnat; policy accept; }}\n"
    ));
    s.push_str(&format!(
        "add chain {t} post {{ type nat hook postrouting priority srcnat; policy accept; }}\n"
    ));
    // In the host's order, so the same rule wins.
    for h in ports {
        let p = &h.rule;
        let daddr = h
            .host
            .map(|a| a.to_string())
            .unwrap_or_else(|| "@hosts".into());
        s.push_str(&format!(
            "add rule {t} pre ip daddr {daddr} meta l4proto {} th dport {} {} comment \"{}\"\n",
            p.protocol,
            p.host_port,
            dnat_target(&p.backends),
            port_comment(p.protocol, h.host, p.host_port)
        ));
    }
    s.push_str(&format!(
        "add rule {t} post ct status dnat snat ip to {src}\n"
    ));
    s
}

/// The host's IPv4 addresses a container can reach (127/8 cannot be).
fn host_addresses() -> Result<Vec<Ipv4Addr>> {
    let mut v: Vec<Ipv4Addr> = crate::nl::Nl::new()?
        .dump_addresses()?
        .into_iter()
        .map(|(_, a)| a.addr())
        .filter(|a| !a.is_loopback() && !a.is_unspecified() && *a != crate::bridge::HAIRPIN_SOURCE)
        .collect();
    v.sort();
    v.dedup();
    Ok(v)
}

/// What this process last wrote into each switch: bridge name → (namespace identity, the
/// script with a zero MAC). Saves an `nft` run per unchanged switch on every `apply`. A new
/// namespace (other identity) is always written; `bridge` forgets the ones it removes or
/// makes, since a namespace's inode number can come back.
type Written = std::collections::HashMap<String, ((u64, u64), String)>;
static WRITTEN: std::sync::Mutex<Option<Written>> = std::sync::Mutex::new(None);

fn ns_identity(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

pub(crate) fn forget_switch(bridge: &str) {
    if let Some(w) = WRITTEN.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        w.remove(bridge);
    }
}

/// Rewrite the ruleset of each of the project's switches (see the module docs). A switch that
/// cannot be set up is only logged: its containers then reach their published ports through
/// the host, as without it.
fn apply_switches(fw: &ProjectFirewall) {
    let hosts = host_addresses().unwrap_or_else(|e| {
        tracing::warn!("listing the host's addresses: {e}");
        vec![]
    });
    for n in fw.networks.iter().filter(|n| !n.internal) {
        let ns = crate::bridge::switch_netns(&n.bridge);
        if !crate::netns::is_mounted_ns(&ns) {
            continue; // a plain host bridge (external network): nothing of berth's in it
        }
        let ports = hairpin_ports(n, &fw.ports);
        let id = ns_identity(&ns);
        let fingerprint = switch_script(n, &ports, &hosts, [0; 6]);
        let written = |w: &Option<Written>| {
            w.as_ref()
                .and_then(|w| w.get(&n.bridge))
                .is_some_and(|(i, f)| Some(*i) == id && *f == fingerprint)
        };
        if written(&WRITTEN.lock().unwrap_or_else(|e| e.into_inner())) {
            // Unchanged; but br_netfilter, if loaded since (Docker loads it), has turned the
            // switch's bridge-nf-call-iptables back on, which breaks a container reaching
            // itself through its published port (the bridge will not send a frame back out of
            // the port it came in by). Cheap to set again.
            let _ = crate::netns::run_in(&ns, || {
                crate::bridge::no_bridge_netfilter();
                Ok(())
            });
            continue;
        }
        let (n2, hosts) = (n.clone(), hosts.clone());
        let res = crate::netns::run_in(&ns, move || {
            let mac = if ports.is_empty() {
                crate::bridge::no_bridge_netfilter();
                if !crate::bridge::switch_has_l3() {
                    // Tables are only ever written after `switch_l3`: a switch without its
                    // address has none to delete, and an nft run (~15-30 ms, a third of a
                    // one-service `up`) is saved.
                    return Ok(());
                }
                [0; 6]
            } else {
                crate::bridge::switch_l3(n2.subnet)?
            };
            nft(&["-f", "-"], Some(&switch_script(&n2, &ports, &hosts, mac))).map(|_| ())
        });
        let mut w = WRITTEN.lock().unwrap_or_else(|e| e.into_inner());
        match (res, id) {
            (Ok(()), Some(id)) => {
                w.get_or_insert_with(Default::default)
                    .insert(n.bridge.clone(), (id, fingerprint));
            }
            (res, _) => {
                if let Some(w) = w.as_mut() {
                    w.remove(&n.bridge);
                }
                if let Err(e) = res {
                    tracing::warn!("hairpin rules of network {}: {e}", n.bridge);
                }
            }
        }
    }
}

/// Held for its flock; released on drop.
pub(crate) struct NftLock(#[allow(dead_code)] std::fs::File);

pub(crate) fn lock() -> Result<NftLock> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK)
        .map_err(io_err(LOCK))?;
    // SAFETY: flock on an fd we own; released when the file is closed.
    while unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(io_err(LOCK)(e));
        }
    }
    Ok(NftLock(f))
}

pub(crate) fn nft(args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut cmd = Command::new("nft");
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::Nft(format!("running nft: {e}")))?;
    if let Some(input) = stdin {
        let mut w = child
            .stdin
            .take()
            .ok_or_else(|| Error::Nft("no stdin".into()))?;
        w.write_all(input.as_bytes())
            .map_err(|e| Error::Nft(format!("writing to nft: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::Nft(format!("waiting for nft: {e}")))?;
    if !out.status.success() {
        return Err(Error::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Replace the project's chains in one transaction (creating the table if needed).
pub fn apply(fw: &ProjectFirewall) -> Result<()> {
    let s = script(fw)?;
    let _l = lock()?;
    check_no_conflict(fw)?;
    nft(&["-f", "-"], Some(&s))?;
    // Only now that the 127/8 guard is in place: published ports on 127.0.0.1 are DNATed into
    // the network with their 127.x source (masqueraded on the way out); without route_localnet
    // the kernel drops them as martians.
    for n in &fw.networks {
        let key = format!("net/ipv4/conf/{}/route_localnet", n.bridge);
        if std::path::Path::new("/proc/sys").join(&key).exists() {
            crate::sysctl::ensure(&key, "1")?;
        }
    }
    apply_switches(fw);
    Ok(())
}

/// Whether the host drops the traffic it routes for berth: some other table (Docker's
/// iptables-nft `ip filter`, a firewall's own) has a base chain on the forward hook with policy
/// drop, or legacy iptables' FORWARD policy is drop (`legacy_forward_drop`). Their rules might
/// accept berth's interfaces, but nothing berth can see says so, and the relay serves clients
/// either way.
pub fn routed_traffic_blocked() -> bool {
    // Without nf_tables netlink there are no nftables chains to look at (nft itself uses it).
    nft_forward_drop().unwrap_or(false) || legacy_forward_drop()
}

/// The nftables half of `routed_traffic_blocked`, over nf_tables netlink only, in the calling
/// thread's namespace.
pub fn nft_forward_drop() -> std::io::Result<bool> {
    Ok(forward_drop_in_dump(&nft_chain_dump()?))
}

const NETLINK_NETFILTER: isize = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_HOOK_HOOKNUM: u16 = 1;

/// Every nftables chain of the calling thread's namespace, dumped over nf_tables netlink (what
/// `nft list chains` asks, without starting nft: this runs every few seconds per project).
/// The raw replies, for `forward_drop_in_dump`.
pub(crate) fn nft_chain_dump() -> std::io::Result<Vec<Vec<u8>>> {
    use netlink_sys::{Socket, SocketAddr};
    let mut sock = Socket::new(NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    // nlmsghdr (16 bytes) + nfgenmsg { family AF_UNSPEC, version 0, res_id 0 }.
    let mut req = Vec::with_capacity(20);
    req.extend_from_slice(&20u32.to_ne_bytes());
    req.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETCHAIN).to_ne_bytes());
    req.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // pid
    req.extend_from_slice(&[0, 0, 0, 0]);
    sock.send(&req, 0)?;
    let mut out = Vec::new();
    loop {
        let (data, _) = sock.recv_from_full()?;
        if data.is_empty() {
            return Ok(out);
        }
        let mut off = 0;
        while off + 16 <= data.len() {
            let len = u32::from_ne_bytes(data[off..off + 4].try_into().unwrap()) as usize;
            let typ = u16::from_ne_bytes(data[off + 4..off + 6].try_into().unwrap());
            if len < 16 || off + len > data.len() {
                return Ok(out);
            }
            match typ as i32 {
                libc::NLMSG_DONE => return Ok(out),
                libc::NLMSG_ERROR => {
                    let code = i32::from_ne_bytes(data[off + 16..off + 20].try_into().unwrap());
                    if code != 0 {
                        return Err(std::io::Error::from_raw_os_error(-code));
                    }
                }
                _ => out.push(data[off..off + len].to_vec()),
            }
            off += (len + 3) & !3;
        }
    }
}

/// The netlink attributes in `b`: (type without flag bits, payload).
pub(crate) fn nl_attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut v = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let typ = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            break;
        }
        v.push((typ, &b[4..len]));
        b = &b[((len + 3) & !3).min(b.len())..];
    }
    v
}

/// `routed_traffic_blocked`'s nftables half on the replies of `nft_chain_dump` (pure; unit-tested): a chain of the
/// ip, ip6 or inet family, not in berth's own table, on the forward hook, with policy drop.
fn forward_drop_in_dump(msgs: &[Vec<u8>]) -> bool {
    msgs.iter().any(|m| {
        // nlmsghdr (16) + nfgenmsg (4), then the chain's attributes.
        if m.len() < 20 || !matches!(i32::from(m[16]), libc::AF_INET | libc::AF_INET6 | 1) {
            return false;
        }
        let (mut table, mut forward, mut drop) = ("", false, false);
        for (t, v) in nl_attrs(&m[20..]) {
            match t {
                NFTA_CHAIN_TABLE => {
                    table = std::str::from_utf8(v).unwrap_or("").trim_end_matches('\0')
                }
                NFTA_CHAIN_HOOK => {
                    forward = nl_attrs(v).iter().any(|(ht, hv)| {
                        *ht == NFTA_HOOK_HOOKNUM
                            && hv.len() >= 4
                            && u32::from_be_bytes(hv[..4].try_into().unwrap()) == 2
                    })
                }
                // NF_DROP = 0
                NFTA_CHAIN_POLICY => {
                    drop = v.len() >= 4 && u32::from_be_bytes(v[..4].try_into().unwrap()) == 0
                }
                _ => {}
            }
        }
        forward && drop && !(i32::from(m[16]) == 1 && table == TABLE)
    })
}

/// The FORWARD policy of legacy (non-nft) iptables is drop in the calling thread's network
/// namespace: Docker on an iptables-legacy host (Ubuntu 20.04's default) or ufw's default
/// forward policy. Read with `IPT_SO_GET_INFO`/`IPT_SO_GET_ENTRIES`, and only when the legacy
/// filter table already exists there (asking for it would make the kernel create it).
pub fn legacy_forward_drop() -> bool {
    legacy_policy_drop(NF_INET_FORWARD)
}

/// The same for legacy iptables' INPUT policy (ufw's default on an iptables-legacy host), which
/// berth does not write to (see `hostinput`).
pub fn legacy_input_drop() -> bool {
    legacy_policy_drop(NF_INET_LOCAL_IN)
}

fn legacy_policy_drop(hook: usize) -> bool {
    let names =
        std::fs::read_to_string("/proc/thread-self/net/ip_tables_names").unwrap_or_default();
    if !names.lines().any(|l| l.trim() == "filter") {
        return false;
    }
    legacy_filter_blob(hook)
        .map(|(underflow, blob)| legacy_policy_is_drop(&blob, underflow))
        .unwrap_or(false)
}

const IPT_SO_GET_INFO: libc::c_int = 64;
const IPT_SO_GET_ENTRIES: libc::c_int = 65;
const NF_INET_LOCAL_IN: usize = 1;
const NF_INET_FORWARD: usize = 2;

/// (offset of `hook`'s policy entry, the filter table's entries) through getsockopt.
fn legacy_filter_blob(hook: usize) -> std::io::Result<(usize, Vec<u8>)> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new socket nobody else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // struct ipt_getinfo: name[32], valid_hooks, hook_entry[5], underflow[5], num_entries, size.
    let mut info = [0u8; 84];
    info[..6].copy_from_slice(b"filter");
    ip_getsockopt(&sock, IPT_SO_GET_INFO, &mut info)?;
    let u32_at = |b: &[u8], o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().unwrap());
    let valid_hooks = u32_at(&info, 32);
    if valid_hooks & (1 << hook) == 0 {
        return Err(std::io::Error::from_raw_os_error(libc::ENOENT));
    }
    let underflow = u32_at(&info, 56 + 4 * hook) as usize;
    let size = u32_at(&info, 80) as usize;
    // struct ipt_get_entries: name[32], size, then the entries (8-byte aligned: offset 40).
    let mut buf = vec![0u8; 40 + size];
    buf[..6].copy_from_slice(b"filter");
    buf[32..36].copy_from_slice(&(size as u32).to_ne_bytes());
    ip_getsockopt(&sock, IPT_SO_GET_ENTRIES, &mut buf)?;
    Ok((underflow, buf.split_off(40)))
}

/// getsockopt(IPPROTO_IP, `opt`) into `buf` (which also carries the request).
fn ip_getsockopt(
    sock: &std::os::fd::OwnedFd,
    opt: libc::c_int,
    buf: &mut [u8],
) -> std::io::Result<()> {
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `buf`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            opt,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The verdict of the standard target of the entry at `offset` is drop (pure; unit-tested).
/// struct ipt_entry: ipt_ip (84 bytes), nfcache, target_offset u16 at 88, next_offset u16,
/// comefrom, counters; the target at `target_offset`: a 32-byte xt_entry_target header (an
/// empty name for the standard target) and then the verdict, `-NF_DROP - 1` = -1 for drop.
fn legacy_policy_is_drop(entries: &[u8], offset: usize) -> bool {
    let Some(t) = entries
        .get(offset + 88..offset + 90)
        .map(|b| u16::from_ne_bytes([b[0], b[1]]) as usize)
    else {
        return false;
    };
    let target = offset + t;
    let (Some(name), Some(verdict)) = (
        entries.get(target + 2..target + 31),
        entries.get(target + 32..target + 36),
    ) else {
        return false;
    };
    let standard = name.iter().all(|b| *b == 0);
    standard && i32::from_ne_bytes(verdict.try_into().unwrap()) == -1
}

/// Chain names and published-port comments of the berth table; None if it does not exist.
/// (chain names, (chain, rule comment) pairs)
type Listing = (Vec<String>, Vec<(String, String)>);

fn table_listing() -> Result<Option<Listing>> {
    let out = match nft(&["-j", "list", "table", "inet", TABLE], None) {
        Ok(o) => o,
        Err(Error::Nft(m)) if m.contains("No such file") => return Ok(None),
        Err(e) => return Err(e),
    };
    let v: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| Error::Nft(format!("nft -j output: {e}")))?;
    let mut chains = vec![];
    let mut comments = vec![];
    for item in v["nftables"].as_array().into_iter().flatten() {
        if let Some(name) = item["chain"]["name"].as_str() {
            chains.push(name.to_string());
        }
        if let (Some(chain), Some(c)) = (
            item["rule"]["chain"].as_str(),
            item["rule"]["comment"].as_str(),
        ) {
            comments.push((chain.to_string(), c.to_string()));
        }
    }
    Ok(Some((chains, comments)))
}

fn parse_comment(c: &str) -> Option<(Proto, Option<Ipv4Addr>, u16)> {
    let mut w = c.strip_prefix("berth-port ")?.split(' ');
    let p: Proto = w.next()?.parse().ok()?;
    let host = match w.next()? {
        "*" => None,
        h => Some(h.parse().ok()?),
    };
    Some((p, host, w.next()?.parse().ok()?))
}

fn clash(a: Option<Ipv4Addr>, b: Option<Ipv4Addr>) -> bool {
    a.is_none() || b.is_none() || a == b
}

/// Another project's published port, if one clashes.
fn published_by_other(
    project: Option<&str>,
    proto: Proto,
    host: Option<Ipv4Addr>,
    port: u16,
) -> Result<Option<String>> {
    let Some((_, comments)) = table_listing()? else {
        return Ok(None);
    };
    let own = project.map(|p| format!("{}_", chain_prefix(p)));
    for (chain, c) in comments {
        if !chain.ends_with("_pre") || own.as_deref().is_some_and(|o| chain.starts_with(o)) {
            continue;
        }
        if let Some((p, h, n)) = parse_comment(&c) {
            if p == proto && n == port && clash(h, host) {
                return Ok(Some(chain.trim_end_matches("_pre").to_string()));
            }
        }
    }
    Ok(None)
}

fn check_no_conflict(fw: &ProjectFirewall) -> Result<()> {
    for p in &fw.ports {
        let Some(host) = wildcard(p.host_ip) else {
            continue;
        };
        if let Some(by) = published_by_other(Some(&fw.project), p.protocol, host, p.host_port)? {
            return Err(Error::PortInUse {
                protocol: p.protocol.to_string(),
                host_ip: host.map(|h| h.to_string()).unwrap_or_else(|| "*".into()),
                port: p.host_port,
                by: format!(" (published by berth {by})"),
            });
        }
    }
    Ok(())
}

/// Remove the project's chains; the table too if nothing else is left in it. Idempotent.
pub fn remove(project: &str) -> Result<()> {
    let _l = lock()?;
    let Some((chains, _)) = table_listing()? else {
        return Ok(());
    };
    let own = format!("{}_", chain_prefix(project));
    let (mine, others): (Vec<_>, Vec<_>) = chains.into_iter().partition(|c| c.starts_with(&own));
    let t = format!("inet {TABLE}");
    let s = if others.is_empty() {
        format!("delete table {t}\n")
    } else if mine.is_empty() {
        return Ok(());
    } else {
        mine.iter()
            .map(|c| format!("flush chain {t} {c}\ndelete chain {t} {c}\n"))
            .collect()
    };
    nft(&["-f", "-"], Some(&s)).map(|_| ())
}

fn parse_host(host_ip: Option<&str>) -> Result<Option<Ipv4Addr>> {
    let Some(h) = host_ip.map(str::trim).filter(|h| !h.is_empty()) else {
        return Ok(None);
    };
    let ip: IpAddr = h
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| Error::BadAddress(h.into()))?;
    wildcard(Some(ip)).ok_or_else(|| Error::BadAddress(h.into()))
}

fn bind_probe(proto: Proto, host: Option<Ipv4Addr>, port: u16) -> std::io::Result<u16> {
    let addr = std::net::SocketAddr::from((host.unwrap_or(Ipv4Addr::UNSPECIFIED), port));
    match proto {
        Proto::Tcp => std::net::TcpListener::bind(addr)?
            .local_addr()
            .map(|a| a.port()),
        Proto::Udp => std::net::UdpSocket::bind(addr)?
            .local_addr()
            .map(|a| a.port()),
    }
}

/// Error if `port` cannot be published: a socket of the host holds it, or another berth project
/// publishes it.
pub fn check_port_free(protocol: impl AsRef<str>, host_ip: Option<&str>, port: u16) -> Result<()> {
    check_port_free_for(None, protocol, host_ip, port)
}

/// As `check_port_free`, not counting what `project` itself publishes (re-applying a project).
pub fn check_port_free_for(
    project: Option<&str>,
    protocol: impl AsRef<str>,
    host_ip: Option<&str>,
    port: u16,
) -> Result<()> {
    let proto: Proto = protocol.as_ref().parse()?;
    let host = parse_host(host_ip)?;
    let shown = host.map(|h| h.to_string()).unwrap_or_else(|| "*".into());
    if let Some(by) = published_by_other(project, proto, host, port)? {
        return Err(Error::PortInUse {
            protocol: proto.to_string(),
            host_ip: shown,
            port,
            by: format!(" (published by berth {by})"),
        });
    }
    if let Err(e) = bind_probe(proto, host, port) {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            return Err(Error::PortInUse {
                protocol: proto.to_string(),
                host_ip: shown,
                port,
                by: String::new(),
            });
        }
        if e.kind() == std::io::ErrorKind::AddrNotAvailable {
            return Err(Error::BadAddress(shown));
        }
    }
    Ok(())
}

/// A host port free for `protocol` on `host_ip`, from the kernel's ephemeral range.
pub fn pick_free_port(protocol: impl AsRef<str>, host_ip: Option<&str>) -> Result<u16> {
    let proto: Proto = protocol.as_ref().parse()?;
    let host = parse_host(host_ip)?;
    for _ in 0..64 {
        let port = bind_probe(proto, host, 0).map_err(|_| Error::NoFreePort(proto.to_string()))?;
        if published_by_other(None, proto, host, port)?.is_none() {
            return Ok(port);
        }
    }
    Err(Error::NoFreePort(proto.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fw() -> ProjectFirewall {
        ProjectFirewall {
            relay: false,
            outbound: vec![],
            project: "My-App".into(),
            networks: vec![
                NetRule {
                    bridge: "berthbr00000001".into(),
                    subnet: "10.89.0.0/24".parse().unwrap(),
                    internal: false,
                },
                NetRule {
                    bridge: "berthbr00000002".into(),
                    subnet: "10.89.1.0/24".parse().unwrap(),
                    internal: true,
                },
            ],
            ports: vec![
                PortRule {
                    host_ip: None,
                    host_port: 8080,
                    protocol: Proto::Tcp,
                    backends: vec![("10.89.0.2".parse().unwrap(), 80)],
                },
                PortRule {
                    host_ip: Some("127.0.0.1".parse().unwrap()),
                    host_port: 5353,
                    protocol: Proto::Udp,
                    backends: vec![
                        ("10.89.0.2".parse().unwrap(), 53),
                        ("10.89.0.3".parse().unwrap(), 53),
                        ("10.89.0.4".parse().unwrap(), 53),
                    ],
                },
                PortRule {
                    host_ip: None,
                    host_port: 9000,
                    protocol: Proto::Tcp,
                    backends: vec![],
                },
            ],
        }
    }

    #[test]
    fn chain_names_are_identifiers() {
        let p = chain_prefix("My-App");
        assert!(p.starts_with("p_my_app_"));
        assert_ne!(p, chain_prefix("my_app"));
        assert!(p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        assert!(chain_prefix(&"x".repeat(100)).len() < 40);
    }

    #[test]
    fn script_has_everything() {
        let s = script(&fw()).unwrap();
        let p = chain_prefix("My-App");
        assert!(s.starts_with("add table inet berth\n"));
        assert!(s.contains(&format!(
            "add rule inet berth {p}_pre iifname \"berth*\" fib daddr . iif type local meta l4proto {{ tcp, udp }} th dport 53 return\n"
        )));
        for c in ["raw", "pre", "out", "post", "fwd"] {
            assert!(
                s.contains(&format!("flush chain inet berth {p}_{c}\n")),
                "{c}"
            );
        }
        assert!(s.contains(&format!("add rule inet berth {p}_post ip saddr 10.89.0.0/24 oifname != \"berthbr00000001\" masquerade")));
        // Internal: no masquerade out, drops both ways.
        assert!(!s.contains("ip saddr 10.89.1.0/24 oifname !="));
        assert!(s.contains(&format!("{p}_fwd iifname \"berthbr00000002\" drop")));
        assert!(s.contains(&format!(
            "{p}_pre fib daddr type local meta l4proto tcp th dport 8080 dnat ip to 10.89.0.2:80 comment \"berth-port tcp * 8080\""
        )));
        assert!(s.contains(&format!("{p}_out fib daddr type local ip daddr 127.0.0.1 meta l4proto udp th dport 5353 dnat ip to numgen random mod 3 map {{ 0 : 10.89.0.2 . 53, 1 : 10.89.0.3 . 53, 2 : 10.89.0.4 . 53 }}")));
        assert!(s.contains("th dport 9000 counter comment \"berth-port tcp * 9000\""));
        // B→B accept comes before the drop into B.
        let a = s
            .find("iifname \"berthbr00000001\" oifname \"berthbr00000001\" accept")
            .unwrap();
        let d = s.find("oifname \"berthbr00000001\" drop").unwrap();
        assert!(a < d);
    }

    #[test]
    fn script_rejects_bad_input() {
        let mut f = fw();
        f.networks[0].bridge = "bad\"name".into();
        assert!(script(&f).is_err());
        let mut f = fw();
        let dup = f.ports[0].clone();
        f.ports.push(dup);
        assert!(matches!(script(&f), Err(Error::PortInUse { .. })));
        let mut f = fw();
        f.ports[0].host_ip = Some("::".parse().unwrap());
        assert!(script(&f).unwrap().contains("th dport 8080 dnat"));
        f.ports[0].host_ip = Some("fe80::1".parse().unwrap());
        assert!(!script(&f).unwrap().contains("th dport 8080"));
    }

    #[test]
    fn hairpin_ports_are_those_served_wholly_inside_the_network() {
        let net = |internal| NetRule {
            bridge: "berthbr00000001".into(),
            subnet: "10.89.0.0/24".parse().unwrap(),
            internal,
        };
        let rule = |host: Option<&str>, port, protocol, backends: &[&str]| PortRule {
            host_ip: host.map(|h| h.parse().unwrap()),
            host_port: port,
            protocol,
            backends: backends.iter().map(|b| (b.parse().unwrap(), 80)).collect(),
        };
        let ports = vec![
            rule(None, 8080, Proto::Tcp, &["10.89.0.2"]),
            rule(
                Some("0.0.0.0"),
                8080,
                Proto::Udp,
                &["10.89.0.2", "10.89.0.3"],
            ),
            rule(Some("192.0.2.2"), 8081, Proto::Tcp, &["10.89.0.2"]),
            // Not reachable from a container: no rule needed, and no reason to leave 8082 out.
            rule(Some("127.0.0.1"), 8082, Proto::Tcp, &["10.89.1.2"]),
            rule(None, 8082, Proto::Tcp, &["10.89.0.4"]),
            // Reserved without backends, backends elsewhere, one of two rules elsewhere.
            rule(None, 9000, Proto::Tcp, &[]),
            rule(None, 9001, Proto::Tcp, &["10.89.1.2"]),
            rule(None, 9002, Proto::Tcp, &["10.89.0.2", "10.89.1.2"]),
            rule(None, 9003, Proto::Tcp, &["10.89.0.2"]),
            rule(Some("192.0.2.2"), 9003, Proto::Tcp, &["10.89.1.2"]),
            rule(Some("fe80::1"), 9004, Proto::Tcp, &["10.89.0.2"]),
        ];
        let got: Vec<(Option<Ipv4Addr>, u16, Proto)> = hairpin_ports(&net(false), &ports)
            .into_iter()
            .map(|h| (h.host, h.rule.host_port, h.rule.protocol))
            .collect();
        assert_eq!(
            got,
            vec![
                (None, 8080, Proto::Tcp),
                (None, 8080, Proto::Udp),
                (Some("192.0.2.2".parse().unwrap()), 8081, Proto::Tcp),
                (None, 8082, Proto::Tcp),
            ]
        );
        assert!(hairpin_ports(&net(true), &ports).is_empty());
        let link_local = NetRule {
            subnet: "169.254.0.0/16".parse().unwrap(),
            ..net(false)
        };
        assert!(hairpin_ports(&link_local, &ports).is_empty());
    }

    #[test]
    fn switch_script_hands_published_ports_and_replies_to_the_switch() {
        let n = &fw().networks[0];
        let ports = hairpin_ports(n, &fw().ports);
        assert_eq!(ports.len(), 1, "{ports:?}");
        let hosts: Vec<Ipv4Addr> = vec!["10.89.0.1".parse().unwrap(), "192.0.2.2".parse().unwrap()];
        let mac = [2, 0, 0, 0, 0, 1];
        let s = switch_script(n, &ports, &hosts, mac);
        // Replaces whatever was there, in one transaction.
        assert!(s.starts_with(
            "add table bridge berth\ndelete table bridge berth\nadd table ip berth\ndelete table ip berth\n"
        ));
        for line in [
            "add element bridge berth hosts { 10.89.0.1, 192.0.2.2 }",
            "add element bridge berth wild { tcp . 8080 }",
            "add rule bridge berth pre iifname \"uplink\" accept",
            "add rule bridge berth pre ip daddr 169.254.255.1 ether daddr set 02:00:00:00:00:01 meta pkttype set host accept",
            "add rule bridge berth pre ip daddr 10.89.0.0/24 meta l4proto { tcp, udp } th dport 53 accept",
            "add rule bridge berth pre ip daddr @hosts meta l4proto . th dport @wild ether daddr set 02:00:00:00:00:01 meta pkttype set host accept",
            "add rule ip berth pre ip daddr @hosts meta l4proto tcp th dport 8080 dnat ip to 10.89.0.2:80 comment \"berth-port tcp * 8080\"",
            "add rule ip berth post ct status dnat snat ip to 169.254.255.1",
        ] {
            assert!(s.contains(&format!("{line}\n")), "{line}\n---\n{s}");
        }
        // The DNS exception comes before the redirects.
        assert!(s.find("th dport 53 accept").unwrap() < s.find("@wild ether").unwrap());
        // A pinned address and several backends.
        let pinned = vec![Hairpin {
            host: Some("192.0.2.2".parse().unwrap()),
            rule: PortRule {
                host_ip: Some("192.0.2.2".parse().unwrap()),
                host_port: 53,
                protocol: Proto::Udp,
                backends: vec![
                    ("10.89.0.2".parse().unwrap(), 53),
                    ("10.89.0.3".parse().unwrap(), 53),
                ],
            },
        }];
        let s = switch_script(n, &pinned, &[], mac);
        assert!(s.contains("add element bridge berth pinned { 192.0.2.2 . udp . 53 }\n"));
        assert!(!s.contains("add element bridge berth hosts"));
        assert!(s.contains("add rule ip berth pre ip daddr 192.0.2.2 meta l4proto udp th dport 53 dnat ip to numgen random mod 2 map { 0 : 10.89.0.2 . 53, 1 : 10.89.0.3 . 53 }"));
        // Nothing to serve: the tables go.
        assert_eq!(
            switch_script(n, &[], &hosts, mac),
            "add table bridge berth\ndelete table bridge berth\nadd table ip berth\ndelete table ip berth\n"
        );
    }

    #[test]
    fn relay_mode_counts_routed_clients_and_keeps_the_host_dnat() {
        let mut f = fw();
        f.relay = true;
        let s = script(&f).unwrap();
        let pre: Vec<&str> = s
            .lines()
            .filter(|l| l.contains("_pre ") && l.contains("dport 8080"))
            .collect();
        assert_eq!(pre.len(), 1, "{s}");
        assert!(
            pre[0].ends_with("counter comment \"berth-port tcp * 8080\""),
            "{}",
            pre[0]
        );
        assert!(!pre[0].contains("dnat"));
        f.outbound = vec![("berthbr00000001".into(), 40000)];
        let s = script(&f).unwrap();
        assert!(s.contains("add rule inet berth p_my_app_"), "{s}");
        assert!(s.lines().any(|l| l.ends_with(
            "_pre iifname \"berthbr00000001\" fib daddr type unicast fib daddr oifname != \"berth*\" meta l4proto tcp redirect to :40000"
        )), "{s}");
        f.outbound = vec![("bad name".into(), 1)];
        assert!(script(&f).is_err());
        assert!(s
            .lines()
            .any(|l| l.contains("_out ") && l.contains("dport 8080 dnat ip to 10.89.0.2:80")));
    }

    #[test]
    fn forward_drop_chains_are_found_in_a_netlink_dump() {
        let attr = |t: u16, v: &[u8]| {
            let mut a = ((4 + v.len()) as u16).to_ne_bytes().to_vec();
            a.extend_from_slice(&t.to_ne_bytes());
            a.extend_from_slice(v);
            while !a.len().is_multiple_of(4) {
                a.push(0);
            }
            a
        };
        let chain = |family: u8, table: &str, hook: u32, policy: u32| {
            let mut body = vec![family, 0, 0, 0];
            body.extend(attr(NFTA_CHAIN_TABLE, format!("{table}\0").as_bytes()));
            body.extend(attr(3, b"FORWARD\0"));
            let hookattrs = [
                attr(NFTA_HOOK_HOOKNUM, &hook.to_be_bytes()),
                attr(2, &0u32.to_be_bytes()),
            ]
            .concat();
            body.extend(attr(NFTA_CHAIN_HOOK | 0x8000, &hookattrs));
            body.extend(attr(NFTA_CHAIN_POLICY, &policy.to_be_bytes()));
            let mut m = vec![0u8; 16];
            m.extend(body);
            m
        };
        let ip = libc::AF_INET as u8;
        assert!(forward_drop_in_dump(&[chain(ip, "filter", 2, 0)]));
        assert!(!forward_drop_in_dump(&[chain(ip, "filter", 2, 1)])); // accept
        assert!(!forward_drop_in_dump(&[chain(ip, "filter", 1, 0)])); // input
        assert!(!forward_drop_in_dump(&[chain(1, "berth", 2, 0)])); // berth's own
        assert!(forward_drop_in_dump(&[chain(1, "fw", 2, 0)])); // inet, another table
        assert!(!forward_drop_in_dump(&[chain(7, "br", 2, 0)])); // bridge family
        assert!(!forward_drop_in_dump(&[vec![0u8; 8]]));
    }

    #[test]
    fn legacy_policy_entries_are_read() {
        // Two entries: a rule (any target) and the policy entry at offset 152.
        let entry = |verdict: i32, name: &[u8]| {
            let mut e = vec![0u8; 112];
            e[88..90].copy_from_slice(&112u16.to_ne_bytes()); // target_offset
            e[90..92].copy_from_slice(&152u16.to_ne_bytes()); // next_offset
            let mut t = vec![0u8; 40];
            t[0..2].copy_from_slice(&40u16.to_ne_bytes());
            t[2..2 + name.len()].copy_from_slice(name);
            t[32..36].copy_from_slice(&verdict.to_ne_bytes());
            e.extend(t);
            e
        };
        let mut blob = entry(-2, b"");
        blob.extend(entry(-1, b""));
        assert!(legacy_policy_is_drop(&blob, 152));
        assert!(!legacy_policy_is_drop(&blob, 0)); // accept
        let mut named = entry(-1, b"DOCKER");
        named.extend(entry(-2, b""));
        assert!(!legacy_policy_is_drop(&named, 0)); // not the standard target
        assert!(!legacy_policy_is_drop(&blob, 4000)); // out of range
    }

    #[test]
    fn comments_roundtrip() {
        assert_eq!(
            parse_comment(&port_comment(Proto::Udp, None, 53)),
            Some((Proto::Udp, None, 53))
        );
        let h = Some("127.0.0.1".parse().unwrap());
        assert_eq!(
            parse_comment(&port_comment(Proto::Tcp, h, 80)),
            Some((Proto::Tcp, h, 80))
        );
        assert_eq!(parse_comment("something else"), None);
        assert!(clash(None, h) && clash(h, h) && !clash(h, Some("10.0.0.1".parse().unwrap())));
        assert_eq!("UDP".parse::<Proto>().unwrap(), Proto::Udp);
        assert!("sctp".parse::<Proto>().is_err());
    }
}
