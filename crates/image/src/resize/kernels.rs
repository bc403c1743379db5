//! The two convolution passes in the form that compiles to SIMD code.
//!
//! Pillow and PyTorch both accumulate `u8 * weight` in 32-bit integers; doing the same here
//! (instead of `i64`) halves the work and lets the loops vectorise. The sums cannot overflow:
//! [`Packed::new`] and [`vertical_ok`] check that `255 * sum(|w|) + half < 2^31` for every
//! output (for Pillow's filters `sum(|w|)` is at most about 1.6 in units of one, far below the
//! 2.0 that would overflow), and the caller keeps the `i64` reference passes otherwise.
//! Integer addition is associative, so the lane-wise partial sums below give exactly the
//! serial sum.
//!
//! Horizontally, every output pixel reads a contiguous run of input pixels, so the input row is
//! split into three zero-padded channel planes and each output sample becomes a fixed-length
//! dot product (`taps`, a multiple of [`LANES`]; the padding weights are zero). Vertically,
//! every output row is a weighted sum of whole input rows, computed a column strip at a time so
//! that the accumulators stay in registers.

use super::AxisWeights;

/// Dot-product chunk: the padded tap count is a multiple of this.
pub(super) const LANES: usize = 8;

/// Columns per vertical strip (accumulators kept in registers).
const STRIP: usize = 32;

/// Low bits split off weights that do not fit in `i16` (Pillow's 22-bit ones).
const LO_BITS: u32 = 11;

/// One axis's fixed-point weights, zero-padded to `taps` per output, as `i16` so that the dot
/// products compile to `pmaddwd`-style multiply-adds. Weights that do not fit `i16` are split
/// as `w = (hi << LO_BITS) + lo` with `0 <= lo < 2^LO_BITS`; since
/// `sum(p * w) = (sum(p * hi) << LO_BITS) + sum(p * lo)` in exact integer arithmetic, the split
/// changes nothing but the instruction count.
pub(super) struct Packed {
    start: Vec<usize>,
    taps: usize,
    hi: Vec<i16>,
    /// Empty when every weight fits in `i16` (torchvision's always do).
    lo: Vec<i16>,
    precision: u32,
    half: i32,
}

/// Whether `255 * sum(|w| + 2^LO_BITS) + half` stays below `2^31` for every output (the
/// `2^LO_BITS` bounds `sum(p * hi) << LO_BITS` of a split weight row too).
fn fits_i32(ax: &AxisWeights) -> bool {
    let half = super::half(ax.precision);
    (0..ax.start.len()).all(|i| {
        let k = ax.taps(i).1;
        let s: i64 = k.iter().map(|&w| i64::from(w).abs() + (1 << LO_BITS)).sum();
        255 * s + half < i64::from(i32::MAX)
    })
}

impl Packed {
    /// `None` when a sum could overflow `i32` (see the module docs).
    pub(super) fn new(ax: &AxisWeights) -> Option<Self> {
        if !fits_i32(ax) {
            return None;
        }
        let n = ax.start.len();
        let longest = ax.len.iter().copied().max().unwrap_or(0);
        let taps = longest.div_ceil(LANES).max(1) * LANES;
        let split = ax.weights.iter().any(|&w| i16::try_from(w).is_err());
        let mut hi = vec![0i16; n * taps];
        let mut lo = if split {
            vec![0i16; n * taps]
        } else {
            Vec::new()
        };
        for i in 0..n {
            let k = ax.taps(i).1;
            for (j, &w) in k.iter().enumerate() {
                let (h, l) = if split {
                    (w >> LO_BITS, w & ((1 << LO_BITS) - 1))
                } else {
                    (w, 0)
                };
                // |w| <= 2^22 (a weight is at most 1.0), so `h` fits after the split.
                hi[i * taps + j] = i16::try_from(h).ok()?;
                if split {
                    lo[i * taps + j] = l as i16;
                }
            }
        }
        Some(Self {
            start: ax.start.clone(),
            taps,
            hi,
            lo,
            precision: ax.precision,
            half: super::half(ax.precision) as i32,
        })
    }

    /// Length every padded channel row must have for an input `width` pixels wide.
    pub(super) fn padded_len(&self, width: usize) -> usize {
        width + self.taps
    }

    /// Filters one row given as three zero-padded channel planes (each
    /// [`Self::padded_len`] long) into `out`, interleaved RGB, `3 * outputs` long.
    #[inline(always)]
    pub(super) fn row(&self, planes: [&[u8]; 3], out: &mut [u8]) {
        let taps = self.taps;
        let (p, half) = (self.precision, self.half);
        let outputs = out.chunks_exact_mut(3).zip(&self.start);
        if self.lo.is_empty() {
            for ((o, &s), hi) in outputs.zip(self.hi.chunks_exact(taps)) {
                for (dst, plane) in o.iter_mut().zip(planes) {
                    *dst = clip(dot(&plane[s..s + taps], hi) + half, p);
                }
            }
        } else {
            let weights = self.hi.chunks_exact(taps).zip(self.lo.chunks_exact(taps));
            for ((o, &s), (hi, lo)) in outputs.zip(weights) {
                for (dst, plane) in o.iter_mut().zip(planes) {
                    let px = &plane[s..s + taps];
                    *dst = clip((dot(px, hi) << LO_BITS) + dot(px, lo) + half, p);
                }
            }
        }
    }
}

/// `sum(p * w)` over slices of equal length, a multiple of [`LANES`].
#[inline(always)]
fn dot(px: &[u8], w: &[i16]) -> i32 {
    let mut acc = [0i32; LANES];
    for (p, k) in px.chunks_exact(LANES).zip(w.chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] += i32::from(p[l]) * i32::from(k[l]);
        }
    }
    acc.iter().sum()
}

/// Shifts out the fraction (the rounding half is already in `acc`) and clips to `u8`; the
/// same as Pillow's `clip8` and PyTorch's saturating narrow.
#[inline(always)]
fn clip(acc: i32, precision: u32) -> u8 {
    (acc >> precision).clamp(0, 255) as u8
}

/// Whether [`vertical`] may be used for these weights.
pub(super) fn vertical_ok(ax: &AxisWeights) -> bool {
    fits_i32(ax)
}

/// Vertical pass over rows of `stride` bytes (any layout): `src` row 0 is input row `row_base`;
/// writes `ax.start.len()` rows into `out` (on two threads for large outputs).
pub(super) fn vertical(
    src: &[u8],
    stride: usize,
    row_base: usize,
    ax: &AxisWeights,
    out: &mut [u8],
) {
    crate::simd::split_in_two(out, stride, |y0, rows| {
        vertical_rows(src, stride, row_base, ax, y0, rows);
    });
}

crate::simd::avx2_dispatch! {
    fn vertical_rows(
        src: &[u8],
        stride: usize,
        row_base: usize,
        ax: &AxisWeights,
        y0: usize,
        out: &mut [u8],
    ) = vertical_body;
}

/// Output rows `y0..` of [`vertical`] into `out`.
#[inline(always)]
fn vertical_body(
    src: &[u8],
    stride: usize,
    row_base: usize,
    ax: &AxisWeights,
    y0: usize,
    out: &mut [u8],
) {
    let (p, half) = (ax.precision, super::half(ax.precision) as i32);
    for (y, out_row) in (y0..).zip(out.chunks_exact_mut(stride)) {
        let (start, k) = ax.taps(y);
        let first = (start - row_base) * stride;
        let rows = &src[first..first + k.len() * stride];
        for (x0, dst) in (0..stride).step_by(STRIP).zip(out_row.chunks_mut(STRIP)) {
            if dst.len() == STRIP {
                let mut acc = [half; STRIP];
                for (j, &w) in k.iter().enumerate() {
                    let r = &rows[j * stride + x0..j * stride + x0 + STRIP];
                    for l in 0..STRIP {
                        acc[l] += i32::from(r[l]) * w;
                    }
                }
                for (o, &a) in dst.iter_mut().zip(&acc) {
                    *o = clip(a, p);
                }
            } else {
                for (i, o) in dst.iter_mut().enumerate() {
                    let mut a = half;
                    for (j, &w) in k.iter().enumerate() {
                        a += i32::from(rows[j * stride + x0 + i]) * w;
                    }
                    *o = clip(a, p);
                }
            }
        }
    }
}

/// Horizontal pass over rows `y0..y1` of interleaved RGB `src` (`width` pixels per row).
pub(super) fn horizontal(src: &[u8], width: usize, y0: usize, y1: usize, pk: &Packed) -> Vec<u8> {
    let mut out = vec![0u8; (y1 - y0) * pk.start.len() * 3];
    crate::simd::split_in_two(&mut out, pk.start.len() * 3, |first, rows| {
        horizontal_into(src, width, y0 + first, pk, rows);
    });
    out
}

crate::simd::avx2_dispatch! {
    fn horizontal_into(src: &[u8], width: usize, y0: usize, pk: &Packed, out: &mut [u8]) = horizontal_body;
}

#[inline(always)]
fn horizontal_body(src: &[u8], width: usize, y0: usize, pk: &Packed, out: &mut [u8]) {
    let out_stride = pk.start.len() * 3;
    let len = pk.padded_len(width);
    let mut scratch = vec![0u8; 3 * len];
    for (row, dst) in src
        .chunks_exact(width * 3)
        .skip(y0)
        .zip(out.chunks_exact_mut(out_stride))
    {
        let (r, rest) = scratch.split_at_mut(len);
        let (g, b) = rest.split_at_mut(len);
        for (((px, r), g), b) in row
            .chunks_exact(3)
            .zip(r.iter_mut())
            .zip(g.iter_mut())
            .zip(b.iter_mut())
        {
            *r = px[0];
            *g = px[1];
            *b = px[2];
        }
        pk.row([r, g, b], dst);
    }
}
