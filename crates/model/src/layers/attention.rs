//! Scaled dot-product attention shared by SigLIP and Gemma (transformers' eager path).
//!
//! Scores are formed and scaled in the activation dtype, optionally soft-capped (Gemma 2, before
//! the mask), masked and soft-maxed in f32, cast back, then multiplied with the values. Grouped
//! query attention is computed by folding the query heads of a group into the row dimension, so
//! keys and values are never repeated in memory.

use candle_core::{D, DType, Result, Tensor};

use super::cast::to_dtype;
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
    let (heads, t, d) = q.dims3()?;
    let (kv_heads, s, _) = k.dims3()?;
    let group = heads / kv_heads;
    let dtype = q.dtype();
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
