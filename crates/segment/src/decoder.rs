//! The VQ-VAE mask decoder of big_vision (spec §10): 16 `<seg>` codes → 64×64 float logits.
//!
//! Follows `big_vision/evaluators/proj/paligemma/transfers/segmentation.py`
//! (`get_reconstruct_masks`, `_get_params`, `_quantized_values_from_codebook_indices`,
//! `ResBlock`, `Decoder`; the demo Space's `_get_reconstruct_masks` is the same code) and loads
//! the decoder half of `vae-oid.npz` (a PyTorch state dict saved as npz, PyTorch layouts):
//!
//! ```text
//! codes [B,16] -> codebook rows -> [B,4,4,C] (token k at row k/4, col k%4) -> NCHW [B,C,4,4]
//! relu(conv1x1 C->128)                                 decoder.0
//! 2x  x + conv1x1(relu(conv3x3(relu(conv3x3(x)))))     decoder.{2,3}.net.{0,2,4}, padding 1
//! 4x  relu(conv_transpose 4x4 stride 2 padding 1)      decoder.{4,6,8,10}: 128,64,32,16 ch
//! conv1x1 16->1                                        decoder.12  -> [B,1,64,64] logits
//! ```
//!
//! Flax's `ConvTranspose(kernel 4, stride 2, padding 2, transpose_kernel=True)` on the weights
//! transposed (2,3,1,0), as big_vision runs it, equals PyTorch/candle
//! `conv_transpose2d(stride 2, padding 1)` on the npz weights as stored. The codebook width C is
//! read from `_vq_vae._embedding` (512 in the released file); every other shape is checked
//! against it at load. Runs with candle on the CPU in float32; this file does not paste masks
//! (see [`crate::paste`]).

use std::path::Path;

use candle_core::npy::NpzTensors;
use candle_core::{DType, Device, Tensor};
use paligemma_text::NUM_SEG_CODES;

use crate::error::SegmentError;

/// Side of the decoded mask in pixels.
pub const MASK_SIDE: usize = 64;

/// Name of the codebook tensor in `vae-oid.npz`.
const CODEBOOK: &str = "_vq_vae._embedding";

/// Channel widths of the four transposed convolutions' outputs (and the input of the first).
const UP_CHANNELS: [usize; 5] = [128, 128, 64, 32, 16];
/// Hidden width of the first conv and the residual blocks.
const HIDDEN: usize = 128;

/// 64×64 float32 mask logits, row-major (`[y * 64 + x]`). Nominally in `[-1, 1]` (nothing
/// clips them); big_vision thresholds the pasted values at `> 0`.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskLogits {
    data: Vec<f32>,
}

impl MaskLogits {
    /// Wraps 4096 row-major values.
    ///
    /// # Errors
    /// [`SegmentError::BadMaskSize`] if `data` does not hold exactly 64×64 values.
    pub fn from_vec(data: Vec<f32>) -> Result<Self, SegmentError> {
        if data.len() != MASK_SIDE * MASK_SIDE {
            return Err(SegmentError::BadMaskSize {
                width: MASK_SIDE as u32,
                height: MASK_SIDE as u32,
                expected: MASK_SIDE * MASK_SIDE,
                actual: data.len(),
            });
        }
        Ok(Self { data })
    }

    /// The 4096 values, row-major.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }
}

/// A convolution's weight (PyTorch layout) and bias reshaped to `[1, out, 1, 1]`.
#[derive(Debug)]
struct Conv {
    weight: Tensor,
    bias: Tensor,
}

/// The loaded decoder weights.
#[derive(Debug)]
pub struct MaskDecoder {
    /// `[num_codes, width]` float32.
    codebook: Tensor,
    num_codes: usize,
    width: usize,
    input: Conv,
    res_blocks: [[Conv; 3]; 2],
    up: [Conv; 4],
    output: Conv,
}

struct Loader<'a> {
    npz: NpzTensors,
    path: &'a Path,
}

impl Loader<'_> {
    fn tensor(&self, name: &str) -> Result<Tensor, SegmentError> {
        let npz_err = |e: candle_core::Error| SegmentError::Npz {
            path: self.path.to_owned(),
            message: format!("tensor `{name}`: {e}"),
        };
        let t =
            self.npz
                .get(name)
                .map_err(npz_err)?
                .ok_or_else(|| SegmentError::MissingTensor {
                    path: self.path.to_owned(),
                    name: name.to_owned(),
                })?;
        if t.dtype() != DType::F32 {
            return Err(SegmentError::BadDType {
                name: name.to_owned(),
                actual: format!("{:?}", t.dtype()),
            });
        }
        Ok(t)
    }

    fn shaped(&self, name: &str, expected: &[usize]) -> Result<Tensor, SegmentError> {
        let t = self.tensor(name)?;
        if t.dims() != expected {
            return Err(SegmentError::BadShape {
                name: name.to_owned(),
                expected: format!("{expected:?}"),
                actual: t.dims().to_vec(),
            });
        }
        Ok(t)
    }

    /// `{prefix}.weight` of shape `weight_shape` and `{prefix}.bias` of `[out]`.
    fn conv(
        &self,
        prefix: &str,
        weight_shape: [usize; 4],
        out: usize,
    ) -> Result<Conv, SegmentError> {
        let weight = self.shaped(&format!("{prefix}.weight"), &weight_shape)?;
        let bias = self
            .shaped(&format!("{prefix}.bias"), &[out])?
            .reshape((1, out, 1, 1))?;
        Ok(Conv { weight, bias })
    }
}

impl MaskDecoder {
    /// Loads the decoder from `vae-oid.npz` (or a file with the same decoder keys); encoder
    /// weights and EMA buffers in the file are ignored.
    ///
    /// # Errors
    /// [`SegmentError::Npz`] for an unreadable or truncated file, [`SegmentError::MissingTensor`],
    /// [`SegmentError::BadShape`] / [`SegmentError::BadDType`] for a tensor that does not fit
    /// the architecture (the codebook must be `[N, C]` with N, C ≥ 1).
    pub fn from_npz(path: impl AsRef<Path>) -> Result<Self, SegmentError> {
        let path = path.as_ref();
        let npz = NpzTensors::new(path).map_err(|e| SegmentError::Npz {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let l = Loader { npz, path };
        let codebook = l.tensor(CODEBOOK)?;
        let (num_codes, width) = match codebook.dims() {
            &[n, c] if n > 0 && c > 0 => (n, c),
            dims => {
                return Err(SegmentError::BadShape {
                    name: CODEBOOK.to_owned(),
                    expected: "[N, C] with N, C >= 1".to_owned(),
                    actual: dims.to_vec(),
                });
            }
        };
        let input = l.conv("decoder.0", [HIDDEN, width, 1, 1], HIDDEN)?;
        let res = |i: usize| -> Result<[Conv; 3], SegmentError> {
            Ok([
                l.conv(
                    &format!("decoder.{i}.net.0"),
                    [HIDDEN, HIDDEN, 3, 3],
                    HIDDEN,
                )?,
                l.conv(
                    &format!("decoder.{i}.net.2"),
                    [HIDDEN, HIDDEN, 3, 3],
                    HIDDEN,
                )?,
                l.conv(
                    &format!("decoder.{i}.net.4"),
                    [HIDDEN, HIDDEN, 1, 1],
                    HIDDEN,
                )?,
            ])
        };
        let res_blocks = [res(2)?, res(3)?];
        let up = |k: usize| {
            let (cin, cout) = (UP_CHANNELS[k], UP_CHANNELS[k + 1]);
            // Transposed-conv weights are [in, out, kh, kw] in PyTorch.
            l.conv(&format!("decoder.{}", 4 + 2 * k), [cin, cout, 4, 4], cout)
        };
        let up = [up(0)?, up(1)?, up(2)?, up(3)?];
        let output = l.conv("decoder.12", [1, UP_CHANNELS[4], 1, 1], 1)?;
        Ok(Self {
            codebook,
            num_codes,
            width,
            input,
            res_blocks,
            up,
            output,
        })
    }

    /// Number of codebook entries (valid codes are `0..num_codes`; 128 in `vae-oid.npz`).
    pub fn num_codes(&self) -> usize {
        self.num_codes
    }

    /// Codebook width C read from the file (512 in `vae-oid.npz`).
    pub fn codebook_width(&self) -> usize {
        self.width
    }

    /// Decodes one mask from its 16 codes (the `<seg>` values in text order).
    ///
    /// # Errors
    /// [`SegmentError::WrongCodeCount`] unless exactly 16 codes, [`SegmentError::CodeOutOfRange`]
    /// for a code `>= num_codes()`, [`SegmentError::Compute`] if candle fails.
    pub fn decode(&self, codes: &[u16]) -> Result<MaskLogits, SegmentError> {
        let mut out = self.decode_batch(&[codes])?;
        out.pop()
            .ok_or_else(|| SegmentError::Compute("empty batch output".into()))
    }

    /// Decodes a batch of masks in one forward pass (one [`MaskLogits`] per code list).
    ///
    /// # Errors
    /// As for [`MaskDecoder::decode`].
    pub fn decode_batch(&self, batch: &[&[u16]]) -> Result<Vec<MaskLogits>, SegmentError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut ids = Vec::with_capacity(batch.len() * NUM_SEG_CODES);
        for codes in batch {
            if codes.len() != NUM_SEG_CODES {
                return Err(SegmentError::WrongCodeCount {
                    expected: NUM_SEG_CODES,
                    actual: codes.len(),
                });
            }
            for (index, &c) in codes.iter().enumerate() {
                if usize::from(c) >= self.num_codes {
                    return Err(SegmentError::CodeOutOfRange {
                        index,
                        value: u32::from(c),
                        codebook_size: self.num_codes,
                    });
                }
                ids.push(u32::from(c));
            }
        }
        let b = batch.len();
        let ids = Tensor::from_vec(ids, (b * NUM_SEG_CODES,), &Device::Cpu)?;
        let y = self.forward(&ids, b)?;
        let flat = y.flatten_all()?.to_vec1::<f32>()?;
        flat.chunks_exact(MASK_SIDE * MASK_SIDE)
            .map(|c| MaskLogits::from_vec(c.to_vec()))
            .collect()
    }

    /// `ids` `[B*16]` u32 → logits `[B,1,64,64]` f32.
    fn forward(&self, ids: &Tensor, b: usize) -> Result<Tensor, SegmentError> {
        let conv = |x: &Tensor, c: &Conv, padding: usize| -> candle_core::Result<Tensor> {
            x.conv2d(&c.weight, padding, 1, 1, 1)?
                .broadcast_add(&c.bias)
        };
        let x = self
            .codebook
            .index_select(ids, 0)?
            .reshape((b, 4, 4, self.width))?
            .permute((0, 3, 1, 2))?
            .contiguous()?;
        let mut x = conv(&x, &self.input, 0)?.relu()?;
        for [c0, c1, c2] in &self.res_blocks {
            let h = conv(&x, c0, 1)?.relu()?;
            let h = conv(&h, c1, 1)?.relu()?;
            let h = conv(&h, c2, 0)?;
            x = (x + h)?;
        }
        for c in &self.up {
            x = x
                .conv_transpose2d(&c.weight, 1, 0, 2, 1)?
                .broadcast_add(&c.bias)?
                .relu()?;
        }
        Ok(conv(&x, &self.output, 0)?)
    }
}
