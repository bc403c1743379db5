//! A client that goes away mid-generation stops it: the generation ends as CANCELLED long
//! before its token budget and its slot (and KV cache) is free for the next request.

use candle_core::DType;
use paligemma_proto::v1::generate_output;
use paligemma_rpc::DtypeArg;
use paligemma_wire::{MAX_CHUNK_BYTES, WireDtype};

use crate::{Running, call, encode, inputs, reference_request};

const CASE: &str = "pg1-32";
const LONG: u32 = 4000;

#[tokio::test]
async fn a_client_that_goes_away_stops_its_generation_and_frees_its_slot() {
    let mut args = crate::args(CASE, DtypeArg::F32);
    args.max_concurrent = 1;
    args.max_new_tokens_limit = LONG as usize;
    let server = Running::start(args).await;
    let mut client = server.client().await;
    let (tokens, fp) = encode(CASE, DType::F32, WireDtype::F32);

    // A: a long generation, abandoned after its first token.
    let mut stream = client
        .generate(tokio_stream::iter(inputs(
            &tokens,
            &fp,
            MAX_CHUNK_BYTES,
            reference_request(CASE, LONG),
        )))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(matches!(first.kind, Some(generate_output::Kind::Tokens(_))));
    drop(stream);

    // B: with one permit it can only run once A has given it back.
    let b = call(
        &mut client,
        inputs(&tokens, &fp, MAX_CHUNK_BYTES, reference_request(CASE, 2)),
    )
    .await
    .unwrap();
    assert_eq!(b.ids.len(), 2);

    let stats = server.service.stats();
    assert_eq!(stats.started, 2);
    assert_eq!(stats.finished_cancelled, 1, "{stats:?}");
    assert_eq!(stats.finished_length, 1, "{stats:?}");
    assert_eq!(stats.running, 0);
    let generated_by_a = stats.generated_tokens - 2;
    eprintln!("A generated {generated_by_a} tokens before it stopped");
    assert!(
        generated_by_a < u64::from(LONG) / 2,
        "A generated {generated_by_a} tokens after its client left"
    );
    server.stop().await;
}
