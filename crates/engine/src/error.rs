//! The engine's error type.

use paligemma_model::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A request field is out of range; names the field and the bound.
    #[error("invalid `{field}`: {message}")]
    InvalidRequest {
        field: &'static str,
        message: String,
    },
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl From<candle_core::Error> for EngineError {
    fn from(e: candle_core::Error) -> Self {
        Self::Model(ModelError::Candle(e))
    }
}

impl EngineError {
    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            field,
            message: message.into(),
        }
    }
}
