//! Generated code for the `paligemma.v1` protocol (`proto/paligemma/v1/`), nothing else.

#![allow(clippy::all, clippy::pedantic, rust_2018_idioms, missing_docs)]

pub mod v1 {
    tonic::include_proto!("paligemma.v1");
}

/// Encoded `FileDescriptorSet` of every `paligemma.v1` file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/paligemma_descriptor.bin"));

/// Largest payload chunk of a soft-token stream, in bytes.
pub const MAX_CHUNK_BYTES: usize = 1 << 20;
