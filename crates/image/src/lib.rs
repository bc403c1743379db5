//! Image decoding and Pillow-compatible preprocessing for PaliGemma.
//!
//! This crate turns untrusted image bytes into the `pixel_values` tensor PaliGemma's SigLIP
//! vision tower expects, reproducing Hugging Face `transformers`' `SiglipImageProcessor`
//! (which `PaliGemmaProcessor` wraps) without any tensor library:
//!
//! 1. [`decode()`]: PNG / JPEG / WebP bytes → 8-bit RGB ([`RgbImage`]), sample-for-sample what
//!    Pillow's `Image.open(f).convert("RGB")` gives (JPEG through a libjpeg-turbo-compatible
//!    decoder; alpha dropped without compositing, grey replicated, no EXIF rotation), with a
//!    pixel-count limit against decompression bombs ([`DecodeOptions`]).
//!    [`AlphaMode::CompositeOnWhite`] composites transparency over white instead, as
//!    `transformers`' `convert_to_rgb` does.
//! 2. [`resize()`]: a re-implementation of Pillow's `Image.resize` resampling (antialiased
//!    separable convolution in 8-bit fixed point), bit-exact with Pillow 13 for every filter;
//!    [`resize_with`] + [`Resampler::Torchvision`] is bit-exact with torchvision's uint8
//!    antialiased resize (the `transformers` 5.x default backend) instead.
//! 3. [`preprocess()`]: squash-resize to the configured size, then
//!    `(p * rescale_factor - mean) / std` per channel, giving a channels-first `f32` tensor
//!    ([`PixelValues`], shape `[1, 3, H, W]`). For PaliGemma this is `(p - 127.5) / 127.5`.
//!    [`preprocess_bytes`] chains decode (compositing over white when `do_convert_rgb`) and
//!    preprocess, matching `SiglipImageProcessor` fed a PIL image.
//!
//! Settings come from a Hugging Face `preprocessor_config.json` ([`PreprocessorConfig`]).
//! All failures are reported as [`ImageError`]; no input makes these functions panic.
//!
//! ```no_run
//! # fn main() -> Result<(), paligemma_image::ImageError> {
//! let cfg = paligemma_image::PreprocessorConfig::square(224);
//! let bytes = std::fs::read("cat.jpg").unwrap_or_default();
//! let pixels = paligemma_image::preprocess_bytes(&bytes, &cfg)?;
//! assert_eq!(pixels.shape(), [1, 3, 224, 224]);
//! # Ok(()) }
//! ```

pub mod config;
pub mod decode;
pub mod error;
mod jpeg;
pub mod preprocess;
pub mod resize;
mod simd;

pub use config::PreprocessorConfig;
pub use decode::{AlphaMode, DEFAULT_MAX_PIXELS, DecodeOptions, decode, decode_with};
pub use error::ImageError;
pub use image::RgbImage;
pub use preprocess::{
    PixelValues, decode_options, preprocess, preprocess_bytes, preprocess_bytes_with,
};
pub use resize::{Filter, MAX_RESIZE_PIXELS, Resampler, resize, resize_with};
