//! `Generate` and `GenerateUnary`: text deltas, request validation, error pass-through and
//! cancellation.

use std::time::Duration;

use paligemma_gateway_service::{REQUEST_ID_HEADER, bad_request_fields};
use paligemma_proto::v1::{
    FinishReason, GenerateRequest, GenerateResponse, SamplingParams, WireDtype, generate_input,
};
use paligemma_text::PromptLayout;
use tonic::{Code, Status};

use crate::fakes::{
    FakeDecoder, FakeVision, Gateway, REFERENCE_TOKENS, Script, soft_tokens, tokenizer,
};

fn request() -> GenerateRequest {
    GenerateRequest {
        image: b"not inspected by the gateway".to_vec(),
        prompt: "caption en".into(),
        ..Default::default()
    }
}

async fn collect(
    gateway: &mut Gateway,
    req: GenerateRequest,
) -> Result<Vec<GenerateResponse>, Status> {
    let mut stream = gateway.client.generate(req).await?.into_inner();
    let mut out = Vec::new();
    while let Some(r) = stream.message().await? {
        out.push(r);
    }
    Ok(out)
}

#[tokio::test]
async fn streamed_deltas_assemble_to_the_decoded_text_of_the_generated_ids() {
    let (vision, decoder) = (FakeVision::default(), FakeDecoder::reference());
    let (v, d) = (vision.spawn().await, decoder.spawn().await);
    let mut gateway = Gateway::start(&[v.addr], &[d.addr]).await;

    let responses = collect(&mut gateway, request()).await.unwrap();
    let text: String = responses.iter().map(|r| r.text.as_str()).collect();
    let ids: Vec<u32> = responses.iter().flat_map(|r| r.token_ids.clone()).collect();
    let expected = tokenizer().decode(&REFERENCE_TOKENS, true).unwrap();
    assert_eq!(text, expected);
    assert!(
        text.starts_with("<loc0682><loc0171>") && !text.contains("<eos>"),
        "{text}"
    );
    assert_eq!(ids[..32], REFERENCE_TOKENS);
    assert_eq!(ids[32], 1, "<eos> is reported as a token id");
    assert!(responses.len() > 2, "text arrives in several deltas");

    let last = responses.last().unwrap();
    assert_eq!(last.finish_reason, FinishReason::Eos as i32);
    let usage = last.usage.unwrap();
    assert_eq!(usage.generated_tokens, 33);
    assert_eq!(usage.prompt_tokens, 20);
    assert!(
        responses[..responses.len() - 1]
            .iter()
            .all(|r| r.finish_reason == 0 && r.usage.is_none())
    );
    gateway.stop().await;
}

#[tokio::test]
async fn unary_result_equals_the_concatenated_stream() {
    let (vision, decoder) = (FakeVision::default(), FakeDecoder::reference());
    let (v, d) = (vision.spawn().await, decoder.spawn().await);
    let mut gateway = Gateway::start(&[v.addr], &[d.addr]).await;
    let req = GenerateRequest {
        logprobs: true,
        ..request()
    };

    let streamed = collect(&mut gateway, req.clone()).await.unwrap();
    let response = gateway.client.generate_unary(req).await.unwrap();
    assert!(response.metadata().get(REQUEST_ID_HEADER).is_some());
    let unary = response.into_inner();
    let text: String = streamed.iter().map(|r| r.text.as_str()).collect();
    let ids: Vec<u32> = streamed.iter().flat_map(|r| r.token_ids.clone()).collect();
    let logprobs: Vec<f32> = streamed.iter().flat_map(|r| r.logprobs.clone()).collect();
    assert_eq!(unary.text, text);
    assert_eq!(unary.token_ids, ids);
    assert_eq!(unary.logprobs, logprobs);
    assert_eq!(unary.logprobs.len(), 33);
    assert_eq!(unary.finish_reason, FinishReason::Eos as i32);
    assert_eq!(unary.usage, streamed.last().unwrap().usage);
    gateway.stop().await;
}

#[tokio::test]
async fn the_decoder_receives_the_soft_tokens_then_one_request_with_the_prompt_layout() {
    let (vision, decoder) = (FakeVision::default(), FakeDecoder::reference());
    let (v, d) = (vision.spawn().await, decoder.spawn().await);
    let mut gateway = Gateway::start(&[v.addr], &[d.addr]).await;
    let req = GenerateRequest {
        sampling: Some(SamplingParams {
            temperature: 0.7,
            top_k: 5,
            top_p: 0.9,
            seed: 3,
        }),
        wire_dtype: WireDtype::Bf16 as i32,
        ..request()
    };
    collect(&mut gateway, req.clone()).await.unwrap();

    let encode = vision.requests.lock().unwrap()[0].clone();
    assert_eq!(encode.image, req.image);
    assert_eq!(encode.wire_dtype, WireDtype::Bf16 as i32);
    let inputs = decoder.inputs.lock().unwrap()[0].clone();
    let (chunks, rest) = inputs.split_at(inputs.len() - 1);
    let chunks: Vec<_> = chunks
        .iter()
        .map(|i| match &i.kind {
            Some(generate_input::Kind::SoftTokens(c)) => c.clone(),
            other => panic!("expected soft tokens, got {other:?}"),
        })
        .collect();
    assert_eq!(chunks, soft_tokens());
    let Some(generate_input::Kind::Request(decode)) = &rest[0].kind else {
        panic!("last input must be the DecodeRequest");
    };
    let layout = PromptLayout::build(&tokenizer(), "caption en", 16).unwrap();
    assert_eq!(decode.prompt_ids, layout.ids);
    assert_eq!(decode.max_new_tokens, 64, "0 means the gateway's default");
    assert_eq!(decode.sampling, req.sampling);
    assert!(decode.stop_ids.is_empty());
    assert!(!decode.request_id.is_empty());
    gateway.stop().await;
}

#[tokio::test]
async fn invalid_requests_are_rejected_naming_the_field_before_any_tier_is_called() {
    let (vision, decoder) = (FakeVision::default(), FakeDecoder::reference());
    let (v, d) = (vision.spawn().await, decoder.spawn().await);
    let mut gateway = Gateway::start_with(&[v.addr], &[d.addr], |a| {
        a.max_image_bytes = 100;
        a.max_prompt_bytes = 50;
        a.max_new_tokens_limit = 9000;
    })
    .await;
    let sampling = |temperature, top_p| {
        Some(SamplingParams {
            temperature,
            top_p,
            ..Default::default()
        })
    };
    let cases = [
        (
            GenerateRequest {
                image: Vec::new(),
                ..request()
            },
            "image",
        ),
        (
            GenerateRequest {
                image: vec![0; 101],
                ..request()
            },
            "image",
        ),
        (
            GenerateRequest {
                model: "pg9".into(),
                ..request()
            },
            "model",
        ),
        (
            GenerateRequest {
                prompt: "x".repeat(51),
                ..request()
            },
            "prompt",
        ),
        (
            GenerateRequest {
                prompt: "<image> caption".into(),
                ..request()
            },
            "prompt",
        ),
        (
            GenerateRequest {
                max_new_tokens: 9001,
                ..request()
            },
            "max_new_tokens",
        ),
        (
            GenerateRequest {
                max_new_tokens: 8190,
                ..request()
            },
            "max_new_tokens",
        ),
        (
            GenerateRequest {
                sampling: sampling(-0.5, 1.0),
                ..request()
            },
            "sampling.temperature",
        ),
        (
            GenerateRequest {
                sampling: sampling(f32::INFINITY, 1.0),
                ..request()
            },
            "sampling.temperature",
        ),
        (
            GenerateRequest {
                sampling: sampling(1.0, 1.5),
                ..request()
            },
            "sampling.top_p",
        ),
        (
            GenerateRequest {
                sampling: sampling(1.0, -0.1),
                ..request()
            },
            "sampling.top_p",
        ),
    ];
    for (req, field) in cases {
        for unary in [false, true] {
            let status = if unary {
                gateway
                    .client
                    .generate_unary(req.clone())
                    .await
                    .unwrap_err()
            } else {
                collect(&mut gateway, req.clone()).await.unwrap_err()
            };
            assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
            assert!(
                status.message().contains(&format!("{field}: ")),
                "{field}: {status:?}"
            );
            assert_eq!(bad_request_fields(&status), [field], "{status:?}");
        }
    }
    let status = gateway
        .client
        .generate_unary(GenerateRequest {
            max_new_tokens: 9001,
            ..request()
        })
        .await
        .unwrap_err();
    assert!(
        status.message().contains("9000"),
        "names the limit: {status:?}"
    );
    assert_eq!(vision.calls(), 0);
    assert_eq!(decoder.calls(), 0);
    gateway.stop().await;
}

#[tokio::test]
async fn a_vision_error_status_is_passed_through_with_its_code_and_message() {
    let vision = FakeVision::failing(Code::InvalidArgument, "image: cannot decode: not a PNG");
    let decoder = FakeDecoder::reference();
    let (v1, v2, d) = (
        vision.spawn().await,
        vision.spawn().await,
        decoder.spawn().await,
    );
    let mut gateway = Gateway::start(&[v1.addr, v2.addr], &[d.addr]).await;

    let status = collect(&mut gateway, request()).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "image: cannot decode: not a PNG");
    let status = gateway.client.generate_unary(request()).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(vision.calls(), 2, "not retried on the other replica");
    assert_eq!(decoder.calls(), 0);
    gateway.stop().await;
}

#[tokio::test]
async fn a_decoder_error_after_tokens_is_forwarded_after_them_and_not_retried() {
    let vision = FakeVision::default();
    let decoder = FakeDecoder::new(Script::FailAfter(
        vec![vec![1176, 665]],
        Code::ResourceExhausted,
        "kv cache full",
    ));
    let (v, d1, d2) = (
        vision.spawn().await,
        decoder.spawn().await,
        decoder.spawn().await,
    );
    let mut gateway = Gateway::start(&[v.addr], &[d1.addr, d2.addr]).await;

    let mut stream = gateway
        .client
        .generate(request())
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.token_ids, [1176, 665]);
    let status = stream.message().await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(status.message(), "kv cache full");
    assert_eq!(decoder.calls(), 1);
    gateway.stop().await;
}

#[tokio::test]
async fn a_client_that_goes_away_closes_the_decoder_stream() {
    let vision = FakeVision::default();
    let decoder = FakeDecoder::new(Script::Hang(vec![vec![1176]]));
    let (v, d) = (vision.spawn().await, decoder.spawn().await);
    let mut gateway = Gateway::start(&[v.addr], &[d.addr]).await;

    let closed = decoder.closed.notified();
    let mut stream = gateway
        .client
        .generate(request())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().token_ids, [1176]);
    drop(stream);
    tokio::time::timeout(Duration::from_secs(10), closed)
        .await
        .expect("the decoder saw its output stream closed");

    // The same for the unary call: abandoning it cancels generation.
    let closed = decoder.closed.notified();
    let mut client = gateway.client.clone();
    let call = tokio::spawn(async move { client.generate_unary(request()).await });
    while decoder.calls() < 2 {
        tokio::task::yield_now().await;
    }
    call.abort();
    tokio::time::timeout(Duration::from_secs(10), closed)
        .await
        .expect("the decoder saw its output stream closed");
    gateway.stop().await;
}
