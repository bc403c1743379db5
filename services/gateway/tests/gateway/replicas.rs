//! Balancing over several replicas per tier: round-robin, retry on transport failure, tier
//! outages.

use paligemma_gateway_service::Tier;
use paligemma_proto::v1::{GenerateRequest, GenerateResult};
use tonic::{Code, Status};

use crate::fakes::{FakeDecoder, FakeVision, Gateway, Script, closed_addr};

fn request() -> GenerateRequest {
    GenerateRequest {
        image: vec![1, 2, 3],
        prompt: "caption en".into(),
        ..Default::default()
    }
}

async fn generate(gateway: &mut Gateway) -> Result<GenerateResult, Status> {
    Ok(gateway.client.generate_unary(request()).await?.into_inner())
}

#[tokio::test]
async fn requests_alternate_between_two_replicas_of_each_tier() {
    let (va, vb) = (FakeVision::default(), FakeVision::default());
    let (da, db) = (FakeDecoder::reference(), FakeDecoder::reference());
    let servers = [va.spawn().await, vb.spawn().await];
    let decoders = [da.spawn().await, db.spawn().await];
    let mut gateway = Gateway::start(
        &[servers[0].addr, servers[1].addr],
        &[decoders[0].addr, decoders[1].addr],
    )
    .await;

    for _ in 0..4 {
        generate(&mut gateway).await.unwrap();
    }
    assert_eq!((va.calls(), vb.calls()), (2, 2));
    assert_eq!((da.calls(), db.calls()), (2, 2));
    gateway.stop().await;
}

#[tokio::test]
async fn stopping_one_replica_of_each_tier_between_requests_does_not_fail_later_requests() {
    let (va, vb) = (FakeVision::default(), FakeVision::default());
    let (da, db) = (FakeDecoder::reference(), FakeDecoder::reference());
    let (va_server, vb_server) = (va.spawn().await, vb.spawn().await);
    let (da_server, db_server) = (da.spawn().await, db.spawn().await);
    let mut gateway = Gateway::start(
        &[va_server.addr, vb_server.addr],
        &[da_server.addr, db_server.addr],
    )
    .await;
    for _ in 0..2 {
        generate(&mut gateway).await.unwrap();
    }

    va_server.stop().await;
    db_server.stop().await;
    for _ in 0..4 {
        let result = generate(&mut gateway).await.unwrap();
        assert_eq!(result.token_ids.len(), 33);
    }
    assert_eq!((va.calls(), vb.calls()), (1, 5));
    assert_eq!((da.calls(), db.calls()), (5, 1));
    gateway.stop().await;
}

#[tokio::test]
async fn a_decoder_replica_answering_unavailable_is_skipped_for_the_next() {
    let vision = FakeVision::default();
    let draining = FakeDecoder::new(Script::Fail(Code::Unavailable, "draining"));
    let healthy = FakeDecoder::reference();
    let (v, d1, d2) = (
        vision.spawn().await,
        draining.spawn().await,
        healthy.spawn().await,
    );
    let mut gateway = Gateway::start(&[v.addr], &[d1.addr, d2.addr]).await;

    for _ in 0..3 {
        generate(&mut gateway).await.unwrap();
    }
    assert_eq!(healthy.calls(), 3);
    assert_eq!(
        draining.calls(),
        1,
        "a failed replica is tried last for a while"
    );
    assert_eq!(
        vision.calls(),
        3,
        "the soft tokens are replayed, not re-encoded"
    );
    gateway.stop().await;
}

#[tokio::test]
async fn all_replicas_of_a_tier_down_is_unavailable_naming_the_tier() {
    let decoder = FakeDecoder::reference();
    let d = decoder.spawn().await;
    let mut gateway = Gateway::start(&[closed_addr().await, closed_addr().await], &[d.addr]).await;
    for unary in [true, false] {
        let status = if unary {
            generate(&mut gateway).await.unwrap_err()
        } else {
            let mut stream = gateway
                .client
                .generate(request())
                .await
                .unwrap()
                .into_inner();
            stream.message().await.unwrap_err()
        };
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status
                .message()
                .starts_with("vision tier unavailable: 2 replicas tried, last error: "),
            "{status:?}"
        );
    }
    assert_eq!(decoder.calls(), 0);
    gateway.stop().await;

    let vision = FakeVision::default();
    let v = vision.spawn().await;
    let mut gateway = Gateway::start(&[v.addr], &[closed_addr().await]).await;
    let status = generate(&mut gateway).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status
            .message()
            .starts_with("decoder tier unavailable: 1 replica tried"),
        "{status:?}"
    );
    gateway.stop().await;
}

#[tokio::test]
async fn a_dns_name_is_resolved_to_its_addresses_and_refreshed() {
    let (vision, decoder) = (FakeVision::default(), FakeDecoder::reference());
    let (v, d) = (vision.spawn().await, decoder.spawn().await);
    let args = paligemma_gateway_service::GatewayArgs::new(
        crate::fakes::model_dir(),
        vec![format!("http://localhost:{}", v.addr.port())],
        vec![d.addr.to_string()],
    );
    let service = tokio::task::spawn_blocking(move || paligemma_gateway_service::load(&args))
        .await
        .unwrap()
        .unwrap();
    let addrs = service.replica_addresses(Tier::Vision);
    assert!(addrs.contains(&v.addr), "{addrs:?}");
    service.refresh_replicas().await;
    assert_eq!(service.replica_addresses(Tier::Vision), addrs);
    assert_eq!(service.replica_addresses(Tier::Decoder), [d.addr]);
}
