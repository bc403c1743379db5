//! Everything that can be wrong with a soft-token stream, each mapped to one gRPC code.

use tonic::{Code, Status};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("soft-token stream: payload chunk before the header")]
    MissingHeader,
    #[error("soft-token stream: a second header")]
    DuplicateHeader,
    #[error("soft-token stream ended before its header")]
    Empty,
    #[error("soft-token header: shape {got:?} is invalid: {why}")]
    BadShape { got: Vec<u64>, why: String },
    #[error("soft-token header: dtype {got} is not one of f32, bf16, f16")]
    BadDtype { got: i32 },
    #[error(
        "soft-token header: weights fingerprint `{got}` does not match this decoder's vision weights `{expected}`"
    )]
    FingerprintMismatch { expected: String, got: String },
    #[error("soft-token header: total_bytes {got} but shape and dtype imply {expected}")]
    ByteCountMismatch { expected: u64, got: u64 },
    #[error("soft-token header: total_bytes {got} exceeds this receiver's limit of {limit}")]
    TooLarge { limit: u64, got: u64 },
    #[error(
        "soft-token stream: chunk {got} arrived where chunk {expected} was due (chunks must be in order)"
    )]
    ChunkOutOfOrder { expected: u32, got: u32 },
    #[error(
        "soft-token stream: chunk {index} has {len} bytes, more than the {limit}-byte chunk limit"
    )]
    ChunkTooLarge {
        index: u32,
        len: usize,
        limit: usize,
    },
    #[error("soft-token stream: payload exceeds the {expected} bytes announced in the header")]
    Overflow { expected: u64 },
    #[error(
        "soft-token stream truncated: {got} of {expected} bytes, {chunks_got} of {chunks_expected} chunks"
    )]
    Truncated {
        expected: u64,
        got: u64,
        chunks_expected: u32,
        chunks_got: u32,
    },
    #[error(
        "soft-token stream: CRC-32 {got:#010x} of the payload differs from the header's {expected:#010x}"
    )]
    Checksum { expected: u32, got: u32 },
}

impl WireError {
    /// The gRPC code for this error: malformed header/order → INVALID_ARGUMENT, weights from
    /// another model → FAILED_PRECONDITION, lost or corrupted bytes → DATA_LOSS.
    pub fn code(&self) -> Code {
        match self {
            Self::MissingHeader
            | Self::DuplicateHeader
            | Self::Empty
            | Self::BadShape { .. }
            | Self::BadDtype { .. }
            | Self::ByteCountMismatch { .. }
            | Self::TooLarge { .. }
            | Self::ChunkOutOfOrder { .. }
            | Self::ChunkTooLarge { .. } => Code::InvalidArgument,
            Self::FingerprintMismatch { .. } => Code::FailedPrecondition,
            Self::Overflow { .. } | Self::Truncated { .. } | Self::Checksum { .. } => {
                Code::DataLoss
            }
        }
    }
}

impl From<WireError> for Status {
    fn from(e: WireError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}
