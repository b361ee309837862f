//! `down`, `stop`, `start`, `restart`, `kill`, `pause`, `unpause`: requests to the project's
//! supervisor. `down` also works with no supervisor (after a crash): it tears the project down
//! from its record.

use std::time::{Duration, Instant};

use anyhow::bail;

use crate::cli::{DownArgs, KillArgs, ProjectOpts, RestartArgs, ServicesArg, StopArgs};
use crate::engine::proc;
use crate::engine::Engine;
use crate::paths::Paths;
use crate::state::{pid_matches, ProjectLock, ProjectState};
use crate::supervisor::client::Client;
use crate::supervisor::proto::Request;
use crate::ui::Progress;

use super::project_name;
use super::up::{call, is_tty};

pub fn down(p: &ProjectOpts, args: &DownArgs) -> anyhow::Result<u8> {
    let paths = Paths::from_env();
    let name = project_name(p)?;
    if let Some(client) = Client::connect(&paths, &name) {
        let pid: Option<i32> =
            std::fs::read_to_string(paths.project_run(&name).join("supervisor.pid"))
                .ok()
                .and_then(|s| s.trim().parse().ok());
        // Its keeper (its parent, see supervisor/keeper.rs) goes with it.
        let keeper = pid.and_then(crate::supervisor::keeper::keeper_of);
        let req = Request::Down {
            volumes: args.volumes,
            remove_orphans: args.remove_orphans,
            timeout: args.timeout,
        };
        call(client, &req, "Running", false)?;
        // The supervisor exits after `down`; wait for it to be gone.
        let deadline = Instant::now() + Duration::from_secs(5);
        let alive = |pid: i32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| {
                    !s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(false)
        };
        while (paths.supervisor_socket(&name).exists()
            || pid.is_some_and(alive)
            || keeper.is_some_and(alive))
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        return Ok(0);
    }
    let Some(state) = ProjectState::load(&paths, &name)? else {
        // Nothing recorded: nothing to do (compose prints nothing either).
        return Ok(0);
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(offline_down(&paths, state, args))?;
    Ok(0)
}

/// Tear down a project whose supervisor is gone: signal what still runs (checking the pid's
/// start time so a reused pid is never hit), then remove everything recorded.
pub async fn offline_down(
    paths: &Paths,
    state: ProjectState,
    args: &DownArgs,
) -> anyhow::Result<()> {
    let _lock = ProjectLock::acquire(paths, &state.name)?;
    let engine = Engine::open(paths)?;
    let mut ui = Progress::new("Running", is_tty());
    let grace = Duration::from_secs(args.timeout.unwrap_or(10));
    let mut fds = Vec::new();
    for c in &state.containers {
        if let Some(pid) = c.pid {
            if pid_matches(pid, c.pid_start) {
                if let Ok(fd) = proc::pidfd_open(pid) {
                    ui.update("container", &c.name, "Stopping");
                    let _ = proc::pidfd_send_signal(&fd, libc::SIGTERM);
                    fds.push((c.name.clone(), pid, c.pid_start, fd));
                }
            }
        }
    }
    let deadline = Instant::now() + grace;
    for (name, pid, start, fd) in &fds {
        while pid_matches(*pid, *start) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if pid_matches(*pid, *start) {
            let _ = proc::pidfd_send_signal(fd, libc::SIGKILL);
        }
        ui.update("container", name, "Stopped");
    }
    for c in &state.containers {
        ui.update("container", &c.name, "Removing");
        for e in engine.remove_container_with(c, args.volumes).await {
            ui.message(&format!("{}: {e}", c.name));
        }
        ui.update("container", &c.name, "Removed");
    }
    let _ = berth_network::firewall::remove(&state.name);
    for n in &state.networks {
        ui.update("network", &n.name, "Removing");
        for e in engine.remove_network(n).await {
            ui.message(&e);
        }
        ui.update("network", &n.name, "Removed");
    }
    if args.volumes {
        for v in state.volumes.iter().filter(|v| !v.external) {
            crate::engine::volumes::remove(paths, &v.name)?;
            ui.update("volume", &v.name, "Removed");
        }
    }
    ui.finish();
    crate::supervisor::remove_project_files(paths, &state.name, args.volumes)?;
    Ok(())
}

fn supervisor(p: &ProjectOpts) -> anyhow::Result<(Paths, String, Client)> {
    let paths = Paths::from_env();
    let name = project_name(p)?;
    if ProjectState::load(&paths, &name)?.is_none() {
        bail!("no such project: {name}");
    }
    let client = Client::connect_or_start(&paths, &name)?;
    Ok((paths, name, client))
}

pub fn stop(p: &ProjectOpts, args: &StopArgs) -> anyhow::Result<u8> {
    let (_, _, c) = supervisor(p)?;
    call(
        c,
        &Request::Stop {
            services: args.services.clone(),
            timeout: args.timeout,
        },
        "Stopping",
        false,
    )?;
    Ok(0)
}

pub fn start(p: &ProjectOpts, args: &ServicesArg) -> anyhow::Result<u8> {
    crate::commands::resume::revive_after_reboot(p, &args.services)?;
    let (_, _, c) = supervisor(p)?;
    call(
        c,
        &Request::Start {
            services: args.services.clone(),
        },
        "Running",
        false,
    )?;
    Ok(0)
}

/// `services` plus, transitively, the services that depend on them (compose restarts those too
/// unless `--no-deps`), in file order.
pub fn with_dependents(project: &crate::compose::Project, services: &[String]) -> Vec<String> {
    let mut want: Vec<String> = services.to_vec();
    let mut changed = true;
    while changed {
        changed = false;
        for (n, s) in &project.services {
            if !want.contains(n) && s.depends_on.keys().any(|d| want.contains(d)) {
                want.push(n.clone());
                changed = true;
            }
        }
    }
    project
        .services
        .keys()
        .filter(|n| want.contains(n))
        .cloned()
        .collect()
}

pub fn restart(p: &ProjectOpts, args: &RestartArgs) -> anyhow::Result<u8> {
    let mut services = args.services.clone();
    if !args.no_deps && !services.is_empty() {
        let mut o = crate::compose::LoadOptions::from_cli(p);
        o.resolve_env_files = false;
        if let Ok(project) = crate::compose::load(&o) {
            services = with_dependents(&project, &services);
        }
    }
    let (_, _, c) = supervisor(p)?;
    call(
        c,
        &Request::Restart {
            services,
            timeout: args.timeout,
        },
        "Restarting",
        false,
    )?;
    Ok(0)
}

pub fn kill(p: &ProjectOpts, args: &KillArgs) -> anyhow::Result<u8> {
    let (paths, name, c) = supervisor(p)?;
    call(
        c,
        &Request::Kill {
            services: args.services.clone(),
            signal: args.signal.clone(),
        },
        "Killing",
        false,
    )?;
    if args.remove_orphans {
        remove_orphans(p, &paths, &name)?;
    }
    Ok(0)
}

/// Remove the containers of services the compose file no longer declares.
pub fn remove_orphans(p: &ProjectOpts, paths: &Paths, name: &str) -> anyhow::Result<()> {
    let mut o = crate::compose::LoadOptions::from_cli(p);
    o.resolve_env_files = false;
    let project = crate::compose::load(&o).map_err(|e| anyhow::anyhow!("{e}"))?;
    let Some(st) = ProjectState::load(paths, name)? else {
        return Ok(());
    };
    for c in st
        .containers
        .iter()
        .filter(|c| !c.oneoff && !project.services.contains_key(&c.service))
    {
        if let Some(client) = Client::connect(paths, name) {
            call(
                client,
                &Request::Rm {
                    name: c.name.clone(),
                    keep_volumes: true,
                },
                "Removing",
                false,
            )?;
        }
    }
    Ok(())
}

pub fn pause(p: &ProjectOpts, args: &ServicesArg, resume: bool) -> anyhow::Result<u8> {
    let (_, _, c) = supervisor(p)?;
    let req = if resume {
        Request::Unpause {
            services: args.services.clone(),
        }
    } else {
        Request::Pause {
            services: args.services.clone(),
        }
    };
    call(c, &req, if resume { "Unpausing" } else { "Pausing" }, false)?;
    Ok(0)
}
