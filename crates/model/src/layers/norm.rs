//! Normalisation layers, computed in f32 whatever the activation dtype.
//!
//! Follows transformers' `GemmaRMSNorm` (upcast, normalise, multiply by `1 + w` in f32, cast
//! back once — "Llama does x.to(f16) * w whilst Gemma is (x * w).to(f16)") and PyTorch's CPU
//! `layer_norm`, which also accumulates and scales in f32 for half inputs.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::cast::to_dtype;

/// Gemma RMSNorm: `y = x / sqrt(mean(x²) + eps) * (1 + w)`.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    /// `1 + w` in f32, precomputed at load (w is first rounded to the model dtype, as HF does).
    scale: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn new(size: usize, eps: f64, vb: VarBuilder<'_>) -> Result<Self> {
        let w = vb.get(size, "weight")?;
        let scale = (w.to_dtype(DType::F32)? + 1.0)?;
        Ok(Self { scale, eps })
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let xf = to_dtype(x, DType::F32)?.contiguous()?;
        to_dtype(
            &candle_nn::ops::rms_norm(&xf, &self.scale, self.eps as f32)?,
            dtype,
        )
    }
}

/// LayerNorm with affine weight and bias (biased variance), as SigLIP uses.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn new(size: usize, eps: f64, vb: VarBuilder<'_>) -> Result<Self> {
        let weight = vb.get(size, "weight")?.to_dtype(DType::F32)?;
        let bias = vb.get(size, "bias")?.to_dtype(DType::F32)?;
        Ok(Self { weight, bias, eps })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let xf = to_dtype(x, DType::F32)?.contiguous()?;
        let y = candle_nn::ops::layer_norm(&xf, &self.weight, &self.bias, self.eps as f32)?;
        to_dtype(&y, dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn rms_norm_scales_by_one_plus_weight() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::new(&[0.0f32, 1.0, -0.5, 2.0], &dev)?;
        let vb = VarBuilder::from_tensors(
            [("weight".to_string(), w)].into_iter().collect(),
            DType::F32,
            &dev,
        );
        let norm = RmsNorm::new(4, 1e-6, vb)?;
        let x = Tensor::new(&[[1.0f32, 2.0, 3.0, 4.0]], &dev)?;
        let got = norm.forward(&x)?.to_vec2::<f32>()?;
        let rms = ((1.0f32 + 4.0 + 9.0 + 16.0) / 4.0 + 1e-6).sqrt();
        let want = [1.0 / rms, 2.0 * 2.0 / rms, 3.0 * 0.5 / rms, 4.0 * 3.0 / rms];
        for (g, w) in got[0].iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
        Ok(())
    }
}
