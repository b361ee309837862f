//! cgroups v1 (one directory per controller hierarchy) and v2 (one unified directory).
//!
//! `linux.cgroupsPath` (e.g. `/berth/<project>/<id>`) is taken relative to the root of every
//! hierarchy. Creation is `mkdir -p` that tolerates a concurrent delete removing an empty
//! parent; removal walks back up and removes parents that became empty, so nothing of ours is
//! left in the tree.
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType, LinuxResources};
use serde::Serialize;

use crate::error::{Result, RuntimeError};

pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const V1_CONTROLLERS: &[&str] = &[
    "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids",
];

/// Which layout the host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

pub fn host_version() -> Version {
    if Path::new(CGROUP_ROOT).join("cgroup.controllers").exists() {
        Version::V2
    } else {
        Version::V1
    }
}

/// The cgroup of one container, across all hierarchies.
#[derive(Debug, Clone)]
pub struct Cgroup {
    pub version: Version,
    /// Normalised relative path, e.g. `berth/proj/id`.
    pub rel: PathBuf,
    /// (controller name, hierarchy root) for v1; ("", root) for v2.
    pub hierarchies: Vec<(String, PathBuf)>,
}

fn cg_err(path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Cgroup {
        path: path.to_path_buf(),
        source,
    }
}

/// True when `e` is a cgroup that could not be made because the cgroup tree is not writable
/// from a user namespace other than the initial one (a rootless caller without a delegated
/// subtree): the caller then runs without a cgroup instead of failing.
pub fn unwritable_in_user_namespace(e: &RuntimeError) -> bool {
    let RuntimeError::Cgroup { source, .. } = e else {
        return false;
    };
    let denied = matches!(
        source.raw_os_error(),
        Some(libc::EACCES | libc::EPERM | libc::EROFS)
    );
    denied && in_user_namespace()
}

/// True in a user namespace other than the initial one.
pub fn in_user_namespace() -> bool {
    fs::read_to_string("/proc/self/uid_map")
        .map(|m| m.split_whitespace().collect::<Vec<_>>() != ["0", "0", "4294967295"])
        .unwrap_or(false)
}

/// The default cgroups path when the spec gives none.
pub fn default_path(id: &str) -> String {
    format!("/berth/{id}")
}

impl Cgroup {
    pub fn new(cgroups_path: &str) -> Result<Cgroup> {
        let mut rel = PathBuf::new();
        for c in Path::new(cgroups_path).components() {
            match c {
                std::path::Component::Normal(n) => rel.push(n),
                std::path::Component::RootDir | std::path::Component::CurDir => {}
                _ => {
                    return Err(RuntimeError::InvalidSpec(format!(
                        "cgroupsPath {cgroups_path:?} must not contain '..'"
                    )))
                }
            }
        }
        if rel.as_os_str().is_empty() {
            return Err(RuntimeError::InvalidSpec("empty cgroupsPath".into()));
        }
        let version = host_version();
        let hierarchies = match version {
            Version::V2 => vec![(String::new(), PathBuf::from(CGROUP_ROOT))],
            Version::V1 => {
                let mut v: Vec<(String, PathBuf)> = Vec::new();
                let mut seen: Vec<PathBuf> = Vec::new();
                for c in V1_CONTROLLERS {
                    let p = Path::new(CGROUP_ROOT).join(c);
                    let Ok(canon) = fs::canonicalize(&p) else {
                        continue;
                    };
                    if seen.contains(&canon) {
                        continue;
                    }
                    seen.push(canon.clone());
                    v.push((c.to_string(), canon));
                }
                v
            }
        };
        Ok(Cgroup {
            version,
            rel,
            hierarchies,
        })
    }

    pub fn dirs(&self) -> impl Iterator<Item = PathBuf> + '_ {
        self.hierarchies.iter().map(|(_, r)| r.join(&self.rel))
    }

    fn dir_of(&self, controller: &str) -> Option<PathBuf> {
        self.hierarchies
            .iter()
            .find(|(c, _)| c.is_empty() || c == controller)
            .map(|(_, r)| r.join(&self.rel))
    }

    /// `mkdir -p` in every hierarchy; v1 cpuset levels inherit cpus/mems from their parent.
    pub fn create(&self) -> Result<()> {
        for (ctrl, root) in &self.hierarchies {
            let mut cur = root.clone();
            for comp in self.rel.components() {
                cur.push(comp);
                let mut tries = 0;
                loop {
                    match fs::create_dir(&cur) {
                        Ok(()) => break,
                        Err(e) if e.kind() == ErrorKind::AlreadyExists => break,
                        // A concurrent delete removed an empty parent under us: redo it.
                        Err(e) if e.kind() == ErrorKind::NotFound && tries < 20 => {
                            tries += 1;
                            if let Some(p) = cur.parent() {
                                let _ = fs::create_dir_all(p);
                            }
                        }
                        Err(e) => return Err(cg_err(&cur)(e)),
                    }
                }
                // Every level, new or not: a concurrent creator may not have filled it yet.
                if ctrl == "cpuset" {
                    init_cpuset(&cur)?;
                }
            }
            if self.version == Version::V2 {
                enable_v2_controllers(root, &self.rel);
            }
        }
        Ok(())
    }

    pub fn add_pid(&self, pid: i32) -> Result<()> {
        for d in self.dirs() {
            let f = d.join("cgroup.procs");
            fs::write(&f, pid.to_string()).map_err(cg_err(&f))?;
        }
        Ok(())
    }

    pub fn apply(&self, res: &LinuxResources, extra_devices: &[LinuxDeviceCgroup]) -> Result<()> {
        match self.version {
            Version::V1 => self.apply_v1(res, extra_devices),
            Version::V2 => self.apply_v2(res),
        }
    }

    fn apply_v1(&self, res: &LinuxResources, extra_devices: &[LinuxDeviceCgroup]) -> Result<()> {
        if let (Some(m), Some(d)) = (res.memory(), self.dir_of("memory")) {
            if let Some(r) = m.reservation() {
                write(&d, "memory.soft_limit_in_bytes", &r.to_string())?;
            }
            if let Some(l) = m.limit() {
                let swap = m.swap();
                let has_memsw = d.join("memory.memsw.limit_in_bytes").exists();
                // Raise memsw first when it has to hold the new limit, else set limit first.
                let l_s = if l < 0 {
                    "-1".to_string()
                } else {
                    l.to_string()
                };
                if has_memsw {
                    if let Some(s) = swap {
                        let s_s = if s < 0 {
                            "-1".to_string()
                        } else {
                            s.to_string()
                        };
                        if write(&d, "memory.limit_in_bytes", &l_s).is_err() {
                            write(&d, "memory.memsw.limit_in_bytes", &s_s)?;
                            write(&d, "memory.limit_in_bytes", &l_s)?;
                        } else {
                            write(&d, "memory.memsw.limit_in_bytes", &s_s)?;
                        }
                    } else {
                        write(&d, "memory.limit_in_bytes", &l_s)?;
                    }
                } else {
                    write(&d, "memory.limit_in_bytes", &l_s)?;
                }
            }
            if let Some(sw) = m.swappiness() {
                let _ = write(&d, "memory.swappiness", &sw.to_string());
            }
            if m.disable_oom_killer() == Some(true) {
                write(&d, "memory.oom_control", "1")?;
            }
        }
        if let Some(c) = res.cpu() {
            if let Some(d) = self.dir_of("cpu") {
                if let Some(s) = c.shares() {
                    write(&d, "cpu.shares", &s.to_string())?;
                }
                if let Some(p) = c.period() {
                    write(&d, "cpu.cfs_period_us", &p.to_string())?;
                }
                if let Some(q) = c.quota() {
                    write(&d, "cpu.cfs_quota_us", &q.to_string())?;
                }
            }
            if let Some(d) = self.dir_of("cpuset") {
                if let Some(cpus) = c.cpus() {
                    write(&d, "cpuset.cpus", cpus)?;
                }
                if let Some(mems) = c.mems() {
                    write(&d, "cpuset.mems", mems)?;
                }
            }
        }
        if let (Some(p), Some(d)) = (res.pids(), self.dir_of("pids")) {
            let v = if p.limit() > 0 {
                p.limit().to_string()
            } else {
                "max".to_string()
            };
            write(&d, "pids.max", &v)?;
        }
        if let Some(d) = self.dir_of("devices") {
            let mut rules: Vec<LinuxDeviceCgroup> = res.devices().clone().unwrap_or_default();
            if !rules.is_empty() {
                rules.extend(extra_devices.iter().cloned());
                for r in &rules {
                    let file = if r.allow() {
                        "devices.allow"
                    } else {
                        "devices.deny"
                    };
                    match write(&d, file, &device_rule(r)) {
                        // v1's device controller needs CAP_SYS_ADMIN in the initial user
                        // namespace, even in a delegated cgroup: from another user namespace
                        // the devices stay bounded by it (no mknod, only bound device nodes).
                        Err(RuntimeError::Cgroup { source, .. })
                            if source.raw_os_error() == Some(libc::EPERM)
                                && in_user_namespace() =>
                        {
                            break
                        }
                        r => r?,
                    }
                }
            }
        }
        if let (Some(b), Some(d)) = (res.block_io(), self.dir_of("blkio")) {
            if let Some(w) = b.weight() {
                let _ = write(&d, "blkio.weight", &w.to_string());
            }
        }
        Ok(())
    }

    fn apply_v2(&self, res: &LinuxResources) -> Result<()> {
        let d = self.hierarchies[0].1.join(&self.rel);
        if let Some(m) = res.memory() {
            if let Some(l) = m.limit() {
                write(&d, "memory.max", &max_or(l))?;
                if let Some(s) = m.swap() {
                    // v1 semantics: swap is memory+swap.
                    let sw = if s < 0 { -1 } else { (s - l).max(0) };
                    let _ = write(&d, "memory.swap.max", &max_or(sw));
                }
            }
            if let Some(r) = m.reservation() {
                write(&d, "memory.low", &max_or(r))?;
            }
        }
        if let Some(c) = res.cpu() {
            if let Some(s) = c.shares() {
                // runc's conversion of shares [2..262144] to weight [1..10000].
                let w = 1 + ((s.saturating_sub(2)) * 9999) / 262142;
                write(&d, "cpu.weight", &w.to_string())?;
            }
            if c.quota().is_some() || c.period().is_some() {
                let q = c.quota().map(max_or).unwrap_or_else(|| "max".into());
                let p = c.period().unwrap_or(100000);
                write(&d, "cpu.max", &format!("{q} {p}"))?;
            }
            if let Some(cpus) = c.cpus() {
                write(&d, "cpuset.cpus", cpus)?;
            }
            if let Some(mems) = c.mems() {
                write(&d, "cpuset.mems", mems)?;
            }
        }
        if let Some(p) = res.pids() {
            write(&d, "pids.max", &max_or(p.limit()))?;
        }
        Ok(())
    }

    /// Every pid in the container's cgroup (host pid namespace).
    pub fn pids(&self) -> Vec<i32> {
        let d = self
            .dir_of("pids")
            .or_else(|| self.dir_of("memory"))
            .or_else(|| self.dirs().next());
        let Some(d) = d else { return vec![] };
        fs::read_to_string(d.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    pub fn exists(&self) -> bool {
        self.dirs().any(|d| d.exists())
    }

    pub fn freeze(&self, frozen: bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        match self.version {
            Version::V1 => {
                let Some(d) = self.dir_of("freezer") else {
                    return Err(RuntimeError::InvalidSpec("no freezer cgroup".into()));
                };
                let want = if frozen { "FROZEN" } else { "THAWED" };
                loop {
                    write(&d, "freezer.state", want)?;
                    let cur = fs::read_to_string(d.join("freezer.state")).unwrap_or_default();
                    if cur.trim() == want || Instant::now() > deadline {
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            Version::V2 => {
                let d = self.hierarchies[0].1.join(&self.rel);
                write(&d, "cgroup.freeze", if frozen { "1" } else { "0" })?;
                loop {
                    let ev = fs::read_to_string(d.join("cgroup.events")).unwrap_or_default();
                    let want = if frozen { "frozen 1" } else { "frozen 0" };
                    if ev.lines().any(|l| l.trim() == want) || Instant::now() > deadline {
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }

    pub fn frozen(&self) -> bool {
        match self.version {
            Version::V1 => self
                .dir_of("freezer")
                .and_then(|d| fs::read_to_string(d.join("freezer.state")).ok())
                .map(|s| s.trim() == "FROZEN" || s.trim() == "FREEZING")
                .unwrap_or(false),
            Version::V2 => {
                fs::read_to_string(self.hierarchies[0].1.join(&self.rel).join("cgroup.freeze"))
                    .map(|s| s.trim() == "1")
                    .unwrap_or(false)
            }
        }
    }

    pub fn stats(&self) -> Stats {
        let mut s = Stats::default();
        let num = |d: &Option<PathBuf>, f: &str| -> Option<u64> {
            d.as_ref()
                .and_then(|d| fs::read_to_string(d.join(f)).ok())
                .and_then(|v| v.trim().parse().ok())
        };
        match self.version {
            Version::V1 => {
                let m = self.dir_of("memory");
                s.memory_usage = num(&m, "memory.usage_in_bytes").unwrap_or(0);
                s.memory_max_usage = num(&m, "memory.max_usage_in_bytes").unwrap_or(0);
                s.memory_limit = num(&m, "memory.limit_in_bytes");
                s.memory_failcnt = num(&m, "memory.failcnt").unwrap_or(0);
                s.oom_kills = m
                    .as_ref()
                    .and_then(|d| fs::read_to_string(d.join("memory.oom_control")).ok())
                    .and_then(|t| keyed(&t, "oom_kill"))
                    .unwrap_or(0);
                s.cpu_usage_ns = num(&self.dir_of("cpuacct"), "cpuacct.usage").unwrap_or(0);
                s.memory_inactive_file = m
                    .as_ref()
                    .and_then(|d| fs::read_to_string(d.join("memory.stat")).ok())
                    .and_then(|t| keyed(&t, "total_inactive_file"))
                    .unwrap_or(0);
                (s.blkio_read, s.blkio_write) = self
                    .dir_of("blkio")
                    .and_then(|d| {
                        fs::read_to_string(d.join("blkio.throttle.io_service_bytes")).ok()
                    })
                    .map(|t| parse_blkio_v1(&t))
                    .unwrap_or((0, 0));
                let p = self.dir_of("pids");
                s.pids_current = num(&p, "pids.current").unwrap_or(0);
                s.pids_limit = num(&p, "pids.max");
            }
            Version::V2 => {
                let d = Some(self.hierarchies[0].1.join(&self.rel));
                s.memory_usage = num(&d, "memory.current").unwrap_or(0);
                s.memory_max_usage = num(&d, "memory.peak").unwrap_or(0);
                s.memory_limit = num(&d, "memory.max");
                let ev = d
                    .as_ref()
                    .and_then(|d| fs::read_to_string(d.join("memory.events")).ok())
                    .unwrap_or_default();
                s.oom_kills = keyed(&ev, "oom_kill").unwrap_or(0);
                s.memory_failcnt = keyed(&ev, "max").unwrap_or(0);
                let cpu = d
                    .as_ref()
                    .and_then(|d| fs::read_to_string(d.join("cpu.stat")).ok())
                    .unwrap_or_default();
                s.cpu_usage_ns = keyed(&cpu, "usage_usec").unwrap_or(0) * 1000;
                s.memory_inactive_file = d
                    .as_ref()
                    .and_then(|d| fs::read_to_string(d.join("memory.stat")).ok())
                    .and_then(|t| keyed(&t, "inactive_file"))
                    .unwrap_or(0);
                (s.blkio_read, s.blkio_write) = d
                    .as_ref()
                    .and_then(|d| fs::read_to_string(d.join("io.stat")).ok())
                    .map(|t| parse_io_stat_v2(&t))
                    .unwrap_or((0, 0));
                s.pids_current = num(&d, "pids.current").unwrap_or(0);
                s.pids_limit = num(&d, "pids.max");
            }
        }
        s
    }

    /// Kill every process left in the cgroup (SIGKILL), bounded in time.
    pub fn kill_all(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = self.pids();
            if pids.is_empty() || Instant::now() > deadline {
                return;
            }
            // A frozen task cannot die: thaw first.
            if self.frozen() {
                let _ = self.freeze(false);
            }
            for p in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Remove the container's directories and any parent that became empty.
    pub fn remove(&self) -> Result<()> {
        let mut first_err = None;
        for (_, root) in &self.hierarchies {
            let leaf = root.join(&self.rel);
            let deadline = Instant::now() + Duration::from_secs(3);
            loop {
                match fs::remove_dir(&leaf) {
                    Ok(()) => break,
                    Err(e) if e.kind() == ErrorKind::NotFound => break,
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => {
                        if first_err.is_none() {
                            first_err = Some(cg_err(&leaf)(e));
                        }
                        break;
                    }
                }
            }
            let mut p = leaf.parent().map(Path::to_path_buf);
            while let Some(dir) = p {
                if dir == *root || !dir.starts_with(root) {
                    break;
                }
                if fs::remove_dir(&dir).is_err() {
                    break; // not empty (another container) or already gone
                }
                p = dir.parent().map(Path::to_path_buf);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Resource statistics of a container's cgroup.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Stats {
    pub memory_usage: u64,
    pub memory_max_usage: u64,
    pub memory_limit: Option<u64>,
    pub memory_failcnt: u64,
    pub oom_kills: u64,
    pub cpu_usage_ns: u64,
    pub pids_current: u64,
    pub pids_limit: Option<u64>,
    /// Page cache that could be dropped (`total_inactive_file` / `inactive_file`): `docker
    /// stats` shows usage minus this.
    #[serde(default)]
    pub memory_inactive_file: u64,
    /// Bytes read from and written to block devices.
    #[serde(default)]
    pub blkio_read: u64,
    #[serde(default)]
    pub blkio_write: u64,
}

/// Sum v1 `blkio.throttle.io_service_bytes` lines (`MAJ:MIN Read N`) into (read, write).
pub fn parse_blkio_v1(text: &str) -> (u64, u64) {
    let (mut r, mut w) = (0, 0);
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if let [_, op, n] = f.as_slice() {
            let n: u64 = n.parse().unwrap_or(0);
            match *op {
                "Read" => r += n,
                "Write" => w += n,
                _ => {}
            }
        }
    }
    (r, w)
}

/// Sum v2 `io.stat` lines (`MAJ:MIN rbytes=N wbytes=N …`) into (read, write).
pub fn parse_io_stat_v2(text: &str) -> (u64, u64) {
    let (mut r, mut w) = (0, 0);
    for l in text.lines() {
        for kv in l.split_whitespace().skip(1) {
            match kv.split_once('=') {
                Some(("rbytes", n)) => r += n.parse::<u64>().unwrap_or(0),
                Some(("wbytes", n)) => w += n.parse::<u64>().unwrap_or(0),
                _ => {}
            }
        }
    }
    (r, w)
}

fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        if it.next()? == key {
            it.next()?.parse().ok()
        } else {
            None
        }
    })
}

fn max_or(v: i64) -> String {
    if v < 0 {
        "max".into()
    } else {
        v.to_string()
    }
}

fn write(dir: &Path, file: &str, val: &str) -> Result<()> {
    let p = dir.join(file);
    fs::write(&p, val).map_err(cg_err(&p))
}

fn init_cpuset(dir: &Path) -> Result<()> {
    let parent = dir.parent().unwrap_or(dir);
    for f in ["cpuset.cpus", "cpuset.mems"] {
        let cur = fs::read_to_string(dir.join(f)).unwrap_or_default();
        if cur.trim().is_empty() {
            let v = fs::read_to_string(parent.join(f)).unwrap_or_default();
            write(dir, f, v.trim())?;
        }
    }
    Ok(())
}

fn enable_v2_controllers(root: &Path, rel: &Path) {
    // Enable every available controller down the path, best effort (a parent with processes
    // cannot delegate; the leaf then simply lacks the files and apply reports it).
    let mut cur = root.to_path_buf();
    for comp in rel.components() {
        let avail = fs::read_to_string(cur.join("cgroup.controllers")).unwrap_or_default();
        let want: Vec<String> = avail.split_whitespace().map(|c| format!("+{c}")).collect();
        let _ = fs::write(cur.join("cgroup.subtree_control"), want.join(" "));
        cur.push(comp);
    }
}

/// `c 1:3 rwm`-style rule for v1 `devices.allow` / `devices.deny`.
pub fn device_rule(r: &LinuxDeviceCgroup) -> String {
    let t = match r.typ() {
        None | Some(LinuxDeviceType::A) => 'a',
        Some(LinuxDeviceType::B) => 'b',
        Some(LinuxDeviceType::C) | Some(LinuxDeviceType::U) => 'c',
        Some(LinuxDeviceType::P) => 'p',
    };
    let n = |v: Option<i64>| match v {
        Some(v) if v >= 0 => v.to_string(),
        _ => "*".to_string(),
    };
    let access = r.access().clone().unwrap_or_else(|| "rwm".into());
    format!("{t} {}:{} {access}", n(r.major()), n(r.minor()))
}

/// Used by `state`: is the container's freezer frozen?
pub fn is_frozen(cgroups_path: Option<&str>, _pid: i32) -> bool {
    match cgroups_path.map(Cgroup::new) {
        Some(Ok(cg)) => cg.frozen(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxDeviceCgroupBuilder;

    #[test]
    fn rules() {
        let r = LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .unwrap();
        assert_eq!(device_rule(&r), "a *:* rwm");
        let r = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::C)
            .major(1)
            .minor(3)
            .access("rw")
            .build()
            .unwrap();
        assert_eq!(device_rule(&r), "c 1:3 rw");
    }

    #[test]
    fn path_normalisation() {
        let c = Cgroup::new("/berth/p/c1").unwrap();
        assert_eq!(c.rel, PathBuf::from("berth/p/c1"));
        assert!(Cgroup::new("/berth/../etc").is_err());
        assert!(Cgroup::new("/").is_err());
    }

    #[test]
    fn block_io_both_layouts() {
        let v1 = "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:0 Total 12288\n8:16 Read 1\nTotal 12289\n";
        assert_eq!(parse_blkio_v1(v1), (4097, 8192));
        let v2 =
            "8:0 rbytes=1000 wbytes=2000 rios=1 wios=2 dbytes=0 dios=0\n259:0 rbytes=5 wbytes=0\n";
        assert_eq!(parse_io_stat_v2(v2), (1005, 2000));
        assert_eq!(parse_io_stat_v2(""), (0, 0));
    }

    #[test]
    fn keyed_values() {
        assert_eq!(
            keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n", "oom_kill"),
            Some(3)
        );
        assert_eq!(keyed("a 1", "b"), None);
    }
}
