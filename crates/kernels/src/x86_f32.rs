//! x86-64 register tiles (AVX-512F and AVX2+FMA) for the small-`m` f32 GEMM (`gemm_f32.rs`).
//!
//! A tile is `R` activation rows × `C` weight rows: per step of `k` it loads `C` weight vectors
//! and `R` activation vectors and issues `R·C` FMAs into accumulators held in registers for the
//! whole `k` loop, then sums each accumulator's lanes once. AVX-512 uses 4×4 (16 accumulators +
//! 8 loaded operands of 32 zmm; 4×6 measured slower, spilling), AVX2 3×3 (9 + 6 of 16 ymm). The `k` tail is a masked load (AVX-512) or the portable
//! loop (AVX2).
//!
//! The public functions re-check the CPU feature and the lengths and fall back to the portable
//! loop, so they are sound whatever the caller did.

use std::arch::x86_64::{
    __m128i, __m256, __m256i, __m512, _mm_add_ps, _mm_cvtss_f32, _mm_hadd_ps, _mm_loadu_si128,
    _mm256_castps256_ps128, _mm256_castsi256_ps, _mm256_cvtepu16_epi32, _mm256_extractf128_ps,
    _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_loadu_si256, _mm256_setzero_ps, _mm256_slli_epi32,
    _mm512_castsi512_ps, _mm512_cvtepu16_epi32, _mm512_fmadd_ps, _mm512_loadu_ps,
    _mm512_maskz_loadu_ps, _mm512_reduce_add_ps, _mm512_setzero_ps, _mm512_slli_epi32,
};

use half::bf16;

use crate::gemm_f32::{Weight, columns_portable};
use crate::gemv::dot_portable;

/// Loading weight vectors as f32 lanes, so one micro-kernel serves f32 and bf16 weights.
pub(crate) trait Lanes: Sized {
    /// Sixteen weights at `p`.
    ///
    /// # Safety
    /// avx512f present; `p` points at 16 readable elements.
    unsafe fn load16(p: *const Self) -> __m512;

    /// The first `len` (< 16) weights of `tail`, the other lanes zero.
    ///
    /// # Safety
    /// avx512f present.
    unsafe fn load16_tail(tail: &[Self]) -> __m512;

    /// Eight weights at `p`.
    ///
    /// # Safety
    /// avx2 present; `p` points at 8 readable elements.
    unsafe fn load8(p: *const Self) -> __m256;
}

impl Lanes for f32 {
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(p: *const f32) -> __m512 {
        // SAFETY: 16 readable f32 at p (caller).
        unsafe { _mm512_loadu_ps(p) }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16_tail(tail: &[f32]) -> __m512 {
        let len = tail.len().min(15);
        // Only the `len` valid lanes are read; the others are zero.
        let mask = (1u16 << len) - 1;
        // SAFETY: masked-off lanes are not accessed; the valid ones are within `tail`.
        unsafe { _mm512_maskz_loadu_ps(mask, tail.as_ptr()) }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load8(p: *const f32) -> __m256 {
        // SAFETY: 8 readable f32 at p (caller).
        unsafe { _mm256_loadu_ps(p) }
    }
}

/// bf16 is the top half of an f32: zero-extending to 32 bits and shifting left by 16 widens it
/// exactly.
impl Lanes for bf16 {
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(p: *const bf16) -> __m512 {
        // SAFETY: 16 readable bf16 (32 bytes) at p (caller).
        let raw = unsafe { _mm256_loadu_si256(p.cast::<__m256i>()) };
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(raw)))
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16_tail(tail: &[bf16]) -> __m512 {
        // A 16-bit masked load needs AVX512BW; a zero-padded copy of < 32 bytes does not.
        let mut buf = [bf16::ZERO; 16];
        let len = tail.len().min(16);
        buf[..len].copy_from_slice(&tail[..len]);
        // SAFETY: `buf` holds 16 bf16.
        unsafe { Self::load16(buf.as_ptr()) }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load8(p: *const bf16) -> __m256 {
        // SAFETY: 8 readable bf16 (16 bytes) at p (caller).
        let raw = unsafe { _mm_loadu_si128(p.cast::<__m128i>()) };
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(raw)))
    }
}

/// Tile rows (activations) × tile columns (weight rows) on AVX-512.
const MR_512: usize = 4;
const NR_512: usize = 4;
/// The same on AVX2 (16 registers).
const MR_256: usize = 3;
const NR_256: usize = 3;
/// Room for the largest tile's sums.
const MAX_TILE: usize = 8;

fn lengths_ok<W>(a: &[f32], w: &[W], m: usize, k: usize, out_t: &[f32]) -> bool {
    m > 0
        && k > 0
        && a.len() == m * k
        && out_t.len().is_multiple_of(m)
        && w.len() == (out_t.len() / m) * k
}

pub(crate) fn columns_avx512<W: Weight>(a: &[f32], w: &[W], m: usize, k: usize, out_t: &mut [f32]) {
    if !std::arch::is_x86_feature_detected!("avx512f") || !lengths_ok(a, w, m, k, out_t) {
        return columns_portable(a, w, m, k, out_t);
    }
    // SAFETY: avx512f is present; lengths match what `tiles` indexes (checked above).
    unsafe { tiles_avx512(a, w, m, k, out_t) }
}

pub(crate) fn columns_avx2<W: Weight>(a: &[f32], w: &[W], m: usize, k: usize, out_t: &mut [f32]) {
    let fma =
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
    if !fma || !lengths_ok(a, w, m, k, out_t) {
        return columns_portable(a, w, m, k, out_t);
    }
    // SAFETY: avx2 and fma are present; lengths match what `tiles` indexes (checked above).
    unsafe { tiles_avx2(a, w, m, k, out_t) }
}

/// `k` values per block. Between blocks the tile's accumulators go to an L1-resident buffer, so
/// the `R`-row activation blocks (m·KC floats) and the tile's weight rows (NR·KC) fit in L1
/// together: each weight vector is then loaded from memory once and reused from L1 for every
/// activation block, rather than refetched from L2 once per block when a whole row (up to 64
/// KiB at k = 16384) no longer fits.
const KC: usize = 256;

/// Vector accumulators of one activation block: `[row][weight row]`.
type Acc<V> = [[V; MAX_TILE]; MAX_TILE];

/// Walks the output in tiles: weight rows outer (each streams from memory once), then blocks of
/// `k`, then activation blocks (which stay in cache), calling `$micro::<R, C>` for each.
macro_rules! tiles {
    ($name:ident, $feature:literal, $vec:ty, $zero:ident, $micro:ident, $finish:ident,
     $mr:expr, $nr:expr) => {
        /// # Safety
        /// The target features are present and `lengths_ok(a, w, m, k, out_t)`.
        #[target_feature(enable = $feature)]
        unsafe fn $name<W: Weight>(a: &[f32], w: &[W], m: usize, k: usize, out_t: &mut [f32]) {
            let n = out_t.len() / m;
            let zero: Acc<$vec> = [[$zero(); MAX_TILE]; MAX_TILE];
            let mut acc = vec![zero; m.div_ceil($mr)];
            let mut j = 0;
            while j < n {
                let cols = (n - j).min($nr);
                let wj = &w[j * k..(j + cols) * k];
                acc.fill(zero);
                let mut k0 = 0;
                while k0 < k {
                    let k1 = (k0 + KC).min(k);
                    for (b, acc) in acc.iter_mut().enumerate() {
                        let r = b * $mr;
                        let rows = (m - r).min($mr);
                        let ar = &a[r * k..(r + rows) * k];
                        // SAFETY: `ar` holds `rows` rows of k and `wj` `cols` rows of k, what
                        // `micro::<rows, C>` reads (C = cols, or 1 per column of a partial
                        // tile); k0 < k1 <= k; features are present (this function's contract).
                        unsafe {
                            if cols == $nr {
                                by_rows!($micro, rows, { $nr }, ar, wj, k, k0, k1, acc, 0);
                            } else {
                                for c in 0..cols {
                                    let wc = &wj[c * k..(c + 1) * k];
                                    by_rows!($micro, rows, 1, ar, wc, k, k0, k1, acc, c);
                                }
                            }
                        }
                    }
                    k0 = k1;
                }
                for (b, acc) in acc.iter().enumerate() {
                    let r = b * $mr;
                    for c in 0..cols {
                        let out = &mut out_t[(j + c) * m + r..(j + c) * m + (r + $mr).min(m)];
                        for (rr, o) in out.iter_mut().enumerate() {
                            let (x, wc) =
                                (&a[(r + rr) * k..(r + rr + 1) * k], &wj[c * k..(c + 1) * k]);
                            *o = $finish(acc[rr][c], x, wc);
                        }
                    }
                }
                j += cols;
            }
        }
    };
}

/// `$micro::<rows, $c>(…)` for a run-time `rows` in `1..=4`.
macro_rules! by_rows {
    ($micro:ident, $rows:expr, $c:expr, $($arg:expr),*) => {
        match $rows {
            4 => $micro::<W, 4, { $c }>($($arg),*),
            3 => $micro::<W, 3, { $c }>($($arg),*),
            2 => $micro::<W, 2, { $c }>($($arg),*),
            _ => $micro::<W, 1, { $c }>($($arg),*),
        }
    };
}

tiles!(
    tiles_avx512,
    "avx512f",
    __m512,
    _mm512_setzero_ps,
    micro_avx512,
    finish_avx512,
    MR_512,
    NR_512
);
tiles!(
    tiles_avx2,
    "avx2,fma",
    __m256,
    _mm256_setzero_ps,
    micro_avx2,
    finish_avx2,
    MR_256,
    NR_256
);

/// The masked tail already went through the AVX-512 micro-kernel.
#[target_feature(enable = "avx512f")]
fn finish_avx512<W>(acc: __m512, _x: &[f32], _w: &[W]) -> f32 {
    _mm512_reduce_add_ps(acc)
}

/// Adds the `k % 8` tail the AVX2 micro-kernel leaves.
#[target_feature(enable = "avx2,fma")]
fn finish_avx2<W: Weight>(acc: __m256, x: &[f32], w: &[W]) -> f32 {
    let i = x.len() - x.len() % 8;
    hsum256(acc) + dot_portable(&w[i..], &x[i..])
}

/// `acc[r][col0 + c] += a[r][k0..k1] · w[c][k0..k1]` lane-wise, for `R` rows of `a` and `C` rows
/// of `w` (row stride `k`); `k1 - k0` is a multiple of 16 except for a block ending at `k`,
/// whose tail is read with a mask.
///
/// # Safety
/// avx512f present. (Lengths are asserted.)
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn micro_avx512<W: Weight, const R: usize, const C: usize>(
    a: &[f32],
    w: &[W],
    k: usize,
    k0: usize,
    k1: usize,
    acc: &mut Acc<__m512>,
    col0: usize,
) {
    assert!(a.len() >= R * k && w.len() >= C * k && k1 <= k && R <= MAX_TILE);
    assert!(col0 + C <= MAX_TILE);
    let (pa, pw) = (a.as_ptr(), w.as_ptr());
    let mut s = [[_mm512_setzero_ps(); C]; R];
    for (s, acc) in s.iter_mut().zip(acc.iter()) {
        s.copy_from_slice(&acc[col0..col0 + C]);
    }
    let mut i = k0;
    while i + 16 <= k1 {
        let mut wv = [_mm512_setzero_ps(); C];
        for (c, v) in wv.iter_mut().enumerate() {
            // SAFETY: c·k + i + 16 <= c·k + k1 <= C·k <= w.len().
            *v = unsafe { W::load16(pw.add(c * k + i)) };
        }
        for (r, s) in s.iter_mut().enumerate() {
            // SAFETY: r·k + i + 16 <= R·k <= a.len().
            let x = unsafe { _mm512_loadu_ps(pa.add(r * k + i)) };
            for (s, wv) in s.iter_mut().zip(&wv) {
                *s = _mm512_fmadd_ps(*wv, x, *s);
            }
        }
        i += 16;
    }
    if i < k1 {
        // Only the `k1 - i` (< 16) valid lanes are read; the others are zero.
        let mut wv = [_mm512_setzero_ps(); C];
        for (c, v) in wv.iter_mut().enumerate() {
            // SAFETY: avx512f is present (this function's contract).
            *v = unsafe { W::load16_tail(&w[c * k + i..c * k + k1]) };
        }
        for (r, s) in s.iter_mut().enumerate() {
            // SAFETY: avx512f is present (this function's contract).
            let x = unsafe { f32::load16_tail(&a[r * k + i..r * k + k1]) };
            for (s, wv) in s.iter_mut().zip(&wv) {
                *s = _mm512_fmadd_ps(*wv, x, *s);
            }
        }
    }
    for (s, acc) in s.iter().zip(acc.iter_mut()) {
        acc[col0..col0 + C].copy_from_slice(s);
    }
}

#[target_feature(enable = "avx2,fma")]
fn hsum256(v: __m256) -> f32 {
    let q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let h = _mm_hadd_ps(q, q);
    _mm_cvtss_f32(_mm_hadd_ps(h, h))
}

/// As [`micro_avx512`] with 8 lanes, whole vectors only: the `k % 8` tail is [`finish_avx2`]'s.
///
/// # Safety
/// avx2 and fma present. (Lengths are asserted.)
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn micro_avx2<W: Weight, const R: usize, const C: usize>(
    a: &[f32],
    w: &[W],
    k: usize,
    k0: usize,
    k1: usize,
    acc: &mut Acc<__m256>,
    col0: usize,
) {
    assert!(a.len() >= R * k && w.len() >= C * k && k1 <= k && R <= MAX_TILE);
    assert!(col0 + C <= MAX_TILE);
    let (pa, pw) = (a.as_ptr(), w.as_ptr());
    let mut s = [[_mm256_setzero_ps(); C]; R];
    for (s, acc) in s.iter_mut().zip(acc.iter()) {
        s.copy_from_slice(&acc[col0..col0 + C]);
    }
    let mut i = k0;
    while i + 8 <= k1 {
        let mut wv = [_mm256_setzero_ps(); C];
        for (c, v) in wv.iter_mut().enumerate() {
            // SAFETY: c·k + i + 8 <= c·k + k1 <= C·k <= w.len().
            *v = unsafe { W::load8(pw.add(c * k + i)) };
        }
        for (r, s) in s.iter_mut().enumerate() {
            // SAFETY: r·k + i + 8 <= R·k <= a.len().
            let x = unsafe { _mm256_loadu_ps(pa.add(r * k + i)) };
            for (s, wv) in s.iter_mut().zip(&wv) {
                *s = _mm256_fmadd_ps(*wv, x, *s);
            }
        }
        i += 8;
    }
    for (s, acc) in s.iter().zip(acc.iter_mut()) {
        acc[col0..col0 + C].copy_from_slice(s);
    }
}
