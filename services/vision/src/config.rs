//! The vision tier's configuration: one clap struct, flags with `PALIGEMMA_VISION_*` environment
//! fallbacks, and the `DEFAULT_*` values beside it.

use clap::Args;
use paligemma_rpc::ModelArgs;

/// Default number of batched forwards running at once.
pub const DEFAULT_MAX_CONCURRENT: usize = 1;
/// Default most images per forward.
pub const DEFAULT_MAX_BATCH: usize = 8;
/// Default time the first image of a batch waits for more, in microseconds (2 ms: small next
/// to one forward, long enough to catch a burst).
pub const DEFAULT_MAX_WAIT_US: u64 = 2_000;
/// Default images waiting for the encoder before new requests get RESOURCE_EXHAUSTED.
pub const DEFAULT_MAX_WAITING: usize = 64;
/// Default soft-token cache size in bytes (256 MiB: 128 PaliGemma-3B-224 images).
pub const DEFAULT_CACHE_BYTES: usize = 256 << 20;
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
    /// Batched forwards running at once (one gathers while the others compute). Each holds up
    /// to --max-batch images' activations, so raise it only with memory to spare.
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
    /// Most images per encoder forward (dynamic batching; 1 turns batching off).
    #[arg(
        long = "max-batch",
        env = "PALIGEMMA_VISION_MAX_BATCH",
        default_value_t = DEFAULT_MAX_BATCH,
        value_parser = at_least_one,
    )]
    pub max_batch: usize,
    /// How long the first image of a batch waits for others, in microseconds.
    #[arg(
        long = "max-wait-us",
        env = "PALIGEMMA_VISION_MAX_WAIT_US",
        default_value_t = DEFAULT_MAX_WAIT_US
    )]
    pub max_wait_us: u64,
    /// Images waiting for the encoder beyond which new requests are refused with
    /// RESOURCE_EXHAUSTED (the gateway then tries another replica).
    #[arg(
        long = "max-waiting",
        env = "PALIGEMMA_VISION_MAX_WAITING",
        default_value_t = DEFAULT_MAX_WAITING,
        value_parser = at_least_one,
    )]
    pub max_waiting: usize,
    /// Soft-token cache size in bytes (LRU; 0 turns the cache off). A hit skips preprocessing
    /// and the encoder.
    #[arg(
        long = "cache-bytes",
        env = "PALIGEMMA_VISION_CACHE_BYTES",
        default_value_t = DEFAULT_CACHE_BYTES
    )]
    pub cache_bytes: usize,
    /// Images decoded and preprocessed at once (0 = one per CPU core). Bounds the memory of
    /// large decodes.
    #[arg(
        long = "preprocess-threads",
        env = "PALIGEMMA_VISION_PREPROCESS_THREADS",
        default_value_t = 0
    )]
    pub preprocess_threads: usize,
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
            max_batch: DEFAULT_MAX_BATCH,
            max_wait_us: DEFAULT_MAX_WAIT_US,
            max_waiting: DEFAULT_MAX_WAITING,
            cache_bytes: DEFAULT_CACHE_BYTES,
            preprocess_threads: 0,
        }
    }

    /// The service limits these flags describe.
    pub fn limits(&self) -> crate::Limits {
        let preprocess = if self.preprocess_threads == 0 {
            std::thread::available_parallelism().map_or(1, usize::from)
        } else {
            self.preprocess_threads
        };
        crate::Limits {
            max_concurrent: self.max_concurrent,
            max_image_bytes: self.max_image_bytes,
            max_image_pixels: self.max_image_pixels,
            max_batch: self.max_batch,
            max_wait: std::time::Duration::from_micros(self.max_wait_us),
            max_waiting: self.max_waiting,
            cache_bytes: self.cache_bytes,
            preprocess_threads: preprocess,
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
        assert_eq!(cli.vision.max_batch, DEFAULT_MAX_BATCH);
        assert_eq!(cli.vision.cache_bytes, DEFAULT_CACHE_BYTES);
        assert!(cli.vision.limits().preprocess_threads >= 1);
    }

    #[test]
    fn batching_and_cache_flags_parse() {
        let cli = Cli::try_parse_from([
            "x",
            "--model",
            "/m",
            "--max-batch",
            "4",
            "--max-wait-us",
            "500",
            "--max-waiting",
            "9",
            "--cache-bytes",
            "0",
            "--preprocess-threads",
            "3",
        ])
        .unwrap();
        let limits = cli.vision.limits();
        assert_eq!(limits.max_batch, 4);
        assert_eq!(limits.max_wait, std::time::Duration::from_micros(500));
        assert_eq!(limits.max_waiting, 9);
        assert_eq!(limits.cache_bytes, 0);
        assert_eq!(limits.preprocess_threads, 3);
        assert!(Cli::try_parse_from(["x", "--model", "/m", "--max-batch", "0"]).is_err());
    }

    #[test]
    fn zero_concurrency_is_refused() {
        let err = Cli::try_parse_from(["x", "--model", "/m", "--max-concurrent", "0"]);
        assert!(err.is_err());
        let ok = Cli::try_parse_from(["x", "--model", "/m", "--max-concurrent", "3"]).unwrap();
        assert_eq!(ok.vision.max_concurrent, 3);
    }
}
