//! The decoder tier's error type and its one mapping to gRPC status codes.
//!
//! Malformed soft-token streams keep the code `paligemma_wire` chose (INVALID_ARGUMENT,
//! FAILED_PRECONDITION for foreign weights, DATA_LOSS for lost bytes); protocol misuse and bad
//! request fields are INVALID_ARGUMENT with a message that starts with the field; a failing
//! client stream keeps its own code; model and device failures are INTERNAL with a generic
//! message, the details going to the log.

use std::sync::Arc;

use paligemma_engine::{EngineError, SubmitError};
use paligemma_model::ModelError;
use paligemma_wire::WireError;
use tonic::Status;

/// Everything that can go wrong in a `Generate` call.
#[derive(Debug, thiserror::Error)]
pub enum DecoderError {
    /// The soft-token stream is malformed (shape, dtype, fingerprint, order, length, CRC).
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The input stream ended before its `DecodeRequest`.
    #[error(
        "request: the stream ended without a DecodeRequest (send the soft-token chunks, then one DecodeRequest)"
    )]
    MissingRequest,
    /// A second `DecodeRequest` arrived.
    #[error("request: a second DecodeRequest (send exactly one, after the soft tokens)")]
    SecondRequest,
    /// A soft-token chunk arrived after the `DecodeRequest`.
    #[error("soft_tokens: a chunk after the DecodeRequest (the request must be the last message)")]
    ChunkAfterRequest,
    /// A `GenerateInput` with neither field set.
    #[error("kind: a GenerateInput with neither soft_tokens nor request set")]
    EmptyMessage,
    /// A `DecodeRequest` field is out of range; `field` is its proto name.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// The client's input stream failed (it went away, or its deadline passed).
    #[error("client stream: {0}")]
    Client(Status),
    /// The generation loop refused the request or the model failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The engine refused the request at admission (too large for the KV cache, queue full,
    /// engine stopped) or found a field out of range.
    #[error(transparent)]
    Submit(#[from] SubmitError),
    /// The batched step computing this request failed.
    #[error("engine step failed: {0}")]
    Step(Arc<EngineError>),
    /// A tensor operation outside the generation loop failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The replica is shutting down and takes no new work.
    #[error("the decoder replica is shutting down")]
    ShuttingDown,
}

impl DecoderError {
    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            message: message.into(),
        }
    }
}

impl From<candle_core::Error> for DecoderError {
    fn from(e: candle_core::Error) -> Self {
        Self::Model(ModelError::Candle(e))
    }
}

impl From<DecoderError> for Status {
    fn from(e: DecoderError) -> Self {
        match e {
            DecoderError::Wire(wire) => wire.into(),
            DecoderError::MissingRequest
            | DecoderError::SecondRequest
            | DecoderError::ChunkAfterRequest
            | DecoderError::EmptyMessage
            | DecoderError::Invalid { .. } => Status::invalid_argument(e.to_string()),
            DecoderError::Client(status) => status,
            DecoderError::ShuttingDown => Status::unavailable(e.to_string()),
            DecoderError::Submit(SubmitError::Invalid(EngineError::InvalidRequest {
                field,
                message,
            })) => Status::invalid_argument(format!("{field}: {message}")),
            DecoderError::Submit(SubmitError::Invalid(EngineError::Model(model))) => {
                model_status(model)
            }
            DecoderError::Submit(
                ref too_big @ (SubmitError::TooLarge { .. } | SubmitError::QueueFull { .. }),
            ) => Status::resource_exhausted(too_big.to_string()),
            DecoderError::Submit(SubmitError::ShutDown) => Status::unavailable(e.to_string()),
            DecoderError::Step(ref step) => {
                tracing::error!(error = %step, "engine step failed");
                Status::internal("decoder failed; see the decoder tier's log")
            }
            DecoderError::Engine(EngineError::InvalidRequest { field, message }) => {
                Status::invalid_argument(format!("{field}: {message}"))
            }
            DecoderError::Engine(EngineError::Model(model)) | DecoderError::Model(model) => {
                model_status(model)
            }
        }
    }
}

/// Input problems the model itself detected are the caller's; everything else is ours.
fn model_status(e: ModelError) -> Status {
    match e {
        ModelError::Input(_) => Status::invalid_argument(e.to_string()),
        ModelError::MissingFile { .. }
        | ModelError::BadFile { .. }
        | ModelError::Config { .. }
        | ModelError::MissingTensor { .. }
        | ModelError::ShapeMismatch { .. }
        | ModelError::Candle(_) => {
            tracing::error!(error = %e, "generation failed");
            Status::internal("decoder failed; see the decoder tier's log")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn wire_errors_keep_their_code() {
        let fingerprint = WireError::FingerprintMismatch {
            expected: "a".into(),
            got: "b".into(),
        };
        assert_eq!(
            Status::from(DecoderError::from(fingerprint)).code(),
            Code::FailedPrecondition
        );
        let crc = WireError::Checksum {
            expected: 1,
            got: 2,
        };
        assert_eq!(Status::from(DecoderError::from(crc)).code(), Code::DataLoss);
    }

    #[test]
    fn protocol_misuse_and_bad_fields_are_invalid_argument_naming_the_field() {
        let cases = [
            (DecoderError::MissingRequest, "request: "),
            (DecoderError::SecondRequest, "request: "),
            (DecoderError::ChunkAfterRequest, "soft_tokens: "),
            (
                DecoderError::invalid("top_p", "2 is too big"),
                "top_p: 2 is too big",
            ),
            (
                DecoderError::Engine(EngineError::InvalidRequest {
                    field: "temperature",
                    message: "bad".into(),
                }),
                "temperature: bad",
            ),
            (
                DecoderError::Model(ModelError::Input("too many images".into())),
                "invalid input: too many images",
            ),
        ];
        for (err, prefix) in cases {
            let status = Status::from(err);
            assert_eq!(status.code(), Code::InvalidArgument);
            assert!(status.message().starts_with(prefix), "{}", status.message());
        }
    }

    #[test]
    fn cache_and_queue_limits_are_resource_exhausted_naming_the_sizes() {
        let too_big = DecoderError::Submit(SubmitError::TooLarge {
            tokens: 120,
            blocks_needed: 8,
            block_size: 16,
            capacity_blocks: 4,
            capacity_tokens: 64,
        });
        let status = Status::from(too_big);
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(
            status.message().contains("120 tokens"),
            "{}",
            status.message()
        );
        assert!(
            status.message().contains("4 blocks"),
            "{}",
            status.message()
        );
        let full = Status::from(DecoderError::Submit(SubmitError::QueueFull {
            max_waiting: 3,
        }));
        assert_eq!(full.code(), Code::ResourceExhausted);
        assert!(full.message().contains("--max-waiting"));
        let gone = Status::from(DecoderError::Submit(SubmitError::ShutDown));
        assert_eq!(gone.code(), Code::Unavailable);
    }

    #[test]
    fn a_failing_client_stream_keeps_its_code() {
        let err = DecoderError::Client(Status::cancelled("gone"));
        assert_eq!(Status::from(err).code(), Code::Cancelled);
    }

    #[test]
    fn model_failures_are_internal_with_a_generic_message() {
        let err = DecoderError::from(candle_core::Error::Msg("CUDA_ERROR_OUT_OF_MEMORY".into()));
        let status = Status::from(err);
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("CUDA"));
        assert_eq!(
            Status::from(DecoderError::ShuttingDown).code(),
            Code::Unavailable
        );
    }
}
