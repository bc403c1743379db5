//! End to end over real gRPC on loopback: the three tiers started separately (each its own
//! server and port, as deployed), driven through the gateway's public API, compared with
//! in-process generation on the same checkpoint.

use candle_core::{DType, Device, Tensor};
use paligemma_engine::{
    GenerateRequest as EngineRequest, SamplingParams as EngineSampling, generate,
};
use paligemma_model::{LoadOptions, ModelFiles, PaliGemma};
use paligemma_proto::v1::{FinishReason, GenerateRequest, SamplingParams, WireDtype};
use paligemma_text::{PromptLayout, Tokenizer};
use tonic::Code;

mod common;

use common::{client, fixtures, start_decoder, start_gateway, start_vision};

struct Case {
    name: &'static str,
    image: Vec<u8>,
    prompt: String,
}

fn case(name: &'static str) -> Case {
    let text = std::fs::read_to_string(fixtures().join(format!("reference/{name}.json")))
        .expect("reference");
    let r: serde_json::Value = serde_json::from_str(&text).expect("json");
    let image =
        std::fs::read(fixtures().join(r["image"].as_str().expect("image"))).expect("image file");
    Case {
        name,
        image,
        prompt: r["prompt"].as_str().expect("prompt").to_string(),
    }
}

/// Greedy tokens generated in this process, with the soft tokens rounded through `wire` as the
/// tiers would send them.
fn in_process_tokens(c: &Case, wire: WireDtype, max_new_tokens: usize) -> Vec<u32> {
    let files = ModelFiles::discover(&fixtures().join("models").join(c.name)).expect("model dir");
    let model = PaliGemma::load(&files, &LoadOptions::default()).expect("model");
    let tokenizer =
        Tokenizer::from_file(files.tokenizer.as_ref().expect("tokenizer")).expect("tokenizer");
    let cfg =
        paligemma_vision_service::preprocessor_config(&files, model.config().vision.image_size)
            .expect("pre");
    let pixels = paligemma_image::preprocess_bytes(&c.image, &cfg).expect("preprocess");
    let shape = pixels.shape();
    let pixels = Tensor::from_vec(
        pixels.data,
        (shape[0], shape[1], shape[2], shape[3]),
        &Device::Cpu,
    )
    .expect("t");
    let mut features = model
        .encode_images(&pixels)
        .expect("encode")
        .squeeze(0)
        .expect("squeeze");
    if wire == WireDtype::Bf16 {
        features = features
            .to_dtype(DType::BF16)
            .and_then(|f| f.to_dtype(DType::F32))
            .expect("round");
    }
    let prompt = PromptLayout::build(&tokenizer, &c.prompt, model.config().num_image_tokens())
        .expect("prompt");
    let request = EngineRequest {
        prompt_ids: &prompt.ids,
        image_features: &features,
        max_new_tokens,
        sampling: EngineSampling::default(),
        eos_ids: &model.config().eos_token_ids,
        stop_ids: &[],
        logprobs: false,
        keep_logits: false,
    };
    generate(model.decoder(), &request, |_, _| true)
        .expect("generate")
        .tokens
}

fn request(c: &Case, wire: WireDtype, max_new_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        image: c.image.clone(),
        prompt: c.prompt.clone(),
        max_new_tokens,
        wire_dtype: wire as i32,
        ..GenerateRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_returns_the_in_process_greedy_tokens_for_pg1_and_pg2_over_f32_and_bf16_wire() {
    for name in ["pg1-32", "pg2-48-window"] {
        let c = case(name);
        let vision = start_vision(name).await;
        let decoder = start_decoder(name).await;
        let gateway = start_gateway(name, &[vision.addr], &[decoder.addr], |_| ()).await;
        let mut client = client(gateway.addr);
        for wire in [WireDtype::F32, WireDtype::Bf16] {
            let want = in_process_tokens(&c, wire, 24);
            let unary = client
                .generate_unary(request(&c, wire, 24))
                .await
                .expect("unary")
                .into_inner();
            assert_eq!(unary.token_ids, want, "{name} {wire:?} unary");
            assert_eq!(unary.finish_reason, FinishReason::Length as i32);

            let mut stream = client
                .generate(request(&c, wire, 24))
                .await
                .expect("stream")
                .into_inner();
            let (mut ids, mut text, mut finish) = (Vec::new(), String::new(), 0);
            while let Some(msg) = stream.message().await.expect("message") {
                ids.extend(msg.token_ids);
                text.push_str(&msg.text);
                finish = msg.finish_reason;
            }
            assert_eq!(ids, want, "{name} {wire:?} stream");
            assert_eq!(
                text, unary.text,
                "{name} {wire:?}: streamed deltas add up to the unary text"
            );
            assert_eq!(finish, FinishReason::Length as i32);
        }
        gateway.stop().await;
        vision.stop().await;
        decoder.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_per_tier_survive_losing_one_of_each() {
    let name = "pg1-32";
    let c = case(name);
    let want = in_process_tokens(&c, WireDtype::F32, 6);
    let (v1, v2) = (start_vision(name).await, start_vision(name).await);
    let (d1, d2) = (start_decoder(name).await, start_decoder(name).await);
    let gateway = start_gateway(name, &[v1.addr, v2.addr], &[d1.addr, d2.addr], |_| ()).await;
    let mut client = client(gateway.addr);
    for _ in 0..4 {
        let out = client
            .generate_unary(request(&c, WireDtype::F32, 6))
            .await
            .expect("generate")
            .into_inner();
        assert_eq!(out.token_ids, want);
    }
    // Stop one replica of each tier between requests: later requests still succeed.
    v1.stop().await;
    d2.stop().await;
    for _ in 0..4 {
        let out = client
            .generate_unary(request(&c, WireDtype::F32, 6))
            .await
            .expect("after stop")
            .into_inner();
        assert_eq!(out.token_ids, want);
    }
    // With every decoder replica gone the gateway answers UNAVAILABLE naming the tier.
    d1.stop().await;
    let err = client
        .generate_unary(request(&c, WireDtype::F32, 6))
        .await
        .expect_err("no decoder left");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("decoder"), "{}", err.message());
    gateway.stop().await;
    v2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_through_the_real_tiers_are_invalid_argument_naming_the_field() {
    let name = "pg1-32";
    let c = case(name);
    let vision = start_vision(name).await;
    let decoder = start_decoder(name).await;
    let gateway = start_gateway(name, &[vision.addr], &[decoder.addr], |_| ()).await;
    let mut client = client(gateway.addr);
    let good = request(&c, WireDtype::Unspecified, 4);
    let cases: Vec<(&str, GenerateRequest)> = vec![
        (
            "image",
            GenerateRequest {
                image: Vec::new(),
                ..good.clone()
            },
        ),
        (
            "image",
            GenerateRequest {
                image: b"\x89PNG\r\n\x1a\nnot really".to_vec(),
                ..good.clone()
            },
        ),
        (
            "model",
            GenerateRequest {
                model: "no-such-model".into(),
                ..good.clone()
            },
        ),
        (
            "max_new_tokens",
            GenerateRequest {
                max_new_tokens: 1_000_000,
                ..good.clone()
            },
        ),
        (
            "sampling.temperature",
            GenerateRequest {
                sampling: Some(SamplingParams {
                    temperature: -1.0,
                    ..SamplingParams::default()
                }),
                ..good.clone()
            },
        ),
    ];
    for (field, req) in cases {
        let err = client.generate_unary(req).await.expect_err(field);
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    // The tiers are unharmed: a good request still works.
    client
        .generate_unary(good)
        .await
        .expect("good request after bad ones");
    gateway.stop().await;
    vision.stop().await;
    decoder.stop().await;
}
