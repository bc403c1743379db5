//! bf16 attention on the CPU through the bf16 GEMM kernels (AMX from 64 rows, AVX-512 BF16
//! below), one query block at a time so its scores stay in cache.
//!
//! Widening q/k/v to f32 and running candle's f32 matmuls on `[heads, 256, 72]` blocks reached
//! ~50 GFLOP/s and was a third of a bf16 SigLIP forward; the kernels multiply the bf16 values
//! directly with f32 sums — the arithmetic PyTorch's bf16 matmul does — and round at the same
//! points: scores to bf16 (inside [`probs_rows`]), probabilities to bf16, the output once.

use candle_core::{Result, Tensor};
use half::bf16;
use paligemma_kernels::{GemmOut, gemm_bf16};

use super::attention::{AttentionParams, RowParams, mask_values, probs_rows};
use super::cast::narrow;
use super::gemm::{kernel_err, with_bf16_slice};

/// `q: [H, T, d]`, `k, v: [KV, S, d]` (bf16, CPU) → `[H, T, d]`; `mask`: f32 `[T, S]`.
pub(crate) fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    p: AttentionParams<'_>,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (heads, t, d) = q.dims3()?;
    let (kv_heads, s, _) = k.dims3()?;
    // Query heads of one kv head are consecutive rows (transformers' repeat_kv order).
    let rows = heads / kv_heads * t;
    let row = RowParams {
        len: s,
        queries: t,
        scale: p.scale as f32,
        softcap: p.softcap.map(|c| c as f32),
        round_bf16: true,
    };
    let threads = candle_core::utils::get_num_threads().max(1);
    let items = work_items(kv_heads, rows, threads);
    let mut out = vec![bf16::ZERO; kv_heads * rows * d];
    let mask_guard = mask.map(|m| m.storage_and_layout());
    let mask = mask_guard.as_ref().map(|(st, l)| (&**st, *l));
    let mask = mask_values(mask, t * s)?;
    with_bf16_slice(q, |q| {
        with_bf16_slice(k, |k| {
            with_bf16_slice(v, |v| {
                let ctx = Ctx {
                    q,
                    k,
                    v,
                    mask,
                    row,
                    rows,
                    d,
                };
                run(&ctx, &items, &mut out, threads)
            })
        })
    })?;
    Tensor::from_vec(out, (heads, t, d), q.device())
}

struct Ctx<'a> {
    q: &'a [bf16],
    k: &'a [bf16],
    v: &'a [bf16],
    mask: Option<&'a [f32]>,
    row: RowParams,
    /// Query rows per kv head.
    rows: usize,
    d: usize,
}

/// A block of query rows `r0..r1` of kv head `head`.
#[derive(Clone, Copy)]
struct Item {
    head: usize,
    r0: usize,
    r1: usize,
}

/// Blocks in output order: each kv head's rows cut so that there are at least as many blocks
/// as threads, and no block is taller than `MAX_ROWS` (its f32 scores stay in L2).
fn work_items(kv_heads: usize, rows: usize, threads: usize) -> Vec<Item> {
    const MAX_ROWS: usize = 256;
    let per_head = threads
        .div_ceil(kv_heads)
        .max(rows.div_ceil(MAX_ROWS))
        .max(1);
    let step = rows.div_ceil(per_head).max(1);
    (0..kv_heads)
        .flat_map(|head| {
            (0..rows).step_by(step).map(move |r0| Item {
                head,
                r0,
                r1: (r0 + step).min(rows),
            })
        })
        .collect()
}

/// Splits the blocks into one contiguous run per thread, each writing its own part of `out`.
fn run(ctx: &Ctx<'_>, items: &[Item], out: &mut [bf16], threads: usize) -> Result<()> {
    let per = items
        .len()
        .div_ceil(threads.clamp(1, items.len().max(1)))
        .max(1);
    let mut parts = Vec::new();
    let mut rest = out;
    for chunk in items.chunks(per) {
        let len: usize = chunk.iter().map(|i| (i.r1 - i.r0) * ctx.d).sum();
        let (mine, tail) = rest.split_at_mut(len);
        parts.push((chunk, mine));
        rest = tail;
    }
    if parts.len() == 1 {
        let (chunk, out) = parts.pop().expect("one part");
        return blocks(ctx, chunk, out);
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|(chunk, out)| scope.spawn(move || blocks(ctx, chunk, out)))
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join().unwrap_or_else(|_| {
                Err(candle_core::Error::Msg("attention worker panicked".into()))
            })
        })
    })
}

/// Scores, probabilities and output of consecutive blocks into `out`.
fn blocks(ctx: &Ctx<'_>, items: &[Item], out: &mut [bf16]) -> Result<()> {
    let (d, s) = (ctx.d, ctx.row.len);
    let mut out = out;
    let mut vt = vec![bf16::ZERO; d * s];
    let mut vt_head = usize::MAX;
    // Score and probability buffers for the tallest block, reused by every block.
    let tall = items.iter().map(|i| i.r1 - i.r0).max().unwrap_or(0);
    let mut scores = vec![0f32; tall * s];
    let mut probs = vec![0f32; tall * s];
    let mut probs_bf16 = vec![bf16::ZERO; tall * s];
    for item in items {
        let m = item.r1 - item.r0;
        let first = item.head * ctx.rows + item.r0;
        let a = &ctx.q[first * d..(first + m) * d];
        let keys = &ctx.k[item.head * s * d..(item.head + 1) * s * d];
        let (scores, probs) = (&mut scores[..m * s], &mut probs[..m * s]);
        gemm_bf16(a, keys, None, GemmOut::F32(scores), m, s, d, 1).map_err(kernel_err)?;
        probs_rows(ctx.row, item.r0, scores, ctx.mask, probs);
        // Already bf16 values; this only changes the storage type.
        let probs_bf16 = &mut probs_bf16[..m * s];
        for (b, p) in probs_bf16.iter_mut().zip(probs.iter()) {
            *b = narrow(*p);
        }
        if vt_head != item.head {
            // Vᵀ as the GEMM's `[n, k]` weight: `[d, S]`.
            let values = &ctx.v[item.head * s * d..(item.head + 1) * s * d];
            for (j, row) in values.chunks_exact(d).enumerate() {
                for (c, x) in row.iter().enumerate() {
                    vt[c * s + j] = *x;
                }
            }
            vt_head = item.head;
        }
        let (mine, rest) = out.split_at_mut(m * d);
        gemm_bf16(probs_bf16, &vt, None, GemmOut::Bf16(mine), m, d, s, 1).map_err(kernel_err)?;
        out = rest;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_every_row_once_in_order() {
        for (kv, rows, threads) in [
            (16, 256, 2),
            (1, 2176, 2),
            (4, 3, 8),
            (2, 1, 1),
            (1, 700, 3),
        ] {
            let items = work_items(kv, rows, threads);
            assert!(
                items.len() >= threads.min(kv * rows),
                "{kv} {rows} {threads}"
            );
            let mut next = (0, 0);
            for i in &items {
                assert!(i.r1 > i.r0 && i.r1 - i.r0 <= 256);
                assert_eq!((i.head, i.r0), next);
                next = if i.r1 == rows {
                    (i.head + 1, 0)
                } else {
                    (i.head, i.r1)
                };
            }
            assert_eq!(next, (kv, 0));
        }
    }
}
