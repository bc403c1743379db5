//! Validating reassembly of a soft-token stream on the receiving tier.

use paligemma_proto::MAX_CHUNK_BYTES;
use paligemma_proto::v1::{SoftTokenChunk, SoftTokenHeader, WireDtype, soft_token_chunk};

use crate::error::WireError;
use crate::tokens::{SoftTokens, element_size};

/// What the receiver's model accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// D: the decoder hidden size.
    pub cols: usize,
    /// N must be a positive multiple of this (soft tokens per image).
    pub rows_multiple_of: usize,
    /// Upper bound on N (e.g. images per request × tokens per image).
    pub max_rows: usize,
    /// The receiver's vision-weights fingerprint.
    pub fingerprint: String,
}

/// Feed it the stream's messages in arrival order, then [`Assembler::finish`].
#[derive(Debug)]
pub struct Assembler {
    expected: Expected,
    header: Option<(SoftTokenHeader, WireDtype)>,
    data: Vec<u8>,
    next_index: u32,
    hasher: crc32fast::Hasher,
}

impl Assembler {
    pub fn new(expected: Expected) -> Self {
        Self {
            expected,
            header: None,
            data: Vec::new(),
            next_index: 0,
            hasher: crc32fast::Hasher::new(),
        }
    }

    /// Whether the header arrived and every announced chunk has been received.
    pub fn is_complete(&self) -> bool {
        self.header
            .as_ref()
            .is_some_and(|(h, _)| self.next_index == h.num_chunks)
    }

    /// Accepts the next message.
    ///
    /// # Errors
    /// The first problem found: see [`WireError`].
    pub fn push(&mut self, chunk: SoftTokenChunk) -> Result<(), WireError> {
        match chunk.kind {
            Some(soft_token_chunk::Kind::Header(h)) => self.accept_header(h),
            Some(soft_token_chunk::Kind::Payload(p)) => {
                let Some((header, _)) = &self.header else {
                    return Err(WireError::MissingHeader);
                };
                if p.index != self.next_index {
                    return Err(WireError::ChunkOutOfOrder {
                        expected: self.next_index,
                        got: p.index,
                    });
                }
                if p.data.len() > MAX_CHUNK_BYTES {
                    return Err(WireError::ChunkTooLarge {
                        index: p.index,
                        len: p.data.len(),
                        limit: MAX_CHUNK_BYTES,
                    });
                }
                if self.data.len() as u64 + p.data.len() as u64 > header.total_bytes
                    || p.index >= header.num_chunks
                {
                    return Err(WireError::Overflow {
                        expected: header.total_bytes,
                    });
                }
                self.hasher.update(&p.data);
                self.data.extend_from_slice(&p.data);
                self.next_index += 1;
                Ok(())
            }
            None => Err(WireError::MissingHeader),
        }
    }

    fn accept_header(&mut self, h: SoftTokenHeader) -> Result<(), WireError> {
        if self.header.is_some() {
            return Err(WireError::DuplicateHeader);
        }
        let e = &self.expected;
        let bad_shape = |why: String| WireError::BadShape {
            got: h.shape.clone(),
            why,
        };
        let [rows, cols] = h.shape[..] else {
            return Err(bad_shape("expected two dimensions [N, D]".into()));
        };
        if cols != e.cols as u64 {
            return Err(bad_shape(format!(
                "D = {cols} but this decoder's hidden size is {}",
                e.cols
            )));
        }
        if rows == 0 || rows % e.rows_multiple_of as u64 != 0 {
            return Err(bad_shape(format!(
                "N = {rows} is not a positive multiple of {} tokens per image",
                e.rows_multiple_of
            )));
        }
        if rows > e.max_rows as u64 {
            return Err(bad_shape(format!(
                "N = {rows} exceeds the limit of {} soft tokens",
                e.max_rows
            )));
        }
        let dtype =
            WireDtype::try_from(h.dtype).map_err(|_| WireError::BadDtype { got: h.dtype })?;
        let Some(size) = element_size(dtype) else {
            return Err(WireError::BadDtype { got: h.dtype });
        };
        if h.weights_fingerprint != e.fingerprint {
            return Err(WireError::FingerprintMismatch {
                expected: e.fingerprint.clone(),
                got: h.weights_fingerprint,
            });
        }
        let implied = rows * cols * size as u64;
        if h.total_bytes != implied {
            return Err(WireError::ByteCountMismatch {
                expected: implied,
                got: h.total_bytes,
            });
        }
        let min_chunks = implied.div_ceil(MAX_CHUNK_BYTES as u64);
        if u64::from(h.num_chunks) < min_chunks || u64::from(h.num_chunks) > implied {
            return Err(WireError::BadShape {
                got: h.shape.clone(),
                why: format!(
                    "{} chunks cannot carry {implied} bytes in chunks of at most {MAX_CHUNK_BYTES}",
                    h.num_chunks
                ),
            });
        }
        self.data.reserve_exact(implied as usize);
        self.header = Some((h, dtype));
        Ok(())
    }

    /// The reassembled tensor, once every byte arrived and the checksum matches.
    ///
    /// # Errors
    /// No header, truncated stream, checksum mismatch.
    pub fn finish(self) -> Result<SoftTokens, WireError> {
        let Some((header, dtype)) = self.header else {
            return Err(WireError::Empty);
        };
        let got = self.data.len() as u64;
        if got != header.total_bytes || self.next_index != header.num_chunks {
            return Err(WireError::Truncated {
                expected: header.total_bytes,
                got,
                chunks_expected: header.num_chunks,
                chunks_got: self.next_index,
            });
        }
        let crc = self.hasher.finalize();
        if crc != header.crc32 {
            return Err(WireError::Checksum {
                expected: header.crc32,
                got: crc,
            });
        }
        Ok(SoftTokens {
            rows: header.shape[0] as usize,
            cols: header.shape[1] as usize,
            dtype,
            data: self.data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::to_chunks;
    use paligemma_proto::v1::SoftTokenPayload;
    use tonic::Code;

    const FP: &str = "xxh3:0000000000000001";

    fn expected(cols: usize) -> Expected {
        Expected {
            cols,
            rows_multiple_of: 16,
            max_rows: 4096,
            fingerprint: FP.into(),
        }
    }

    fn tokens(rows: usize, cols: usize, dtype: WireDtype) -> SoftTokens {
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| (i as f32 * 0.37).sin() * 3.0)
            .collect();
        SoftTokens::from_f32(rows, cols, &values, dtype).unwrap()
    }

    fn receive(stream: Vec<SoftTokenChunk>, cols: usize) -> Result<SoftTokens, WireError> {
        let mut a = Assembler::new(expected(cols));
        for chunk in stream {
            a.push(chunk)?;
        }
        a.finish()
    }

    fn header_mut(stream: &mut [SoftTokenChunk]) -> &mut SoftTokenHeader {
        match &mut stream[0].kind {
            Some(soft_token_chunk::Kind::Header(h)) => h,
            _ => panic!("first message is the header"),
        }
    }

    fn payload_mut(stream: &mut [SoftTokenChunk], i: usize) -> &mut SoftTokenPayload {
        match &mut stream[i].kind {
            Some(soft_token_chunk::Kind::Payload(p)) => p,
            _ => panic!("payload expected"),
        }
    }

    #[test]
    fn round_trip_is_exact_for_every_dtype() {
        for dtype in [WireDtype::F32, WireDtype::Bf16, WireDtype::F16] {
            let t = tokens(32, 48, dtype);
            let got = receive(to_chunks(&t, FP, 1000), 48).unwrap();
            assert_eq!(got, t, "{dtype:?}");
        }
    }

    #[test]
    fn stream_larger_than_4_mib_passes_in_1_mib_chunks() {
        // 1024 tokens × 2048 wide × f32 = 8 MiB: eight full chunks.
        let t = tokens(1024, 2048, WireDtype::F32);
        let stream = to_chunks(&t, FP, MAX_CHUNK_BYTES);
        assert_eq!(stream.len(), 1 + 8);
        assert!(t.data.len() > 4 << 20);
        assert_eq!(receive(stream, 2048).unwrap(), t);
    }

    #[test]
    fn largest_paligemma_2_case_needs_72_chunks() {
        // 896 px PaliGemma 2 28B: 4096 × 4608 × 4 bytes = 72 MiB.
        let e = Expected {
            cols: 4608,
            rows_multiple_of: 4096,
            max_rows: 4096,
            fingerprint: FP.into(),
        };
        let mut a = Assembler::new(e);
        let header = SoftTokenHeader {
            shape: vec![4096, 4608],
            dtype: WireDtype::F32 as i32,
            weights_fingerprint: FP.into(),
            total_bytes: 4096 * 4608 * 4,
            crc32: 0,
            num_chunks: 72,
        };
        a.push(SoftTokenChunk {
            kind: Some(soft_token_chunk::Kind::Header(header)),
        })
        .unwrap();
    }

    #[test]
    fn wrong_shape_is_invalid_argument() {
        let t = tokens(32, 40, WireDtype::F32);
        let err = receive(to_chunks(&t, FP, 1000), 48).unwrap_err();
        assert!(matches!(err, WireError::BadShape { .. }), "{err}");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.to_string().contains("hidden size is 48"));
        let t = tokens(20, 48, WireDtype::F32);
        let err = receive(to_chunks(&t, FP, 1000), 48).unwrap_err();
        assert!(err.to_string().contains("multiple of 16"), "{err}");
    }

    #[test]
    fn unknown_or_unspecified_dtype_is_invalid_argument() {
        for bad in [0, 9] {
            let mut s = to_chunks(&tokens(16, 48, WireDtype::F32), FP, 1000);
            header_mut(&mut s).dtype = bad;
            let err = receive(s, 48).unwrap_err();
            assert_eq!(err, WireError::BadDtype { got: bad });
            assert_eq!(err.code(), Code::InvalidArgument);
        }
    }

    #[test]
    fn foreign_fingerprint_is_failed_precondition() {
        let err = receive(
            to_chunks(&tokens(16, 48, WireDtype::Bf16), "xxh3:ffff", 1000),
            48,
        )
        .unwrap_err();
        assert!(matches!(err, WireError::FingerprintMismatch { .. }));
        assert_eq!(err.code(), Code::FailedPrecondition);
    }

    #[test]
    fn truncated_stream_is_data_loss() {
        let mut s = to_chunks(&tokens(16, 48, WireDtype::F32), FP, 1000);
        s.pop();
        let err = receive(s, 48).unwrap_err();
        assert!(matches!(err, WireError::Truncated { .. }), "{err}");
        assert_eq!(err.code(), Code::DataLoss);
    }

    #[test]
    fn corrupted_payload_fails_the_checksum() {
        let mut s = to_chunks(&tokens(16, 48, WireDtype::F32), FP, 1000);
        payload_mut(&mut s, 2).data[7] ^= 0x40;
        let err = receive(s, 48).unwrap_err();
        assert!(matches!(err, WireError::Checksum { .. }), "{err}");
        assert_eq!(err.code(), Code::DataLoss);
    }

    #[test]
    fn chunks_out_of_order_are_rejected() {
        let mut s = to_chunks(&tokens(16, 48, WireDtype::F32), FP, 1000);
        s.swap(1, 2);
        let err = receive(s, 48).unwrap_err();
        assert_eq!(
            err,
            WireError::ChunkOutOfOrder {
                expected: 0,
                got: 1
            }
        );
        assert_eq!(err.code(), Code::InvalidArgument);
    }

    #[test]
    fn header_lies_and_protocol_misuse_are_rejected() {
        let mut s = to_chunks(&tokens(16, 48, WireDtype::F32), FP, 1000);
        header_mut(&mut s).total_bytes += 4;
        assert!(matches!(
            receive(s, 48).unwrap_err(),
            WireError::ByteCountMismatch { .. }
        ));

        let s = to_chunks(&tokens(16, 48, WireDtype::F32), FP, 1000);
        let mut dup = vec![s[0].clone()];
        dup.extend(s);
        assert_eq!(receive(dup, 48).unwrap_err(), WireError::DuplicateHeader);

        let s = to_chunks(&tokens(16, 48, WireDtype::F32), FP, 1000);
        assert_eq!(
            receive(s[1..].to_vec(), 48).unwrap_err(),
            WireError::MissingHeader
        );
        assert_eq!(receive(Vec::new(), 48).unwrap_err(), WireError::Empty);

        // A payload beyond the announced size.
        let mut s = to_chunks(&tokens(16, 48, WireDtype::F32), FP, 1000);
        payload_mut(&mut s, 1).data.extend_from_slice(&[0; 8]);
        let err = receive(s, 48).unwrap_err();
        assert_eq!(err.code(), Code::DataLoss);
    }

    #[test]
    fn oversized_chunks_are_rejected() {
        let t = tokens(1024, 2048, WireDtype::F32);
        let mut s = to_chunks(&t, FP, 2 * MAX_CHUNK_BYTES);
        header_mut(&mut s).num_chunks = 8;
        let err = receive(s, 2048).unwrap_err();
        assert!(matches!(err, WireError::ChunkTooLarge { .. }), "{err}");
    }
}
