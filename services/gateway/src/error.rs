//! The gateway's errors and their one mapping to gRPC statuses.
//!
//! [`ValidationError`] has one variant per request rule, naming the field and the bound;
//! [`GatewayError`] adds what can go wrong while sequencing the tiers. `From<GatewayError> for
//! Status` is the only place a code is chosen (exhaustive, no `_` arm). A tier's own status is
//! forwarded with its code, message and details unchanged; invalid requests carry a
//! `google.rpc.BadRequest` with one field violation per broken rule.

use paligemma_segment::SegmentError;
use paligemma_text::{DetectionError, TextError};
use prost::Message;
use prost::bytes::Bytes;
use tonic::{Code, Status};

use crate::replicas::Tier;

/// A request field that breaks a rule. `Display` starts with the field's name.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValidationError {
    #[error("image: required (the bytes of a PNG, JPEG or WebP file)")]
    EmptyImage,
    #[error("image: {size} bytes exceeds the limit of {limit} bytes")]
    ImageTooLarge { size: usize, limit: usize },
    #[error("model: unknown model `{requested}` (this gateway serves `{served}`)")]
    UnknownModel { requested: String, served: String },
    #[error("prompt: {size} bytes exceeds the limit of {limit} bytes")]
    PromptTooLarge { size: usize, limit: usize },
    #[error("prompt: must not contain `<image>` (the image is sent in `image`)")]
    PromptHasImageToken,
    #[error("max_new_tokens: {requested} exceeds the limit of {limit}")]
    MaxNewTokensOverLimit { requested: u32, limit: u32 },
    #[error(
        "max_new_tokens: the prompt ({prompt_tokens} tokens, image tokens included) plus \
         max_new_tokens ({max_new_tokens}) exceeds the model's {context} positions"
    )]
    ContextOverflow {
        prompt_tokens: usize,
        max_new_tokens: u32,
        context: usize,
    },
    #[error("sampling.temperature: {0} is not a finite number >= 0")]
    Temperature(f32),
    #[error("sampling.top_p: {0} is outside [0, 1]")]
    TopP(f32),
    #[error("wire_dtype: unknown value {0}")]
    WireDtype(i32),
    /// Detect/Segment: the label list cannot form a task prompt (its `Display` names
    /// `labels`).
    #[error("{0}")]
    Labels(DetectionError),
    #[error("labels: the task prompt is {size} bytes, above the limit of {limit} bytes")]
    LabelsTooLarge { size: usize, limit: usize },
    #[error("box_convention: unknown value {0}")]
    BoxConvention(i32),
    /// The vision tier accepted the image but its size cannot be read from the header.
    #[error("image: cannot read the image size from its header: {0}")]
    ImageHeader(String),
}

impl ValidationError {
    /// The request field at fault, as spelled in the proto (`sampling.top_p`).
    pub fn field(&self) -> &'static str {
        match self {
            Self::EmptyImage | Self::ImageTooLarge { .. } => "image",
            Self::UnknownModel { .. } => "model",
            Self::PromptTooLarge { .. } | Self::PromptHasImageToken => "prompt",
            Self::MaxNewTokensOverLimit { .. } | Self::ContextOverflow { .. } => "max_new_tokens",
            Self::Temperature(_) => "sampling.temperature",
            Self::TopP(_) => "sampling.top_p",
            Self::WireDtype(_) => "wire_dtype",
            Self::Labels(_) | Self::LabelsTooLarge { .. } => "labels",
            Self::BoxConvention(_) => "box_convention",
            Self::ImageHeader(_) => "image",
        }
    }
}

/// Everything a gateway RPC can fail with.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// One or more fields break a rule (never empty).
    #[error("invalid request: {}", join(.0))]
    Invalid(Vec<ValidationError>),
    /// `ModelInfo` for a model this gateway does not serve.
    #[error("model: unknown model `{requested}` (this gateway serves `{served}`)")]
    ModelNotFound { requested: String, served: String },
    /// No address of the tier resolved (yet).
    #[error("{tier} tier unavailable: no replica address resolved from {targets}")]
    NoReplicas { tier: Tier, targets: String },
    /// Every replica failed with a transport error or UNAVAILABLE.
    #[error("{tier} tier unavailable: {tried} {} tried, last error: {last}", noun(*.tried))]
    TierUnavailable {
        tier: Tier,
        tried: usize,
        last: String,
    },
    /// A replica answered with an error status; forwarded unchanged.
    #[error("{tier} tier: {}", .status.message())]
    Peer { tier: Tier, status: Status },
    /// The connection to a replica broke after generation started (not retryable: tokens
    /// were already sent to the client).
    #[error("{tier} tier connection lost mid-stream: {message}")]
    Lost { tier: Tier, message: String },
    /// A replica's stream broke the protocol (e.g. ended without `DecodeDone`).
    #[error("{tier} tier broke the protocol: {what}")]
    Protocol { tier: Tier, what: String },
    /// The tokenizer failed on a prompt or on generated ids.
    #[error(transparent)]
    Text(#[from] TextError),
    /// Segment on a gateway started without `--vae`.
    #[error("segment needs a VQ-VAE checkpoint: start the gateway with --vae DIR/vae-oid.npz")]
    NoMaskDecoder,
    /// The VQ-VAE mask decoder failed on a valid object.
    #[error("mask decoding failed: {0}")]
    Mask(SegmentError),
}

fn join(errors: &[ValidationError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn noun(n: usize) -> &'static str {
    if n == 1 { "replica" } else { "replicas" }
}

impl From<GatewayError> for Status {
    fn from(err: GatewayError) -> Self {
        let message = err.to_string();
        match err {
            GatewayError::Invalid(errors) => {
                let details = bad_request(&errors, &message);
                Status::with_details(Code::InvalidArgument, message, details)
            }
            GatewayError::ModelNotFound { .. } => Status::not_found(message),
            GatewayError::NoReplicas { .. }
            | GatewayError::TierUnavailable { .. }
            | GatewayError::Lost { .. } => Status::unavailable(message),
            GatewayError::Peer { status, .. } => Status::with_details(
                status.code(),
                status.message(),
                Bytes::copy_from_slice(status.details()),
            ),
            GatewayError::Protocol { .. } => Status::internal(message),
            GatewayError::Text(_) => Status::internal("tokenizer failed"),
            GatewayError::NoMaskDecoder => Status::failed_precondition(message),
            GatewayError::Mask(_) => Status::internal("mask decoding failed"),
        }
    }
}

/// `google.rpc.Status` (google/rpc/status.proto).
#[derive(Clone, PartialEq, Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

/// `google.rpc.BadRequest` (google/rpc/error_details.proto).
#[derive(Clone, PartialEq, Message)]
struct BadRequest {
    #[prost(message, repeated, tag = "1")]
    field_violations: Vec<FieldViolation>,
}

#[derive(Clone, PartialEq, Message)]
struct FieldViolation {
    #[prost(string, tag = "1")]
    field: String,
    #[prost(string, tag = "2")]
    description: String,
}

const BAD_REQUEST_TYPE_URL: &str = "type.googleapis.com/google.rpc.BadRequest";

fn bad_request(errors: &[ValidationError], message: &str) -> Bytes {
    let field_violations = errors
        .iter()
        .map(|e| FieldViolation {
            field: e.field().to_string(),
            description: e.to_string(),
        })
        .collect();
    let detail = prost_types::Any {
        type_url: BAD_REQUEST_TYPE_URL.to_string(),
        value: BadRequest { field_violations }.encode_to_vec(),
    };
    RpcStatus {
        code: Code::InvalidArgument as i32,
        message: message.to_string(),
        details: vec![detail],
    }
    .encode_to_vec()
    .into()
}

/// The fields named by the `google.rpc.BadRequest` details of `status` (empty if none), for
/// clients and tests.
pub fn bad_request_fields(status: &Status) -> Vec<String> {
    let Ok(rpc) = RpcStatus::decode(status.details()) else {
        return Vec::new();
    };
    rpc.details
        .iter()
        .filter(|any| any.type_url == BAD_REQUEST_TYPE_URL)
        .filter_map(|any| BadRequest::decode(any.value.as_slice()).ok())
        .flat_map(|br| br.field_violations)
        .map(|v| v.field)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_requests_carry_one_field_violation_per_rule() {
        let status = Status::from(GatewayError::Invalid(vec![
            ValidationError::EmptyImage,
            ValidationError::TopP(2.0),
        ]));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("sampling.top_p: 2 is outside"));
        assert_eq!(bad_request_fields(&status), ["image", "sampling.top_p"]);
    }

    #[test]
    fn a_peer_status_keeps_its_code_message_and_details() {
        let peer = Status::with_details(Code::FailedPrecondition, "fingerprint", Bytes::from("d"));
        let status = Status::from(GatewayError::Peer {
            tier: Tier::Decoder,
            status: peer,
        });
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(status.message(), "fingerprint");
        assert_eq!(status.details(), b"d");
    }

    #[test]
    fn tier_unavailable_counts_replicas_in_words() {
        let one = GatewayError::TierUnavailable {
            tier: Tier::Vision,
            tried: 1,
            last: "refused".into(),
        };
        assert_eq!(
            one.to_string(),
            "vision tier unavailable: 1 replica tried, last error: refused"
        );
    }

    #[test]
    fn segment_without_a_vae_is_a_failed_precondition_naming_the_flag() {
        let status = Status::from(GatewayError::NoMaskDecoder);
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(status.message().contains("--vae"), "{}", status.message());
    }

    #[test]
    fn bad_labels_name_the_labels_field() {
        let status = Status::from(GatewayError::Invalid(vec![ValidationError::Labels(
            DetectionError::EmptyLabelList { task: "detect" },
        )]));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(bad_request_fields(&status), ["labels"]);
        assert!(status.message().contains("labels"), "{}", status.message());
    }
}
