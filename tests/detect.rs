//! Detection and segmentation end to end on the tiny random fixture checkpoint: the three tiers
//! over real gRPC on loopback (Detect/Segment), and `paligemma detect|segment` in process. The
//! random model emits whatever it emits; what must hold is that every response is well formed
//! and consistent with `parse_detections` of its own raw text (and `object_mask` for masks).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use paligemma_proto::v1::{
    DetectRequest, DetectResponse, DetectedObject, GenerateRequest, InvalidObject, SegmentRequest,
};
use paligemma_segment::{MaskDecoder, object_mask};
use paligemma_text::{ImageSize, ParseOptions, ParsedOutput, parse_detections};
use serde_json::Value;

const MODEL: &str = "pg1-32";
/// Long enough for the random model to write an object for these labels and this image.
const MAX_NEW_TOKENS: u32 = 60;

mod common;

use common::{Running, client, fixtures, start_decoder, start_gateway, start_vision};

fn model_dir() -> PathBuf {
    common::model_dir(MODEL)
}

fn vae() -> PathBuf {
    fixtures().join("postprocess/vae-random.npz")
}

fn image_path() -> PathBuf {
    fixtures().join("images/photo.jpg")
}

fn image_size(bytes: &[u8]) -> ImageSize {
    let img = image::load_from_memory(bytes).expect("fixture image decodes");
    ImageSize::new(img.width(), img.height()).expect("non-empty")
}

/// Vision, decoder and a gateway with `--vae` set, each its own server.
async fn start_stack() -> [Running; 3] {
    let vision = start_vision(MODEL).await;
    let decoder = start_decoder(MODEL).await;
    let gateway = start_gateway(MODEL, &[vision.addr], &[decoder.addr], |args| {
        args.vae = Some(vae())
    })
    .await;
    [vision, decoder, gateway]
}

/// The response's objects and invalid entries are what `parse_detections` makes of its
/// `raw_text`: the valid objects (label, bins, pixel box, seg codes) and, as invalid, the
/// objects with problems plus the malformed pieces.
fn assert_consistent(objects: &[DetectedObject], invalid: &[InvalidObject], parsed: &ParsedOutput) {
    let valid: Vec<_> = parsed.valid_objects().collect();
    assert_eq!(objects.len(), valid.len(), "{objects:?} vs {valid:?}");
    for (got, want) in objects.iter().zip(&valid) {
        assert_eq!(got.label, want.label.clone().unwrap_or_default());
        assert_eq!(got.loc_bins, want.bins.to_array().map(u32::from));
        let b = got.box_px.expect("pixel box");
        assert_eq!(
            [b.ymin, b.xmin, b.ymax, b.xmax],
            [
                want.box_px.ymin,
                want.box_px.xmin,
                want.box_px.ymax,
                want.box_px.xmax
            ]
        );
        let n = got.r#box.expect("normalised box");
        for v in [n.ymin, n.xmin, n.ymax, n.xmax] {
            assert!((0.0..=1.0).contains(&v), "{n:?}");
        }
        let seg: Vec<u32> = want
            .seg
            .map(|s| s.map(u32::from).to_vec())
            .unwrap_or_default();
        assert_eq!(got.seg, seg);
    }
    let bad = parsed.objects().filter(|o| !o.is_valid()).count()
        + parsed.items.iter().filter(|i| i.is_malformed()).count();
    assert_eq!(invalid.len(), bad, "{invalid:?}");
    assert!(invalid.iter().all(|i| !i.problems.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detect_and_segment_over_grpc_are_consistent_with_their_raw_text() {
    let stack = start_stack().await;
    let mut client = client(stack[2].addr);
    let image = std::fs::read(image_path()).expect("image");
    let size = image_size(&image);
    let labels = vec!["dog".to_string(), "car".to_string()];

    let detect: DetectResponse = client
        .detect(DetectRequest {
            image: image.clone(),
            labels: labels.clone(),
            max_new_tokens: MAX_NEW_TOKENS,
            ..Default::default()
        })
        .await
        .expect("detect")
        .into_inner();
    assert_eq!(
        (detect.image_width, detect.image_height),
        (size.width(), size.height())
    );
    let parsed = parse_detections(&detect.raw_text, size, &ParseOptions::default());
    assert_consistent(&detect.objects, &detect.invalid, &parsed);
    assert!(detect.objects.iter().all(|o| o.mask.is_none()));
    let usage = detect.usage.expect("usage");
    assert!(usage.generated_tokens >= 1 && usage.generated_tokens <= MAX_NEW_TOKENS);

    // The raw text is what GenerateUnary produces for the task prompt.
    let unary = client
        .generate_unary(GenerateRequest {
            image: image.clone(),
            prompt: "detect dog ; car".into(),
            max_new_tokens: MAX_NEW_TOKENS,
            ..Default::default()
        })
        .await
        .expect("generate")
        .into_inner();
    assert_eq!(detect.raw_text, unary.text);

    let segment = client
        .segment(SegmentRequest {
            image,
            labels,
            max_new_tokens: MAX_NEW_TOKENS,
            return_png: true,
            ..Default::default()
        })
        .await
        .expect("segment")
        .into_inner();
    let parsed = parse_detections(&segment.raw_text, size, &ParseOptions::default());
    assert_consistent(&segment.objects, &segment.invalid, &parsed);
    let decoder = MaskDecoder::from_npz(vae()).expect("vae");
    for (got, want) in segment.objects.iter().zip(parsed.valid_objects()) {
        match (&got.mask, want.seg.is_some()) {
            (Some(mask), true) => {
                let want = object_mask(&decoder, want).expect("mask");
                assert_eq!(mask.size, [size.height(), size.width()]);
                assert_eq!(mask.counts, want.to_coco_rle().counts);
                assert_eq!(mask.area, want.area());
                let png = image::load_from_memory(&mask.png).expect("png");
                assert_eq!((png.width(), png.height()), (size.width(), size.height()));
            }
            (None, false) => {}
            (mask, has_seg) => panic!("mask {mask:?} for an object with seg codes: {has_seg}"),
        }
    }
    for tier in stack {
        tier.stop().await;
    }
}

fn paligemma(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_paligemma"))
        .args(args)
        .output()
        .expect("binary runs")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Runs `paligemma <task> ... --out <tmp>.png`; returns the JSON and the written image.
fn run_cli(task: &str, extra: &[&str]) -> (Value, image::DynamicImage) {
    let out = std::env::temp_dir().join(format!(
        "paligemma-{task}-{}-{}.png",
        std::process::id(),
        extra.len()
    ));
    let (model, image) = (model_dir(), image_path());
    let mut args = vec![
        task,
        "--model",
        path(&model),
        "--image",
        path(&image),
        "--labels",
        "dog;car",
        "--max-new-tokens",
        "60",
        "--out",
        path(&out),
    ];
    args.extend_from_slice(extra);
    let output = paligemma(&args);
    assert!(
        output.status.success(),
        "{task} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    let drawn = image::open(&out).expect("--out is a decodable image");
    let _ = std::fs::remove_file(&out);
    (json, drawn)
}

fn assert_cli_json(json: &Value, size: ImageSize) {
    let raw = json["raw_text"].as_str().expect("raw_text");
    let parsed = parse_detections(raw, size, &ParseOptions::default());
    let objects = json["objects"].as_array().expect("objects");
    let invalid = json["invalid"].as_array().expect("invalid");
    assert_eq!(objects.len(), parsed.valid_objects().count(), "{json}");
    for (o, want) in objects.iter().zip(parsed.valid_objects()) {
        assert_eq!(o["box_px"]["ymin"], want.box_px.ymin);
        assert_eq!(o["box_px"]["xmax"], want.box_px.xmax);
    }
    let bad = parsed.objects().filter(|o| !o.is_valid()).count()
        + parsed.items.iter().filter(|i| i.is_malformed()).count();
    assert_eq!(invalid.len(), bad, "{json}");
    assert_eq!(json["image_width"], size.width());
    assert_eq!(json["image_height"], size.height());
}

#[test]
fn cli_detect_prints_json_and_writes_a_png_of_the_original_size() {
    let size = image_size(&std::fs::read(image_path()).expect("image"));
    let (json, drawn) = run_cli("detect", &[]);
    assert_cli_json(&json, size);
    assert_eq!(
        (drawn.width(), drawn.height()),
        (size.width(), size.height())
    );

    let (json, drawn) = run_cli("detect", &["--convention", "demo", "--exact-labels"]);
    assert!(json["raw_text"].is_string());
    assert_eq!(
        (drawn.width(), drawn.height()),
        (size.width(), size.height())
    );
}

#[test]
fn cli_segment_prints_masks_and_writes_a_png_of_the_original_size() {
    let size = image_size(&std::fs::read(image_path()).expect("image"));
    let (json, drawn) = run_cli("segment", &["--vae", path(&vae())]);
    assert_cli_json(&json, size);
    for o in json["objects"].as_array().expect("objects") {
        if !o["seg"].is_null() {
            assert_eq!(
                o["mask"]["size"],
                serde_json::json!([size.height(), size.width()])
            );
        }
    }
    assert_eq!(
        (drawn.width(), drawn.height()),
        (size.width(), size.height())
    );
}

#[test]
fn cli_errors_are_clear_for_a_missing_vae_and_empty_labels() {
    let (model, image) = (model_dir(), image_path());
    let base = ["--model", path(&model), "--image", path(&image)];
    let out = paligemma(&[&["segment"][..], &base, &["--labels", "cat"]].concat());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--vae"), "{err}");

    let out = paligemma(&[&["detect"][..], &base, &["--labels", ""]].concat());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("labels"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
