//! Inverse DCT: libjpeg's accurate integer "ISLOW" transform.
//!
//! The same arithmetic runs in two widths. The reference works in `i64`, where nothing can
//! overflow whatever the coefficients. The fast path works in `i32` so that the eight 1-D
//! transforms of a pass vectorise (one lane per column, then, after a transpose, one lane per
//! row); it is exact whenever no intermediate leaves `i32`. Every intermediate of [`idct_1d`]
//! is a fixed integer combination of its eight inputs whose absolute coefficients sum to at
//! most 61214 (computed from the constants below, in evaluation order), and the rounding terms
//! add at most `2^17`, so inputs bounded by [`I32_SAFE`] = 32768 keep every value below
//! `2^31`. Dequantised coefficients of real images are far smaller (an 8-bit DCT coefficient
//! is within about +-1100 after quantisation), as are the intermediate rows; a block outside
//! the bound (only crafted or corrupt data) takes the `i64` path.

use std::ops::{Add, Mul, Neg, Shl, Sub};

const CONST_BITS: u32 = 13;
const PASS1_BITS: u32 = 2;
const FIX_0_298631336: i64 = 2446;
const FIX_0_390180644: i64 = 3196;
const FIX_0_541196100: i64 = 4433;
const FIX_0_765366865: i64 = 6270;
const FIX_0_899976223: i64 = 7373;
const FIX_1_175875602: i64 = 9633;
const FIX_1_501321110: i64 = 12299;
const FIX_1_847759065: i64 = 15137;
const FIX_1_961570560: i64 = 16069;
const FIX_2_053119869: i64 = 16819;
const FIX_2_562915447: i64 = 20995;
const FIX_3_072711026: i64 = 25172;

/// Largest input magnitude of a pass for which the `i32` path cannot overflow (see the module
/// docs).
const I32_SAFE: u32 = 32768;

/// The integer types the transform runs in.
trait Int:
    Copy
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Neg<Output = Self>
    + Shl<u32, Output = Self>
    + From<i16>
{
}

impl Int for i32 {}
impl Int for i64 {}

fn descale(x: i64, n: u32) -> i64 {
    (x + (1 << (n - 1))) >> n
}

fn descale32(x: i32, n: u32) -> i32 {
    (x + (1 << (n - 1))) >> n
}

/// One 8-point 1-D inverse DCT of inputs `i`; outputs are unscaled sums.
#[inline(always)]
fn idct_1d<T: Int>(i: [T; 8]) -> [T; 8] {
    let c = |v: i64| T::from(v as i16);
    let (
        fix_0_298631336,
        fix_0_390180644,
        fix_0_541196100,
        fix_0_765366865,
        fix_0_899976223,
        fix_1_175875602,
        fix_1_501321110,
        fix_1_847759065,
        fix_1_961570560,
        fix_2_053119869,
        fix_2_562915447,
        fix_3_072711026,
    ) = (
        c(FIX_0_298631336),
        c(FIX_0_390180644),
        c(FIX_0_541196100),
        c(FIX_0_765366865),
        c(FIX_0_899976223),
        c(FIX_1_175875602),
        c(FIX_1_501321110),
        c(FIX_1_847759065),
        c(FIX_1_961570560),
        c(FIX_2_053119869),
        c(FIX_2_562915447),
        c(FIX_3_072711026),
    );
    // Even part.
    let z1 = (i[2] + i[6]) * fix_0_541196100;
    let tmp2 = z1 - i[6] * fix_1_847759065;
    let tmp3 = z1 + i[2] * fix_0_765366865;
    let tmp0 = (i[0] + i[4]) << CONST_BITS;
    let tmp1 = (i[0] - i[4]) << CONST_BITS;
    let (tmp10, tmp13) = (tmp0 + tmp3, tmp0 - tmp3);
    let (tmp11, tmp12) = (tmp1 + tmp2, tmp1 - tmp2);
    // Odd part.
    let (t0, t1, t2, t3) = (i[7], i[5], i[3], i[1]);
    let z5 = (t0 + t2 + t1 + t3) * fix_1_175875602;
    let z1 = -(t0 + t3) * fix_0_899976223;
    let z2 = -(t1 + t2) * fix_2_562915447;
    let z3 = -(t0 + t2) * fix_1_961570560 + z5;
    let z4 = -(t1 + t3) * fix_0_390180644 + z5;
    let o0 = t0 * fix_0_298631336 + z1 + z3;
    let o1 = t1 * fix_2_053119869 + z2 + z4;
    let o2 = t2 * fix_3_072711026 + z2 + z3;
    let o3 = t3 * fix_1_501321110 + z1 + z4;
    [
        tmp10 + o3,
        tmp11 + o2,
        tmp12 + o1,
        tmp13 + o0,
        tmp13 - o0,
        tmp12 - o1,
        tmp11 - o2,
        tmp10 - o3,
    ]
}

crate::simd::avx2_dispatch! {
    pub(super) fn idct_plane(coefs: &[i16], bw: usize, quant: &[u16; 64], data: &mut [u8]) = idct_plane_body;
}

/// Inverse-transforms a grid of blocks, `bw` per row, stored block after block in `coefs`, into
/// `data` (`8 * bw` samples per row).
#[inline(always)]
fn idct_plane_body(coefs: &[i16], bw: usize, quant: &[u16; 64], data: &mut [u8]) {
    let stride = bw * 8;
    if stride == 0 {
        return;
    }
    for (blocks, rows) in coefs
        .chunks_exact(bw * 64)
        .zip(data.chunks_exact_mut(8 * stride))
    {
        for (bx, block) in blocks.chunks_exact(64).enumerate() {
            idct_block(block, quant, &mut rows[bx * 8..], stride);
        }
    }
}

/// Dequantises and inverse-transforms one block into `out` (8 rows of `stride`), in `i32`
/// when that is exact (see the module docs), else in `i64`.
#[inline(always)]
pub(super) fn idct_block(coefs: &[i16], quant: &[u16; 64], out: &mut [u8], stride: usize) {
    let Some(coefs) = coefs.first_chunk::<64>() else {
        return;
    };
    let mut x = [0i32; 64];
    for ((v, &c), &q) in x.iter_mut().zip(coefs).zip(quant) {
        // |c * q| < 2^15 * 2^16: always fits.
        *v = i32::from(c) * i32::from(q);
    }
    if max_abs(&x) > I32_SAFE {
        return idct_block_i64(coefs, quant, out, stride);
    }
    // Column pass: lane `l` is column `l`.
    let mut ws = [0i32; 64];
    for l in 0..8 {
        let o = idct_1d(std::array::from_fn(|k| x[k * 8 + l]));
        for (k, v) in o.into_iter().enumerate() {
            ws[k * 8 + l] = descale32(v, CONST_BITS - PASS1_BITS);
        }
    }
    if max_abs(&ws) > I32_SAFE {
        return idct_block_i64(coefs, quant, out, stride);
    }
    // Row pass on the transpose: lane `r` is row `r`; `px` comes out transposed too.
    let t: [i32; 64] = std::array::from_fn(|i| ws[(i % 8) * 8 + i / 8]);
    let mut px = [0u8; 64];
    for r in 0..8 {
        let o = idct_1d(std::array::from_fn(|k| t[k * 8 + r]));
        for (k, v) in o.into_iter().enumerate() {
            // libjpeg-turbo's SIMD transforms saturate (the C code's range table agrees for
            // every in-range value).
            let v = descale32(v, CONST_BITS + PASS1_BITS + 3) + 128;
            px[k * 8 + r] = v.clamp(0, 255) as u8;
        }
    }
    for (r, line) in out.chunks_mut(stride).take(8).enumerate() {
        for (k, dst) in line.iter_mut().take(8).enumerate() {
            *dst = px[k * 8 + r];
        }
    }
}

fn max_abs(v: &[i32; 64]) -> u32 {
    v.iter().map(|x| x.unsigned_abs()).fold(0, u32::max)
}

/// [`idct_block`] in `i64`: exact for any coefficients.
#[inline(never)]
fn idct_block_i64(coefs: &[i16], quant: &[u16; 64], out: &mut [u8], stride: usize) {
    let mut ws = [0i64; 64];
    for col in 0..8 {
        let mut inp = [0i64; 8];
        for (row, v) in inp.iter_mut().enumerate() {
            let k = row * 8 + col;
            *v = i64::from(coefs[k]) * i64::from(quant[k]);
        }
        let o = idct_1d(inp);
        for (row, v) in o.iter().enumerate() {
            ws[row * 8 + col] = descale(*v, CONST_BITS - PASS1_BITS);
        }
    }
    for row in 0..8 {
        let mut inp = [0i64; 8];
        inp.copy_from_slice(&ws[row * 8..row * 8 + 8]);
        let o = idct_1d(inp);
        let line = &mut out[row * stride..row * stride + 8];
        for (dst, v) in line.iter_mut().zip(o) {
            // libjpeg-turbo's SIMD transforms saturate (the C code's range table agrees for
            // every in-range value).
            *dst = (descale(v, CONST_BITS + PASS1_BITS + 3) + 128).clamp(0, 255) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn i32_path_equals_i64_path_for_any_coefficients() {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for case in 0..20_000 {
            // Magnitudes from photo-like up to far past the i32 bound.
            let range = [8i64, 64, 400, 1100, 4096, 40_000][case % 6];
            let sparse = case % 3 == 0;
            let mut coefs = [0i16; 64];
            let mut quant = [1u16; 64];
            for k in 0..64 {
                let keep = !sparse || next() % 8 == 0 || k == 0;
                if keep {
                    let v = (next() % (2 * range as u64 + 1)) as i64 - range;
                    coefs[k] = v.clamp(-32768, 32767) as i16;
                }
                quant[k] = if case % 5 == 0 {
                    1
                } else {
                    1 + (next() % 255) as u16
                };
            }
            if case % 7 == 0 {
                quant = [u16::MAX; 64];
            }
            let (mut fast, mut dispatched, mut slow) = ([0u8; 80], [0u8; 64], [0u8; 80]);
            idct_block(&coefs, &quant, &mut fast, 10);
            idct_block_i64(&coefs, &quant, &mut slow, 10);
            assert_eq!(fast, slow, "case {case}: {coefs:?} {quant:?}");
            // The AVX2 build, where the CPU has it.
            idct_plane(&coefs, 1, &quant, &mut dispatched);
            let rows = slow.chunks(10).map(|r| &r[..8]);
            assert!(dispatched.chunks(8).eq(rows), "case {case} (dispatched)");
        }
    }
}
