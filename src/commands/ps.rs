//! `berth ps`: compose's columns and JSON fields, read from the project record. A container
//! whose recorded process is gone (supervisor killed, host rebooted) is shown as exited.

use std::io::Write;

use serde::Serialize;

use crate::cli::{ProjectOpts, PsArgs};
use crate::paths::Paths;
use crate::state::{pid_matches, ContainerRecord, ProjectState, Status};

use super::project_name;

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PsEntry {
    pub name: String,
    pub service: String,
    pub project: String,
    pub image: String,
    pub command: String,
    pub state: String,
    pub health: String,
    pub exit_code: i32,
    pub status: String,
    pub publishers: Vec<Publisher>,
    #[serde(rename = "ID")]
    pub id: String,
    pub generation: u64,
    /// The project's supervisor: running, respawned (by this command), not running.
    pub supervisor: String,
    /// The docker CLI's container context fields, which compose's `ps --format` also has.
    pub created_at: String,
    pub running_for: String,
    pub names: String,
    pub labels: String,
    pub local_volumes: String,
    pub mounts: String,
    pub networks: String,
    pub ports: String,
    pub size: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Publisher {
    #[serde(rename = "URL")]
    pub url: String,
    pub target_port: u16,
    pub published_port: u16,
    pub protocol: String,
}

/// The live status of a record: a "running" container whose pid is gone is exited.
pub fn live_status(c: &ContainerRecord) -> Status {
    match c.status {
        Status::Running | Status::Paused | Status::Restarting => match c.pid {
            Some(pid) if pid_matches(pid, c.pid_start) => c.status,
            _ => Status::Exited,
        },
        s => s,
    }
}

/// The rows of `ps`; one-off (`run`) containers only with `oneoffs` (`ps -a`, as compose).
pub fn entries_with(state: &ProjectState, oneoffs: bool) -> Vec<PsEntry> {
    state
        .containers
        .iter()
        .filter(|c| oneoffs || !c.oneoff)
        .map(|c| {
            let st = live_status(c);
            let status = match st {
                Status::Running => {
                    let h = c
                        .health
                        .as_deref()
                        .map(|h| format!(" ({h})"))
                        .unwrap_or_default();
                    format!("Up{h}")
                }
                Status::Exited => format!(
                    "Exited ({})",
                    c.exit_code
                        .unwrap_or(if c.status == Status::Running { 255 } else { 0 })
                ),
                Status::Paused => "Up (Paused)".into(),
                s => capitalize(s.as_str()),
            };
            PsEntry {
                name: c.name.clone(),
                service: c.service.clone(),
                project: state.name.clone(),
                image: c.image.clone(),
                command: command_of(c),
                created_at: c.started_at.clone().unwrap_or_default(),
                running_for: running_for(c.started_at.as_deref()),
                names: c.name.clone(),
                labels: String::new(),
                local_volumes: c.anon_volumes.len().to_string(),
                mounts: c.anon_volumes.join(","),
                networks: c
                    .endpoints
                    .iter()
                    .map(|e| e.network_name.clone())
                    .collect::<Vec<_>>()
                    .join(","),
                ports: ports_string(&c.ports),
                size: "0B".into(),
                state: st.as_str().to_string(),
                health: c.health.clone().unwrap_or_default(),
                exit_code: c.exit_code.unwrap_or(0),
                status,
                publishers: c
                    .ports
                    .iter()
                    .map(|p| Publisher {
                        url: p.host_ip.clone().unwrap_or_else(|| "0.0.0.0".into()),
                        target_port: p.target,
                        published_port: p.host_port,
                        protocol: p.protocol.clone(),
                    })
                    .collect(),
                id: c.name.clone(),
                generation: c.generation,
                supervisor: String::new(),
            }
        })
        .collect()
}

/// The container's command line as docker shows it (`"sleep 300"`, quoted), from its bundle.
fn command_of(c: &ContainerRecord) -> String {
    let args = std::fs::read(c.dir.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| {
            v.pointer("/process/args")
                .and_then(|a| a.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
        })
        .unwrap_or_default();
    serde_json::to_string(&args).unwrap_or_default()
}

/// Docker's `PORTS` cell: `0.0.0.0:8080->80/tcp, …`.
fn ports_string(ports: &[crate::state::PortRecord]) -> String {
    ports
        .iter()
        .map(|p| {
            format!(
                "{}:{}->{}/{}",
                p.host_ip.as_deref().unwrap_or("0.0.0.0"),
                p.host_port,
                p.target,
                p.protocol
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `RunningFor`: "5 seconds ago", as Docker's go-units HumanDuration words it.
fn running_for(started: Option<&str>) -> String {
    let now = std::time::SystemTime::now();
    let Some(t) = started.and_then(|s| crate::logs::parse_since(s, now)) else {
        return String::new();
    };
    let secs = now.duration_since(t).map(|d| d.as_secs()).unwrap_or(0);
    let d = match secs {
        0 => "Less than a second".to_string(),
        1 => "1 second".to_string(),
        s if s < 60 => format!("{s} seconds"),
        s if s < 120 => "About a minute".to_string(),
        s if s < 3600 => format!("{} minutes", s / 60),
        s if s < 7200 => "About an hour".to_string(),
        s if s < 48 * 3600 => format!("{} hours", s / 3600),
        s => format!("{} days", s / 86400),
    };
    format!("{d} ago")
}

/// `--filter KEY=VALUE`: `status` (as compose), `service`, `name`, and `source`: `compose` for
/// the containers of declared services, `orphan` for those of services no longer declared.
fn filter_ok(f: &str, e: &PsEntry, declared: &Option<Vec<String>>) -> anyhow::Result<bool> {
    let (k, v) = f
        .split_once('=')
        .ok_or_else(|| anyhow::anyhow!("invalid --filter {f:?}: want KEY=VALUE"))?;
    Ok(match k {
        "status" => e.state == v,
        "service" => e.service == v,
        "name" => e.name.contains(v),
        "source" => {
            let orphan = declared.as_ref().is_some_and(|d| !d.contains(&e.service));
            match v {
                "compose" => !orphan,
                "orphan" => orphan,
                _ => anyhow::bail!("invalid --filter {f:?}: source is compose or orphan"),
            }
        }
        _ => anyhow::bail!(
            "invalid --filter {f:?}: supported filters are status, service, name and source"
        ),
    })
}

/// The services the compose file declares, or `None` if it cannot be loaded.
fn declared_services(p: &ProjectOpts) -> Option<Vec<String>> {
    let mut opts = crate::compose::LoadOptions::from_cli(p);
    opts.resolve_env_files = false;
    crate::compose::load(&opts)
        .ok()
        .map(|pr| pr.services.keys().cloned().collect())
}

/// Docker's header names for the fields whose header is not their name in capitals.
pub fn header_name(field: &str) -> Option<&'static str> {
    Some(match field {
        "ID" => "CONTAINER ID",
        "RunningFor" => "CREATED",
        "CreatedAt" => "CREATED AT",
        "LocalVolumes" => "LOCAL VOLUMES",
        _ => return None,
    })
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

pub fn run(p: &ProjectOpts, args: &PsArgs) -> anyhow::Result<u8> {
    let paths = Paths::from_env();
    let name = project_name(p)?;
    let supervisor = crate::supervisor::respawn::check(&paths, &name, "ps");
    let state = ProjectState::load(&paths, &name)?.unwrap_or_else(|| ProjectState {
        name: name.clone(),
        ..Default::default()
    });
    let mut list = entries_with(&state, args.all);
    for e in list.iter_mut() {
        e.supervisor = supervisor.as_str().to_string();
    }
    if !args.all {
        list.retain(|e| e.state == "running" || e.state == "paused" || e.state == "restarting");
    }
    if !args.status.is_empty() {
        list.retain(|e| args.status.contains(&e.state));
    }
    if !args.services_filter.is_empty() {
        list.retain(|e| args.services_filter.contains(&e.service));
    }
    let needs_model = !args.orphans || args.filter.iter().any(|f| f.starts_with("source="));
    let declared = if needs_model {
        declared_services(p)
    } else {
        None
    };
    if !args.orphans {
        if let Some(d) = &declared {
            list.retain(|e| d.contains(&e.service));
        }
    }
    for f in &args.filter {
        let mut keep = Vec::new();
        for e in list {
            if filter_ok(f, &e, &declared)? {
                keep.push(e);
            }
        }
        list = keep;
    }
    let format = super::template::parse(&args.format)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.services {
        let mut seen = Vec::new();
        for e in &list {
            if !seen.contains(&e.service) {
                seen.push(e.service.clone());
                writeln!(out, "{}", e.service)?;
            }
        }
        return Ok(0);
    }
    if args.quiet {
        for e in &list {
            writeln!(out, "{}", e.id)?;
        }
        return Ok(0);
    }
    let rows: Vec<serde_json::Value> = list
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()?;
    drop(out);
    if super::template::print(&format, &rows, &header_name)? {
        return Ok(0);
    }
    let mut out = stdout.lock();
    {
        {
            let rows: Vec<[String; 5]> = list
                .iter()
                .map(|e| {
                    let ports = e
                        .publishers
                        .iter()
                        .map(|p| {
                            format!(
                                "{}:{}->{}/{}",
                                p.url, p.published_port, p.target_port, p.protocol
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", ");
                    [
                        e.name.clone(),
                        e.image.clone(),
                        e.service.clone(),
                        e.status.clone(),
                        ports,
                    ]
                })
                .collect();
            let header = ["NAME", "IMAGE", "SERVICE", "STATUS", "PORTS"];
            // (the config generation of each replica is in --format json: "Generation")
            let mut w = header.map(|h| h.len());
            for r in &rows {
                for (i, c) in r.iter().enumerate() {
                    w[i] = w[i].max(c.len());
                }
            }
            let line = |cells: [&str; 5]| {
                cells
                    .iter()
                    .enumerate()
                    .map(|(i, c)| format!("{c:<w$}", w = w[i]))
                    .collect::<Vec<_>>()
                    .join("   ")
                    .trim_end()
                    .to_string()
            };
            writeln!(out, "{}", line(header))?;
            for r in &rows {
                writeln!(out, "{}", line([&r[0], &r[1], &r[2], &r[3], &r[4]]))?;
            }
        }
    }
    Ok(0)
}
