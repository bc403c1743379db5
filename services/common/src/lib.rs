//! What every tier's server does the same way: register `grpc.health.v1.Health` and server
//! reflection (v1 and v1alpha — grpcurl 1.8 speaks only v1alpha), serve on an already-bound
//! listener, and on shutdown report NOT_SERVING, stop accepting, and drain in-flight calls under
//! a grace period.

mod model_args;

pub use model_args::{DtypeArg, ModelArgs, parse_device};

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

/// Default time in-flight calls get to finish after shutdown starts.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// One tier's server.
pub struct Server {
    /// "vision", "decoder" or "gateway" (for logs).
    pub tier: &'static str,
    /// Fully-qualified gRPC service names whose health is reported (e.g. `paligemma.v1.Decoder`).
    pub services: Vec<&'static str>,
    pub routes: Routes,
    pub grace: Duration,
}

impl Server {
    /// Serves until `shutdown` is cancelled, then drains.
    ///
    /// # Errors
    /// Reflection setup or transport failures.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), ServeError> {
        let (reporter, health) = tonic_health::server::health_reporter();
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(paligemma_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(paligemma_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;
        let routes = self
            .routes
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);

        for name in self.services.iter().copied().chain([""]) {
            reporter
                .set_service_status(name, ServingStatus::Serving)
                .await;
        }
        let addr = listener.local_addr().ok();
        tracing::info!(tier = self.tier, ?addr, "serving");

        let drain_started = shutdown.clone();
        let names = self.services.clone();
        let signal = async move {
            drain_started.cancelled().await;
            for name in names.into_iter().chain([""]) {
                reporter
                    .set_service_status(name, ServingStatus::NotServing)
                    .await;
            }
        };
        let serve = tonic::transport::Server::builder()
            .add_routes(routes)
            // Accepted sockets need TCP_NODELAY: without it every small streamed message waits
            // for Nagle + the peer's delayed ACK (~40 ms per response, measured by bench-stack).
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                signal,
            );
        let tier = self.tier;
        let grace = self.grace;
        let drained = async move {
            shutdown.cancelled().await;
            tokio::time::sleep(grace).await;
            tracing::warn!(tier, "grace period over; abandoning in-flight calls");
        };
        tokio::select! {
            result = serve => result?,
            () = drained => {}
        }
        tracing::info!(tier, "stopped");
        Ok(())
    }
}

/// A token cancelled on SIGINT (Ctrl-C, developers) or SIGTERM (what Kubernetes sends before
/// killing a pod).
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received; draining");
        trigger.cancel();
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs blocking model work off the async runtime, mapping a panic in it to INTERNAL.
///
/// # Errors
/// `INTERNAL` if the closure panicked or the runtime is shutting down.
pub async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tonic::Status> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        tracing::error!(what, error = %e, "blocking task failed");
        tonic::Status::internal(format!("{what} failed"))
    })
}

/// Runs a blocking model load off the async workers; `Ok(None)` when `shutdown` fires first
/// (the load thread then finishes in the background and its result is dropped).
///
/// # Errors
/// The load's own error, or a panic inside it.
pub async fn load_blocking<T: Send + 'static>(
    tier: &'static str,
    shutdown: &CancellationToken,
    load: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<Option<T>> {
    let Some(joined) = until_cancelled(shutdown, tokio::task::spawn_blocking(load)).await else {
        tracing::info!(tier, "shutdown requested while loading");
        return Ok(None);
    };
    let loaded = joined.map_err(|e| anyhow::anyhow!("loading the {tier} tier panicked: {e}"))??;
    Ok(Some(loaded))
}

/// Waits for `fut` unless `token` is cancelled first.
pub async fn until_cancelled<F: Future>(token: &CancellationToken, fut: F) -> Option<F::Output> {
    tokio::select! {
        out = fut => Some(out),
        () = token.cancelled() => None,
    }
}
