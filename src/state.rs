//! The on-disk record of a project: what berth made, so that `ps`, `logs` and `down` work with
//! or without a supervisor, and a new supervisor can adopt containers after a crash.
//! Written atomically (temp file, fsync, rename) under an exclusive lock.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::paths::Paths;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProjectState {
    pub name: String,
    /// How the project was loaded (files, directory, env), so commands without `-f` and the
    /// supervisor can load it again.
    #[serde(default)]
    pub source: Option<ProjectSource>,
    #[serde(default)]
    pub working_dir: PathBuf,
    #[serde(default)]
    pub config_files: Vec<PathBuf>,
    #[serde(default)]
    pub networks: Vec<NetworkRecord>,
    #[serde(default)]
    pub volumes: Vec<VolumeRecord>,
    #[serde(default)]
    pub containers: Vec<ContainerRecord>,
    /// Per service: the config hash of its latest generation and that generation's number
    /// (1 for the first config, +1 on every change rolled out).
    #[serde(default)]
    pub generations: std::collections::BTreeMap<String, (String, u64)>,
}

impl ProjectState {
    /// The generation number of `hash` for `service`, starting a new one if the hash changed.
    pub fn generation(&mut self, service: &str, hash: &str) -> u64 {
        let e = self
            .generations
            .entry(service.to_string())
            .or_insert_with(|| (hash.to_string(), 1));
        if e.0 != hash {
            // Rolling back to the previous config still counts as a new generation.
            *e = (hash.to_string(), e.1 + 1);
        }
        e.1
    }
}

/// Everything needed to load the project again, exactly as the CLI did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProjectSource {
    pub files: Vec<PathBuf>,
    pub project_name: Option<String>,
    pub project_directory: Option<PathBuf>,
    pub env_files: Vec<PathBuf>,
    pub profiles: Vec<String>,
    pub working_dir: PathBuf,
    pub environment: std::collections::HashMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkRecord {
    /// The key in the compose file (`default`, `front`…).
    pub key: String,
    /// The real name (`<project>_<key>`).
    pub name: String,
    pub bridge: String,
    pub subnet: ipnet::Ipv4Net,
    pub gateway: Ipv4Addr,
    pub internal: bool,
    /// External networks are used, never created or removed.
    pub external: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub key: String,
    pub name: String,
    pub path: PathBuf,
    pub external: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointRecord {
    /// The network's key in the compose file.
    pub network: String,
    /// Its real name, which is also its IPAM key.
    pub network_name: String,
    pub host_ifname: String,
    pub ip: Ipv4Addr,
    pub aliases: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PortRecord {
    pub host_ip: Option<String>,
    pub host_port: u16,
    pub target: u16,
    pub protocol: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Created,
    Running,
    Restarting,
    Paused,
    Exited,
    Dead,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Restarting => "restarting",
            Status::Paused => "paused",
            Status::Exited => "exited",
            Status::Dead => "dead",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// `<project>-<service>-<n>` or `container_name`; also the runtime id.
    pub name: String,
    pub service: String,
    pub number: u32,
    pub config_hash: String,
    /// Rollout generation of the service config this container runs.
    #[serde(default)]
    pub generation: u64,
    pub image: String,
    pub image_id: String,
    pub dir: PathBuf,
    pub netns: Option<PathBuf>,
    #[serde(default)]
    pub endpoints: Vec<EndpointRecord>,
    #[serde(default)]
    pub ports: Vec<PortRecord>,
    pub status: Status,
    pub pid: Option<i32>,
    /// Start time of `pid` (field 22 of /proc/PID/stat) to detect pid reuse on adoption.
    pub pid_start: Option<u64>,
    pub exit_code: Option<i32>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    #[serde(default)]
    pub restart_count: u32,
    #[serde(default)]
    pub health: Option<String>,
    /// Stopped by the user (`stop`, `down`): restart policies do not apply.
    #[serde(default)]
    pub stopped_by_user: bool,
    #[serde(default)]
    pub oneoff: bool,
    /// Anonymous volumes made for this container (removed with it).
    #[serde(default)]
    pub anon_volumes: Vec<String>,
    /// `logging.options` max-size and max-file, so that a supervisor adopting the running
    /// container (before any `up` loads the plan) rotates its log as configured.
    #[serde(default)]
    pub log_max_size: Option<u64>,
    #[serde(default)]
    pub log_max_file: Option<u32>,
    /// The restart policy it was made with, for a supervisor that adopts it before any `up`
    /// loads the plan (after the previous supervisor died).
    #[serde(default)]
    pub restart: Option<crate::engine::restart::Policy>,
}

impl ProjectState {
    pub fn path(paths: &Paths, project: &str) -> PathBuf {
        paths.project(project).join("state.json")
    }

    pub fn load(paths: &Paths, project: &str) -> anyhow::Result<Option<ProjectState>> {
        let p = Self::path(paths, project);
        match fs::read(&p) {
            Ok(bytes) => Ok(Some(
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("reading {}", p.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// The record written in one go (the supervisor encodes under its lock and writes on a
    /// blocking thread instead; this stays for one-shot writers).
    #[allow(dead_code)]
    pub fn save(&self, paths: &Paths) -> anyhow::Result<()> {
        let p = Self::path(paths, &self.name);
        write_atomic(&p, &serde_json::to_vec_pretty(self)?)
    }

    pub fn container(&self, name: &str) -> Option<&ContainerRecord> {
        self.containers.iter().find(|c| c.name == name)
    }

    pub fn container_mut(&mut self, name: &str) -> Option<&mut ContainerRecord> {
        self.containers.iter_mut().find(|c| c.name == name)
    }

    /// Every project with a record under the state root.
    pub fn list(paths: &Paths) -> anyhow::Result<Vec<ProjectState>> {
        let mut out = Vec::new();
        let dir = paths.projects();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e.into()),
        };
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if let Ok(Some(s)) = ProjectState::load(paths, &name) {
                out.push(s);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

/// Write `bytes` to `path` so that a crash leaves either the old or the new content.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().context("path without parent")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_atomic_in_place(path, bytes)
}

/// `write_atomic` into a directory that must exist already (it is not made again).
pub fn write_atomic_in_place(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().context("path without parent")?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    {
        // 0600: the record holds the environment the project was loaded with (it may carry
        // secrets), so only root reads it.
        let mut f = {
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .with_context(|| format!("writing {}", tmp.display()))?
        };
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}

/// An exclusive advisory lock on a project (flock), held while its record is changed.
pub struct ProjectLock {
    _file: File,
}

impl ProjectLock {
    pub fn acquire(paths: &Paths, project: &str) -> anyhow::Result<ProjectLock> {
        let dir = paths.project(project);
        fs::create_dir_all(&dir)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))?;
        // SAFETY: flock on an fd we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("locking the project");
        }
        Ok(ProjectLock { _file: file })
    }
}

/// Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat).
pub fn pid_start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is alive and still the process recorded (same start time).
pub fn pid_matches(pid: i32, start: Option<u64>) -> bool {
    match (pid_start_time(pid), start) {
        (Some(now), Some(rec)) => now == rec,
        (Some(_), None) => true,
        _ => false,
    }
}

pub fn now_rfc3339() -> String {
    format_time(std::time::SystemTime::now())
}

/// RFC 3339 with nanoseconds, UTC, without pulling a date crate.
pub fn format_time(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (y, mo, day) = civil_from_days(secs.div_euclid(86400));
    let sod = secs.rem_euclid(86400);
    format!(
        "{y:04}-{mo:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60,
        d.subsec_nanos()
    )
}

/// Parse the RFC 3339 UTC form written by `format_time` (and plain `YYYY-MM-DDTHH:MM:SSZ`).
pub fn parse_time(s: &str) -> Option<std::time::SystemTime> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut dp = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, d) = (dp.next()?.ok()?, dp.next()?.ok()?, dp.next()?.ok()?);
    let (hms, frac) = match time.split_once('.') {
        Some((a, b)) => (a, b),
        None => (time, ""),
    };
    let mut tp = hms.split(':').map(|x| x.parse::<i64>());
    let (h, mi, se) = (tp.next()?.ok()?, tp.next()?.ok()?, tp.next()?.ok()?);
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        let f = &frac[..frac.len().min(9)];
        f.parse::<u32>().ok()? * 10u32.pow(9 - f.len() as u32)
    };
    let days = days_from_civil(y, m, d);
    let secs = days * 86400 + h * 3600 + mi * 60 + se;
    if secs < 0 {
        return None;
    }
    Some(std::time::UNIX_EPOCH + std::time::Duration::new(secs as u64, nanos))
}

// Howard Hinnant's civil-date algorithms.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z.rem_euclid(146097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_round_trips() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::new(1_795_000_123, 456_789_012);
        let s = format_time(t);
        assert_eq!(s, "2026-11-18T11:08:43.456789012Z");
        assert_eq!(parse_time(&s), Some(t));
        assert_eq!(
            parse_time("2013-01-02T13:23:37Z"),
            Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1357133017))
        );
        assert_eq!(parse_time("garbage"), None);
    }

    #[test]
    fn atomic_write_replaces_content() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b/state.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        // no temp file left behind
        assert_eq!(fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn own_pid_matches_its_start_time() {
        let pid = std::process::id() as i32;
        let st = pid_start_time(pid);
        assert!(st.is_some());
        assert!(pid_matches(pid, st));
        assert!(!pid_matches(pid, st.map(|s| s + 1)));
    }
}
