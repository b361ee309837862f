//! `berth ps`: compose's columns and JSON fields, read from the project record. A container
//! whose recorded process is gone (supervisor killed, host rebooted) is shown as exited.

use std::io::Write;

use serde::Serialize;

use crate::cli::{ProjectOpts, PsArgs, TableFormat};
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

pub fn entries(state: &ProjectState) -> Vec<PsEntry> {
    state
        .containers
        .iter()
        .filter(|c| !c.oneoff)
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
                command: String::new(),
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
    let mut list = entries(&state);
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
    match args.format {
        TableFormat::Json => {
            writeln!(out, "{}", serde_json::to_string(&list)?)?;
        }
        TableFormat::Table => {
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
