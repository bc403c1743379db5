//! Soft tokens on the wire (ARCHITECTURE "Wire format of soft tokens").
//!
//! A stream is one [`SoftTokenHeader`] (shape `[N, D]`, dtype, weights fingerprint, byte count,
//! CRC-32, chunk count) followed by payload chunks of at most 1 MiB, little-endian, row-major.
//! [`to_chunks`] produces such a stream; [`Assembler`] consumes one and checks every field
//! against what the receiver expects, so a malformed tensor never reaches a model.

mod assembler;
mod error;
mod tokens;

pub use assembler::{Assembler, Expected};
pub use error::WireError;
pub use paligemma_proto::MAX_CHUNK_BYTES;
pub use paligemma_proto::v1::{
    SoftTokenChunk, SoftTokenHeader, SoftTokenPayload, WireDtype, soft_token_chunk,
};
pub use tokens::{SoftTokens, element_size, to_chunks};
