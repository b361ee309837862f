//! `--dry-run`: every command that would change something prints what it would do, in compose's
//! `DRY-RUN MODE -` lines, and changes nothing: no supervisor is started or spoken to, no image is
//! pulled, nothing under the state root is created or written, no link or nft rule is made. Only
//! the compose file and the project record are read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::cli::{Command, ImageSub, ProjectOpts};
use crate::engine::plan::load_plan;
use crate::paths::Paths;
use crate::state::{ContainerRecord, ProjectState, Status};

static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Whether this process runs in dry-run mode (JSON progress lines carry `"dry-run": true`).
pub fn active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

/// Commands that change containers, images, volumes, networks or files.
pub fn is_mutating(c: &Command) -> bool {
    matches!(
        c,
        Command::Up(_)
            | Command::Down(_)
            | Command::Stop(_)
            | Command::Start(_)
            | Command::Restart(_)
            | Command::Kill(_)
            | Command::Pause(_)
            | Command::Unpause(_)
            | Command::Scale(_)
            | Command::Exec(_)
            | Command::Cp(_)
            | Command::Pull(_)
            | Command::Load(_)
            | Command::Rmi(_)
            | Command::Image(_)
            | Command::Run(_)
            | Command::Rollback(_)
            | Command::Rm(_)
            | Command::Push(_)
            | Command::Publish(_)
            | Command::Export(_)
            | Command::Commit(_)
            | Command::Create(_)
    ) || matches!(c, Command::Wait(w) if w.down_project)
}

struct Out {
    lines: Vec<String>,
}

impl Out {
    fn res(&mut self, kind: &str, name: &str, state: &str) {
        self.lines
            .push(format!("DRY-RUN MODE -  {kind} {name}  {state}"));
    }
    fn text(&mut self, s: String) {
        self.lines.push(format!("DRY-RUN MODE -  {s}"));
    }
}

fn state_of(p: &ProjectOpts) -> anyhow::Result<ProjectState> {
    let paths = Paths::from_env();
    let name = super::project_name(p)?;
    Ok(ProjectState::load(&paths, &name)?.unwrap_or(ProjectState {
        name,
        ..Default::default()
    }))
}

fn of<'a>(st: &'a ProjectState, services: &[String]) -> Vec<&'a ContainerRecord> {
    st.containers
        .iter()
        .filter(|c| !c.oneoff && (services.is_empty() || services.contains(&c.service)))
        .collect()
}

fn running(c: &ContainerRecord) -> bool {
    matches!(
        super::ps::live_status(c),
        Status::Running | Status::Paused | Status::Restarting
    )
}

/// The lines `cmd` would print, computed from the compose file and the project record only.
pub fn plan_lines(p: &ProjectOpts, cmd: &Command) -> anyhow::Result<Vec<String>> {
    let mut o = Out { lines: Vec::new() };
    match cmd {
        Command::Create(a) => return plan_lines(p, &Command::Up(super::attach::as_up(a))),
        Command::Up(a) => {
            let source = super::up::source_from(p)?;
            let plan = load_plan(&source, &a.services)?;
            let st = {
                let paths = Paths::from_env();
                ProjectState::load(&paths, &plan.name)?.unwrap_or_default()
            };
            let paths = Paths::from_env();
            // Read-only peek at the image records: the store is not opened (opening creates
            // its directories). Tag → image id.
            let ids: HashMap<String, String> = std::fs::read(paths.images().join("images.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v.get("images").and_then(|i| i.as_array()).cloned())
                .unwrap_or_default()
                .iter()
                .flat_map(|r| {
                    let id = r["id"].as_str().unwrap_or_default().to_string();
                    r["repo_tags"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(move |t| Some((t.as_str()?.to_string(), id.clone())))
                })
                .collect();
            let image_id = |image: &str| {
                let full = berth_runtime::image::Reference::parse(image)
                    .ok()
                    .and_then(|r| r.tagged())
                    .unwrap_or_else(|| image.to_string());
                ids.get(&full).cloned()
            };
            for s in &plan.services {
                let have = image_id(&s.image).is_some();
                if !have || a.pull.as_deref() == Some("always") {
                    o.res("Image", &s.image, "Pulling");
                }
            }
            for n in plan.networks.iter().filter(|n| !n.external) {
                if !st.networks.iter().any(|r| r.name == n.name) {
                    o.res("Network", &n.name, "Creating");
                    o.res("Network", &n.name, "Created");
                }
            }
            for v in plan.volumes.iter().filter(|v| !v.external) {
                if !st.volumes.iter().any(|r| r.name == v.name) {
                    o.res("Volume", &v.name, "Creating");
                    o.res("Volume", &v.name, "Created");
                }
            }
            for s in &plan.services {
                // As the supervisor decides: a replica made from another image than the one
                // the service's image name gives now is recreated (compose: a changed digest).
                let now = image_id(&s.image);
                let same_image = |c: &crate::state::ContainerRecord| {
                    now.as_deref()
                        .is_none_or(|id| c.image_id.is_empty() || c.image_id == id)
                };
                let scale = a
                    .scale
                    .iter()
                    .filter_map(|x| x.split_once('='))
                    .find(|(k, _)| *k == s.name)
                    .and_then(|(_, n)| n.parse().ok())
                    .unwrap_or(s.replicas);
                for i in 1..=scale {
                    let name = crate::engine::container::container_name(&plan.name, s, i as u32);
                    match st.container(&name) {
                        Some(c)
                            if c.config_hash == s.config_hash
                                && same_image(c)
                                && !a.force_recreate =>
                        {
                            if running(c) {
                                o.res("Container", &name, "Running");
                            } else if !a.no_start {
                                o.res("Container", &name, "Starting");
                                o.res("Container", &name, "Started");
                            }
                        }
                        Some(_) if a.no_recreate => o.res("Container", &name, "Running"),
                        Some(_) => {
                            o.res("Container", &name, "Recreate");
                            o.res("Container", &name, "Recreated");
                        }
                        None => {
                            o.res("Container", &name, "Creating");
                            o.res("Container", &name, "Created");
                            if !a.no_start {
                                o.res("Container", &name, "Starting");
                                o.res("Container", &name, "Started");
                            }
                        }
                    }
                }
            }
        }
        Command::Down(a) => {
            let st = state_of(p)?;
            for c in &st.containers {
                if running(c) {
                    o.res("Container", &c.name, "Stopping");
                    o.res("Container", &c.name, "Stopped");
                }
                o.res("Container", &c.name, "Removing");
                o.res("Container", &c.name, "Removed");
            }
            if a.volumes {
                for v in st.volumes.iter().filter(|v| !v.external) {
                    o.res("Volume", &v.name, "Removing");
                    o.res("Volume", &v.name, "Removed");
                }
            }
            for n in st.networks.iter().filter(|n| !n.external) {
                o.res("Network", &n.name, "Removing");
                o.res("Network", &n.name, "Removed");
            }
        }
        Command::Stop(a) => {
            let st = state_of(p)?;
            for c in of(&st, &a.services).into_iter().filter(|c| running(c)) {
                o.res("Container", &c.name, "Stopping");
                o.res("Container", &c.name, "Stopped");
            }
        }
        Command::Restart(a) => {
            let st = state_of(p)?;
            for c in of(&st, &a.services) {
                o.res("Container", &c.name, "Restarting");
                o.res("Container", &c.name, "Started");
            }
        }
        Command::Start(a) => {
            let st = state_of(p)?;
            for c in of(&st, &a.services).into_iter().filter(|c| !running(c)) {
                o.res("Container", &c.name, "Starting");
                o.res("Container", &c.name, "Started");
            }
        }
        Command::Kill(a) => {
            let st = state_of(p)?;
            for c in of(&st, &a.services).into_iter().filter(|c| running(c)) {
                o.res("Container", &c.name, "Killing");
                o.res("Container", &c.name, "Killed");
            }
        }
        Command::Pause(a) | Command::Unpause(a) => {
            let (ing, ed) = if matches!(cmd, Command::Pause(_)) {
                ("Pausing", "Paused")
            } else {
                ("Unpausing", "Unpaused")
            };
            let st = state_of(p)?;
            for c in of(&st, &a.services) {
                o.res("Container", &c.name, ing);
                o.res("Container", &c.name, ed);
            }
        }
        Command::Rm(a) => {
            let st = state_of(p)?;
            let list = super::rm::targets(&st, a);
            if list.is_empty() {
                o.text("No stopped containers".into());
            }
            for c in list {
                if running(&c) {
                    o.res("Container", &c.name, "Stopping");
                    o.res("Container", &c.name, "Stopped");
                }
                o.res("Container", &c.name, "Removing");
                o.res("Container", &c.name, "Removed");
            }
        }
        Command::Scale(a) => {
            let st = state_of(p)?;
            for s in &a.scale {
                let (svc, n) = s.split_once('=').unwrap_or((s, "1"));
                let n: u32 = n.parse().unwrap_or(1);
                let have: Vec<&ContainerRecord> = of(&st, &[svc.to_string()]);
                for c in have.iter().filter(|c| c.number > n) {
                    o.res("Container", &c.name, "Removing");
                    o.res("Container", &c.name, "Removed");
                }
                for i in 1..=n {
                    if !have.iter().any(|c| c.number == i) {
                        let name = format!("{}-{svc}-{i}", st.name);
                        o.res("Container", &name, "Creating");
                        o.res("Container", &name, "Started");
                    }
                }
            }
        }
        Command::Run(a) => {
            let st = state_of(p)?;
            let name = a
                .name
                .clone()
                .unwrap_or_else(|| format!("{}-{}-run-<id>", st.name, a.service));
            o.res("Container", &name, "Creating");
            o.res("Container", &name, "Created");
        }
        Command::Exec(a) => o.text(format!(
            "Exec in service {} (#{}): {}",
            a.service,
            a.index,
            a.command.join(" ")
        )),
        Command::Cp(a) => o.text(format!("Copy {} to {}", a.src, a.dest)),
        Command::Pull(a) => {
            let opts = crate::compose::LoadOptions::from_cli(p);
            let project = crate::compose::load(&opts).map_err(|e| anyhow::anyhow!("{e}"))?;
            for (n, s) in &project.services {
                if a.services.is_empty() || a.services.contains(n) {
                    if let Some(i) = &s.image {
                        o.res("Image", i, "Pulling");
                        o.res("Image", i, "Pulled");
                    }
                }
            }
        }
        Command::Push(a) => {
            let opts = crate::compose::LoadOptions::from_cli(p);
            let project = crate::compose::load(&opts).map_err(|e| anyhow::anyhow!("{e}"))?;
            for (n, s) in &project.services {
                if a.services.is_empty() || a.services.contains(n) {
                    if let Some(i) = &s.image {
                        o.res("Image", i, "Pushing");
                        o.res("Image", i, "Pushed");
                    }
                }
            }
        }
        Command::Publish(a) => o.text(format!(
            "Publish the compose application to {}",
            a.repository
        )),
        Command::Load(a) => o.text(format!("Load images from {}", a.input.display())),
        Command::Rmi(a) => {
            for i in &a.images {
                o.res("Image", i, "Removed");
            }
        }
        Command::Image(c) => match c.command {
            ImageSub::Prune => o.text("Remove unreferenced blobs and layers".into()),
            ImageSub::Ls(_) => {}
        },
        Command::Rollback(a) => o.text(format!("Roll back service {}", a.service)),
        Command::Export(a) if a.target == "k8s" || a.target == "swarm" => o.text(format!(
            "Write the {} export to {}",
            a.target,
            a.output
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "standard output".into())
        )),
        Command::Export(a) => o.text(format!(
            "Export the filesystem of {} (#{}) to {}",
            a.target,
            a.index,
            a.output
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "standard output".into())
        )),
        Command::Commit(a) => o.text(format!(
            "Commit service {} (#{}) as {}",
            a.service,
            a.index,
            a.repository.as_deref().unwrap_or("<untagged image>")
        )),
        Command::Wait(a) => {
            o.text(format!("Wait for {}", a.services.join(", ")));
            let st = state_of(p)?;
            for c in &st.containers {
                o.res("Container", &c.name, "Removed");
            }
        }
        _ => {}
    }
    Ok(o.lines)
}

pub fn run(p: &ProjectOpts, cmd: &Command) -> anyhow::Result<u8> {
    ACTIVE.store(true, Ordering::Relaxed);
    for l in plan_lines(p, cmd)? {
        if crate::ui::progress_json() {
            eprintln!("{}", crate::ui::json_event("", "", &l));
        } else if !crate::ui::progress_quiet() {
            eprintln!("{l}");
        }
    }
    Ok(0)
}
