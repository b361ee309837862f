//! berth-runtime: runs OCI bundles (namespaces, pivot_root, mounts, cgroups, capabilities,
//! seccomp, user, rlimits, stdio) and stores images (pull, load, verify, unpack, snapshots).
//!
//! The process-creating code is synchronous and must run in a single-threaded process: the
//! `berth` binary reaches it by re-exec (`berth __runtime …`), the `berth-runtime` binary
//! directly. Nothing here knows about Compose.

pub mod cli;
