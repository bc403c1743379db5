//! Turning an RGB image into the model's `pixel_values` tensor.
//!
//! This module owns [`preprocess`], [`preprocess_bytes`] and [`PixelValues`]. It follows
//! `transformers`' `SiglipImageProcessor` as used by `PaliGemmaProcessor`:
//!
//! 1. squash-resize to `(height, width)` with the configured filter, producing `u8` again
//!    (Pillow-compatible by default, torchvision-compatible with
//!    [`crate::Resampler::Torchvision`]; see [`mod@crate::resize`]);
//! 2. rescale and normalise per channel: `x = (p * rescale_factor - mean) / std`.
//!
//! When both rescaling and normalisation are on, step 2 is fused the way `transformers` 5.x
//! does it: `mean' = mean / rescale_factor` and `std' = std / rescale_factor` are computed in
//! `f64`, rounded to `f32`, and `x = (p - mean') / std'` is evaluated in `f32`. For the
//! PaliGemma defaults this is exactly `(p - 127.5) / 127.5` in `f32`. Since a pixel can only
//! take 256 values, the mapping is tabulated once per channel.
//!
//! The output layout is channels-first: `data[c * height * width + y * width + x]`, i.e. the
//! `NCHW` tensor `[1, 3, height, width]` flattened, channel order R, G, B.

use image::RgbImage;

use crate::config::PreprocessorConfig;
use crate::decode::{AlphaMode, DecodeOptions, decode_with};
use crate::error::ImageError;
use crate::resize::resize_with;

/// A preprocessed image: `f32` values in channels-first (`CHW`, i.e. `NCHW` with `N = 1`) order.
///
/// `data.len() == channels * height * width`, and the value of channel `c` at row `y`, column
/// `x` is `data[(c * height + y) * width + x]`. Channels are R, G, B (`channels == 3`). With the
/// PaliGemma defaults the values lie in `[-1, 1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PixelValues {
    /// The values, `channels * height * width` of them, channel-major.
    pub data: Vec<f32>,
    /// Number of channels (always 3).
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

impl PixelValues {
    /// The `NCHW` shape `[1, channels, height, width]` this tensor is meant to have.
    pub fn shape(&self) -> [usize; 4] {
        [1, self.channels, self.height, self.width]
    }

    /// The value at channel `c`, row `y`, column `x`, if in range.
    pub fn get(&self, c: usize, y: usize, x: usize) -> Option<f32> {
        if c >= self.channels || y >= self.height || x >= self.width {
            return None;
        }
        self.data
            .get((c * self.height + y) * self.width + x)
            .copied()
    }
}

/// Per-channel lookup tables mapping a `u8` sample to its normalised `f32` value.
fn value_tables(cfg: &PreprocessorConfig) -> [[f32; 256]; 3] {
    let mut tables = [[0.0f32; 256]; 3];
    for (c, table) in tables.iter_mut().enumerate() {
        let (mean, std) = (cfg.image_mean[c], cfg.image_std[c]);
        for (p, slot) in table.iter_mut().enumerate() {
            let p64 = p as f64;
            *slot = match (cfg.do_rescale, cfg.do_normalize) {
                (true, true) => {
                    let m = (mean / cfg.rescale_factor) as f32;
                    let s = (std / cfg.rescale_factor) as f32;
                    (p as f32 - m) / s
                }
                (true, false) => (p64 * cfg.rescale_factor) as f32,
                (false, true) => ((p64 - mean) / std) as f32,
                (false, false) => p as f32,
            };
        }
    }
    tables
}

/// Resizes (if `cfg.do_resize`) and normalises an RGB image into `pixel_values`.
///
/// Input: `image::RgbImage` (`u8`, HWC). Output: [`PixelValues`] of shape
/// `[1, 3, cfg.height, cfg.width]` (or the image's own size when `do_resize` is false), `f32`.
///
/// # Errors
/// [`ImageError::ZeroSize`] for an empty image, [`ImageError::InvalidSize`] if the resize is
/// impossible.
pub fn preprocess(img: &RgbImage, cfg: &PreprocessorConfig) -> Result<PixelValues, ImageError> {
    if img.width() == 0 || img.height() == 0 {
        return Err(ImageError::ZeroSize {
            width: img.width(),
            height: img.height(),
        });
    }
    let resized;
    let img = if cfg.do_resize && (img.width(), img.height()) != (cfg.width, cfg.height) {
        resized = resize_with(img, cfg.width, cfg.height, cfg.resample, cfg.resampler)?;
        &resized
    } else {
        img
    };
    let (w, h) = (img.width() as usize, img.height() as usize);
    let plane = w * h;
    let tables = value_tables(cfg);
    let mut data = vec![0.0f32; 3 * plane];
    let (r, rest) = data.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in img.as_raw().chunks_exact(3).take(plane).enumerate() {
        r[i] = tables[0][usize::from(px[0])];
        g[i] = tables[1][usize::from(px[1])];
        b[i] = tables[2][usize::from(px[2])];
    }
    Ok(PixelValues {
        data,
        channels: 3,
        height: h,
        width: w,
    })
}

/// Decodes image bytes (PNG/JPEG/WebP) and preprocesses them the way `transformers`'
/// `SiglipImageProcessor` does with a PIL image as input.
///
/// Uses the default [`DecodeOptions`] limits; transparency follows `cfg.do_convert_rgb`:
/// when true (the default) transparent images are composited over white like `transformers`'
/// `convert_to_rgb` ([`AlphaMode::CompositeOnWhite`]); when false alpha is dropped.
/// Output: [`PixelValues`] `[1, 3, H, W]` `f32`, as [`preprocess`].
///
/// # Errors
/// Any decoding error of [`crate::decode()`] or preprocessing error of [`preprocess`].
pub fn preprocess_bytes(bytes: &[u8], cfg: &PreprocessorConfig) -> Result<PixelValues, ImageError> {
    preprocess_bytes_with(bytes, cfg, DecodeOptions::default().max_pixels)
}

/// [`preprocess_bytes`] with an explicit decoding pixel limit (see
/// [`DecodeOptions::max_pixels`]).
///
/// # Errors
/// As for [`preprocess_bytes`].
pub fn preprocess_bytes_with(
    bytes: &[u8],
    cfg: &PreprocessorConfig,
    max_pixels: u64,
) -> Result<PixelValues, ImageError> {
    let img = decode_with(bytes, &decode_options(cfg, max_pixels))?;
    preprocess(&img, cfg)
}

/// How [`preprocess_bytes_with`] decodes for `cfg`: at most `max_pixels`, and transparency
/// composited over white when `cfg.do_convert_rgb` (as `transformers`' `convert_to_rgb`),
/// dropped otherwise. For callers that decode and preprocess in separate steps.
pub fn decode_options(cfg: &PreprocessorConfig, max_pixels: u64) -> DecodeOptions {
    DecodeOptions {
        max_pixels,
        alpha: if cfg.do_convert_rgb {
            AlphaMode::CompositeOnWhite
        } else {
            AlphaMode::Drop
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn default_normalisation_is_exactly_hf_fused_formula() {
        // transformers 5.x fuses rescale+normalise into (p - 127.5) / 127.5 in f32.
        let t = value_tables(&PreprocessorConfig::default());
        for p in 0..256usize {
            let want = (p as f32 - 127.5f32) / 127.5f32;
            for table in &t {
                assert_eq!(table[p].to_bits(), want.to_bits(), "p = {p}");
            }
        }
        assert_eq!(t[0][0], -1.0);
        assert_eq!(t[0][255], 1.0);
    }

    #[test]
    fn unfused_modes_follow_the_config() {
        let mut cfg = PreprocessorConfig {
            do_normalize: false,
            ..PreprocessorConfig::default()
        };
        assert_eq!(value_tables(&cfg)[1][51], (51.0f64 / 255.0) as f32);
        cfg.do_rescale = false;
        assert_eq!(value_tables(&cfg)[2][51], 51.0);
        cfg.do_normalize = true;
        cfg.image_mean = [1.0, 2.0, 3.0];
        cfg.image_std = [2.0, 4.0, 8.0];
        assert_eq!(value_tables(&cfg)[2][11], 1.0);
    }

    #[test]
    fn output_is_channels_first_with_nchw_shape() {
        let img = RgbImage::from_raw(2, 1, vec![0, 255, 51, 255, 0, 102]).unwrap();
        let mut cfg = PreprocessorConfig::square(2);
        cfg.height = 1;
        let pv = preprocess(&img, &cfg).unwrap();
        assert_eq!(pv.shape(), [1, 3, 1, 2]);
        assert_eq!(pv.data.len(), 6);
        let v = |p: f32| (p - 127.5) / 127.5;
        assert_eq!(
            pv.data,
            vec![v(0.0), v(255.0), v(255.0), v(0.0), v(51.0), v(102.0)]
        );
        assert_eq!(pv.get(2, 0, 1), Some(v(102.0)));
        assert_eq!(pv.get(3, 0, 0), None);
    }

    #[test]
    fn resize_is_applied_and_can_be_disabled() {
        let img = RgbImage::from_pixel(5, 3, image::Rgb([255, 0, 255]));
        let pv = preprocess(&img, &PreprocessorConfig::square(4)).unwrap();
        assert_eq!((pv.height, pv.width), (4, 4));
        assert!(pv.data[..16].iter().all(|&x| x == 1.0));
        assert!(pv.data[16..32].iter().all(|&x| x == -1.0));
        let mut cfg = PreprocessorConfig::square(4);
        cfg.do_resize = false;
        let pv = preprocess(&img, &cfg).unwrap();
        assert_eq!((pv.height, pv.width), (3, 5));
    }

    #[test]
    fn empty_image_and_bad_bytes_are_errors() {
        let cfg = PreprocessorConfig::default();
        assert!(matches!(
            preprocess(&RgbImage::new(0, 0), &cfg),
            Err(ImageError::ZeroSize { .. })
        ));
        assert!(matches!(
            preprocess_bytes(b"nope", &cfg),
            Err(ImageError::UnknownFormat)
        ));
    }
}
