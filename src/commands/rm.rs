//! `berth rm` (remove stopped service containers) and `berth volumes` (the project's volumes).

use std::io::{BufRead, IsTerminal, Write};

use anyhow::bail;

use crate::cli::{ProjectOpts, RmArgs, VolumesArgs};
use crate::paths::Paths;
use crate::state::{ContainerRecord, ProjectState, Status};
use crate::supervisor::client::Client;
use crate::supervisor::proto::Request;

use super::project_name;
use super::up::call;

/// The containers `rm` would remove: stopped ones, or all with `--stop`; never one-offs of a
/// running `run` unless stopped.
pub fn targets(st: &ProjectState, args: &RmArgs) -> Vec<ContainerRecord> {
    st.containers
        .iter()
        .filter(|c| args.services.is_empty() || args.services.contains(&c.service))
        .filter(|c| {
            args.stop
                || !matches!(
                    super::ps::live_status(c),
                    Status::Running | Status::Paused | Status::Restarting
                )
        })
        .cloned()
        .collect()
}

pub fn run(p: &ProjectOpts, args: &RmArgs) -> anyhow::Result<u8> {
    let paths = Paths::from_env();
    let name = project_name(p)?;
    let Some(st) = ProjectState::load(&paths, &name)? else {
        eprintln!("No stopped containers");
        return Ok(0);
    };
    if let Some(svc) = args
        .services
        .iter()
        .find(|s| !st.containers.iter().any(|c| &c.service == *s))
    {
        // compose: a service without containers is not an error, there is just nothing to do.
        tracing::debug!("no containers for service {svc}");
    }
    let list = targets(&st, args);
    if list.is_empty() {
        eprintln!("No stopped containers");
        return Ok(0);
    }
    if !args.force && std::io::stdin().is_terminal() {
        let names: Vec<&str> = list.iter().map(|c| c.name.as_str()).collect();
        eprint!(
            "Going to remove {}\n? Are you sure? (y/N) ",
            names.join(", ")
        );
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            return Ok(0);
        }
    }
    // Started if needed (the record can outlive a supervisor); one request per container.
    let mut client = Some(Client::connect_or_start(&paths, &name)?);
    for c in &list {
        // The supervisor's Rm stops a running container first (only reached with --stop).
        let cl = match client.take().or_else(|| Client::connect(&paths, &name)) {
            Some(c) => c,
            None => bail!("the supervisor of {name} went away"),
        };
        call(
            cl,
            &Request::Rm {
                name: c.name.clone(),
                keep_volumes: !args.volumes,
            },
            "Removing",
            false,
        )?;
    }
    Ok(0)
}

/// One row of `volumes`, in the docker CLI's volume fields.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct VolumeRow {
    pub availability: String,
    pub driver: String,
    pub group: String,
    pub labels: String,
    pub links: String,
    pub mountpoint: String,
    pub name: String,
    pub scope: String,
    pub size: String,
    pub status: String,
}

pub fn volume_rows(
    paths: &Paths,
    st: &ProjectState,
    services: &[String],
    used: &dyn Fn(&str, &str) -> bool,
) -> Vec<VolumeRow> {
    st.volumes
        .iter()
        .filter(|v| services.is_empty() || services.iter().any(|s| used(s, &v.key)))
        .map(|v| VolumeRow {
            availability: "N/A".into(),
            driver: "local".into(),
            group: "N/A".into(),
            labels: format!(
                "com.docker.compose.project={},com.docker.compose.volume={}",
                st.name, v.key
            ),
            links: "N/A".into(),
            mountpoint: crate::engine::volumes::volume_data(paths, &v.name)
                .display()
                .to_string(),
            name: v.name.clone(),
            scope: "local".into(),
            size: "N/A".into(),
            status: "N/A".into(),
        })
        .collect()
}

pub fn volumes(p: &ProjectOpts, args: &VolumesArgs) -> anyhow::Result<u8> {
    let paths = Paths::from_env();
    let name = project_name(p)?;
    let st = ProjectState::load(&paths, &name)?.unwrap_or_default();
    let model = if args.services.is_empty() {
        None
    } else {
        let mut o = crate::compose::LoadOptions::from_cli(p);
        o.resolve_env_files = false;
        let project = crate::compose::load(&o).map_err(|e| anyhow::anyhow!("{e}"))?;
        for s in &args.services {
            if !project.services.contains_key(s) {
                bail!("no such service: {s}");
            }
        }
        Some(project)
    };
    let used = |svc: &str, key: &str| {
        model
            .as_ref()
            .and_then(|m| m.services.get(svc))
            .is_some_and(|s| {
                s.volumes
                    .iter()
                    .any(|v| v.kind == "volume" && v.source.as_deref() == Some(key))
            })
    };
    let rows = volume_rows(&paths, &st, &args.services, &used);
    if args.quiet {
        for r in &rows {
            println!("{}", r.name);
        }
        return Ok(0);
    }
    let format = super::template::parse(&args.format)?;
    let values: Vec<serde_json::Value> = rows
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()?;
    let names = |f: &str| (f == "Name").then_some("VOLUME NAME");
    if !super::template::print(&format, &values, &names)? {
        let mut lines = vec!["DRIVER\tVOLUME NAME".to_string()];
        lines.extend(rows.iter().map(|r| format!("{}\t{}", r.driver, r.name)));
        print!("{}", super::template::tabulate(&lines));
    }
    Ok(0)
}
