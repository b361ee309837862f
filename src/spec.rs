//! Service → OCI runtime spec: the seam between the Compose side and the runtime.
//! Pure: the engine resolves everything (image config, user ids, paths, addresses) into a
//! `ContainerConfig`, and this module renders it, with berth's security defaults (Docker's
//! capabilities, masked and read-only paths, seccomp; `no_new_privileges` on like Podman; pids
//! limit 2048; nofile 1024:524288; /dev/shm 64 MiB).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use oci_spec::runtime::Spec;
use serde_json::{json, Value};

/// Docker's defaults live with the runtime, which enforces them.
pub use berth_runtime::capabilities::DOCKER_DEFAULT_CAPS as DEFAULT_CAPS;
pub use berth_runtime::rootfs::{
    DOCKER_MASKED_PATHS as MASKED_PATHS, DOCKER_READONLY_PATHS as READONLY_PATHS,
};

/// Every capability the kernel knows (for `privileged` and `cap_add: ALL`).
pub const ALL_CAPS: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

pub const DEFAULT_PIDS_LIMIT: i64 = 2048;
pub const DEFAULT_SHM_SIZE: u64 = 64 * 1024 * 1024;
pub const DEFAULT_NOFILE: (u64, u64) = (1024, 524288);

#[derive(Debug, Clone, PartialEq)]
pub enum NetNs {
    /// Join this persistent namespace (made by the network crate).
    Path(PathBuf),
    /// The host's network namespace (`network_mode: host`).
    Host,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Seccomp {
    /// Docker's default profile, already resolved for the container's capabilities.
    Profile(Value),
    Unconfined,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MountSpec {
    pub kind: String,
    pub source: String,
    pub destination: String,
    pub options: Vec<String>,
}

impl MountSpec {
    pub fn bind(
        source: impl Into<String>,
        destination: impl Into<String>,
        read_only: bool,
    ) -> MountSpec {
        let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
        options.push(if read_only { "ro" } else { "rw" }.to_string());
        MountSpec {
            kind: "bind".into(),
            source: source.into(),
            destination: destination.into(),
            options,
        }
    }
    pub fn tmpfs(
        destination: impl Into<String>,
        size: Option<u64>,
        mode: Option<u32>,
    ) -> MountSpec {
        let mut options = vec!["nosuid".to_string(), "nodev".to_string()];
        if let Some(s) = size {
            options.push(format!("size={s}"));
        }
        if let Some(m) = mode {
            options.push(format!("mode={m:o}"));
        }
        MountSpec {
            kind: "tmpfs".into(),
            source: "tmpfs".into(),
            destination: destination.into(),
            options,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    pub path: String,
    pub kind: char,
    pub major: i64,
    pub minor: i64,
    pub file_mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub permissions: String,
}

/// Everything the spec needs, already resolved by the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerConfig {
    pub id: String,
    pub hostname: String,
    pub domainname: Option<String>,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub rootfs: PathBuf,
    pub read_only: bool,
    pub netns: NetNs,
    pub mounts: Vec<MountSpec>,
    pub tty: bool,
    pub init: bool,
    pub privileged: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub no_new_privileges: bool,
    pub seccomp: Seccomp,
    pub pids_limit: Option<i64>,
    pub memory: Option<i64>,
    pub memory_reservation: Option<i64>,
    pub cpus: Option<f64>,
    pub cpu_shares: Option<u64>,
    pub cpuset: Option<String>,
    pub ulimits: Vec<(String, u64, u64)>,
    pub sysctls: BTreeMap<String, String>,
    pub shm_size: Option<u64>,
    pub devices: Vec<Device>,
    pub cgroups_path: String,
    pub oom_score_adj: Option<i32>,
    pub annotations: BTreeMap<String, String>,
}

impl ContainerConfig {
    /// A minimal config with berth's defaults; the engine fills in the rest.
    pub fn new(id: &str, rootfs: PathBuf, args: Vec<String>) -> ContainerConfig {
        ContainerConfig {
            id: id.to_string(),
            hostname: id.to_string(),
            domainname: None,
            args,
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            rootfs,
            read_only: false,
            netns: NetNs::Host,
            mounts: vec![],
            tty: false,
            init: false,
            privileged: false,
            cap_add: vec![],
            cap_drop: vec![],
            no_new_privileges: true,
            seccomp: Seccomp::Unconfined,
            pids_limit: None,
            memory: None,
            memory_reservation: None,
            cpus: None,
            cpu_shares: None,
            cpuset: None,
            ulimits: vec![],
            sysctls: BTreeMap::new(),
            shm_size: None,
            devices: vec![],
            cgroups_path: format!("/berth/{id}"),
            oom_score_adj: None,
            annotations: BTreeMap::new(),
        }
    }
}

fn normalize_cap(c: &str) -> String {
    let up = c.trim().to_ascii_uppercase();
    if up == "ALL" || up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    }
}

/// The effective capability set: Docker's defaults (or all when privileged), plus cap_add,
/// minus cap_drop (`ALL` works in both, drop wins over add as in Docker).
pub fn capabilities(c: &ContainerConfig) -> Vec<String> {
    let mut caps: Vec<String> = if c.privileged {
        ALL_CAPS.iter().map(|s| s.to_string()).collect()
    } else {
        DEFAULT_CAPS.iter().map(|s| s.to_string()).collect()
    };
    for a in c.cap_add.iter().map(|s| normalize_cap(s)) {
        if a == "ALL" {
            caps = ALL_CAPS.iter().map(|s| s.to_string()).collect();
        } else if !caps.contains(&a) {
            caps.push(a);
        }
    }
    for d in c.cap_drop.iter().map(|s| normalize_cap(s)) {
        if d == "ALL" {
            caps.clear();
        } else {
            caps.retain(|x| *x != d);
        }
    }
    caps
}

fn rlimit_type(name: &str) -> Option<&'static str> {
    Some(match name.to_ascii_lowercase().as_str() {
        "core" => "RLIMIT_CORE",
        "cpu" => "RLIMIT_CPU",
        "data" => "RLIMIT_DATA",
        "fsize" => "RLIMIT_FSIZE",
        "locks" => "RLIMIT_LOCKS",
        "memlock" => "RLIMIT_MEMLOCK",
        "msgqueue" => "RLIMIT_MSGQUEUE",
        "nice" => "RLIMIT_NICE",
        "nofile" => "RLIMIT_NOFILE",
        "nproc" => "RLIMIT_NPROC",
        "rss" => "RLIMIT_RSS",
        "rtprio" => "RLIMIT_RTPRIO",
        "rttime" => "RLIMIT_RTTIME",
        "sigpending" => "RLIMIT_SIGPENDING",
        "stack" => "RLIMIT_STACK",
        "as" => "RLIMIT_AS",
        _ => return None,
    })
}

/// Only namespaced sysctls may be set in a container (as Docker validates).
pub fn sysctl_allowed(key: &str, host_network: bool) -> bool {
    const IPC: [&str; 7] = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
    ];
    IPC.contains(&key)
        || key == "kernel.shm_rmid_forced"
        || key.starts_with("fs.mqueue.")
        || (!host_network && key.starts_with("net."))
}

/// Render the OCI spec.
pub fn build(c: &ContainerConfig) -> anyhow::Result<Spec> {
    let caps = capabilities(c);
    // Like moby: a non-root user starts with no effective/permitted capabilities.
    let (eff, perm) = if c.uid == 0 {
        (caps.clone(), caps.clone())
    } else {
        (vec![], vec![])
    };

    let mut rlimits = vec![];
    let mut have_nofile = false;
    for (name, soft, hard) in &c.ulimits {
        let t = rlimit_type(name).with_context(|| format!("unknown ulimit {name:?}"))?;
        have_nofile |= t == "RLIMIT_NOFILE";
        rlimits.push(json!({"type": t, "soft": soft, "hard": hard}));
    }
    if !have_nofile {
        rlimits.push(
            json!({"type": "RLIMIT_NOFILE", "soft": DEFAULT_NOFILE.0, "hard": DEFAULT_NOFILE.1}),
        );
    }

    let shm = c.shm_size.unwrap_or(DEFAULT_SHM_SIZE);
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", if c.privileged { "rw" } else { "ro" }]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", if c.privileged { "rw" } else { "ro" }]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", format!("size={shm}")]}),
    ];
    for m in &c.mounts {
        mounts.push(json!({"destination": m.destination, "type": m.kind, "source": m.source, "options": m.options}));
    }

    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
        json!({"type": "cgroup"}),
    ];
    let host_network = matches!(c.netns, NetNs::Host);
    if let NetNs::Path(p) = &c.netns {
        namespaces.push(json!({"type": "network", "path": p}));
    }

    let mut resources = serde_json::Map::new();
    resources.insert(
        "pids".into(),
        json!({"limit": c.pids_limit.unwrap_or(DEFAULT_PIDS_LIMIT)}),
    );
    let mut memory = serde_json::Map::new();
    if let Some(m) = c.memory {
        memory.insert("limit".into(), json!(m));
    }
    if let Some(m) = c.memory_reservation {
        memory.insert("reservation".into(), json!(m));
    }
    if !memory.is_empty() {
        resources.insert("memory".into(), Value::Object(memory));
    }
    let mut cpu = serde_json::Map::new();
    if let Some(cpus) = c.cpus {
        let period: u64 = 100_000;
        cpu.insert("period".into(), json!(period));
        cpu.insert("quota".into(), json!((cpus * period as f64).round() as i64));
    }
    if let Some(s) = c.cpu_shares {
        cpu.insert("shares".into(), json!(s));
    }
    if let Some(s) = &c.cpuset {
        cpu.insert("cpus".into(), json!(s));
    }
    if !cpu.is_empty() {
        resources.insert("cpu".into(), Value::Object(cpu));
    }
    // Device cgroup: deny all, then Docker's default allow list (+ explicit devices).
    let mut dev_rules = vec![json!({"allow": c.privileged, "access": "rwm"})];
    if !c.privileged {
        for (t, maj, min, acc) in [
            ("c", Some(1), Some(3), "rwm"),    // null
            ("c", Some(1), Some(5), "rwm"),    // zero
            ("c", Some(1), Some(7), "rwm"),    // full
            ("c", Some(1), Some(8), "rwm"),    // random
            ("c", Some(1), Some(9), "rwm"),    // urandom
            ("c", Some(5), Some(0), "rwm"),    // tty
            ("c", Some(5), Some(1), "rwm"),    // console
            ("c", Some(5), Some(2), "rwm"),    // ptmx
            ("c", Some(136), None, "rwm"),     // pts/*
            ("c", Some(10), Some(200), "rwm"), // net/tun
            ("c", None, None, "m"),
            ("b", None, None, "m"),
        ] {
            let mut r = serde_json::Map::new();
            r.insert("allow".into(), json!(true));
            r.insert("type".into(), json!(t));
            if let Some(m) = maj {
                r.insert("major".into(), json!(m));
            }
            if let Some(m) = min {
                r.insert("minor".into(), json!(m));
            }
            r.insert("access".into(), json!(acc));
            dev_rules.push(Value::Object(r));
        }
    }
    let mut devices = vec![];
    for d in &c.devices {
        devices.push(
            json!({"path": d.path, "type": d.kind.to_string(), "major": d.major, "minor": d.minor,
            "fileMode": d.file_mode, "uid": d.uid, "gid": d.gid}),
        );
        dev_rules.push(json!({"allow": true, "type": d.kind.to_string(), "major": d.major, "minor": d.minor, "access": d.permissions}));
    }
    resources.insert("devices".into(), Value::Array(dev_rules));

    let sysctls: BTreeMap<&String, &String> = c.sysctls.iter().collect();
    for k in sysctls.keys() {
        if !sysctl_allowed(k, host_network) {
            anyhow::bail!("sysctl {k:?} is not namespaced and cannot be set in a container");
        }
    }

    let mut linux = json!({
        "namespaces": namespaces,
        "resources": Value::Object(resources),
        "cgroupsPath": c.cgroups_path,
        "sysctl": sysctls,
        "rootfsPropagation": "rprivate",
    });
    if !devices.is_empty() {
        linux["devices"] = Value::Array(devices);
    }
    if !c.privileged {
        linux["maskedPaths"] = json!(MASKED_PATHS);
        linux["readonlyPaths"] = json!(READONLY_PATHS);
        if let Seccomp::Profile(p) = &c.seccomp {
            linux["seccomp"] = p.clone();
        }
    }

    let mut process = json!({
        "terminal": c.tty,
        "user": {"uid": c.uid, "gid": c.gid, "additionalGids": c.additional_gids},
        "args": c.args,
        "env": c.env,
        "cwd": c.cwd,
        "capabilities": {"bounding": caps, "effective": eff, "permitted": perm, "inheritable": [], "ambient": []},
        "rlimits": rlimits,
        "noNewPrivileges": c.no_new_privileges,
    });
    if let Some(adj) = c.oom_score_adj {
        process["oomScoreAdj"] = json!(adj);
    }
    let mut annotations = c.annotations.clone();
    if c.init {
        annotations.insert(
            berth_runtime::container::INIT_ANNOTATION.into(),
            "true".into(),
        );
    }
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": c.rootfs, "readonly": c.read_only},
        "hostname": c.hostname,
        "mounts": mounts,
        "linux": linux,
        "annotations": annotations,
    });
    if let Some(d) = &c.domainname {
        spec["domainname"] = json!(d);
    }
    let spec: Spec = serde_json::from_value(spec).context("building the OCI spec")?;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ContainerConfig {
        ContainerConfig::new(
            "p-web-1",
            PathBuf::from("/x/rootfs"),
            vec!["/bin/sh".into()],
        )
    }

    #[test]
    fn defaults_are_dockers_and_stricter() {
        let s = build(&base()).unwrap();
        let v = serde_json::to_value(&s).unwrap();
        let caps = v["process"]["capabilities"]["bounding"].as_array().unwrap();
        assert_eq!(caps.len(), 14);
        assert_eq!(v["process"]["noNewPrivileges"], json!(true));
        assert_eq!(v["linux"]["resources"]["pids"]["limit"], json!(2048));
        assert_eq!(
            v["linux"]["maskedPaths"].as_array().unwrap().len(),
            MASKED_PATHS.len()
        );
        let nofile = v["process"]["rlimits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["type"] == "RLIMIT_NOFILE")
            .unwrap();
        assert_eq!(
            (nofile["soft"].as_u64(), nofile["hard"].as_u64()),
            (Some(1024), Some(524288))
        );
        let shm = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/dev/shm")
            .unwrap();
        assert!(shm["options"]
            .as_array()
            .unwrap()
            .contains(&json!("size=67108864")));
        // host network: no network namespace entry
        assert!(!v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "network"));
    }

    #[test]
    fn cap_add_drop_and_privileged() {
        let mut c = base();
        c.cap_add = vec!["NET_ADMIN".into()];
        c.cap_drop = vec!["CAP_CHOWN".into(), "net_raw".into()];
        let caps = capabilities(&c);
        assert!(caps.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!caps.contains(&"CAP_CHOWN".to_string()));
        assert!(!caps.contains(&"CAP_NET_RAW".to_string()));
        c.cap_drop = vec!["ALL".into()];
        assert!(capabilities(&c).is_empty());
        let mut p = base();
        p.privileged = true;
        assert_eq!(capabilities(&p).len(), ALL_CAPS.len());
        let v = serde_json::to_value(build(&p).unwrap()).unwrap();
        assert!(v["linux"].get("maskedPaths").is_none());
    }

    #[test]
    fn non_root_user_has_no_effective_caps() {
        let mut c = base();
        c.uid = 1000;
        c.gid = 1000;
        let v = serde_json::to_value(build(&c).unwrap()).unwrap();
        assert_eq!(v["process"]["capabilities"]["effective"], json!([]));
        assert_eq!(
            v["process"]["capabilities"]["bounding"]
                .as_array()
                .unwrap()
                .len(),
            14
        );
    }

    #[test]
    fn resources_netns_and_limits() {
        let mut c = base();
        c.netns = NetNs::Path("/run/berth/netns/p-web-1".into());
        c.memory = Some(64 << 20);
        c.cpus = Some(0.5);
        c.pids_limit = Some(100);
        c.ulimits = vec![("nofile".into(), 10, 20)];
        c.sysctls.insert("net.core.somaxconn".into(), "1024".into());
        c.init = true;
        let v = serde_json::to_value(build(&c).unwrap()).unwrap();
        let ns = v["linux"]["namespaces"].as_array().unwrap();
        assert!(ns
            .iter()
            .any(|n| n["type"] == "network" && n["path"] == "/run/berth/netns/p-web-1"));
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], json!(64 << 20));
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], json!(50000));
        assert_eq!(v["linux"]["resources"]["pids"]["limit"], json!(100));
        assert_eq!(v["annotations"]["berth.init"], json!("true"));
        let nofile = v["process"]["rlimits"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["type"] == "RLIMIT_NOFILE")
            .count();
        assert_eq!(nofile, 1);
        c.sysctls.insert("kernel.hostname".into(), "x".into());
        assert!(build(&c)
            .unwrap_err()
            .to_string()
            .contains("kernel.hostname"));
        assert!(!sysctl_allowed("net.ipv4.ip_forward", true));
    }
}
