//! Every malformed soft-token stream, protocol misuse and out-of-range request field is
//! refused with its own code and a message naming what is wrong, before it reaches the model.

use paligemma_proto::v1::{
    DecodeRequest, GenerateInput, SamplingParams, SoftTokenChunk, soft_token_chunk,
};
use paligemma_rpc::DtypeArg;
use paligemma_wire::SoftTokens;
use tonic::Code;

use crate::{Running, chunk, inputs, refused, request, synthetic};

/// A change that breaks one field of a good request.
type Mutation = fn(&mut DecodeRequest);

const CASE: &str = "pg1-32";
const IMAGE_ID: u32 = 1646;

/// A request that would be valid for one image's worth (16 rows) of soft tokens.
fn good_request() -> DecodeRequest {
    let mut prompt_ids = vec![IMAGE_ID; 16];
    prompt_ids.extend([2, 100, 101, 108]);
    DecodeRequest {
        prompt_ids,
        max_new_tokens: 4,
        ..DecodeRequest::default()
    }
}

fn stream(tokens: &SoftTokens, fp: &str) -> Vec<GenerateInput> {
    inputs(tokens, fp, 1000, good_request())
}

fn header(inputs: &mut [GenerateInput]) -> &mut paligemma_proto::v1::SoftTokenHeader {
    match &mut inputs[0].kind {
        Some(paligemma_proto::v1::generate_input::Kind::SoftTokens(SoftTokenChunk {
            kind: Some(soft_token_chunk::Kind::Header(h)),
        })) => h,
        _ => panic!("first input is the header"),
    }
}

fn payload(inputs: &mut [GenerateInput], i: usize) -> &mut Vec<u8> {
    match &mut inputs[i].kind {
        Some(paligemma_proto::v1::generate_input::Kind::SoftTokens(SoftTokenChunk {
            kind: Some(soft_token_chunk::Kind::Payload(p)),
        })) => &mut p.data,
        _ => panic!("input {i} is a payload chunk"),
    }
}

#[tokio::test]
async fn every_malformed_stream_gets_its_own_code_and_message() {
    let server = Running::start(crate::args(CASE, DtypeArg::F32)).await;
    let mut client = server.client().await;
    let fp = server.service.info().vision_fingerprint;
    let good = synthetic(16, 64);

    let mut wrong_dtype = stream(&good, &fp);
    header(&mut wrong_dtype).dtype = 0;
    let mut truncated = stream(&good, &fp);
    truncated.remove(truncated.len() - 2);
    let mut corrupted = stream(&good, &fp);
    payload(&mut corrupted, 2)[5] ^= 0x10;
    let mut out_of_order = stream(&good, &fp);
    out_of_order.swap(1, 2);
    let mut no_request = stream(&good, &fp);
    no_request.pop();
    let mut no_header = stream(&good, &fp);
    no_header.remove(0);

    let cases: Vec<(&str, Vec<GenerateInput>, Code, &str)> = vec![
        (
            "wrong width",
            stream(&synthetic(16, 32), &fp),
            Code::InvalidArgument,
            "soft-token header: shape [16, 32] is invalid: D = 32 but this decoder's hidden size is 64",
        ),
        (
            "rows not a whole image",
            stream(&synthetic(20, 64), &fp),
            Code::InvalidArgument,
            "is not a positive multiple of 16 tokens per image",
        ),
        (
            "more images than allowed",
            stream(&synthetic(32, 64), &fp),
            Code::InvalidArgument,
            "N = 32 exceeds the limit of 16 soft tokens",
        ),
        (
            "unspecified dtype",
            wrong_dtype,
            Code::InvalidArgument,
            "soft-token header: dtype 0 is not one of f32, bf16, f16",
        ),
        (
            "foreign fingerprint",
            stream(&good, "xxh3:0123456789abcdef"),
            Code::FailedPrecondition,
            "weights fingerprint `xxh3:0123456789abcdef` does not match",
        ),
        (
            "truncated",
            truncated,
            Code::DataLoss,
            "soft-token stream truncated",
        ),
        ("corrupted", corrupted, Code::DataLoss, "CRC-32"),
        (
            "out of order",
            out_of_order,
            Code::InvalidArgument,
            "chunk 1 arrived where chunk 0 was due",
        ),
        (
            "no DecodeRequest",
            no_request,
            Code::InvalidArgument,
            "request: the stream ended without a DecodeRequest",
        ),
        (
            "no header",
            no_header,
            Code::InvalidArgument,
            "payload chunk before the header",
        ),
        (
            "request without soft tokens",
            vec![request(good_request())],
            Code::InvalidArgument,
            "soft-token stream ended before its header",
        ),
        (
            "empty message",
            vec![GenerateInput { kind: None }],
            Code::InvalidArgument,
            "kind: a GenerateInput with neither",
        ),
    ];
    for (what, inputs, code, text) in cases {
        let status = refused(&mut client, inputs).await;
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(
            status.message().contains(text),
            "{what}: {}",
            status.message()
        );
    }
    assert_eq!(
        server.service.stats().started,
        0,
        "nothing reached the model"
    );
    server.stop().await;
}

#[tokio::test]
async fn out_of_range_request_fields_are_invalid_argument_naming_the_field() {
    let mut args = crate::args(CASE, DtypeArg::F32);
    args.max_new_tokens_limit = 100;
    let server = Running::start(args).await;
    let mut client = server.client().await;
    let fp = server.service.info().vision_fingerprint;
    let good = synthetic(16, 64);

    let cases: Vec<(Mutation, &str)> = vec![
        (|r| r.prompt_ids.clear(), "prompt_ids: must not be empty"),
        (
            |r| r.prompt_ids[17] = 5000,
            "prompt_ids: id 5000 at index 17 is outside the vocabulary of 1664 tokens",
        ),
        (
            |r| r.prompt_ids.truncate(15),
            "prompt_ids: 15 <image> ids (id 1646) but 16 soft-token rows were sent",
        ),
        (
            |r| r.max_new_tokens = 0,
            "max_new_tokens: 0 is not in 1..=100",
        ),
        (
            |r| r.max_new_tokens = 101,
            "max_new_tokens: 101 is not in 1..=100",
        ),
        (|r| r.stop_ids = vec![1664], "stop_ids: id 1664 at index 0"),
        (
            |r| {
                r.sampling = Some(SamplingParams {
                    temperature: -1.0,
                    ..SamplingParams::default()
                })
            },
            "sampling.temperature: -1 must be finite and >= 0",
        ),
        (
            |r| {
                r.sampling = Some(SamplingParams {
                    top_p: 1.01,
                    ..SamplingParams::default()
                })
            },
            "sampling.top_p: 1.01 must be in [0, 1]",
        ),
    ];
    for (mutate, want) in cases {
        let mut req = good_request();
        mutate(&mut req);
        let status = refused(&mut client, inputs(&good, &fp, 1000, req)).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{want}: {status:?}");
        assert!(status.message().starts_with(want), "{}", status.message());
    }
    assert_eq!(
        server.service.stats().started,
        0,
        "nothing reached the model"
    );
    server.stop().await;
}

#[tokio::test]
async fn messages_after_the_request_fail_the_call() {
    // Reference soft tokens and prompt: greedy generation then runs for its whole budget
    // (no early <eos>), so the extra message is seen while it runs.
    let server = Running::start(crate::args(CASE, DtypeArg::F32)).await;
    let mut client = server.client().await;
    let (good, fp) = crate::encode(
        CASE,
        candle_core::DType::F32,
        paligemma_wire::WireDtype::F32,
    );
    let long = || crate::reference_request(CASE, 2000);
    let last_chunk = paligemma_wire::to_chunks(&good, &fp, 1000).pop().unwrap();
    for (extra, want) in [
        (request(long()), "request: a second DecodeRequest"),
        (
            chunk(last_chunk),
            "soft_tokens: a chunk after the DecodeRequest",
        ),
    ] {
        let mut input = inputs(&good, &fp, 1000, long());
        input.push(extra);
        let status = refused(&mut client, input).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with(want), "{}", status.message());
    }
    server.stop().await;
}
