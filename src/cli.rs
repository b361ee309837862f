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
    #[arg(long, value_enum, default_value_t = Ansi::Auto, global = true)]
    pub ansi: Ansi,
    /// Execute command in dry run mode: print what would be done, change nothing
    #[arg(long, global = true)]
    pub dry_run: bool,
    /// Set type of progress output (auto, tty, plain, json, quiet)
    #[arg(long, value_enum, global = true)]
    pub progress: Option<ProgressMode>,
    /// Control max parallelism, -1 for unlimited
    #[arg(long, default_value_t = -1, global = true, allow_negative_numbers = true)]
    pub parallel: i64,
    /// Run compose in backward compatibility mode (`_` instead of `-` in container names)
    #[arg(long, global = true)]
    pub compatibility: bool,
    /// Include all resources, even those not used by services
    #[arg(long, global = true)]
    pub all_resources: bool,
}

/// `--progress`: compose's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    Auto,
    Tty,
    Plain,
    Json,
    Quiet,
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
    Restart(RestartArgs),
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
    Pull(PullArgs),
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
    /// Watch the build context for services and sync, restart or exec when files change
    Watch(WatchArgs),
    /// Bring back, after a reboot, the projects that were up (restart: always/unless-stopped)
    Resume(ResumeArgs),
    /// Install or remove the systemd unit that runs `berth resume` at boot
    Systemd(SystemdArgs),
    /// Generate shell completions
    Completion(CompletionArgs),
    /// Removes stopped service containers
    Rm(RmArgs),
    /// Show the berth version information
    Version(VersionArgs),
    /// Display a live stream of container(s) resource usage statistics
    Stats(StatsArgs),
    /// List volumes
    Volumes(VolumesArgs),
    /// Push service images
    Push(PushArgs),
    /// Publish compose application (as an OCI artifact)
    Publish(PublishArgs),
    /// Export a service container's filesystem as a tar archive (`export SERVICE`), or the
    /// project for another engine: `export k8s` (manifests), `export swarm` (a stack file)
    Export(ExportArgs),
    /// Create a new image from a service container's changes
    Commit(CommitArgs),
    /// Build or rebuild services' images from their Dockerfiles
    Build(BuildArgs),
    /// Build cache maintenance
    Builder(BuilderCmd),
    /// Attach local standard input, output, and error streams to a service's running container
    Attach(AttachArgs),
    /// Creates containers for a service (not started: `start` starts them)
    Create(CreateArgs),
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
    /// Print model variables and default values
    #[arg(long)]
    pub variables: bool,
    /// Print environment used for interpolation
    #[arg(long)]
    pub environment: bool,
    /// Pin image tags to digests (images in berth's store)
    #[arg(long)]
    pub resolve_image_digests: bool,
    /// Produces an override file with image digests
    #[arg(long)]
    pub lock_image_digests: bool,
    /// Print the model names, one per line
    #[arg(long)]
    pub models: bool,
    /// Don't check model consistency
    #[arg(long)]
    pub no_consistency: bool,
    /// Don't resolve service env files
    #[arg(long)]
    pub no_env_resolution: bool,
    /// Don't normalize compose model
    #[arg(long)]
    pub no_normalize: bool,
    /// Don't resolve file paths
    #[arg(long)]
    pub no_path_resolution: bool,
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
    /// Recreate anonymous volumes instead of retrieving data from the previous containers
    #[arg(short = 'V', long)]
    pub renew_anon_volumes: bool,
    /// Restrict attaching to the specified services (repeatable)
    #[arg(long)]
    pub attach: Vec<String>,
    /// Do not attach (stream logs) to the specified services (repeatable)
    #[arg(long)]
    pub no_attach: Vec<String>,
    /// Automatically attach to log output of dependent services
    #[arg(long)]
    pub attach_dependencies: bool,
    /// Show timestamps
    #[arg(long)]
    pub timestamps: bool,
    /// Pull without printing progress information
    #[arg(long)]
    pub quiet_pull: bool,
    /// Suppress the build output
    #[arg(long)]
    pub quiet_build: bool,
    /// Recreate dependent containers
    #[arg(long, conflicts_with = "no_recreate")]
    pub always_recreate_deps: bool,
    /// Assume "yes" as answer to all prompts and run non-interactively
    #[arg(short = 'y', long)]
    pub yes: bool,
    /// Docker Desktop's interactive shortcuts (accepted, no effect here)
    #[arg(long)]
    pub menu: bool,
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
    /// Index of the container if service has multiple replicas (one SERVICE)
    #[arg(long)]
    pub index: Option<u32>,
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
    /// Format the output: table, json, `table TEMPLATE` or a Go template (`{{.Name}}`)
    #[arg(long, default_value = "table")]
    pub format: String,
    /// Filter services by a property (status=..., source=...)
    #[arg(long)]
    pub filter: Vec<String>,
    /// Don't truncate output
    #[arg(long)]
    pub no_trunc: bool,
    /// Include orphaned services (not declared by project)
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub orphans: bool,
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
    /// Also build the services the named ones depend on
    #[arg(long)]
    pub with_dependencies: bool,
    /// Push the service images after building them
    #[arg(long)]
    pub push: bool,
    /// Check the build configuration (the Dockerfiles parse, the contexts exist) without building
    #[arg(long)]
    pub check: bool,
    /// SSH agent socket or keys for RUN --mount=type=ssh (`default` or `ID=PATH[,PATH]`)
    #[arg(long)]
    pub ssh: Option<String>,
    /// BuildKit builder to use (accepted, no effect: berth builds itself)
    #[arg(long)]
    pub builder: Option<String>,
    /// Memory limit for the build container (accepted, no effect)
    #[arg(short = 'm', long)]
    pub memory: Option<String>,
    /// Print the equivalent bake file (accepted, no effect)
    #[arg(long)]
    pub print: bool,
    /// Add a provenance attestation (accepted, no effect)
    #[arg(long)]
    pub provenance: Option<String>,
    /// Add an SBOM attestation (accepted, no effect)
    #[arg(long)]
    pub sbom: Option<String>,
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
pub struct RestartArgs {
    /// Specify a shutdown timeout in seconds
    #[arg(short, long)]
    pub timeout: Option<u64>,
    /// Don't restart dependent services
    #[arg(long)]
    pub no_deps: bool,
    pub services: Vec<String>,
}

#[derive(Debug, Clone, Default, Args)]
pub struct ScaleArgs {
    /// Don't start linked services
    #[arg(long)]
    pub no_deps: bool,
    /// SERVICE=NUM pairs
    #[arg(required = true)]
    pub scale: Vec<String>,
}

#[derive(Debug, Clone, Default, Args)]
pub struct KillArgs {
    /// SIGNAL to send to the container
    #[arg(short, long, default_value = "SIGKILL")]
    pub signal: String,
    /// Remove containers for services not defined in the Compose file
    #[arg(long)]
    pub remove_orphans: bool,
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
    /// Disable pseudo-TTY allocation (also spelled --no-TTY)
    #[arg(short = 'T', long = "no-tty", alias = "no-TTY")]
    pub no_tty: bool,
    /// Keep STDIN open (the default, as in compose; accepted for `exec -it`)
    #[arg(short = 'i', long, hide = true)]
    pub interactive: bool,
    /// Allocate a pseudo-TTY (the default on a terminal, as in compose; accepted for `exec -it`)
    #[arg(short = 't', long, hide = true)]
    pub tty: bool,
    /// Override the key sequence for detaching from a container (default ctrl-p,ctrl-q)
    #[arg(long)]
    pub detach_keys: Option<String>,
    /// Give extended privileges to the process (all capabilities, no seccomp)
    #[arg(long)]
    pub privileged: bool,
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
    /// Include containers created by the run command
    #[arg(long)]
    pub all: bool,
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
    /// Build the service's image before starting the container
    #[arg(long)]
    pub build: bool,
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
    #[arg(short = 'T', long = "no-TTY", alias = "no-tty")]
    pub no_tty: bool,
    /// Bind mount a volume (repeatable)
    #[arg(short = 'v', long = "volume")]
    pub volumes: Vec<String>,
    /// Publish a container's port(s) to the host (repeatable)
    #[arg(short = 'p', long = "publish")]
    pub publish: Vec<String>,
    /// Add or override a label (repeatable)
    #[arg(short = 'l', long = "label")]
    pub labels: Vec<String>,
    /// Add Linux capabilities
    #[arg(long, value_delimiter = ',')]
    pub cap_add: Vec<String>,
    /// Drop Linux capabilities
    #[arg(long, value_delimiter = ',')]
    pub cap_drop: Vec<String>,
    /// Keep STDIN open even if not attached
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a pseudo-TTY (the default on a terminal, as in compose; accepted for `run -it`)
    #[arg(short = 't', hide = true)]
    pub tty: bool,
    /// Use the service's network aliases in the network(s) the container connects to
    #[arg(long)]
    pub use_aliases: bool,
    /// Set environment variables from file (repeatable)
    #[arg(long)]
    pub env_from_file: Vec<PathBuf>,
    /// Pull image before running ("always"|"missing"|"never")
    #[arg(long)]
    pub pull: Option<String>,
    /// Don't print anything to STDOUT
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Pull without printing progress information
    #[arg(long)]
    pub quiet_pull: bool,
    /// Suppress progress output from the build process
    #[arg(long)]
    pub quiet_build: bool,
    /// Remove containers for services not defined in the Compose file
    #[arg(long)]
    pub remove_orphans: bool,
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
    /// Show all events created since timestamp (RFC 3339, unix seconds, or relative: 10m)
    #[arg(long)]
    pub since: Option<String>,
    /// Stream events until this timestamp
    #[arg(long)]
    pub until: Option<String>,
    pub services: Vec<String>,
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
    /// Filter output based on conditions provided (name=...)
    #[arg(long)]
    pub filter: Vec<String>,
}

#[derive(Debug, Clone, Default, Args)]
pub struct PullArgs {
    /// Pull without printing progress information
    #[arg(short, long)]
    pub quiet: bool,
    /// Apply pull policy ("missing"|"always")
    #[arg(long)]
    pub policy: Option<String>,
    /// Pull what it can and ignores images with pull failures
    #[arg(long)]
    pub ignore_pull_failures: bool,
    /// Also pull services declared as dependencies
    #[arg(long)]
    pub include_deps: bool,
    /// Ignore images that can be built
    #[arg(long)]
    pub ignore_buildable: bool,
    pub services: Vec<String>,
}

#[derive(Debug, Clone, Default, Args)]
pub struct RmArgs {
    /// Don't ask to confirm removal
    #[arg(short, long)]
    pub force: bool,
    /// Stop the containers, if required, before removing
    #[arg(short, long)]
    pub stop: bool,
    /// Remove any anonymous volumes attached to containers
    #[arg(short, long)]
    pub volumes: bool,
    pub services: Vec<String>,
}

#[derive(Debug, Clone, Default, Args)]
pub struct VersionArgs {
    /// Format the output. Values: [pretty | json]
    #[arg(short, long, default_value = "pretty")]
    pub format: String,
    /// Shows only berth's version number
    #[arg(long)]
    pub short: bool,
}

#[derive(Debug, Clone, Default, Args)]
pub struct StatsArgs {
    /// Show all containers (default shows just running)
    #[arg(short, long)]
    pub all: bool,
    /// Format output: table, json, `table TEMPLATE` or a Go template
    #[arg(long, default_value = "table")]
    pub format: String,
    /// Disable streaming stats and only pull the first result
    #[arg(long)]
    pub no_stream: bool,
    /// Do not truncate output
    #[arg(long)]
    pub no_trunc: bool,
    pub service: Option<String>,
}

#[derive(Debug, Clone, Default, Args)]
pub struct VolumesArgs {
    /// Format output: table, json, `table TEMPLATE` or a Go template
    #[arg(long, default_value = "table")]
    pub format: String,
    /// Only display volume names
    #[arg(short, long)]
    pub quiet: bool,
    pub services: Vec<String>,
}

#[derive(Debug, Clone, Default, Args)]
pub struct PushArgs {
    /// Push what it can and ignores images with push failures
    #[arg(long)]
    pub ignore_push_failures: bool,
    /// Also push images of services declared as dependencies
    #[arg(long)]
    pub include_deps: bool,
    /// Push without printing progress information
    #[arg(short, long)]
    pub quiet: bool,
    pub services: Vec<String>,
}

#[derive(Debug, Clone, Default, Args)]
pub struct PublishArgs {
    /// Published compose application (includes referenced images)
    #[arg(long)]
    pub app: bool,
    /// OCI image/artifact specification version (1.0 or 1.1)
    #[arg(long)]
    pub oci_version: Option<String>,
    /// Pin image tags to digests
    #[arg(long)]
    pub resolve_image_digests: bool,
    /// Include environment variables in the published OCI artifact
    #[arg(long)]
    pub with_env: bool,
    /// Assume "yes" as answer to all prompts
    #[arg(short = 'y', long)]
    pub yes: bool,
    /// The repository to publish to (`registry/name:tag`)
    pub repository: String,
}

#[derive(Debug, Clone, Default, Args)]
pub struct CommitArgs {
    /// Author (e.g., "John Hannibal Smith <hannibal@a-team.com>")
    #[arg(short, long)]
    pub author: Option<String>,
    /// Apply Dockerfile instruction to the created image (ENV, LABEL, CMD, ENTRYPOINT, WORKDIR, USER, EXPOSE)
    #[arg(short, long)]
    pub change: Vec<String>,
    /// Index of the container if service has multiple replicas
    #[arg(long, default_value_t = 1)]
    pub index: u32,
    /// Commit message
    #[arg(short, long)]
    pub message: Option<String>,
    /// Pause container during commit
    #[arg(short, long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub pause: bool,
    pub service: String,
    /// REPOSITORY[:TAG]
    pub repository: Option<String>,
}

#[derive(Debug, Clone, Default, Args)]
pub struct WatchArgs {
    /// Do not start the services before watching
    #[arg(long)]
    pub no_up: bool,
    /// Prune dangling images on rebuild (what a `rebuild` rule leaves behind)
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub prune: bool,
    /// Hide the sync lines
    #[arg(long)]
    pub quiet: bool,
    pub services: Vec<String>,
}

#[derive(Debug, Clone, Default, Args)]
pub struct ResumeArgs {
    /// Only these projects (default: every project with a record)
    pub projects: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct SystemdArgs {
    #[command(subcommand)]
    pub command: SystemdCmd,
    /// Print the unit (install) or its path (uninstall) instead of writing anything (the global
    /// --dry-run does the same)
    #[arg(long, global = true)]
    pub print: bool,
    /// Directory for the unit (default /etc/systemd/system; systemctl is not run with this)
    #[arg(long, global = true)]
    pub unit_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Subcommand)]
pub enum SystemdCmd {
    /// Write and enable berth-resume.service
    Install,
    /// Disable and remove berth-resume.service
    Uninstall,
}

#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// `k8s`, `swarm`, or a SERVICE whose container's filesystem is written as a tar
    pub target: String,
    /// Services to export (k8s; default: all, plus what they depend on)
    pub services: Vec<String>,
    /// Output: a directory (k8s: one file per object), a file (swarm, a service's tar), or `-`
    /// (stdout, the default)
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// Index of the container if service has multiple replicas (`export SERVICE`)
    #[arg(long, default_value_t = 1)]
    pub index: u32,
    /// Namespace of every object (k8s; a Namespace object is emitted too)
    #[arg(long)]
    pub namespace: Option<String>,
    /// Oldest Kubernetes version the manifests target (k8s)
    #[arg(long, default_value = "1.30")]
    pub k8s_version: String,
    /// Fail when a Compose field has no meaning for the target (they are always reported)
    #[arg(long)]
    pub strict: bool,
    /// Export bind mounts as hostPath volumes (k8s)
    #[arg(long)]
    pub allow_hostpath: bool,
    /// Service type of published ports (k8s)
    #[arg(long, value_enum, default_value_t = PublishKind::NodePort)]
    pub publish: PublishKind,
    /// Registry that locally built images are pushed to: their image becomes REGISTRY/NAME
    #[arg(long)]
    pub registry: Option<String>,
    /// Storage requested by each PersistentVolumeClaim (k8s)
    #[arg(long, default_value = "1Gi")]
    pub volume_size: String,
    /// Image of the init containers that wait for a dependency (k8s)
    #[arg(long, default_value = "busybox:1.36")]
    pub wait_image: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum PublishKind {
    #[default]
    #[value(name = "NodePort", alias = "nodeport")]
    NodePort,
    #[value(name = "LoadBalancer", alias = "loadbalancer")]
    LoadBalancer,
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

#[derive(Debug, Clone, Default, Args)]
pub struct AttachArgs {
    /// Override the key sequence for detaching from a container (default ctrl-p,ctrl-q)
    #[arg(long)]
    pub detach_keys: Option<String>,
    /// Index of the container if service has multiple replicas
    #[arg(long, default_value_t = 1)]
    pub index: u32,
    /// Do not attach STDIN
    #[arg(long)]
    pub no_stdin: bool,
    /// Proxy all received signals to the process (default true; a tty gets them as keys)
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub sig_proxy: Option<bool>,
    pub service: String,
}

#[derive(Debug, Clone, Default, Args)]
pub struct CreateArgs {
    /// Recreate containers even if their configuration and image haven't changed
    #[arg(long, conflicts_with = "no_recreate")]
    pub force_recreate: bool,
    /// If containers already exist, don't recreate them
    #[arg(long)]
    pub no_recreate: bool,
    /// Pull image before running ("always"|"missing"|"never")
    #[arg(long)]
    pub pull: Option<String>,
    /// Pull without printing progress information
    #[arg(long)]
    pub quiet_pull: bool,
    /// Remove containers for services not defined in the Compose file
    #[arg(long)]
    pub remove_orphans: bool,
    /// Scale SERVICE to NUM instances (SERVICE=NUM)
    #[arg(long)]
    pub scale: Vec<String>,
    /// Assume "yes" as answer to all prompts and run non-interactively
    #[arg(short = 'y', long)]
    pub yes: bool,
    /// Build images before starting containers
    #[arg(long, conflicts_with = "no_build")]
    pub build: bool,
    /// Don't build an image, even if it's missing
    #[arg(long)]
    pub no_build: bool,
    pub services: Vec<String>,
}
