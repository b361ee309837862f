//! Persistent container state under `--root`: `<root>/<id>/state.json`, the exec fifo, and a
//! copy of the spec. Status is derived from the kernel each time it is read (runc style).
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{io_err, Result, RuntimeError};

pub const OCI_VERSION: &str = "1.0.2";
pub const EXEC_FIFO: &str = "exec.fifo";
pub const STATE_FILE: &str = "state.json";
pub const SPEC_FILE: &str = "config.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        };
        f.write_str(s)
    }
}

/// What is written to disk. `status` is refreshed on every read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub pid: i32,
    /// Start time of the init in clock ticks since boot (field 22 of /proc/pid/stat), to detect
    /// pid reuse.
    pub start_time: u64,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// `linux.cgroupsPath` as given (absolute within each hierarchy).
    pub cgroups_path: Option<String>,
    pub created: String,
}

/// The OCI state (runtime-spec `state`), as printed by `state ID`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub oci_version: String,
    pub id: String,
    pub status: Status,
    pub pid: i32,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
}

pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '+'));
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::InvalidId(id.to_string()))
    }
}

pub fn dir(root: &Path, id: &str) -> PathBuf {
    root.join(id)
}

pub fn load(root: &Path, id: &str) -> Result<Record> {
    validate_id(id)?;
    let path = dir(root, id).join(STATE_FILE);
    let data = match fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(RuntimeError::NotFound(id.to_string()))
        }
        Err(e) => return Err(io_err("read", &path)(e)),
    };
    serde_json::from_slice(&data).map_err(|source| RuntimeError::State { path, source })
}

pub fn save(root: &Path, rec: &Record) -> Result<()> {
    let d = dir(root, &rec.id);
    let tmp = d.join(".state.json.tmp");
    let data = serde_json::to_vec(rec).map_err(|source| RuntimeError::State {
        path: tmp.clone(),
        source,
    })?;
    fs::write(&tmp, data).map_err(io_err("write", &tmp))?;
    let dst = d.join(STATE_FILE);
    fs::rename(&tmp, &dst).map_err(io_err("rename", &dst))
}

/// Field 22 (starttime) and field 3 (state) of `/proc/<pid>/stat`.
pub fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and parentheses: split after the last ')'.
    let rest = s.get(s.rfind(')')? + 2..)?;
    let mut it = rest.split_whitespace();
    let st = it.next()?.chars().next()?;
    // rest starts at field 3; starttime is field 22 -> index 19 from here.
    let start = it.nth(18)?.parse().ok()?;
    Some((st, start))
}

/// Is the recorded init still the same, live (non-zombie) process?
pub fn init_alive(rec: &Record) -> bool {
    match proc_stat(rec.pid) {
        Some((st, start)) => start == rec.start_time && st != 'Z' && st != 'X',
        None => false,
    }
}

pub fn status(root: &Path, rec: &Record) -> Status {
    if rec.pid <= 0 || !init_alive(rec) {
        return Status::Stopped;
    }
    if dir(root, &rec.id).join(EXEC_FIFO).exists() {
        return Status::Created;
    }
    if crate::cgroups::is_frozen(rec.cgroups_path.as_deref(), rec.pid) {
        return Status::Paused;
    }
    Status::Running
}

pub fn to_state(root: &Path, rec: &Record) -> State {
    let status = status(root, rec);
    State {
        oci_version: OCI_VERSION.to_string(),
        id: rec.id.clone(),
        status,
        pid: if status == Status::Stopped {
            0
        } else {
            rec.pid
        },
        bundle: rec.bundle.clone(),
        rootfs: rec.rootfs.clone(),
        created: rec.created.clone(),
        annotations: rec.annotations.clone(),
    }
}

/// RFC 3339 UTC timestamp without pulling in a time crate.
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, sod) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // civil_from_days (Howard Hinnant)
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let dd = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:09}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60,
        d.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(validate_id("abc-1_2.x").is_ok());
        assert!(validate_id("../x").is_err());
        assert!(validate_id("..").is_err());
        assert!(validate_id("a/b").is_err());
        assert!(validate_id("").is_err());
    }

    #[test]
    fn stat_of_self() {
        let (st, start) = proc_stat(std::process::id() as i32).unwrap();
        assert!(st == 'R' || st == 'S');
        assert!(start > 0);
    }

    #[test]
    fn timestamp_shape() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 30, "{t}");
        assert!(t.starts_with("20"));
    }
}
