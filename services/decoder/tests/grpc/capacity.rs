//! The engine's capacity limits over gRPC: a request larger than the whole KV cache is
//! RESOURCE_EXHAUSTED naming the sizes, concurrent calls get the reference tokens, and
//! the engine's blocks are all free afterwards.

use candle_core::DType;
use paligemma_rpc::DtypeArg;
use paligemma_wire::{MAX_CHUNK_BYTES, WireDtype};
use tonic::Code;

use crate::{Reference, Running, call, encode, inputs, reference_request, refused};

const CASE: &str = "pg1-32";

#[tokio::test]
async fn a_request_larger_than_the_whole_kv_cache_is_resource_exhausted_naming_sizes() {
    let mut args = crate::args(CASE, DtypeArg::F32);
    // pg1-32: 2 layers × 1 kv head × 16 dims × 2 (K, V) × 4 bytes = 256 bytes per token;
    // 5 blocks of 16 tokens (one reserved) hold 64 tokens.
    args.kv_cache_bytes = Some(256 * 16 * 5);
    let server = Running::start(args).await;
    let (tokens, fp) = encode(CASE, DType::F32, WireDtype::F32);
    let status = refused(
        &mut server.client().await,
        inputs(&tokens, &fp, MAX_CHUNK_BYTES, reference_request(CASE, 100)),
    )
    .await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("120 tokens"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("64 tokens"),
        "{}",
        status.message()
    );
    server.stop().await;
}

#[tokio::test]
async fn concurrent_calls_get_reference_tokens_and_free_every_block() {
    let server = Running::start(crate::args(CASE, DtypeArg::F32)).await;
    let want = Reference::load(CASE).ids("tokens");
    let (tokens, fp) = encode(CASE, DType::F32, WireDtype::F32);
    let mut calls = Vec::new();
    for _ in 0..8 {
        let mut client = server.client().await;
        let req = inputs(
            &tokens,
            &fp,
            MAX_CHUNK_BYTES,
            reference_request(CASE, want.len() as u32),
        );
        calls.push(tokio::spawn(async move { call(&mut client, req).await }));
    }
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap().ids, want);
    }
    let mut watch = server.service.watch_engine_stats();
    let idle = *tokio::time::timeout(
        std::time::Duration::from_secs(30),
        watch.wait_for(|s| s.live_requests == 0 && s.scheduler.running == 0),
    )
    .await
    .expect("engine did not become idle")
    .expect("engine stopped");
    assert!(idle.scheduler.steps > 0);
    assert_eq!(idle.scheduler.blocks_used, 0, "{idle:?}");
    server.stop().await;
}
