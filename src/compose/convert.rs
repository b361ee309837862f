//! Merged YAML tree → typed model: validation (unknown keys with "did you mean", wrong types,
//! bad syntax) and every short syntax normalised to its long form.

use std::path::{Path, PathBuf};

use indexmap::IndexMap;

use super::error::LoadError;
use super::model::*;
use super::yaml::{Entry, Mark, Node, V};

pub type R<T> = Result<T, LoadError>;

/// A reference to a named object, checked once profiles are applied.
#[derive(Debug, Clone)]
pub struct Ref {
    pub service: String,
    pub kind: RefKind,
    pub name: String,
    pub mark: Mark,
    pub path: String,
    /// For depends_on: whether the dependency is required.
    pub required: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefKind {
    Service,
    Network,
    Volume,
    Secret,
    Config,
}

pub struct Cx<'a> {
    pub working_dir: &'a Path,
    pub home: Option<String>,
    pub refs: Vec<Ref>,
    pub warnings: Vec<String>,
    /// Where each service's `ports` entries come from (for collision errors).
    pub port_marks: IndexMap<String, Vec<Mark>>,
    pub service_marks: IndexMap<String, Mark>,
}

impl Cx<'_> {
    /// Where service `k` is declared (errors about the service as a whole point there).
    pub fn service_mark(&self, k: &str) -> Mark {
        self.service_marks
            .get(k)
            .cloned()
            .unwrap_or_else(|| Mark::synthetic(&std::sync::Arc::from("")))
    }
}

pub const SERVICE_KEYS: &[&str] = &[
    "annotations",
    "attach",
    "blkio_config",
    "build",
    "cap_add",
    "cap_drop",
    "cgroup",
    "cgroup_parent",
    "command",
    "configs",
    "container_name",
    "cpu_count",
    "cpu_percent",
    "cpu_period",
    "cpu_quota",
    "cpu_rt_period",
    "cpu_rt_runtime",
    "cpu_shares",
    "cpus",
    "cpuset",
    "credential_spec",
    "depends_on",
    "deploy",
    "develop",
    "device_cgroup_rules",
    "devices",
    "dns",
    "dns_opt",
    "dns_search",
    "domainname",
    "entrypoint",
    "env_file",
    "environment",
    "expose",
    "extends",
    "external_links",
    "extra_hosts",
    "gpus",
    "group_add",
    "healthcheck",
    "hostname",
    "image",
    "init",
    "ipc",
    "isolation",
    "label_file",
    "labels",
    "links",
    "logging",
    "mac_address",
    "mem_limit",
    "mem_reservation",
    "mem_swappiness",
    "memswap_limit",
    "models",
    "network_mode",
    "networks",
    "oom_kill_disable",
    "oom_score_adj",
    "pid",
    "pids_limit",
    "platform",
    "ports",
    "post_start",
    "pre_start",
    "pre_stop",
    "privileged",
    "profiles",
    "provider",
    "pull_policy",
    "pull_refresh_after",
    "read_only",
    "restart",
    "runtime",
    "scale",
    "secrets",
    "security_opt",
    "shm_size",
    "stdin_open",
    "stop_grace_period",
    "stop_signal",
    "storage_opt",
    "sysctls",
    "tmpfs",
    "tty",
    "ulimits",
    "use_api_socket",
    "user",
    "userns_mode",
    "uts",
    "volumes",
    "volumes_from",
    "working_dir",
];

pub const TOP_KEYS: &[&str] = &[
    "configs", "include", "models", "name", "networks", "secrets", "services", "version", "volumes",
];

// ---------------------------------------------------------------------------------------------
// Scalar helpers

pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn idx(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// Unknown keys: error with the closest known key.
pub fn check_keys(n: &Node, path: &str, allowed: &[&str]) -> R<()> {
    let Some(m) = n.as_map() else {
        return Ok(());
    };
    for e in m {
        if e.key.starts_with("x-") || allowed.contains(&e.key.as_str()) {
            continue;
        }
        let mut best: Option<(&str, f64)> = None;
        for k in allowed {
            let s = strsim::jaro_winkler(&e.key, k);
            if s > 0.8 && best.is_none_or(|(_, b)| s > b) {
                best = Some((k, s));
            }
        }
        let hint = match best {
            Some((k, _)) => format!(" (did you mean {k:?}?)"),
            None => String::new(),
        };
        return Err(LoadError::at(
            &e.kmark,
            join(path, &e.key),
            format!("additional property {:?} is not allowed{hint}", e.key),
        ));
    }
    Ok(())
}

fn type_err(n: &Node, path: &str, want: &str) -> LoadError {
    let got = match &n.v {
        V::Null => "null".to_string(),
        V::Scalar(s, _) => format!("{s:?}"),
        V::Seq(_) => "a sequence".into(),
        V::Map(_) => "a mapping".into(),
    };
    LoadError::at(&n.mark, path, format!("must be {want}, got {got}"))
}

fn map_of<'a>(n: &'a Node, path: &str) -> R<&'a [Entry]> {
    match &n.v {
        V::Map(m) => Ok(m),
        V::Null => Ok(&[]),
        _ => Err(type_err(n, path, "a mapping")),
    }
}

pub fn string(n: &Node, path: &str) -> R<String> {
    match &n.v {
        V::Scalar(s, _) => Ok(s.clone()),
        _ => Err(type_err(n, path, "a string")),
    }
}

fn opt_string(n: &Node, path: &str) -> R<Option<String>> {
    match &n.v {
        V::Null => Ok(None),
        _ => string(n, path).map(Some),
    }
}

pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "true" | "True" | "TRUE" | "t" | "T" | "1" | "yes" | "Yes" | "YES" | "y" | "Y" | "on"
        | "On" | "ON" => Some(true),
        "false" | "False" | "FALSE" | "f" | "F" | "0" | "no" | "No" | "NO" | "n" | "N" | "off"
        | "Off" | "OFF" => Some(false),
        _ => None,
    }
}

pub fn boolean(n: &Node, path: &str) -> R<bool> {
    match &n.v {
        V::Scalar(s, _) => parse_bool(s).ok_or_else(|| type_err(n, path, "a boolean")),
        _ => Err(type_err(n, path, "a boolean")),
    }
}

fn parse_int(s: &str) -> Option<i64> {
    let t = s.replace('_', "");
    let (neg, t) = match t.strip_prefix('-') {
        Some(r) => (true, r.to_string()),
        None => (false, t.strip_prefix('+').unwrap_or(&t).to_string()),
    };
    let v = if let Some(h) = t.strip_prefix("0x") {
        i64::from_str_radix(h, 16).ok()?
    } else if let Some(o) = t.strip_prefix("0o") {
        i64::from_str_radix(o, 8).ok()?
    } else {
        t.parse::<i64>().ok()?
    };
    Some(if neg { -v } else { v })
}

pub fn int(n: &Node, path: &str) -> R<i64> {
    match &n.v {
        V::Scalar(s, _) => parse_int(s).ok_or_else(|| type_err(n, path, "an integer")),
        _ => Err(type_err(n, path, "an integer")),
    }
}

pub fn uint(n: &Node, path: &str) -> R<u64> {
    let v = int(n, path)?;
    u64::try_from(v).map_err(|_| type_err(n, path, "a non-negative integer"))
}

fn float(n: &Node, path: &str) -> R<f64> {
    match &n.v {
        V::Scalar(s, _) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .ok_or_else(|| type_err(n, path, "a number")),
        _ => Err(type_err(n, path, "a number")),
    }
}

/// A list of scalars (numbers are kept as written).
fn list(n: &Node, path: &str) -> R<Vec<String>> {
    match &n.v {
        V::Null => Ok(vec![]),
        V::Seq(items) => items
            .iter()
            .enumerate()
            .map(|(i, it)| string(it, &idx(path, i)))
            .collect(),
        _ => Err(type_err(n, path, "a list of strings")),
    }
}

/// A string or a list of strings.
fn string_or_list(n: &Node, path: &str) -> R<Vec<String>> {
    match &n.v {
        V::Scalar(s, _) => Ok(vec![s.clone()]),
        _ => list(n, path),
    }
}

/// `KEY=VAL` list or mapping; a list item without `=` (or a null value) is `None`.
fn mapping_with_equals(n: &Node, path: &str) -> R<IndexMap<String, Option<String>>> {
    let mut out = IndexMap::new();
    match &n.v {
        V::Null => {}
        V::Seq(items) => {
            for (i, it) in items.iter().enumerate() {
                let s = string(it, &idx(path, i))?;
                match s.split_once('=') {
                    Some((k, v)) => out.insert(k.to_string(), Some(v.to_string())),
                    None => out.insert(s, None),
                };
            }
        }
        V::Map(m) => {
            for e in m {
                let p = join(path, &e.key);
                let v = match &e.val.v {
                    V::Null => None,
                    V::Scalar(s, true) => Some(plain_value(s)),
                    V::Scalar(s, false) => Some(s.clone()),
                    _ => return Err(type_err(&e.val, &p, "a string, number, boolean or null")),
                };
                out.insert(e.key.clone(), v);
            }
        }
        _ => return Err(type_err(n, path, "a mapping or a list of KEY=VALUE")),
    }
    Ok(out)
}

/// A plain YAML scalar used as a string value, as compose-go (yaml.v3 into `any`, then
/// `fmt`) renders it: floats lose trailing zeros ("1.50" → "1.5"), the rest stays as written.
fn plain_value(s: &str) -> String {
    let t = s.trim();
    let is_float = t.contains('.')
        && t.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E'))
        && t.chars().any(|c| c.is_ascii_digit());
    if is_float {
        if let Ok(f) = t.parse::<f64>() {
            if f.is_finite() && f.abs() < 1e21 && (f == 0.0 || f.abs() >= 1e-4) {
                return format!("{f}");
            }
        }
    }
    s.to_string()
}

/// Labels-like: as `mapping_with_equals`, with `None` → "".
fn mapping(n: &Node, path: &str) -> R<IndexMap<String, String>> {
    Ok(mapping_with_equals(n, path)?
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect())
}

/// Go duration syntax plus `d`/`w` (str2duration): "1m30s", "1.5h", "500ms", "0".
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(std::time::Duration::ZERO);
    }
    if s.is_empty() || s.starts_with('-') {
        return None;
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    let mut total: f64 = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let num: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = &rest[unit_end..];
        let mult = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            "w" => 604800.0,
            _ => return None,
        };
        total += num * mult;
    }
    if !total.is_finite() || total > 1e10 {
        return None;
    }
    Some(std::time::Duration::from_nanos((total * 1e9).round() as u64))
}

fn duration(n: &Node, path: &str) -> R<Duration> {
    let s = string(n, path)?;
    parse_duration(&s).map(Duration).ok_or_else(|| {
        LoadError::at(
            &n.mark,
            path,
            format!(
                "invalid duration {s:?} (use a number with a unit: \"1m30s\", \"10s\", \"500ms\")"
            ),
        )
    })
}

fn opt_duration(n: &Node, path: &str) -> R<Option<Duration>> {
    if n.is_null() {
        return Ok(None);
    }
    duration(n, path).map(Some)
}

/// docker/go-units `RAMInBytes`: "512m", "1g", "1.5GB", "100000", "10k" (binary units).
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Ok(v) = s.parse::<u64>() {
        return Some(v);
    }
    let lower = s.to_ascii_lowercase();
    let num_end = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    if num_end == 0 {
        return None;
    }
    let num: f64 = lower[..num_end].parse().ok()?;
    let unit = lower[num_end..].trim();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(unit);
    let mult: f64 = match unit {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024f64.powi(4),
        "p" => 1024f64.powi(5),
        _ => return None,
    };
    let v = num * mult;
    if !v.is_finite() || v > u64::MAX as f64 {
        return None;
    }
    Some(v as u64)
}

fn bytes(n: &Node, path: &str) -> R<u64> {
    let s = string(n, path)?;
    parse_bytes(&s).ok_or_else(|| {
        LoadError::at(
            &n.mark,
            path,
            format!(
                "invalid byte size {s:?} (use a number with an optional unit: \"512m\", \"1g\")"
            ),
        )
    })
}

fn opt_bytes(n: &Node, path: &str) -> R<Option<u64>> {
    if n.is_null() {
        return Ok(None);
    }
    bytes(n, path).map(Some)
}

/// File modes: `0440` (YAML 1.1 octal), `0o440`, "0440" are octal; `288` is decimal.
fn file_mode(n: &Node, path: &str) -> R<u32> {
    let s = string(n, path)?;
    let t = s.trim();
    let v = if let Some(o) = t.strip_prefix("0o") {
        u32::from_str_radix(o, 8).ok()
    } else if t.len() > 1 && t.starts_with('0') {
        u32::from_str_radix(&t[1..], 8).ok()
    } else {
        t.parse::<u32>().ok()
    };
    v.ok_or_else(|| type_err(n, path, "a file mode (e.g. 0440)"))
}

/// mattn/go-shellwords-style split (what compose uses for string `command`/`entrypoint`).
pub fn shell_split(s: &str) -> Result<Vec<String>, String> {
    shell_split_tail(s).map(|(w, _)| w)
}

/// As go-shellwords' `Parse`: the words up to the first unquoted shell operator (`;`, `&`,
/// `|`, `<`, `>`), and what it dropped from there on (`None` if nothing). A word of digits
/// right before `>` is a redirection's fd and is dropped with it (`2>log`).
pub fn shell_split_tail(s: &str) -> Result<(Vec<String>, Option<String>), String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut have = false;
    let mut it = s.char_indices();
    let mut word_start = 0usize;
    while let Some((at, c)) = it.next() {
        let mut chars = it.by_ref().map(|(_, c)| c);
        if !have {
            word_start = at;
        }
        match c {
            ';' | '&' | '|' | '<' | '>' => {
                let mut from = at;
                if c == '>' && have && cur.chars().next().is_some_and(|d| d.is_ascii_digit()) {
                    // `2>file`: the fd goes with the redirection.
                    have = false;
                    from = word_start;
                }
                if have {
                    out.push(std::mem::take(&mut cur));
                }
                return Ok((out, Some(s[from..].trim().to_string())));
            }
            ' ' | '\t' | '\n' | '\r' => {
                if have {
                    out.push(std::mem::take(&mut cur));
                    have = false;
                }
            }
            '\\' => {
                have = true;
                match chars.next() {
                    Some('\n') => {}
                    Some(n) => cur.push(n),
                    None => cur.push('\\'),
                }
            }
            '\'' => {
                have = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(n) => cur.push(n),
                        None => return Err("unterminated single-quoted string".into()),
                    }
                }
            }
            '"' => {
                have = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(n @ ('"' | '\\' | '$' | '`')) => cur.push(n),
                            Some('\n') => {}
                            Some(n) => {
                                cur.push('\\');
                                cur.push(n);
                            }
                            None => return Err("unterminated double-quoted string".into()),
                        },
                        Some(n) => cur.push(n),
                        None => return Err("unterminated double-quoted string".into()),
                    }
                }
            }
            c => {
                have = true;
                cur.push(c);
            }
        }
    }
    if have {
        out.push(cur);
    }
    Ok((out, None))
}

/// A string `command`/`entrypoint` split as compose splits it; when compose would silently
/// drop the part from a shell operator on, berth runs the same words but says so.
fn shell_command(cx: &mut Cx, service: &str, n: &Node, path: &str) -> R<Option<Vec<String>>> {
    match &n.v {
        V::Null => Ok(None),
        V::Scalar(s, _) => {
            let (words, tail) = shell_split_tail(s).map_err(|e| LoadError::at(&n.mark, path, e))?;
            if let Some(tail) = tail.filter(|t| !t.is_empty()) {
                let key = path.rsplit('.').next().unwrap_or(path);
                cx.warnings.push(format!(
                    "service {service:?}: {key} {s:?} contains a shell operator; as docker compose \
                     does, only {words:?} runs and {tail:?} is dropped. To run it all through a \
                     shell write {key}: {}",
                    serde_json::to_string(&["sh", "-c", s.as_str()]).unwrap_or_default()
                ));
            }
            Ok(Some(words))
        }
        V::Seq(_) => list(n, path).map(Some),
        _ => Err(type_err(n, path, "a string or a list of strings")),
    }
}

// ---------------------------------------------------------------------------------------------
// Paths

impl Cx<'_> {
    /// `~` → HOME, relative → against the working dir; lexically cleaned.
    pub fn abs(&self, p: &str) -> String {
        let expanded = if p == "~" || p.starts_with("~/") {
            match &self.home {
                Some(h) => format!("{h}{}", &p[1..]),
                None => p.to_string(),
            }
        } else {
            p.to_string()
        };
        let pb = Path::new(&expanded);
        let b = expanded.as_bytes();
        let windows = b.len() >= 3
            && b[0].is_ascii_alphabetic()
            && b[1] == b':'
            && (b[2] == b'\\' || b[2] == b'/');
        if windows || pb.is_absolute() && !p.starts_with('~') {
            // compose keeps absolute paths as written (only relative ones are joined).
            return expanded;
        }
        let full = if pb.is_absolute() {
            pb.to_path_buf()
        } else {
            self.working_dir.join(pb)
        };
        clean(&full).display().to_string()
    }
}

pub fn clean(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

fn is_path_like(s: &str) -> bool {
    s.starts_with('.') || s.starts_with('/') || s.starts_with('~') || s.starts_with('$')
}

// ---------------------------------------------------------------------------------------------
// Ports

fn parse_port_range(s: &str) -> Option<(u32, u32)> {
    match s.split_once('-') {
        Some((a, b)) => {
            let a: u32 = a.parse().ok()?;
            let b: u32 = b.parse().ok()?;
            (a <= b && b <= 65535).then_some((a, b))
        }
        None => {
            let a: u32 = s.parse().ok()?;
            (a <= 65535).then_some((a, a))
        }
    }
}

/// Short syntax `[[HOST_IP:]HOST_PORT[-R]:]CONTAINER_PORT[-R][/PROTO]`, expanded like compose.
pub fn parse_port_short(spec: &str) -> Result<Vec<ServicePort>, String> {
    let bad = || {
        format!("invalid port {spec:?}: expected [[HOST_IP:][HOST_PORT]:]CONTAINER_PORT[/PROTOCOL]")
    };
    let (rest, proto) = match spec.rsplit_once('/') {
        Some((r, p)) => {
            if !matches!(p, "tcp" | "udp" | "sctp") {
                return Err(format!("invalid port {spec:?}: unknown protocol {p:?}"));
            }
            (r, p)
        }
        None => (spec, "tcp"),
    };
    // Host IP: bracketed IPv6, or everything before the last two colon-separated parts.
    let (host_ip, rest) = if let Some(r) = rest.strip_prefix('[') {
        let (ip, after) = r.split_once(']').ok_or_else(bad)?;
        let after = after.strip_prefix(':').ok_or_else(bad)?;
        (Some(ip.to_string()), after.to_string())
    } else {
        let parts: Vec<&str> = rest.split(':').collect();
        match parts.len() {
            1 | 2 => (None, rest.to_string()),
            3 => (
                Some(parts[0].to_string()),
                format!("{}:{}", parts[1], parts[2]),
            ),
            _ => {
                // Unbracketed IPv6 host ip: the last two parts are the ports.
                let n = parts.len();
                (
                    Some(parts[..n - 2].join(":")),
                    format!("{}:{}", parts[n - 2], parts[n - 1]),
                )
            }
        }
    };
    let (published, target) = match rest.rsplit_once(':') {
        Some((p, t)) => (if p.is_empty() { None } else { Some(p) }, t),
        None => (None, rest.as_str()),
    };
    let host_ip = host_ip.filter(|h| !h.is_empty());
    let (t0, t1) = parse_port_range(target).ok_or_else(bad)?;
    if t0 == 0 {
        return Err(format!(
            "invalid port {spec:?}: container port must not be 0"
        ));
    }
    let pub_range = match published {
        Some(p) => Some(parse_port_range(p).ok_or_else(bad)?),
        None => None,
    };
    let mk = |target: u32, published: Option<String>| ServicePort {
        name: None,
        mode: "ingress".into(),
        host_ip: host_ip.clone(),
        target: target as u16,
        published,
        protocol: proto.into(),
        app_protocol: None,
    };
    let mut out = Vec::new();
    let count = t1 - t0 + 1;
    match pub_range {
        None => {
            for t in t0..=t1 {
                out.push(mk(t, None));
            }
        }
        Some((p0, p1)) => {
            let pcount = p1 - p0 + 1;
            if count == 1 {
                let published = if p0 == p1 {
                    p0.to_string()
                } else {
                    format!("{p0}-{p1}")
                };
                out.push(mk(t0, Some(published)));
            } else if pcount == count {
                for i in 0..count {
                    out.push(mk(t0 + i, Some((p0 + i).to_string())));
                }
            } else {
                return Err(format!(
                    "invalid port {spec:?}: host and container port ranges differ in size"
                ));
            }
        }
    }
    Ok(out)
}

fn ports(n: &Node, path: &str) -> R<(Vec<ServicePort>, Vec<Mark>)> {
    let V::Seq(items) = &n.v else {
        if n.is_null() {
            return Ok((vec![], vec![]));
        }
        return Err(type_err(n, path, "a list"));
    };
    let mut out = Vec::new();
    let mut marks = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let p = idx(path, i);
        match &it.v {
            V::Scalar(s, _) => {
                let ps = parse_port_short(s).map_err(|e| LoadError::at(&it.mark, &p, e))?;
                marks.extend(std::iter::repeat_n(it.mark.clone(), ps.len()));
                out.extend(ps);
            }
            V::Map(m) => {
                check_keys(
                    it,
                    &p,
                    &[
                        "name",
                        "mode",
                        "host_ip",
                        "target",
                        "published",
                        "protocol",
                        "app_protocol",
                    ],
                )?;
                let mut sp = ServicePort {
                    mode: "ingress".into(),
                    protocol: "tcp".into(),
                    ..Default::default()
                };
                let mut have_target = false;
                for e in m {
                    let kp = join(&p, &e.key);
                    match e.key.as_str() {
                        "name" => sp.name = opt_string(&e.val, &kp)?,
                        "mode" => sp.mode = string(&e.val, &kp)?,
                        "host_ip" => sp.host_ip = opt_string(&e.val, &kp)?,
                        "target" => {
                            let t = uint(&e.val, &kp)?;
                            if t == 0 || t > 65535 {
                                return Err(LoadError::at(
                                    &e.val.mark,
                                    kp,
                                    format!("invalid port {t}: must be 1-65535"),
                                ));
                            }
                            sp.target = t as u16;
                            have_target = true;
                        }
                        "published" => {
                            let s = opt_string(&e.val, &kp)?;
                            if let Some(s) = &s {
                                if parse_port_range(s).is_none() {
                                    return Err(LoadError::at(
                                        &e.val.mark,
                                        kp,
                                        format!("invalid published port {s:?}"),
                                    ));
                                }
                            }
                            sp.published = s;
                        }
                        "protocol" => sp.protocol = string(&e.val, &kp)?,
                        "app_protocol" => sp.app_protocol = opt_string(&e.val, &kp)?,
                        _ => {}
                    }
                }
                if !have_target {
                    return Err(LoadError::at(&it.mark, p, "port is missing \"target\""));
                }
                out.push(sp);
                marks.push(it.mark.clone());
            }
            _ => return Err(type_err(it, &p, "a port string or mapping")),
        }
    }
    Ok((out, marks))
}

// ---------------------------------------------------------------------------------------------
// Volumes

fn volume_short(cx: &Cx, spec: &str, mark: &Mark, path: &str) -> R<ServiceVolume> {
    let parts: Vec<&str> = spec.split(':').collect();
    let bad = |m: String| LoadError::at(mark, path, m);
    let (src, dst, mode) = match parts.len() {
        1 => (None, parts[0], None),
        2 => (Some(parts[0]), parts[1], None),
        3 => (Some(parts[0]), parts[1], Some(parts[2])),
        _ => {
            return Err(bad(format!(
                "invalid volume {spec:?}: expected [SOURCE:]TARGET[:MODE]"
            )))
        }
    };
    if dst.is_empty() {
        return Err(bad(format!("invalid volume {spec:?}: empty target")));
    }
    if !dst.starts_with('/') {
        return Err(bad(format!(
            "invalid volume {spec:?}: target {dst:?} must be an absolute path"
        )));
    }
    let mut v = ServiceVolume {
        target: clean(Path::new(dst)).display().to_string(),
        ..Default::default()
    };
    match src {
        Some("") => {
            return Err(bad(format!(
                "invalid spec: {spec}: empty section between colons"
            )))
        }
        None => {
            v.kind = "volume".into();
            v.volume = Some(VolumeVolume::default());
        }
        Some(s) if is_path_like(s) => {
            v.kind = "bind".into();
            v.source = Some(cx.abs(s));
            v.bind = Some(VolumeBind {
                create_host_path: true,
                ..Default::default()
            });
        }
        Some(s) => {
            v.kind = "volume".into();
            v.source = Some(s.to_string());
            v.volume = Some(VolumeVolume::default());
        }
    }
    if let Some(mode) = mode {
        for opt in mode.split(',') {
            match opt {
                "ro" => v.read_only = true,
                "rw" => v.read_only = false,
                "z" | "Z" => {
                    if let Some(b) = v.bind.as_mut() {
                        b.selinux = Some(opt.to_string());
                    }
                }
                "nocopy" => {
                    if let Some(vv) = v.volume.as_mut() {
                        vv.nocopy = true;
                    }
                }
                "shared" | "rshared" | "slave" | "rslave" | "private" | "rprivate" => {
                    if let Some(b) = v.bind.as_mut() {
                        b.propagation = Some(opt.to_string());
                    }
                }
                "cached" | "delegated" | "consistent" => v.consistency = Some(opt.to_string()),
                "" => {}
                other => {
                    return Err(bad(format!(
                        "invalid volume {spec:?}: unknown mode {other:?}"
                    )))
                }
            }
        }
    }
    Ok(v)
}

fn volume_long(cx: &Cx, n: &Node, path: &str) -> R<ServiceVolume> {
    check_keys(
        n,
        path,
        &[
            "type",
            "source",
            "target",
            "read_only",
            "consistency",
            "bind",
            "volume",
            "tmpfs",
            "image",
        ],
    )?;
    let mut v = ServiceVolume::default();
    for e in map_of(n, path)? {
        let kp = join(path, &e.key);
        match e.key.as_str() {
            "type" => v.kind = string(&e.val, &kp)?,
            "source" => v.source = opt_string(&e.val, &kp)?,
            "target" => {
                let t = string(&e.val, &kp)?;
                v.target = if t.starts_with('/') {
                    clean(Path::new(&t)).display().to_string()
                } else {
                    t
                };
            }
            "read_only" => v.read_only = boolean(&e.val, &kp)?,
            "consistency" => v.consistency = opt_string(&e.val, &kp)?,
            "bind" => {
                check_keys(
                    &e.val,
                    &kp,
                    &["propagation", "create_host_path", "selinux", "recursive"],
                )?;
                let mut b = VolumeBind {
                    create_host_path: true,
                    ..Default::default()
                };
                for be in map_of(&e.val, &kp)? {
                    let bp = join(&kp, &be.key);
                    match be.key.as_str() {
                        "propagation" => b.propagation = opt_string(&be.val, &bp)?,
                        "create_host_path" => b.create_host_path = boolean(&be.val, &bp)?,
                        "selinux" => b.selinux = opt_string(&be.val, &bp)?,
                        "recursive" => b.recursive = opt_string(&be.val, &bp)?,
                        _ => {}
                    }
                }
                v.bind = Some(b);
            }
            "volume" => {
                check_keys(&e.val, &kp, &["nocopy", "subpath", "labels"])?;
                let mut vv = VolumeVolume::default();
                for ve in map_of(&e.val, &kp)? {
                    let vp = join(&kp, &ve.key);
                    match ve.key.as_str() {
                        "nocopy" => vv.nocopy = boolean(&ve.val, &vp)?,
                        "subpath" => vv.subpath = opt_string(&ve.val, &vp)?,
                        _ => {}
                    }
                }
                v.volume = Some(vv);
            }
            "tmpfs" => {
                check_keys(&e.val, &kp, &["size", "mode"])?;
                let mut t = VolumeTmpfs::default();
                for te in map_of(&e.val, &kp)? {
                    let tp = join(&kp, &te.key);
                    match te.key.as_str() {
                        "size" => t.size = opt_bytes(&te.val, &tp)?,
                        "mode" => t.mode = Some(file_mode(&te.val, &tp)?),
                        _ => {}
                    }
                }
                v.tmpfs = Some(t);
            }
            "image" => {
                check_keys(&e.val, &kp, &["subpath"])?;
                let sub = match e.val.get("subpath") {
                    Some(s) => opt_string(s, &join(&kp, "subpath"))?,
                    None => None,
                };
                v.image = Some(VolumeImage { subpath: sub });
            }
            _ => {}
        }
    }
    if !matches!(
        v.kind.as_str(),
        "bind" | "volume" | "tmpfs" | "npipe" | "image" | "cluster"
    ) {
        let m = n.get("type").map(|t| &t.mark).unwrap_or(&n.mark);
        return Err(LoadError::at(
            m,
            join(path, "type"),
            format!(
                "invalid volume type {:?}: must be one of bind, volume, tmpfs, npipe, image, cluster",
                v.kind
            ),
        ));
    }
    if v.target.is_empty() {
        return Err(LoadError::at(&n.mark, path, "volume is missing \"target\""));
    }
    if v.kind == "bind" {
        match &v.source {
            Some(s) => v.source = Some(cx.abs(s)),
            None => {
                return Err(LoadError::at(
                    &n.mark,
                    path,
                    "bind mount is missing \"source\"",
                ))
            }
        }
    }
    Ok(v)
}

fn volumes(cx: &mut Cx, svc: &str, n: &Node, path: &str) -> R<Vec<ServiceVolume>> {
    let V::Seq(items) = &n.v else {
        if n.is_null() {
            return Ok(vec![]);
        }
        return Err(type_err(n, path, "a list"));
    };
    let mut out = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let p = idx(path, i);
        let v = match &it.v {
            V::Scalar(s, _) => volume_short(cx, s, &it.mark, &p)?,
            V::Map(_) => volume_long(cx, it, &p)?,
            _ => return Err(type_err(it, &p, "a volume string or mapping")),
        };
        if v.kind == "volume" {
            if let Some(src) = &v.source {
                cx.refs.push(Ref {
                    service: svc.into(),
                    kind: RefKind::Volume,
                    name: src.clone(),
                    mark: it.mark.clone(),
                    path: p.clone(),
                    required: true,
                });
            }
        }
        out.push(v);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Other service attributes

fn file_refs(cx: &mut Cx, svc: &str, n: &Node, path: &str, kind: RefKind) -> R<Vec<FileReference>> {
    let V::Seq(items) = &n.v else {
        if n.is_null() {
            return Ok(vec![]);
        }
        return Err(type_err(n, path, "a list"));
    };
    let mut out = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let p = idx(path, i);
        let r = match &it.v {
            V::Scalar(s, _) => FileReference {
                source: s.clone(),
                ..Default::default()
            },
            V::Map(m) => {
                check_keys(it, &p, &["source", "target", "uid", "gid", "mode"])?;
                let mut r = FileReference::default();
                for e in m {
                    let kp = join(&p, &e.key);
                    match e.key.as_str() {
                        "source" => r.source = string(&e.val, &kp)?,
                        "target" => r.target = opt_string(&e.val, &kp)?,
                        "uid" => r.uid = opt_string(&e.val, &kp)?,
                        "gid" => r.gid = opt_string(&e.val, &kp)?,
                        "mode" => r.mode = Some(file_mode(&e.val, &kp)?),
                        _ => {}
                    }
                }
                if r.source.is_empty() {
                    return Err(LoadError::at(&it.mark, p, "missing \"source\""));
                }
                r
            }
            _ => return Err(type_err(it, &p, "a string or a mapping")),
        };
        let mut r = r;
        if kind == RefKind::Secret && r.target.is_none() {
            r.target = Some(format!("/run/secrets/{}", r.source));
        }
        cx.refs.push(Ref {
            service: svc.into(),
            kind,
            name: r.source.clone(),
            mark: it.mark.clone(),
            path: p,
            required: true,
        });
        out.push(r);
    }
    Ok(out)
}

fn depends_on(cx: &mut Cx, svc: &str, n: &Node, path: &str) -> R<IndexMap<String, DependsOn>> {
    let mut out = IndexMap::new();
    match &n.v {
        V::Null => {}
        V::Seq(items) => {
            for (i, it) in items.iter().enumerate() {
                let p = idx(path, i);
                let name = string(it, &p)?;
                cx.refs.push(Ref {
                    service: svc.into(),
                    kind: RefKind::Service,
                    name: name.clone(),
                    mark: it.mark.clone(),
                    path: p,
                    required: true,
                });
                out.insert(name, DependsOn::default());
            }
        }
        V::Map(m) => {
            for e in m {
                let p = join(path, &e.key);
                check_keys(&e.val, &p, &["condition", "required", "restart"])?;
                let mut d = DependsOn::default();
                for de in map_of(&e.val, &p)? {
                    let dp = join(&p, &de.key);
                    match de.key.as_str() {
                        "condition" => {
                            let c = string(&de.val, &dp)?;
                            if !matches!(
                                c.as_str(),
                                "service_started"
                                    | "service_healthy"
                                    | "service_completed_successfully"
                            ) {
                                return Err(LoadError::at(
                                    &de.val.mark,
                                    dp,
                                    format!("invalid condition {c:?}: must be one of service_started, service_healthy, service_completed_successfully"),
                                ));
                            }
                            d.condition = c;
                        }
                        "required" => d.required = boolean(&de.val, &dp)?,
                        "restart" => d.restart = boolean(&de.val, &dp)?,
                        _ => {}
                    }
                }
                cx.refs.push(Ref {
                    service: svc.into(),
                    kind: RefKind::Service,
                    name: e.key.clone(),
                    mark: e.kmark.clone(),
                    path: p,
                    required: d.required,
                });
                out.insert(e.key.clone(), d);
            }
        }
        _ => return Err(type_err(n, path, "a list or a mapping")),
    }
    Ok(out)
}

fn healthcheck(n: &Node, path: &str) -> R<Option<Healthcheck>> {
    if n.is_null() {
        return Ok(None);
    }
    check_keys(
        n,
        path,
        &[
            "disable",
            "interval",
            "retries",
            "start_interval",
            "start_period",
            "test",
            "timeout",
        ],
    )?;
    let mut h = Healthcheck::default();
    for e in map_of(n, path)? {
        let kp = join(path, &e.key);
        match e.key.as_str() {
            "test" => {
                h.test = match &e.val.v {
                    V::Scalar(s, _) => vec!["CMD-SHELL".into(), s.clone()],
                    _ => list(&e.val, &kp)?,
                };
                if let Some(first) = h.test.first() {
                    if !matches!(first.as_str(), "CMD" | "CMD-SHELL" | "NONE") {
                        return Err(LoadError::at(
                            &e.val.mark,
                            kp,
                            format!("test must start with \"CMD\", \"CMD-SHELL\" or \"NONE\", got {first:?}"),
                        ));
                    }
                }
            }
            "interval" => h.interval = opt_duration(&e.val, &kp)?,
            "timeout" => h.timeout = opt_duration(&e.val, &kp)?,
            "start_period" => h.start_period = opt_duration(&e.val, &kp)?,
            "start_interval" => h.start_interval = opt_duration(&e.val, &kp)?,
            "retries" => h.retries = Some(uint(&e.val, &kp)?),
            "disable" => h.disable = boolean(&e.val, &kp)?,
            _ => {}
        }
    }
    Ok(Some(h))
}

fn update_config(n: &Node, path: &str) -> R<Option<UpdateConfig>> {
    if n.is_null() {
        return Ok(None);
    }
    check_keys(
        n,
        path,
        &[
            "parallelism",
            "delay",
            "failure_action",
            "monitor",
            "max_failure_ratio",
            "order",
        ],
    )?;
    let mut u = UpdateConfig::default();
    for e in map_of(n, path)? {
        let kp = join(path, &e.key);
        match e.key.as_str() {
            "parallelism" => u.parallelism = Some(uint(&e.val, &kp)?),
            "delay" => u.delay = opt_duration(&e.val, &kp)?,
            "failure_action" => u.failure_action = opt_string(&e.val, &kp)?,
            "monitor" => u.monitor = opt_duration(&e.val, &kp)?,
            "max_failure_ratio" => u.max_failure_ratio = Some(float(&e.val, &kp)?),
            "order" => {
                let o = string(&e.val, &kp)?;
                if !matches!(o.as_str(), "start-first" | "stop-first") {
                    return Err(LoadError::at(
                        &e.val.mark,
                        kp,
                        format!("invalid order {o:?}: must be start-first or stop-first"),
                    ));
                }
                u.order = Some(o);
            }
            _ => {}
        }
    }
    Ok(Some(u))
}

fn resource(n: &Node, path: &str) -> R<Option<Resource>> {
    if n.is_null() {
        return Ok(None);
    }
    check_keys(
        n,
        path,
        &["cpus", "memory", "pids", "devices", "generic_resources"],
    )?;
    let mut r = Resource::default();
    for e in map_of(n, path)? {
        let kp = join(path, &e.key);
        match e.key.as_str() {
            "cpus" => r.cpus = Some(float(&e.val, &kp)?),
            "memory" => r.memory = opt_bytes(&e.val, &kp)?,
            "pids" => r.pids = Some(int(&e.val, &kp)?),
            _ => {}
        }
    }
    Ok(Some(r))
}

fn deploy(n: &Node, path: &str) -> R<Option<Deploy>> {
    if n.is_null() {
        return Ok(None);
    }
    check_keys(
        n,
        path,
        &[
            "endpoint_mode",
            "labels",
            "mode",
            "placement",
            "replicas",
            "resources",
            "restart_policy",
            "rollback_config",
            "update_config",
        ],
    )?;
    let mut d = Deploy::default();
    for e in map_of(n, path)? {
        let kp = join(path, &e.key);
        match e.key.as_str() {
            "mode" => d.mode = opt_string(&e.val, &kp)?,
            "replicas" => d.replicas = Some(uint(&e.val, &kp)?),
            "labels" => d.labels = mapping(&e.val, &kp)?,
            "update_config" => d.update_config = update_config(&e.val, &kp)?,
            "rollback_config" => d.rollback_config = update_config(&e.val, &kp)?,
            "endpoint_mode" => d.endpoint_mode = opt_string(&e.val, &kp)?,
            "resources" => {
                check_keys(&e.val, &kp, &["limits", "reservations"])?;
                for re in map_of(&e.val, &kp)? {
                    let rp = join(&kp, &re.key);
                    match re.key.as_str() {
                        "limits" => d.resources.limits = resource(&re.val, &rp)?,
                        "reservations" => d.resources.reservations = resource(&re.val, &rp)?,
                        _ => {}
                    }
                }
            }
            "restart_policy" => {
                check_keys(
                    &e.val,
                    &kp,
                    &["condition", "delay", "max_attempts", "window"],
                )?;
                let mut rp = RestartPolicy::default();
                for re in map_of(&e.val, &kp)? {
                    let p = join(&kp, &re.key);
                    match re.key.as_str() {
                        "condition" => {
                            let c = string(&re.val, &p)?;
                            if !matches!(c.as_str(), "none" | "on-failure" | "any") {
                                return Err(LoadError::at(
                                    &re.val.mark,
                                    p,
                                    format!(
                                        "invalid condition {c:?}: must be none, on-failure or any"
                                    ),
                                ));
                            }
                            rp.condition = Some(c);
                        }
                        "delay" => rp.delay = opt_duration(&re.val, &p)?,
                        "max_attempts" => rp.max_attempts = Some(uint(&re.val, &p)?),
                        "window" => rp.window = opt_duration(&re.val, &p)?,
                        _ => {}
                    }
                }
                d.restart_policy = Some(rp);
            }
            _ => {}
        }
    }
    Ok(Some(d))
}

fn service_networks(
    cx: &mut Cx,
    svc: &str,
    n: &Node,
    path: &str,
) -> R<IndexMap<String, Option<ServiceNetwork>>> {
    let mut out = IndexMap::new();
    let add_ref = |cx: &mut Cx, name: &str, mark: &Mark, p: String| {
        cx.refs.push(Ref {
            service: svc.into(),
            kind: RefKind::Network,
            name: name.into(),
            mark: mark.clone(),
            path: p,
            required: true,
        })
    };
    match &n.v {
        V::Null => {}
        V::Seq(items) => {
            for (i, it) in items.iter().enumerate() {
                let p = idx(path, i);
                let name = string(it, &p)?;
                add_ref(cx, &name, &it.mark, p);
                out.insert(name, None);
            }
        }
        V::Map(m) => {
            for e in m {
                let p = join(path, &e.key);
                add_ref(cx, &e.key, &e.kmark, p.clone());
                if e.val.is_null() {
                    out.insert(e.key.clone(), None);
                    continue;
                }
                check_keys(
                    &e.val,
                    &p,
                    &[
                        "aliases",
                        "driver_opts",
                        "gw_priority",
                        "interface_name",
                        "ipv4_address",
                        "ipv6_address",
                        "link_local_ips",
                        "mac_address",
                        "priority",
                    ],
                )?;
                let mut sn = ServiceNetwork::default();
                for ne in map_of(&e.val, &p)? {
                    let np = join(&p, &ne.key);
                    match ne.key.as_str() {
                        "aliases" => sn.aliases = list(&ne.val, &np)?,
                        "driver_opts" => sn.driver_opts = mapping(&ne.val, &np)?,
                        "gw_priority" => sn.gw_priority = Some(int(&ne.val, &np)?),
                        "interface_name" => sn.interface_name = opt_string(&ne.val, &np)?,
                        "ipv4_address" => {
                            let a = opt_string(&ne.val, &np)?;
                            if let Some(a) = &a {
                                if a.parse::<std::net::Ipv4Addr>().is_err() {
                                    return Err(LoadError::at(
                                        &ne.val.mark,
                                        np,
                                        format!("invalid IPv4 address {a:?}"),
                                    ));
                                }
                            }
                            sn.ipv4_address = a;
                        }
                        "ipv6_address" => sn.ipv6_address = opt_string(&ne.val, &np)?,
                        "link_local_ips" => sn.link_local_ips = list(&ne.val, &np)?,
                        "mac_address" => sn.mac_address = opt_string(&ne.val, &np)?,
                        "priority" => sn.priority = Some(int(&ne.val, &np)?),
                        _ => {}
                    }
                }
                out.insert(e.key.clone(), Some(sn));
            }
        }
        _ => return Err(type_err(n, path, "a list or a mapping")),
    }
    Ok(out)
}

fn extra_hosts(n: &Node, path: &str) -> R<HostsList> {
    let mut out = Vec::new();
    match &n.v {
        V::Null => {}
        V::Seq(items) => {
            for (i, it) in items.iter().enumerate() {
                let p = idx(path, i);
                let s = string(it, &p)?;
                let (h, ip) = if let Some((h, ip)) = s.split_once('=') {
                    (h, ip)
                } else if let Some((h, ip)) = s.split_once(':') {
                    (h, ip)
                } else {
                    return Err(LoadError::at(
                        &it.mark,
                        p,
                        format!("invalid extra host {s:?}: expected HOST:IP or HOST=IP"),
                    ));
                };
                let ip = ip.trim_start_matches('[').trim_end_matches(']');
                out.push((h.to_string(), ip.to_string()));
            }
        }
        V::Map(m) => {
            for e in m {
                let p = join(path, &e.key);
                for ip in string_or_list(&e.val, &p)? {
                    out.push((e.key.clone(), ip));
                }
            }
        }
        _ => return Err(type_err(n, path, "a list or a mapping")),
    }
    Ok(HostsList(out))
}

fn devices(n: &Node, path: &str) -> R<Vec<Device>> {
    let V::Seq(items) = &n.v else {
        if n.is_null() {
            return Ok(vec![]);
        }
        return Err(type_err(n, path, "a list"));
    };
    let mut out = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let p = idx(path, i);
        match &it.v {
            V::Scalar(s, _) => {
                let parts: Vec<&str> = s.split(':').collect();
                let d = match parts.as_slice() {
                    [src] => Device {
                        source: src.to_string(),
                        target: src.to_string(),
                        permissions: Some("rwm".into()),
                    },
                    [src, dst] => {
                        if dst.starts_with('/') {
                            Device {
                                source: src.to_string(),
                                target: dst.to_string(),
                                permissions: Some("rwm".into()),
                            }
                        } else {
                            Device {
                                source: src.to_string(),
                                target: src.to_string(),
                                permissions: Some(dst.to_string()),
                            }
                        }
                    }
                    [src, dst, perm] => Device {
                        source: src.to_string(),
                        target: dst.to_string(),
                        permissions: Some(perm.to_string()),
                    },
                    _ => {
                        return Err(LoadError::at(
                            &it.mark,
                            p,
                            format!("invalid device {s:?}: expected SOURCE[:TARGET[:PERMISSIONS]]"),
                        ))
                    }
                };
                out.push(d);
            }
            V::Map(m) => {
                check_keys(it, &p, &["source", "target", "permissions"])?;
                let mut d = Device::default();
                for e in m {
                    let kp = join(&p, &e.key);
                    match e.key.as_str() {
                        "source" => d.source = string(&e.val, &kp)?,
                        "target" => d.target = string(&e.val, &kp)?,
                        "permissions" => d.permissions = opt_string(&e.val, &kp)?,
                        _ => {}
                    }
                }
                if d.target.is_empty() {
                    d.target = d.source.clone();
                }
                out.push(d);
            }
            _ => return Err(type_err(it, &p, "a string or a mapping")),
        }
    }
    Ok(out)
}

fn ulimits(n: &Node, path: &str) -> R<IndexMap<String, Ulimit>> {
    let mut out = IndexMap::new();
    for e in map_of(n, path)? {
        let p = join(path, &e.key);
        let u = match &e.val.v {
            V::Scalar(..) => Ulimit {
                single: Some(int(&e.val, &p)?),
                ..Default::default()
            },
            V::Map(m) => {
                check_keys(&e.val, &p, &["soft", "hard"])?;
                let mut u = Ulimit::default();
                for ue in m {
                    let up = join(&p, &ue.key);
                    match ue.key.as_str() {
                        "soft" => u.soft = Some(int(&ue.val, &up)?),
                        "hard" => u.hard = Some(int(&ue.val, &up)?),
                        _ => {}
                    }
                }
                if u.soft.is_none() || u.hard.is_none() {
                    return Err(LoadError::at(
                        &e.val.mark,
                        p,
                        "ulimit needs both \"soft\" and \"hard\"",
                    ));
                }
                u
            }
            _ => return Err(type_err(&e.val, &p, "an integer or a mapping")),
        };
        out.insert(e.key.clone(), u);
    }
    Ok(out)
}

fn env_files(cx: &Cx, n: &Node, path: &str) -> R<Vec<EnvFile>> {
    let items: Vec<&Node> = match &n.v {
        V::Null => vec![],
        V::Scalar(..) => vec![n],
        V::Seq(items) => items.iter().collect(),
        _ => return Err(type_err(n, path, "a string or a list")),
    };
    let mut out = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let p = idx(path, i);
        match &it.v {
            V::Scalar(s, _) => out.push(EnvFile {
                path: PathBuf::from(cx.abs(s)),
                required: true,
                format: None,
            }),
            V::Map(m) => {
                check_keys(it, &p, &["path", "required", "format"])?;
                let mut f = EnvFile {
                    required: true,
                    ..Default::default()
                };
                for e in m {
                    let kp = join(&p, &e.key);
                    match e.key.as_str() {
                        "path" => f.path = PathBuf::from(cx.abs(&string(&e.val, &kp)?)),
                        "required" => f.required = boolean(&e.val, &kp)?,
                        "format" => f.format = opt_string(&e.val, &kp)?,
                        _ => {}
                    }
                }
                if f.path.as_os_str().is_empty() {
                    return Err(LoadError::at(&it.mark, p, "env_file is missing \"path\""));
                }
                out.push(f);
            }
            _ => return Err(type_err(it, &p, "a string or a mapping")),
        }
    }
    Ok(out)
}

fn build(cx: &mut Cx, svc: &str, n: &Node, path: &str) -> R<Option<Build>> {
    let mut b = Build::default();
    match &n.v {
        V::Null => return Ok(None),
        V::Scalar(s, _) => {
            b.context = Some(context_path(cx, s));
            if n.mark.line > 0 {
                let m = &n.mark;
                b.at.0
                    .insert("context".into(), format!("{}:{}:{}", m.file, m.line, m.col));
            }
            b.dockerfile = Some("Dockerfile".into());
            return Ok(Some(b));
        }
        V::Map(_) => {}
        _ => return Err(type_err(n, path, "a string or a mapping")),
    }
    let mut explicit_dockerfile = false;
    check_keys(
        n,
        path,
        &[
            "additional_contexts",
            "args",
            "cache_from",
            "cache_to",
            "context",
            "dockerfile",
            "dockerfile_inline",
            "entitlements",
            "extra_hosts",
            "isolation",
            "labels",
            "network",
            "no_cache",
            "platforms",
            "privileged",
            "provenance",
            "pull",
            "sbom",
            "secrets",
            "shm_size",
            "ssh",
            "tags",
            "target",
            "ulimits",
        ],
    )?;
    for e in map_of(n, path)? {
        let kp = join(path, &e.key);
        if e.val.mark.line > 0 {
            let m = &e.val.mark;
            b.at.0
                .insert(e.key.clone(), format!("{}:{}:{}", m.file, m.line, m.col));
        }
        match e.key.as_str() {
            "context" => b.context = opt_string(&e.val, &kp)?.map(|s| context_path(cx, &s)),
            "dockerfile" => {
                explicit_dockerfile = true;
                b.dockerfile = opt_string(&e.val, &kp)?.filter(|d| !d.is_empty());
            }
            "dockerfile_inline" => b.dockerfile_inline = opt_string(&e.val, &kp)?,
            "args" => b.args = mapping_with_equals(&e.val, &kp)?,
            "ssh" => {
                b.ssh = match &e.val.v {
                    V::Map(_) => mapping(&e.val, &kp)?
                        .into_iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect(),
                    _ => string_or_list(&e.val, &kp)?,
                }
            }
            "labels" => b.labels = mapping(&e.val, &kp)?,
            "cache_from" => b.cache_from = list(&e.val, &kp)?,
            "cache_to" => b.cache_to = list(&e.val, &kp)?,
            "no_cache" => b.no_cache = boolean(&e.val, &kp)?,
            "additional_contexts" => {
                b.additional_contexts = mapping(&e.val, &kp)?
                    .into_iter()
                    .map(|(k, v)| (k, context_path(cx, &v)))
                    .collect()
            }
            "pull" => b.pull = boolean(&e.val, &kp)?,
            "extra_hosts" => b.extra_hosts = extra_hosts(&e.val, &kp)?,
            "network" => b.network = opt_string(&e.val, &kp)?,
            "target" => b.target = opt_string(&e.val, &kp)?,
            "shm_size" => b.shm_size = opt_bytes(&e.val, &kp)?,
            "tags" => b.tags = list(&e.val, &kp)?,
            "platforms" => b.platforms = list(&e.val, &kp)?,
            "privileged" => b.privileged = boolean(&e.val, &kp)?,
            // Build secrets: the id is `target` if given, else the source name.
            "secrets" => {
                b.secrets = file_refs(cx, svc, &e.val, &kp, RefKind::Secret)?;
                for r in &mut b.secrets {
                    if r.target.as_deref() == Some(&format!("/run/secrets/{}", r.source)) {
                        r.target = None;
                    }
                }
            }
            _ => {}
        }
    }
    if b.context.is_none() {
        b.context = Some(cx.abs("."));
    }
    if b.dockerfile.is_none() && b.dockerfile_inline.is_none() && !explicit_dockerfile {
        b.dockerfile = Some("Dockerfile".into());
    }
    Ok(Some(b))
}

/// Build contexts may be URLs (`https://…`, `git@…`) or other contexts (`service:x`).
fn context_path(cx: &Cx, s: &str) -> String {
    if s.contains("://") || s.starts_with("git@") || s.contains(':') && !s.starts_with('/') {
        s.to_string()
    } else {
        cx.abs(s)
    }
}

fn logging(n: &Node, path: &str) -> R<Option<Logging>> {
    if n.is_null() {
        return Ok(None);
    }
    check_keys(n, path, &["driver", "options"])?;
    let mut l = Logging::default();
    for e in map_of(n, path)? {
        let kp = join(path, &e.key);
        match e.key.as_str() {
            "driver" => l.driver = opt_string(&e.val, &kp)?,
            "options" => l.options = mapping(&e.val, &kp)?,
            _ => {}
        }
    }
    Ok(Some(l))
}

/// `develop: {watch: [rules]}`.
fn develop(cx: &mut Cx, service: &str, n: &Node, path: &str) -> R<Option<Develop>> {
    if n.is_null() {
        return Ok(None);
    }
    check_keys(n, path, &["watch"])?;
    let mut d = Develop::default();
    for e in map_of(n, path)? {
        let kp = join(path, &e.key);
        if e.key != "watch" {
            continue;
        }
        let V::Seq(items) = &e.val.v else {
            if e.val.is_null() {
                continue;
            }
            return Err(type_err(&e.val, &kp, "a list of watch rules"));
        };
        for (i, it) in items.iter().enumerate() {
            d.watch.push(watch_rule(cx, service, it, &idx(&kp, i))?);
        }
    }
    Ok(Some(d))
}

fn watch_rule(cx: &mut Cx, service: &str, n: &Node, path: &str) -> R<WatchRule> {
    if !matches!(n.v, V::Map(_)) {
        return Err(type_err(n, path, "a mapping"));
    }
    check_keys(
        n,
        path,
        &[
            "action",
            "path",
            "target",
            "ignore",
            "include",
            "initial_sync",
            "exec",
        ],
    )?;
    let mut r = WatchRule::default();
    let mut have_path = false;
    for e in map_of(n, path)? {
        let kp = join(path, &e.key);
        match e.key.as_str() {
            "action" => {
                let a = string(&e.val, &kp)?;
                if !matches!(
                    a.as_str(),
                    "sync" | "sync+restart" | "sync+exec" | "rebuild" | "restart"
                ) {
                    return Err(LoadError::at(
                        &e.val.mark,
                        kp,
                        format!("invalid watch action {a:?}: must be sync, sync+restart, sync+exec, rebuild or restart"),
                    ));
                }
                r.action = a;
            }
            "path" => {
                r.path = cx.abs(&string(&e.val, &kp)?);
                have_path = true;
            }
            "target" => r.target = opt_string(&e.val, &kp)?,
            "ignore" => r.ignore = string_or_list(&e.val, &kp)?,
            "include" => r.include = string_or_list(&e.val, &kp)?,
            "initial_sync" => r.initial_sync = boolean(&e.val, &kp)?,
            "exec" => {
                check_keys(
                    &e.val,
                    &kp,
                    &[
                        "command",
                        "user",
                        "privileged",
                        "working_dir",
                        "environment",
                    ],
                )?;
                let mut x = WatchExec::default();
                for f in map_of(&e.val, &kp)? {
                    let fp = join(&kp, &f.key);
                    match f.key.as_str() {
                        "command" => {
                            x.command = shell_command(cx, service, &f.val, &fp)?.unwrap_or_default()
                        }
                        "user" => x.user = opt_string(&f.val, &fp)?,
                        "privileged" => x.privileged = boolean(&f.val, &fp)?,
                        "working_dir" => x.working_dir = opt_string(&f.val, &fp)?,
                        "environment" => x.environment = mapping_with_equals(&f.val, &fp)?,
                        _ => {}
                    }
                }
                r.exec = Some(x);
            }
            k if k.starts_with("x-") => {
                if let V::Scalar(v, _) = &e.val.v {
                    let val = match parse_bool(v) {
                        Some(b) if matches!(v.as_str(), "true" | "false") => {
                            serde_json::Value::Bool(b)
                        }
                        _ => match v.parse::<i64>() {
                            Ok(n) => serde_json::Value::from(n),
                            Err(_) => serde_json::Value::String(v.clone()),
                        },
                    };
                    r.extensions.insert(k.to_string(), val);
                }
            }
            _ => {}
        }
    }
    if r.action.is_empty() {
        return Err(LoadError::at(
            &n.mark,
            path,
            "a watch rule needs an action".to_string(),
        ));
    }
    if !have_path {
        return Err(LoadError::at(
            &n.mark,
            path,
            "a watch rule needs a path".to_string(),
        ));
    }
    if r.action.starts_with("sync") && r.target.is_none() {
        return Err(LoadError::at(
            &n.mark,
            path,
            format!(
                "a {} rule needs a target (the path in the container)",
                r.action
            ),
        ));
    }
    if r.action == "sync+exec" && r.exec.as_ref().is_none_or(|x| x.command.is_empty()) {
        return Err(LoadError::at(
            &n.mark,
            path,
            "a sync+exec rule needs exec.command".to_string(),
        ));
    }
    Ok(r)
}

/// A service definition (after merge/extends) → `Service`.
pub fn service(cx: &mut Cx, name: &str, n: &Node) -> R<Service> {
    let path = format!("services.{name}");
    if !matches!(n.v, V::Map(_) | V::Null) {
        return Err(type_err(n, &path, "a mapping"));
    }
    check_keys(n, &path, SERVICE_KEYS)?;
    cx.service_marks.insert(name.to_string(), n.mark.clone());
    let mut s = Service {
        name: name.to_string(),
        ..Default::default()
    };
    for e in map_of(n, &path)? {
        let kp = join(&path, &e.key);
        let v = &e.val;
        match e.key.as_str() {
            "annotations" => s.annotations = mapping(v, &kp)?,
            "attach" => s.attach = Some(boolean(v, &kp)?),
            "build" => s.build = build(cx, name, v, &kp)?,
            "cap_add" => s.cap_add = list(v, &kp)?,
            "cap_drop" => s.cap_drop = list(v, &kp)?,
            "cgroup" => s.cgroup = opt_string(v, &kp)?,
            "cgroup_parent" => s.cgroup_parent = opt_string(v, &kp)?,
            "command" => s.command = shell_command(cx, name, v, &kp)?,
            "configs" => s.configs = file_refs(cx, name, v, &kp, RefKind::Config)?,
            "container_name" => s.container_name = opt_string(v, &kp)?,
            "cpu_count" => s.cpu_count = Some(int(v, &kp)?),
            "cpu_percent" => s.cpu_percent = Some(float(v, &kp)?),
            "cpu_period" => s.cpu_period = Some(int(v, &kp)?),
            "cpu_quota" => s.cpu_quota = Some(int(v, &kp)?),
            "cpu_rt_period" => s.cpu_rt_period = Some(int(v, &kp)?),
            "cpu_rt_runtime" => s.cpu_rt_runtime = Some(int(v, &kp)?),
            "cpus" => s.cpus = Some(float(v, &kp)?),
            "cpuset" => s.cpuset = opt_string(v, &kp)?,
            "cpu_shares" => s.cpu_shares = Some(int(v, &kp)?),
            "depends_on" => s.depends_on = depends_on(cx, name, v, &kp)?,
            "deploy" => s.deploy = deploy(v, &kp)?,
            "device_cgroup_rules" => s.device_cgroup_rules = list(v, &kp)?,
            "devices" => s.devices = devices(v, &kp)?,
            "dns" => s.dns = string_or_list(v, &kp)?,
            "dns_opt" => s.dns_opt = list(v, &kp)?,
            "dns_search" => s.dns_search = string_or_list(v, &kp)?,
            "domainname" => s.domainname = opt_string(v, &kp)?,
            "entrypoint" => s.entrypoint = shell_command(cx, name, v, &kp)?,
            "env_file" => s.env_file = env_files(cx, v, &kp)?,
            "environment" => s.environment = mapping_with_equals(v, &kp)?,
            "expose" => s.expose = list(v, &kp)?,
            "external_links" => s.external_links = list(v, &kp)?,
            "extra_hosts" => s.extra_hosts = extra_hosts(v, &kp)?,
            "group_add" => s.group_add = list(v, &kp)?,
            "healthcheck" => s.healthcheck = healthcheck(v, &kp)?,
            "hostname" => s.hostname = opt_string(v, &kp)?,
            "image" => s.image = opt_string(v, &kp)?,
            "init" => s.init = Some(boolean(v, &kp)?),
            "ipc" | "pid" => {
                let m = opt_string(v, &kp)?;
                if let Some(dep) = m.as_deref().and_then(|m| m.strip_prefix("service:")) {
                    cx.refs.push(Ref {
                        service: name.into(),
                        kind: RefKind::Service,
                        name: dep.into(),
                        mark: v.mark.clone(),
                        path: kp.clone(),
                        required: true,
                    });
                }
                if e.key == "ipc" {
                    s.ipc = m;
                } else {
                    s.pid = m;
                }
            }
            "isolation" => s.isolation = opt_string(v, &kp)?,
            "labels" => s.labels = mapping(v, &kp)?,
            "label_file" => {
                s.label_file = string_or_list(v, &kp)?
                    .iter()
                    .map(|p| PathBuf::from(cx.abs(p)))
                    .collect()
            }
            "links" => s.links = list(v, &kp)?,
            "logging" => s.logging = logging(v, &kp)?,
            "develop" => s.develop = develop(cx, name, v, &kp)?,
            "mac_address" => s.mac_address = opt_string(v, &kp)?,
            "mem_limit" => s.mem_limit = opt_bytes(v, &kp)?,
            "mem_reservation" => s.mem_reservation = opt_bytes(v, &kp)?,
            "memswap_limit" => s.memswap_limit = opt_bytes(v, &kp)?,
            "mem_swappiness" => s.mem_swappiness = Some(uint(v, &kp)?),
            "network_mode" => {
                let m = opt_string(v, &kp)?;
                if let Some(dep) = m.as_deref().and_then(|m| m.strip_prefix("service:")) {
                    cx.refs.push(Ref {
                        service: name.into(),
                        kind: RefKind::Service,
                        name: dep.into(),
                        mark: v.mark.clone(),
                        path: kp.clone(),
                        required: true,
                    });
                }
                s.network_mode = m;
            }
            "networks" => s.networks = service_networks(cx, name, v, &kp)?,
            "oom_kill_disable" => s.oom_kill_disable = boolean(v, &kp)?,
            "oom_score_adj" => s.oom_score_adj = Some(int(v, &kp)?),
            "pids_limit" => s.pids_limit = Some(int(v, &kp)?),
            "platform" => s.platform = opt_string(v, &kp)?,
            "ports" => {
                let (p, marks) = ports(v, &kp)?;
                s.ports = p;
                cx.port_marks.insert(name.to_string(), marks);
            }
            "privileged" => s.privileged = boolean(v, &kp)?,
            "profiles" => s.profiles = list(v, &kp)?,
            "pull_policy" => {
                let p = string(v, &kp)?;
                let ok = matches!(
                    p.as_str(),
                    "always"
                        | "never"
                        | "missing"
                        | "if_not_present"
                        | "build"
                        | "daily"
                        | "weekly"
                ) || p.starts_with("every_");
                if !ok {
                    return Err(LoadError::at(
                        &v.mark,
                        kp,
                        format!("invalid pull_policy {p:?}: must be always, never, missing, build, daily, weekly or every_<duration>"),
                    ));
                }
                s.pull_policy = Some(if p == "if_not_present" {
                    "missing".into()
                } else {
                    p
                });
            }
            "read_only" => s.read_only = boolean(v, &kp)?,
            "restart" => {
                let r = string(v, &kp)?;
                let ok = match r.as_str() {
                    "no" | "always" | "unless-stopped" | "on-failure" => true,
                    x => x
                        .strip_prefix("on-failure:")
                        .is_some_and(|n| n.parse::<u32>().is_ok()),
                };
                if !ok {
                    return Err(LoadError::at(
                        &v.mark,
                        kp,
                        format!("invalid restart policy {r:?}: must be no, always, unless-stopped or on-failure[:N]"),
                    ));
                }
                s.restart = Some(r);
            }
            "runtime" => s.runtime = opt_string(v, &kp)?,
            "scale" => s.scale = Some(uint(v, &kp)?),
            "secrets" => s.secrets = file_refs(cx, name, v, &kp, RefKind::Secret)?,
            "security_opt" => s.security_opt = list(v, &kp)?,
            "shm_size" => s.shm_size = opt_bytes(v, &kp)?,
            "stdin_open" => s.stdin_open = boolean(v, &kp)?,
            "stop_grace_period" => s.stop_grace_period = opt_duration(v, &kp)?,
            "stop_signal" => s.stop_signal = opt_string(v, &kp)?,
            "storage_opt" => s.storage_opt = mapping(v, &kp)?,
            "sysctls" => s.sysctls = mapping(v, &kp)?,
            "tmpfs" => s.tmpfs = string_or_list(v, &kp)?,
            "tty" => s.tty = boolean(v, &kp)?,
            "ulimits" => s.ulimits = ulimits(v, &kp)?,
            "user" => s.user = opt_string(v, &kp)?,
            "userns_mode" => s.userns_mode = opt_string(v, &kp)?,
            "uts" => s.uts = opt_string(v, &kp)?,
            "volumes" => s.volumes = volumes(cx, name, v, &kp)?,
            "volumes_from" => {
                s.volumes_from = list(v, &kp)?;
                for (i, vf) in s.volumes_from.iter().enumerate() {
                    if vf.starts_with("container:") {
                        continue;
                    }
                    let svc = vf.split(':').next().unwrap_or(vf);
                    let svc = if vf.starts_with("service:") {
                        vf.split(':').nth(1).unwrap_or("")
                    } else {
                        svc
                    };
                    cx.refs.push(Ref {
                        service: name.into(),
                        kind: RefKind::Service,
                        name: svc.into(),
                        mark: v.mark.clone(),
                        path: idx(&kp, i),
                        required: true,
                    });
                }
            }
            "working_dir" => s.working_dir = opt_string(v, &kp)?,
            // Accepted by the schema, not modelled (yet): kept out of the output.
            _ => {}
        }
    }
    if let (Some(nm), false) = (&s.network_mode, s.networks.is_empty()) {
        if !nm.is_empty() {
            return Err(LoadError::at(
                &n.mark,
                path,
                "\"network_mode\" and \"networks\" cannot be combined",
            ));
        }
    }
    // compose-go's normalisation: services used through links, `service:` namespaces and
    // volumes_from become dependencies (when not declared).
    let mut implicit: Vec<(String, bool, &str)> = Vec::new();
    for l in &s.links {
        implicit.push((l.split(':').next().unwrap_or(l).to_string(), true, "links"));
    }
    for (key, ns) in [
        ("network_mode", &s.network_mode),
        ("ipc", &s.ipc),
        ("pid", &s.pid),
        ("uts", &s.uts),
        ("cgroup", &s.cgroup),
    ] {
        if let Some(dep) = ns.as_deref().and_then(|ns| ns.strip_prefix("service:")) {
            implicit.push((dep.to_string(), true, key));
        }
    }
    for vf in &s.volumes_from {
        if !vf.starts_with("container:") {
            let name = vf.strip_prefix("service:").unwrap_or(vf);
            let name = name.split(':').next().unwrap_or(name).to_string();
            implicit.push((name, false, "volumes_from"));
        }
    }
    for (dep, restart, key) in implicit {
        if !s.depends_on.contains_key(&dep) {
            let mark = n.get(key).map(|k| k.mark.clone()).unwrap_or(n.mark.clone());
            cx.refs.push(Ref {
                service: name.into(),
                kind: RefKind::Service,
                name: dep.clone(),
                mark,
                path: join(&path, key),
                required: true,
            });
        }
        s.depends_on.entry(dep).or_insert(DependsOn {
            condition: "service_started".into(),
            restart,
            required: true,
        });
    }
    if let (Some(pf), Some(b)) = (&s.platform, &s.build) {
        if !b.platforms.is_empty() && !b.platforms.contains(pf) {
            return Err(LoadError::at(
                &n.mark,
                &path,
                format!("service.build.platforms MUST include service.platform {pf:?}"),
            ));
        }
    }
    if let Some(lim) = s.deploy.as_ref().and_then(|d| d.resources.limits.as_ref()) {
        let distinct = |a: &str, b: &str| {
            LoadError::at(
                &n.mark,
                &path,
                format!("can't set distinct values on '{a}' and 'deploy.resources.limits.{b}'"),
            )
        };
        if s.mem_limit.is_some() && lim.memory.is_some() && s.mem_limit != lim.memory {
            return Err(distinct("mem_limit", "memory"));
        }
        if s.cpus.is_some() && lim.cpus.is_some() && s.cpus != lim.cpus {
            return Err(distinct("cpus", "cpus"));
        }
        if s.pids_limit.is_some() && lim.pids.is_some() && s.pids_limit != lim.pids {
            return Err(distinct("pids_limit", "pids"));
        }
    }
    Ok(s)
}

pub fn network(n: &Node, path: &str, key: &str, project: &str) -> R<Network> {
    check_keys(
        n,
        path,
        &[
            "attachable",
            "driver",
            "driver_opts",
            "enable_ipv4",
            "enable_ipv6",
            "external",
            "internal",
            "ipam",
            "labels",
            "name",
        ],
    )?;
    let mut net = Network::default();
    let mut name = None;
    for e in map_of(n, path)? {
        let kp = join(path, &e.key);
        let v = &e.val;
        match e.key.as_str() {
            "name" => name = opt_string(v, &kp)?,
            "driver" => net.driver = opt_string(v, &kp)?,
            "driver_opts" => net.driver_opts = mapping(v, &kp)?,
            "attachable" => net.attachable = boolean(v, &kp)?,
            "internal" => net.internal = boolean(v, &kp)?,
            "enable_ipv4" => net.enable_ipv4 = Some(boolean(v, &kp)?),
            "enable_ipv6" => net.enable_ipv6 = Some(boolean(v, &kp)?),
            "labels" => net.labels = mapping(v, &kp)?,
            "external" => match &v.v {
                V::Map(_) => {
                    net.external = true;
                    if let Some(nm) = v.get("name") {
                        name = opt_string(nm, &join(&kp, "name"))?;
                    }
                }
                _ => net.external = boolean(v, &kp)?,
            },
            "ipam" => {
                check_keys(v, &kp, &["driver", "config", "options"])?;
                for ie in map_of(v, &kp)? {
                    let ip = join(&kp, &ie.key);
                    match ie.key.as_str() {
                        "driver" => net.ipam.driver = opt_string(&ie.val, &ip)?,
                        "options" => net.ipam.options = mapping(&ie.val, &ip)?,
                        "config" => {
                            let V::Seq(items) = &ie.val.v else {
                                return Err(type_err(&ie.val, &ip, "a list"));
                            };
                            for (i, it) in items.iter().enumerate() {
                                let pp = idx(&ip, i);
                                check_keys(
                                    it,
                                    &pp,
                                    &["subnet", "ip_range", "gateway", "aux_addresses"],
                                )?;
                                let mut pool = IpamPool::default();
                                for pe in map_of(it, &pp)? {
                                    let p2 = join(&pp, &pe.key);
                                    match pe.key.as_str() {
                                        "subnet" => {
                                            let s = opt_string(&pe.val, &p2)?;
                                            if let Some(s) = &s {
                                                if s.parse::<ipnet::IpNet>().is_err() {
                                                    return Err(LoadError::at(
                                                        &pe.val.mark,
                                                        p2,
                                                        format!("invalid subnet {s:?}"),
                                                    ));
                                                }
                                            }
                                            pool.subnet = s;
                                        }
                                        "ip_range" => pool.ip_range = opt_string(&pe.val, &p2)?,
                                        "gateway" => pool.gateway = opt_string(&pe.val, &p2)?,
                                        "aux_addresses" => {
                                            pool.aux_addresses = mapping(&pe.val, &p2)?
                                        }
                                        _ => {}
                                    }
                                }
                                net.ipam.config.push(pool);
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    net.name = match name {
        Some(n) => n,
        None if net.external => key.to_string(),
        None => format!("{project}_{key}"),
    };
    Ok(net)
}

pub fn volume(cx: &Cx, n: &Node, path: &str, key: &str, project: &str) -> R<Volume> {
    check_keys(
        n,
        path,
        &["driver", "driver_opts", "external", "labels", "name"],
    )?;
    let mut vol = Volume::default();
    let mut name = None;
    for e in map_of(n, path)? {
        let kp = join(path, &e.key);
        let v = &e.val;
        match e.key.as_str() {
            "name" => name = opt_string(v, &kp)?,
            "driver" => vol.driver = opt_string(v, &kp)?,
            "driver_opts" => vol.driver_opts = mapping(v, &kp)?,
            "labels" => vol.labels = mapping(v, &kp)?,
            "external" => match &v.v {
                V::Map(_) => {
                    vol.external = true;
                    if let Some(nm) = v.get("name") {
                        name = opt_string(nm, &join(&kp, "name"))?;
                    }
                }
                _ => vol.external = boolean(v, &kp)?,
            },
            _ => {}
        }
    }
    // A local bind-mounted volume's relative `device` is relative to the project.
    let bind = vol
        .driver_opts
        .get("o")
        .is_some_and(|o| o.split(',').any(|x| x == "bind"));
    if bind && vol.driver.as_deref().unwrap_or("local") == "local" {
        if let Some(dev) = vol.driver_opts.get_mut("device") {
            if !dev.starts_with('/') {
                *dev = cx.abs(if dev.is_empty() { "." } else { dev });
            }
        }
    }
    vol.name = match name {
        Some(n) => n,
        None if vol.external => key.to_string(),
        None => format!("{project}_{key}"),
    };
    Ok(vol)
}

pub fn file_object(
    cx: &Cx,
    n: &Node,
    path: &str,
    key: &str,
    project: &str,
    is_secret: bool,
) -> R<FileObject> {
    let allowed: &[&str] = if is_secret {
        &[
            "driver",
            "driver_opts",
            "environment",
            "external",
            "file",
            "labels",
            "name",
            "template_driver",
        ]
    } else {
        &[
            "content",
            "environment",
            "external",
            "file",
            "labels",
            "name",
            "template_driver",
        ]
    };
    check_keys(n, path, allowed)?;
    let mut o = FileObject::default();
    let mut name = None;
    for e in map_of(n, path)? {
        let kp = join(path, &e.key);
        let v = &e.val;
        match e.key.as_str() {
            "name" => name = opt_string(v, &kp)?,
            "file" => o.file = opt_string(v, &kp)?.map(|f| PathBuf::from(cx.abs(&f))),
            "environment" => o.environment = opt_string(v, &kp)?,
            "content" => o.content = opt_string(v, &kp)?,
            "labels" => o.labels = mapping(v, &kp)?,
            "external" => match &v.v {
                V::Map(_) => {
                    o.external = true;
                    if let Some(nm) = v.get("name") {
                        name = opt_string(nm, &join(&kp, "name"))?;
                    }
                }
                _ => o.external = boolean(v, &kp)?,
            },
            _ => {}
        }
    }
    let sources = [
        o.file.is_some(),
        o.environment.is_some(),
        o.content.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if !o.external && sources != 1 {
        let what = if is_secret { "secret" } else { "config" };
        let msg = if sources == 0 {
            format!(
                "{what} {key:?} must have one of \"file\", \"environment\"{} or be external",
                if is_secret { "" } else { ", \"content\"" }
            )
        } else {
            format!("{what} {key:?} must have only one of \"file\", \"environment\", \"content\"")
        };
        return Err(LoadError::at(&n.mark, path, msg));
    }
    o.name = match name {
        Some(n) => n,
        None if o.external => key.to_string(),
        None => format!("{project}_{key}"),
    };
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_short_forms() {
        let p = parse_port_short("80").unwrap();
        assert_eq!((p[0].target, p[0].published.clone()), (80, None));
        let p = parse_port_short("8080:80/udp").unwrap();
        assert_eq!(p[0].published.as_deref(), Some("8080"));
        assert_eq!(p[0].protocol, "udp");
        let p = parse_port_short("127.0.0.1:8001:8001").unwrap();
        assert_eq!(p[0].host_ip.as_deref(), Some("127.0.0.1"));
        let p = parse_port_short("[::1]:6000:6000").unwrap();
        assert_eq!(p[0].host_ip.as_deref(), Some("::1"));
        let p = parse_port_short("3000-3005").unwrap();
        assert_eq!(p.len(), 6);
        assert_eq!(p[5].target, 3005);
        let p = parse_port_short("9090-9091:8080-8081").unwrap();
        assert_eq!(p[1].published.as_deref(), Some("9091"));
        assert_eq!(p[1].target, 8081);
        let p = parse_port_short("8000-8010:80").unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].published.as_deref(), Some("8000-8010"));
        let p = parse_port_short("127.0.0.1::5000").unwrap();
        assert_eq!(p[0].published, None);
        assert_eq!(p[0].host_ip.as_deref(), Some("127.0.0.1"));
        assert!(parse_port_short("abc").is_err());
        assert!(parse_port_short("80/foo").is_err());
        assert!(parse_port_short("70000").is_err());
        assert!(parse_port_short("1-3:4-5").is_err());
    }

    #[test]
    fn durations_and_bytes() {
        let d = |s| parse_duration(s).map(|d| d.as_millis());
        assert_eq!(d("1m30s"), Some(90_000));
        assert_eq!(d("1.5s"), Some(1500));
        assert_eq!(d("500ms"), Some(500));
        assert_eq!(d("1h"), Some(3_600_000));
        assert_eq!(d("0"), Some(0));
        assert_eq!(d("10"), None);
        assert_eq!(d("abc"), None);
        assert_eq!(d("-1s"), None);
        assert_eq!(parse_bytes("512m"), Some(512 * 1024 * 1024));
        assert_eq!(parse_bytes("1g"), Some(1 << 30));
        assert_eq!(parse_bytes("1GB"), Some(1 << 30));
        assert_eq!(parse_bytes("100000"), Some(100000));
        assert_eq!(parse_bytes("10k"), Some(10240));
        assert_eq!(parse_bytes("1.5k"), Some(1536));
        assert_eq!(parse_bytes("12q"), None);
    }

    #[test]
    fn shell_words() {
        assert_eq!(
            shell_split(r#"bundle exec thin -p 3000"#).unwrap(),
            ["bundle", "exec", "thin", "-p", "3000"]
        );
        assert_eq!(
            shell_split(r#"sh -c 'echo "a b"' "x\"y" z\ w"#).unwrap(),
            ["sh", "-c", "echo \"a b\"", "x\"y", "z w"]
        );
        assert_eq!(shell_split("a ''").unwrap(), ["a", ""]);
        // Shell operators end the words, as go-shellwords (checked against docker compose
        // v2.40's `config`): the rest is returned as the dropped tail.
        let t = |s: &str| shell_split_tail(s).unwrap();
        assert_eq!(
            t("echo a && echo b"),
            (vec!["echo".into(), "a".into()], Some("&& echo b".into()))
        );
        assert_eq!(t("echo hi;rm x").0, ["echo", "hi"]);
        assert_eq!(t("echo \"a && b\" && c").0, ["echo", "a && b"]);
        assert_eq!(
            t("echo hi>out"),
            (vec!["echo".into(), "hi".into()], Some(">out".into()))
        );
        assert_eq!(
            t("echo hi 2>out"),
            (vec!["echo".into(), "hi".into()], Some("2>out".into()))
        );
        assert_eq!(t("a|b").0, ["a"]);
        assert_eq!(
            t("echo 'x;y' z"),
            (vec!["echo".into(), "x;y".into(), "z".into()], None)
        );
        assert_eq!(t("echo a\\;b").0, ["echo", "a;b"]);
        assert_eq!(t("a #b").0, ["a", "#b"]);
        assert!(shell_split("'open").is_err());
    }
}
