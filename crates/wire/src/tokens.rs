//! A soft-token tensor in wire form, dtype conversion, and splitting into a chunked stream.

use half::{bf16, f16};
use paligemma_proto::v1::{
    SoftTokenChunk, SoftTokenHeader, SoftTokenPayload, WireDtype, soft_token_chunk,
};

use crate::error::WireError;

/// Bytes per element; `None` for `UNSPECIFIED`.
pub fn element_size(dtype: WireDtype) -> Option<usize> {
    match dtype {
        WireDtype::F32 => Some(4),
        WireDtype::Bf16 | WireDtype::F16 => Some(2),
        WireDtype::Unspecified => None,
    }
}

/// `rows × cols` soft tokens as little-endian row-major bytes of `dtype`.
#[derive(Debug, Clone, PartialEq)]
pub struct SoftTokens {
    pub rows: usize,
    pub cols: usize,
    pub dtype: WireDtype,
    pub data: Vec<u8>,
}

impl SoftTokens {
    /// Converts f32 values (`rows × cols`, row-major) to `dtype` bytes (round-to-nearest-even).
    ///
    /// # Errors
    /// `UNSPECIFIED` dtype, or a value count that is not `rows × cols`.
    pub fn from_f32(
        rows: usize,
        cols: usize,
        values: &[f32],
        dtype: WireDtype,
    ) -> Result<Self, WireError> {
        let shape_err = |why: String| WireError::BadShape {
            got: vec![rows as u64, cols as u64],
            why,
        };
        if values.len() != rows * cols {
            return Err(shape_err(format!("{} values given", values.len())));
        }
        let data = match dtype {
            WireDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            WireDtype::Bf16 => values
                .iter()
                .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
                .collect(),
            WireDtype::F16 => values
                .iter()
                .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                .collect(),
            WireDtype::Unspecified => return Err(WireError::BadDtype { got: dtype as i32 }),
        };
        Ok(Self {
            rows,
            cols,
            dtype,
            data,
        })
    }

    /// The values widened to f32 (exact for every wire dtype).
    pub fn to_f32(&self) -> Vec<f32> {
        match self.dtype {
            WireDtype::F32 => self
                .data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            WireDtype::Bf16 => self
                .data
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            WireDtype::F16 => self
                .data
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            WireDtype::Unspecified => Vec::new(),
        }
    }
}

/// The stream for `tokens`: a header, then payload chunks of at most `max_chunk` bytes.
pub fn to_chunks(tokens: &SoftTokens, fingerprint: &str, max_chunk: usize) -> Vec<SoftTokenChunk> {
    let max_chunk = max_chunk.max(1);
    let pieces: Vec<&[u8]> = tokens.data.chunks(max_chunk).collect();
    let header = SoftTokenHeader {
        shape: vec![tokens.rows as u64, tokens.cols as u64],
        dtype: tokens.dtype as i32,
        weights_fingerprint: fingerprint.to_string(),
        total_bytes: tokens.data.len() as u64,
        crc32: crc32fast::hash(&tokens.data),
        num_chunks: pieces.len() as u32,
    };
    let mut stream = Vec::with_capacity(pieces.len() + 1);
    stream.push(SoftTokenChunk {
        kind: Some(soft_token_chunk::Kind::Header(header)),
    });
    stream.extend(
        pieces
            .into_iter()
            .enumerate()
            .map(|(i, piece)| SoftTokenChunk {
                kind: Some(soft_token_chunk::Kind::Payload(SoftTokenPayload {
                    index: i as u32,
                    data: piece.to_vec(),
                })),
            }),
    );
    stream
}
