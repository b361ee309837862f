//! The command line, shaped like `docker compose`: global project options, then a command.
//! Only clap structs live here; each command's logic is in `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "berth",
    version,
    about = "Compose-compatible stacks with their own runtime: no daemon, rolling updates, a real supervisor"
)]
pub struct Cli {
    #[command(flatten)]
    pub project: ProjectOpts,
    #[command(subcommand)]
    pub command: Command,
}

/// Options that select and load the project (docker compose's global flags). As in docker
/// compose they come before the command: `berth -f a.yaml logs -f` follows the logs.
#[derive(Debug, Clone, Default, Args)]
pub struct ProjectOpts {
    /// Compose configuration files (repeatable; `-` reads standard input)
    #[arg(short = 'f', long = "file")]
    pub files: Vec<PathBuf>,
    /// Project name
    #[arg(short = 'p', long = "project-name")]
    pub project_name: Option<String>,
    /// Alternate working directory (default: the directory of the first compose file)
    #[arg(long)]
    pub project_directory: Option<PathBuf>,
    /// Alternate environment files (repeatable; replace the default `.env`)
    #[arg(long = "env-file")]
    pub env_files: Vec<PathBuf>,
    /// Profiles to enable (repeatable)
    #[arg(long = "profile")]
    pub profiles: Vec<String>,
    /// Control when to print ANSI control characters
    #[arg(long, value_enum, default_value_t = Ansi::Auto)]
    pub ansi: Ansi,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Ansi {
    Never,
    Always,
    #[default]
    Auto,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[default]
    Yaml,
    Json,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum TableFormat {
    #[default]
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Parse, resolve and render the compose file in canonical format
    Config(ConfigArgs),
    /// Create and start containers
    Up(UpArgs),
    /// Stop and remove containers, networks and (with -v) volumes
    Down(DownArgs),
    /// View output from containers
    Logs(LogsArgs),
    /// List containers
    Ps(PsArgs),
    /// Display the running processes
    Top(ServicesArg),
    /// Print the public port for a port binding
    Port(PortArgs),
    /// Stop services
    Stop(StopArgs),
    /// Start services
    Start(ServicesArg),
    /// Restart services
    Restart(StopArgs),
    /// Force stop service containers
    Kill(KillArgs),
    /// Pause services
    Pause(ServicesArg),
    /// Unpause services
    Unpause(ServicesArg),
    /// Scale services (SERVICE=NUM...) on a running project
    Scale(ScaleArgs),
    /// Execute a command in a running container
    Exec(ExecArgs),
    /// Copy files/folders between a service container and the local filesystem
    Cp(CpArgs),
    /// Pull service images
    Pull(ServicesArg),
    /// Load images from a `docker save` or OCI image-layout archive
    Load(LoadArgs),
    /// List images used by the created containers, or all stored images with --all
    Images(ImagesArgs),
    /// Remove stored images
    Rmi(RmiArgs),
    /// Image store maintenance
    Image(ImageCmd),
    /// List running compose projects
    Ls(LsArgs),
    /// Show the supervisor's events (rollouts, watcher reloads, restarts)
    Events(EventsArgs),
    /// Run a one-off command on a service
    Run(RunArgs),
    /// Block until the first container of each service stops, print their exit codes
    Wait(WaitArgs),
    /// Show the record of the project's containers (JSON)
    Inspect(ServicesArg),
    /// Roll a service back to the configuration it ran before the last change
    Rollback(RollbackArgs),
    /// Generate shell completions
    Completion(CompletionArgs),
    /// Build or rebuild services' images from their Dockerfiles
    Build(BuildArgs),
    /// Build cache maintenance
    Builder(BuilderCmd),
    /// Internal: the per-project supervisor (started by `up`)
    #[command(name = "__supervisor", hide = true)]
    Supervisor(SupervisorArgs),
}

#[derive(Debug, Clone, Default, Args)]
pub struct ConfigArgs {
    /// Format the output
    #[arg(long, value_enum, default_value_t = Format::Yaml)]
    pub format: Format,
    /// Print the service names, one per line
    #[arg(long)]
    pub services: bool,
    /// Print the volume names, one per line
    #[arg(long)]
    pub volumes: bool,
    /// Print the network names, one per line
    #[arg(long)]
    pub networks: bool,
    /// Print the profile names, one per line
    #[arg(long = "profiles", id = "list_profiles")]
    pub profiles: bool,
    /// Print the image names, one per line
    #[arg(long)]
    pub images: bool,
    /// Print the service config hash, one per line ("*" for all services)
    #[arg(long)]
    pub hash: Option<String>,
    /// Only validate the configuration, don't print anything
    #[arg(short, long)]
    pub quiet: bool,
    /// Don't interpolate environment variables
    #[arg(long)]
    pub no_interpolate: bool,
    /// Save to file (default: stdout)
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Args)]
pub struct UpArgs {
    /// Detached mode: run containers in the background
    #[arg(short, long)]
    pub detach: bool,
    /// Wait for services to be running|healthy (implies detached mode)
    #[arg(long)]
    pub wait: bool,
    /// Maximum duration in seconds to wait for the project to be running|healthy
    #[arg(long)]
    pub wait_timeout: Option<u64>,
    /// Scale SERVICE to NUM instances (repeatable, SERVICE=NUM)
    #[arg(long)]
    pub scale: Vec<String>,
    /// Recreate containers even if their configuration hasn't changed
    #[arg(long, conflicts_with = "no_recreate")]
    pub force_recreate: bool,
    /// If containers already exist, don't recreate them
    #[arg(long)]
    pub no_recreate: bool,
    /// Don't start linked services
    #[arg(long)]
    pub no_deps: bool,
    /// Don't start the services after creating them
    #[arg(long)]
    pub no_start: bool,
    /// Pull image before running ("always"|"missing"|"never")
    #[arg(long)]
    pub pull: Option<String>,
    /// Remove containers for services not defined in the compose file
    #[arg(long)]
    pub remove_orphans: bool,
    /// Stops all containers if any container was stopped
    #[arg(long)]
    pub abort_on_container_exit: bool,
    /// Stops all containers if any container exited with failure
    #[arg(long)]
    pub abort_on_container_failure: bool,
    /// Return the exit code of the selected service container
    #[arg(long)]
    pub exit_code_from: Option<String>,
    /// Shutdown timeout in seconds
    #[arg(short, long)]
    pub timeout: Option<u64>,
    /// Produce monochrome output
    #[arg(long)]
    pub no_color: bool,
    /// Don't print prefix in logs
    #[arg(long)]
    pub no_log_prefix: bool,
    /// Watch the compose files and roll out changes
    #[arg(long)]
    pub watch: bool,
    /// Build images before starting containers
    #[arg(long, conflicts_with = "no_build")]
    pub build: bool,
    /// Don't build an image, even if it's missing
    #[arg(long)]
    pub no_build: bool,
    pub services: Vec<String>,
}

#[derive(Debug, Clone, Default, Args)]
pub struct DownArgs {
    /// Remove named volumes declared in the volumes section and anonymous volumes
    #[arg(short, long)]
    pub volumes: bool,
    /// Remove images used by services ("local"|"all")
    #[arg(long)]
    pub rmi: Option<String>,
    /// Remove containers for services not defined in the compose file
    #[arg(long)]
    pub remove_orphans: bool,
    /// Specify a shutdown timeout in seconds
    #[arg(short, long)]
    pub timeout: Option<u64>,
}

#[derive(Debug, Clone, Default, Args)]
pub struct LogsArgs {
    /// Follow log output
    #[arg(short, long)]
    pub follow: bool,
    /// Number of lines to show from the end of the logs for each container ("all" for everything)
    #[arg(short = 'n', long, default_value = "all")]
    pub tail: String,
    /// Show timestamps
    #[arg(short, long)]
    pub timestamps: bool,
    /// Show logs since timestamp (e.g. 2013-01-02T13:23:37Z) or relative (e.g. 42m)
    #[arg(long)]
    pub since: Option<String>,
    /// Show logs before a timestamp or relative time
    #[arg(long)]
    pub until: Option<String>,
    /// Produce monochrome output
    #[arg(long)]
    pub no_color: bool,
    /// Don't print prefix in logs
    #[arg(long)]
    pub no_log_prefix: bool,
    pub services: Vec<String>,
}

#[derive(Debug, Clone, Default, Args)]
pub struct PsArgs {
    /// Show all stopped containers
    #[arg(short, long)]
    pub all: bool,
    /// Only display IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Display services
    #[arg(long)]
    pub services: bool,
    /// Filter services by status (repeatable)
    #[arg(long)]
    pub status: Vec<String>,
    /// Format the output
    #[arg(long, value_enum, default_value_t = TableFormat::Table)]
    pub format: TableFormat,
    pub services_filter: Vec<String>,
}

#[derive(Debug, Clone, Default, Args)]
pub struct BuildArgs {
    /// Do not use cache when building the image
    #[arg(long)]
    pub no_cache: bool,
    /// Always attempt to pull a newer version of the base images
    #[arg(long)]
    pub pull: bool,
    /// Set build-time variables for services (KEY=VALUE, or KEY from the environment)
    #[arg(long)]
    pub build_arg: Vec<String>,
    /// Don't print anything to stdout or stderr
    #[arg(short, long)]
    pub quiet: bool,
    /// Set type of progress output (auto, tty, plain, quiet)
    #[arg(long)]
    pub progress: Option<String>,
    pub services: Vec<String>,
}

#[derive(Debug, Args)]
pub struct BuilderCmd {
    #[command(subcommand)]
    pub command: BuilderSub,
}

#[derive(Debug, Subcommand)]
pub enum BuilderSub {
    /// Remove the build cache
    Prune,
}

#[derive(Debug, Clone, Default, Args)]
pub struct ServicesArg {
    pub services: Vec<String>,
}

#[derive(Debug, Clone, Default, Args)]
pub struct StopArgs {
    /// Specify a shutdown timeout in seconds
    #[arg(short, long)]
    pub timeout: Option<u64>,
    pub services: Vec<String>,
}

#[derive(Debug, Clone, Default, Args)]
pub struct ScaleArgs {
    /// SERVICE=NUM pairs
    #[arg(required = true)]
    pub scale: Vec<String>,
}

#[derive(Debug, Clone, Default, Args)]
pub struct KillArgs {
    /// SIGNAL to send to the container
    #[arg(short, long, default_value = "SIGKILL")]
    pub signal: String,
    pub services: Vec<String>,
}

#[derive(Debug, Clone, Default, Args)]
pub struct PortArgs {
    /// tcp or udp
    #[arg(long, default_value = "tcp")]
    pub protocol: String,
    /// Index of the container if service has multiple replicas
    #[arg(long, default_value_t = 1)]
    pub index: u32,
    pub service: String,
    pub private_port: u16,
}

#[derive(Debug, Clone, Default, Args)]
pub struct ExecArgs {
    /// Detached mode: run command in the background
    #[arg(short, long)]
    pub detach: bool,
    /// Disable pseudo-TTY allocation
    #[arg(short = 'T', long = "no-TTY")]
    pub no_tty: bool,
    /// Set environment variables (repeatable)
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    /// Run the command as this user
    #[arg(short, long)]
    pub user: Option<String>,
    /// Path to workdir directory for this command
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// Index of the container if service has multiple replicas
    #[arg(long, default_value_t = 1)]
    pub index: u32,
    pub service: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Default, Args)]
pub struct CpArgs {
    /// Index of the container if service has multiple replicas
    #[arg(long, default_value_t = 1)]
    pub index: u32,
    /// Archive mode (copy all uid/gid information)
    #[arg(short, long)]
    pub archive: bool,
    /// Always follow symbol link in SRC_PATH
    #[arg(short = 'L', long = "follow-link")]
    pub follow_link: bool,
    /// SERVICE:SRC_PATH or a local path
    pub src: String,
    /// SERVICE:DEST_PATH or a local path
    pub dest: String,
}

#[derive(Debug, Clone, Default, Args)]
pub struct LoadArgs {
    /// Read from tar archive file (or an OCI image-layout directory)
    #[arg(short, long)]
    pub input: PathBuf,
    /// Suppress the load output
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Default, Args)]
pub struct ImagesArgs {
    /// Only display IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Show every image in the store, not only the project's
    #[arg(short, long)]
    pub all: bool,
    /// Format the output
    #[arg(long, value_enum, default_value_t = TableFormat::Table)]
    pub format: TableFormat,
}

#[derive(Debug, Clone, Default, Args)]
pub struct RmiArgs {
    /// Remove the image even if a container uses it
    #[arg(short, long)]
    pub force: bool,
    #[arg(required = true)]
    pub images: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ImageCmd {
    #[command(subcommand)]
    pub command: ImageSub,
}

#[derive(Debug, Subcommand)]
pub enum ImageSub {
    /// Remove unreferenced blobs and layers
    Prune,
    /// List stored images
    Ls(ImagesArgs),
}

#[derive(Debug, Clone, Default, Args)]
pub struct RunArgs {
    /// Automatically remove the container when it exits
    #[arg(long)]
    pub rm: bool,
    /// Run the container in the background and print its name
    #[arg(short, long)]
    pub detach: bool,
    /// Set environment variables (repeatable)
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    /// Override the entrypoint of the image
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Assign a name to the container
    #[arg(long)]
    pub name: Option<String>,
    /// Run as this user
    #[arg(short, long)]
    pub user: Option<String>,
    /// Working directory inside the container
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// Don't start linked services
    #[arg(long)]
    pub no_deps: bool,
    /// Run with the service's ports published
    #[arg(long)]
    pub service_ports: bool,
    /// Disable pseudo-TTY allocation (also when stdin is not a terminal); berth's run keeps a
    /// service's `tty: true` otherwise but never adds a tty, as it cannot attach stdin yet
    #[arg(short = 'T', long = "no-TTY")]
    pub no_tty: bool,
    pub service: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Default, Args)]
pub struct WaitArgs {
    /// Remove the project once the first container stops
    #[arg(long)]
    pub down_project: bool,
    #[arg(required = true)]
    pub services: Vec<String>,
}

#[derive(Debug, Clone, Default, Args)]
pub struct RollbackArgs {
    pub service: String,
}

#[derive(Debug, Clone, Default, Args)]
pub struct EventsArgs {
    /// Output events as a stream of JSON objects
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Default, Args)]
pub struct LsArgs {
    /// Show all stopped Compose projects
    #[arg(short, long)]
    pub all: bool,
    /// Only display project names
    #[arg(short, long)]
    pub quiet: bool,
    /// Format the output
    #[arg(long, value_enum, default_value_t = TableFormat::Table)]
    pub format: TableFormat,
}

#[derive(Debug, Clone, Args)]
pub struct CompletionArgs {
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Clone, Args)]
pub struct SupervisorArgs {
    /// The project this supervisor owns
    #[arg(long)]
    pub project: String,
    /// Stay in the foreground (tests and attached `up`)
    #[arg(long)]
    pub foreground: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn project_flags_come_before_the_command() {
        let c =
            Cli::try_parse_from(["berth", "-f", "a.yaml", "-p", "x", "logs", "-f", "web"]).unwrap();
        assert_eq!(c.project.files, vec![std::path::PathBuf::from("a.yaml")]);
        assert_eq!(c.project.project_name.as_deref(), Some("x"));
        match c.command {
            Command::Logs(l) => {
                assert!(l.follow);
                assert_eq!(l.services, vec!["web"]);
            }
            _ => panic!("not logs"),
        }
        let c = Cli::try_parse_from(["berth", "config", "--profiles"]).unwrap();
        assert!(matches!(
            c.command,
            Command::Config(ConfigArgs { profiles: true, .. })
        ));
    }
}
