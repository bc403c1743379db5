//! x86-64 SIMD dot products (AVX-512F and AVX2+FMA) for the gemv kernels, generic over the
//! weight element: f32, or bf16 widened exactly to f32 as it is loaded (the same
//! [`Lanes`](crate::x86_f32::Lanes) loads the few-rows GEMM uses).
//!
//! The public functions re-check the CPU feature (a cached atomic load) and fall back to the
//! portable loop, so they are sound whatever the caller did. Products accumulate in f32, four
//! vector accumulators deep to hide FMA latency.

use std::arch::x86_64::{
    __m256, _mm256_add_ps, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_setzero_ps, _mm256_storeu_ps,
    _mm512_add_ps, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_reduce_add_ps, _mm512_setzero_ps,
};

use crate::gemm_f32::Weight;
use crate::gemv::dot_portable;

fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// `Σ f32(a[i])·b[i]` on AVX-512F (portable without it).
pub(crate) fn dot_avx512<W: Weight>(a: &[W], b: &[f32]) -> f32 {
    if !has_avx512() {
        return dot_portable(a, b);
    }
    // SAFETY: avx512f is present (checked above).
    unsafe { avx512(a, b) }
}

/// `Σ f32(a[i])·b[i]` on AVX2+FMA (portable without them).
pub(crate) fn dot_avx2<W: Weight>(a: &[W], b: &[f32]) -> f32 {
    if !has_avx2() {
        return dot_portable(a, b);
    }
    // SAFETY: avx2 and fma are present (checked above).
    unsafe { avx2(a, b) }
}

#[target_feature(enable = "avx512f")]
fn avx512<W: Weight>(a: &[W], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i + 64 <= n {
        for (j, s) in acc.iter_mut().enumerate() {
            // SAFETY: i + 16 * j + 16 <= i + 64 <= n, within both slices; avx512f present.
            let (va, vb) = unsafe {
                (
                    W::load16(pa.add(i + 16 * j)),
                    _mm512_loadu_ps(pb.add(i + 16 * j)),
                )
            };
            *s = _mm512_fmadd_ps(va, vb, *s);
        }
        i += 64;
    }
    while i + 16 <= n {
        // SAFETY: i + 16 <= n; avx512f present.
        let (va, vb) = unsafe { (W::load16(pa.add(i)), _mm512_loadu_ps(pb.add(i))) };
        acc[0] = _mm512_fmadd_ps(va, vb, acc[0]);
        i += 16;
    }
    let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    _mm512_reduce_add_ps(sum) + dot_portable(&a[i..n], &b[i..n])
}

#[target_feature(enable = "avx2,fma")]
fn hsum256(v: __m256) -> f32 {
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` has room for 8 f32.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
    lanes.iter().sum()
}

#[target_feature(enable = "avx2,fma")]
fn avx2<W: Weight>(a: &[W], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (j, s) in acc.iter_mut().enumerate() {
            // SAFETY: i + 8 * j + 8 <= i + 32 <= n; avx2 present.
            let (va, vb) = unsafe {
                (
                    W::load8(pa.add(i + 8 * j)),
                    _mm256_loadu_ps(pb.add(i + 8 * j)),
                )
            };
            *s = _mm256_fmadd_ps(va, vb, *s);
        }
        i += 32;
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    hsum256(sum) + dot_portable(&a[i..n], &b[i..n])
}
