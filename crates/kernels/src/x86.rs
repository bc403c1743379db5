//! x86-64 SIMD dot products (AVX-512F and AVX2+FMA) for the gemv kernels.
//!
//! Each public function re-checks the CPU feature (a cached atomic load) and falls back to the
//! portable loop, so they are sound whatever the caller did. bf16 is widened exactly by shifting
//! its 16 bits into the top half of an f32; products accumulate in f32, four vector accumulators
//! deep to hide FMA latency.

use std::arch::x86_64::{
    __m256, __m256i, __m512i, _mm_loadu_si128, _mm256_add_ps, _mm256_castsi256_ps,
    _mm256_cvtepu16_epi32, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_loadu_si256, _mm256_setzero_ps,
    _mm256_slli_epi32, _mm256_storeu_ps, _mm512_add_ps, _mm512_castsi512_ps, _mm512_cvtepu16_epi32,
    _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_reduce_add_ps, _mm512_setzero_ps, _mm512_slli_epi32,
};

use half::bf16;

use crate::gemv::{dot_bf16_portable, dot_f32_portable};

fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

pub(crate) fn dot_f32_avx512(a: &[f32], b: &[f32]) -> f32 {
    if !has_avx512() {
        return dot_f32_portable(a, b);
    }
    // SAFETY: avx512f is present (checked above).
    unsafe { f32_avx512(a, b) }
}

pub(crate) fn dot_bf16_avx512(a: &[bf16], b: &[f32]) -> f32 {
    if !has_avx512() {
        return dot_bf16_portable(a, b);
    }
    // SAFETY: avx512f is present (checked above).
    unsafe { bf16_avx512(a, b) }
}

pub(crate) fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
    if !has_avx2() {
        return dot_f32_portable(a, b);
    }
    // SAFETY: avx2 and fma are present (checked above).
    unsafe { f32_avx2(a, b) }
}

pub(crate) fn dot_bf16_avx2(a: &[bf16], b: &[f32]) -> f32 {
    if !has_avx2() {
        return dot_bf16_portable(a, b);
    }
    // SAFETY: avx2 and fma are present (checked above).
    unsafe { bf16_avx2(a, b) }
}

/// Eight bf16 at `p` widened to f32 lanes.
///
/// # Safety
/// `p..p+8` must be readable; AVX2 must be present.
#[target_feature(enable = "avx2")]
unsafe fn load8_bf16(p: *const bf16) -> __m256 {
    // SAFETY: the caller guarantees 8 readable elements (16 bytes); loadu has no alignment need.
    let raw = unsafe { _mm_loadu_si128(p.cast()) };
    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(raw)))
}

#[target_feature(enable = "avx512f")]
fn f32_avx512(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i + 64 <= n {
        for (j, s) in acc.iter_mut().enumerate() {
            // SAFETY: i + 16 * j + 16 <= i + 64 <= n, within both slices.
            let (va, vb) = unsafe {
                (
                    _mm512_loadu_ps(pa.add(i + 16 * j)),
                    _mm512_loadu_ps(pb.add(i + 16 * j)),
                )
            };
            *s = _mm512_fmadd_ps(va, vb, *s);
        }
        i += 64;
    }
    while i + 16 <= n {
        // SAFETY: i + 16 <= n.
        let (va, vb) = unsafe { (_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i))) };
        acc[0] = _mm512_fmadd_ps(va, vb, acc[0]);
        i += 16;
    }
    let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    _mm512_reduce_add_ps(sum) + dot_f32_portable(&a[i..n], &b[i..n])
}

#[target_feature(enable = "avx512f")]
fn bf16_avx512(a: &[bf16], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let widen = |p: *const bf16| -> __m512i {
        // SAFETY: callers below pass p with 16 readable bf16 (32 bytes).
        let raw: __m256i = unsafe { _mm256_loadu_si256(p.cast()) };
        _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(raw))
    };
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i + 64 <= n {
        for (j, s) in acc.iter_mut().enumerate() {
            // SAFETY: i + 16 * j + 16 <= i + 64 <= n, within both slices.
            let (va, vb) = unsafe {
                (
                    _mm512_castsi512_ps(widen(pa.add(i + 16 * j))),
                    _mm512_loadu_ps(pb.add(i + 16 * j)),
                )
            };
            *s = _mm512_fmadd_ps(va, vb, *s);
        }
        i += 64;
    }
    while i + 16 <= n {
        // SAFETY: i + 16 <= n.
        let (va, vb) = unsafe {
            (
                _mm512_castsi512_ps(widen(pa.add(i))),
                _mm512_loadu_ps(pb.add(i)),
            )
        };
        acc[0] = _mm512_fmadd_ps(va, vb, acc[0]);
        i += 16;
    }
    let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    _mm512_reduce_add_ps(sum) + dot_bf16_portable(&a[i..n], &b[i..n])
}

#[target_feature(enable = "avx2,fma")]
fn hsum256(v: __m256) -> f32 {
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` has room for 8 f32.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
    lanes.iter().sum()
}

#[target_feature(enable = "avx2,fma")]
fn f32_avx2(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (j, s) in acc.iter_mut().enumerate() {
            // SAFETY: i + 8 * j + 8 <= i + 32 <= n.
            let (va, vb) = unsafe {
                (
                    _mm256_loadu_ps(pa.add(i + 8 * j)),
                    _mm256_loadu_ps(pb.add(i + 8 * j)),
                )
            };
            *s = _mm256_fmadd_ps(va, vb, *s);
        }
        i += 32;
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    hsum256(sum) + dot_f32_portable(&a[i..n], &b[i..n])
}

#[target_feature(enable = "avx2,fma")]
fn bf16_avx2(a: &[bf16], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (j, s) in acc.iter_mut().enumerate() {
            // SAFETY: i + 8 * j + 8 <= i + 32 <= n.
            let (va, vb) = unsafe {
                (
                    load8_bf16(pa.add(i + 8 * j)),
                    _mm256_loadu_ps(pb.add(i + 8 * j)),
                )
            };
            *s = _mm256_fmadd_ps(va, vb, *s);
        }
        i += 32;
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    hsum256(sum) + dot_bf16_portable(&a[i..n], &b[i..n])
}
