//! Errors of the data pipeline. Every error that comes from a file names the file and, where there
//! is one, the 1-based line.

use std::path::PathBuf;

/// Result alias for the data crate.
pub type Result<T> = std::result::Result<T, DataError>;

/// What can go wrong between a data file and a packed batch.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file whose contents are not what they should be.
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    /// A record is malformed: bad JSON, a missing or mistyped field, an unknown role, bad UTF-8.
    #[error("{path}:{line}: {message}")]
    Record {
        path: PathBuf,
        line: u64,
        message: String,
    },
    /// A `--mix` specification that cannot be parsed.
    #[error("invalid mix {spec:?}: {message}")]
    Mix { spec: String, message: String },
    /// An unknown built-in template name.
    #[error("unknown template {name:?}; built-in templates are {available}, or give `auto`, `hf` or a .jinja file")]
    UnknownTemplate { name: String, available: String },
    /// A chat template that does not compile or fails while rendering.
    #[error("chat template {template}: {message}")]
    Template { template: String, message: String },
    /// A sample whose rendering cannot be labelled (for example its assistant text is not in the
    /// rendered text).
    #[error("sample {id}: {message}")]
    Sample { id: String, message: String },
    /// A tokenizer that cannot be loaded or used.
    #[error("tokenizer {source_name}: {message}")]
    Tokenizer {
        source_name: String,
        message: String,
    },
    /// A download from the Hugging Face hub failed.
    #[error(transparent)]
    Hub(#[from] pctrain_hub::HubError),
    /// A setting outside its valid range.
    #[error("{0}")]
    Config(String),
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn template(template: &str, message: impl std::fmt::Display) -> Self {
        DataError::Template {
            template: template.to_string(),
            message: message.to_string(),
        }
    }

    pub(crate) fn tokenizer(
        source_name: impl std::fmt::Display,
        message: impl std::fmt::Display,
    ) -> Self {
        DataError::Tokenizer {
            source_name: source_name.to_string(),
            message: message.to_string(),
        }
    }

    /// Whether `--skip-invalid` may skip the record that raised this error.
    pub fn is_invalid_record(&self) -> bool {
        matches!(self, DataError::Record { .. })
    }
}
