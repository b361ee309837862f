//! Loader errors: every error tied to the file says where (`file:line:col: key.path: message`).

use super::yaml::Mark;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoadError {
    /// YAML syntax (no key path yet).
    #[error("{file}:{line}:{col}: {message}")]
    Yaml {
        file: String,
        line: usize,
        col: usize,
        message: String,
    },
    /// A problem with a value in a file: unknown key, wrong type, bad syntax, undefined reference.
    #[error("{file}:{line}:{col}: {path}: {message}")]
    At {
        file: String,
        line: usize,
        col: usize,
        path: String,
        message: String,
    },
    /// A file that cannot be read.
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    /// `depends_on` cycle: `dependency cycle detected: a -> b -> a`.
    #[error("dependency cycle detected: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    /// Project-level problems without a position (no file found, bad project name, …).
    #[error("{0}")]
    Project(String),
}

impl LoadError {
    pub fn at(mark: &Mark, path: impl Into<String>, message: impl Into<String>) -> LoadError {
        if mark.line == 0 {
            let path = path.into();
            let message = message.into();
            return LoadError::Project(if path.is_empty() {
                message
            } else {
                format!("{path}: {message}")
            });
        }
        LoadError::At {
            file: mark.file.to_string(),
            line: mark.line,
            col: mark.col,
            path: path.into(),
            message: message.into(),
        }
    }
    pub fn io(path: &std::path::Path, e: &std::io::Error) -> LoadError {
        let message = if e.kind() == std::io::ErrorKind::NotFound {
            "no such file or directory".to_string()
        } else {
            e.to_string()
        };
        LoadError::Io {
            path: path.display().to_string(),
            message,
        }
    }
    /// The key path, if the error has one.
    pub fn path(&self) -> Option<&str> {
        match self {
            LoadError::At { path, .. } => Some(path),
            _ => None,
        }
    }
    /// The (line, col), if the error has a position.
    pub fn position(&self) -> Option<(usize, usize)> {
        match self {
            LoadError::At { line, col, .. } | LoadError::Yaml { line, col, .. } => {
                Some((*line, *col))
            }
            _ => None,
        }
    }
}
