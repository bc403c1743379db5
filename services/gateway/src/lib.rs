//! The gateway tier: the public `paligemma.v1.PaliGemma` API in front of the vision and
//! decoder tiers (ARCHITECTURE.md).
//!
//! It owns the tokenizer, request validation and the sequencing image → vision replica →
//! decoder replica → detokenised stream, balancing each tier over its replicas. It holds no
//! model weights: it reads only `config.json` and `tokenizer.json` of the model directory
//! (plus, with `--vae`, the small VQ-VAE mask decoder that turns Segment's `<seg>` codes into
//! masks).
//!
//! - [`config`]: [`GatewayArgs`] (clap, env fallbacks) and its validation.
//! - [`validate`]: request rules → [`validate::ValidRequest`].
//! - [`replicas`]: per-tier pools, round-robin, retry on transport failure, DNS refresh.
//! - `pipeline`: one generation across the tiers; [`detokenize`]: ids → text deltas.
//! - [`service`]: the tonic service; [`error`]: errors and the one mapping to `Status`.
//! - [`detect`]: Detect/Segment — task prompts from labels, parsed boxes, VQ-VAE masks.
//!
//! Entry points: [`load`] then [`GatewayService::run`], or [`serve`] for both.
#![forbid(unsafe_code)]

pub mod config;
pub mod detect;
pub mod detokenize;
pub mod error;
mod pipeline;
pub mod replicas;
pub mod service;
pub mod validate;

use std::sync::Arc;

use anyhow::Context;
use paligemma_model::PaliGemmaConfig;
use paligemma_proto::v1::pali_gemma_server::PaliGemmaServer;
use paligemma_segment::MaskDecoder;
use paligemma_text::Tokenizer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::service::Routes;

pub use config::{GatewayArgs, WireDtypeArg};
pub use error::{GatewayError, ValidationError, bad_request_fields};
pub use replicas::Tier;
pub use service::{GatewayService, REQUEST_ID_HEADER};

use crate::detokenize::Detokenizer;
use crate::pipeline::Pipeline;
use crate::replicas::Pool;
use crate::validate::Limits;

/// Loads the gateway: checks `args`, reads `config.json` and `tokenizer.json`, resolves the
/// tier addresses (blocking DNS) and creates lazy channels — no connection is made yet.
/// Blocking: call it from `spawn_blocking` or before serving; it needs a Tokio runtime
/// context (the channels spawn their workers).
///
/// # Errors
/// Invalid flags (all listed at once), unreadable or invalid config/tokenizer, no runtime.
pub fn load(args: &GatewayArgs) -> anyhow::Result<GatewayService> {
    let valid = args.validate()?;
    tokio::runtime::Handle::try_current()
        .context("the gateway must be loaded inside a Tokio runtime")?;
    let config_path = args.model.join("config.json");
    let config = PaliGemmaConfig::from_file(&config_path)
        .with_context(|| format!("cannot load {}", config_path.display()))?;
    let tokenizer = Tokenizer::from_file(&args.model.join("tokenizer.json"))?;
    let mut eos_ids = config.eos_token_ids.clone();
    eos_ids.push(tokenizer.eos_id());
    eos_ids.sort_unstable();
    eos_ids.dedup();

    let limits = Limits {
        model_id: args.id(),
        max_image_bytes: args.max_image_bytes,
        max_prompt_bytes: args.max_prompt_bytes,
        default_max_new_tokens: args.default_max_new_tokens,
        max_new_tokens_limit: args.max_new_tokens_limit,
        context: config.text.max_position_embeddings,
        default_wire_dtype: args.wire_dtype.wire(),
        num_image_tokens: config.num_image_tokens(),
    };
    let masks = match &args.vae {
        Some(path) => {
            let decoder = MaskDecoder::from_npz(path).with_context(|| {
                format!("cannot load the VQ-VAE checkpoint --vae {}", path.display())
            })?;
            tracing::info!(
                vae = %path.display(),
                codes = decoder.num_codes(),
                codebook_width = decoder.codebook_width(),
                "mask decoder loaded"
            );
            Some(Arc::new(decoder))
        }
        None => None,
    };
    let pipeline = Pipeline {
        detokenizer: Detokenizer::new(tokenizer, eos_ids),
        vision: Arc::new(Pool::new(Tier::Vision, valid.vision)),
        decoder: Arc::new(Pool::new(Tier::Decoder, valid.decoder)),
    };
    tracing::info!(
        model_id = %limits.model_id,
        vision = ?pipeline.vision.addresses(),
        decoder = ?pipeline.decoder.addresses(),
        resolve_interval_secs = args.resolve_interval_secs,
        default_max_new_tokens = limits.default_max_new_tokens,
        max_new_tokens_limit = limits.max_new_tokens_limit,
        max_image_bytes = limits.max_image_bytes,
        max_prompt_bytes = limits.max_prompt_bytes,
        wire_dtype = ?args.wire_dtype,
        "gateway loaded"
    );
    Ok(GatewayService::new(
        config,
        limits,
        pipeline,
        masks,
        args.resolve_interval(),
    ))
}

impl GatewayService {
    /// The gRPC routes of this service alone (without health and reflection), for embedding.
    pub fn routes(&self) -> Routes {
        Routes::new(self.clone().into_server())
    }

    /// Serves on `listener` (with health and reflection) until `shutdown`, then drains;
    /// re-resolves the tier addresses periodically meanwhile.
    ///
    /// # Errors
    /// Transport or reflection setup failures.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        if let Some(interval) = self.resolve_interval() {
            let pools = self.pools().map(Arc::clone).to_vec();
            replicas::spawn_refresh(pools, interval, shutdown.child_token());
        }
        paligemma_rpc::Server {
            tier: "gateway",
            services: vec![<PaliGemmaServer<GatewayService> as NamedService>::NAME],
            routes: self.routes(),
            grace: paligemma_rpc::DEFAULT_GRACE,
        }
        .run(listener, shutdown)
        .await?;
        Ok(())
    }
}

/// Loads the gateway (off the async workers) and serves it until `shutdown`.
///
/// # Errors
/// As [`load`] and [`GatewayService::run`].
pub async fn serve(
    args: GatewayArgs,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Some(service) =
        paligemma_rpc::load_blocking("gateway", &shutdown, move || load(&args)).await?
    else {
        return Ok(());
    };
    service.run(listener, shutdown).await
}
