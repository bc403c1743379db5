//! The crate's single error type, [`ImageError`].
//!
//! Owns every failure mode of decoding, resizing, configuration parsing and preprocessing.
//! Each variant names the thing that was wrong (the format, the limit, the config field, the
//! requested size) so that a serving front end can hand the message straight back to a client.

use thiserror::Error;

/// Everything that can go wrong in `paligemma-image`.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The leading bytes match no known image signature (or the input is empty).
    #[error("unknown image format: the data does not start with a PNG, JPEG or WebP signature")]
    UnknownFormat,

    /// The bytes are a recognised image format that this crate does not decode.
    #[error("unsupported image format {format}: only PNG, JPEG and WebP are accepted")]
    UnsupportedFormat {
        /// Name of the recognised format (e.g. "Gif").
        format: String,
    },

    /// The image uses a feature the decoder cannot handle (colour type, bit depth, ...).
    #[error("unsupported {format} image: {reason}")]
    UnsupportedFeature {
        /// The image format being decoded.
        format: String,
        /// What the decoder could not handle.
        reason: String,
    },

    /// The data claims to be a supported format but is truncated or corrupt.
    #[error("corrupt or truncated {format} data: {reason}")]
    Corrupt {
        /// The image format being decoded.
        format: String,
        /// The decoder's description of the problem.
        reason: String,
    },

    /// The decoded (or supplied) image has no pixels.
    #[error("image has zero size ({width}x{height})")]
    ZeroSize {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },

    /// The image header announces more pixels than the configured limit (decompression bomb
    /// guard), or the decoder would need more memory than allowed.
    #[error(
        "image of {width}x{height} = {pixels} pixels exceeds the limit max_pixels = {max_pixels}"
    )]
    TooLarge {
        /// Width in pixels from the header.
        width: u32,
        /// Height in pixels from the header.
        height: u32,
        /// `width * height`.
        pixels: u64,
        /// The configured limit ([`crate::DecodeOptions::max_pixels`]).
        max_pixels: u64,
    },

    /// The decoder hit its memory allocation limit.
    #[error("decoding {format} image would exceed the memory limit: {reason}")]
    MemoryLimit {
        /// The image format being decoded.
        format: String,
        /// The decoder's description of the limit that was hit.
        reason: String,
    },

    /// A resize was requested to (or from) an impossible size.
    #[error("invalid resize from {from_width}x{from_height} to {to_width}x{to_height}: {reason}")]
    InvalidSize {
        /// Source width.
        from_width: u32,
        /// Source height.
        from_height: u32,
        /// Requested width.
        to_width: u32,
        /// Requested height.
        to_height: u32,
        /// Why the size is rejected.
        reason: &'static str,
    },

    /// `preprocessor_config.json` is not valid JSON or not a JSON object.
    #[error("invalid preprocessor config JSON: {0}")]
    ConfigJson(#[from] serde_json::Error),

    /// A preprocessor config field has a wrong type or an unsupported value.
    #[error("invalid preprocessor config field `{field}`: {reason}")]
    ConfigField {
        /// The JSON key (e.g. `"resample"`, `"size.height"`).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// Reading a config file from disk failed.
    #[error("cannot read preprocessor config {path}: {source}")]
    ConfigIo {
        /// The path that was read.
        path: String,
        /// The underlying I/O error.
        source: std::io::Error,
    },
}
