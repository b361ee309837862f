//! Subnet and address allocation, persisted in `<state_dir>` under a flock (`ipam.lock`) as a
//! snapshot, `ipam.json`, and a log of the address changes made since, `ipam.log`.
//!
//! Handing out or releasing an address appends one line to the log (a single write(2) with
//! O_APPEND, no fsync, as the snapshot never had one) instead of rewriting the whole state, which
//! cost O(addresses) per address and O(n^2) for an `up` of n containers. Each `Ipam` keeps the
//! state it last saw and how far into the log it has read; under the flock it reads only what
//! other processes appended since. The log's first line names the epoch of the snapshot it
//! follows (random, new for each snapshot): a log of another epoch is stale and ignored, and a
//! process whose cached epoch is not the log's loads both files again. Once the log holds more
//! records than max(64, addresses), the state is written as a new snapshot and the log restarted
//! (compaction), so loading stays O(addresses). Network changes are rare and always compact, so
//! the snapshot alone lists every network (the stale reservation check reads only that of other
//! state dirs). A torn or unreadable tail of the log is ignored and compacted away; an
//! `ipam.json` without an epoch (written before the log existed) is loaded as it is.
//!
//! Subnets come from 10.0.0.0/8 in /20 steps (4094 hosts each, as Docker's 192.168 pool). A subnet is never chosen if it overlaps a route or
//! address already on the host, another network of this state dir, or a subnet reserved by any
//! other berth process (whatever its state dir): reservations live in the host-global file
//! `/run/lock/berth-ipam.lock`, read and written only while it is flocked, and the choice and the
//! reservation happen under that lock, so two processes never pick the same subnet even before
//! either has made its bridge.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::{io_err, Error, Result};

/// Host-global reservations (and the lock that serialises subnet choice).
pub const GLOBAL_LOCK: &str = "/run/lock/berth-ipam.lock";

/// The log is compacted once it holds more records than this or than there are addresses:
/// compaction is O(addresses), so it costs O(1) per record, and loading reads at most about
/// twice the addresses.
const LOG_MIN_RECORDS: usize = 64;

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
    /// address → how many owners hold it (built by `index`, kept by `set` and `unset`), so a
    /// free address is found without collecting every owner's.
    #[serde(skip)]
    used: HashMap<Ipv4Addr, u32>,
}

impl NetState {
    fn new(subnet: Ipv4Net, gateway: Ipv4Addr, ip_range: Option<Ipv4Net>) -> NetState {
        NetState {
            subnet,
            gateway,
            ip_range,
            addresses: BTreeMap::new(),
            last: None,
            used: HashMap::new(),
        }
    }

    fn index(&mut self) {
        self.used.clear();
        for a in self.addresses.values() {
            *self.used.entry(*a).or_default() += 1;
        }
    }

    fn set(&mut self, owner: &str, a: Ipv4Addr) {
        if let Some(old) = self.addresses.insert(owner.to_string(), a) {
            self.unuse(old);
        }
        *self.used.entry(a).or_default() += 1;
    }

    fn unset(&mut self, owner: &str) {
        if let Some(old) = self.addresses.remove(owner) {
            self.unuse(old);
        }
    }

    fn unuse(&mut self, a: Ipv4Addr) {
        if let Some(n) = self.used.get_mut(&a) {
            *n -= 1;
            if *n == 0 {
                self.used.remove(&a);
            }
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// Names the log that follows this snapshot (its first line). 0: written before the log
    /// existed (or nothing written yet); no log applies to it.
    #[serde(default)]
    epoch: u64,
    #[serde(default)]
    networks: BTreeMap<String, NetState>,
}

impl State {
    fn addresses(&self) -> usize {
        self.networks.values().map(|n| n.addresses.len()).sum()
    }
}

/// One line of `ipam.log`, compact JSON (keys and owners are arbitrary strings).
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    /// An epoch. On the first line: the snapshot the log follows. Later: a compaction to that
    /// epoch began, so the snapshot may have changed under a reader that meets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    e: Option<u64>,
    /// Network key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    n: String,
    /// Owner.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    o: String,
    /// The owner's address; none: released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    a: Option<Ipv4Addr>,
    /// `last` moved to `a`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    l: bool,
}

impl Record {
    fn epoch(e: u64) -> Record {
        Record {
            e: Some(e),
            ..Default::default()
        }
    }
}

/// The state as this process last saw it.
#[derive(Debug)]
struct Cache {
    state: State,
    /// Log bytes read or written: where the next record starts.
    offset: u64,
    /// Address records in the log (compaction bound).
    records: usize,
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

/// Subnet and address allocator for one state dir. Every call takes the file lock; the state is
/// kept between calls (shared by the threads of a process), and each call first reads what other
/// processes logged since, or loads everything again after another process compacted.
#[derive(Debug)]
pub struct Ipam {
    dir: PathBuf,
    global: PathBuf,
    /// Taken before the flock, held for the whole call.
    cache: Mutex<Option<Cache>>,
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
            cache: Mutex::new(None),
        })
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("ipam.json")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("ipam.log")
    }

    fn lock(&self) -> Result<Locked> {
        Locked::open(&self.dir.join("ipam.lock"))
    }

    fn save(&self, st: &State) -> Result<()> {
        let path = self.state_path();
        let tmp = self.dir.join(".ipam.json.tmp");
        // Compact: a third of the encoding work of pretty JSON, and the whole state is written at
        // each compaction.
        let data = serde_json::to_vec(st).map_err(|source| Error::State {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&tmp, data).map_err(io_err(&tmp))?;
        swap_in(&tmp, &path)
    }

    /// Run `f` on the current state, under the flock. A call that fails drops the cache (it may
    /// hold a change that did not reach the files): the next call loads again.
    fn with_state<T>(&self, f: impl FnOnce(&mut Cache, &mut Log) -> Result<T>) -> Result<T> {
        let mut slot = self.cache.lock().unwrap_or_else(|p| {
            // A thread panicked mid-call: its cache may not match the files.
            self.cache.clear_poison();
            let mut g = p.into_inner();
            *g = None;
            g
        });
        let _l = self.lock()?;
        let path = self.log_path();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let mut log = Log { file, path };
        let r = self.sync(&mut slot, &mut log).and_then(|c| f(c, &mut log));
        if r.is_err() {
            *slot = None;
        }
        r
    }

    /// Bring the cache up to date with the files: apply the records appended since it was last
    /// read, or load snapshot and log again if the log was restarted (another epoch), shrank,
    /// or holds a compaction's epoch line or a torn record after the cache's offset.
    fn sync<'c>(&self, slot: &'c mut Option<Cache>, log: &mut Log) -> Result<&'c mut Cache> {
        let size = log.len()?;
        let current = match slot.as_mut() {
            Some(c) if c.state.epoch != 0 && size >= c.offset => {
                let mut head = [0u8; 64];
                let n = log.read_at(&mut head, 0)?;
                if header(&head[..n]).map(|h| h.0) != Some(c.state.epoch) {
                    false
                } else if size == c.offset {
                    true
                } else {
                    let mut data = vec![0; (size - c.offset) as usize];
                    log.read_exact_at(&mut data, c.offset)?;
                    let (used, records, stopped) = replay(&mut c.state, &data);
                    c.offset += used as u64;
                    c.records += records;
                    !stopped
                }
            }
            _ => false,
        };
        if !current {
            *slot = None;
            let (mut c, clean) = self.load(log, size)?;
            if !clean {
                self.compact(&mut c, log)?;
            }
            *slot = Some(c);
        }
        Ok(slot.as_mut().expect("loaded"))
    }

    /// Snapshot, then the log if it follows that snapshot. Not clean (to be compacted before
    /// anything is appended): the log is stale, missing, torn or unreadable past some record,
    /// holds a compaction that did not finish, or the snapshot has no epoch yet.
    fn load(&self, log: &mut Log, size: u64) -> Result<(Cache, bool)> {
        let mut state = load_state(&self.state_path())?;
        for n in state.networks.values_mut() {
            n.index();
        }
        let mut data = vec![0; size as usize];
        log.read_exact_at(&mut data, 0)?;
        match header(&data) {
            Some((e, len)) if e == state.epoch && e != 0 => {
                let (used, records, stopped) = replay(&mut state, &data[len..]);
                let c = Cache {
                    state,
                    offset: (len + used) as u64,
                    records,
                };
                Ok((c, !stopped))
            }
            _ => {
                // Nothing written yet is clean as it is: a read leaves no files but the lock
                // and an empty log.
                let fresh = state.epoch == 0 && state.networks.is_empty() && data.is_empty();
                let c = Cache {
                    state,
                    offset: 0,
                    records: 0,
                };
                Ok((c, fresh))
            }
        }
    }

    /// Write the state as a snapshot of a new epoch and restart the log after it. The new epoch
    /// is first appended to the old log: a process whose cache follows that log then loads
    /// again, even if this one dies between the snapshot and the log's restart. The log is
    /// restarted only after the snapshot is in place, so a crash loses no record.
    fn compact(&self, c: &mut Cache, log: &mut Log) -> Result<()> {
        let epoch = new_epoch(c.state.epoch);
        if log.len()? > 0 {
            log.append(&Record::epoch(epoch))?;
        }
        c.state.epoch = epoch;
        #[cfg(test)]
        tests::cut(tests::Cut::BeforeSnapshot)?;
        self.save(&c.state)?;
        #[cfg(test)]
        tests::cut(tests::Cut::BeforeLogRestart)?;
        log.file.set_len(0).map_err(io_err(&log.path))?;
        c.offset = log.append(&Record::epoch(epoch))? as u64;
        c.records = 0;
        Ok(())
    }

    /// Log one address change and apply it to the cache; compact when the log has outgrown the
    /// state.
    fn record(&self, c: &mut Cache, log: &mut Log, r: Record) -> Result<()> {
        let written = match log.append(&r) {
            Ok(n) => n,
            Err(e) => {
                // Take back a partial line, so the next record starts on a line of its own.
                let _ = log.file.set_len(c.offset);
                return Err(e);
            }
        };
        c.offset += written as u64;
        c.records += 1;
        apply(&mut c.state, &r);
        if c.records > c.state.addresses().max(LOG_MIN_RECORDS) {
            if let Err(e) = self.compact(c, log) {
                // The change is in the log: report it made. Epoch 0 makes the next call load
                // the files again, and compact.
                tracing::warn!("compacting {}: {e}", self.log_path().display());
                c.state.epoch = 0;
            }
        }
        Ok(())
    }

    /// The subnet of network `key`, allocating one on first call (idempotent).
    pub fn allocate_network(&self, key: &str, requested: Option<IpamRequest>) -> Result<NetAlloc> {
        self.with_state(|c, log| {
            if let Some(n) = c.state.networks.get(key) {
                return Ok(NetAlloc {
                    subnet: n.subnet,
                    gateway: n.gateway,
                });
            }
            let req = requested.unwrap_or_default();
            let mut glock = Locked::open(&self.global)?;
            let mut global = read_global(&mut glock)?;
            // Forget reservations whose owner no longer records them (crashed or deleted state
            // dirs). Networks are in the snapshot alone (network changes compact).
            global.reservations.retain(|r| {
                r.state_dir == self.dir
                    || load_state(&r.state_dir.join("ipam.json"))
                        .map(|s| s.networks.get(&r.key).map(|n| n.subnet) == Some(r.subnet))
                        .unwrap_or(false)
            });
            let mut taken: Vec<(Ipv4Net, String)> = c
                .state
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
                    // A DNS listener still bound to the gateway of a network that is gone
                    // (another process's leftover) would make ours fail to bind: skip subnets
                    // holding one.
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
            c.state.networks.insert(
                key.to_string(),
                NetState::new(subnet, gateway, req.ip_range.map(|r| r.trunc())),
            );
            self.compact(c, log)?;
            global.reservations.push(Reservation {
                subnet,
                state_dir: self.dir.clone(),
                key: key.to_string(),
            });
            write_global(&mut glock, &global)?;
            Ok(NetAlloc { subnet, gateway })
        })
    }

    /// Record a network whose subnet is fixed elsewhere (an external bridge berth did not make:
    /// pass its subnet and gateway, e.g. from `bridge::gateway_of`), so addresses can be handed
    /// out on it. No overlap check and no host-global reservation: the bridge already exists.
    /// Idempotent; an existing entry for `key` is kept as it is.
    pub fn adopt_network(&self, key: &str, subnet: Ipv4Net, gateway: Ipv4Addr) -> Result<NetAlloc> {
        self.with_state(|c, log| {
            if let Some(n) = c.state.networks.get(key) {
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
            c.state
                .networks
                .insert(key.to_string(), NetState::new(subnet, gateway, None));
            self.compact(c, log)?;
            Ok(NetAlloc { subnet, gateway })
        })
    }

    /// The subnet of a network already allocated.
    pub fn network(&self, key: &str) -> Result<Option<NetAlloc>> {
        self.with_state(|c, _| {
            Ok(c.state.networks.get(key).map(|n| NetAlloc {
                subnet: n.subnet,
                gateway: n.gateway,
            }))
        })
    }

    /// An address on network `key` for `owner` (idempotent per owner).
    pub fn allocate_address(
        &self,
        key: &str,
        owner: &str,
        requested: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr> {
        self.with_state(|c, log| {
            let net = c
                .state
                .networks
                .get(key)
                .ok_or_else(|| Error::UnknownNetwork(key.to_string()))?;
            if let Some(a) = net.addresses.get(owner) {
                if requested.is_none() || requested == Some(*a) {
                    return Ok(*a);
                }
            }
            // The owner's own address (replaced below) is neither the one requested nor, with
            // none requested, there at all: `used` need not leave it out.
            let addr = match requested {
                Some(a) => {
                    if !usable(net.subnet, a) || a == net.gateway {
                        return Err(Error::AddressOutOfRange {
                            addr: a,
                            subnet: net.subnet,
                        });
                    }
                    if net.used.contains_key(&a) {
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
                None => next_free_by(
                    net.subnet,
                    net.ip_range,
                    net.gateway,
                    |a| net.used.contains_key(&a),
                    net.last,
                )
                .ok_or(Error::NoFreeAddress(net.subnet))?,
            };
            let r = Record {
                n: key.to_string(),
                o: owner.to_string(),
                a: Some(addr),
                l: requested.is_none(),
                ..Default::default()
            };
            self.record(c, log, r)?;
            Ok(addr)
        })
    }

    /// Give back `owner`'s address on `key`; unknown network or owner is not an error.
    pub fn release_address(&self, key: &str, owner: &str) -> Result<()> {
        self.with_state(|c, log| {
            let held = c
                .state
                .networks
                .get(key)
                .is_some_and(|n| n.addresses.contains_key(owner));
            if held {
                let r = Record {
                    n: key.to_string(),
                    o: owner.to_string(),
                    ..Default::default()
                };
                self.record(c, log, r)?;
            }
            Ok(())
        })
    }

    /// Forget network `key` and its addresses, and its host-global reservation.
    pub fn release_network(&self, key: &str) -> Result<()> {
        self.with_state(|c, log| {
            if c.state.networks.remove(key).is_some() {
                self.compact(c, log)?;
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
        })
    }

    /// Keys of every allocated network (teardown checks).
    pub fn networks(&self) -> Result<Vec<String>> {
        self.with_state(|c, _| Ok(c.state.networks.keys().cloned().collect()))
    }
}

/// `ipam.log`, open for reading and appending.
struct Log {
    file: File,
    path: PathBuf,
}

impl Log {
    fn len(&self) -> Result<u64> {
        Ok(self.file.metadata().map_err(io_err(&self.path))?.len())
    }

    fn read_at(&self, buf: &mut [u8], at: u64) -> Result<usize> {
        self.file.read_at(buf, at).map_err(io_err(&self.path))
    }

    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> Result<()> {
        self.file.read_exact_at(buf, at).map_err(io_err(&self.path))
    }

    /// Append `r` as one line in a single write(2): a process killed meanwhile leaves at most a
    /// torn last line, which loading ignores. Returns its length.
    fn append(&mut self, r: &Record) -> Result<usize> {
        let mut line = serde_json::to_vec(r).map_err(|source| Error::State {
            path: self.path.clone(),
            source,
        })?;
        line.push(b'\n');
        match self.file.write(&line) {
            Ok(n) if n == line.len() => Ok(n),
            Ok(_) => Err(io_err(&self.path)(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "short write",
            ))),
            Err(e) => Err(io_err(&self.path)(e)),
        }
    }
}

/// The epoch on the log's first line and that line's length.
fn header(data: &[u8]) -> Option<(u64, usize)> {
    let len = data.iter().position(|b| *b == b'\n')?;
    let r: Record = serde_json::from_slice(&data[..len]).ok()?;
    Some((r.e?, len + 1))
}

/// Apply the records in `data` (log bytes from the start of a record) to `st`. Returns the
/// length of the records applied, their number, and whether reading stopped before the end: at
/// a torn or unreadable line (a process killed mid-write, a machine crash), or at an epoch line
/// (a compaction began: the snapshot may be newer than `st`).
fn replay(st: &mut State, data: &[u8]) -> (usize, usize, bool) {
    let (mut at, mut records) = (0, 0);
    while at < data.len() {
        let Some(len) = data[at..].iter().position(|b| *b == b'\n') else {
            return (at, records, true);
        };
        match serde_json::from_slice::<Record>(&data[at..at + len]) {
            Ok(r) if r.e.is_none() => apply(st, &r),
            _ => return (at, records, true),
        }
        at += len + 1;
        records += 1;
    }
    (at, records, false)
}

fn apply(st: &mut State, r: &Record) {
    // A network no longer there has nothing to change (releasing it restarted the log).
    let Some(net) = st.networks.get_mut(&r.n) else {
        return;
    };
    match r.a {
        Some(a) => {
            net.set(&r.o, a);
            if r.l {
                net.last = Some(a);
            }
        }
        None => net.unset(&r.o),
    }
}

/// A random epoch, neither 0 (no log) nor `old`.
fn new_epoch(old: u64) -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    let e = if n == b.len() as isize {
        u64::from_ne_bytes(b)
    } else {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        t ^ (u64::from(std::process::id()) << 32)
    };
    if e == 0 || e == old {
        old.wrapping_add(1).max(1)
    } else {
        e
    }
}

/// Put the new state at `tmp` in place of `path` atomically, by exchanging the two
/// (renameat2 RENAME_EXCHANGE): `tmp` then holds the state before and its inode is written
/// again by the next save. A rename over `path` would make an inode and free one per snapshot;
/// on ext4 without a journal each new inode walks past every inode freed in the last ~35 s.
/// Called under the state's flock (one writer of `tmp` at a time). The first save, and a
/// filesystem without the exchange, rename.
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

/// The snapshot alone (no log): what a state dir of the version before the log wrote, and
/// every network of a newer one.
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
    // Not fsynced: /run is a tmpfs (the reservations must not outlive the host's uptime), and
    // a reservation whose state dir no longer records it is dropped anyway. The fsync cost
    // 1-3 ms of every new network's creation where /run is on a disk.
    l.file.write_all(&data).map_err(io_err(GLOBAL_LOCK))
}

/// IPv4 addresses (other than 0.0.0.0 and loopback) with a UDP or TCP socket bound on port 53.
fn dns_bound_addresses() -> Vec<Ipv4Addr> {
    let mut out = vec![];
    if let Ok(text) = std::fs::read_to_string("/proc/net/udp") {
        out.extend(parse_proc_net_port(&text, 53));
    }
    // TCP: the listeners, by sock_diag (`/proc/net/tcp` walks the whole connection table: 1.9
    // ms on a 24 GiB host, on every new network's path); the table where that fails.
    match crate::sockdiag::tcp4_listeners() {
        Ok(l) => out.extend(l.into_iter().filter(|(_, p)| *p == 53).map(|(a, _)| a)),
        Err(_) => {
            if let Ok(text) = std::fs::read_to_string("/proc/net/tcp") {
                out.extend(parse_proc_net_port(&text, 53));
            }
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
    next_free_by(subnet, range, gateway, |a| used.contains(&a), after)
}

/// `next_free` with `used` as a predicate (the allocator's per-address counts).
fn next_free_by(
    subnet: Ipv4Net,
    range: Option<Ipv4Net>,
    gateway: Ipv4Addr,
    used: impl Fn(Ipv4Addr) -> bool,
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
        .find(|a| usable(subnet, *a) && *a != gateway && !used(*a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    /// A socket left listening on port 53 at the address a network's gateway would get (a DNS
    /// server of a network that is gone) keeps that subnet from being chosen: the TCP
    /// listener, found by sock_diag, as the UDP one by /proc/net/udp. In a namespace of its own.
    #[test]
    fn a_subnet_with_a_leftover_tcp_dns_listener_is_skipped() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let ns = d.path().join("ns");
        crate::netns::create(&ns).unwrap();
        let dir = d.path().to_path_buf();
        let got = crate::netns::run_in(&ns, move || {
            let g = dir.join("global.lock");
            let first = {
                let ipam = Ipam::open_with_global(&dir.join("a"), &g)?;
                let a = ipam.allocate_network("a_default", None)?;
                ipam.release_network("a_default")?;
                a.subnet
            };
            // A TCP listener on that subnet's first address, port 53, the address itself gone
            // (IP_FREEBIND: bound without it).
            // SAFETY: plain socket calls on an fd this closure owns.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            assert!(fd >= 0);
            let one: libc::c_int = 1;
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 53u16.to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(first_host(first).octets()),
                },
                sin_zero: [0; 8],
            };
            unsafe {
                assert_eq!(
                    libc::setsockopt(
                        fd,
                        libc::IPPROTO_IP,
                        libc::IP_FREEBIND,
                        (&one as *const libc::c_int).cast(),
                        4
                    ),
                    0
                );
                assert_eq!(
                    libc::bind(
                        fd,
                        (&sa as *const libc::sockaddr_in).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as u32
                    ),
                    0,
                    "bind: {}",
                    std::io::Error::last_os_error()
                );
                assert_eq!(libc::listen(fd, 1), 0);
            }
            let ipam = Ipam::open_with_global(&dir.join("b"), &g)?;
            let b = ipam.allocate_network("b_default", None)?;
            unsafe { libc::close(fd) };
            Ok((first, b.subnet))
        });
        crate::netns::remove(&ns).unwrap();
        let (first, second) = got.unwrap();
        assert_ne!(first, second, "{first} was chosen under a port-53 listener");
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
        // An address goes to the log; the snapshot is left as it is.
        let snap = std::fs::read(d.path().join("st/ipam.json")).unwrap();
        let y = ipam.allocate_address("p_default", "c2", None).unwrap();
        assert_eq!(y.to_string(), "172.31.250.2");
        assert_eq!(std::fs::read(d.path().join("st/ipam.json")).unwrap(), snap);
        // Snapshots are saved by swapping: the state's inode is the one the save before left as
        // the temp file (no inode made per save).
        use std::os::unix::fs::MetadataExt;
        ipam.adopt_network("ext", n("192.0.2.0/24"), "192.0.2.1".parse().unwrap())
            .unwrap();
        let tmp_ino = std::fs::metadata(d.path().join("st/.ipam.json.tmp"))
            .unwrap()
            .ino();
        ipam.release_network("ext").unwrap();
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

    /// Where a test makes the next compaction on its thread fail, as if the process died there.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) enum Cut {
        BeforeSnapshot,
        BeforeLogRestart,
    }

    thread_local! {
        static CUT: std::cell::Cell<Option<Cut>> = const { std::cell::Cell::new(None) };
    }

    pub(super) fn cut(at: Cut) -> Result<()> {
        if CUT.get() == Some(at) {
            CUT.set(None);
            return Err(Error::InvalidRequest(format!("cut {at:?}")));
        }
        Ok(())
    }

    fn req(s: &str) -> Option<IpamRequest> {
        Some(IpamRequest {
            subnet: Some(n(s)),
            ..Default::default()
        })
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn log_epoch(st: &Path) -> Option<u64> {
        header(&std::fs::read(st.join("ipam.log")).unwrap()).map(|h| h.0)
    }

    fn snapshot(st: &Path) -> State {
        load_state(&st.join("ipam.json")).unwrap()
    }

    #[test]
    fn shared_by_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Ipam>();
    }

    #[test]
    fn two_processes_see_each_others_changes() {
        let d = tempfile::tempdir().unwrap();
        let g = d.path().join("global.lock");
        let st = d.path().join("st");
        let a = Ipam::open_with_global(&st, &g).unwrap();
        let b = Ipam::open_with_global(&st, &g).unwrap();
        a.allocate_network("p", req("172.31.4.0/22")).unwrap();
        assert_eq!(b.networks().unwrap(), ["p"]);
        // A compaction by a (a network change) restarts the log, most often at b's offset.
        a.adopt_network("q", n("192.0.2.0/24"), ip("192.0.2.1"))
            .unwrap();
        assert_eq!(b.networks().unwrap(), ["p", "q"]);
        b.release_network("q").unwrap();
        assert_eq!(a.networks().unwrap(), ["p"]);
        let x = b.allocate_address("p", "b1", None).unwrap();
        assert_eq!(x, ip("172.31.4.2"));
        // a goes on after b's last address, and sees b's owner on it.
        assert_eq!(
            a.allocate_address("p", "a1", None).unwrap(),
            ip("172.31.4.3")
        );
        match a.allocate_address("p", "a2", Some(x)) {
            Err(Error::AddressInUse { owner, .. }) => assert_eq!(owner, "b1"),
            r => panic!("{r:?}"),
        }
        // A release by one is seen by the other.
        a.release_address("p", "b1").unwrap();
        assert_eq!(b.allocate_address("p", "b2", Some(x)).unwrap(), x);
        assert_eq!(
            b.allocate_address("p", "b3", None).unwrap(),
            ip("172.31.4.4")
        );

        // Interleaved, with every third address released by the other one: never an address
        // twice, across the compactions that the churn brings.
        let mut live: HashMap<Ipv4Addr, String> = HashMap::new();
        for (o, i) in [("b2", &b), ("a1", &a), ("b3", &b)] {
            live.insert(i.allocate_address("p", o, None).unwrap(), o.to_string());
        }
        let mut epochs = HashSet::from([log_epoch(&st)]);
        for i in 0..400 {
            let (me, other) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
            let owner = format!("o{i}");
            let addr = me.allocate_address("p", &owner, None).unwrap();
            if let Some(was) = live.insert(addr, owner.clone()) {
                panic!("{addr} handed to {owner} while {was} holds it");
            }
            if i % 3 == 0 {
                other.release_address("p", &owner).unwrap();
                live.remove(&addr);
            }
            epochs.insert(log_epoch(&st));
        }
        assert!(epochs.len() > 3, "{epochs:?}");
        // Both, and a third process, agree on every owner's address.
        let c = Ipam::open_with_global(&st, &g).unwrap();
        for (addr, owner) in &live {
            for i in [&a, &b, &c] {
                assert_eq!(i.allocate_address("p", owner, None).unwrap(), *addr);
            }
        }

        // Right after a compaction by a, b (its cache one epoch behind) still sees a's changes.
        let epoch = log_epoch(&st);
        let mut i = 0;
        while log_epoch(&st) == epoch {
            a.release_address("p", "a1").unwrap();
            a.allocate_address("p", "a1", None).unwrap();
            i += 1;
            assert!(i < 1000, "no compaction");
        }
        let last = a.allocate_address("p", "a1", None).unwrap();
        match b.allocate_address("p", "b9", Some(last)) {
            Err(Error::AddressInUse { owner, .. }) => assert_eq!(owner, "a1"),
            r => panic!("{r:?}"),
        }
        assert_eq!(
            u32::from(b.allocate_address("p", "b9", None).unwrap()),
            u32::from(last) + 1
        );
    }

    #[test]
    fn addresses_append_to_the_log_until_it_is_compacted() {
        let d = tempfile::tempdir().unwrap();
        let g = d.path().join("global.lock");
        let st = d.path().join("st");
        let a = Ipam::open_with_global(&st, &g).unwrap();
        a.allocate_network("p", req("172.31.16.0/20")).unwrap();
        let snap = std::fs::read(st.join("ipam.json")).unwrap();
        let epoch = log_epoch(&st);
        let log_len = || std::fs::metadata(st.join("ipam.log")).unwrap().len();
        let mut len = log_len();
        // Ten addresses and then churn on one owner: one record each, the snapshot untouched,
        // until the log holds more than 64 records.
        let mut ops: Vec<(&str, bool)> = vec![];
        let owners: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
        ops.extend(owners.iter().map(|o| (o.as_str(), true)));
        while ops.len() <= LOG_MIN_RECORDS {
            ops.push(("c0", false));
            ops.push(("c0", true));
        }
        ops.truncate(LOG_MIN_RECORDS + 1);
        for (i, (owner, alloc)) in ops.iter().enumerate() {
            if *alloc {
                a.allocate_address("p", owner, None).unwrap();
            } else {
                a.release_address("p", owner).unwrap();
            }
            if i < LOG_MIN_RECORDS {
                // Within the bound.
                assert_eq!(std::fs::read(st.join("ipam.json")).unwrap(), snap);
                assert_eq!(log_epoch(&st), epoch);
                assert!(log_len() > len);
                len = log_len();
            } else {
                // The 65th record: compacted, the log restarted with only its epoch line.
                assert_ne!(std::fs::read(st.join("ipam.json")).unwrap(), snap);
                assert_ne!(log_epoch(&st), epoch);
                let hdr = serde_json::to_vec(&Record::epoch(log_epoch(&st).unwrap())).unwrap();
                assert_eq!(log_len(), hdr.len() as u64 + 1);
            }
        }
        // The snapshot holds the state the log led to, and says which log follows it.
        let s = snapshot(&st);
        assert_eq!(Some(s.epoch), log_epoch(&st));
        let p = &s.networks["p"];
        assert_eq!(p.addresses.len(), 9);
        assert_eq!(p.addresses.get("c0"), None);
        assert_eq!(p.addresses.get("c9"), Some(&ip("172.31.16.11")));
        assert_eq!(p.last, Some(ip("172.31.16.38")));
        let b = Ipam::open_with_global(&st, &g).unwrap();
        assert_eq!(
            b.allocate_address("p", "c0", None).unwrap(),
            ip("172.31.16.39")
        );
    }

    #[test]
    fn a_torn_or_unreadable_log_keeps_what_came_before() {
        let d = tempfile::tempdir().unwrap();
        let g = d.path().join("global.lock");
        let st = d.path().join("st");
        let a = Ipam::open_with_global(&st, &g).unwrap();
        a.allocate_network("p", req("172.31.8.0/24")).unwrap();
        let x: Vec<Ipv4Addr> = (1..=3)
            .map(|i| a.allocate_address("p", &format!("c{i}"), None).unwrap())
            .collect();
        // The last record cut short, as by a process killed mid-write.
        let log = st.join("ipam.log");
        let f = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
        f.set_len(f.metadata().unwrap().len() - 5).unwrap();
        let b = Ipam::open_with_global(&st, &g).unwrap();
        assert_eq!(b.allocate_address("p", "c1", None).unwrap(), x[0]);
        assert_eq!(b.allocate_address("p", "c2", None).unwrap(), x[1]);
        // c3's record is gone, and `last` with it: its address is the next one.
        assert_eq!(b.allocate_address("p", "c4", None).unwrap(), x[2]);
        // The torn line was compacted away: the log takes records again, and a (its cache
        // past the log's end) loads everything again.
        match a.allocate_address("p", "c3", Some(x[2])) {
            Err(Error::AddressInUse { owner, .. }) => assert_eq!(owner, "c4"),
            r => panic!("{r:?}"),
        }
        let c3 = a.allocate_address("p", "c3", None).unwrap();
        assert_eq!(u32::from(c3), u32::from(x[2]) + 1);
        // A partial line after whole ones.
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(br#"{"n":"p","o":"c5","a":"172.31"#).unwrap();
        let c = Ipam::open_with_global(&st, &g).unwrap();
        assert_eq!(c.allocate_address("p", "c3", None).unwrap(), c3);
        assert_eq!(
            u32::from(c.allocate_address("p", "c5", None).unwrap()),
            u32::from(c3) + 1
        );

        // A log that is not one (or of another snapshot) is ignored; the snapshot's addresses
        // stay. A network change puts every address in the snapshot.
        a.adopt_network("q", n("192.0.2.0/24"), ip("192.0.2.1"))
            .unwrap();
        let want: Vec<Ipv4Addr> = ["c1", "c2", "c3", "c4", "c5"]
            .iter()
            .map(|o| a.allocate_address("p", o, None).unwrap())
            .collect();
        let other = snapshot(&st).epoch ^ 1;
        for junk in [
            "\0\0\0garbage\n{\"n\":\"p\",\"o\":\"c1\"}\n".to_string(),
            format!("{{\"e\":{other}}}\n{{\"n\":\"p\",\"o\":\"c1\"}}\n"),
        ] {
            std::fs::write(&log, junk).unwrap();
            for i in [&a, &Ipam::open_with_global(&st, &g).unwrap()] {
                let got: Vec<Ipv4Addr> = ["c1", "c2", "c3", "c4", "c5"]
                    .iter()
                    .map(|o| i.allocate_address("p", o, None).unwrap())
                    .collect();
                assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn a_compaction_cut_short_is_seen_by_a_cached_reader() {
        let d = tempfile::tempdir().unwrap();
        let g = d.path().join("global.lock");
        let st = d.path().join("st");
        let a = Ipam::open_with_global(&st, &g).unwrap();
        let b = Ipam::open_with_global(&st, &g).unwrap();
        a.allocate_network("p", req("172.31.9.0/24")).unwrap();
        let x = a.allocate_address("p", "c1", None).unwrap();
        assert_eq!(b.allocate_address("p", "c1", None).unwrap(), x);
        // a dies between the new snapshot and the log's restart: b, whose cache follows the old
        // log to its end, still sees the network.
        CUT.set(Some(Cut::BeforeLogRestart));
        assert!(a
            .adopt_network("q", n("192.0.2.0/24"), ip("192.0.2.1"))
            .is_err());
        assert_ne!(Some(snapshot(&st).epoch), log_epoch(&st));
        assert_eq!(b.networks().unwrap(), ["p", "q"]);
        assert_eq!(
            b.allocate_address("p", "c2", None).unwrap(),
            ip("172.31.9.3")
        );
        // a dies before the snapshot: nothing changed, and the log's records stay.
        CUT.set(Some(Cut::BeforeSnapshot));
        assert!(a
            .adopt_network("r", n("198.51.100.0/24"), ip("198.51.100.1"))
            .is_err());
        assert_eq!(Some(snapshot(&st).epoch), log_epoch(&st));
        assert_eq!(b.networks().unwrap(), ["p", "q"]);
        assert_eq!(
            a.allocate_address("p", "c3", None).unwrap(),
            ip("172.31.9.4")
        );
        let c = Ipam::open_with_global(&st, &g).unwrap();
        for (o, want) in [
            ("c1", x),
            ("c2", ip("172.31.9.3")),
            ("c3", ip("172.31.9.4")),
        ] {
            assert_eq!(c.allocate_address("p", o, None).unwrap(), want);
            assert_eq!(b.allocate_address("p", o, None).unwrap(), want);
        }
    }

    #[test]
    fn a_state_from_before_the_log_loads() {
        let d = tempfile::tempdir().unwrap();
        let g = d.path().join("global.lock");
        let st = d.path().join("st");
        std::fs::create_dir_all(&st).unwrap();
        std::fs::write(
            st.join("ipam.json"),
            r#"{"networks":{"p":{"subnet":"10.1.2.0/24","gateway":"10.1.2.1","ip_range":null,"addresses":{"c1":"10.1.2.2","c2":"10.1.2.5"},"last":"10.1.2.5"}}}"#,
        )
        .unwrap();
        let a = Ipam::open_with_global(&st, &g).unwrap();
        assert_eq!(a.networks().unwrap(), ["p"]);
        assert_eq!(
            a.network("p").unwrap(),
            Some(NetAlloc {
                subnet: n("10.1.2.0/24"),
                gateway: ip("10.1.2.1")
            })
        );
        assert_eq!(a.allocate_address("p", "c1", None).unwrap(), ip("10.1.2.2"));
        match a.allocate_address("p", "c9", Some(ip("10.1.2.5"))) {
            Err(Error::AddressInUse { owner, .. }) => assert_eq!(owner, "c2"),
            r => panic!("{r:?}"),
        }
        assert_eq!(a.allocate_address("p", "c3", None).unwrap(), ip("10.1.2.6"));
        // Now a snapshot with an epoch and a log that follows it; a restart reads both.
        let s = snapshot(&st);
        assert_ne!(s.epoch, 0);
        assert_eq!(log_epoch(&st), Some(s.epoch));
        let b = Ipam::open_with_global(&st, &g).unwrap();
        assert_eq!(b.allocate_address("p", "c3", None).unwrap(), ip("10.1.2.6"));
        assert_eq!(b.allocate_address("p", "c4", None).unwrap(), ip("10.1.2.7"));
        b.release_address("p", "c2").unwrap();
        assert_eq!(
            a.allocate_address("p", "c9", Some(ip("10.1.2.5"))).unwrap(),
            ip("10.1.2.5")
        );
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
