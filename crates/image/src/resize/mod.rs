//! Pillow-compatible (and optionally torchvision-compatible) resampling of 8-bit RGB images.
//!
//! This module owns [`resize`], [`resize_with`], the [`Filter`] enum and the [`Resampler`]
//! choice. By default it reproduces what Pillow's `Image.resize((w, h), filter)` does for an
//! `"RGB"` image (Pillow 13's `Resample.c`, plus the nearest-neighbour path of `Geometry.c`),
//! described here in our own words:
//!
//! * If the requested size equals the source size, the image is copied unchanged.
//! * Convolution filters (box, bilinear, hamming, bicubic, lanczos) run as two separable passes.
//!   A pass is skipped when its dimension is unchanged. Normally the horizontal pass runs
//!   first; Pillow 13 goes vertical first when the height loses more than twice as many pixels
//!   as the width (`out_h < in_h` and `in_h - out_h > 2 * (in_w - out_w)`). Older Pillow
//!   releases always went horizontal first, which differs by a few grey levels in those cases.
//! * For each axis, with `scale = in_size / out_size` and `filterscale = max(scale, 1)`, the
//!   filter's support is widened by `filterscale` (so downscaling is antialiased). Output pixel
//!   `i` is centred at `(i + 0.5) * scale` in input coordinates; it reads the input pixels from
//!   `trunc(center - support + 0.5)` (clamped to 0) up to `trunc(center + support + 0.5)`
//!   (clamped to `in_size`), weighting input pixel `j` by
//!   `filter((j - center + 0.5) / filterscale)`. The weights are divided by their sum, in `f64`.
//! * The normalised weights are turned into fixed point with 22 fractional bits
//!   (`32 - 8 - 2`), rounding half away from zero. Each output sample is
//!   `2^21 + sum(pixel * weight)` shifted right by 22 and clipped to `0..=255`, so both passes
//!   produce 8-bit results (the intermediate image is rounded to `u8`).
//! * Nearest neighbour is not a convolution in Pillow: it walks an accumulator that starts at
//!   half a source step and advances by `in_size / out_size` per output pixel, truncating it
//!   to pick the source pixel.
//!
//! Filter kernels (Pillow's definitions): bicubic is Keys' cubic with `a = -0.5` (support 2),
//! bilinear the triangle (support 1), box `(-0.5, 0.5]` (support 0.5), hamming a
//! Hamming-windowed sinc (support 1, window constants 0.54/0.46 as `f32` literals), lanczos
//! `sinc(x) * sinc(x / 3)` (support 3).
//!
//! [`Resampler::Torchvision`] instead reproduces `torchvision.transforms.v2.functional.resize`
//! on a `uint8` tensor with `antialias=True` on an x86 CPU with AVX2 (PyTorch's native uint8
//! antialiased kernel, which is what `transformers` 5.x's default image-processor backend
//! runs). It computes the same `f64` weights, but quantises them to `i16` with a per-axis
//! precision: the largest number of fraction bits `p <= 22` such that the biggest weight times
//! `2^(p+1)` still rounds below `2^15`. It always runs the horizontal pass first. Its nearest
//! mode is `NEAREST_EXACT`: source index `floor((i + 0.5) * scale)` with `scale` in `f32`.

use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::error::ImageError;

mod kernels;

/// Fixed-point fraction bits used by Pillow for 8-bit resampling (`32 - 8 - 2`).
const PILLOW_PRECISION_BITS: u32 = 32 - 8 - 2;

/// Largest output (and intermediate) image, in pixels, that [`resize`] will allocate.
///
/// 2^28 pixels is 768 MiB of RGB data; anything larger is treated as a bad request rather than
/// attempted.
pub const MAX_RESIZE_PIXELS: u64 = 1 << 28;

/// Whose fixed-point arithmetic [`resize_with`] reproduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resampler {
    /// Pillow 13 `Image.resize` (what `transformers`' PIL backend, the 4.x default, uses).
    #[default]
    Pillow,
    /// `torchvision` v2 `resize(uint8 tensor, antialias=True)` on an AVX2 CPU (the
    /// `transformers` 5.x default backend). Supports nearest, bilinear and bicubic only.
    Torchvision,
}

/// A resampling filter, numbered like PIL's `Image.Resampling` enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Filter {
    /// PIL `NEAREST` (0).
    Nearest,
    /// PIL `LANCZOS` (1): `sinc(x) * sinc(x/3)`, support 3.
    Lanczos,
    /// PIL `BILINEAR` (2): triangle filter, support 1.
    Bilinear,
    /// PIL `BICUBIC` (3): Keys cubic with `a = -0.5`, support 2.
    Bicubic,
    /// PIL `BOX` (4): box filter, support 0.5.
    Box,
    /// PIL `HAMMING` (5): Hamming-windowed sinc, support 1.
    Hamming,
}

impl Filter {
    /// Maps a PIL resampling enum value (`Image.Resampling`) to a filter.
    ///
    /// Returns `None` for values PIL does not define.
    pub fn from_pil(code: i64) -> Option<Self> {
        match code {
            0 => Some(Self::Nearest),
            1 => Some(Self::Lanczos),
            2 => Some(Self::Bilinear),
            3 => Some(Self::Bicubic),
            4 => Some(Self::Box),
            5 => Some(Self::Hamming),
            _ => None,
        }
    }

    /// The PIL resampling enum value of this filter.
    pub fn pil_code(self) -> u8 {
        match self {
            Self::Nearest => 0,
            Self::Lanczos => 1,
            Self::Bilinear => 2,
            Self::Bicubic => 3,
            Self::Box => 4,
            Self::Hamming => 5,
        }
    }

    /// Half-width of the kernel at scale 1 (`None` for nearest, which is not a convolution).
    fn support(self) -> Option<f64> {
        match self {
            Self::Nearest => None,
            Self::Box => Some(0.5),
            Self::Bilinear | Self::Hamming => Some(1.0),
            Self::Bicubic => Some(2.0),
            Self::Lanczos => Some(3.0),
        }
    }

    /// The kernel value at `x` (in units of the unscaled kernel).
    fn kernel(self, x: f64) -> f64 {
        match self {
            Self::Nearest => 0.0,
            Self::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Self::Bilinear => {
                let x = x.abs();
                if x < 1.0 { 1.0 - x } else { 0.0 }
            }
            Self::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let px = x * std::f64::consts::PI;
                    // Pillow writes the window constants as single-precision literals.
                    px.sin() / px * (f64::from(0.54f32) + f64::from(0.46f32) * px.cos())
                }
            }
            Self::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Self::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let px = x * std::f64::consts::PI;
        px.sin() / px
    }
}

/// Fixed-point weights for one axis: output pixel `i` reads `len[i]` consecutive input pixels
/// starting at `start[i]`, with weights `weights[offset[i] .. offset[i] + len[i]]`, which carry
/// `precision` fraction bits.
struct AxisWeights {
    start: Vec<usize>,
    len: Vec<usize>,
    offset: Vec<usize>,
    weights: Vec<i32>,
    precision: u32,
}

impl AxisWeights {
    fn taps(&self, i: usize) -> (usize, &[i32]) {
        let off = self.offset[i];
        (self.start[i], &self.weights[off..off + self.len[i]])
    }

    /// Input rows (or columns) `first..last` that some output reads.
    fn used_range(&self, in_size: usize) -> (usize, usize) {
        let first = self.start.first().copied().unwrap_or(0);
        let last = self
            .start
            .last()
            .zip(self.len.last())
            .map_or(in_size, |(s, n)| s + n);
        (first, last)
    }
}

/// Computes the normalised `f64` weights for resampling `in_size` samples to `out_size`, then
/// quantises them for `resampler`. Both sizes must be non-zero (checked by the caller).
fn axis_weights(
    in_size: usize,
    out_size: usize,
    filter: Filter,
    base_support: f64,
    resampler: Resampler,
) -> AxisWeights {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = if scale < 1.0 { 1.0 } else { scale };
    let support = base_support * filterscale;
    // Both libraries size coefficient rows as 2 * ceil(support) + 1; no row is longer.
    let ksize = (support.ceil() as usize)
        .saturating_mul(2)
        .saturating_add(1);
    let inv_filterscale = 1.0 / filterscale;

    let mut start = Vec::with_capacity(out_size);
    let mut len = Vec::with_capacity(out_size);
    let mut offset = Vec::with_capacity(out_size);
    let mut normalised: Vec<f64> = Vec::new();

    for i in 0..out_size {
        let center = (i as f64 + 0.5) * scale;
        // Float-to-int casts truncate toward zero, as C's `(int)` does.
        let lo = ((center - support + 0.5) as i64).max(0) as usize;
        let hi = ((center + support + 0.5) as i64).clamp(0, in_size as i64) as usize;
        let n = hi.saturating_sub(lo).min(ksize);

        let row_start = normalised.len();
        let mut total = 0.0f64;
        for j in 0..n {
            let w = filter.kernel((((j + lo) as f64 - center) + 0.5) * inv_filterscale);
            normalised.push(w);
            total += w;
        }
        if total != 0.0 {
            for w in &mut normalised[row_start..] {
                *w /= total;
            }
        }
        offset.push(row_start);
        start.push(lo);
        len.push(n);
    }

    let precision = match resampler {
        Resampler::Pillow => PILLOW_PRECISION_BITS,
        Resampler::Torchvision => {
            let w_max = normalised.iter().copied().fold(0.0f64, f64::max);
            int16_precision(w_max)
        }
    };
    let weights = normalised.iter().map(|&w| to_fixed(w, precision)).collect();
    AxisWeights {
        start,
        len,
        offset,
        weights,
        precision,
    }
}

/// PyTorch's choice of fraction bits for `i16` weights: stop before the largest weight, scaled
/// by one more bit, would round to `2^15` or more (at most 22 bits).
fn int16_precision(w_max: f64) -> u32 {
    let mut p = 0u32;
    while p < 22 {
        let next = (0.5 + w_max * f64::from(1u32 << (p + 1))) as i64;
        if next >= 1 << 15 {
            break;
        }
        p += 1;
    }
    p
}

/// Converts a normalised weight to fixed point, rounding half away from zero.
fn to_fixed(w: f64, precision: u32) -> i32 {
    let scaled = w * f64::from(1u32 << precision);
    if w < 0.0 {
        (scaled - 0.5) as i32
    } else {
        (scaled + 0.5) as i32
    }
}

/// Shifts out the fraction (the caller added the rounding half) and clips to `u8`.
fn clip8(acc: i64, precision: u32) -> u8 {
    if acc >= (1i64 << (precision + 8)) {
        255
    } else if acc <= 0 {
        0
    } else {
        (acc >> precision) as u8
    }
}

/// The rounding half for `precision` fraction bits.
fn half(precision: u32) -> i64 {
    if precision == 0 {
        0
    } else {
        1 << (precision - 1)
    }
}

/// Horizontal pass over rows `y0..y1` of `src` (`width` x ?, RGB), producing `out_w` columns.
fn horizontal_pass(src: &[u8], width: usize, y0: usize, y1: usize, ax: &AxisWeights) -> Vec<u8> {
    let out_w = ax.start.len();
    let (p, h) = (ax.precision, half(ax.precision));
    let mut out = Vec::with_capacity((y1 - y0) * out_w * 3);
    for y in y0..y1 {
        let row = &src[y * width * 3..(y + 1) * width * 3];
        for x in 0..out_w {
            let (start, k) = ax.taps(x);
            let taps = &row[start * 3..(start + k.len()) * 3];
            let (mut r, mut g, mut b) = (h, h, h);
            for (px, &w) in taps.chunks_exact(3).zip(k) {
                let w = i64::from(w);
                r += i64::from(px[0]) * w;
                g += i64::from(px[1]) * w;
                b += i64::from(px[2]) * w;
            }
            out.extend_from_slice(&[clip8(r, p), clip8(g, p), clip8(b, p)]);
        }
    }
    out
}

/// Vertical pass: `src` is `width` x ? RGB whose row 0 is input row `row_base`; produces
/// `ax.start.len()` rows.
fn vertical_pass(src: &[u8], width: usize, row_base: usize, ax: &AxisWeights) -> Vec<u8> {
    let out_h = ax.start.len();
    let stride = width * 3;
    let (p, h) = (ax.precision, half(ax.precision));
    let mut out = vec![0u8; out_h * stride];
    let mut acc = vec![0i64; stride];
    for (y, out_row) in out.chunks_exact_mut(stride).enumerate() {
        let (start, k) = ax.taps(y);
        acc.fill(h);
        for (j, &w) in k.iter().enumerate() {
            let r = start + j - row_base;
            let in_row = &src[r * stride..(r + 1) * stride];
            let w = i64::from(w);
            for (a, &px) in acc.iter_mut().zip(in_row) {
                *a += i64::from(px) * w;
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = clip8(a, p);
        }
    }
    out
}

/// Horizontal pass with the fast kernel when its sums fit in `i32` (always, for these filters).
fn hpass(src: &[u8], width: usize, y0: usize, y1: usize, ax: &AxisWeights) -> Vec<u8> {
    match kernels::Packed::new(ax) {
        Some(pk) => kernels::horizontal(src, width, y0, y1, &pk),
        None => horizontal_pass(src, width, y0, y1, ax),
    }
}

/// Vertical pass with the fast kernel when its sums fit in `i32`.
fn vpass(src: &[u8], width: usize, row_base: usize, ax: &AxisWeights) -> Vec<u8> {
    if !kernels::vertical_ok(ax) {
        return vertical_pass(src, width, row_base, ax);
    }
    let mut out = vec![0u8; ax.start.len() * width * 3];
    kernels::vertical(src, width * 3, row_base, ax, &mut out);
    out
}

/// Pillow 13 runs the vertical pass first when the height shrinks by more than twice as many
/// pixels as the width does. Since both passes round to `u8`, the order changes results.
fn pillow_vertical_first(in_w: usize, in_h: usize, out_w: usize, out_h: usize) -> bool {
    out_h < in_h && (in_h - out_h) as i64 > 2 * (in_w as i64 - out_w as i64)
}

/// Pillow's nearest-neighbour source index table for one axis.
fn pillow_nearest_indices(in_size: usize, out_size: usize) -> Vec<usize> {
    let step = in_size as f64 / out_size as f64;
    let mut pos = step * 0.5;
    let mut idx = Vec::with_capacity(out_size);
    for _ in 0..out_size {
        // `pos` is never negative here; truncation picks the source pixel.
        let i = (pos as usize).min(in_size - 1);
        idx.push(i);
        pos += step;
    }
    idx
}

/// PyTorch's `nearest-exact` source index table for one axis (scale held in `f32`).
fn torch_nearest_exact_indices(in_size: usize, out_size: usize) -> Vec<usize> {
    if in_size == out_size {
        return (0..out_size).collect();
    }
    let scale = in_size as f32 / out_size as f32;
    (0..out_size)
        .map(|i| {
            let pos = ((i as f64 + 0.5) * f64::from(scale)) as f32;
            (pos.floor() as usize).min(in_size - 1)
        })
        .collect()
}

fn invalid(img: &RgbImage, width: u32, height: u32, reason: &'static str) -> ImageError {
    ImageError::InvalidSize {
        from_width: img.width(),
        from_height: img.height(),
        to_width: width,
        to_height: height,
        reason,
    }
}

/// Resizes an 8-bit RGB image to exactly `width` x `height` (aspect ratio not preserved),
/// reproducing Pillow's `Image.resize((width, height), filter)` for mode `"RGB"`.
///
/// Input and output are `image::RgbImage` (interleaved `u8` RGB, row-major, `HWC`).
///
/// # Errors
/// [`ImageError::InvalidSize`] if the source or target has a zero dimension, or if the output
/// (or the intermediate image of the two-pass convolution) would exceed [`MAX_RESIZE_PIXELS`].
pub fn resize(
    img: &RgbImage,
    width: u32,
    height: u32,
    filter: Filter,
) -> Result<RgbImage, ImageError> {
    resize_with(img, width, height, filter, Resampler::Pillow)
}

/// [`resize`] reproducing the arithmetic of the chosen library.
///
/// # Errors
/// As for [`resize`]; also [`ImageError::InvalidSize`] for a filter `resampler` does not
/// implement (torchvision: only nearest, bilinear and bicubic).
pub fn resize_with(
    img: &RgbImage,
    width: u32,
    height: u32,
    filter: Filter,
    resampler: Resampler,
) -> Result<RgbImage, ImageError> {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    if in_w == 0 || in_h == 0 {
        return Err(invalid(img, width, height, "the source image is empty"));
    }
    if width == 0 || height == 0 {
        return Err(invalid(img, width, height, "the target size is zero"));
    }
    if u64::from(width) * u64::from(height) > MAX_RESIZE_PIXELS {
        return Err(invalid(
            img,
            width,
            height,
            "the target exceeds MAX_RESIZE_PIXELS",
        ));
    }
    if resampler == Resampler::Torchvision
        && !matches!(filter, Filter::Nearest | Filter::Bilinear | Filter::Bicubic)
    {
        return Err(invalid(
            img,
            width,
            height,
            "the torchvision resampler supports only nearest, bilinear and bicubic",
        ));
    }
    let (out_w, out_h) = (width as usize, height as usize);
    let src: &[u8] = img.as_raw();
    if src.len() < in_w.saturating_mul(in_h).saturating_mul(3) {
        return Err(invalid(
            img,
            width,
            height,
            "the source buffer is shorter than its size",
        ));
    }
    if (out_w, out_h) == (in_w, in_h) {
        return Ok(img.clone());
    }
    let too_big = |pixels: u64| {
        (pixels > MAX_RESIZE_PIXELS).then(|| {
            invalid(
                img,
                width,
                height,
                "the intermediate image exceeds MAX_RESIZE_PIXELS",
            )
        })
    };

    let data = match filter.support() {
        None => {
            let (xs, ys) = match resampler {
                Resampler::Pillow => (
                    pillow_nearest_indices(in_w, out_w),
                    pillow_nearest_indices(in_h, out_h),
                ),
                Resampler::Torchvision => (
                    torch_nearest_exact_indices(in_w, out_w),
                    torch_nearest_exact_indices(in_h, out_h),
                ),
            };
            let mut out = Vec::with_capacity(out_w * out_h * 3);
            for &y in &ys {
                let row = &src[y * in_w * 3..(y + 1) * in_w * 3];
                for &x in &xs {
                    out.extend_from_slice(&row[x * 3..x * 3 + 3]);
                }
            }
            out
        }
        Some(support) => {
            let weights = |i, o| axis_weights(i, o, filter, support, resampler);
            let horiz = (out_w != in_w).then(|| weights(in_w, out_w));
            let vert = (out_h != in_h).then(|| weights(in_h, out_h));
            match (horiz, vert) {
                (Some(h), None) => hpass(src, in_w, 0, in_h, &h),
                (None, Some(v)) => vpass(src, in_w, 0, &v),
                (Some(h), Some(v))
                    if resampler == Resampler::Pillow
                        && pillow_vertical_first(in_w, in_h, out_w, out_h) =>
                {
                    if let Some(err) = too_big(in_w as u64 * out_h as u64) {
                        return Err(err);
                    }
                    let tmp = vpass(src, in_w, 0, &v);
                    hpass(&tmp, in_w, 0, out_h, &h)
                }
                (Some(h), Some(v)) => {
                    // Only the input rows the vertical pass reads go through the horizontal pass.
                    let (first, last) = v.used_range(in_h);
                    if let Some(err) = too_big(out_w as u64 * (last - first) as u64) {
                        return Err(err);
                    }
                    let tmp = hpass(src, in_w, first, last, &h);
                    vpass(&tmp, out_w, first, &v)
                }
                (None, None) => src[..in_w * in_h * 3].to_vec(),
            }
        }
    };
    RgbImage::from_raw(width, height, data)
        .ok_or_else(|| invalid(img, width, height, "internal buffer size mismatch"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn img(w: u32, h: u32, f: impl Fn(u32, u32, usize) -> u8) -> RgbImage {
        let mut data = Vec::new();
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    data.push(f(x, y, c));
                }
            }
        }
        RgbImage::from_raw(w, h, data).unwrap()
    }

    #[test]
    fn pil_codes_round_trip_and_unknown_codes_are_rejected() {
        for code in 0..6 {
            assert_eq!(Filter::from_pil(code).unwrap().pil_code() as i64, code);
        }
        assert_eq!(Filter::from_pil(6), None);
        assert_eq!(Filter::from_pil(-1), None);
        assert_eq!(Filter::from_pil(3), Some(Filter::Bicubic));
    }

    #[test]
    fn bicubic_kernel_matches_keys_cubic_with_a_minus_half() {
        let k = |x| Filter::Bicubic.kernel(x);
        assert_eq!(k(0.0), 1.0);
        assert_eq!(k(1.0), 0.0);
        assert_eq!(k(2.0), 0.0);
        assert_eq!(k(0.5), 0.5625);
        assert_eq!(k(-0.5), 0.5625);
        assert_eq!(k(1.5), -0.0625);
        assert_eq!(Filter::Bilinear.kernel(0.25), 0.75);
    }

    #[test]
    fn fixed_point_rounds_half_away_from_zero() {
        assert_eq!(to_fixed(1.0, 22), 1 << 22);
        assert_eq!(to_fixed(0.5, 22), 1 << 21);
        assert_eq!(to_fixed(-0.0625, 22), -(1 << 18));
        assert_eq!(to_fixed(1.5 / f64::from(1u32 << 22), 22), 2);
        assert_eq!(to_fixed(-1.5 / f64::from(1u32 << 22), 22), -2);
        assert_eq!(to_fixed(0.75, 14), 3 << 12);
    }

    #[test]
    fn clip8_saturates_and_truncates() {
        let h = half(22);
        assert_eq!(clip8(-5, 22), 0);
        assert_eq!(clip8(0, 22), 0);
        assert_eq!(clip8((200 << 22) + h, 22), 200);
        assert_eq!(clip8(256 << 22, 22), 255);
        assert_eq!(clip8((255 << 22) + h, 22), 255);
        assert_eq!(clip8((17 << 14) + half(14), 14), 17);
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point_within_rounding() {
        for (i, o) in [(100, 7), (7, 100), (224, 224 + 1), (3, 1), (1, 9)] {
            let ax = axis_weights(i, o, Filter::Bicubic, 2.0, Resampler::Pillow);
            for p in 0..o {
                let (start, k) = ax.taps(p);
                assert!(start + k.len() <= i);
                let s: i64 = k.iter().map(|&w| i64::from(w)).sum();
                assert!(
                    (s - (1 << 22)).abs() <= k.len() as i64,
                    "{i}->{o} px {p}: {s}"
                );
            }
        }
    }

    #[test]
    fn constant_image_stays_constant_for_every_filter() {
        let src = img(17, 11, |_, _, c| [10, 128, 250][c]);
        for f in [
            Filter::Nearest,
            Filter::Lanczos,
            Filter::Bilinear,
            Filter::Bicubic,
            Filter::Box,
            Filter::Hamming,
        ] {
            for (w, h) in [(5, 3), (40, 29), (1, 1), (17, 30), (3, 11)] {
                let out = resize(&src, w, h, f).unwrap();
                assert_eq!((out.width(), out.height()), (w, h));
                for p in out.pixels() {
                    assert_eq!(p.0, [10, 128, 250], "{f:?} {w}x{h}");
                }
            }
        }
    }

    #[test]
    fn identity_size_returns_an_exact_copy() {
        let src = img(9, 4, |x, y, c| (x * 31 + y * 17 + c as u32 * 5) as u8);
        assert_eq!(resize(&src, 9, 4, Filter::Bicubic).unwrap(), src);
    }

    #[test]
    fn unchanged_axis_is_not_filtered() {
        // Only the width changes: every output column must come from its own row.
        let src = img(8, 5, |x, y, _| if y % 2 == 0 { (x * 30) as u8 } else { 7 });
        let out = resize(&src, 3, 5, Filter::Bicubic).unwrap();
        for x in 0..3 {
            assert_eq!(out.get_pixel(x, 1).0, [7, 7, 7]);
        }
    }

    #[test]
    fn zero_sizes_are_errors_not_panics() {
        let src = img(4, 4, |_, _, _| 0);
        assert!(matches!(
            resize(&src, 0, 4, Filter::Bicubic),
            Err(ImageError::InvalidSize { .. })
        ));
        assert!(resize(&src, 4, 0, Filter::Nearest).is_err());
        let empty = RgbImage::new(0, 3);
        assert!(resize(&empty, 4, 4, Filter::Bicubic).is_err());
    }

    #[test]
    fn oversized_targets_are_errors() {
        let src = img(2, 2, |_, _, _| 0);
        let err = resize(&src, 1 << 15, 1 << 15, Filter::Bilinear).unwrap_err();
        assert!(err.to_string().contains("MAX_RESIZE_PIXELS"), "{err}");
    }

    #[test]
    fn fast_passes_equal_the_i64_reference_passes() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let filters = [
            Filter::Lanczos,
            Filter::Bilinear,
            Filter::Bicubic,
            Filter::Box,
            Filter::Hamming,
        ];
        for case in 0..304 {
            let (mut in_w, mut in_h) = (1 + next(70) as usize, 1 + next(70) as usize);
            let (mut out_w, mut out_h) = (1 + next(90) as usize, 1 + next(90) as usize);
            if case >= 300 {
                // Large enough for the two-thread split.
                (in_w, in_h, out_w, out_h) = (640, 480, 224 + case, 448 - case);
            }
            let filter = filters[case % filters.len()];
            let resampler = if case % 2 == 0 {
                Resampler::Pillow
            } else {
                Resampler::Torchvision
            };
            // Saturated edges stress the clipping; noise the rounding.
            let src: Vec<u8> = (0..in_w * in_h * 3)
                .map(|i| match next(4) {
                    0 => 0,
                    1 => 255,
                    _ => (next(256) as usize ^ i) as u8,
                })
                .collect();
            let support = filter.support().unwrap();
            let h = axis_weights(in_w, out_w, filter, support, resampler);
            let v = axis_weights(in_h, out_h, filter, support, resampler);
            assert_eq!(
                hpass(&src, in_w, 0, in_h, &h),
                horizontal_pass(&src, in_w, 0, in_h, &h),
                "{filter:?} {resampler:?} {in_w}x{in_h} -> {out_w}"
            );
            assert_eq!(
                vpass(&src, in_w, 0, &v),
                vertical_pass(&src, in_w, 0, &v),
                "{filter:?} {resampler:?} {in_w}x{in_h} -> h {out_h}"
            );
        }
    }

    #[test]
    fn nearest_picks_pillow_source_pixels() {
        // Pillow: out x samples floor((x + 0.5) * in / out).
        assert_eq!(pillow_nearest_indices(10, 4), vec![1, 3, 6, 8]);
        assert_eq!(pillow_nearest_indices(3, 7), vec![0, 0, 1, 1, 1, 2, 2]);
        assert_eq!(pillow_nearest_indices(5, 1), vec![2]);
    }
}
