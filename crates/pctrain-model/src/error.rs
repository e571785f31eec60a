//! Errors of the model crate.

use std::path::PathBuf;

/// Result alias for the model crate.
pub type Result<T> = std::result::Result<T, ModelError>;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A `config.json` that is malformed, incomplete or describes an unsupported model.
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    /// A weight file that is missing, refused, or holds a missing or misshapen tensor.
    #[error("{path}: {message}")]
    Weights { path: PathBuf, message: String },
    /// Inputs whose shapes do not fit the model.
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}
