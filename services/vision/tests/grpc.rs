//! The vision tier over real gRPC on 127.0.0.1:0: soft tokens equal the in-process encoder's,
//! every request problem is INVALID_ARGUMENT naming its field, health and reflection answer.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use paligemma_model::{LoadOptions, ModelFiles, VisionEncoder};
use paligemma_proto::v1::vision_encoder_client::VisionEncoderClient;
use paligemma_proto::v1::{EncodeRequest, SoftTokenChunk, VisionInfoRequest, soft_token_chunk};
use paligemma_rpc::{DtypeArg, ModelArgs};
use paligemma_vision_service::{VisionArgs, VisionService, preprocessor_config};
use paligemma_wire::{Assembler, Expected, SoftTokens, WireDtype};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn model_dir(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

fn args(name: &str, dtype: DtypeArg) -> VisionArgs {
    VisionArgs::new(ModelArgs {
        model: model_dir(name),
        model_id: None,
        dtype,
        device: "cpu".into(),
    })
}

fn image(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("images").join(name)).unwrap()
}

struct Running {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn start(service: VisionService) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(paligemma_vision_service::run(
            service,
            listener,
            shutdown.clone(),
        ));
        Self {
            addr,
            shutdown,
            task,
        }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    async fn client(&self) -> VisionEncoderClient<Channel> {
        VisionEncoderClient::new(self.channel().await)
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

async fn serve(name: &str, dtype: DtypeArg) -> Running {
    Running::start(paligemma_vision_service::load(args(name, dtype)).unwrap()).await
}

async fn encode(
    client: &mut VisionEncoderClient<Channel>,
    req: EncodeRequest,
) -> Result<Vec<SoftTokenChunk>, tonic::Status> {
    let mut stream = client.encode(req).await?.into_inner();
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.message().await? {
        chunks.push(chunk);
    }
    Ok(chunks)
}

fn request(image: Vec<u8>, wire: WireDtype) -> EncodeRequest {
    EncodeRequest {
        image,
        model: String::new(),
        wire_dtype: wire as i32,
    }
}

/// The in-process encoder's `[N, D]` output for a fixture image, as f32.
fn in_process(name: &str, image_bytes: &[u8]) -> (usize, usize, Vec<f32>) {
    let files = ModelFiles::discover(&model_dir(name)).unwrap();
    let encoder = VisionEncoder::load(&files, &LoadOptions::default()).unwrap();
    let cfg = preprocessor_config(&files, encoder.config().vision.image_size).unwrap();
    let pixels = paligemma_image::preprocess_bytes(image_bytes, &cfg).unwrap();
    let [b, c, h, w] = pixels.shape();
    let pixels = Tensor::from_vec(pixels.data, (b, c, h, w), &candle_core::Device::Cpu).unwrap();
    let out = encoder.encode(&pixels).unwrap().squeeze(0).unwrap();
    let (n, d) = out.dims2().unwrap();
    (n, d, out.flatten_all().unwrap().to_vec1().unwrap())
}

fn reassemble(name: &str, chunks: Vec<SoftTokenChunk>) -> SoftTokens {
    let files = ModelFiles::discover(&model_dir(name)).unwrap();
    let encoder = VisionEncoder::load(&files, &LoadOptions::default()).unwrap();
    let (n, d) = encoder.output_shape();
    let mut assembler = Assembler::new(Expected {
        cols: d,
        rows_multiple_of: n,
        max_rows: n,
        fingerprint: files.vision_fingerprint().unwrap(),
    });
    for chunk in chunks {
        assembler.push(chunk).unwrap();
    }
    assembler.finish().unwrap()
}

fn header_dtype(chunks: &[SoftTokenChunk]) -> WireDtype {
    match &chunks[0].kind {
        Some(soft_token_chunk::Kind::Header(h)) => WireDtype::try_from(h.dtype).unwrap(),
        other => panic!("first message must be the header, got {other:?}"),
    }
}

#[tokio::test]
async fn f32_stream_reassembles_to_exactly_the_in_process_encoding() {
    let server = serve("pg1-32", DtypeArg::F32).await;
    let mut client = server.client().await;
    let photo = image("photo.jpg");
    let chunks = encode(&mut client, request(photo.clone(), WireDtype::F32))
        .await
        .unwrap();
    assert_eq!(header_dtype(&chunks), WireDtype::F32);
    assert!(chunks.len() >= 2, "a header and at least one payload chunk");
    let got = reassemble("pg1-32", chunks);
    let (n, d, want) = in_process("pg1-32", &photo);
    assert_eq!((got.rows, got.cols), (n, d));
    assert_eq!(got.to_f32(), want);

    // And it is the transformers reference for this image, up to f32 rounding.
    let reference = candle_core::safetensors::load(
        fixtures().join("reference/pg1-32.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let expected: Vec<f32> = reference["image_features"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let max_diff = got
        .to_f32()
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max_diff < 1e-3, "max |Δ| vs transformers = {max_diff}");
    server.stop().await;
}

#[tokio::test]
async fn bf16_stream_is_the_bf16_rounding_of_the_in_process_encoding() {
    let server = serve("pg2-32", DtypeArg::F32).await;
    let mut client = server.client().await;
    let rgba = image("rgba.png");
    let chunks = encode(&mut client, request(rgba.clone(), WireDtype::Bf16))
        .await
        .unwrap();
    assert_eq!(header_dtype(&chunks), WireDtype::Bf16);
    let got = reassemble("pg2-32", chunks);
    let (n, d, want) = in_process("pg2-32", &rgba);
    assert_eq!(
        got,
        SoftTokens::from_f32(n, d, &want, WireDtype::Bf16).unwrap()
    );
    let candle_bf16: Vec<f32> = Tensor::new(want.as_slice(), &candle_core::Device::Cpu)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(got.to_f32(), candle_bf16);
    server.stop().await;
}

#[tokio::test]
async fn unspecified_wire_dtype_follows_the_model_dtype() {
    for (dtype, wire) in [
        (DtypeArg::F32, WireDtype::F32),
        (DtypeArg::Bf16, WireDtype::Bf16),
    ] {
        let server = serve("pg1-32", dtype).await;
        let mut client = server.client().await;
        let chunks = encode(
            &mut client,
            request(image("grey.png"), WireDtype::Unspecified),
        )
        .await
        .unwrap();
        assert_eq!(header_dtype(&chunks), wire, "{dtype:?} model");
        let info = client
            .info(VisionInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.dtype, dtype.name());
        server.stop().await;
    }
}

#[tokio::test]
async fn info_reports_the_served_shape_and_fingerprint() {
    let server = serve("pg1-48-gqa", DtypeArg::F32).await;
    let info = server
        .client()
        .await
        .info(VisionInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let files = ModelFiles::discover(&model_dir("pg1-48-gqa")).unwrap();
    assert_eq!(info.model, "pg1-48-gqa");
    assert_eq!(info.image_size, 48);
    assert_eq!(info.num_image_tokens, 36);
    assert_eq!(info.hidden_size, 64);
    assert_eq!(
        info.weights_fingerprint,
        files.vision_fingerprint().unwrap()
    );
    server.stop().await;
}

async fn refused(server: &Running, req: EncodeRequest) -> tonic::Status {
    let mut client = server.client().await;
    match encode(&mut client, req).await {
        Ok(chunks) => panic!("expected an error, got {} chunks", chunks.len()),
        Err(status) => status,
    }
}

#[tokio::test]
async fn request_problems_are_invalid_argument_naming_the_field() {
    let mut vision_args = args("pg1-32", DtypeArg::F32);
    vision_args.max_image_bytes = 4 << 20;
    let server = Running::start(paligemma_vision_service::load(vision_args).unwrap()).await;

    let mut wrong_model = request(image("photo.jpg"), WireDtype::F32);
    wrong_model.model = "nope".into();
    let mut bad_wire = request(image("photo.jpg"), WireDtype::F32);
    bad_wire.wire_dtype = 9;
    let cases = [
        (
            wrong_model,
            "model: unknown model `nope` (this replica serves `pg1-32`)",
        ),
        (request(Vec::new(), WireDtype::F32), "image: empty"),
        (
            request(b"definitely not an image".to_vec(), WireDtype::F32),
            "image: unknown image format",
        ),
        (
            request(vec![0x89; (4 << 20) + 1], WireDtype::F32),
            "image: 4194305 bytes exceeds this replica's limit of 4194304 bytes",
        ),
        (bad_wire, "wire_dtype: 9"),
    ];
    for (req, prefix) in cases {
        let status = refused(&server, req).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with(prefix), "{}", status.message());
    }

    // A truncated PNG is named as such.
    let mut png = image("grey.png");
    png.truncate(png.len() / 2);
    let status = refused(&server, request(png, WireDtype::F32)).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("image: "),
        "{}",
        status.message()
    );
    server.stop().await;
}

#[tokio::test]
async fn images_above_grpcs_default_4_mib_message_limit_reach_the_decoder() {
    let server = serve("pg1-32", DtypeArg::F32).await;
    let status = refused(&server, request(vec![0; 5 << 20], WireDtype::F32)).await;
    // Not RESOURCE_EXHAUSTED from the transport: the bytes arrived and were judged as an image.
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with("image: "),
        "{}",
        status.message()
    );
    server.stop().await;
}

#[tokio::test]
async fn health_reports_serving_and_reflection_lists_the_service() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let server = serve("pg1-32", DtypeArg::F32).await;
    let mut health = HealthClient::new(server.channel().await);
    for service in ["paligemma.v1.VisionEncoder", ""] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "`{service}`");
    }

    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let list = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([list]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(services)) = response.message_response else {
        panic!("expected a service list, got {response:?}");
    };
    let names: Vec<_> = services.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.iter().any(|n| n == "paligemma.v1.VisionEncoder"),
        "{names:?}"
    );
    server.stop().await;
}

async fn stats(server: &Running) -> paligemma_proto::v1::VisionStats {
    let info = server
        .client()
        .await
        .info(VisionInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    info.stats.expect("Info carries stats")
}

#[tokio::test]
async fn a_cache_hit_is_bit_identical_and_never_runs_the_encoder() {
    let server = serve("pg1-32", DtypeArg::F32).await;
    let mut client = server.client().await;
    let photo = image("photo.jpg");
    let first = encode(&mut client, request(photo.clone(), WireDtype::F32))
        .await
        .unwrap();
    let after_miss = stats(&server).await;
    assert_eq!((after_miss.cache_hits, after_miss.cache_misses), (0, 1));
    assert_eq!(after_miss.batches, 1);

    let second = encode(&mut client, request(photo.clone(), WireDtype::F32))
        .await
        .unwrap();
    assert_eq!(second, first, "a hit streams the very same bytes");
    // A hit packs to another wire dtype exactly as a miss would have.
    let bf16 = reassemble(
        "pg1-32",
        encode(&mut client, request(photo.clone(), WireDtype::Bf16))
            .await
            .unwrap(),
    );
    let (n, d, want) = in_process("pg1-32", &photo);
    assert_eq!(
        bf16,
        SoftTokens::from_f32(n, d, &want, WireDtype::Bf16).unwrap()
    );
    let after_hits = stats(&server).await;
    assert_eq!((after_hits.cache_hits, after_hits.cache_misses), (2, 1));
    assert_eq!(after_hits.batches, 1, "hits ran no forward");
    assert_eq!(after_hits.cache_entries, 1);
    assert_eq!(after_hits.cache_bytes, (n * d * 4 + 128) as u64);
    server.stop().await;
}

#[tokio::test]
async fn the_cache_stays_within_its_byte_bound_and_can_be_turned_off() {
    let (n, d) = (16, 64); // pg1-32: 32 px / 8 px patches → 16 tokens of width 64.
    let one_entry = n * d * 4 + 128;
    let mut bounded = args("pg1-32", DtypeArg::F32);
    bounded.cache_bytes = one_entry + one_entry / 2;
    let server = Running::start(paligemma_vision_service::load(bounded).unwrap()).await;
    let mut client = server.client().await;
    let info = client
        .info(VisionInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (info.num_image_tokens, info.hidden_size),
        (n as u32, d as u32)
    );
    for name in ["photo.jpg", "grey.png", "rgba.png", "photo.jpg"] {
        encode(&mut client, request(image(name), WireDtype::F32))
            .await
            .unwrap();
        let s = stats(&server).await;
        assert!(s.cache_bytes <= s.cache_capacity_bytes, "{s:?}");
    }
    let s = stats(&server).await;
    // Only the latest image fits; photo.jpg was evicted before it came back.
    assert_eq!((s.cache_entries, s.cache_hits, s.cache_misses), (1, 0, 4));
    assert_eq!(s.cache_evictions, 3);
    server.stop().await;

    let mut off = args("pg1-32", DtypeArg::F32);
    off.cache_bytes = 0;
    let server = Running::start(paligemma_vision_service::load(off).unwrap()).await;
    let mut client = server.client().await;
    for _ in 0..2 {
        encode(&mut client, request(image("grey.png"), WireDtype::F32))
            .await
            .unwrap();
    }
    let s = stats(&server).await;
    assert_eq!((s.cache_hits, s.cache_capacity_bytes, s.batches), (0, 0, 2));
    server.stop().await;
}

#[tokio::test]
async fn concurrent_requests_are_batched_and_each_gets_its_own_tokens() {
    let mut batching = args("pg1-32", DtypeArg::F32);
    batching.max_batch = 4;
    // Long enough that all four requests join the first batch on a slow CI machine; the
    // batch starts as soon as the fourth arrives.
    batching.max_wait_us = 20_000_000;
    let server = Running::start(paligemma_vision_service::load(batching).unwrap()).await;
    let names = ["photo.jpg", "grey.png", "rgba.png", "tall.png"];
    let mut calls = Vec::new();
    for name in names {
        let mut client = server.client().await;
        calls.push(tokio::spawn(async move {
            encode(&mut client, request(image(name), WireDtype::F32)).await
        }));
    }
    for (name, call) in names.into_iter().zip(calls) {
        let got = reassemble("pg1-32", call.await.unwrap().unwrap()).to_f32();
        let (_, _, want) = in_process("pg1-32", &image(name));
        // A batched forward may round differently from a single one, never by more.
        let max_diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max_diff < 1e-5, "{name}: max |Δ| = {max_diff}");
    }
    let s = stats(&server).await;
    assert_eq!((s.batches, s.batched_images, s.max_batch), (1, 4, 4));
    server.stop().await;
}
