//! The vision tier's error type and its one mapping to gRPC status codes.
//!
//! Request problems (unknown model, empty/oversized/undecodable image, bad wire dtype) become
//! INVALID_ARGUMENT with a message that starts with the offending field; model and device
//! failures become INTERNAL with a generic message, the details going to the log.

use std::path::PathBuf;

use paligemma_image::ImageError;
use paligemma_model::ModelError;
use paligemma_wire::WireError;
use tonic::Status;

/// Everything that can go wrong in the vision tier, at load time or per request.
#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    /// The request names a model this replica does not serve.
    #[error("model: unknown model `{requested}` (this replica serves `{served}`)")]
    UnknownModel { requested: String, served: String },
    /// The request carries no image bytes.
    #[error("image: empty (expected the bytes of a PNG, JPEG or WebP file)")]
    EmptyImage,
    /// The encoded image is larger than `--max-image-bytes`.
    #[error("image: {len} bytes exceeds this replica's limit of {limit} bytes")]
    ImageTooLarge { len: usize, limit: usize },
    /// The image could not be decoded or preprocessed.
    #[error("image: {0}")]
    Image(#[source] ImageError),
    /// `wire_dtype` is not a known `WireDtype` value.
    #[error("wire_dtype: {0} is not one of WIRE_DTYPE_F32, WIRE_DTYPE_BF16, WIRE_DTYPE_F16")]
    BadWireDtype(i32),
    /// The preprocessor configuration of the model directory is unreadable (load time).
    #[error("{path}: {source}")]
    Preprocessor {
        path: PathBuf,
        #[source]
        source: ImageError,
    },
    /// The preprocessor configuration of the model directory is not valid JSON (load time).
    #[error("{path}: invalid JSON: {message}")]
    PreprocessorJson { path: PathBuf, message: String },
    /// The preprocessor resizes to a size the vision tower does not take (load time).
    #[error(
        "preprocessor resizes to {width}x{height} but the vision tower takes {image_size}x{image_size}"
    )]
    PreprocessorSize {
        width: u32,
        height: u32,
        image_size: usize,
    },
    /// Loading or running the vision tower failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Packing the soft tokens for the wire failed (an internal shape inconsistency).
    #[error("packing soft tokens: {0}")]
    Wire(#[from] WireError),
    /// The replica is shutting down and takes no new work.
    #[error("the vision replica is shutting down")]
    ShuttingDown,
    /// `--max-waiting` images already wait for the encoder.
    #[error("vision queue full: {limit} images already wait for the encoder; retry later")]
    QueueFull { limit: usize },
    /// The request's deadline passed while it waited for the encoder.
    #[error("deadline passed while waiting for the vision encoder")]
    DeadlineExceeded,
    /// The batch worker threads could not be started (load time).
    #[error("starting the vision batch workers: {0}")]
    Threads(#[source] std::io::Error),
    /// The batched forward this request was part of failed (details in the log).
    #[error("vision encoder failed: {0}")]
    EncodeFailed(String),
}

impl From<candle_core::Error> for VisionError {
    fn from(e: candle_core::Error) -> Self {
        Self::Model(ModelError::Candle(e))
    }
}

impl From<VisionError> for Status {
    fn from(e: VisionError) -> Self {
        match e {
            VisionError::UnknownModel { .. }
            | VisionError::EmptyImage
            | VisionError::ImageTooLarge { .. }
            | VisionError::Image(_)
            | VisionError::BadWireDtype(_) => Status::invalid_argument(e.to_string()),
            VisionError::ShuttingDown => Status::unavailable(e.to_string()),
            VisionError::QueueFull { .. } => Status::resource_exhausted(e.to_string()),
            VisionError::DeadlineExceeded => Status::deadline_exceeded(e.to_string()),
            // The batcher already logged the cause with the batch it belongs to.
            VisionError::EncodeFailed(_) => {
                Status::internal("vision encoder failed; see the vision tier's log")
            }
            VisionError::Model(ModelError::Input(_)) => Status::invalid_argument(e.to_string()),
            VisionError::Model(
                ModelError::MissingFile { .. }
                | ModelError::BadFile { .. }
                | ModelError::Config { .. }
                | ModelError::MissingTensor { .. }
                | ModelError::ShapeMismatch { .. }
                | ModelError::Candle(_),
            )
            | VisionError::Wire(_)
            | VisionError::Preprocessor { .. }
            | VisionError::PreprocessorJson { .. }
            | VisionError::PreprocessorSize { .. }
            | VisionError::Threads(_) => {
                tracing::error!(error = %e, "vision encode failed");
                Status::internal("vision encoder failed; see the vision tier's log")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn request_problems_are_invalid_argument_naming_the_field() {
        let cases = [
            (
                VisionError::UnknownModel {
                    requested: "x".into(),
                    served: "y".into(),
                },
                "model: unknown model `x` (this replica serves `y`)",
            ),
            (VisionError::EmptyImage, "image: empty"),
            (
                VisionError::ImageTooLarge { len: 10, limit: 5 },
                "image: 10 bytes",
            ),
            (
                VisionError::Image(ImageError::UnknownFormat),
                "image: unknown",
            ),
            (VisionError::BadWireDtype(7), "wire_dtype: 7"),
        ];
        for (err, prefix) in cases {
            let status = Status::from(err);
            assert_eq!(status.code(), Code::InvalidArgument);
            assert!(status.message().starts_with(prefix), "{}", status.message());
        }
    }

    #[test]
    fn model_failures_are_internal_with_a_generic_message() {
        let err = VisionError::from(candle_core::Error::Msg("device exploded".into()));
        let status = Status::from(err);
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("exploded"));
    }

    #[test]
    fn load_and_deadline_problems_have_their_own_codes() {
        let full = Status::from(VisionError::QueueFull { limit: 3 });
        assert_eq!(full.code(), Code::ResourceExhausted);
        assert!(full.message().contains("3 images"), "{}", full.message());
        let late = Status::from(VisionError::DeadlineExceeded);
        assert_eq!(late.code(), Code::DeadlineExceeded);
        let failed = Status::from(VisionError::EncodeFailed("oom at layer 3".into()));
        assert_eq!(failed.code(), Code::Internal);
        assert!(!failed.message().contains("oom"));
    }

    #[test]
    fn shutting_down_is_unavailable() {
        assert_eq!(
            Status::from(VisionError::ShuttingDown).code(),
            Code::Unavailable
        );
    }
}
