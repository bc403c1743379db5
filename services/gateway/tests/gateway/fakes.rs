//! Canned vision and decoder servers on `127.0.0.1:0`, and a gateway in front of them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use paligemma_gateway_service::{GatewayArgs, serve};
use paligemma_proto::v1::decoder_server::{Decoder, DecoderServer};
use paligemma_proto::v1::pali_gemma_client::PaliGemmaClient;
use paligemma_proto::v1::vision_encoder_server::{VisionEncoder, VisionEncoderServer};
use paligemma_proto::v1::{
    DecodeDone, DecoderInfo, DecoderInfoRequest, EncodeRequest, FinishReason, GenerateInput,
    GenerateOutput, GeneratedTokens, SoftTokenChunk, SoftTokenHeader, SoftTokenPayload, Usage,
    VisionInfo, VisionInfoRequest, generate_input, generate_output, soft_token_chunk,
};
use paligemma_text::Tokenizer;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};

pub fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/pg1-32")
}

pub fn tokenizer() -> Tokenizer {
    Tokenizer::from_file(&model_dir().join("tokenizer.json")).unwrap()
}

/// The greedy output of `pg1-32` for the reference image and "caption en"
/// (tests/fixtures/reference/pg1-32.json), byte-fallback pieces included.
pub const REFERENCE_TOKENS: [u32; 32] = [
    1176, 665, 876, 1482, 1317, 1020, 387, 1207, 1399, 1399, 1399, 710, 234, 165, 165, 165, 165,
    939, 482, 1413, 1413, 1413, 1016, 1016, 1016, 1016, 1016, 1016, 1016, 455, 455, 455,
];

/// Canned soft-token stream: a header and two payload chunks (the gateway never looks inside).
pub fn soft_tokens() -> Vec<SoftTokenChunk> {
    let header = SoftTokenHeader {
        shape: vec![16, 64],
        dtype: 1,
        weights_fingerprint: "xxh3:fake".into(),
        total_bytes: 8,
        crc32: 7,
        num_chunks: 2,
    };
    let payload = |index: u32| SoftTokenChunk {
        kind: Some(soft_token_chunk::Kind::Payload(SoftTokenPayload {
            index,
            data: vec![index as u8; 4],
        })),
    };
    vec![
        SoftTokenChunk {
            kind: Some(soft_token_chunk::Kind::Header(header)),
        },
        payload(0),
        payload(1),
    ]
}

/// A running fake server.
pub struct Running {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    handle: JoinHandle<()>,
}

impl Running {
    /// Stops accepting, drains, and returns once the listener is closed.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.handle.await.unwrap();
    }
}

async fn spawn_server(routes: tonic::service::Routes) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone().cancelled_owned();
    let handle = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal)
            .await
            .unwrap();
    });
    Running {
        addr,
        shutdown,
        handle,
    }
}

/// An address nothing listens on.
pub async fn closed_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// Vision fake: counts calls, records requests, answers with canned chunks or an error.
#[derive(Clone, Default)]
pub struct FakeVision {
    pub calls: Arc<AtomicUsize>,
    pub requests: Arc<Mutex<Vec<EncodeRequest>>>,
    pub fail: Option<(Code, &'static str)>,
}

impl FakeVision {
    pub fn failing(code: Code, message: &'static str) -> Self {
        Self {
            fail: Some((code, message)),
            ..Self::default()
        }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub async fn spawn(&self) -> Running {
        spawn_server(tonic::service::Routes::new(VisionEncoderServer::new(
            self.clone(),
        )))
        .await
    }
}

#[tonic::async_trait]
impl VisionEncoder for FakeVision {
    type EncodeStream = tokio_stream::Iter<std::vec::IntoIter<Result<SoftTokenChunk, Status>>>;

    async fn encode(
        &self,
        request: Request<EncodeRequest>,
    ) -> Result<Response<Self::EncodeStream>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.requests.lock().unwrap().push(request.into_inner());
        if let Some((code, message)) = self.fail {
            return Err(Status::new(code, message));
        }
        let chunks: Vec<_> = soft_tokens().into_iter().map(Ok).collect();
        Ok(Response::new(tokio_stream::iter(chunks)))
    }

    async fn info(&self, _: Request<VisionInfoRequest>) -> Result<Response<VisionInfo>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// What the decoder fake does after reading its input stream.
#[derive(Clone)]
pub enum Script {
    /// Sends these batches of ids, then `DecodeDone` with `finish`.
    Tokens(Vec<Vec<u32>>, FinishReason),
    /// Fails at once.
    Fail(Code, &'static str),
    /// Sends these batches, then fails.
    FailAfter(Vec<Vec<u32>>, Code, &'static str),
    /// Sends these batches, then waits for the gateway to go away and notifies `closed`.
    Hang(Vec<Vec<u32>>),
}

/// Decoder fake: counts calls, records each call's input messages, runs a [`Script`].
#[derive(Clone)]
pub struct FakeDecoder {
    pub calls: Arc<AtomicUsize>,
    pub inputs: Arc<Mutex<Vec<Vec<GenerateInput>>>>,
    pub script: Script,
    pub closed: Arc<Notify>,
}

impl FakeDecoder {
    pub fn new(script: Script) -> Self {
        Self {
            calls: Arc::default(),
            inputs: Arc::default(),
            script,
            closed: Arc::new(Notify::new()),
        }
    }

    /// Generates [`REFERENCE_TOKENS`] in batches of 5, then `<eos>`.
    pub fn reference() -> Self {
        let mut ids = REFERENCE_TOKENS.to_vec();
        ids.push(1); // <eos>
        Self::new(Script::Tokens(
            ids.chunks(5).map(<[u32]>::to_vec).collect(),
            FinishReason::Eos,
        ))
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub async fn spawn(&self) -> Running {
        spawn_server(tonic::service::Routes::new(DecoderServer::new(
            self.clone(),
        )))
        .await
    }
}

fn tokens(ids: &[u32]) -> GenerateOutput {
    GenerateOutput {
        kind: Some(generate_output::Kind::Tokens(GeneratedTokens {
            ids: ids.to_vec(),
            logprobs: ids.iter().map(|&i| -(i as f32) / 1000.0).collect(),
        })),
    }
}

#[tonic::async_trait]
impl Decoder for FakeDecoder {
    type GenerateStream = ReceiverStream<Result<GenerateOutput, Status>>;

    async fn generate(
        &self,
        request: Request<Streaming<GenerateInput>>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut inbound = request.into_inner();
        let mut inputs = Vec::new();
        while let Some(input) = inbound.message().await? {
            inputs.push(input);
        }
        let prompt_tokens = inputs
            .iter()
            .find_map(|i| match &i.kind {
                Some(generate_input::Kind::Request(r)) => Some(r.prompt_ids.len() as u32),
                _ => None,
            })
            .unwrap_or(0);
        self.inputs.lock().unwrap().push(inputs);
        if let Script::Fail(code, message) = self.script {
            return Err(Status::new(code, message));
        }
        let (tx, rx) = mpsc::channel(4);
        let script = self.script.clone();
        let closed = Arc::clone(&self.closed);
        tokio::spawn(async move {
            let batches = match &script {
                Script::Tokens(b, _) | Script::FailAfter(b, ..) | Script::Hang(b) => b.clone(),
                Script::Fail(..) => Vec::new(),
            };
            let mut generated = 0;
            for batch in &batches {
                generated += batch.len() as u32;
                if tx.send(Ok(tokens(batch))).await.is_err() {
                    return;
                }
            }
            let last = match script {
                Script::Tokens(_, finish) => Ok(GenerateOutput {
                    kind: Some(generate_output::Kind::Done(DecodeDone {
                        finish_reason: finish as i32,
                        usage: Some(Usage {
                            prompt_tokens,
                            generated_tokens: generated,
                        }),
                    })),
                }),
                Script::FailAfter(_, code, message) => Err(Status::new(code, message)),
                Script::Hang(_) => {
                    tx.closed().await;
                    closed.notify_one();
                    return;
                }
                Script::Fail(..) => return,
            };
            let _ = tx.send(last).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn info(&self, _: Request<DecoderInfoRequest>) -> Result<Response<DecoderInfo>, Status> {
        Ok(Response::new(DecoderInfo {
            model: "fake".into(),
            decoder_family: "gemma".into(),
            dtype: "f32".into(),
            vision_fingerprint: "xxh3:fake".into(),
            ..Default::default()
        }))
    }
}

/// A gateway served by [`serve`] in front of the given replica addresses.
pub struct Gateway {
    pub client: PaliGemmaClient<Channel>,
    shutdown: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl Gateway {
    pub async fn start(vision: &[SocketAddr], decoder: &[SocketAddr]) -> Self {
        Self::start_with(vision, decoder, |_| {}).await
    }

    pub async fn start_with(
        vision: &[SocketAddr],
        decoder: &[SocketAddr],
        configure: impl FnOnce(&mut GatewayArgs),
    ) -> Self {
        let names = |addrs: &[SocketAddr]| addrs.iter().map(ToString::to_string).collect();
        let mut args = GatewayArgs::new(model_dir(), names(vision), names(decoder));
        configure(&mut args);
        Self::start_args(args).await
    }

    pub async fn start_args(args: GatewayArgs) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(serve(args, listener, shutdown.clone()));
        let client = PaliGemmaClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        Self {
            client,
            shutdown,
            handle,
        }
    }

    pub async fn stop(self) {
        drop(self.client);
        self.shutdown.cancel();
        self.handle.await.unwrap().unwrap();
    }
}
