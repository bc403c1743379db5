//! `Detect` and `Segment` in front of a decoder fake that returns canned `<loc>`/`<seg>` ids:
//! boxes in the original image's pixels, masks equal to `object_mask`, empty lists, and the
//! errors of bad labels, a missing `--vae` and an image whose header cannot be read.

use std::io::Cursor;
use std::path::PathBuf;

use paligemma_gateway_service::{GatewayArgs, bad_request_fields, load};
use paligemma_proto::v1::{
    BoxConvention as PbConvention, DetectRequest, FinishReason, SegmentRequest, generate_input,
};
use paligemma_segment::{CocoRle, MaskDecoder, object_mask};
use paligemma_text::{
    BoxConvention, ImageSize, LabelMode, ParseOptions, PromptLayout, parse_detections,
};
use tonic::Code;

use crate::fakes::{FakeDecoder, FakeVision, Gateway, Script, model_dir, tokenizer};

const WIDTH: u32 = 640;
const HEIGHT: u32 = 480;

fn vae() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/postprocess/vae-random.npz")
}

/// A real PNG (the gateway reads its header for the original size).
fn png() -> Vec<u8> {
    let img = image::RgbImage::new(WIDTH, HEIGHT);
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// The ids of `text` followed by `<eos>`, as the decoder would generate them.
fn canned(text: &str) -> Script {
    let mut ids = tokenizer().encode(text).unwrap();
    ids.push(1);
    Script::Tokens(
        ids.chunks(3).map(<[u32]>::to_vec).collect(),
        FinishReason::Eos,
    )
}

fn seg_text(codes: &[u16; 16]) -> String {
    codes.iter().map(|c| format!("<seg{c:03}>")).collect()
}

const TWO_BOXES: &str = "<loc0256><loc0128><loc0768><loc0896> cat ; \
                         <loc0000><loc0512><loc1023><loc1023> dog";

async fn start(script: Script, vae: bool) -> (Gateway, FakeDecoder, Vec<crate::fakes::Running>) {
    let (vision, decoder) = (FakeVision::default(), FakeDecoder::new(script));
    let (v, d) = (vision.spawn().await, decoder.spawn().await);
    let gateway = Gateway::start_with(&[v.addr], &[d.addr], |a| {
        if vae {
            a.vae = Some(self::vae());
        }
    })
    .await;
    (gateway, decoder, vec![v, d])
}

fn detect_request(labels: &[&str]) -> DetectRequest {
    DetectRequest {
        image: png(),
        labels: labels.iter().map(ToString::to_string).collect(),
        ..Default::default()
    }
}

fn segment_request(labels: &[&str]) -> SegmentRequest {
    SegmentRequest {
        image: png(),
        labels: labels.iter().map(ToString::to_string).collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn detect_returns_boxes_in_original_image_pixels() {
    let (mut gateway, decoder, _servers) = start(canned(TWO_BOXES), false).await;
    let r = gateway
        .client
        .detect(detect_request(&["cat", "dog"]))
        .await
        .unwrap()
        .into_inner();

    assert_eq!(r.raw_text, TWO_BOXES);
    assert_eq!((r.image_width, r.image_height), (WIDTH, HEIGHT));
    assert!(r.invalid.is_empty(), "{:?}", r.invalid);
    let labels: Vec<_> = r.objects.iter().map(|o| o.label.as_str()).collect();
    assert_eq!(labels, ["cat", "dog"]);
    // big_vision: int(bin / 1023 * size) per axis of the original image.
    let px = r.objects[0].box_px.unwrap();
    assert_eq!(
        (px.ymin, px.xmin, px.ymax, px.xmax),
        (
            (256.0 / 1023.0 * 480.0) as u32,
            (128.0 / 1023.0 * 640.0) as u32,
            (768.0 / 1023.0 * 480.0) as u32,
            (896.0 / 1023.0 * 640.0) as u32
        )
    );
    let dog = r.objects[1].box_px.unwrap();
    assert_eq!((dog.ymin, dog.xmin, dog.ymax, dog.xmax), (0, 320, 480, 640));
    let norm = r.objects[1].r#box.unwrap();
    assert_eq!((norm.ymin, norm.xmax), (0.0, 1.0));
    assert_eq!(r.objects[0].loc_bins, [256, 128, 768, 896]);
    assert!(
        r.objects
            .iter()
            .all(|o| o.seg.is_empty() && o.mask.is_none())
    );
    let usage = r.usage.unwrap();
    assert!(usage.generated_tokens > 8, "{usage:?}");

    // The decoder was asked for the task prompt.
    let inputs = decoder.inputs.lock().unwrap()[0].clone();
    let prompt_ids = inputs
        .iter()
        .find_map(|i| match &i.kind {
            Some(generate_input::Kind::Request(r)) => Some(r.prompt_ids.clone()),
            _ => None,
        })
        .unwrap();
    let layout = PromptLayout::build(&tokenizer(), "detect cat ; dog", 16).unwrap();
    assert_eq!(prompt_ids, layout.ids);
    gateway.stop().await;
}

#[tokio::test]
async fn the_demo_convention_and_exact_labels_follow_the_request() {
    let (mut gateway, _, _servers) = start(canned(TWO_BOXES), false).await;
    let r = gateway
        .client
        .detect(DetectRequest {
            box_convention: PbConvention::Demo as i32,
            exact_labels: true,
            ..detect_request(&["cat", "dog"])
        })
        .await
        .unwrap()
        .into_inner();
    let opts = ParseOptions {
        convention: BoxConvention::Demo,
        labels: LabelMode::Exact,
        unique_labels: false,
    };
    let size = ImageSize::new(WIDTH, HEIGHT).unwrap();
    let parsed = parse_detections(TWO_BOXES, size, &opts);
    let want: Vec<_> = parsed
        .valid_objects()
        .map(|o| (o.label.clone().unwrap(), o.box_px.to_xyxy()))
        .collect();
    let got: Vec<_> = r
        .objects
        .iter()
        .map(|o| {
            let b = o.box_px.unwrap();
            (o.label.clone(), [b.xmin, b.ymin, b.xmax, b.ymax])
        })
        .collect();
    assert_eq!(got, want);
    assert_eq!(got[0].0, "cat ", "exact labels keep the trailing space");
    gateway.stop().await;
}

#[tokio::test]
async fn segment_returns_rle_masks_equal_to_object_mask() {
    let codes = [3, 17, 0, 127, 64, 5, 99, 12, 1, 2, 3, 4, 120, 80, 40, 8];
    let text = format!(
        "<loc0100><loc0200><loc0900><loc0700>{} cat ; <loc0010><loc0020><loc0300><loc0400> box",
        seg_text(&codes)
    );
    let (mut gateway, _, _servers) = start(canned(&text), true).await;
    let r = gateway
        .client
        .segment(SegmentRequest {
            return_png: true,
            ..segment_request(&["cat"])
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.raw_text, text);
    assert_eq!(r.objects.len(), 2, "{:?}", r.invalid);

    let decoder = MaskDecoder::from_npz(vae()).unwrap();
    let size = ImageSize::new(WIDTH, HEIGHT).unwrap();
    let parsed = parse_detections(&text, size, &ParseOptions::default());
    let cat = parsed.objects().next().unwrap();
    let want = object_mask(&decoder, cat).unwrap();

    let got = &r.objects[0];
    assert_eq!(got.seg, codes.map(u32::from));
    let mask = got.mask.as_ref().unwrap();
    assert_eq!(mask.size, [HEIGHT, WIDTH]);
    let rle = want.to_coco_rle();
    assert_eq!(mask.counts, rle.counts);
    assert_eq!(mask.area, want.area());
    let back = CocoRle {
        size: [HEIGHT, WIDTH],
        counts: mask.counts.clone(),
    }
    .to_mask()
    .unwrap();
    assert_eq!(back, want);
    let png = image::load_from_memory(&mask.png).unwrap();
    assert_eq!((png.width(), png.height()), (WIDTH, HEIGHT));

    // A detection inside a segmentation output has a box but no mask.
    assert!(r.objects[1].seg.is_empty() && r.objects[1].mask.is_none());
    gateway.stop().await;
}

#[tokio::test]
async fn output_without_locs_is_an_empty_object_list() {
    let (mut gateway, _, _servers) = start(canned("a cat on a mat"), true).await;
    let r = gateway
        .client
        .detect(detect_request(&["cat"]))
        .await
        .unwrap()
        .into_inner();
    assert!(r.objects.is_empty() && r.invalid.is_empty(), "{r:?}");
    assert_eq!(r.raw_text, "a cat on a mat");
    let s = gateway
        .client
        .segment(segment_request(&["cat"]))
        .await
        .unwrap()
        .into_inner();
    assert!(s.objects.is_empty());
    gateway.stop().await;
}

#[tokio::test]
async fn malformed_and_inverted_objects_are_reported_as_invalid() {
    let text = "<loc0500><loc0100><loc0400><loc0200> cat ; <loc0001><loc0002> dog";
    let (mut gateway, _, _servers) = start(canned(text), false).await;
    let r = gateway
        .client
        .detect(detect_request(&["cat"]))
        .await
        .unwrap()
        .into_inner();
    assert!(r.objects.is_empty(), "{:?}", r.objects);
    assert_eq!(r.invalid.len(), 2, "{:?}", r.invalid);
    assert!(r.invalid[0].text.contains("<loc0500>"));
    assert!(!r.invalid[0].problems.is_empty());
    gateway.stop().await;
}

#[tokio::test]
async fn empty_or_bad_labels_are_invalid_argument_naming_labels() {
    let (mut gateway, decoder, _servers) = start(canned(TWO_BOXES), true).await;
    for labels in [&[][..], &["cat;dog"][..], &["  "][..]] {
        let status = gateway
            .client
            .detect(detect_request(labels))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{labels:?}");
        assert_eq!(bad_request_fields(&status), ["labels"], "{labels:?}");
        let status = gateway
            .client
            .segment(segment_request(labels))
            .await
            .unwrap_err();
        assert_eq!(bad_request_fields(&status), ["labels"], "{labels:?}");
    }
    let status = gateway
        .client
        .detect(DetectRequest {
            box_convention: 7,
            ..detect_request(&["cat"])
        })
        .await
        .unwrap_err();
    assert_eq!(bad_request_fields(&status), ["box_convention"]);
    assert_eq!(decoder.calls(), 0, "nothing was generated");
    gateway.stop().await;
}

#[tokio::test]
async fn segment_without_vae_is_failed_precondition() {
    let (mut gateway, decoder, _servers) = start(canned(TWO_BOXES), false).await;
    let status = gateway
        .client
        .segment(segment_request(&["cat"]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("--vae DIR/vae-oid.npz"),
        "{}",
        status.message()
    );
    assert_eq!(decoder.calls(), 0);
    gateway.stop().await;
}

#[tokio::test]
async fn an_image_whose_size_cannot_be_read_is_invalid_argument_naming_image() {
    // The fake vision tier accepts anything; the real one would reject it first.
    let (mut gateway, _, _servers) = start(canned(TWO_BOXES), false).await;
    let status = gateway
        .client
        .detect(DetectRequest {
            image: b"not an image".to_vec(),
            ..detect_request(&["cat"])
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_request_fields(&status), ["image"]);
    gateway.stop().await;
}

#[tokio::test]
async fn a_bad_vae_file_fails_startup_naming_it() {
    let missing = PathBuf::from("/nonexistent/vae-oid.npz");
    let mut args = GatewayArgs::new(
        model_dir(),
        vec!["127.0.0.1:1".into()],
        vec!["127.0.0.1:2".into()],
    );
    args.vae = Some(missing.clone());
    let err = format!("{:#}", load(&args).unwrap_err());
    assert!(err.contains("/nonexistent/vae-oid.npz"), "{err}");

    // A file that is not an npz at all.
    args.vae = Some(model_dir().join("config.json"));
    let err = format!("{:#}", load(&args).unwrap_err());
    assert!(err.contains("config.json"), "{err}");
}
