//! The vision tier of PaliGemma serving: image bytes in, SigLIP + projector soft tokens out
//! (`paligemma.v1.VisionEncoder`, ARCHITECTURE "The job").
//!
//! - [`config`]: [`VisionArgs`], the tier's flags with `PALIGEMMA_VISION_*` env fallbacks.
//! - [`preprocessor`]: which image preprocessing a model directory asks for.
//! - [`service`]: [`VisionService`], the `Encode`/`Info` handlers.
//! - [`cache`]: the soft-token LRU (`--cache-bytes`) keyed by decoded pixels + weights.
//! - [`batcher`]: dynamic batching of encoder forwards (`--max-batch`, `--max-wait-us`).
//! - [`error`]: [`VisionError`] and its single mapping to gRPC status codes.
//!
//! [`load`] builds the service from flags (only the vision tower and projector are mapped);
//! [`serve`] loads and then serves on an already-bound listener with health, reflection and
//! graceful drain (`paligemma_rpc::Server`). The tier knows nothing of text.

pub mod batcher;
pub mod cache;
pub mod config;
pub mod error;
pub mod preprocessor;
pub mod service;

use std::io::IsTerminal;

use anyhow::Context;
use paligemma_model::{ModelFiles, VisionEncoder};
use paligemma_proto::v1::vision_encoder_server::SERVICE_NAME;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

pub use config::{
    DEFAULT_CACHE_BYTES, DEFAULT_MAX_BATCH, DEFAULT_MAX_CONCURRENT, DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_WAIT_US, DEFAULT_MAX_WAITING, VisionArgs,
};
pub use error::VisionError;
pub use preprocessor::preprocessor_config;
pub use service::{Limits, VisionService};

/// Loads the vision tower + projector named by `args` (blocking: reads weights) and wraps them
/// in a [`VisionService`].
///
/// # Errors
/// An unusable model directory, device or preprocessor config.
pub fn load(args: VisionArgs) -> anyhow::Result<VisionService> {
    let dir = &args.model.model;
    let files = ModelFiles::discover(dir)?;
    let opts = args.model.load_options(std::io::stderr().is_terminal())?;
    let encoder = VisionEncoder::load(&files, &opts)
        .with_context(|| format!("loading the vision tower from {}", dir.display()))?;
    let fingerprint = files.vision_fingerprint()?;
    let preprocessor = preprocessor_config(&files, encoder.config().vision.image_size)?;
    Ok(VisionService::new(
        args.model.id(),
        encoder,
        preprocessor,
        fingerprint,
        args.limits(),
    )?)
}

/// Loads the model on a blocking thread, then serves it on `listener` until `shutdown` is
/// cancelled (see [`run`]). Returns early, without serving, if `shutdown` fires while loading.
///
/// # Errors
/// Loading failures (as [`load`]) and transport failures.
pub async fn serve(
    args: VisionArgs,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Some(service) =
        paligemma_rpc::load_blocking("vision", &shutdown, move || load(args)).await?
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
    service: VisionService,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let info = service.info();
    tracing::info!(
        tier = "vision",
        model = %info.model,
        image_size = info.image_size,
        num_image_tokens = info.num_image_tokens,
        hidden_size = info.hidden_size,
        dtype = %info.dtype,
        max_batch = service.limits().max_batch,
        cache_bytes = service.limits().cache_bytes,
        model_fingerprint = %info.weights_fingerprint,
        "vision model ready"
    );
    paligemma_rpc::Server {
        tier: "vision",
        services: vec![SERVICE_NAME],
        routes: Routes::new(service.into_server()),
        grace: paligemma_rpc::DEFAULT_GRACE,
    }
    .run(listener, shutdown)
    .await?;
    Ok(())
}
