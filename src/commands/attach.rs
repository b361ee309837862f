//! `berth attach` (and the terminal of `berth run -it`): the caller's terminal on a running
//! `tty: true` container's pty, through the supervisor that holds its master (see
//! `supervisor/attach.rs`), relayed by `tty.rs`. And `berth create`: `up --no-start`.

use anyhow::{bail, Context};
use nix::sys::signal::SigSet;
use std::os::fd::AsFd;

use crate::cli::{AttachArgs, CreateArgs, ProjectOpts, UpArgs};
use crate::commands::tty::{self, Outcome};
use crate::paths::Paths;
use crate::state::{ProjectState, Status};
use crate::supervisor::client::Client;

/// Relay the caller's terminal to container `name`'s pty until it ends, the detach keys, or
/// a signal. `mask`: from `tty::block_signals`, taken before any thread was made.
pub fn attach_terminal(
    paths: &Paths,
    project: &str,
    name: &str,
    detach_keys: &[u8],
    stdin: bool,
    mask: &SigSet,
) -> anyhow::Result<Outcome> {
    let client = Client::connect(paths, project)
        .context("no supervisor runs for this project (berth up first)")?;
    let (conn, master) = client.attach(name)?;
    tty::relay(
        mask,
        conn.as_fd(),
        master.as_fd(),
        detach_keys,
        stdin,
        &mut || false,
    )
}

/// `berth attach SERVICE`.
pub fn attach(p: &ProjectOpts, args: &AttachArgs) -> anyhow::Result<u8> {
    let paths = Paths::from_env();
    let project = crate::commands::project_name(p)?;
    let st = ProjectState::load(&paths, &project)?
        .ok_or_else(|| anyhow::anyhow!("no such project: {project}"))?;
    let c = crate::commands::inspect::replica(&st.containers, &args.service, args.index)?;
    if crate::commands::ps::live_status(c) != Status::Running {
        bail!("container {} is not running", c.name);
    }
    if !crate::engine::container::bundle_terminal(&c.dir) {
        // No tty: its output streams live, as docker attach shows them (their log from now
        // on, until it stops or ^C). Its stdin is not forwarded (not done yet).
        if !args.no_stdin && std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            eprintln!(
                "{} has no tty: showing its output; stdin is not forwarded to it",
                c.name
            );
        }
        let logs = crate::cli::LogsArgs {
            follow: true,
            tail: "0".into(),
            no_log_prefix: true,
            index: Some(args.index),
            services: vec![args.service.clone()],
            ..Default::default()
        };
        return crate::commands::logs::run(p, &logs);
    }
    let mask = tty::block_signals()?;
    let keys = tty::parse_detach_keys(
        args.detach_keys
            .as_deref()
            .unwrap_or(tty::DEFAULT_DETACH_KEYS),
    )?;
    // --sig-proxy: a tty container gets the caller's signals as keys (^C is a byte on the
    // pty in raw mode), as with docker attach; the flag is accepted for compose's scripts.
    let _ = args.sig_proxy;
    match attach_terminal(&paths, &project, &c.name, &keys, !args.no_stdin, &mask)? {
        Outcome::Detached => {
            eprintln!("read escape sequence");
            Ok(0)
        }
        Outcome::Signal(s) => Ok((128 + s).clamp(0, 255) as u8),
        Outcome::Exited => {
            if !Client::answers(&paths, &project) {
                bail!(
                    "the supervisor went away while attached; {} runs on (attach again)",
                    c.name
                );
            }
            // docker attach returns the container's exit code.
            match wait_exit(&paths, &project, &c.name) {
                Some(code) => Ok(code),
                None => bail!("the terminal of {} closed, yet it has not exited", c.name),
            }
        }
    }
}

/// The exit code of container `name` once its record says it exited (bounded: 10 s).
pub fn wait_exit(paths: &Paths, project: &str, name: &str) -> Option<u8> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let st = ProjectState::load(paths, project).ok().flatten()?;
        let c = st.container(name)?;
        if c.status == Status::Exited {
            return Some(c.exit_code.unwrap_or(0).clamp(0, 255) as u8);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `berth create`: `up --no-start` (containers made, not started; `start` starts them).
pub fn create(p: &ProjectOpts, args: &CreateArgs) -> anyhow::Result<u8> {
    crate::commands::up::run(p, &as_up(args))
}

/// The `up` that `create` is (also what `create --dry-run` shows).
pub fn as_up(args: &CreateArgs) -> UpArgs {
    UpArgs {
        detach: true,
        no_start: true,
        services: args.services.clone(),
        scale: args.scale.clone(),
        force_recreate: args.force_recreate,
        no_recreate: args.no_recreate,
        pull: args.pull.clone(),
        quiet_pull: args.quiet_pull,
        remove_orphans: args.remove_orphans,
        yes: args.yes,
        build: args.build,
        no_build: args.no_build,
        ..Default::default()
    }
}
