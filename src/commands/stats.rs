//! `berth stats`: `docker stats` columns for the project's containers, read straight from their
//! cgroups (v1 and v2, through the runtime's `Cgroup::stats`) and their network namespace's
//! `/proc/<pid>/net/dev`. CPU % is the cgroup's CPU time over the wall time between two samples.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::bail;
use berth_runtime::cgroups::{Cgroup, Stats};

use crate::cli::{ProjectOpts, StatsArgs};
use crate::paths::Paths;
use crate::state::{ContainerRecord, ProjectState, Status};

use super::project_name;

/// One sample of a container.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub cg: Stats,
    pub net_rx: u64,
    pub net_tx: u64,
    pub at: Option<Instant>,
}

/// One row, in the docker CLI's stats fields.
#[derive(Debug, serde::Serialize)]
pub struct Row {
    #[serde(rename = "BlockIO")]
    pub block_io: String,
    #[serde(rename = "CPUPerc")]
    pub cpu_perc: String,
    #[serde(rename = "Container")]
    pub container: String,
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "MemPerc")]
    pub mem_perc: String,
    #[serde(rename = "MemUsage")]
    pub mem_usage: String,
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "NetIO")]
    pub net_io: String,
    #[serde(rename = "PIDs")]
    pub pids: String,
}

/// The cgroups path the container's bundle was created with (berth's convention otherwise).
fn cgroups_path(project: &str, c: &ContainerRecord) -> String {
    std::fs::read(c.dir.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| {
            v.pointer("/linux/cgroupsPath")
                .and_then(|p| p.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| format!("/berth/{project}/{}", c.name))
}

/// Sum of the received and sent bytes of every interface but `lo` in `/proc/<pid>/net/dev`.
pub fn parse_net_dev(text: &str) -> (u64, u64) {
    let (mut rx, mut tx) = (0, 0);
    for l in text.lines().skip(2) {
        let Some((ifname, rest)) = l.split_once(':') else {
            continue;
        };
        if ifname.trim() == "lo" {
            continue;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        if f.len() >= 9 {
            rx += f[0];
            tx += f[8];
        }
    }
    (rx, tx)
}

pub fn sample(project: &str, c: &ContainerRecord) -> Sample {
    let cg = Cgroup::new(&cgroups_path(project, c))
        .map(|g| g.stats())
        .unwrap_or_default();
    let (net_rx, net_tx) = c
        .pid
        .filter(|pid| crate::state::pid_matches(*pid, c.pid_start))
        .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/net/dev")).ok())
        .map(|t| parse_net_dev(&t))
        .unwrap_or((0, 0));
    Sample {
        cg,
        net_rx,
        net_tx,
        at: Some(Instant::now()),
    }
}

/// go-units `HumanSizeWithPrecision(x, 3)`: decimal units (`kB`, `MB`).
pub fn human_size(n: f64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = n;
    let mut i = 0;
    while v >= 1000.0 && i < units.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    format!("{}{}", g3(v, 3), units[i])
}

/// go-units `BytesSize`: binary units (`KiB`, `MiB`), 4 significant digits.
pub fn bytes_size(n: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n;
    let mut i = 0;
    while v >= 1024.0 && i < units.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    format!("{}{}", g3(v, 4), units[i])
}

/// Go's `%.Ng`: N significant digits, trailing zeros dropped.
fn g3(v: f64, digits: usize) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let int_digits = (v.abs().log10().floor() as i64 + 1).max(1) as usize;
    let decimals = digits.saturating_sub(int_digits);
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

fn host_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

pub fn row(c: &ContainerRecord, prev: Option<&Sample>, now: &Sample, no_trunc: bool) -> Row {
    let cpu = match (prev, prev.and_then(|p| p.at), now.at) {
        (Some(p), Some(a), Some(b)) if b > a => {
            let used = now.cg.cpu_usage_ns.saturating_sub(p.cg.cpu_usage_ns) as f64;
            used / (b - a).as_nanos() as f64 * 100.0
        }
        _ => 0.0,
    };
    let host = host_memory();
    let limit = match now.cg.memory_limit {
        Some(l) if l > 0 && l < host.max(1) => l,
        _ => host,
    };
    let used = now
        .cg
        .memory_usage
        .saturating_sub(now.cg.memory_inactive_file);
    let mem_perc = if limit > 0 {
        used as f64 / limit as f64 * 100.0
    } else {
        0.0
    };
    let id = if no_trunc {
        c.name.clone()
    } else {
        c.name.chars().take(12).collect()
    };
    Row {
        block_io: format!(
            "{} / {}",
            human_size(now.cg.blkio_read as f64),
            human_size(now.cg.blkio_write as f64)
        ),
        cpu_perc: format!("{cpu:.2}%"),
        container: id.clone(),
        id,
        mem_perc: format!("{mem_perc:.2}%"),
        mem_usage: format!("{} / {}", bytes_size(used as f64), bytes_size(limit as f64)),
        name: c.name.clone(),
        net_io: format!(
            "{} / {}",
            human_size(now.net_rx as f64),
            human_size(now.net_tx as f64)
        ),
        pids: now.cg.pids_current.to_string(),
    }
}

fn header_name(f: &str) -> Option<&'static str> {
    Some(match f {
        "ID" | "Container" => "CONTAINER ID",
        "CPUPerc" => "CPU %",
        "MemUsage" => "MEM USAGE / LIMIT",
        "MemPerc" => "MEM %",
        "NetIO" => "NET I/O",
        "BlockIO" => "BLOCK I/O",
        "PIDs" => "PIDS",
        _ => return None,
    })
}

pub fn run(p: &ProjectOpts, args: &StatsArgs) -> anyhow::Result<u8> {
    let paths = Paths::from_env();
    let name = project_name(p)?;
    let format = super::template::parse(&args.format)?;
    let pick = |st: &ProjectState| -> Vec<ContainerRecord> {
        st.containers
            .iter()
            .filter(|c| args.service.as_ref().is_none_or(|s| &c.service == s))
            .filter(|c| args.all || super::ps::live_status(c) == Status::Running)
            .cloned()
            .collect()
    };
    let st = ProjectState::load(&paths, &name)?.unwrap_or_default();
    if let Some(s) = &args.service {
        if !st.containers.iter().any(|c| &c.service == s) {
            bail!("no container found for service {s:?}");
        }
    }
    let mut prev: HashMap<String, Sample> = HashMap::new();
    // A first sample, so that even --no-stream shows a CPU % over a short interval, as docker.
    for c in pick(&st) {
        prev.insert(c.name.clone(), sample(&name, &c));
    }
    let tty = console::Term::stdout().is_term() && !args.no_stream;
    loop {
        std::thread::sleep(Duration::from_millis(if args.no_stream {
            500
        } else {
            1000
        }));
        let st = ProjectState::load(&paths, &name)?.unwrap_or_default();
        let list = pick(&st);
        let mut rows = Vec::new();
        for c in &list {
            let s = sample(&name, c);
            rows.push(row(c, prev.get(&c.name), &s, args.no_trunc));
            prev.insert(c.name.clone(), s);
        }
        let values: Vec<serde_json::Value> = rows
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<_, _>>()?;
        if tty {
            print!("\x1b[2J\x1b[H");
        }
        if !super::template::print(&format, &values, &header_name)? {
            let mut lines = vec![
                "CONTAINER ID\tNAME\tCPU %\tMEM USAGE / LIMIT\tMEM %\tNET I/O\tBLOCK I/O\tPIDS"
                    .to_string(),
            ];
            for r in &rows {
                lines.push(format!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    r.id, r.name, r.cpu_perc, r.mem_usage, r.mem_perc, r.net_io, r.block_io, r.pids
                ));
            }
            print!("{}", super::template::tabulate(&lines));
        }
        std::io::stdout().flush()?;
        if args.no_stream {
            return Ok(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_as_docker_prints_them() {
        assert_eq!(human_size(0.0), "0B");
        assert_eq!(human_size(1234.0), "1.23kB");
        assert_eq!(human_size(999.0), "999B");
        assert_eq!(human_size(15_300_000.0), "15.3MB");
        assert_eq!(bytes_size(3_563_520.0), "3.398MiB");
        assert_eq!(bytes_size(8.0 * 1024.0 * 1024.0 * 1024.0), "8GiB");
    }

    #[test]
    fn net_dev_skips_loopback() {
        let t = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  eth0:    2000      20    0    0    0     0          0         0      300       3    0    0    0     0       0          0\n";
        assert_eq!(parse_net_dev(t), (2000, 300));
    }
}
