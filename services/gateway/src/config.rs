//! The gateway's configuration: one clap struct with an environment fallback for every flag,
//! `DEFAULT_*` constants beside it, and [`GatewayArgs::validate`], which reports every problem
//! at once before anything is bound or loaded.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use paligemma_proto::v1::WireDtype;

use crate::replicas::Target;

/// `max_new_tokens` used when a request leaves it at 0.
pub const DEFAULT_MAX_NEW_TOKENS: u32 = 64;
/// Largest `max_new_tokens` a request may ask for.
pub const DEFAULT_MAX_NEW_TOKENS_LIMIT: u32 = 1024;
/// Largest encoded image accepted, in bytes (20 MiB).
pub const DEFAULT_MAX_IMAGE_BYTES: usize = 20 << 20;
/// Largest prompt accepted, in bytes of UTF-8 (8 KiB).
pub const DEFAULT_MAX_PROMPT_BYTES: usize = 8 << 10;
/// How often tier addresses are resolved again, in seconds.
pub const DEFAULT_RESOLVE_INTERVAL_SECS: u64 = 10;

/// Soft-token dtype between the tiers when a request leaves `wire_dtype` unspecified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WireDtypeArg {
    /// The vision tier's model dtype.
    Auto,
    F32,
    Bf16,
    F16,
}

impl WireDtypeArg {
    /// The proto value (`Auto` → `WIRE_DTYPE_UNSPECIFIED`).
    pub fn wire(self) -> WireDtype {
        match self {
            Self::Auto => WireDtype::Unspecified,
            Self::F32 => WireDtype::F32,
            Self::Bf16 => WireDtype::Bf16,
            Self::F16 => WireDtype::F16,
        }
    }
}

/// Flags of `paligemma serve gateway` (and of the gateway inside `up`).
#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
    /// Model directory; the gateway reads only its tokenizer.json and config.json (no weights).
    #[arg(long, env = "PALIGEMMA_MODEL")]
    pub model: PathBuf,
    /// Id clients use to name the model (default: the directory's name).
    #[arg(long, env = "PALIGEMMA_MODEL_ID")]
    pub model_id: Option<String>,
    /// Vision tier replicas: `host:port` or `http://host:port`, repeatable or comma-separated.
    /// A name resolving to several addresses (a Kubernetes headless Service) means several
    /// replicas.
    #[arg(
        long = "vision",
        env = "PALIGEMMA_GATEWAY_VISION",
        value_delimiter = ',',
        required = true
    )]
    pub vision: Vec<String>,
    /// Decoder tier replicas, as for `--vision`.
    #[arg(
        long = "decoder",
        env = "PALIGEMMA_GATEWAY_DECODER",
        value_delimiter = ',',
        required = true
    )]
    pub decoder: Vec<String>,
    /// Seconds between DNS re-resolutions of the tier addresses; 0 = resolve once at startup.
    #[arg(long, default_value_t = DEFAULT_RESOLVE_INTERVAL_SECS, env = "PALIGEMMA_GATEWAY_RESOLVE_INTERVAL_SECS")]
    pub resolve_interval_secs: u64,
    /// `max_new_tokens` for requests that leave it at 0.
    #[arg(long, default_value_t = DEFAULT_MAX_NEW_TOKENS, env = "PALIGEMMA_GATEWAY_DEFAULT_MAX_NEW_TOKENS")]
    pub default_max_new_tokens: u32,
    /// Largest `max_new_tokens` a request may ask for.
    #[arg(long, default_value_t = DEFAULT_MAX_NEW_TOKENS_LIMIT, env = "PALIGEMMA_GATEWAY_MAX_NEW_TOKENS_LIMIT")]
    pub max_new_tokens_limit: u32,
    /// Largest encoded image accepted, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_IMAGE_BYTES, env = "PALIGEMMA_GATEWAY_MAX_IMAGE_BYTES")]
    pub max_image_bytes: usize,
    /// Largest prompt accepted, in bytes of UTF-8.
    #[arg(long, default_value_t = DEFAULT_MAX_PROMPT_BYTES, env = "PALIGEMMA_GATEWAY_MAX_PROMPT_BYTES")]
    pub max_prompt_bytes: usize,
    /// Soft-token dtype between the tiers for requests that leave `wire_dtype` unspecified.
    #[arg(long, value_enum, default_value_t = WireDtypeArg::Auto, env = "PALIGEMMA_GATEWAY_WIRE_DTYPE")]
    pub wire_dtype: WireDtypeArg,
    /// big_vision's VQ-VAE checkpoint (`vae-oid.npz`) for the masks of `Segment`, loaded once at
    /// startup; without it `Segment` answers FAILED_PRECONDITION (`Detect` works either way).
    #[arg(long, env = "PALIGEMMA_GATEWAY_VAE")]
    pub vae: Option<PathBuf>,
}

impl GatewayArgs {
    /// Arguments with every default, for `model` and the two tiers' addresses (for `up` and
    /// tests).
    pub fn new(model: PathBuf, vision: Vec<String>, decoder: Vec<String>) -> Self {
        Self {
            model,
            model_id: None,
            vision,
            decoder,
            resolve_interval_secs: DEFAULT_RESOLVE_INTERVAL_SECS,
            default_max_new_tokens: DEFAULT_MAX_NEW_TOKENS,
            max_new_tokens_limit: DEFAULT_MAX_NEW_TOKENS_LIMIT,
            max_image_bytes: DEFAULT_MAX_IMAGE_BYTES,
            max_prompt_bytes: DEFAULT_MAX_PROMPT_BYTES,
            wire_dtype: WireDtypeArg::Auto,
            vae: None,
        }
    }

    /// The model id: `--model-id`, else the directory's name.
    pub fn id(&self) -> String {
        self.model_id.clone().unwrap_or_else(|| {
            self.model.file_name().map_or_else(
                || "paligemma".to_string(),
                |n| n.to_string_lossy().into_owned(),
            )
        })
    }

    /// Re-resolution period; `None` when disabled.
    pub fn resolve_interval(&self) -> Option<Duration> {
        (self.resolve_interval_secs > 0).then(|| Duration::from_secs(self.resolve_interval_secs))
    }

    /// Checks every flag and parses the tier addresses.
    ///
    /// # Errors
    /// One error listing every problem found (unparsable address, empty tier, zero limits, a
    /// default above the limit).
    pub fn validate(&self) -> anyhow::Result<ValidConfig> {
        let mut problems = Vec::new();
        let vision = parse_targets("--vision", &self.vision, &mut problems);
        let decoder = parse_targets("--decoder", &self.decoder, &mut problems);
        if self.max_new_tokens_limit == 0 {
            problems.push("--max-new-tokens-limit must be at least 1".to_string());
        }
        if self.default_max_new_tokens == 0 {
            problems.push("--default-max-new-tokens must be at least 1".to_string());
        }
        if self.default_max_new_tokens > self.max_new_tokens_limit {
            problems.push(format!(
                "--default-max-new-tokens {} exceeds --max-new-tokens-limit {}",
                self.default_max_new_tokens, self.max_new_tokens_limit
            ));
        }
        if self.max_image_bytes == 0 {
            problems.push("--max-image-bytes must be at least 1".to_string());
        }
        if self.max_prompt_bytes == 0 {
            problems.push("--max-prompt-bytes must be at least 1".to_string());
        }
        if !problems.is_empty() {
            anyhow::bail!("invalid gateway configuration: {}", problems.join("; "));
        }
        Ok(ValidConfig { vision, decoder })
    }
}

/// What [`GatewayArgs::validate`] parsed.
#[derive(Debug, Clone)]
pub struct ValidConfig {
    pub(crate) vision: Vec<Target>,
    pub(crate) decoder: Vec<Target>,
}

fn parse_targets(flag: &str, values: &[String], problems: &mut Vec<String>) -> Vec<Target> {
    let mut targets = Vec::new();
    for value in values.iter().map(|v| v.trim()).filter(|v| !v.is_empty()) {
        match Target::parse(value) {
            Ok(t) => targets.push(t),
            Err(e) => problems.push(format!("{flag} `{value}`: {e}")),
        }
    }
    if values.iter().all(|v| v.trim().is_empty()) {
        problems.push(format!("{flag}: at least one address is required"));
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> GatewayArgs {
        GatewayArgs::new(
            "models/pg1-32".into(),
            vec!["127.0.0.1:1".into()],
            vec!["http://localhost:2".into()],
        )
    }

    #[test]
    fn model_id_defaults_to_the_directory_name() {
        assert_eq!(args().id(), "pg1-32");
        let mut a = args();
        a.model_id = Some("pali".into());
        assert_eq!(a.id(), "pali");
    }

    #[test]
    fn validate_reports_every_problem_at_once() {
        let mut a = args();
        a.vision = vec![String::new()];
        a.decoder = vec!["no-port".into()];
        a.default_max_new_tokens = 2000;
        let err = a.validate().unwrap_err().to_string();
        assert!(err.contains("--vision: at least one address"), "{err}");
        assert!(err.contains("--decoder `no-port`"), "{err}");
        assert!(err.contains("--default-max-new-tokens 2000"), "{err}");
    }

    #[test]
    fn repeated_and_comma_separated_flags_split_into_targets() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            gateway: GatewayArgs,
        }
        let cli = Cli::try_parse_from([
            "x",
            "--model",
            "m",
            "--vision",
            "a:1,b:2",
            "--vision",
            "http://c:3",
            "--decoder",
            "d:4",
        ])
        .unwrap();
        assert_eq!(cli.gateway.vision, ["a:1", "b:2", "http://c:3"]);
        let valid = cli.gateway.validate().unwrap();
        assert_eq!(valid.vision.len(), 3);
        assert_eq!(valid.decoder.len(), 1);
    }
}
