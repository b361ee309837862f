//! berth-runtime: runs OCI bundles (namespaces, pivot_root, mounts, cgroups, capabilities,
//! seccomp, user, rlimits, stdio) and stores images (pull, load, verify, unpack, snapshots).
//!
//! The process-creating code is synchronous and must run in a single-threaded process: the
//! `berth` binary reaches it by re-exec (`berth __runtime …`), the `berth-runtime` binary
//! directly. Nothing here knows about Compose.
//!
//! In-process API (no fork): [`state()`], [`kill`], [`delete`], [`list`], [`pids`], [`stats`],
//! [`pause`], [`resume`], [`start`]. Spec helpers for `src/`: [`seccomp::docker_default`],
//! [`capabilities::DOCKER_DEFAULT_CAPS`], [`rootfs::DOCKER_MASKED_PATHS`],
//! [`rootfs::DOCKER_READONLY_PATHS`], [`user::resolve`]; [`exit_status_to_code`].
//!
//! # How a container is made (`container::create`)
//! 1. The CLI re-executes itself from a read-only bind of its binary in a private mount
//!    namespace and becomes non-dumpable (CVE-2019-5736).
//! 2. State dir `<root>/<id>/` (atomic mkdir), a copy of the spec, the exec fifo; the cgroup
//!    (`linux.cgroupsPath`, every v1 hierarchy or the v2 tree) is created and limited.
//! 3. `unshare(CLONE_NEWPID)` (or `setns` to a pid namespace path), then fork: the child is
//!    pid 1. The parent writes the child into the cgroup and says "go".
//! 4. The init: closes inherited fds, `setsid`, `setns` to namespace paths (network first),
//!    `unshare` the new ones (mount, uts, ipc, net, cgroup), hostname, rlimits,
//!    oom_score_adj, then the rootfs: `/` rprivate, rootfs bind, spec mounts resolved with
//!    `openat2(RESOLVE_IN_ROOT)`, /dev nodes and links, `pivot_root(".", ".")`, console,
//!    sysctls, read-only and masked paths, read-only root, umask, cwd, PATH lookup, groups,
//!    uid/gid, seccomp (before the capability drop when NNP is off), capabilities, seccomp
//!    (when NNP is on), "ready" to the parent.
//! 5. The parent records `state.json` and the pid file and exits; the init blocks opening the
//!    exec fifo until `start` reads it, marks every fd CLOEXEC and execs (or, with the
//!    `berth.init=true` annotation, stays pid 1 as a reaping, signal-forwarding init).

pub mod capabilities;
pub mod cgroups;
pub mod cli;
pub mod container;
pub mod copy;
pub mod error;
pub mod image;
pub mod mnttmpl;
pub mod process;
pub mod rootfs;
pub mod seccomp;
mod selfclone;
pub mod serve;
pub mod state;
pub mod trace;
mod tty;
pub mod user;
pub mod warm;

pub use container::{
    delete, kill, kill_number, list, parse_signal, parse_signal_number, pause, pids, resume, start,
    state, stats, INIT_ANNOTATION,
};
pub use error::{Result, RuntimeError};
pub use process::{exit_status_to_code, raw_status_to_code};
pub use state::{State, Status};
