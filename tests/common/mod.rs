//! Shared harness of the end-to-end tests: fixture paths and the three tiers started as separate
//! gRPC servers on loopback ports.
#![allow(dead_code)] // each test binary uses a different subset

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use paligemma_decoder_service::DecoderArgs;
use paligemma_gateway_service::GatewayArgs;
use paligemma_proto::v1::pali_gemma_client::PaliGemmaClient;
use paligemma_rpc::{DtypeArg, ModelArgs};
use paligemma_vision_service::VisionArgs;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn model_dir(case: &str) -> PathBuf {
    fixtures().join("models").join(case)
}

pub fn model_args(case: &str) -> ModelArgs {
    ModelArgs {
        model: model_dir(case),
        model_id: None,
        dtype: DtypeArg::F32,
        device: "cpu".into(),
    }
}

/// One running tier; `stop` shuts it down and checks it exited cleanly.
pub struct Running {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn start<F>(serve: impl FnOnce(TcpListener, CancellationToken) -> F) -> Self
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(listener, shutdown.clone()));
        Self {
            addr,
            shutdown,
            task,
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("tier task")
            .expect("tier exits cleanly");
    }
}

pub async fn start_vision(case: &str) -> Running {
    let args = VisionArgs::new(model_args(case));
    Running::start(|l, s| paligemma_vision_service::serve(args, l, s)).await
}

pub async fn start_decoder(case: &str) -> Running {
    let args = DecoderArgs::new(model_args(case));
    Running::start(|l, s| paligemma_decoder_service::serve(args, l, s)).await
}

/// A gateway in front of the given replicas; `configure` may adjust its flags (e.g. `--vae`).
pub async fn start_gateway(
    case: &str,
    vision: &[SocketAddr],
    decoder: &[SocketAddr],
    configure: impl FnOnce(&mut GatewayArgs),
) -> Running {
    let mut args = GatewayArgs::new(
        model_dir(case),
        vision.iter().map(ToString::to_string).collect(),
        decoder.iter().map(ToString::to_string).collect(),
    );
    configure(&mut args);
    Running::start(|l, s| paligemma_gateway_service::serve(args, l, s)).await
}

pub fn client(addr: SocketAddr) -> PaliGemmaClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_lazy();
    PaliGemmaClient::new(channel)
}
