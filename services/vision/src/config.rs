//! The vision tier's configuration: one clap struct, flags with `PALIGEMMA_VISION_*` environment
//! fallbacks, and the `DEFAULT_*` values beside it.

use clap::Args;
use paligemma_rpc::ModelArgs;

/// Default number of encodes running at once (one model forward each).
pub const DEFAULT_MAX_CONCURRENT: usize = 1;
/// Default largest accepted encoded image file, in bytes (20 MiB).
pub const DEFAULT_MAX_IMAGE_BYTES: usize = 20 << 20;
/// Default largest decoded image, in pixels (64 Mpx): the decompression-bomb guard.
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = paligemma_image::DEFAULT_MAX_PIXELS;

/// Everything `paligemma serve vision` (and `up`) needs to run the vision tier.
#[derive(Debug, Clone, Args)]
pub struct VisionArgs {
    /// The checkpoint, its id, dtype and device.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Encodes running at once; further requests wait their turn. Each holds one image's
    /// activations, so raise it only with memory to spare.
    #[arg(
        long = "max-concurrent",
        env = "PALIGEMMA_VISION_MAX_CONCURRENT",
        default_value_t = DEFAULT_MAX_CONCURRENT,
        value_parser = at_least_one,
    )]
    pub max_concurrent: usize,
    /// Largest accepted image file in bytes (PNG, JPEG or WebP as sent); larger requests are
    /// refused with INVALID_ARGUMENT before decoding.
    #[arg(
        long = "max-image-bytes",
        env = "PALIGEMMA_VISION_MAX_IMAGE_BYTES",
        default_value_t = DEFAULT_MAX_IMAGE_BYTES
    )]
    pub max_image_bytes: usize,
    /// Largest decoded image in pixels (width × height), checked from the file header before
    /// the pixels are allocated.
    #[arg(
        long = "max-image-pixels",
        env = "PALIGEMMA_VISION_MAX_IMAGE_PIXELS",
        default_value_t = DEFAULT_MAX_IMAGE_PIXELS
    )]
    pub max_image_pixels: u64,
}

/// Parses a count that must be at least 1.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

impl VisionArgs {
    /// Arguments for serving `model` with every other setting at its default.
    pub fn new(model: ModelArgs) -> Self {
        Self {
            model,
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            max_image_bytes: DEFAULT_MAX_IMAGE_BYTES,
            max_image_pixels: DEFAULT_MAX_IMAGE_PIXELS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        vision: VisionArgs,
    }

    #[test]
    fn defaults_apply_when_only_the_model_is_given() {
        let cli = Cli::try_parse_from(["x", "--model", "/m"]).unwrap();
        assert_eq!(cli.vision.max_concurrent, DEFAULT_MAX_CONCURRENT);
        assert_eq!(cli.vision.max_image_bytes, DEFAULT_MAX_IMAGE_BYTES);
        assert_eq!(cli.vision.max_image_pixels, DEFAULT_MAX_IMAGE_PIXELS);
    }

    #[test]
    fn zero_concurrency_is_refused() {
        let err = Cli::try_parse_from(["x", "--model", "/m", "--max-concurrent", "0"]);
        assert!(err.is_err());
        let ok = Cli::try_parse_from(["x", "--model", "/m", "--max-concurrent", "3"]).unwrap();
        assert_eq!(ok.vision.max_concurrent, 3);
    }
}
