//! Pasting a 64×64 decoded mask into its box on the original image (spec §10), in the two
//! reference styles:
//!
//! * big_vision (`evaluators/proj/paligemma/transfers/segmentation.py`, `Evaluator.run`): the
//!   float logits become a Pillow mode "F" image, resized to the box with BILINEAR, thresholded
//!   `> 0.0`, written at rows `ymin..ymax`, columns `xmin..xmax` → [`paste_big_vision`].
//! * demo Space (`paligemma_parse.py`, `extract_objs`): `uint8(255 · clip(0.5·m + 0.5, 0, 1))`,
//!   Pillow mode "L" resize with its default BICUBIC filter, pasted as a soft mask →
//!   [`paste_demo`]. The fixtures come from Pillow 10.4, whose two-pass resize always runs the
//!   horizontal pass first; we force that order by resizing one axis at a time with
//!   `paligemma-image`'s Pillow-exact resizer.
//!
//! Pillow's float resize (`Resample.c`, `ImagingResampleHorizontal_32bpc` / `Vertical_32bpc`) is
//! re-implemented in [`pillow_resize_f32_bilinear`]: the same pixel-centre coefficients as the
//! 8-bit path (support widened by the scale when shrinking, weights normalised in `f64`) but no
//! fixed point: each pass sums `f64(pixel) · weight` and stores the sum as `f32`.
//!
//! [`object_mask`] / [`object_soft_mask`] tie a parsed object, the decoder and the paste
//! together, choosing the style from the object's box convention.

use image::RgbImage;
use paligemma_image::{Filter, Resampler, resize_with};
use paligemma_text::{BoxConvention, DetectedObject, ImageSize, PixelBox};

use crate::decoder::{MASK_SIDE, MaskDecoder, MaskLogits};
use crate::error::SegmentError;
use crate::mask::{BinaryMask, SoftMask};

/// Per output sample: first input index and normalised weights (Pillow `precompute_coeffs`
/// with the triangle filter, support 1).
fn bilinear_coeffs(in_size: usize, out_size: usize) -> Vec<(usize, Vec<f64>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale;
    let ss = 1.0 / filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C `(int)` truncation toward zero.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64).max(0) as usize;
            let mut k: Vec<f64> = (xmin..xmax)
                .map(|x| {
                    let t = ((x as f64 - center) + 0.5) * ss;
                    let t = t.abs();
                    if t < 1.0 { 1.0 - t } else { 0.0 }
                })
                .collect();
            let total: f64 = k.iter().sum();
            if total != 0.0 {
                for w in &mut k {
                    *w /= total;
                }
            }
            (xmin, k)
        })
        .collect()
}

/// Pillow's `Image.resize((out_w, out_h), BILINEAR)` for a mode "F" (float32) image given as
/// row-major `src` of `in_w × in_h`. Horizontal pass first; an axis whose size is unchanged is
/// not filtered. Sizes must be non-zero and `src.len() == in_w * in_h` (checked by callers).
pub fn pillow_resize_f32_bilinear(
    src: &[f32],
    in_w: usize,
    in_h: usize,
    out_w: usize,
    out_h: usize,
) -> Vec<f32> {
    let mut img = src.to_vec();
    let mut w = in_w;
    if out_w != in_w {
        let coeffs = bilinear_coeffs(in_w, out_w);
        let mut out = Vec::with_capacity(out_w * in_h);
        for row in img.chunks_exact(w) {
            for (xmin, k) in &coeffs {
                let ss: f64 = k
                    .iter()
                    .zip(&row[*xmin..])
                    .map(|(&k, &p)| f64::from(p) * k)
                    .sum();
                out.push(ss as f32);
            }
        }
        img = out;
        w = out_w;
    }
    if out_h != in_h {
        let coeffs = bilinear_coeffs(in_h, out_h);
        let mut out = Vec::with_capacity(w * out_h);
        for (ymin, k) in &coeffs {
            for x in 0..w {
                let ss: f64 = k
                    .iter()
                    .enumerate()
                    .map(|(j, &k)| f64::from(img[(ymin + j) * w + x]) * k)
                    .sum();
                out.push(ss as f32);
            }
        }
        img = out;
    }
    img
}

/// Checks that `bx` is non-empty and inside the image.
fn check_box(bx: &PixelBox, size: ImageSize) -> Result<(), SegmentError> {
    if bx.is_empty() || bx.xmax > size.width() || bx.ymax > size.height() {
        return Err(SegmentError::BadBox {
            ymin: bx.ymin,
            xmin: bx.xmin,
            ymax: bx.ymax,
            xmax: bx.xmax,
            width: size.width(),
            height: size.height(),
        });
    }
    Ok(())
}

/// The box-sized float mask big_vision thresholds: `logits` resized to the box with Pillow "F"
/// BILINEAR (`box.height() × box.width()`, row-major).
///
/// # Errors
/// [`SegmentError::BadBox`] if the box is empty or not inside the image.
pub fn resize_logits_big_vision(
    logits: &MaskLogits,
    bx: &PixelBox,
    size: ImageSize,
) -> Result<Vec<f32>, SegmentError> {
    check_box(bx, size)?;
    let (w, h) = (bx.width() as usize, bx.height() as usize);
    Ok(pillow_resize_f32_bilinear(
        logits.as_slice(),
        MASK_SIDE,
        MASK_SIDE,
        w,
        h,
    ))
}

/// big_vision's binary mask: [`resize_logits_big_vision`] `> 0.0`, pasted into a zero mask of
/// the image size.
///
/// # Errors
/// [`SegmentError::BadBox`] if the box is empty or not inside the image.
pub fn paste_big_vision(
    logits: &MaskLogits,
    bx: &PixelBox,
    size: ImageSize,
) -> Result<BinaryMask, SegmentError> {
    let resized = resize_logits_big_vision(logits, bx, size)?;
    let mut mask = BinaryMask::zeros(size.width(), size.height());
    let (bw, iw) = (bx.width() as usize, size.width() as usize);
    let data = mask.data_mut();
    for (r, row) in resized.chunks_exact(bw).enumerate() {
        let start = (bx.ymin as usize + r) * iw + bx.xmin as usize;
        for (dst, &v) in data[start..start + bw].iter_mut().zip(row) {
            *dst = u8::from(v > 0.0);
        }
    }
    Ok(mask)
}

/// The demo's 8-bit image of the logits: `uint8(255 · clip(0.5·m + 0.5, 0, 1))` in float32,
/// truncated (NaN becomes 0).
pub fn logits_to_u8_demo(logits: &MaskLogits) -> Vec<u8> {
    logits
        .as_slice()
        .iter()
        .map(|&m| ((m * 0.5 + 0.5).clamp(0.0, 1.0) * 255.0) as u8)
        .collect()
}

/// The demo's soft mask: [`logits_to_u8_demo`] resized to the box with Pillow "L" BICUBIC
/// (horizontal pass first, as Pillow 10.4) and pasted into a zero mask of the image size.
///
/// # Errors
/// [`SegmentError::BadBox`] if the box is empty or not inside the image (the demo returns an
/// all-zero mask there), [`SegmentError::Resize`] if the resizer fails.
pub fn paste_demo(
    logits: &MaskLogits,
    bx: &PixelBox,
    size: ImageSize,
) -> Result<SoftMask, SegmentError> {
    paste_demo_u8(&logits_to_u8_demo(logits), bx, size)
}

/// [`paste_demo`] from the already-quantised 64×64 image (row-major).
///
/// # Errors
/// As for [`paste_demo`]; [`SegmentError::BadMaskSize`] if `m64` is not 64×64.
pub fn paste_demo_u8(m64: &[u8], bx: &PixelBox, size: ImageSize) -> Result<SoftMask, SegmentError> {
    check_box(bx, size)?;
    let side = MASK_SIDE as u32;
    let rgb: Vec<u8> = m64.iter().flat_map(|&v| [v, v, v]).collect();
    let img = RgbImage::from_raw(side, side, rgb).ok_or(SegmentError::BadMaskSize {
        width: side,
        height: side,
        expected: MASK_SIDE * MASK_SIDE,
        actual: m64.len(),
    })?;
    let resize = |img: &RgbImage, w, h| {
        resize_with(img, w, h, Filter::Bicubic, Resampler::Pillow)
            .map_err(|e| SegmentError::Resize(e.to_string()))
    };
    let (bw, bh) = (bx.width(), bx.height());
    let wide = resize(&img, bw, side)?;
    let resized = resize(&wide, bw, bh)?;
    let mut mask = SoftMask::zeros(size.width(), size.height());
    let (bw, iw) = (bw as usize, size.width() as usize);
    let data = mask.data_mut();
    for (r, row) in resized.as_raw().chunks_exact(bw * 3).enumerate() {
        let start = (bx.ymin as usize + r) * iw + bx.xmin as usize;
        for (dst, px) in data[start..start + bw].iter_mut().zip(row.chunks_exact(3)) {
            *dst = px[0];
        }
    }
    Ok(mask)
}

fn checked_codes(obj: &DetectedObject) -> Result<&[u16], SegmentError> {
    let seg = obj.seg.as_ref().ok_or(SegmentError::NoSegCodes)?;
    if !obj.is_valid() {
        return Err(SegmentError::InvalidObject(obj.problems.clone()));
    }
    Ok(seg)
}

/// The binary mask of a parsed object at the original image size, in the object's convention:
/// big_vision → [`paste_big_vision`]; demo → [`paste_demo`] thresholded at soft > 0.5
/// (byte > 127).
///
/// # Errors
/// [`SegmentError::NoSegCodes`] for a detection without `<seg>` tokens,
/// [`SegmentError::InvalidObject`] for an object with problems (big_vision gives those no
/// mask), and decoder/paste errors.
pub fn object_mask(
    decoder: &MaskDecoder,
    obj: &DetectedObject,
) -> Result<BinaryMask, SegmentError> {
    let logits = decoder.decode(checked_codes(obj)?)?;
    match obj.convention {
        BoxConvention::BigVision => paste_big_vision(&logits, &obj.box_px, obj.image),
        BoxConvention::Demo => Ok(paste_demo(&logits, &obj.box_px, obj.image)?.threshold(127)),
    }
}

/// The demo-style soft mask of a parsed object (whatever its convention, the object's own
/// pixel box is used).
///
/// # Errors
/// As for [`object_mask`].
pub fn object_soft_mask(
    decoder: &MaskDecoder,
    obj: &DetectedObject,
) -> Result<SoftMask, SegmentError> {
    let logits = decoder.decode(checked_codes(obj)?)?;
    paste_demo(&logits, &obj.box_px, obj.image)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn float_resize_of_a_constant_stays_constant() {
        let src = vec![0.25f32; 64 * 64];
        for (w, h) in [(1, 1), (3, 100), (64, 7), (200, 64)] {
            let out = pillow_resize_f32_bilinear(&src, 64, 64, w, h);
            assert_eq!(out.len(), w * h);
            assert!(out.iter().all(|&v| (v - 0.25).abs() < 1e-7), "{w}x{h}");
        }
    }

    #[test]
    fn float_resize_upsamples_a_ramp_linearly_inside() {
        // 2 -> 4 samples: centres at 0.25, 0.75, 1.25, 1.75 of the input.
        let out = pillow_resize_f32_bilinear(&[0.0, 1.0], 2, 1, 4, 1);
        assert_eq!(out, vec![0.0, 0.25, 0.75, 1.0]);
    }

    #[test]
    fn boxes_outside_the_image_are_errors() {
        let logits = MaskLogits::from_vec(vec![1.0; 4096]).unwrap();
        let size = ImageSize::new(10, 10).unwrap();
        let bx = PixelBox {
            ymin: 0,
            xmin: 0,
            ymax: 11,
            xmax: 5,
        };
        assert!(matches!(
            paste_big_vision(&logits, &bx, size),
            Err(SegmentError::BadBox { .. })
        ));
        let empty = PixelBox {
            ymin: 3,
            xmin: 0,
            ymax: 3,
            xmax: 5,
        };
        assert!(paste_demo(&logits, &empty, size).is_err());
    }

    #[test]
    fn positive_logits_fill_exactly_the_box() {
        let logits = MaskLogits::from_vec(vec![0.5; 4096]).unwrap();
        let size = ImageSize::new(8, 6).unwrap();
        let bx = PixelBox {
            ymin: 1,
            xmin: 2,
            ymax: 4,
            xmax: 7,
        };
        let m = paste_big_vision(&logits, &bx, size).unwrap();
        assert_eq!(m.area(), 15);
        assert_eq!(m.as_slice()[8 + 2], 1);
        assert_eq!(m.as_slice()[8 + 1], 0);
        let soft = paste_demo(&logits, &bx, size).unwrap();
        // 255 * (0.5 * 0.5 + 0.5) = 191.25 -> 191.
        assert_eq!(soft.as_slice()[8 + 2], 191);
        assert_eq!(soft.threshold(127), m);
    }
}
