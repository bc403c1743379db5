//! `ListModels` and `ModelInfo`.

use paligemma_proto::v1::{ListModelsRequest, ModelInfoRequest};
use tonic::Code;

use crate::fakes::{FakeDecoder, FakeVision, Gateway, closed_addr};

#[tokio::test]
async fn list_models_reports_the_checkpoint_and_the_decoder_replicas_info() {
    let (vision, decoder) = (FakeVision::default(), FakeDecoder::reference());
    let (v, d) = (vision.spawn().await, decoder.spawn().await);
    let mut gateway =
        Gateway::start_with(&[v.addr], &[d.addr], |a| a.max_new_tokens_limit = 512).await;

    let models = gateway
        .client
        .list_models(ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    assert_eq!(models.len(), 1);
    let card = &models[0];
    assert_eq!(card.id, "pg1-32");
    assert_eq!(card.image_size, 32);
    assert_eq!(card.num_image_tokens, 16);
    assert_eq!(card.decoder_family, "gemma");
    assert_eq!(card.max_position_embeddings, 8192);
    assert_eq!(card.max_new_tokens_limit, 512);
    assert_eq!(card.dtype, "f32");
    assert_eq!(card.vision_fingerprint, "xxh3:fake");

    for model in ["", "pg1-32"] {
        let info = gateway
            .client
            .model_info(ModelInfoRequest {
                model: model.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&info, card);
    }
    gateway.stop().await;
}

#[tokio::test]
async fn model_info_for_an_unknown_model_is_not_found_naming_model() {
    let mut gateway = Gateway::start_with(&[closed_addr().await], &[closed_addr().await], |a| {
        a.model_id = Some("pali".into());
    })
    .await;
    let status = gateway
        .client
        .model_info(ModelInfoRequest {
            model: "pg1-32".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().starts_with("model: "), "{status:?}");
    assert!(status.message().contains("pali"), "{status:?}");
    gateway.stop().await;
}

#[tokio::test]
async fn the_model_card_without_a_reachable_decoder_still_describes_the_checkpoint() {
    let mut gateway = Gateway::start(&[closed_addr().await], &[closed_addr().await]).await;
    let card = gateway
        .client
        .model_info(ModelInfoRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(card.num_image_tokens, 16);
    assert_eq!(card.dtype, "", "only a decoder replica knows its dtype");
    gateway.stop().await;
}
