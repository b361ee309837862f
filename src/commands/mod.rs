//! One module per command. `dispatch` builds the tokio runtime for the commands that need it
//! (never before: see main.rs).

use crate::cli::{Cli, Command};

pub mod attach;
pub mod build;
pub mod config;
pub mod container_export;
pub mod dryrun;
pub mod export;
pub mod image;
pub mod inspect;
pub mod lifecycle;
pub mod logs;
pub mod ps;
pub mod push;
pub mod resume;
pub mod rm;
pub mod stats;
pub mod template;
pub mod tty;
pub mod up;
pub mod version;
pub mod watch;

/// Kept here for callers in the commands; the function lives below both the CLI and the
/// supervisor.
#[allow(unused_imports)]
pub use crate::errors::render_error;

pub fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    crate::ui::configure(cli.project.progress, cli.project.ansi);
    note_no_effect(&cli);
    if cli.project.dry_run && dryrun::is_mutating(&cli.command) {
        return dryrun::run(&cli.project, &cli.command);
    }
    match cli.command {
        Command::Config(args) => config::run(&cli.project, &args),
        Command::Up(args) => up::run(&cli.project, &args),
        Command::Down(args) => lifecycle::down(&cli.project, &args),
        Command::Stop(args) => lifecycle::stop(&cli.project, &args),
        Command::Start(args) => lifecycle::start(&cli.project, &args),
        Command::Restart(args) => lifecycle::restart(&cli.project, &args),
        Command::Kill(args) => lifecycle::kill(&cli.project, &args),
        Command::Pause(args) => lifecycle::pause(&cli.project, &args, false),
        Command::Unpause(args) => lifecycle::pause(&cli.project, &args, true),
        Command::Scale(args) => up::scale(&cli.project, &args),
        Command::Exec(args) => inspect::exec(&cli.project, &args),
        Command::Cp(args) => inspect::cp(&cli.project, &args),
        Command::Top(args) => inspect::top(&cli.project, &args),
        Command::Port(args) => inspect::port(&cli.project, &args),
        Command::Ls(args) => inspect::ls(&args),
        Command::Events(args) => inspect::events(&cli.project, &args),
        Command::Run(args) => up::run_oneoff(&cli.project, &args),
        Command::Attach(args) => attach::attach(&cli.project, &args),
        Command::Create(args) => attach::create(&cli.project, &args),
        Command::Wait(args) => inspect::wait(&cli.project, &args),
        Command::Inspect(args) => inspect::inspect(&cli.project, &args),
        Command::Rollback(args) => up::rollback(&cli.project, &args),
        Command::Supervisor(args) => crate::supervisor::main(&args.project),
        Command::Logs(args) => logs::run(&cli.project, &args),
        Command::Ps(args) => ps::run(&cli.project, &args),
        Command::Load(args) => image::load(&args),
        Command::Images(args) => image::images(&cli.project, &args),
        Command::Rmi(args) => image::rmi(&args),
        Command::Image(cmd) => image::image_cmd(&cmd),
        Command::Pull(args) => image::pull(&cli.project, &args),
        Command::Watch(args) => watch::run(&cli.project, &args),
        Command::Resume(args) => resume::resume(&args, cli.project.dry_run),
        Command::Systemd(mut args) => {
            args.print |= cli.project.dry_run;
            resume::systemd(&args)
        }
        Command::Rm(args) => rm::run(&cli.project, &args),
        Command::Version(args) => version::run(&args),
        Command::Stats(args) => stats::run(&cli.project, &args),
        Command::Volumes(args) => rm::volumes(&cli.project, &args),
        Command::Push(args) => push::push(&cli.project, &args),
        Command::Publish(args) => push::publish(&cli.project, &args),
        Command::Export(args) => export::run(&cli.project, &args),
        Command::Commit(args) => container_export::commit(&cli.project, &args),
        Command::Build(args) => build::build(&cli.project, &args),
        Command::Builder(cmd) => match cmd.command {
            crate::cli::BuilderSub::Prune => build::builder_prune(),
        },
        Command::Completion(args) => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(args.shell, &mut cmd, "berth", &mut std::io::stdout());
            Ok(0)
        }
    }
}

/// Flags that only mean something to BuildKit or Docker Desktop are accepted so that scripts do
/// not break; say once on stderr that they change nothing here.
fn note_no_effect(cli: &Cli) {
    let mut flags = Vec::new();
    if let Command::Up(a) = &cli.command {
        if a.menu {
            flags.push("--menu");
        }
        if a.quiet_build {
            flags.push("--quiet-build");
        }
    }
    if let Command::Run(a) = &cli.command {
        if a.quiet_build {
            flags.push("--quiet-build");
        }
    }
    if let Command::Build(a) = &cli.command {
        for (set, name) in [
            (a.builder.is_some(), "--builder"),
            (a.memory.is_some(), "--memory"),
            (a.print, "--print"),
            (a.provenance.is_some(), "--provenance"),
            (a.sbom.is_some(), "--sbom"),
        ] {
            if set {
                flags.push(name);
            }
        }
    }
    if !flags.is_empty() {
        eprintln!("warning: {} has no effect with berth", flags.join(", "));
    }
}

/// The project name for commands that act on an existing project: `-p`, then
/// `COMPOSE_PROJECT_NAME`, then the loaded compose file's name.
pub fn project_name(p: &crate::cli::ProjectOpts) -> anyhow::Result<String> {
    if let Some(n) = &p.project_name {
        return Ok(n.clone());
    }
    if let Ok(n) = std::env::var("COMPOSE_PROJECT_NAME") {
        if !n.is_empty() {
            return Ok(n);
        }
    }
    // The compose file's `name:` (or its directory) decides, as for `up`. Only loading
    // matters here, so env_file resolution is skipped (a missing env file of some service
    // must not stop `ps` or `down`).
    let mut opts = crate::compose::LoadOptions::from_cli(p);
    opts.resolve_env_files = false;
    match crate::compose::load(&opts) {
        Ok(project) => return Ok(project.name),
        Err(e) if !p.files.is_empty() => return Err(e.into()),
        Err(_) => {}
    }
    let dir = match &p.project_directory {
        Some(d) => d.clone(),
        None => std::env::current_dir()?,
    };
    let base = dir
        .file_name()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let name: String = base
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    let name = name.trim_start_matches(['_', '-']).to_string();
    if name.is_empty() {
        anyhow::bail!("project name must not be empty");
    }
    Ok(name)
}
