//! The runtime's error type: structured variants, no catch-all strings for kernel calls.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{op}: {source}")]
    Sys {
        op: String,
        #[source]
        source: nix::Error,
    },
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("container {0} already exists")]
    Exists(String),
    #[error("invalid container id {0:?}")]
    InvalidId(String),
    #[error("container {id} is {status}, {wanted}")]
    BadStatus {
        id: String,
        status: String,
        wanted: &'static str,
    },
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    #[error("reading spec {path}: {source}")]
    Spec {
        path: PathBuf,
        #[source]
        source: oci_spec::OciSpecError,
    },
    #[error("state {path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("unsafe rootfs: {0}")]
    UnsafeRootfs(String),
    #[error("unknown signal {0:?}")]
    BadSignal(String),
    #[error("cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("seccomp: {0}")]
    Seccomp(String),
    #[error("capabilities: {0}")]
    Caps(String),
    #[error("container init: {0}")]
    Init(String),
    #[error("user {0:?} not found in the container's /etc/passwd")]
    UnknownUser(String),
    #[error("group {0:?} not found in the container's /etc/group")]
    UnknownGroup(String),
    #[error("{0}: executable file not found in $PATH")]
    NotFoundInPath(String),
    #[error("usage: {0}")]
    Usage(String),
    #[error("{0}")]
    Copy(String),
}

pub type Result<T> = std::result::Result<T, RuntimeError>;

pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let path = path.into();
    move |source| RuntimeError::Io { op, path, source }
}

pub(crate) fn sys_err(op: impl Into<String>) -> impl FnOnce(nix::Error) -> RuntimeError {
    let op = op.into();
    move |source| RuntimeError::Sys { op, source }
}
