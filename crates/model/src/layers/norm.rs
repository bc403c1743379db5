//! Normalisation layers, computed in f32 whatever the activation dtype.
//!
//! Follows transformers' `GemmaRMSNorm` (upcast, normalise, multiply by `1 + w` in f32, cast
//! back once — "Llama does x.to(f16) * w whilst Gemma is (x * w).to(f16)") and PyTorch's CPU
//! `layer_norm`, which also accumulates and scales in f32 for half inputs.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Result, Shape, Tensor};
use candle_nn::VarBuilder;
use half::bf16;

use super::cast::{narrow, to_dtype, widen};
use super::elementwise::par_rows;
use super::simd::simd_dispatch;

/// Gemma RMSNorm: `y = x / sqrt(mean(x²) + eps) * (1 + w)`.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    /// `1 + w` in f32, precomputed at load (w is first rounded to the model dtype, as HF does).
    scale: Tensor,
    /// The same values for the CPU path.
    scale_host: Vec<f32>,
    eps: f64,
}

impl RmsNorm {
    pub fn new(size: usize, eps: f64, vb: VarBuilder<'_>) -> Result<Self> {
        let w = vb.get(size, "weight")?;
        let scale = (w.to_dtype(DType::F32)? + 1.0)?;
        let scale_host = scale.to_vec1::<f32>()?;
        Ok(Self {
            scale,
            scale_host,
            eps,
        })
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(y) = cpu_norm(x, Kind::Rms(&self.scale_host), self.eps)? {
            return Ok(y);
        }
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
    weight_host: Vec<f32>,
    bias_host: Vec<f32>,
    eps: f64,
}

impl LayerNorm {
    pub fn new(size: usize, eps: f64, vb: VarBuilder<'_>) -> Result<Self> {
        let weight = vb.get(size, "weight")?.to_dtype(DType::F32)?;
        let bias = vb.get(size, "bias")?.to_dtype(DType::F32)?;
        Ok(Self {
            weight_host: weight.to_vec1()?,
            bias_host: bias.to_vec1()?,
            weight,
            bias,
            eps,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let kind = Kind::Layer(&self.weight_host, &self.bias_host);
        if let Some(y) = cpu_norm(x, kind, self.eps)? {
            return Ok(y);
        }
        let dtype = x.dtype();
        let xf = to_dtype(x, DType::F32)?.contiguous()?;
        let y = candle_nn::ops::layer_norm(&xf, &self.weight, &self.bias, self.eps as f32)?;
        to_dtype(&y, dtype)
    }
}

#[derive(Clone, Copy)]
enum Kind<'a> {
    /// `1 + w`.
    Rms(&'a [f32]),
    /// Weight and bias.
    Layer(&'a [f32], &'a [f32]),
}

impl Kind<'_> {
    fn width(self) -> usize {
        match self {
            Kind::Rms(s) => s.len(),
            Kind::Layer(w, _) => w.len(),
        }
    }
}

/// One pass per row on the CPU for f32 and bf16 rows: widen, two-pass statistics in f32 (as
/// PyTorch, where candle's op takes `E[x²] − E[x]²`), scale, round once. `None` elsewhere.
fn cpu_norm(x: &Tensor, kind: Kind<'_>, eps: f64) -> Result<Option<Tensor>> {
    let width = kind.width();
    if width == 0 || !x.device().is_cpu() || !matches!(x.dtype(), DType::F32 | DType::BF16) {
        return Ok(None);
    }
    if x.dims().last() != Some(&width) {
        candle_core::bail!("norm over {width} features got input {:?}", x.dims());
    }
    let op = NormOp {
        kind,
        eps: eps as f32,
    };
    Ok(Some(x.contiguous()?.apply_op1_no_bwd(&op)?))
}

struct NormOp<'a> {
    kind: Kind<'a>,
    eps: f32,
}

impl CustomOp1 for NormOp<'_> {
    fn name(&self) -> &'static str {
        "norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("norm: input must be contiguous");
        };
        let width = layout.shape().dims().last().copied().unwrap_or(1).max(1);
        let (kind, eps) = (self.kind, self.eps);
        let out = match storage {
            CpuStorage::F32(x) => {
                let x = &x[start..end];
                let mut y = vec![0f32; x.len()];
                par_rows(x, &mut y, width, |_, x, y| rows_f32(kind, eps, x, y));
                CpuStorage::F32(y)
            }
            CpuStorage::BF16(x) => {
                let x = &x[start..end];
                let mut y = vec![bf16::ZERO; x.len()];
                par_rows(x, &mut y, width, |_, x, y| rows_bf16(kind, eps, x, y));
                CpuStorage::BF16(y)
            }
            _ => candle_core::bail!("norm: only f32 and bf16 storage"),
        };
        Ok((out, layout.shape().clone()))
    }
}

simd_dispatch!(fn rows_f32(kind: Kind<'_>, eps: f32, x: &[f32], y: &mut [f32]) = rows_f32_body;);
simd_dispatch!(fn rows_bf16(kind: Kind<'_>, eps: f32, x: &[bf16], y: &mut [bf16]) = rows_bf16_body;);

#[inline(always)]
fn rows_f32_body(kind: Kind<'_>, eps: f32, x: &[f32], y: &mut [f32]) {
    let width = kind.width();
    for (x, y) in x.chunks_exact(width).zip(y.chunks_exact_mut(width)) {
        y.copy_from_slice(x);
        row(kind, eps, y);
    }
}

#[inline(always)]
fn rows_bf16_body(kind: Kind<'_>, eps: f32, x: &[bf16], y: &mut [bf16]) {
    let width = kind.width();
    let mut buf = vec![0f32; width];
    for (x, y) in x.chunks_exact(width).zip(y.chunks_exact_mut(width)) {
        for (r, x) in buf.iter_mut().zip(x) {
            *r = widen(*x);
        }
        row(kind, eps, &mut buf);
        for (y, r) in y.iter_mut().zip(&buf) {
            *y = narrow(*r);
        }
    }
}

/// Normalises one f32 row in place.
#[inline(always)]
fn row(kind: Kind<'_>, eps: f32, row: &mut [f32]) {
    let n = row.len() as f32;
    match kind {
        Kind::Rms(scale) => {
            let ms = sum(row, |v| v * v) / n;
            let inv = 1.0 / (ms + eps).sqrt();
            for (v, s) in row.iter_mut().zip(scale) {
                *v = *v * inv * s;
            }
        }
        Kind::Layer(weight, bias) => {
            let mean = sum(row, |v| v) / n;
            let var = sum(row, |v| (v - mean) * (v - mean)) / n;
            let inv = 1.0 / (var + eps).sqrt();
            for ((v, w), b) in row.iter_mut().zip(weight).zip(bias) {
                *v = (*v - mean) * inv * w + b;
            }
        }
    }
}

/// `Σ f(v)` in 16 interleaved f32 partial sums (a vectorisable, and more accurate, order).
#[inline(always)]
fn sum(row: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            acc[i] += f(c[i]);
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().map(|v| f(*v)).sum::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn vb(tensors: Vec<(&str, Tensor)>) -> VarBuilder<'static> {
        let map = tensors
            .into_iter()
            .map(|(n, t)| (n.to_string(), t))
            .collect();
        VarBuilder::from_tensors(map, DType::F32, &Device::Cpu)
    }

    /// The fused CPU op against candle's ops (f32) and their bf16 round trip, on rows wider than
    /// one vector and above the thread split.
    #[test]
    fn fused_norms_match_candle_ops() -> Result<()> {
        let dev = Device::Cpu;
        let width = 1155;
        let w = Tensor::randn(0f32, 1.0, width, &dev)?;
        let b = Tensor::randn(0f32, 1.0, width, &dev)?;
        let x = (Tensor::randn(0f32, 2.0, (64, width), &dev)? + 3.0)?;
        let ln = LayerNorm::new(
            width,
            1e-6,
            vb(vec![("weight", w.clone()), ("bias", b.clone())]),
        )?;
        let rms = RmsNorm::new(width, 1e-6, vb(vec![("weight", w.clone())]))?;
        let want_ln = candle_nn::ops::layer_norm_slow(&x, &w, &b, 1e-6)?;
        let want_rms = candle_nn::ops::rms_norm_slow(&x, &(&w + 1.0)?, 1e-6)?;
        for (got, want) in [(ln.forward(&x)?, &want_ln), (rms.forward(&x)?, &want_rms)] {
            let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 2e-5, "f32: {diff}");
        }
        let xb = x.to_dtype(DType::BF16)?;
        let x_rounded = xb.to_dtype(DType::F32)?;
        let want_ln = candle_nn::ops::layer_norm_slow(&x_rounded, &w, &b, 1e-6)?;
        let got = ln.forward(&xb)?;
        assert_eq!(got.dtype(), DType::BF16);
        let diff = (got.to_dtype(DType::F32)? - want_ln)?.abs()?.max_all()?;
        // One bf16 rounding of values up to ~|w|·4 + |b|.
        assert!(diff.to_scalar::<f32>()? < 6e-2);
        Ok(())
    }

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
