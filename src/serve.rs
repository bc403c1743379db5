//! `paligemma serve vision|decoder|gateway` (one tier per process, as deployed) and
//! `paligemma up` (all three tiers in one process on loopback, for a laptop, a demo, CI).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use paligemma_decoder_service::DecoderArgs;
use paligemma_gateway_service::GatewayArgs;
use paligemma_rpc::{DtypeArg, ModelArgs, shutdown_on_signals};
use paligemma_vision_service::VisionArgs;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Default gateway port of `up` and `serve gateway`.
pub const GATEWAY_PORT: u16 = 50051;

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(subcommand)]
    tier: Tier,
}

#[derive(Debug, Subcommand)]
enum Tier {
    /// The vision tier: images → soft tokens (SigLIP + projector).
    Vision {
        #[arg(long, default_value = "0.0.0.0:50052", env = "PALIGEMMA_LISTEN")]
        listen: SocketAddr,
        #[command(flatten)]
        args: VisionArgs,
    },
    /// The decoder tier: soft tokens + prompt ids → generated ids (Gemma).
    Decoder {
        #[arg(long, default_value = "0.0.0.0:50053", env = "PALIGEMMA_LISTEN")]
        listen: SocketAddr,
        #[command(flatten)]
        args: DecoderArgs,
    },
    /// The public gateway: tokenises, sequences vision → decoder, detokenises.
    Gateway {
        #[arg(long, default_value = "0.0.0.0:50051", env = "PALIGEMMA_LISTEN")]
        listen: SocketAddr,
        #[command(flatten)]
        args: GatewayArgs,
    },
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Model directory; default: the bundled tiny random PaliGemma 1 checkpoint.
    #[arg(long, env = "PALIGEMMA_MODEL")]
    model: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
    dtype: DtypeArg,
    /// `cpu`, or `cuda` / `cuda:N` (needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Gateway address; the vision and decoder tiers take ephemeral loopback ports.
    #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], GATEWAY_PORT)))]
    listen: SocketAddr,
    /// big_vision's VQ-VAE checkpoint (`vae-oid.npz`) for the gateway's Segment masks.
    #[arg(long, env = "PALIGEMMA_GATEWAY_VAE")]
    vae: Option<PathBuf>,
}

/// The checkpoint `up` serves when no `--model` is given.
pub fn bundled_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/pg1-32")
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn bind(addr: SocketAddr, tier: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("{tier}: cannot listen on {addr}"))
}

pub fn serve(args: ServeArgs) -> Result<()> {
    runtime()?.block_on(async move {
        let shutdown = shutdown_on_signals();
        match args.tier {
            Tier::Vision { listen, args } => {
                paligemma_vision_service::serve(args, bind(listen, "vision").await?, shutdown).await
            }
            Tier::Decoder { listen, args } => {
                paligemma_decoder_service::serve(args, bind(listen, "decoder").await?, shutdown)
                    .await
            }
            Tier::Gateway { listen, args } => {
                paligemma_gateway_service::serve(args, bind(listen, "gateway").await?, shutdown)
                    .await
            }
        }
    })
}

pub fn up(args: UpArgs) -> Result<()> {
    let model = args.model.clone().unwrap_or_else(bundled_model);
    if !model.is_dir() {
        anyhow::bail!(
            "model directory {} does not exist (pass --model DIR)",
            model.display()
        );
    }
    let model_args = ModelArgs {
        model: model.clone(),
        model_id: None,
        dtype: args.dtype,
        device: args.device.clone(),
    };
    runtime()?.block_on(async move {
        let shutdown = shutdown_on_signals();
        let vision_listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)), "vision").await?;
        let decoder_listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)), "decoder").await?;
        let gateway_listener = bind(args.listen, "gateway").await?;
        let vision_addr = vision_listener.local_addr()?;
        let decoder_addr = decoder_listener.local_addr()?;
        let vision = VisionArgs::new(model_args.clone());
        let decoder = DecoderArgs::new(model_args);
        let mut gateway = GatewayArgs::new(model.clone(), vec![vision_addr.to_string()], vec![decoder_addr.to_string()]);
        gateway.vae = args.vae.clone();
        tracing::info!(%vision_addr, %decoder_addr, gateway_addr = %args.listen, model = %model.display(), "starting all tiers");
        eprintln!("paligemma up: model {}", model.display());
        eprintln!("  vision tier  on {vision_addr}");
        eprintln!("  decoder tier on {decoder_addr}");
        eprintln!("  gateway      on {} (clients connect here; Ctrl-C stops)", args.listen);
        let mut tiers = tokio::task::JoinSet::new();
        let token = shutdown.clone();
        tiers.spawn(async move { ("vision", paligemma_vision_service::serve(vision, vision_listener, token).await) });
        let token = shutdown.clone();
        tiers.spawn(async move { ("decoder", paligemma_decoder_service::serve(decoder, decoder_listener, token).await) });
        let token = shutdown.clone();
        tiers.spawn(async move { ("gateway", paligemma_gateway_service::serve(gateway, gateway_listener, token).await) });
        wait_all(tiers, &shutdown).await
    })
}

/// Waits for every tier; the first to fail stops the others, and its error is returned.
async fn wait_all(
    mut tiers: tokio::task::JoinSet<(&'static str, Result<()>)>,
    shutdown: &CancellationToken,
) -> Result<()> {
    let mut first_error = None;
    while let Some(joined) = tiers.join_next().await {
        let failure = match joined {
            Ok((_, Ok(()))) => None,
            Ok((name, Err(e))) => Some(e.context(format!("{name} tier"))),
            Err(e) => Some(anyhow::anyhow!("a tier crashed: {e}")),
        };
        if let Some(e) = failure {
            tracing::error!(error = %format!("{e:#}"), "tier stopped; shutting the others down");
            shutdown.cancel();
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}
