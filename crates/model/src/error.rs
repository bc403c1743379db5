//! The model crate's error type: every variant names the file, field or tensor at fault.

use std::path::PathBuf;

/// Errors from loading or running a PaliGemma checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file the model directory must contain is absent.
    #[error("model directory {dir}: missing {file} ({why})")]
    MissingFile {
        dir: PathBuf,
        file: &'static str,
        why: &'static str,
    },
    /// A file exists but could not be read or parsed.
    #[error("{path}: {message}")]
    BadFile { path: PathBuf, message: String },
    /// `config.json` parsed but describes something we cannot run.
    #[error("config.json: field `{field}`: {message}")]
    Config { field: String, message: String },
    /// A tensor the config requires is absent from every weight file.
    #[error(
        "checkpoint has no tensor `{name}` (looked for it under the legacy and the newer Hugging Face names)"
    )]
    MissingTensor { name: String },
    /// A tensor's shape disagrees with what config.json implies.
    #[error(
        "tensor `{name}` has shape {found:?} in the checkpoint but config.json implies {expected:?}"
    )]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// The request itself is invalid (bad token ids, too long, wrong feature count...).
    #[error("invalid input: {0}")]
    Input(String),
    /// A tensor operation failed (device error, out of memory, internal bug).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    pub(crate) fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Config {
            field: field.into(),
            message: message.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, ModelError>;
