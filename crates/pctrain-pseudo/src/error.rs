//! Errors of the pseudo-code pipeline. Those of the records it reads are the data crate's.

use std::path::PathBuf;

/// Result alias for the pseudo-code crate.
pub type Result<T> = std::result::Result<T, PseudoError>;

/// What stops a pseudo-code run (a record's own failure is recorded, not raised).
#[derive(Debug, thiserror::Error)]
pub enum PseudoError {
    /// A record, or the data files, could not be read.
    #[error(transparent)]
    Data(#[from] pctrain_data::DataError),
    /// Data named as a hub dataset could not be fetched.
    #[error(transparent)]
    Hub(#[from] pctrain_hub::HubError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A prompt file that is malformed or missing a value.
    #[error("prompt {path}: {message}")]
    Prompt { path: String, message: String },
    /// The teacher could not be used at all.
    #[error("teacher {url}: {message}")]
    Teacher { url: String, message: String },
}

impl PseudoError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        PseudoError::Io {
            path: path.into(),
            source,
        }
    }
}
