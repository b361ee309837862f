//! The supervisor's control protocol: one JSON request line from the CLI, then a stream of
//! JSON event lines from the supervisor, ending with a `Done` line.

use serde::{Deserialize, Serialize};

use crate::state::ProjectSource;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpOpts {
    pub services: Vec<String>,
    pub scale: Vec<(String, u64)>,
    pub force_recreate: bool,
    pub no_recreate: bool,
    pub no_deps: bool,
    pub no_start: bool,
    pub remove_orphans: bool,
    pub wait: bool,
    pub wait_timeout: Option<u64>,
    pub timeout: Option<u64>,
    pub watch: bool,
    /// `-V`: recreated containers get new anonymous volumes instead of their predecessors'.
    #[serde(default)]
    pub renew_anon_volumes: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Ping,
    /// Load the project from `source` and converge to it.
    Up {
        source: ProjectSource,
        opts: UpOpts,
    },
    /// Stop and remove everything, then exit.
    Down {
        volumes: bool,
        remove_orphans: bool,
        timeout: Option<u64>,
    },
    Stop {
        services: Vec<String>,
        timeout: Option<u64>,
    },
    Start {
        services: Vec<String>,
    },
    Restart {
        services: Vec<String>,
        timeout: Option<u64>,
    },
    Kill {
        services: Vec<String>,
        signal: String,
    },
    Pause {
        services: Vec<String>,
    },
    Unpause {
        services: Vec<String>,
    },
    Scale {
        source: ProjectSource,
        scale: Vec<(String, u64)>,
    },
    /// A one-off container of `service` (`berth run`).
    Run {
        source: ProjectSource,
        opts: RunOpts,
    },
    /// Remove one container (one-offs after `run --rm`).
    Rm {
        name: String,
        /// Keep its anonymous volumes (`rm` without -v, `--remove-orphans`, as compose).
        #[serde(default)]
        keep_volumes: bool,
    },
    Rollback {
        source: ProjectSource,
        service: String,
    },
    /// Attach to a `tty: true` container's terminal: answered with one byte carrying a dup
    /// of its pty master, then its raw output until the pty closes (see `attach.rs`), or with
    /// a failed `Done`.
    Attach {
        name: String,
    },
    /// The CLI of one-off `name` opened its stdin FIFO (see `attach::take_stdin`).
    StdinOpened {
        name: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    /// A resource changed state: `kind` is network|volume|container, `state` as compose shows
    /// it (Creating, Created, Starting, Started, Healthy, Stopping, Stopped, Removing, Removed…).
    Progress {
        kind: String,
        name: String,
        state: String,
        detail: Option<String>,
    },
    /// A plain message for the user (warnings, recreate reasons).
    Message { text: String },
    Done {
        ok: bool,
        error: Option<String>,
        code: i32,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunOpts {
    pub service: String,
    pub command: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    pub env: Vec<String>,
    pub name: Option<String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub no_deps: bool,
    pub service_ports: bool,
    /// `-T`, or a stdin that is not a terminal: no tty even if the service has `tty: true`
    /// (compose run decides the tty itself).
    #[serde(default)]
    pub no_tty: bool,
    /// `run` on a terminal without `-T`: a tty and an open stdin for the one-off (the CLI
    /// attaches to it), whatever the service says.
    #[serde(default)]
    pub tty: bool,
    /// The CLI attaches to the one-off once it is started (`run` on a terminal without -d):
    /// its first output is held for that attach.
    #[serde(default)]
    pub attach: bool,
    /// No tty and not detached: the one-off's stdin is a FIFO the CLI writes its stdin to.
    #[serde(default)]
    pub stdin: bool,
    /// `--use-aliases`: the one-off answers in DNS under its service's name and network
    /// aliases too (compose gives it only its container name otherwise).
    #[serde(default)]
    pub use_aliases: bool,
}
