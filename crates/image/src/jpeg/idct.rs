//! Inverse DCT: libjpeg's accurate integer "ISLOW" transform.

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

fn descale(x: i64, n: u32) -> i64 {
    (x + (1 << (n - 1))) >> n
}

/// One 8-point 1-D inverse DCT; `get(i)` yields input `i`, outputs are unscaled sums.
fn idct_1d(i: [i64; 8]) -> [i64; 8] {
    // Even part.
    let z1 = (i[2] + i[6]) * FIX_0_541196100;
    let tmp2 = z1 - i[6] * FIX_1_847759065;
    let tmp3 = z1 + i[2] * FIX_0_765366865;
    let tmp0 = (i[0] + i[4]) << CONST_BITS;
    let tmp1 = (i[0] - i[4]) << CONST_BITS;
    let (tmp10, tmp13) = (tmp0 + tmp3, tmp0 - tmp3);
    let (tmp11, tmp12) = (tmp1 + tmp2, tmp1 - tmp2);
    // Odd part.
    let (t0, t1, t2, t3) = (i[7], i[5], i[3], i[1]);
    let z5 = (t0 + t2 + t1 + t3) * FIX_1_175875602;
    let z1 = -(t0 + t3) * FIX_0_899976223;
    let z2 = -(t1 + t2) * FIX_2_562915447;
    let z3 = -(t0 + t2) * FIX_1_961570560 + z5;
    let z4 = -(t1 + t3) * FIX_0_390180644 + z5;
    let o0 = t0 * FIX_0_298631336 + z1 + z3;
    let o1 = t1 * FIX_2_053119869 + z2 + z4;
    let o2 = t2 * FIX_3_072711026 + z2 + z3;
    let o3 = t3 * FIX_1_501321110 + z1 + z4;
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

/// Dequantises and inverse-transforms one block into `out` (8 rows of `stride`).
pub(super) fn idct_block(coefs: &[i16], quant: &[u16; 64], out: &mut [u8], stride: usize) {
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
