//! `paligemma bench-stack`: what splitting PaliGemma into gRPC tiers costs, apart from the model.
//!
//! 1. **Soft-token transfer per image.** For N = 256 (224 px) and 4096 (896 px) soft tokens of
//!    width D (`--width`, 2048 by default) and each wire dtype (f32, bf16), an f32 `[N, D]` tensor
//!    becomes the decoder's input tensor in two ways:
//!    - *in-process* (the one-process path): converted to the wire dtype and back
//!      (`to_dtype(BF16).to_dtype(F32)`), or copied for f32;
//!    - *gRPC*: a minimal `VisionEncoder` server on `127.0.0.1:0` converts the tensor as the real
//!      vision tier does (tensor → f32 vec → `SoftTokens::from_f32` → `to_chunks`) and streams the
//!      chunks; the client reassembles them with `Assembler` (validation + CRC-32) and builds the
//!      tensor, as the decoder tier does. Timed end to end, over one reused connection.
//! 2. **Gateway overhead per request.** The real gateway (`paligemma_gateway_service::serve`) in
//!    front of fake vision and decoder servers that answer at once (soft tokens of the model's
//!    shape with its real vision fingerprint; K canned token ids and a `DecodeDone`). Client
//!    latency of `GenerateUnary` and of the streaming `Generate` (to its last message) is the
//!    gateway's own work (validation, tokenization, sequencing, detokenization, logging) plus
//!    three loopback hops; the same two tier calls made directly by the client (two hops, no
//!    gateway) are the baseline, and the time the fakes themselves spent is reported too.
//!
//! p50/p99 are nearest-rank percentiles of the timed iterations; all phases share one time
//! budget (`--max-seconds`), each timing at least one iteration. Run it in release mode. The
//! gateway logs a line per request as deployed; `RUST_LOG=warn` leaves that cost out.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use paligemma_model::{ModelFiles, PaliGemmaConfig};
use paligemma_proto::v1::decoder_client::DecoderClient;
use paligemma_proto::v1::decoder_server::{Decoder, DecoderServer};
use paligemma_proto::v1::pali_gemma_client::PaliGemmaClient;
use paligemma_proto::v1::vision_encoder_client::VisionEncoderClient;
use paligemma_proto::v1::vision_encoder_server::{VisionEncoder, VisionEncoderServer};
use paligemma_proto::v1::{
    DecodeDone, DecodeRequest, DecoderInfo, DecoderInfoRequest, EncodeRequest, FinishReason,
    GenerateInput, GenerateOutput, GenerateRequest, GeneratedTokens, Usage, VisionInfo,
    VisionInfoRequest, generate_input, generate_output,
};
use paligemma_wire::{Assembler, Expected, MAX_CHUNK_BYTES, SoftTokenChunk, SoftTokens, WireDtype};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

#[derive(Debug, Args)]
pub struct BenchStackArgs {
    /// Soft-token width D: 2048 (PaliGemma 1), up to 4608 (largest PaliGemma 2).
    #[arg(long, default_value_t = 2048)]
    pub width: usize,
    /// Timed transfers per shape and dtype (default: 50 for 256 rows, 10 for 4096 rows).
    #[arg(long)]
    pub iterations: Option<usize>,
    /// Time budget of the whole run, in seconds (each measurement still times one iteration).
    #[arg(long, default_value_t = 60.0)]
    pub max_seconds: f64,
    /// Sequential gateway requests per measured path.
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
    /// Token ids the fake decoder streams per request (one message each).
    #[arg(long, default_value_t = 8)]
    pub tokens: usize,
    /// Model directory the gateway serves (it reads config.json and tokenizer.json; the fake
    /// vision tier sends its vision fingerprint).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/models/pg1-32"))]
    pub model: PathBuf,
    /// Image sent with each gateway request.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/images/photo.jpg"))]
    pub image: PathBuf,
}

/// Valid ids of every PaliGemma vocabulary, cycled for the fake decoder's output.
const CANNED_IDS: [u32; 8] = [1176, 665, 876, 1482, 1317, 1020, 387, 1207];

const VISION: &str = <VisionEncoderServer<FakeVision> as NamedService>::NAME;
const DECODER: &str = <DecoderServer<FakeDecoder> as NamedService>::NAME;

pub fn run(args: &BenchStackArgs) -> Result<()> {
    if args.width == 0 || args.tokens == 0 || args.max_seconds <= 0.0 {
        bail!("--width, --tokens and --max-seconds must be positive");
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(run_async(args))
}

async fn run_async(args: &BenchStackArgs) -> Result<()> {
    let end = Instant::now() + Duration::from_secs_f64(args.max_seconds);
    let mut phases_left = 4 + 3;
    println!(
        "Soft-token transfer per image, D = {} (times in ms; threads: {})",
        args.width,
        candle_core::utils::get_num_threads()
    );
    println!(
        "    N   px dtype      bytes chunks iters |  inproc50  inproc99 |    grpc50    grpc99 | grpc/inpr"
    );
    for (rows, px, default_iters) in [(256, 224, 50), (4096, 896, 10)] {
        let tensor = Tensor::rand(-3f32, 3f32, (rows, args.width), &Device::Cpu)?;
        let vision = FakeVision::new(tensor.clone(), "xxh3:bench".into());
        let stop = CancellationToken::new();
        let _stop = stop.clone().drop_guard();
        let addr = spawn(vision.routes(), "bench-vision", VISION, &stop).await?;
        let mut client = VisionEncoderClient::connect(format!("http://{addr}")).await?;
        let expected = Expected {
            cols: args.width,
            rows_multiple_of: rows,
            max_rows: rows,
            fingerprint: "xxh3:bench".into(),
        };
        for dtype in [WireDtype::F32, WireDtype::Bf16] {
            let iters = args.iterations.unwrap_or(default_iters).max(1);
            let phase_end = phase_end(end, &mut phases_left);
            let (mut local, mut remote) = (Vec::new(), Vec::new());
            // One untimed round first: connection, allocator and page faults warm.
            in_process(&tensor, dtype)?;
            over_grpc(&mut client, dtype, &expected).await?;
            while local.len() < iters && (local.is_empty() || Instant::now() < phase_end) {
                let t = Instant::now();
                std::hint::black_box(in_process(&tensor, dtype)?);
                local.push(t.elapsed());
                let t = Instant::now();
                std::hint::black_box(over_grpc(&mut client, dtype, &expected).await?);
                remote.push(t.elapsed());
            }
            let bytes = rows * args.width * if dtype == WireDtype::F32 { 4 } else { 2 };
            let (l, r) = (Stats::of(local), Stats::of(remote));
            println!(
                "{rows:>5} {px:>4} {:>5} {:>10} {:>6} {:>5} | {:>9.3} {:>9.3} | {:>9.3} {:>9.3} | {:>8.1}x",
                format!("{dtype:?}").to_lowercase(),
                format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20)),
                bytes.div_ceil(MAX_CHUNK_BYTES),
                l.n,
                ms(l.p50),
                ms(l.p99),
                ms(r.p50),
                ms(r.p99),
                r.p50.as_secs_f64() / l.p50.as_secs_f64().max(1e-9),
            );
        }
    }
    gateway(args, end, &mut phases_left).await
}

/// The in-process handoff: the decoder's f32 input as the one-process path builds it.
fn in_process(tensor: &Tensor, dtype: WireDtype) -> Result<Tensor> {
    Ok(match dtype {
        WireDtype::Bf16 => tensor.to_dtype(DType::BF16)?.to_dtype(DType::F32)?,
        _ => tensor.copy()?,
    })
}

/// One `Encode` call: stream received, validated and reassembled, tensor built.
async fn over_grpc(
    client: &mut VisionEncoderClient<Channel>,
    dtype: WireDtype,
    expected: &Expected,
) -> Result<Tensor> {
    let request = EncodeRequest {
        wire_dtype: dtype as i32,
        ..EncodeRequest::default()
    };
    let mut stream = client.encode(request).await?.into_inner();
    let mut assembler = Assembler::new(expected.clone());
    while let Some(chunk) = stream.message().await? {
        assembler.push(chunk)?;
    }
    let tokens = assembler.finish()?;
    Ok(Tensor::from_vec(
        tokens.to_f32(),
        (tokens.rows, tokens.cols),
        &Device::Cpu,
    )?)
}

/// Phase 2: the real gateway in front of instant fakes, and the fakes called directly.
async fn gateway(args: &BenchStackArgs, end: Instant, phases_left: &mut u32) -> Result<()> {
    let model = &args.model;
    let image = std::fs::read(&args.image)
        .with_context(|| format!("cannot read {}", args.image.display()))?;
    let config = PaliGemmaConfig::from_file(&model.join("config.json"))?;
    let fingerprint = ModelFiles::discover(model)?.vision_fingerprint()?;
    let (rows, cols) = (config.num_image_tokens(), config.text.hidden_size);
    let soft = Tensor::rand(-3f32, 3f32, (rows, cols), &Device::Cpu)?;

    let vision = FakeVision::new(soft, fingerprint);
    let ids: Arc<[u32]> = CANNED_IDS
        .iter()
        .copied()
        .cycle()
        .take(args.tokens)
        .collect();
    let decoder = FakeDecoder {
        ids,
        spent: Arc::default(),
    };
    let fakes = CancellationToken::new();
    let _stop_fakes = fakes.clone().drop_guard();
    let vision_addr = spawn(vision.routes(), "bench-vision", VISION, &fakes).await?;
    let decoder_addr = spawn(decoder.routes(), "bench-decoder", DECODER, &fakes).await?;

    let mut gateway_args = paligemma_gateway_service::GatewayArgs::new(
        model.clone(),
        vec![vision_addr.to_string()],
        vec![decoder_addr.to_string()],
    );
    gateway_args.resolve_interval_secs = 0;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let gateway_addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let service =
        tokio::task::spawn_blocking(move || paligemma_gateway_service::load(&gateway_args))
            .await
            .context("gateway loading panicked")??;
    let gateway = tokio::spawn(service.run(listener, shutdown.clone()));
    let mut calls = Calls {
        gateway: PaliGemmaClient::connect(format!("http://{gateway_addr}")).await?,
        vision: VisionEncoderClient::connect(format!("http://{vision_addr}")).await?,
        decoder: DecoderClient::connect(format!("http://{decoder_addr}")).await?,
        request: GenerateRequest {
            image,
            prompt: "caption en".into(),
            max_new_tokens: u32::try_from(args.tokens)?,
            ..GenerateRequest::default()
        },
        prompt_ids: vec![config.image_token_index; rows + 4],
    };
    println!(
        "\nGateway overhead per request: model {} ({rows} × {cols} soft tokens, {} B image, \
         {} token messages; times in ms)",
        model.display(),
        calls.request.image.len(),
        args.tokens
    );
    println!(
        "{:<42} {:>5} | {:>8} {:>8} {:>8} | fakes µs/req",
        "path", "n", "p50", "p99", "mean"
    );
    for (via, label) in [
        (Via::Unary, "GenerateUnary via gateway (3 hops)"),
        (Via::Stream, "Generate stream via gateway (3 hops)"),
        (Via::Direct, "Encode + Generate direct (2 hops, no gw)"),
    ] {
        const WARM_UP: usize = 5;
        let phase_end = phase_end(end, phases_left);
        let mut times = Vec::with_capacity(args.requests);
        for i in 0..args.requests.max(1) + WARM_UP {
            if i > WARM_UP && Instant::now() >= phase_end {
                break;
            }
            if i == WARM_UP {
                vision.spent.store(0, Ordering::Relaxed);
                decoder.spent.store(0, Ordering::Relaxed);
            }
            let started = Instant::now();
            calls.one(via).await?;
            if i >= WARM_UP {
                times.push(started.elapsed());
            }
        }
        let fakes_ns = vision.spent.load(Ordering::Relaxed) + decoder.spent.load(Ordering::Relaxed);
        let fakes_us = fakes_ns as f64 / 1e3 / times.len().max(1) as f64;
        let s = Stats::of(times);
        println!(
            "{:<42} {:>5} | {:>8.3} {:>8.3} {:>8.3} | {fakes_us:>12.1}",
            label,
            s.n,
            ms(s.p50),
            ms(s.p99),
            ms(s.mean)
        );
    }
    drop(calls);
    shutdown.cancel();
    gateway.await.context("gateway task panicked")?
}

#[derive(Debug, Clone, Copy)]
enum Via {
    Unary,
    Stream,
    Direct,
}

/// The clients of the gateway phase and the request they send.
struct Calls {
    gateway: PaliGemmaClient<Channel>,
    vision: VisionEncoderClient<Channel>,
    decoder: DecoderClient<Channel>,
    request: GenerateRequest,
    /// What the gateway would send the decoder (the fake only counts it).
    prompt_ids: Vec<u32>,
}

impl Calls {
    /// One request, to its last response message.
    async fn one(&mut self, via: Via) -> Result<()> {
        let request = self.request.clone();
        match via {
            Via::Unary => {
                let got = self.gateway.generate_unary(request).await?.into_inner();
                if got.token_ids.len() != self.request.max_new_tokens as usize {
                    bail!("the gateway returned {} tokens", got.token_ids.len());
                }
            }
            Via::Stream => {
                let mut stream = self.gateway.generate(request).await?.into_inner();
                while stream.message().await?.is_some() {}
            }
            Via::Direct => {
                let encode = EncodeRequest {
                    image: request.image,
                    ..EncodeRequest::default()
                };
                let mut chunks = self.vision.encode(encode).await?.into_inner();
                let mut inputs = Vec::new();
                while let Some(chunk) = chunks.message().await? {
                    inputs.push(GenerateInput {
                        kind: Some(generate_input::Kind::SoftTokens(chunk)),
                    });
                }
                inputs.push(GenerateInput {
                    kind: Some(generate_input::Kind::Request(DecodeRequest {
                        prompt_ids: self.prompt_ids.clone(),
                        max_new_tokens: request.max_new_tokens,
                        ..DecodeRequest::default()
                    })),
                });
                let mut out = self
                    .decoder
                    .generate(tokio_stream::iter(inputs))
                    .await?
                    .into_inner();
                while out.message().await?.is_some() {}
            }
        }
        Ok(())
    }
}

/// The deadline of the next phase: an even share of what is left of the budget.
fn phase_end(end: Instant, phases_left: &mut u32) -> Instant {
    let now = Instant::now();
    let share = end.saturating_duration_since(now) / (*phases_left).max(1);
    *phases_left = phases_left.saturating_sub(1);
    now + share
}

/// Nearest-rank percentiles and mean of a sample.
#[derive(Debug, PartialEq)]
struct Stats {
    n: usize,
    p50: Duration,
    p99: Duration,
    mean: Duration,
}

impl Stats {
    fn of(mut sample: Vec<Duration>) -> Self {
        sample.sort_unstable();
        let total: Duration = sample.iter().sum();
        Self {
            n: sample.len(),
            p50: percentile(&sample, 50.0),
            p99: percentile(&sample, 99.0),
            mean: total / u32::try_from(sample.len().max(1)).unwrap_or(u32::MAX),
        }
    }
}

/// The nearest-rank `p`-th percentile of an ascending sample (zero when empty).
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Nanoseconds a fake spent in its handler, summed over calls.
type Spent = Arc<AtomicU64>;

fn add(spent: &Spent, since: Instant) {
    let nanos = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
    spent.fetch_add(nanos, Ordering::Relaxed);
}

/// Streams one fixed f32 tensor per `Encode`, converted to the asked wire dtype (f32 when
/// unspecified) the way the real vision tier converts its encoder output.
#[derive(Clone)]
struct FakeVision {
    tensor: Tensor,
    fingerprint: Arc<str>,
    spent: Spent,
}

impl FakeVision {
    fn new(tensor: Tensor, fingerprint: String) -> Self {
        let (fingerprint, spent) = (fingerprint.into(), Spent::default());
        Self {
            tensor,
            fingerprint,
            spent,
        }
    }

    fn routes(&self) -> Routes {
        Routes::new(VisionEncoderServer::new(self.clone()))
    }

    fn chunks(&self, wire: WireDtype) -> Result<Vec<SoftTokenChunk>> {
        let (rows, cols) = self.tensor.dims2()?;
        let values = self
            .tensor
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let tokens = SoftTokens::from_f32(rows, cols, &values, wire)?;
        Ok(paligemma_wire::to_chunks(
            &tokens,
            &self.fingerprint,
            MAX_CHUNK_BYTES,
        ))
    }
}

#[tonic::async_trait]
impl VisionEncoder for FakeVision {
    type EncodeStream = ReceiverStream<Result<SoftTokenChunk, Status>>;

    async fn encode(
        &self,
        request: Request<EncodeRequest>,
    ) -> Result<Response<Self::EncodeStream>, Status> {
        let started = Instant::now();
        let wire = match WireDtype::try_from(request.into_inner().wire_dtype) {
            Ok(WireDtype::Unspecified) | Err(_) => WireDtype::F32,
            Ok(wire) => wire,
        };
        let this = self.clone();
        let chunks = tokio::task::spawn_blocking(move || this.chunks(wire))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("{e:#}")))?;
        add(&self.spent, started);
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            for chunk in chunks {
                if tx.send(Ok(chunk)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn info(&self, _: Request<VisionInfoRequest>) -> Result<Response<VisionInfo>, Status> {
        Err(Status::unimplemented("bench fake"))
    }
}

/// Reads its input up to the `DecodeRequest`, then streams `ids` one per message and a
/// `DecodeDone`.
#[derive(Clone)]
struct FakeDecoder {
    ids: Arc<[u32]>,
    spent: Spent,
}

impl FakeDecoder {
    fn routes(&self) -> Routes {
        Routes::new(DecoderServer::new(self.clone()))
    }
}

#[tonic::async_trait]
impl Decoder for FakeDecoder {
    type GenerateStream = ReceiverStream<Result<GenerateOutput, Status>>;

    async fn generate(
        &self,
        request: Request<Streaming<GenerateInput>>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let mut inbound = request.into_inner();
        let prompt_tokens = loop {
            match inbound.message().await?.and_then(|m| m.kind) {
                Some(generate_input::Kind::Request(r)) => break r.prompt_ids.len() as u32,
                Some(_) => {}
                None => return Err(Status::invalid_argument("no DecodeRequest")),
            }
        };
        let started = Instant::now();
        let (tx, rx) = mpsc::channel(self.ids.len() + 1);
        let output = |kind| Ok(GenerateOutput { kind: Some(kind) });
        for &id in self.ids.iter() {
            let tokens = GeneratedTokens {
                ids: vec![id],
                logprobs: Vec::new(),
            };
            let _ = tx.try_send(output(generate_output::Kind::Tokens(tokens)));
        }
        let done = DecodeDone {
            finish_reason: FinishReason::Length as i32,
            usage: Some(Usage {
                prompt_tokens,
                generated_tokens: self.ids.len() as u32,
            }),
        };
        let _ = tx.try_send(output(generate_output::Kind::Done(done)));
        add(&self.spent, started);
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn info(&self, _: Request<DecoderInfoRequest>) -> Result<Response<DecoderInfo>, Status> {
        Err(Status::unimplemented("bench fake"))
    }
}

/// Serves a fake tier with `paligemma_rpc::Server` (health, reflection, drain) on
/// `127.0.0.1:0` until `stop`.
async fn spawn(
    routes: Routes,
    tier: &'static str,
    service: &'static str,
    stop: &CancellationToken,
) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let grace = Duration::from_secs(1);
    let server = paligemma_rpc::Server {
        tier,
        services: vec![service],
        routes,
        grace,
    };
    tokio::spawn(server.run(listener, stop.clone()));
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_and_mean() {
        let ms =
            |v: &[u64]| -> Vec<Duration> { v.iter().map(|&m| Duration::from_millis(m)).collect() };
        let hundred = ms(&(1..=100).collect::<Vec<_>>());
        let at = |p| percentile(&hundred, p).as_millis();
        assert_eq!((at(0.0), at(50.0), at(99.0), at(100.0)), (1, 50, 99, 100));
        assert_eq!(percentile(&ms(&[7]), 99.0), Duration::from_millis(7));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
        let s = Stats::of(ms(&[10, 1, 9, 2, 8, 3, 7, 4, 6, 5]));
        assert_eq!((s.n, s.p50.as_millis(), s.p99.as_millis()), (10, 5, 10));
        assert_eq!(s.mean, Duration::from_micros(5500));
    }

    #[test]
    fn phases_share_what_is_left() {
        let mut left = 4;
        let first = phase_end(Instant::now() + Duration::from_secs(40), &mut left);
        let share = first.saturating_duration_since(Instant::now());
        assert!(share <= Duration::from_secs(10) && share > Duration::from_secs(9));
        assert_eq!(left, 3);
    }
}
