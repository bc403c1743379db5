//! Rotary position embedding as Gemma uses it (transformers `GemmaRotaryEmbedding`).
//!
//! Split-half pairing (`rotate_half([a, b]) = [-b, a]`, not interleaved), frequencies
//! `θ^(-2i/d)` over the full head dim, angles computed in f32 and only the cos/sin values cast to
//! the activation dtype. Positions are whatever the caller passes; PaliGemma's are 1-based
//! (spec §6.2), which changes cos/sin rounding in bf16 though not the exact math.

use candle_core::{DType, Device, Result, Tensor};

#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
}

impl Rope {
    pub fn new(head_dim: usize, theta: f64) -> Self {
        let inv_freq = (0..head_dim / 2)
            .map(|i| {
                // transformers: 1 / base ** (arange(0, d, 2).float() / d), all in f32.
                let exponent = (2 * i) as f32 / head_dim as f32;
                1.0f32 / (theta as f32).powf(exponent)
            })
            .collect();
        Self { inv_freq }
    }

    /// cos and sin tables `[positions.len(), head_dim / 2]` in `dtype`.
    pub fn cos_sin(
        &self,
        positions: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for &f in &self.inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let shape = (positions.len(), half);
        let cos = Tensor::from_vec(cos, shape, device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, shape, device)?.to_dtype(dtype)?;
        Ok((cos, sin))
    }

    /// Rotates `x: [heads, T, head_dim]` (contiguous) by per-token angles.
    pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        candle_nn::rotary_emb::rope(&x.unsqueeze(0)?, cos, sin)?.squeeze(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_pairs_first_and_second_half() -> Result<()> {
        let dev = Device::Cpu;
        let rope = Rope::new(4, 10_000.0);
        let (cos, sin) = rope.cos_sin(&[3], DType::F32, &dev)?;
        let x = Tensor::new(&[[[1.0f32, 2.0, 3.0, 4.0]]], &dev)?;
        let got = Rope::apply(&x, &cos, &sin)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let (a0, a1) = (3.0f32, 3.0f32 * 0.01);
        // out[i] = x[i] cos - x[i + d/2] sin ; out[i + d/2] = x[i + d/2] cos + x[i] sin
        let want = [
            1.0 * a0.cos() - 3.0 * a0.sin(),
            2.0 * a1.cos() - 4.0 * a1.sin(),
            3.0 * a0.cos() + 1.0 * a0.sin(),
            4.0 * a1.cos() + 2.0 * a1.sin(),
        ];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
        }
        Ok(())
    }
}
