//! The library's one error type: every failure names the path, shape or value at fault.

use std::path::{Path, PathBuf};

/// Errors raised by the covf library. `is_user_error` tells the CLI which ones are bad input (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum CovfError {
    #[error("{path}: {source}{}", io_hint(source))]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    Data { path: PathBuf, msg: String },
    #[error("invalid {what}: {msg}")]
    Spec { what: String, msg: String },
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },
    #[error("run {name}: {msg}")]
    Run { name: String, msg: String },
    #[error("device: {0}")]
    Device(String),
    #[error("training diverged: {0}")]
    Diverged(String),
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("table error: {0}")]
    Polars(#[from] polars::error::PolarsError),
    #[error("json error: {0}")]
    Json(#[from] serde_json::Error),
}

pub type Result<T> = std::result::Result<T, CovfError>;

/// How to fix the I/O failures a user can fix. Files are written to a temporary name and renamed, so a
/// failed write leaves the previous version (and every earlier checkpoint) intact.
fn io_hint(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::StorageFull | K::FileTooLarge | K::QuotaExceeded => {
            " (nothing was written and earlier files are intact: free space, or write to another \
             --checkpoints / output directory, then rerun; training continues with --resume)"
        }
        K::PermissionDenied => " (check the permissions of that file and its directory)",
        _ => "",
    }
}

impl CovfError {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        CovfError::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub fn data(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        CovfError::Data {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }

    pub fn spec(what: impl Into<String>, msg: impl Into<String>) -> Self {
        CovfError::Spec {
            what: what.into(),
            msg: msg.into(),
        }
    }

    pub fn checkpoint(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        CovfError::Checkpoint {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }

    pub fn run(name: impl Into<String>, msg: impl Into<String>) -> Self {
        CovfError::Run {
            name: name.into(),
            msg: msg.into(),
        }
    }

    /// Bad input from the user (a path, a file, a flag value): the CLI exits with code 2.
    pub fn is_user_error(&self) -> bool {
        match self {
            CovfError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::PermissionDenied
                    | std::io::ErrorKind::InvalidData
                    | std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::StorageFull
                    | std::io::ErrorKind::FileTooLarge
                    | std::io::ErrorKind::QuotaExceeded
            ),
            CovfError::Diverged(_)
            | CovfError::Data { .. }
            | CovfError::Spec { .. }
            | CovfError::Checkpoint { .. }
            | CovfError::Run { .. }
            | CovfError::Device(_) => true,
            _ => false,
        }
    }
}
