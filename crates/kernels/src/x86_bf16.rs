//! AVX-512 BF16 GEMM kernel (`vdpbf16ps`: Cooper Lake, Sapphire Rapids, Zen 4 and later).
//!
//! One `vdpbf16ps` multiplies 16 pairs of bf16 and adds both products of each pair to an f32
//! lane. A row of the packed weight is exactly such a vector (16 columns × one `k` pair); the
//! matching `k` pair of an activation row is broadcast to all lanes. The micro-kernel keeps up to
//! 8 rows × 32 columns of accumulators (16 zmm) in registers for the whole `k` loop.

use std::arch::x86_64::{
    __m512bh, __m512i, _MM_HINT_T0, _mm_prefetch, _mm512_dpbf16_ps, _mm512_loadu_si512,
    _mm512_set1_epi32, _mm512_setzero_ps, _mm512_storeu_ps,
};

use half::bf16;

use crate::gemm::{NB, NW, OutPtr, Problem, Store, padded_k};

/// Rows of A per micro-kernel call.
const MR: usize = 8;

pub(crate) fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bf16")
}

/// Copies `A: [m, k]` to rows of `padded_k(k)` so every `k` pair is whole and aligned.
pub(crate) fn pack_a(a: &[bf16], m: usize, k: usize) -> Vec<bf16> {
    let kp = padded_k(k);
    let mut out = vec![bf16::ZERO; m * kp];
    if k > 0 {
        for (dst, src) in out.chunks_exact_mut(kp).zip(a.chunks_exact(k)) {
            dst[..k].copy_from_slice(src);
        }
    }
    out
}

/// Output columns `[u0·NW, u1·NW)` from `a` packed by [`pack_a`] and `p.w` in the pair layout.
pub(crate) fn columns<T: Store>(p: &Problem<'_>, a: &[bf16], out: OutPtr<T>, u0: usize, u1: usize) {
    let kp = padded_k(p.k);
    let lengths_ok = a.len() == p.m * kp && p.w.len() >= u1 * NW * kp;
    // Guaranteed by `gemm::check` (the only caller); the unsafe code below relies on it.
    assert!(
        available() && lengths_ok,
        "gemm kernel called with unchecked arguments"
    );
    // SAFETY: avx512f and avx512bf16 are present and the lengths were checked above.
    unsafe { columns_avx512(p, a, out, u0, u1) }
}

/// # Safety
/// avx512f + avx512bf16 present; `a.len() == m·kp`, `p.w.len() >= u1·NW·kp`.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn columns_avx512<T: Store>(
    p: &Problem<'_>,
    a: &[bf16],
    out: OutPtr<T>,
    u0: usize,
    u1: usize,
) {
    let kp = padded_k(p.k);
    let mut acc = [0f32; MR * NW];
    for u in u0..u1 {
        let w = &p.w[u * NW * kp..(u + 1) * NW * kp];
        let mut r0 = 0;
        while r0 < p.m {
            let rows = MR.min(p.m - r0);
            let a = &a[r0 * kp..(r0 + rows) * kp];
            // SAFETY: `a` holds `rows` rows of kp and `w` two column blocks of NB·kp, what
            // `micro` reads; `acc` has room for MR rows of NW.
            unsafe {
                match rows {
                    8 => micro::<8>(a, w, kp, &mut acc),
                    7 => micro::<7>(a, w, kp, &mut acc),
                    6 => micro::<6>(a, w, kp, &mut acc),
                    5 => micro::<5>(a, w, kp, &mut acc),
                    4 => micro::<4>(a, w, kp, &mut acc),
                    3 => micro::<3>(a, w, kp, &mut acc),
                    2 => micro::<2>(a, w, kp, &mut acc),
                    _ => micro::<1>(a, w, kp, &mut acc),
                }
            }
            out.tile(&acc[..rows * NW], NW, r0, u * NW, p.bias);
            r0 += rows;
        }
    }
}

/// `acc[r][0..32] = Σ_k a[r][k] · w[col][k]` for R rows and the 32 columns of one unit.
///
/// # Safety
/// avx512f + avx512bf16 present; `a.len() >= R·kp`, `w.len() >= 2·NB·kp`, kp even.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn micro<const R: usize>(a: &[bf16], w: &[bf16], kp: usize, acc: &mut [f32; MR * NW]) {
    assert!(a.len() >= R * kp && w.len() >= 2 * NB * kp && R <= MR);
    let (pa, pw) = (a.as_ptr(), w.as_ptr());
    let mut lo = [_mm512_setzero_ps(); R];
    let mut hi = [_mm512_setzero_ps(); R];
    for pair in 0..kp / 2 {
        // SAFETY: pair·2·NB + 2·NB <= kp·NB, inside the first block; NB·kp further is the
        // second block, inside `w` (asserted above). Unaligned loads are allowed.
        let (w0, w1): (__m512bh, __m512bh) = unsafe {
            let q = pw.add(pair * 2 * NB);
            // Hints only: a prefetch past the end of `w` is harmless (no fault, no read).
            _mm_prefetch::<_MM_HINT_T0>(q.wrapping_add(PREFETCH).cast());
            _mm_prefetch::<_MM_HINT_T0>(q.wrapping_add(NB * kp + PREFETCH).cast());
            (
                as_bh(_mm512_loadu_si512(q.cast())),
                as_bh(_mm512_loadu_si512(q.add(NB * kp).cast())),
            )
        };
        for r in 0..R {
            // SAFETY: r·kp + 2·pair + 2 <= R·kp, inside `a`; read as two bf16 bits.
            let x = unsafe { pa.add(r * kp + 2 * pair).cast::<u32>().read_unaligned() };
            let x = as_bh(_mm512_set1_epi32(x as i32));
            lo[r] = _mm512_dpbf16_ps(lo[r], w0, x);
            hi[r] = _mm512_dpbf16_ps(hi[r], w1, x);
        }
    }
    for r in 0..R {
        // SAFETY: row r of `acc` has NW = 32 f32, two stores of 16.
        unsafe {
            _mm512_storeu_ps(acc.as_mut_ptr().add(r * NW), lo[r]);
            _mm512_storeu_ps(acc.as_mut_ptr().add(r * NW + NB), hi[r]);
        }
    }
}

/// bf16 elements ahead of the current weight pair to prefetch in each of the unit's two column
/// blocks (2 KiB): decode streams every weight from DRAM once per token, and the hardware
/// prefetcher alone kept two cores at ~19 of ~29 GB/s (bf16 mid decode 52 → ~45 ms/token).
const PREFETCH: usize = 1024;

#[inline(always)]
fn as_bh(v: __m512i) -> __m512bh {
    // SAFETY: both are 64-byte plain-old-data vectors; any bit pattern is a valid bf16 vector.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}
