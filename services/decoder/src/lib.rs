//! The decoder tier of PaliGemma serving: soft tokens + prompt token ids in, generated token
//! ids out (`paligemma.v1.Decoder`, ARCHITECTURE "The job"). It knows nothing of images or text.
//!
//! - [`config`]: [`DecoderArgs`], the tier's flags with `PALIGEMMA_DECODER_*` env fallbacks.
//! - [`receive`]: reading the input stream (soft-token chunks, then one `DecodeRequest`).
//! - [`validate`]: checking the request against the model; [`ValidRequest`].
//! - [`service`]: [`DecoderService`], the `Generate`/`Info` handlers.
//! - [`stats`]: counters of what generations did.
//! - [`error`]: [`DecoderError`] and its single mapping to gRPC status codes.
//!
//! [`load`] builds the service from flags (only the Gemma decoder and LM head are mapped);
//! [`serve`] loads and then serves on an already-bound listener with health, reflection and
//! graceful drain (`paligemma_rpc::Server`). Requests are submitted to the continuous-batching
//! engine (`paligemma_engine::EngineHandle`): a paged KV cache of `--kv-cache-bytes` in blocks
//! of `--block-size` tokens, at most `--max-concurrent` sequences and `--max-batch-tokens`
//! tokens per step, `--max-waiting` queued requests.

pub mod config;
pub mod error;
pub mod receive;
pub mod service;
pub mod stats;
pub mod validate;

use std::io::IsTerminal;

use anyhow::{Context, bail};
use paligemma_model::ModelFiles;
use paligemma_proto::v1::decoder_server::SERVICE_NAME;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

pub use config::{
    DEFAULT_MAX_CONCURRENT, DEFAULT_MAX_IMAGES, DEFAULT_MAX_NEW_TOKENS_LIMIT, DecoderArgs,
};
pub use error::DecoderError;
pub use service::{DecoderService, Limits};
pub use stats::StatsSnapshot;
pub use validate::{RequestLimits, ValidRequest};

/// Loads the Gemma decoder named by `args` (blocking: reads weights) and wraps it in a
/// [`DecoderService`]. The vision fingerprint is computed from the same checkpoint, so only
/// soft tokens from its vision weights are accepted.
///
/// # Errors
/// An unusable model directory or device, or a config whose projector width differs from the
/// decoder's hidden size.
pub fn load(args: DecoderArgs) -> anyhow::Result<DecoderService> {
    let dir = &args.model.model;
    let files = ModelFiles::discover(dir)?;
    let opts = args.model.load_options(std::io::stderr().is_terminal())?;
    let (config, decoder) = paligemma_model::load_decoder(&files, &opts)
        .with_context(|| format!("loading the decoder from {}", dir.display()))?;
    if config.projection_dim != config.text.hidden_size {
        bail!(
            "config.json: projection_dim {} differs from text_config.hidden_size {}",
            config.projection_dim,
            config.text.hidden_size
        );
    }
    let fingerprint = files.vision_fingerprint()?;
    let limits = Limits {
        max_concurrent: args.max_concurrent,
        max_new_tokens_limit: args.max_new_tokens_limit,
        max_images: args.max_images,
    };
    Ok(DecoderService::new(
        args.model.id(),
        config,
        decoder,
        fingerprint,
        limits,
        args.engine_config(),
    )?)
}

/// Loads the model on a blocking thread, then serves it on `listener` until `shutdown` is
/// cancelled (see [`run`]). Returns early, without serving, if `shutdown` fires while loading.
///
/// # Errors
/// Loading failures (as [`load`]) and transport failures.
pub async fn serve(
    args: DecoderArgs,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Some(service) =
        paligemma_rpc::load_blocking("decoder", &shutdown, move || load(args)).await?
    else {
        return Ok(());
    };
    run(service, listener, shutdown).await
}

/// Serves an already loaded service on `listener` (health, reflection v1 + v1alpha) until
/// `shutdown` is cancelled, then drains in-flight calls for `paligemma_rpc::DEFAULT_GRACE`.
///
/// # Errors
/// Transport or reflection setup failures.
pub async fn run(
    service: DecoderService,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let info = service.info();
    tracing::info!(
        tier = "decoder",
        model = %info.model,
        decoder_family = %info.decoder_family,
        hidden_size = info.hidden_size,
        vocab_size = info.vocab_size,
        max_position_embeddings = info.max_position_embeddings,
        dtype = %info.dtype,
        model_fingerprint = %info.vision_fingerprint,
        "decoder model ready"
    );
    paligemma_rpc::Server {
        tier: "decoder",
        services: vec![SERVICE_NAME],
        routes: Routes::new(service.into_server()),
        grace: paligemma_rpc::DEFAULT_GRACE,
    }
    .run(listener, shutdown)
    .await?;
    Ok(())
}
