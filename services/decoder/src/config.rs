//! The decoder tier's configuration: one clap struct, flags with `PALIGEMMA_DECODER_*`
//! environment fallbacks, and the `DEFAULT_*` values beside it.

use clap::Args;
use paligemma_rpc::ModelArgs;

/// Default number of generations running at once (each holds one KV cache).
pub const DEFAULT_MAX_CONCURRENT: usize = 4;
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
    /// Generations running at once; further requests wait their turn. Each holds a KV cache
    /// of up to max_position_embeddings tokens.
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
        for flag in ["--max-concurrent", "--max-new-tokens-limit", "--max-images"] {
            assert!(
                Cli::try_parse_from(["x", "--model", "/m", flag, "0"]).is_err(),
                "{flag}"
            );
        }
        let ok = Cli::try_parse_from(["x", "--model", "/m", "--max-images", "2"]).unwrap();
        assert_eq!(ok.decoder.max_images, 2);
    }
}
