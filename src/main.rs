//! berth: a Compose-compatible stack manager with its own container runtime.
//!
//! `main` is synchronous on purpose: `berth __runtime …` (the container runtime's process
//! dance: clone, namespaces, pivot_root) is dispatched before any tokio runtime or thread
//! exists, because a multi-threaded process must never fork and keep running Rust code.

use std::process::ExitCode;

use clap::Parser;

mod build;
mod cli;
mod commands;
// Parts of the loader's API are used only by its tests and by commands still to come.
#[allow(dead_code)]
mod compose;
mod engine;
mod errors;
mod export;
mod logs;
mod paths;
mod rootless;
mod spec;
mod state;
mod supervisor;
mod trace;
mod ui;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .get(1)
        .map(|a| a == rootless::HOLD_ARG)
        .unwrap_or(false)
    {
        // The rootless namespace's holder (src/rootless.rs): single-threaded, no tokio.
        return ExitCode::from(rootless::hold(&args[2..]));
    }
    if args.get(1).map(|a| a == "__runtime").unwrap_or(false) {
        // Re-exec entry of the kernel edge: single-threaded, no tokio; before the CLI parser
        // (a `create` re-exec, and the fork server's start, pay for no clap command tree). Its
        // caller is already in the user's rootless namespace, if any.
        let code = berth_runtime::cli::main(args[2..].to_vec());
        return ExitCode::from(code.clamp(0, 255) as u8);
    }
    // A non-root user's berth joins (or first makes) the user's rootless namespace, while
    // this process still has one thread; everything it starts inherits it. Commands that only
    // read the Compose files (and `--help`, or a command line clap will refuse) need none.
    // The keeper's command line is known without the parser (see below); as root (inside that
    // namespace too) there is nothing to enter: no parse here, so the keeper and root's commands
    // parse at most once, below.
    let keeper = supervisor::keeper::keeper_args(&args).is_some();
    // SAFETY: plain getter.
    let root = unsafe { libc::geteuid() } == 0;
    let parsed = (!keeper && !root).then(|| cli::Cli::try_parse_from(&args));
    let pure = match &parsed {
        None => root,
        Some(Ok(c)) => matches!(
            c.command,
            cli::Command::Config(_) | cli::Command::Version(_) | cli::Command::Completion(_)
        ),
        Some(Err(_)) => true,
    };
    if let Err(e) = if pure { Ok(()) } else { rootless::enter() } {
        eprintln!("Error: {e}");
        return ExitCode::from(1);
    }
    rootless::install_port_binder();
    if args.get(1).map(|a| a == "__pty-drain").unwrap_or(false) {
        // Holds a detached `exec -it`'s terminal open (see commands/tty.rs).
        return ExitCode::from(commands::tty::drain());
    }
    if args.get(1).map(|a| a == "__pty-hold").unwrap_or(false) {
        // Keeps a `tty: true` container's pty master across a supervisor crash (see
        // supervisor/attach.rs).
        return ExitCode::from(commands::tty::hold());
    }
    if let Some(project) = supervisor::keeper::keeper_args(&args) {
        // The keeper (`berth __supervisor` started by the CLI): a small synchronous parent
        // that only waits. Dispatched before the log filter and the CLI parser so that it
        // touches few of the binary's pages (see keeper.rs).
        return ExitCode::from(supervisor::keeper::main(project));
    }
    init_tracing();
    // Parsed once, above (an error or `--help` prints and exits here, as `Cli::parse` does).
    let cli = match parsed {
        Some(Ok(c)) => c,
        Some(Err(e)) => e.exit(),
        None => cli::Cli::parse(),
    };
    if !matches!(cli.command, cli::Command::Supervisor(_)) {
        // Like other CLIs, die quietly when the reader of our output goes away
        // (`berth logs | head`). The supervisor keeps ignoring SIGPIPE: a client that hangs up
        // must not kill it.
        // SAFETY: setting a signal disposition before any thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
        trace::cli_start();
    }
    let down = matches!(cli.command, cli::Command::Down(_));
    let r = commands::dispatch(cli);
    if down && rootless::active() {
        rootless::release_if_idle();
    }
    match r {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("{}", errors::render_error(&e));
            ExitCode::from(1)
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .try_init();
}
