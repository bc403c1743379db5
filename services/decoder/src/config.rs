//! The decoder tier's configuration: one clap struct, flags with `PALIGEMMA_DECODER_*`
//! environment fallbacks, and the `DEFAULT_*` values beside it.

use clap::Args;
use paligemma_engine::EngineConfig;
use paligemma_engine::engine::{DEFAULT_BLOCK_SIZE, DEFAULT_MAX_BATCH_TOKENS, DEFAULT_MAX_WAITING};
use paligemma_rpc::ModelArgs;

/// Default number of sequences in one batched decoder step.
pub const DEFAULT_MAX_CONCURRENT: usize = 64;
/// Default upper bound a request may ask for in `max_new_tokens`.
pub const DEFAULT_MAX_NEW_TOKENS_LIMIT: usize = 2048;
/// Default number of images (blocks of soft tokens) per request.
pub const DEFAULT_MAX_IMAGES: usize = 1;

/// Everything `paligemma serve decoder` (and `up`) needs to run the decoder tier.
#[derive(Debug, Clone, Args)]
pub struct DecoderArgs {
    /// The checkpoint, its id, dtype and device.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Sequences batched in one decoder step at most; further requests wait in the engine's
    /// queue (bounded by --max-waiting).
    #[arg(
        long = "max-concurrent",
        env = "PALIGEMMA_DECODER_MAX_CONCURRENT",
        default_value_t = DEFAULT_MAX_CONCURRENT,
        value_parser = at_least_one,
    )]
    pub max_concurrent: usize,
    /// Largest `max_new_tokens` a request may ask for (tokens); larger requests are refused
    /// with INVALID_ARGUMENT.
    #[arg(
        long = "max-new-tokens-limit",
        env = "PALIGEMMA_DECODER_MAX_NEW_TOKENS_LIMIT",
        default_value_t = DEFAULT_MAX_NEW_TOKENS_LIMIT,
        value_parser = at_least_one,
    )]
    pub max_new_tokens_limit: usize,
    /// Images per request: soft-token streams may carry at most this many × the model's
    /// tokens per image (256/1024/4096 for 224/448/896 px) rows.
    #[arg(
        long = "max-images",
        env = "PALIGEMMA_DECODER_MAX_IMAGES",
        default_value_t = DEFAULT_MAX_IMAGES,
        value_parser = at_least_one,
    )]
    pub max_images: usize,
    /// Bytes of the paged KV cache (all layers, K and V, in the model dtype); default: room
    /// for 32768 tokens of this model. A request larger than the whole cache is refused with
    /// RESOURCE_EXHAUSTED.
    #[arg(
        long = "kv-cache-bytes",
        env = "PALIGEMMA_DECODER_KV_CACHE_BYTES",
        value_parser = clap::value_parser!(u64).range(1..),
    )]
    pub kv_cache_bytes: Option<u64>,
    /// Tokens per KV cache block.
    #[arg(
        long = "block-size",
        env = "PALIGEMMA_DECODER_BLOCK_SIZE",
        default_value_t = DEFAULT_BLOCK_SIZE,
        value_parser = at_least_one,
    )]
    pub block_size: usize,
    /// Requests waiting for admission at most; beyond it RESOURCE_EXHAUSTED.
    #[arg(
        long = "max-waiting",
        env = "PALIGEMMA_DECODER_MAX_WAITING",
        default_value_t = DEFAULT_MAX_WAITING,
        value_parser = at_least_one,
    )]
    pub max_waiting: usize,
    /// Tokens computed in one decoder step at most (prefill + decode).
    #[arg(
        long = "max-batch-tokens",
        env = "PALIGEMMA_DECODER_MAX_BATCH_TOKENS",
        default_value_t = DEFAULT_MAX_BATCH_TOKENS,
        value_parser = at_least_one,
    )]
    pub max_batch_tokens: usize,
}

/// Parses a count that must be at least 1.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

impl DecoderArgs {
    /// Arguments for serving `model` with every other setting at its default.
    pub fn new(model: ModelArgs) -> Self {
        Self {
            model,
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            max_new_tokens_limit: DEFAULT_MAX_NEW_TOKENS_LIMIT,
            max_images: DEFAULT_MAX_IMAGES,
            kv_cache_bytes: None,
            block_size: DEFAULT_BLOCK_SIZE,
            max_waiting: DEFAULT_MAX_WAITING,
            max_batch_tokens: DEFAULT_MAX_BATCH_TOKENS,
        }
    }

    /// The engine's limits from these flags.
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            block_size: self.block_size,
            kv_cache_bytes: self.kv_cache_bytes,
            max_waiting: self.max_waiting,
            max_batch_tokens: self.max_batch_tokens,
            max_running: self.max_concurrent,
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
        decoder: DecoderArgs,
    }

    #[test]
    fn defaults_apply_when_only_the_model_is_given() {
        let cli = Cli::try_parse_from(["x", "--model", "/m"]).unwrap();
        assert_eq!(cli.decoder.max_concurrent, DEFAULT_MAX_CONCURRENT);
        assert_eq!(
            cli.decoder.max_new_tokens_limit,
            DEFAULT_MAX_NEW_TOKENS_LIMIT
        );
        assert_eq!(cli.decoder.max_images, DEFAULT_MAX_IMAGES);
    }

    #[test]
    fn zero_limits_are_refused() {
        for flag in [
            "--max-concurrent",
            "--max-new-tokens-limit",
            "--max-images",
            "--kv-cache-bytes",
            "--block-size",
            "--max-waiting",
            "--max-batch-tokens",
        ] {
            assert!(
                Cli::try_parse_from(["x", "--model", "/m", flag, "0"]).is_err(),
                "{flag}"
            );
        }
        let ok = Cli::try_parse_from(["x", "--model", "/m", "--max-images", "2"]).unwrap();
        assert_eq!(ok.decoder.max_images, 2);
    }
}
