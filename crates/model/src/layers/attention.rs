//! Scaled dot-product attention shared by SigLIP and Gemma (transformers' eager path).
//!
//! Scores are formed and scaled in the activation dtype, optionally soft-capped (Gemma 2, before
//! the mask), masked and soft-maxed in f32, cast back, then multiplied with the values. Grouped
//! query attention is computed by folding the query heads of a group into the row dimension, so
//! keys and values are never repeated in memory.
//!
//! On the CPU, half-precision inputs are widened once and both products run as f32 GEMMs
//! (candle's bf16 matmul converts its operands on every call and was a quarter of a bf16 vision
//! forward); the activation dtype's roundings — after `q·kᵀ`, after the scale, after each softcap
//! step, after the softmax — are reproduced on the f32 values in one fused pass with the mask and
//! the softmax. Products of bf16 values are exact in f32 and PyTorch's bf16 matmul accumulates in
//! f32 too, so this is the reference's arithmetic up to summation order.

use candle_core::{CpuStorage, CustomOp1, D, DType, Layout, Result, Shape, Storage, Tensor};

use super::cast::{narrow, to_dtype, widen};
use super::elementwise::par_rows;
use super::simd::simd_dispatch;
use super::{scale, softcap};

/// Options of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttentionParams<'a> {
    /// Multiplies `q·kᵀ`.
    pub scale: f64,
    /// Gemma 2: `cap · tanh(scores / cap)` before masking.
    pub softcap: Option<f64>,
    /// Additive f32 mask `[T, S]` (0 = attend, -inf = blocked); `None` = attend everywhere.
    pub mask: Option<&'a Tensor>,
}

/// `q: [H, T, d]`, `k, v: [KV, S, d]` with `H % KV == 0` → `[H, T, d]`.
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, p: AttentionParams<'_>) -> Result<Tensor> {
    if q.device().is_cpu() && matches!(q.dtype(), DType::F32 | DType::BF16) {
        return attend_cpu(q, k, v, p);
    }
    attend_candle(q, k, v, p)
}

/// The same computation in candle ops on the activation dtype (other devices and dtypes).
fn attend_candle(q: &Tensor, k: &Tensor, v: &Tensor, p: AttentionParams<'_>) -> Result<Tensor> {
    let dtype = q.dtype();
    let (heads, t, d) = q.dims3()?;
    let (kv_heads, s, _) = k.dims3()?;
    let group = heads / kv_heads;
    // Query head h reads kv head h / group (transformers' repeat_kv order).
    let q = q.reshape((kv_heads, group * t, d))?;
    let mut scores = scale(&q.matmul(&k.t()?)?, p.scale)?;
    if let Some(cap) = p.softcap {
        scores = softcap(&scores, cap)?;
    }
    let mut scores = to_dtype(&scores.reshape((heads, t, s))?, DType::F32)?;
    if let Some(mask) = p.mask {
        scores = scores.broadcast_add(mask)?;
    }
    let probs = to_dtype(&candle_nn::ops::softmax_last_dim(&scores)?, dtype)?;
    let probs = probs.reshape((kv_heads, group * t, s))?;
    probs.matmul(&v.contiguous()?)?.reshape((heads, t, d))
}

fn attend_cpu(q: &Tensor, k: &Tensor, v: &Tensor, p: AttentionParams<'_>) -> Result<Tensor> {
    let dtype = q.dtype();
    let (heads, t, d) = q.dims3()?;
    let (kv_heads, s, _) = k.dims3()?;
    let group = heads / kv_heads;
    let mask = match p.mask {
        Some(m) => {
            if m.elem_count() != t * s {
                candle_core::bail!("attention mask is {:?}, expected [{t}, {s}]", m.dims());
            }
            Some(m.to_dtype(DType::F32)?.contiguous()?)
        }
        None => None,
    };
    if dtype == DType::BF16 && super::gemm::fast_isa().is_some() {
        return super::attention_bf16::attend(q, k, v, p, mask.as_ref());
    }
    let q = to_dtype(q, DType::F32)?.reshape((kv_heads, group * t, d))?;
    let k = to_dtype(k, DType::F32)?;
    let v = to_dtype(v, DType::F32)?;
    let scores = q.matmul(&k.t()?)?;
    let op = ScoresToProbs {
        scale: p.scale as f32,
        softcap: p.softcap.map(|c| c as f32),
        mask: mask.as_ref(),
        round_bf16: dtype == DType::BF16,
        queries: t,
    };
    let probs = scores.apply_op1_no_bwd(&op)?;
    let out = probs.matmul(&v)?.reshape((heads, t, d))?;
    to_dtype(&out, dtype)
}

/// Raw f32 scores `[.., T, S]` (rows in query order, `T` per head) → probabilities, in one pass:
/// scale, softcap, mask, softmax, with the activation dtype's roundings when it is bf16.
struct ScoresToProbs<'a> {
    scale: f32,
    softcap: Option<f32>,
    mask: Option<&'a Tensor>,
    round_bf16: bool,
    /// Rows per head: row `r` of the scores uses mask row `r % queries`.
    queries: usize,
}

impl CustomOp1 for ScoresToProbs<'_> {
    fn name(&self) -> &'static str {
        "attention-probs"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("attention-probs: scores must be contiguous");
        };
        let scores = &storage.as_slice::<f32>()?[start..end];
        let s = layout.shape().dims().last().copied().unwrap_or(1).max(1);
        let mask_guard = self.mask.map(|m| m.storage_and_layout());
        let mask = mask_guard.as_ref().map(|(st, l)| (&**st, *l));
        let mask = mask_values(mask, self.queries * s)?;
        let mut probs = vec![0f32; scores.len()];
        let row = RowParams {
            len: s,
            queries: self.queries,
            scale: self.scale,
            softcap: self.softcap,
            round_bf16: self.round_bf16,
        };
        par_rows(scores, &mut probs, s, |first_row, x, y| {
            probs_rows(row, first_row, x, mask, y);
        });
        Ok((CpuStorage::F32(probs), layout.shape().clone()))
    }
}

/// The first `len` f32 values of a CPU mask (from its `storage_and_layout`; `None` without a
/// mask).
pub(crate) fn mask_values<'a>(
    mask: Option<(&'a Storage, &Layout)>,
    len: usize,
) -> Result<Option<&'a [f32]>> {
    let Some((storage, layout)) = mask else {
        return Ok(None);
    };
    let Storage::Cpu(cpu) = storage else {
        candle_core::bail!("attention: the mask must be on the CPU");
    };
    let o = layout.start_offset();
    Ok(Some(&cpu.as_slice::<f32>()?[o..o + len]))
}

/// What turns one row of raw scores into probabilities.
#[derive(Clone, Copy)]
pub(crate) struct RowParams {
    /// Keys per row.
    pub len: usize,
    /// Rows per head: row `r` uses mask row `r % queries`.
    pub queries: usize,
    pub scale: f32,
    pub softcap: Option<f32>,
    pub round_bf16: bool,
}

simd_dispatch!(
    /// Rows `first_row..` of raw scores `x` → probabilities `y` (rows of `p.len`).
    pub(crate) fn probs_rows(p: RowParams, first_row: usize, x: &[f32], mask: Option<&[f32]>, y: &mut [f32])
        = probs_rows_body;
);

#[inline(always)]
fn probs_rows_body(p: RowParams, first_row: usize, x: &[f32], mask: Option<&[f32]>, y: &mut [f32]) {
    let s = p.len;
    for (i, (x, y)) in x.chunks_exact(s).zip(y.chunks_exact_mut(s)).enumerate() {
        let r = (first_row + i) % p.queries;
        let m = mask.map(|m| &m[r * s..(r + 1) * s]);
        if p.round_bf16 {
            probs_row::<true>(p, x, m, y);
        } else {
            probs_row::<false>(p, x, m, y);
        }
    }
}

#[inline(always)]
fn probs_row<const ROUND: bool>(p: RowParams, x: &[f32], mask: Option<&[f32]>, y: &mut [f32]) {
    let round = |v: f32| if ROUND { widen(narrow(v)) } else { v };
    for (x, y) in x.iter().zip(y.iter_mut()) {
        *y = round(round(*x) * p.scale);
    }
    if let Some(cap) = p.softcap {
        // Gemma 2 only: libm's tanh, as candle's tanh op uses.
        for y in y.iter_mut() {
            *y = round(round(round(*y * (1.0 / cap)).tanh()) * cap);
        }
    }
    if let Some(m) = mask {
        for (y, m) in y.iter_mut().zip(m) {
            *y += m;
        }
    }
    const LANES: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = y.chunks_exact(LANES);
    for c in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l = if *v > *l { *v } else { *l };
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, v| if *v > m { *v } else { m });
    let mut sums = [0f32; LANES];
    let mut chunks = y.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (l, v) in sums.iter_mut().zip(c) {
            *v = super::activation::exp(*v - max);
            *l += *v;
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for v in chunks.into_remainder() {
        *v = super::activation::exp(*v - max);
        sum += *v;
    }
    for y in y.iter_mut() {
        *y = round(*y / sum);
    }
}

/// Softmax over the last dimension in f32 (helper for tests and callers holding raw scores).
pub fn softmax_f32(x: &Tensor) -> Result<Tensor> {
    candle_nn::ops::softmax(&x.to_dtype(DType::F32)?, D::Minus1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Reference: repeat each kv head `group` times, attend per head.
    fn naive(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
        let heads = q.dim(0)?;
        let group = heads / k.dim(0)?;
        let mut outs = Vec::new();
        for h in 0..heads {
            let (qh, kh, vh) = (q.get(h)?, k.get(h / group)?, v.get(h / group)?);
            let s = (qh.matmul(&kh.t()?)? * scale)?;
            outs.push(softmax_f32(&s)?.matmul(&vh)?);
        }
        Tensor::stack(&outs, 0)
    }

    #[test]
    fn grouped_query_attention_matches_repeated_kv() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (4, 3, 8), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (2, 5, 8), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (2, 5, 8), &dev)?;
        let p = AttentionParams {
            scale: 0.3,
            softcap: None,
            mask: None,
        };
        let got = attend(&q, &k, &v, p)?;
        let want = naive(&q, &k, &v, 0.3)?;
        let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "max diff {diff}");
        Ok(())
    }

    /// The fused CPU path against the same steps in candle ops, with grouped heads, a softcap and
    /// a mask that blocks some keys: equal in f32 up to summation order, and within a bf16
    /// rounding step of the output in bf16 (each path rounds at the same points).
    #[test]
    fn fused_cpu_path_matches_candle_ops_in_both_dtypes() -> Result<()> {
        let dev = Device::Cpu;
        // Small blocks, and blocks of 70 × 2 rows per kv head (the AMX kernel from 64 rows,
        // several blocks per thread).
        for (t, s, d) in [(5, 7, 8), (70, 90, 24)] {
            let q = Tensor::randn(0f32, 1.0, (4, t, d), &dev)?;
            let k = Tensor::randn(0f32, 1.0, (2, s, d), &dev)?;
            let v = Tensor::randn(0f32, 1.0, (2, s, d), &dev)?;
            let mask: Vec<f32> = (0..t * s)
                .map(|i| {
                    if (i % s) > (i / s) + 2 {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
                .collect();
            let mask = Tensor::from_vec(mask, (t, s), &dev)?;
            for (softcap, mask) in [(None, None), (Some(2.0), Some(&mask))] {
                let p = AttentionParams {
                    scale: 0.35,
                    softcap,
                    mask,
                };
                for (dtype, bound) in [(DType::F32, 1e-5), (DType::BF16, 1.6e-2)] {
                    let (q, k, v) = (q.to_dtype(dtype)?, k.to_dtype(dtype)?, v.to_dtype(dtype)?);
                    let got = attend(&q, &k, &v, p)?;
                    assert_eq!(got.dtype(), dtype);
                    assert_eq!(got.dims(), q.dims());
                    let want = attend_candle(&q, &k, &v, p)?.to_dtype(DType::F32)?;
                    let diff = (got.to_dtype(DType::F32)? - &want)?.abs()?.max_all()?;
                    let diff = diff.to_scalar::<f32>()?;
                    assert!(
                        diff <= bound,
                        "{t}x{s} {dtype:?} softcap {softcap:?}: {diff}"
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn blocked_keys_get_zero_weight() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (1, 1, 4), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (1, 2, 4), &dev)?;
        let v = Tensor::new(&[[[1f32, 1., 1., 1.], [5., 5., 5., 5.]]], &dev)?;
        let mask = Tensor::new(&[[0f32, f32::NEG_INFINITY]], &dev)?;
        let p = AttentionParams {
            scale: 1.0,
            softcap: None,
            mask: Some(&mask),
        };
        let out = attend(&q, &k, &v, p)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(out, vec![1.0; 4]);
        Ok(())
    }
}
