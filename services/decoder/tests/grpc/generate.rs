//! Successful generations: reference parity, logprobs, stop ids, seeded sampling, `Info`, and
//! soft-token streams larger than gRPC's default 4 MiB message limit.

use candle_core::DType;
use paligemma_proto::v1::{DecodeRequest, DecoderInfoRequest, FinishReason, SamplingParams};
use paligemma_rpc::DtypeArg;
use paligemma_wire::{MAX_CHUNK_BYTES, WireDtype};
use tonic::Code;

use crate::{Reference, Running, call, encode, inputs, reference_request, refused, synthetic};

#[tokio::test]
async fn greedy_tokens_over_grpc_equal_the_transformers_reference() {
    for case in ["pg1-32", "pg2-32", "pg1-48-gqa", "pg2-48-window"] {
        let server = Running::start(crate::args(case, DtypeArg::F32)).await;
        let want = Reference::load(case).ids("tokens");
        let (tokens, fingerprint) = encode(case, DType::F32, WireDtype::F32);
        let req = reference_request(case, want.len() as u32);
        let prompt_len = req.prompt_ids.len() as u32;
        let got = call(
            &mut server.client().await,
            inputs(&tokens, &fingerprint, MAX_CHUNK_BYTES, req),
        )
        .await
        .unwrap();
        assert_eq!(got.ids, want, "{case}");
        assert!(got.logprobs.is_empty(), "logprobs were not requested");
        assert_eq!(
            got.done.finish_reason,
            FinishReason::Length as i32,
            "{case}"
        );
        let usage = got.done.usage.unwrap();
        assert_eq!(usage.prompt_tokens, prompt_len);
        assert_eq!(usage.generated_tokens, want.len() as u32);
        assert_eq!(server.service.stats().finished_length, 1);
        server.stop().await;
    }
}

#[tokio::test]
async fn bf16_model_fed_bf16_soft_tokens_reproduces_the_transformers_bf16_tokens() {
    let case = "pg1-32";
    let server = Running::start(crate::args(case, DtypeArg::Bf16)).await;
    let want = Reference::load(case).ids("bf16_tokens");
    let (tokens, fingerprint) = encode(case, DType::BF16, WireDtype::Bf16);
    let got = call(
        &mut server.client().await,
        inputs(
            &tokens,
            &fingerprint,
            MAX_CHUNK_BYTES,
            reference_request(case, want.len() as u32),
        ),
    )
    .await
    .unwrap();
    assert_eq!(got.ids, want);
    server.stop().await;
}

#[tokio::test]
async fn logprobs_stop_ids_and_seeded_sampling_behave_as_documented() {
    let case = "pg2-32";
    let server = Running::start(crate::args(case, DtypeArg::F32)).await;
    let mut client = server.client().await;
    let want = Reference::load(case).ids("tokens");
    let (tokens, fp) = encode(case, DType::F32, WireDtype::F32);

    // Logprobs: one per token, each a log-probability.
    let mut req = reference_request(case, 8);
    req.logprobs = true;
    let got = call(&mut client, inputs(&tokens, &fp, 1000, req))
        .await
        .unwrap();
    assert_eq!(got.ids, want[..8]);
    assert_eq!(got.logprobs.len(), 8);
    assert!(got.logprobs.iter().all(|lp| lp.is_finite() && *lp <= 0.0));

    // A stop id ends generation at its first occurrence, included.
    let stop_at = (0..want.len())
        .find(|&i| !want[..i].contains(&want[i]) && i >= 2)
        .unwrap();
    let mut req = reference_request(case, 32);
    req.stop_ids = vec![want[stop_at]];
    let got = call(&mut client, inputs(&tokens, &fp, 1000, req))
        .await
        .unwrap();
    assert_eq!(got.ids, want[..=stop_at]);
    assert_eq!(got.done.finish_reason, FinishReason::Stop as i32);

    // Sampling with a seed is reproducible.
    let sampled = |seed| {
        let mut req = reference_request(case, 12);
        req.sampling = Some(SamplingParams {
            temperature: 1.3,
            top_k: 50,
            top_p: 0.9,
            seed,
        });
        inputs(&tokens, &fp, MAX_CHUNK_BYTES, req)
    };
    let a = call(&mut client, sampled(7)).await.unwrap();
    let b = call(&mut client, sampled(7)).await.unwrap();
    assert_eq!(a.ids, b.ids);
    assert_eq!(a.ids.len(), 12);
    server.stop().await;
}

#[tokio::test]
async fn info_reports_what_soft_tokens_and_prompts_must_match() {
    let case = "pg2-48-window";
    let server = Running::start(crate::args(case, DtypeArg::F32)).await;
    let info = server
        .client()
        .await
        .info(DecoderInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let (_, fingerprint) = encode(case, DType::F32, WireDtype::F32);
    assert_eq!(info.model, case);
    assert_eq!(info.decoder_family, "gemma2");
    assert_eq!(info.hidden_size, 48);
    assert_eq!(info.vocab_size, 1664);
    assert_eq!(info.max_position_embeddings, 8192);
    assert_eq!(info.vision_fingerprint, fingerprint);
    assert_eq!(info.dtype, "f32");
    assert_eq!(info.image_token_id, 1646);
    assert_eq!(info.eos_token_ids, vec![1]);
    server.stop().await;
}

#[tokio::test]
async fn a_soft_token_stream_over_4_mib_passes_the_assembler() {
    // pg1-32: 16 × 64 f32 = 4 KiB per image; 1040 images = 4.06 MiB in five 1 MiB chunks. Its
    // 16 640 image tokens exceed the 8192 positions, so the call is refused only after the
    // stream was reassembled and checked: by prompt validation, not by the wire.
    let case = "pg1-32";
    let mut args = crate::args(case, DtypeArg::F32);
    args.max_images = 1100;
    let server = Running::start(args).await;
    let images = 1040;
    let tokens = synthetic(16 * images, 64);
    assert!(tokens.data.len() > 4 << 20);
    let fp = server.service.info().vision_fingerprint;
    let mut prompt_ids = vec![1646; 16 * images];
    prompt_ids.extend([2, 100, 101, 108]);
    let req = DecodeRequest {
        prompt_ids,
        max_new_tokens: 1,
        ..DecodeRequest::default()
    };
    let status = refused(
        &mut server.client().await,
        inputs(&tokens, &fp, MAX_CHUNK_BYTES, req),
    )
    .await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("prompt_ids: 16644 tokens leave no room"),
        "{}",
        status.message()
    );
    assert_eq!(server.service.stats().started, 0);
    server.stop().await;
}
