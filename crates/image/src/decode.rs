//! Decoding PNG, JPEG and WebP bytes into 8-bit RGB, the way Pillow's
//! `Image.open(f).convert("RGB")` would.
//!
//! This module owns [`decode`], [`decode_with`] and [`DecodeOptions`]. The container format is
//! guessed from the leading bytes (never from a file name). PNG and WebP are decoded by the
//! `image` crate's codecs (`png`, `image-webp`), JPEG by this crate's libjpeg-compatible
//! decoder (`jpeg` module); the conversion to RGB follows Pillow's rules:
//!
//! * RGBA / grey+alpha (and PNG `tRNS` transparency): by default ([`AlphaMode::Drop`]) the
//!   alpha channel is dropped and colours are **not** composited onto any background, as
//!   Pillow's `convert("RGB")` does. [`AlphaMode::CompositeOnWhite`] instead reproduces
//!   `transformers`' `convert_to_rgb` (what `SiglipImageProcessor` runs when
//!   `do_convert_rgb` is true): Pillow `alpha_composite` of the image over opaque white, in
//!   Pillow's integer arithmetic, then drop alpha.
//! * Greyscale: the grey value is copied into R, G and B.
//! * Palette: expanded to the palette colours; a `tRNS` chunk acts as alpha (see above).
//! * 16-bit RGB(A) and grey+alpha PNG: the most significant byte is kept (`v >> 8`), as
//!   Pillow's `RGB;16B` / `LA;16B` unpackers do.
//! * 16-bit greyscale PNG (with or without `tRNS`): Pillow opens it as mode `I;16` whose
//!   conversion to RGB *clips* values to 255 (`min(v, 255)`) instead of scaling; we do the same.
//! * Low bit-depth greyscale (1/2/4 bits) is scaled to the full 0..=255 range.
//! * EXIF orientation is ignored (no rotation), like Hugging Face's processors.
//!
//! JPEG goes through this crate's libjpeg-turbo-compatible decoder (the private `jpeg` module), so
//! baseline and progressive JPEGs decode exactly as Pillow decodes them. JPEGs it does not
//! handle (CMYK/YCCK, arithmetic coding, 12-bit, damaged files) fall back to the `image`
//! crate's zune-jpeg, whose IDCT and upsampling differ from libjpeg's by a few grey levels,
//! and whose CMYK→RGB conversion differs from Pillow's.
//!
//! Before any pixel data is decoded the header's size is checked against
//! [`DecodeOptions::max_pixels`] to stop decompression bombs.

use std::io::Cursor;

use image::codecs::jpeg::JpegDecoder;
use image::codecs::png::PngDecoder;
use image::codecs::webp::WebPDecoder;
use image::{DynamicImage, ImageDecoder, ImageFormat, Limits, RgbImage};

use crate::error::ImageError;
use crate::jpeg::{self, JpegError, JpegImage};

/// Default decode limit: 64 Mi pixels (`8192 x 8192`).
pub const DEFAULT_MAX_PIXELS: u64 = 64 * 1024 * 1024;

/// What to do with transparency when producing RGB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AlphaMode {
    /// Drop alpha, keep the stored colours (Pillow `convert("RGB")`).
    #[default]
    Drop,
    /// Composite over opaque white, then drop alpha (`transformers`' `convert_to_rgb`, i.e.
    /// Pillow `alpha_composite(white, image)`). Fully transparent pixels become white.
    CompositeOnWhite,
}

/// Limits and conversion choices applied while decoding untrusted bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Largest accepted `width * height` from the image header. Larger images are rejected with
    /// [`ImageError::TooLarge`] before their pixel data is decoded.
    pub max_pixels: u64,
    /// How transparency is turned into RGB.
    pub alpha: AlphaMode,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            max_pixels: DEFAULT_MAX_PIXELS,
            alpha: AlphaMode::Drop,
        }
    }
}

/// Decodes PNG, JPEG or WebP bytes (format guessed from content) into an 8-bit RGB image
/// (`image::RgbImage`: interleaved `u8` RGB, row-major HWC), with the default
/// [`DecodeOptions`].
///
/// # Errors
/// [`ImageError::UnknownFormat`], [`ImageError::UnsupportedFormat`],
/// [`ImageError::UnsupportedFeature`], [`ImageError::Corrupt`], [`ImageError::ZeroSize`],
/// [`ImageError::TooLarge`] or [`ImageError::MemoryLimit`].
pub fn decode(bytes: &[u8]) -> Result<RgbImage, ImageError> {
    decode_with(bytes, &DecodeOptions::default())
}

/// [`decode`] with explicit limits.
///
/// # Errors
/// As for [`decode`].
pub fn decode_with(bytes: &[u8], opts: &DecodeOptions) -> Result<RgbImage, ImageError> {
    let format = image::guess_format(bytes).map_err(|_| ImageError::UnknownFormat)?;
    match format {
        ImageFormat::Png => {
            let decoder =
                PngDecoder::new(Cursor::new(bytes)).map_err(|e| map_image_error("PNG", e))?;
            // Pillow treats every 16-bit greyscale PNG (colour type 0), with or without a tRNS
            // chunk, as mode "I;16", whose RGB conversion clips rather than scales.
            let grey16 = png_is_grey16(bytes);
            finish(decoder, "PNG", opts, grey16)
        }
        ImageFormat::Jpeg => match jpeg::decode_jpeg(bytes, opts.max_pixels) {
            Ok(img) => Ok(jpeg_to_rgb(img)),
            Err(JpegError::TooLarge { width, height }) => Err(ImageError::TooLarge {
                width,
                height,
                pixels: u64::from(width) * u64::from(height),
                max_pixels: opts.max_pixels,
            }),
            // Features the libjpeg-compatible decoder lacks (CMYK, arithmetic coding, 12-bit,
            // ...) and damaged files go to zune-jpeg, which is more lenient.
            Err(JpegError::Unsupported(_) | JpegError::Corrupt(_)) => {
                let decoder =
                    JpegDecoder::new(Cursor::new(bytes)).map_err(|e| map_image_error("JPEG", e))?;
                finish(decoder, "JPEG", opts, false)
            }
        },
        ImageFormat::WebP => {
            let decoder =
                WebPDecoder::new(Cursor::new(bytes)).map_err(|e| map_image_error("WebP", e))?;
            finish(decoder, "WebP", opts, false)
        }
        other => Err(ImageError::UnsupportedFormat {
            format: format!("{other:?}"),
        }),
    }
}

/// Grey JPEGs are replicated into R, G and B (JPEG has no alpha).
fn jpeg_to_rgb(img: JpegImage) -> RgbImage {
    let data = if img.channels == 1 {
        img.data.iter().flat_map(|&v| [v, v, v]).collect()
    } else {
        img.data
    };
    RgbImage::from_raw(img.width, img.height, data)
        .unwrap_or_else(|| RgbImage::new(img.width, img.height))
}

/// Reads bit depth and colour type from the PNG IHDR chunk (always the first chunk).
fn png_is_grey16(bytes: &[u8]) -> bool {
    matches!(
        (bytes.get(12..16), bytes.get(24), bytes.get(25)),
        (Some(b"IHDR"), Some(16), Some(0))
    )
}

fn finish(
    mut decoder: impl ImageDecoder,
    format: &'static str,
    opts: &DecodeOptions,
    grey16_clips: bool,
) -> Result<RgbImage, ImageError> {
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(ImageError::ZeroSize { width, height });
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > opts.max_pixels {
        return Err(ImageError::TooLarge {
            width,
            height,
            pixels,
            max_pixels: opts.max_pixels,
        });
    }
    // Room for the decoded buffer (at most 16-bit RGBA = 8 bytes per pixel) plus decoder
    // working memory.
    let mut limits = Limits::default();
    limits.max_alloc = Some(
        opts.max_pixels
            .saturating_mul(8)
            .saturating_add(64 * 1024 * 1024),
    );
    decoder
        .set_limits(limits)
        .map_err(|e| map_image_error(format, e))?;
    let img = DynamicImage::from_decoder(decoder).map_err(|e| map_image_error(format, e))?;
    Ok(to_rgb8_like_pillow(img, grey16_clips, opts.alpha))
}

/// Pillow's `alpha_composite` of one colour sample `v` with alpha `a` over opaque white
/// (Pillow works with 7 extra fraction bits and divides by 255 with a shift trick).
fn over_white(v: u8, a: u8) -> u8 {
    if a == 0 {
        return 255;
    }
    let (v, a) = (u32::from(v), u32::from(a));
    // With an opaque destination the output alpha is always 255 * 255 (in 255ths).
    let coef1 = a * 255 * 255 * 128 / (255 * 255);
    let coef2 = 255 * 128 - coef1;
    let t = v * coef1 + 255 * coef2 + (0x80 << 7);
    ((((t >> 8) + t) >> 8) >> 7) as u8
}

/// Converts any decoded image to 8-bit RGB with Pillow's `convert("RGB")` rules, handling alpha
/// as `alpha` says.
fn to_rgb8_like_pillow(img: DynamicImage, grey16_clips: bool, alpha: AlphaMode) -> RgbImage {
    let mix = |v: u8, a: u8| match alpha {
        AlphaMode::Drop => v,
        AlphaMode::CompositeOnWhite => over_white(v, a),
    };
    let (w, h) = (img.width(), img.height());
    let grey16 = |v: u16| -> u8 {
        if grey16_clips {
            v.min(255) as u8
        } else {
            (v >> 8) as u8
        }
    };
    let data: Vec<u8> = match img {
        DynamicImage::ImageRgb8(buf) => return buf,
        DynamicImage::ImageRgba8(buf) => buf
            .as_raw()
            .chunks_exact(4)
            .flat_map(|p| [mix(p[0], p[3]), mix(p[1], p[3]), mix(p[2], p[3])])
            .collect(),
        DynamicImage::ImageLuma8(buf) => buf.as_raw().iter().flat_map(|&v| [v, v, v]).collect(),
        DynamicImage::ImageLumaA8(buf) => buf
            .as_raw()
            .chunks_exact(2)
            .flat_map(|p| {
                let g = mix(p[0], p[1]);
                [g, g, g]
            })
            .collect(),
        DynamicImage::ImageLuma16(buf) => buf
            .as_raw()
            .iter()
            .flat_map(|&v| {
                let g = grey16(v);
                [g, g, g]
            })
            .collect(),
        DynamicImage::ImageLumaA16(buf) => buf
            .as_raw()
            .chunks_exact(2)
            .flat_map(|p| {
                let g = mix(grey16(p[0]), (p[1] >> 8) as u8);
                [g, g, g]
            })
            .collect(),
        DynamicImage::ImageRgb16(buf) => buf.as_raw().iter().map(|&v| (v >> 8) as u8).collect(),
        DynamicImage::ImageRgba16(buf) => buf
            .as_raw()
            .chunks_exact(4)
            .flat_map(|p| {
                let a = (p[3] >> 8) as u8;
                [
                    mix((p[0] >> 8) as u8, a),
                    mix((p[1] >> 8) as u8, a),
                    mix((p[2] >> 8) as u8, a),
                ]
            })
            .collect(),
        // Float images are not produced by the PNG/JPEG/WebP codecs; keep whatever the image
        // crate's conversion does rather than fail.
        other => return other.to_rgb8(),
    };
    match RgbImage::from_raw(w, h, data) {
        Some(buf) => buf,
        None => RgbImage::new(w, h),
    }
}

fn map_image_error(format: &'static str, err: image::ImageError) -> ImageError {
    use image::ImageError as E;
    match err {
        E::Unsupported(e) => ImageError::UnsupportedFeature {
            format: format.to_owned(),
            reason: e.to_string(),
        },
        E::Limits(e) => ImageError::MemoryLimit {
            format: format.to_owned(),
            reason: e.to_string(),
        },
        other => ImageError::Corrupt {
            format: format.to_owned(),
            reason: other.to_string(),
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn encode_png(img: DynamicImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn rgba_drops_alpha_without_compositing() {
        let rgba =
            image::RgbaImage::from_raw(2, 1, vec![10, 20, 30, 0, 200, 100, 50, 128]).unwrap();
        let out = decode(&encode_png(DynamicImage::ImageRgba8(rgba))).unwrap();
        assert_eq!(out.as_raw(), &[10, 20, 30, 200, 100, 50]);
    }

    #[test]
    fn composite_mode_blends_over_white() {
        let rgba =
            image::RgbaImage::from_raw(3, 1, vec![10, 20, 30, 0, 200, 100, 50, 255, 0, 0, 0, 128])
                .unwrap();
        let opts = DecodeOptions {
            alpha: AlphaMode::CompositeOnWhite,
            ..DecodeOptions::default()
        };
        let out = decode_with(&encode_png(DynamicImage::ImageRgba8(rgba)), &opts).unwrap();
        // transparent -> white, opaque -> unchanged, half black over white -> 127
        assert_eq!(out.as_raw(), &[255, 255, 255, 200, 100, 50, 127, 127, 127]);
    }

    #[test]
    fn grey_is_replicated_into_three_channels() {
        let grey = image::GrayImage::from_raw(3, 1, vec![0, 77, 255]).unwrap();
        let out = decode(&encode_png(DynamicImage::ImageLuma8(grey))).unwrap();
        assert_eq!(out.as_raw(), &[0, 0, 0, 77, 77, 77, 255, 255, 255]);
    }

    #[test]
    fn sixteen_bit_grey_clips_like_pillow_i16_and_rgb16_keeps_high_byte() {
        let g = image::ImageBuffer::<image::Luma<u16>, _>::from_raw(3, 1, vec![200, 256, 65535])
            .unwrap();
        let out = decode(&encode_png(DynamicImage::ImageLuma16(g))).unwrap();
        assert_eq!(out.as_raw(), &[200, 200, 200, 255, 255, 255, 255, 255, 255]);
        let c =
            image::ImageBuffer::<image::Rgb<u16>, _>::from_raw(1, 1, vec![0x1234, 0xff00, 0x00ff])
                .unwrap();
        let out = decode(&encode_png(DynamicImage::ImageRgb16(c))).unwrap();
        assert_eq!(out.as_raw(), &[0x12, 0xff, 0x00]);
    }

    #[test]
    fn empty_and_garbage_input_are_unknown_format() {
        assert!(matches!(decode(&[]), Err(ImageError::UnknownFormat)));
        assert!(matches!(
            decode(b"hello world, not an image"),
            Err(ImageError::UnknownFormat)
        ));
    }

    #[test]
    fn recognised_but_unsupported_formats_are_named() {
        let err = decode(b"GIF89a\x01\x00\x01\x00\x00\x00\x00").unwrap_err();
        assert!(matches!(&err, ImageError::UnsupportedFormat { format } if format == "Gif"));
        assert!(err.to_string().contains("Gif"));
    }

    #[test]
    fn truncated_png_is_corrupt() {
        let grey = image::GrayImage::from_raw(16, 16, vec![9; 256]).unwrap();
        let png = encode_png(DynamicImage::ImageLuma8(grey));
        for cut in [8, 20, 33, png.len() / 2, png.len() - 13] {
            let err = decode(&png[..cut]).unwrap_err();
            assert!(
                matches!(err, ImageError::Corrupt { ref format, .. } if format == "PNG"),
                "cut {cut}: {err:?}"
            );
        }
    }

    #[test]
    fn truncated_or_garbled_jpeg_never_panics() {
        let mut bytes = vec![0xff, 0xd8, 0xff, 0xe0, 0, 16];
        bytes.extend_from_slice(b"JFIF\0garbage");
        assert!(decode(&bytes).is_err());
        assert!(decode(&[0xff, 0xd8, 0xff]).is_err());
    }

    #[test]
    fn images_over_the_pixel_limit_are_rejected_before_decoding() {
        let grey = image::GrayImage::from_raw(10, 10, vec![1; 100]).unwrap();
        let png = encode_png(DynamicImage::ImageLuma8(grey));
        let opts = |max_pixels| DecodeOptions {
            max_pixels,
            ..DecodeOptions::default()
        };
        let err = decode_with(&png, &opts(99)).unwrap_err();
        assert!(matches!(
            err,
            ImageError::TooLarge {
                width: 10,
                height: 10,
                pixels: 100,
                max_pixels: 99
            }
        ));
        assert!(decode_with(&png, &opts(100)).is_ok());
    }

    #[test]
    fn header_claiming_a_huge_png_is_rejected_by_default() {
        // Take a valid PNG and patch its IHDR to claim 100000 x 100000 (CRC fixed up).
        let grey = image::GrayImage::from_raw(1, 1, vec![1]).unwrap();
        let mut png = encode_png(DynamicImage::ImageLuma8(grey));
        png[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        png[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = decode(&png).unwrap_err();
        assert!(matches!(err, ImageError::TooLarge { .. }), "{err:?}");
        assert!(err.to_string().contains("max_pixels"));
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
}
