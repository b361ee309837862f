//! berth-runtime: runs OCI bundles (namespaces, pivot_root, mounts, cgroups, capabilities,
//! seccomp, user, rlimits, stdio) and stores images (pull, load, verify, unpack, snapshots).
//!
//! The process-creating code is synchronous and must run in a single-threaded process: the
//! `berth` binary reaches it by re-exec (`berth __runtime …`), the `berth-runtime` binary
//! directly. Nothing here knows about Compose.
//!
//! In-process API (no fork): [`state`], [`kill`], [`delete`], [`list`], [`pids`], [`stats`],
//! [`pause`], [`resume`], [`start`]. Spec helpers for `src/`: [`seccomp::docker_default`],
//! [`capabilities::DOCKER_DEFAULT_CAPS`], [`rootfs::DOCKER_MASKED_PATHS`],
//! [`rootfs::DOCKER_READONLY_PATHS`], [`user::resolve`]; [`exit_status_to_code`].

pub mod capabilities;
pub mod cgroups;
pub mod cli;
pub mod container;
pub mod error;
pub mod image;
pub mod process;
pub mod rootfs;
pub mod seccomp;
mod selfclone;
pub mod state;
mod tty;
pub mod user;

pub use container::{
    delete, kill, list, parse_signal, pause, pids, resume, start, state, stats, INIT_ANNOTATION,
};
pub use error::{Result, RuntimeError};
pub use process::{exit_status_to_code, raw_status_to_code};
pub use state::{State, Status};
