//! The text crate's error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// `tokenizer.json` could not be read or parsed.
    #[error("{path}: cannot load tokenizer: {message}")]
    Load { path: PathBuf, message: String },
    /// The tokenizer lacks a token PaliGemma needs.
    #[error("tokenizer has no `{0}` token")]
    MissingToken(&'static str),
    /// The prompt text cannot be used as given.
    #[error("prompt: {0}")]
    Prompt(String),
    /// Encoding or decoding failed inside the tokenizer.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}
