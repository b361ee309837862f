use super::reference::ReferenceError;

/// Everything the image store can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("unsafe layer entry {path:?}: {why}")]
    UnsafeEntry { path: String, why: &'static str },
    #[error("invalid image archive {path}: {why}")]
    Archive { path: String, why: String },
    #[error("invalid {what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("image {0} not found")]
    NotFound(String),
    #[error("unsupported {what}: {value}")]
    Unsupported { what: &'static str, value: String },
    #[error("no image for platform {platform} in {reference} (available: {available})")]
    NoPlatform {
        reference: String,
        platform: String,
        available: String,
    },
    #[error("registry {registry}: {message}")]
    Registry { registry: String, message: String },
    #[error("registry {registry}: authentication failed: {message}")]
    Auth { registry: String, message: String },
    #[error("{url}: HTTP {status}: {message}")]
    Http {
        url: String,
        status: u16,
        message: String,
    },
    #[error("conflict: unable to remove {reference}: container {container} is using it")]
    InUse {
        reference: String,
        container: String,
    },
    #[error("{what}: {source}")]
    Mount {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, ImageError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, ImageError> {
        self.map_err(|source| ImageError::Io {
            context: context(),
            source,
        })
    }
}

impl<T> IoContext<T> for rustix::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, ImageError> {
        self.map_err(|e| ImageError::Io {
            context: context(),
            source: e.into(),
        })
    }
}
