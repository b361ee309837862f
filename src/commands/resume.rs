//! Surviving a reboot. `berth resume` brings back, with `up -d` semantics, every project whose
//! record is still under the data root (a `down` removes it) and, in it, only the services
//! whose restart policy says so, as Docker does when its daemon starts: `always` (even when the
//! user had stopped it) and `unless-stopped` unless the user had stopped it. `berth systemd
//! install` writes a unit that runs `berth resume` once the network is online.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::cli::{ResumeArgs, SystemdArgs, SystemdCmd};
use crate::engine::restart::Condition;
use crate::paths::Paths;
use crate::state::{ContainerRecord, ProjectSource, ProjectState};
use crate::supervisor::client::Client;
use crate::supervisor::proto::UpOpts;

/// Whether a container comes back after a reboot, by its service's restart condition.
pub fn comes_back(condition: &Condition, c: &ContainerRecord) -> bool {
    if c.oneoff {
        return false;
    }
    match condition {
        Condition::Always => true,
        Condition::UnlessStopped => !c.stopped_by_user,
        Condition::No | Condition::OnFailure => false,
    }
}

pub fn resume(args: &ResumeArgs, dry_run: bool) -> anyhow::Result<u8> {
    let paths = Paths::from_env();
    let mut failed = 0;
    for st in ProjectState::list(&paths)? {
        if !args.projects.is_empty() && !args.projects.contains(&st.name) {
            continue;
        }
        match resume_project(&paths, &st, dry_run) {
            Ok(()) => {}
            Err(e) => {
                failed += 1;
                eprintln!("project {}: {}", st.name, crate::commands::render_error(&e));
            }
        }
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

fn resume_project(paths: &Paths, st: &ProjectState, dry_run: bool) -> anyhow::Result<()> {
    if Client::connect(paths, &st.name).is_some() {
        eprintln!(
            "project {}: its supervisor runs, nothing to resume",
            st.name
        );
        return Ok(());
    }
    let Some(source) = &st.source else {
        bail!("the record has no source to load the project from");
    };
    let plan = crate::engine::plan::load_plan(source, &[])
        .context("loading the project as it was brought up")?;
    let mut services: Vec<String> = Vec::new();
    for c in &st.containers {
        let Some(sp) = plan.service(&c.service) else {
            continue;
        };
        if comes_back(&sp.restart.condition, c) && !services.contains(&c.service) {
            services.push(c.service.clone());
        }
    }
    if services.is_empty() {
        eprintln!(
            "project {}: no service to resume (none has restart: always or unless-stopped)",
            st.name
        );
        return Ok(());
    }
    eprintln!("project {}: resuming {}", st.name, services.join(", "));
    if dry_run {
        return Ok(());
    }
    crate::commands::up::ensure_images(paths, &plan, Some("never"))?;
    up_again(paths, &st.name, source, services)
}

/// Bring `services` of a recorded project up again through its supervisor (started if need
/// be), each on its own: as Docker's daemon, each container comes back on its own policy and
/// dependencies without one stay as they are. An `up` without recreation: the networks and
/// the firewall are made again, containers that still run (only the supervisor had died) are
/// adopted, and those whose kernel side went with a reboot start again as the same containers,
/// their writable layer kept (the supervisor makes their mounts, netns and veths again from
/// the bundle under the data root, see `Engine::restore_kernel_side`).
fn up_again(
    paths: &Paths,
    project: &str,
    source: &ProjectSource,
    services: Vec<String>,
) -> anyhow::Result<()> {
    let opts = UpOpts {
        services,
        no_deps: true,
        ..Default::default()
    };
    crate::commands::up::send_up(paths, project, source, opts)?;
    Ok(())
}

/// `berth start` after a reboot: containers that stayed stopped across it have lost their
/// kernel side with /run, and the project its networks and firewall rules, which `start`
/// alone does not make; they are brought up again first (as `resume` does, the same
/// containers), and the start that follows finds them running.
pub fn revive_after_reboot(p: &crate::cli::ProjectOpts, services: &[String]) -> anyhow::Result<()> {
    let paths = Paths::from_env();
    let name = crate::commands::project_name(p)?;
    let Some(st) = ProjectState::load(&paths, &name)? else {
        return Ok(());
    };
    let Some(source) = &st.source else {
        return Ok(());
    };
    let mut stale: Vec<String> = Vec::new();
    for c in st.containers.iter().filter(|c| !c.oneoff) {
        if !services.is_empty() && !services.contains(&c.service) {
            continue;
        }
        let ns_gone = c.netns.as_ref().is_some_and(|ns| !ns.exists());
        let running = crate::commands::ps::live_status(c) == crate::state::Status::Running;
        if ns_gone && !running && !stale.contains(&c.service) {
            stale.push(c.service.clone());
        }
    }
    if stale.is_empty() {
        return Ok(());
    }
    up_again(&paths, &name, source, stale)
}

pub const UNIT_NAME: &str = "berth-resume.service";

/// The unit `berth systemd install` writes.
pub fn unit_text(exe: &Path, berth_root: Option<&str>) -> String {
    let env = match berth_root {
        Some(r) => format!("Environment=BERTH_ROOT={r}\n"),
        None => String::new(),
    };
    format!(
        "# Written by `berth systemd install`; remove with `berth systemd uninstall`.\n\
[Unit]\n\
Description=berth: bring back the Compose projects that were up (restart: always / unless-stopped)\n\
Wants=network-online.target\n\
After=network-online.target nftables.service firewalld.service\n\
\n\
[Service]\n\
Type=oneshot\n\
RemainAfterExit=yes\n\
{env}ExecStart={} resume\n\
TimeoutStartSec=infinity\n\
\n\
[Install]\n\
WantedBy=multi-user.target\n",
        exe.display()
    )
}

fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

fn systemctl(args: &[&str]) -> anyhow::Result<()> {
    let st = std::process::Command::new("systemctl")
        .args(args)
        .status()
        .with_context(|| format!("running systemctl {}", args.join(" ")))?;
    if !st.success() {
        bail!("systemctl {} failed ({st})", args.join(" "));
    }
    Ok(())
}

pub fn systemd(args: &SystemdArgs) -> anyhow::Result<u8> {
    let unit_dir = args
        .unit_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/etc/systemd/system"));
    let unit = unit_dir.join(UNIT_NAME);
    let use_systemctl = args.unit_dir.is_none() && systemd_running();
    match args.command {
        SystemdCmd::Install => {
            let exe = std::env::current_exe().context("finding the berth binary")?;
            let root = std::env::var("BERTH_ROOT").ok().filter(|r| !r.is_empty());
            let text = unit_text(&exe, root.as_deref());
            if args.print {
                print!("{text}");
                return Ok(0);
            }
            std::fs::create_dir_all(&unit_dir)
                .with_context(|| format!("creating {}", unit_dir.display()))?;
            crate::state::write_atomic(&unit, text.as_bytes())?;
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&unit, std::fs::Permissions::from_mode(0o644))?;
            }
            eprintln!("wrote {}", unit.display());
            if use_systemctl {
                systemctl(&["daemon-reload"])?;
                systemctl(&["enable", UNIT_NAME])?;
                eprintln!("enabled {UNIT_NAME}: projects come back at boot");
            } else {
                eprintln!(
                    "systemd is not running here (or --unit-dir was given): enable it with `systemctl enable {UNIT_NAME}`, or have your init run `{} resume` after the network is up",
                    exe.display()
                );
            }
            Ok(0)
        }
        SystemdCmd::Uninstall => {
            if args.print {
                println!("{}", unit.display());
                return Ok(0);
            }
            if use_systemctl && unit.exists() {
                systemctl(&["disable", UNIT_NAME])?;
            }
            match std::fs::remove_file(&unit) {
                Ok(()) => eprintln!("removed {}", unit.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    eprintln!("{} is not installed", unit.display())
                }
                Err(e) => return Err(e).with_context(|| format!("removing {}", unit.display())),
            }
            if use_systemctl {
                systemctl(&["daemon-reload"])?;
            }
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(stopped_by_user: bool, oneoff: bool) -> ContainerRecord {
        ContainerRecord {
            stopped_by_user,
            oneoff,
            ..ContainerRecord::sample("p-s-1", "s")
        }
    }

    #[test]
    fn docker_rules_after_a_daemon_restart() {
        let (run, stopped, oneoff) = (rec(false, false), rec(true, false), rec(false, true));
        assert!(comes_back(&Condition::Always, &run));
        assert!(comes_back(&Condition::Always, &stopped));
        assert!(comes_back(&Condition::UnlessStopped, &run));
        assert!(!comes_back(&Condition::UnlessStopped, &stopped));
        assert!(!comes_back(&Condition::No, &run));
        assert!(!comes_back(&Condition::OnFailure, &run));
        assert!(!comes_back(&Condition::Always, &oneoff));
    }

    #[test]
    fn the_unit_runs_resume_after_the_network() {
        let t = unit_text(Path::new("/usr/local/bin/berth"), None);
        assert_eq!(
            t,
            "# Written by `berth systemd install`; remove with `berth systemd uninstall`.\n\
[Unit]\n\
Description=berth: bring back the Compose projects that were up (restart: always / unless-stopped)\n\
Wants=network-online.target\n\
After=network-online.target nftables.service firewalld.service\n\
\n\
[Service]\n\
Type=oneshot\n\
RemainAfterExit=yes\n\
ExecStart=/usr/local/bin/berth resume\n\
TimeoutStartSec=infinity\n\
\n\
[Install]\n\
WantedBy=multi-user.target\n"
        );
        let t = unit_text(Path::new("/b"), Some("/srv/berth"));
        assert!(t.contains("\nEnvironment=BERTH_ROOT=/srv/berth\nExecStart=/b resume\n"));
    }
}
