//! Subnet and address allocation, persisted in `<state_dir>/ipam.json` under a flock.
//!
//! Subnets come from 10.0.0.0/8 in /20 steps (4094 hosts each, as Docker's 192.168 pool). A subnet is never chosen if it overlaps a route or
//! address already on the host, another network of this state dir, or a subnet reserved by any
//! other berth process (whatever its state dir): reservations live in the host-global file
//! `/run/lock/berth-ipam.lock`, read and written only while it is flocked, and the choice and the
//! reservation happen under that lock, so two processes never pick the same subnet even before
//! either has made its bridge.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::{io_err, Error, Result};

/// Host-global reservations (and the lock that serialises subnet choice).
pub const GLOBAL_LOCK: &str = "/run/lock/berth-ipam.lock";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct IpamRequest {
    pub subnet: Option<Ipv4Net>,
    pub ip_range: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetAlloc {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct NetState {
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    #[serde(default)]
    ip_range: Option<Ipv4Net>,
    /// owner → address
    #[serde(default)]
    addresses: BTreeMap<String, Ipv4Addr>,
    /// Last address handed out: the next search starts after it, so a just-released address is
    /// not reused at once (stale ARP and DNS caches elsewhere).
    #[serde(default)]
    last: Option<Ipv4Addr>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    #[serde(default)]
    networks: BTreeMap<String, NetState>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Reservation {
    subnet: Ipv4Net,
    state_dir: PathBuf,
    key: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Global {
    #[serde(default)]
    reservations: Vec<Reservation>,
}

/// Subnet and address allocator for one state dir. Cheap; every call takes the file lock.
#[derive(Debug)]
pub struct Ipam {
    dir: PathBuf,
    global: PathBuf,
}

struct Locked {
    file: File,
}

impl Locked {
    fn open(path: &Path) -> Result<Locked> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_err(path))?;
        loop {
            // SAFETY: flock on a valid fd we own.
            let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if r == 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(io_err(path)(e));
            }
        }
        Ok(Locked { file })
    }
}

impl Ipam {
    /// Open (creating) the state dir.
    pub fn open(state_dir: &Path) -> Result<Ipam> {
        Self::open_with_global(state_dir, Path::new(GLOBAL_LOCK))
    }

    /// As `open`, with another host-global reservation file (tests).
    pub fn open_with_global(state_dir: &Path, global: &Path) -> Result<Ipam> {
        std::fs::create_dir_all(state_dir).map_err(io_err(state_dir))?;
        if let Some(p) = global.parent() {
            std::fs::create_dir_all(p).map_err(io_err(p))?;
        }
        let dir = std::fs::canonicalize(state_dir).map_err(io_err(state_dir))?;
        Ok(Ipam {
            dir,
            global: global.to_path_buf(),
        })
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("ipam.json")
    }

    fn lock(&self) -> Result<Locked> {
        Locked::open(&self.dir.join("ipam.lock"))
    }

    fn load(&self) -> Result<State> {
        load_state(&self.state_path())
    }

    fn save(&self, st: &State) -> Result<()> {
        let path = self.state_path();
        let tmp = self.dir.join(".ipam.json.tmp");
        // Compact: rewritten on every address handed out (O(addresses) each), a third of the
        // encoding work of pretty JSON.
        let data = serde_json::to_vec(st).map_err(|source| Error::State {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&tmp, data).map_err(io_err(&tmp))?;
        swap_in(&tmp, &path)
    }

    /// The subnet of network `key`, allocating one on first call (idempotent).
    pub fn allocate_network(&self, key: &str, requested: Option<IpamRequest>) -> Result<NetAlloc> {
        let _l = self.lock()?;
        let mut st = self.load()?;
        if let Some(n) = st.networks.get(key) {
            return Ok(NetAlloc {
                subnet: n.subnet,
                gateway: n.gateway,
            });
        }
        let req = requested.unwrap_or_default();
        let mut glock = Locked::open(&self.global)?;
        let mut global = read_global(&mut glock)?;
        // Forget reservations whose owner no longer records them (crashed or deleted state dirs).
        global.reservations.retain(|r| {
            r.state_dir == self.dir
                || load_state(&r.state_dir.join("ipam.json"))
                    .map(|s| s.networks.get(&r.key).map(|n| n.subnet) == Some(r.subnet))
                    .unwrap_or(false)
        });
        let mut taken: Vec<(Ipv4Net, String)> = st
            .networks
            .iter()
            .map(|(k, n)| (n.subnet, format!("berth network {k}")))
            .collect();
        taken.extend(
            global
                .reservations
                .iter()
                .filter(|r| r.state_dir != self.dir)
                .map(|r| {
                    (
                        r.subnet,
                        format!("berth network {} of {}", r.key, r.state_dir.display()),
                    )
                }),
        );
        let subnet = match req.subnet {
            Some(s) => {
                let s = s.trunc();
                if s.prefix_len() > 30 {
                    return Err(Error::InvalidRequest(format!("subnet {s} is too small")));
                }
                if let Some((other, by)) = taken.iter().find(|(t, _)| overlaps(*t, s)) {
                    return Err(Error::SubnetOverlap {
                        subnet: s,
                        other: *other,
                        by: by.clone(),
                    });
                }
                s
            }
            None => {
                let mut nl = crate::nl::Nl::new()?;
                for r in nl.dump_route_destinations()? {
                    taken.push((r, "a host route".into()));
                }
                for (_, a) in nl.dump_addresses()? {
                    taken.push((a.trunc(), "a host address".into()));
                }
                // A DNS listener still bound to the gateway of a network that is gone (another
                // process's leftover) would make ours fail to bind: skip subnets holding one.
                for a in dns_bound_addresses() {
                    taken.push((Ipv4Net::from(a), "a socket bound to port 53".into()));
                }
                let t: Vec<Ipv4Net> = taken.iter().map(|(n, _)| *n).collect();
                choose_subnet(&t).ok_or(Error::PoolExhausted)?
            }
        };
        if let Some(r) = req.ip_range {
            if !subnet.contains(&r.trunc()) {
                return Err(Error::InvalidRequest(format!(
                    "ip_range {r} is not inside {subnet}"
                )));
            }
        }
        let gateway = match req.gateway {
            Some(g) => {
                if !usable(subnet, g) {
                    return Err(Error::AddressOutOfRange { addr: g, subnet });
                }
                g
            }
            None => first_host(subnet),
        };
        st.networks.insert(
            key.to_string(),
            NetState {
                subnet,
                gateway,
                ip_range: req.ip_range.map(|r| r.trunc()),
                addresses: BTreeMap::new(),
                last: None,
            },
        );
        self.save(&st)?;
        global.reservations.push(Reservation {
            subnet,
            state_dir: self.dir.clone(),
            key: key.to_string(),
        });
        write_global(&mut glock, &global)?;
        Ok(NetAlloc { subnet, gateway })
    }

    /// Record a network whose subnet is fixed elsewhere (an external bridge berth did not make:
    /// pass its subnet and gateway, e.g. from `bridge::gateway_of`), so addresses can be handed
    /// out on it. No overlap check and no host-global reservation: the bridge already exists.
    /// Idempotent; an existing entry for `key` is kept as it is.
    pub fn adopt_network(&self, key: &str, subnet: Ipv4Net, gateway: Ipv4Addr) -> Result<NetAlloc> {
        let _l = self.lock()?;
        let mut st = self.load()?;
        if let Some(n) = st.networks.get(key) {
            return Ok(NetAlloc {
                subnet: n.subnet,
                gateway: n.gateway,
            });
        }
        let subnet = subnet.trunc();
        if !subnet.contains(&gateway) {
            return Err(Error::AddressOutOfRange {
                addr: gateway,
                subnet,
            });
        }
        st.networks.insert(
            key.to_string(),
            NetState {
                subnet,
                gateway,
                ip_range: None,
                addresses: BTreeMap::new(),
                last: None,
            },
        );
        self.save(&st)?;
        Ok(NetAlloc { subnet, gateway })
    }

    /// The subnet of a network already allocated.
    pub fn network(&self, key: &str) -> Result<Option<NetAlloc>> {
        let _l = self.lock()?;
        Ok(self.load()?.networks.get(key).map(|n| NetAlloc {
            subnet: n.subnet,
            gateway: n.gateway,
        }))
    }

    /// An address on network `key` for `owner` (idempotent per owner).
    pub fn allocate_address(
        &self,
        key: &str,
        owner: &str,
        requested: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr> {
        let _l = self.lock()?;
        let mut st = self.load()?;
        let net = st
            .networks
            .get_mut(key)
            .ok_or_else(|| Error::UnknownNetwork(key.to_string()))?;
        if let Some(a) = net.addresses.get(owner) {
            if requested.is_none() || requested == Some(*a) {
                return Ok(*a);
            }
        }
        net.addresses.remove(owner);
        let used: HashSet<Ipv4Addr> = net.addresses.values().copied().collect();
        let addr = match requested {
            Some(a) => {
                if !usable(net.subnet, a) || a == net.gateway {
                    return Err(Error::AddressOutOfRange {
                        addr: a,
                        subnet: net.subnet,
                    });
                }
                if used.contains(&a) {
                    let owner = net
                        .addresses
                        .iter()
                        .find(|(_, v)| **v == a)
                        .map(|(k, _)| k.clone())
                        .unwrap_or_default();
                    return Err(Error::AddressInUse {
                        addr: a,
                        network: key.to_string(),
                        owner,
                    });
                }
                a
            }
            None => next_free(net.subnet, net.ip_range, net.gateway, &used, net.last)
                .ok_or(Error::NoFreeAddress(net.subnet))?,
        };
        net.addresses.insert(owner.to_string(), addr);
        if requested.is_none() {
            net.last = Some(addr);
        }
        self.save(&st)?;
        Ok(addr)
    }

    /// Give back `owner`'s address on `key`; unknown network or owner is not an error.
    pub fn release_address(&self, key: &str, owner: &str) -> Result<()> {
        let _l = self.lock()?;
        let mut st = self.load()?;
        if let Some(n) = st.networks.get_mut(key) {
            if n.addresses.remove(owner).is_some() {
                self.save(&st)?;
            }
        }
        Ok(())
    }

    /// Forget network `key` and its addresses, and its host-global reservation.
    pub fn release_network(&self, key: &str) -> Result<()> {
        let _l = self.lock()?;
        let mut st = self.load()?;
        if st.networks.remove(key).is_some() {
            self.save(&st)?;
        }
        let mut glock = Locked::open(&self.global)?;
        let mut global = read_global(&mut glock)?;
        let before = global.reservations.len();
        global
            .reservations
            .retain(|r| !(r.state_dir == self.dir && r.key == key));
        if global.reservations.len() != before {
            write_global(&mut glock, &global)?;
        }
        Ok(())
    }

    /// Keys of every allocated network (teardown checks).
    pub fn networks(&self) -> Result<Vec<String>> {
        let _l = self.lock()?;
        Ok(self.load()?.networks.keys().cloned().collect())
    }
}

/// Put the new state at `tmp` in place of `path` atomically, by exchanging the two
/// (renameat2 RENAME_EXCHANGE): `tmp` then holds the state before and its inode is written
/// again by the next save. A rename over `path` would make an inode and free one per address
/// handed out; on ext4 without a journal each new inode walks past every inode freed in the
/// last ~35 s, so an `up` of n containers paid O(n) per address here. Called under the state's
/// flock (one writer of `tmp` at a time). The first save, and a filesystem without the
/// exchange, rename.
fn swap_in(tmp: &Path, path: &Path) -> Result<()> {
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
            .map_err(|e| io_err(p)(std::io::Error::other(e)))
    };
    let (from, to) = (c(tmp)?, c(path)?);
    // SAFETY: two NUL-terminated paths.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::EINVAL) | Some(libc::ENOSYS) => {
            std::fs::rename(tmp, path).map_err(io_err(path))
        }
        _ => Err(io_err(path)(e)),
    }
}

fn load_state(path: &Path) -> Result<State> {
    match std::fs::read(path) {
        Ok(data) if data.is_empty() => Ok(State::default()),
        Ok(data) => serde_json::from_slice(&data).map_err(|source| Error::State {
            path: path.into(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn read_global(l: &mut Locked) -> Result<Global> {
    let mut s = String::new();
    l.file.rewind().map_err(io_err(GLOBAL_LOCK))?;
    l.file.read_to_string(&mut s).map_err(io_err(GLOBAL_LOCK))?;
    if s.trim().is_empty() {
        return Ok(Global::default());
    }
    // A corrupt file only loses reservations; the host route check still protects live bridges.
    Ok(serde_json::from_str(&s).unwrap_or_default())
}

fn write_global(l: &mut Locked, g: &Global) -> Result<()> {
    let data = serde_json::to_vec(g).map_err(|source| Error::State {
        path: GLOBAL_LOCK.into(),
        source,
    })?;
    l.file.set_len(0).map_err(io_err(GLOBAL_LOCK))?;
    l.file.rewind().map_err(io_err(GLOBAL_LOCK))?;
    l.file.write_all(&data).map_err(io_err(GLOBAL_LOCK))?;
    l.file.sync_data().map_err(io_err(GLOBAL_LOCK))
}

/// IPv4 addresses (other than 0.0.0.0 and loopback) with a UDP or TCP socket bound on port 53.
fn dns_bound_addresses() -> Vec<Ipv4Addr> {
    let mut out = vec![];
    for f in ["/proc/net/udp", "/proc/net/tcp"] {
        if let Ok(text) = std::fs::read_to_string(f) {
            out.extend(parse_proc_net_port(&text, 53));
        }
    }
    out.retain(|a| !a.is_unspecified() && !a.is_loopback());
    out.sort();
    out.dedup();
    out
}

/// Local addresses bound on `port` in a /proc/net/{udp,tcp} table (pure).
pub fn parse_proc_net_port(text: &str, port: u16) -> Vec<Ipv4Addr> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let local = l.split_whitespace().nth(1)?;
            let (ip, p) = local.split_once(':')?;
            if u16::from_str_radix(p, 16).ok()? != port {
                return None;
            }
            // The kernel prints the network-order address as a native-endian u32.
            let raw = u32::from_str_radix(ip, 16).ok()?;
            Some(Ipv4Addr::from(raw.to_ne_bytes()))
        })
        .collect()
}

// ---- pure arithmetic

/// Two networks overlap if either contains the other's network address.
pub fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Prefix length of an automatic subnet: a /20 (4094 hosts), the size of Docker's default
/// pool beyond its first /16s (192.168.0.0/16 in /20s), so that hundreds of containers share a
/// project's default network as they do under Docker (a /24 stopped at 253).
pub const POOL_PREFIX: u8 = 20;

/// Index of the pool's first block, 10.89.0.0/20 (keeps clear of the 10.0.x.0 LANs that are
/// most common, and of podman's 10.88.0.0/16).
const POOL_START: u32 = (89 << 16) >> (32 - POOL_PREFIX as u32);

/// The pool: the 4096 /20s of 10.0.0.0/8 (not Docker's 172.17-31 and 192.168 pools, which a
/// Docker on the same host hands out without looking at berth's reservations), starting at
/// 10.89.0.0 and wrapping round.
pub fn pool() -> impl Iterator<Item = Ipv4Net> {
    let blocks: u32 = 1 << (POOL_PREFIX - 8);
    let step = 32 - u32::from(POOL_PREFIX);
    (0..blocks).map(move |i| {
        let n = (POOL_START + i) % blocks;
        Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 | (n << step)), POOL_PREFIX).expect("valid /20")
    })
}

/// First block of the pool that overlaps nothing in `taken`.
pub fn choose_subnet(taken: &[Ipv4Net]) -> Option<Ipv4Net> {
    pool().find(|c| !taken.iter().any(|t| overlaps(*t, *c)))
}

/// The first host address (network + 1).
pub fn first_host(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

/// Inside the subnet and neither its network nor its broadcast address.
pub fn usable(subnet: Ipv4Net, a: Ipv4Addr) -> bool {
    subnet.contains(&a) && a != subnet.network() && a != subnet.broadcast()
}

/// The next free host address after `after` (wrapping), inside `range` if given, never the
/// gateway, the network or the broadcast address.
pub fn next_free(
    subnet: Ipv4Net,
    range: Option<Ipv4Net>,
    gateway: Ipv4Addr,
    used: &HashSet<Ipv4Addr>,
    after: Option<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    let span = range.unwrap_or(subnet);
    let lo = u32::from(span.network());
    let hi = u32::from(span.broadcast());
    let size = u64::from(hi - lo) + 1;
    let start = match after {
        Some(a) if span.contains(&a) => u32::from(a) - lo + 1,
        _ => 0,
    };
    (0..size)
        .map(|i| lo + ((u64::from(start) + i) % size) as u32)
        .map(Ipv4Addr::from)
        .find(|a| usable(subnet, *a) && *a != gateway && !used.contains(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn proc_net_parsing() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100590A:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0000000000000000 0\n\
   1: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0000000000000000 0\n\
   2: 0100590A:1F90 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0000000000000000 0\n";
        assert_eq!(
            parse_proc_net_port(t, 53),
            vec![
                "10.89.0.1".parse::<Ipv4Addr>().unwrap(),
                "127.0.0.1".parse().unwrap()
            ]
        );
        assert_eq!(
            parse_proc_net_port(t, 8080),
            vec!["10.89.0.1".parse::<Ipv4Addr>().unwrap()]
        );
    }

    #[test]
    fn overlap_rules() {
        assert!(overlaps(n("10.0.0.0/8"), n("10.89.3.0/24")));
        assert!(overlaps(n("10.89.3.0/24"), n("10.0.0.0/8")));
        assert!(!overlaps(n("10.89.3.0/24"), n("10.89.4.0/24")));
        assert!(overlaps(n("10.89.3.128/25"), n("10.89.3.0/24")));
    }

    #[test]
    fn pool_skips_taken_and_host_routes() {
        assert_eq!(choose_subnet(&[]), Some(n("10.89.0.0/20")));
        // Any overlap skips the whole block: a /24 route inside the first one, or a /19.
        assert_eq!(
            choose_subnet(&[n("10.89.5.0/24")]),
            Some(n("10.89.16.0/20"))
        );
        assert_eq!(
            choose_subnet(&[n("10.89.0.0/19")]),
            Some(n("10.89.32.0/20"))
        );
        // A route covering a larger network than a block, and the last block of 10.89.
        assert_eq!(
            choose_subnet(&[
                n("10.89.0.0/17"),
                n("10.89.128.0/18"),
                n("10.89.192.0/19"),
                n("10.89.224.0/20")
            ]),
            Some(n("10.89.240.0/20"))
        );
        // A host route covering the whole start of the pool pushes past it.
        assert_eq!(choose_subnet(&[n("10.89.0.0/16")]), Some(n("10.90.0.0/20")));
        // Wraps round to 10.0.0.0 after 10.255.240.0.
        assert_eq!(
            choose_subnet(&[
                n("10.89.0.0/16"),
                n("10.90.0.0/15"),
                n("10.92.0.0/14"),
                n("10.96.0.0/11"),
                n("10.128.0.0/9")
            ]),
            Some(n("10.0.0.0/20"))
        );
        assert_eq!(choose_subnet(&[n("10.0.0.0/8")]), None);
        // 4096 distinct, non-overlapping blocks that tile 10.0.0.0/8.
        let all: Vec<Ipv4Net> = pool().collect();
        assert_eq!(all.len(), 4096);
        assert!(all
            .iter()
            .all(|b| b.prefix_len() == 20 && n("10.0.0.0/8").contains(b)));
        let mut starts: Vec<u32> = all.iter().map(|b| u32::from(b.network())).collect();
        starts.sort();
        assert!(starts.windows(2).all(|w| w[1] - w[0] == 4096));
        assert_eq!(all.last(), Some(&n("10.88.240.0/20")));
    }

    #[test]
    fn a_pool_block_holds_500_containers() {
        // The default network of a 500-service project: gateway .0.1, then 500 addresses, all
        // distinct, inside the block, never its network, broadcast or gateway address.
        let s = choose_subnet(&[]).unwrap();
        let gw = first_host(s);
        let mut used = HashSet::new();
        let mut last = None;
        for _ in 0..500 {
            let a = next_free(s, None, gw, &used, last).expect("room for 500");
            assert!(usable(s, a) && a != gw);
            assert!(used.insert(a));
            last = Some(a);
        }
        assert_eq!(last, Some("10.89.1.245".parse().unwrap()));
        // 4094 hosts minus the gateway: the block is full after 4093.
        for _ in 500..4093 {
            let a = next_free(s, None, gw, &used, last).unwrap();
            used.insert(a);
            last = Some(a);
        }
        assert_eq!(last, Some("10.89.15.254".parse().unwrap()));
        assert_eq!(next_free(s, None, gw, &used, last), None);
    }

    #[test]
    fn addresses_skip_gateway_and_wrap() {
        let s = n("10.89.0.0/29"); // hosts .1 to .6
        let gw = first_host(s);
        assert_eq!(gw, "10.89.0.1".parse::<Ipv4Addr>().unwrap());
        let mut used = HashSet::new();
        let mut last = None;
        let mut got = vec![];
        while let Some(a) = next_free(s, None, gw, &used, last) {
            used.insert(a);
            last = Some(a);
            got.push(a.to_string());
        }
        assert_eq!(
            got,
            [
                "10.89.0.2",
                "10.89.0.3",
                "10.89.0.4",
                "10.89.0.5",
                "10.89.0.6"
            ]
        );
        // Released .3 is found again only after wrapping past the end.
        used.remove(&"10.89.0.3".parse().unwrap());
        assert_eq!(
            next_free(s, None, gw, &used, last),
            Some("10.89.0.3".parse().unwrap())
        );
        used.insert("10.89.0.3".parse().unwrap());
        used.remove(&"10.89.0.5".parse().unwrap());
        assert_eq!(
            next_free(s, None, gw, &used, Some("10.89.0.3".parse().unwrap())),
            Some("10.89.0.5".parse().unwrap())
        );
    }

    #[test]
    fn ip_range_limits_addresses() {
        let s = n("172.28.0.0/16");
        let r = Some(n("172.28.5.0/30"));
        let gw = first_host(s);
        let mut used = HashSet::new();
        let a = next_free(s, r, gw, &used, None).unwrap();
        assert_eq!(a.to_string(), "172.28.5.0"); // range edges are usable inside a larger subnet
        used.insert(a);
        for _ in 0..3 {
            let a = next_free(s, r, gw, &used, None).unwrap();
            used.insert(a);
        }
        assert_eq!(next_free(s, r, gw, &used, None), None);
    }

    #[test]
    fn state_roundtrip_and_idempotence() {
        let d = tempfile::tempdir().unwrap();
        let g = d.path().join("global.lock");
        let ipam = Ipam::open_with_global(&d.path().join("st"), &g).unwrap();
        let req = IpamRequest {
            subnet: Some(n("172.31.250.0/24")),
            ip_range: None,
            gateway: Some("172.31.250.254".parse().unwrap()),
        };
        let a = ipam.allocate_network("p_default", Some(req)).unwrap();
        assert_eq!(a.gateway.to_string(), "172.31.250.254");
        assert_eq!(ipam.allocate_network("p_default", None).unwrap(), a);
        let x = ipam.allocate_address("p_default", "c1", None).unwrap();
        assert_eq!(x.to_string(), "172.31.250.1");
        assert_eq!(ipam.allocate_address("p_default", "c1", None).unwrap(), x);
        // Saved by swapping: the state's inode is the one the save before left as the temp
        // file (no inode made per address).
        use std::os::unix::fs::MetadataExt;
        let tmp_ino = std::fs::metadata(d.path().join("st/.ipam.json.tmp"))
            .unwrap()
            .ino();
        let y = ipam.allocate_address("p_default", "c2", None).unwrap();
        assert_eq!(y.to_string(), "172.31.250.2");
        assert_eq!(
            std::fs::metadata(d.path().join("st/ipam.json"))
                .unwrap()
                .ino(),
            tmp_ino
        );
        assert!(matches!(
            ipam.allocate_address("p_default", "c3", Some(x)),
            Err(Error::AddressInUse { .. })
        ));
        assert!(matches!(
            ipam.allocate_address("p_default", "c3", Some("172.31.250.254".parse().unwrap())),
            Err(Error::AddressOutOfRange { .. })
        ));
        assert!(matches!(
            ipam.allocate_address("nope", "c3", None),
            Err(Error::UnknownNetwork(_))
        ));
        ipam.release_address("p_default", "c1").unwrap();
        // Not reused at once.
        assert_eq!(
            ipam.allocate_address("p_default", "c3", None)
                .unwrap()
                .to_string(),
            "172.31.250.3"
        );
        // A second state dir cannot take an overlapping subnet while the first holds it.
        let other = Ipam::open_with_global(&d.path().join("st2"), &g).unwrap();
        assert!(matches!(
            other.allocate_network(
                "q",
                Some(IpamRequest {
                    subnet: Some(n("172.31.0.0/16")),
                    ..Default::default()
                })
            ),
            Err(Error::SubnetOverlap { .. })
        ));
        ipam.release_network("p_default").unwrap();
        assert!(ipam.networks().unwrap().is_empty());
        other
            .allocate_network(
                "q",
                Some(IpamRequest {
                    subnet: Some(n("172.31.0.0/16")),
                    ..Default::default()
                }),
            )
            .unwrap();
        other.release_network("q").unwrap();
        let g: Global = serde_json::from_str(&std::fs::read_to_string(&g).unwrap()).unwrap();
        assert!(g.reservations.is_empty());
    }

    #[test]
    fn stale_reservations_are_dropped() {
        let d = tempfile::tempdir().unwrap();
        let g = d.path().join("global.lock");
        {
            let a = Ipam::open_with_global(&d.path().join("gone"), &g).unwrap();
            a.allocate_network(
                "k",
                Some(IpamRequest {
                    subnet: Some(n("172.30.9.0/24")),
                    ..Default::default()
                }),
            )
            .unwrap();
        }
        std::fs::remove_dir_all(d.path().join("gone")).unwrap();
        let b = Ipam::open_with_global(&d.path().join("b"), &g).unwrap();
        b.allocate_network(
            "k",
            Some(IpamRequest {
                subnet: Some(n("172.30.9.0/24")),
                ..Default::default()
            }),
        )
        .unwrap();
    }
}
