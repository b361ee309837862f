//! One module per command. `dispatch` builds the tokio runtime for the commands that need it
//! (never before: see main.rs).

use crate::cli::{Cli, Command};

pub mod config;
pub mod image;

/// Render an error chain the way berth prints it: the top message, then each cause.
pub fn render_error(e: &anyhow::Error) -> String {
    let mut s = format!("error: {e}");
    for cause in e.chain().skip(1) {
        s.push_str(&format!("\n  caused by: {cause}"));
    }
    s
}

pub fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Config(args) => config::run(&cli.project, &args),
        Command::Load(args) => image::load(&args),
        Command::Images(args) => image::images(&cli.project, &args),
        Command::Rmi(args) => image::rmi(&args),
        Command::Image(cmd) => image::image_cmd(&cmd),
        Command::Pull(args) => image::pull(&cli.project, &args),
        Command::Completion(args) => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(args.shell, &mut cmd, "berth", &mut std::io::stdout());
            Ok(0)
        }
        other => anyhow::bail!("command not implemented yet: {other:?}"),
    }
}
