//! f32 GEMM for a few activation rows: `C[m, n] = A[m, k] · W[n, k]ᵀ (+ bias)` with `W` in the
//! row-major `nn.Linear` layout, unpacked.
//!
//! Batched decode gives every linear layer one row per running sequence (2-64), against a weight
//! of millions of elements. The cost floor is one pass over `W` from memory; candle's matmul
//! (gemm crate) packs and blocks for large `m` and falls well short of that at small `m`. Here
//! each weight row is read from memory once and dotted with every activation row: a register
//! tile of `MR` activation rows × `NR` weight rows keeps `MR·NR` vector accumulators over the
//! whole `k` loop (each loaded vector feeds `NR` or `MR` FMAs), and the activations — `m·k`
//! floats, small next to `W` — stay in L1/L2 while the weight streams. Threads split the output
//! columns (weight rows), as in the gemv.
//!
//! Every output is a dot product summed in f32 (lane-wise partial sums, then a horizontal sum),
//! the same kind of arithmetic as the gemv; only the order of the additions differs from candle.
//!
//! The weight may also be bf16 ([`Weight`]): a weight that cannot be packed for the bf16 GEMM
//! (a tied embedding used as the output head, which a packed copy would hold twice) then streams
//! half the bytes, and each vector is widened exactly to f32 as it is loaded, so the arithmetic
//! is the f32 kernel's.

use half::bf16;

use crate::{Isa, KernelError};

/// An element type of the weight: f32, or bf16 widened exactly on load.
#[cfg(target_arch = "x86_64")]
pub(crate) trait Weight: Copy + Send + Sync + crate::x86_f32::Lanes {
    fn widen(self) -> f32;
}

/// An element type of the weight: f32, or bf16 widened exactly on load.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) trait Weight: Copy + Send + Sync {
    fn widen(self) -> f32;
}

impl Weight for f32 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
}

impl Weight for bf16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

/// Shapes and lengths of one call.
pub(crate) struct Problem<'a, W> {
    pub a: &'a [f32],
    pub w: &'a [W],
    pub bias: Option<&'a [f32]>,
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

pub(crate) fn check<W>(isa: Isa, p: &Problem<'_, W>, out_len: usize) -> Result<(), KernelError> {
    if !isa.is_supported() {
        return Err(KernelError::Unsupported(isa));
    }
    let expect = crate::gemm::expect_len;
    expect("a", p.a.len(), p.m.saturating_mul(p.k))?;
    expect("w", p.w.len(), p.n.saturating_mul(p.k))?;
    if let Some(b) = p.bias {
        expect("bias", b.len(), p.n)?;
    }
    expect("out", out_len, p.m.saturating_mul(p.n))
}

/// Below this many multiply-adds a call runs on one thread: spawning costs more than it saves.
const MIN_PARALLEL_MACS: usize = 1 << 18;

/// Runs a checked problem, writing `out: [m, n]`.
pub(crate) fn run<W: Weight>(isa: Isa, p: &Problem<'_, W>, out: &mut [f32], threads: usize) {
    let (m, n) = (p.m, p.n);
    if m == 0 || n == 0 {
        return;
    }
    // Threads write the transposed result `[n, m]` so each owns one contiguous chunk (no shared
    // mutable output); transposing m·n floats back is negligible next to reading n·k weights.
    let mut out_t = vec![0f32; n * m];
    let threads = if m * n * p.k < MIN_PARALLEL_MACS {
        1
    } else {
        threads.clamp(1, n)
    };
    // Whole register tiles per thread where possible, so only the last one handles a remainder.
    let per = n.div_ceil(threads).next_multiple_of(8).min(n);
    let work = |first: usize, out_t: &mut [f32]| {
        let cols = out_t.len() / m;
        let w = &p.w[first * p.k..(first + cols) * p.k];
        columns(isa, p.a, w, m, p.k, out_t);
    };
    if per >= n {
        work(0, &mut out_t);
    } else {
        std::thread::scope(|s| {
            let mut chunks = out_t.chunks_mut(per * m).enumerate();
            let head = chunks.next();
            for (i, chunk) in chunks {
                s.spawn(move || work(i * per, chunk));
            }
            if let Some((_, chunk)) = head {
                work(0, chunk);
            }
        });
    }
    for (j, col) in out_t.chunks_exact(m).enumerate() {
        let b = p.bias.map_or(0.0, |b| b[j]);
        for (r, v) in col.iter().enumerate() {
            out[r * n + j] = v + b;
        }
    }
}

/// `out_t[j·m + r] = A[r] · w[j]` for the weight rows in `w` (`out_t.len() / m` of them).
fn columns<W: Weight>(isa: Isa, a: &[f32], w: &[W], m: usize, k: usize, out_t: &mut [f32]) {
    if k == 0 {
        out_t.fill(0.0);
        return;
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => crate::x86_f32::columns_avx512(a, w, m, k, out_t),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => crate::x86_f32::columns_avx2(a, w, m, k, out_t),
        _ => columns_portable(a, w, m, k, out_t),
    }
}

/// Each weight row (at most a few tens of KiB) is dotted with every activation row while it is
/// in L1, so the weight is still read from memory once.
pub(crate) fn columns_portable<W: Weight>(
    a: &[f32],
    w: &[W],
    m: usize,
    k: usize,
    out_t: &mut [f32],
) {
    for (row, out) in w.chunks_exact(k).zip(out_t.chunks_exact_mut(m)) {
        for (o, x) in out.iter_mut().zip(a.chunks_exact(k)) {
            *o = crate::gemv::dot_portable(row, x);
        }
    }
}
