//! Parser parity against `tests/fixtures/postprocess/parser-cases.json`: what the demo Space's
//! `extract_objs` and big_vision's segmentation evaluator returned on tricky strings (see the
//! fixture README, §4).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use paligemma_text::{
    BoxConvention, ImageSize, Item, LabelMode, ObjectProblem, ParseOptions, ParsedOutput,
    parse_detections,
};
use serde_json::Value;

fn cases() -> Vec<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/postprocess/parser-cases.json"
    );
    let text = std::fs::read_to_string(path).expect("read parser-cases.json");
    let mut doc: Value = serde_json::from_str(&text).expect("parse parser-cases.json");
    let cases = doc["cases"].take();
    let cases = cases.as_array().expect("cases array").clone();
    assert_eq!(cases.len(), 33);
    cases
}

fn parse(case: &Value, opts: ParseOptions) -> ParsedOutput {
    let w = case["width"].as_u64().unwrap() as u32;
    let h = case["height"].as_u64().unwrap() as u32;
    let size = ImageSize::new(w, h).unwrap();
    parse_detections(case["text"].as_str().unwrap(), size, &opts)
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn demo_exact() -> ParseOptions {
    ParseOptions {
        convention: BoxConvention::Demo,
        labels: LabelMode::Exact,
        unique_labels: false,
    }
}

#[test]
fn demo_convention_reproduces_every_demo_object_and_remainder() {
    for case in cases() {
        let id = case["id"].as_str().unwrap().to_owned();
        let out = parse(&case, demo_exact());
        let expected = case["space"]["objs"].as_array().unwrap();
        assert_eq!(out.items.len(), expected.len(), "case {id}: {out:#?}");
        for (k, (item, exp)) in out.items.iter().zip(expected).enumerate() {
            let ctx = format!("case {id} item {k}");
            assert_eq!(item.text(), exp["content"].as_str().unwrap(), "{ctx}");
            match item {
                Item::Text(_) => assert!(exp.get("xyxy").is_none(), "{ctx}: expected an object"),
                Item::Object(o) => {
                    assert_eq!(o.box_px.to_xyxy().to_vec(), u32s(&exp["xyxy"]), "{ctx}");
                    assert_eq!(o.label.as_deref(), exp["name"].as_str(), "{ctx}");
                    let bins: Vec<u32> = o.bins.to_array().iter().map(|&b| u32::from(b)).collect();
                    assert_eq!(bins, u32s(&exp["loc_bins_y1x1y2x2"]), "{ctx}");
                    let n = o.box_norm;
                    assert_eq!(
                        vec![n.ymin, n.xmin, n.ymax, n.xmax],
                        f64s(&exp["box_norm_y1x1y2x2"]),
                        "{ctx}"
                    );
                    let seg = o
                        .seg
                        .map(|s| s.iter().map(|&c| u32::from(c)).collect::<Vec<_>>());
                    let exp_seg = (!exp["seg"].is_null()).then(|| u32s(&exp["seg"]));
                    assert_eq!(seg, exp_seg, "{ctx}");
                }
            }
        }
    }
}

#[test]
fn demo_unique_labels_mode_renames_repeats_like_the_demo_app() {
    for case in cases() {
        let id = case["id"].as_str().unwrap().to_owned();
        let out = parse(
            &case,
            ParseOptions {
                unique_labels: true,
                ..demo_exact()
            },
        );
        let expected = case["space"]["objs_unique_labels"].as_array().unwrap();
        assert_eq!(out.items.len(), expected.len(), "case {id}");
        for (item, exp) in out.items.iter().zip(expected) {
            if let Item::Object(o) = item {
                assert_eq!(o.label.as_deref(), exp["name"].as_str(), "case {id}");
            }
        }
    }
}

#[test]
fn big_vision_convention_reproduces_every_box_and_verdict() {
    let opts = ParseOptions::default();
    assert_eq!(opts.convention, BoxConvention::BigVision);
    let mut checked = 0;
    for case in cases() {
        let id = case["id"].as_str().unwrap().to_owned();
        let out = parse(&case, opts);
        let objects: Vec<_> = out.objects().collect();
        let expected: Vec<&Value> = case["space"]["objs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o.get("xyxy").is_some())
            .collect();
        assert_eq!(objects.len(), expected.len(), "case {id}");
        for (o, exp) in objects.iter().zip(expected) {
            let rule = &exp["bv_box_rule"];
            let ctx = format!("case {id} object {:?}", o.text);
            // The rule was run with 16 x <seg000>: only the box decides.
            assert_eq!(
                !o.box_is_valid(),
                rule["counted_invalid"].as_bool().unwrap(),
                "{ctx}: {:?}",
                o.problems
            );
            let token_problem = o.problems.iter().any(|p| {
                matches!(
                    p,
                    ObjectProblem::LocOutOfRange { .. } | ObjectProblem::EmptyOrInverted { .. }
                )
            });
            assert_eq!(
                !token_problem,
                rule["valid_flag"].as_bool().unwrap(),
                "{ctx}"
            );
            if rule["valid_flag"].as_bool().unwrap() {
                let b = o.box_px;
                assert_eq!(
                    vec![b.ymin, b.xmin, b.ymax, b.xmax],
                    u32s(&rule["box_px_y1x1y2x2"]),
                    "{ctx}"
                );
                let n = o.box_norm;
                // serde_json's default float parser may be 1 ulp off Python's repr; our
                // division is correctly rounded like Python's, so allow exactly that.
                for (ours, theirs) in [n.ymin, n.xmin, n.ymax, n.xmax]
                    .into_iter()
                    .zip(f64s(&rule["box_norm_y1x1y2x2"]))
                {
                    assert!((ours - theirs).abs() <= f64::EPSILON * theirs, "{ctx}");
                }
            }
            checked += 1;
        }
        // The evaluator itself: only the first 20 tokens, strict layout.
        let bv = &case["bv"];
        let scored = out.big_vision_object();
        assert_eq!(
            scored.is_none(),
            bv["counted_invalid"].as_bool().unwrap(),
            "case {id}: {:?}",
            out.items.first()
        );
        if let Some(o) = scored {
            let b = o.box_px;
            assert_eq!(
                vec![b.ymin, b.xmin, b.ymax, b.xmax],
                u32s(&bv["box_px_y1x1y2x2"]),
                "case {id}"
            );
            let codes: Vec<u32> = o.seg.unwrap().iter().map(|&c| u32::from(c)).collect();
            assert_eq!(
                codes,
                u32s(&bv["tokens_loc_seg"])[4..].to_vec(),
                "case {id}"
            );
        }
    }
    assert!(checked >= 40, "only {checked} objects compared");
}

#[test]
fn trimmed_labels_differ_from_exact_only_by_surrounding_whitespace() {
    for case in cases() {
        let exact = parse(&case, demo_exact());
        let trimmed = parse(
            &case,
            ParseOptions {
                labels: LabelMode::Trimmed,
                ..demo_exact()
            },
        );
        for (e, t) in exact.objects().zip(trimmed.objects()) {
            assert_eq!(
                t.label.as_deref(),
                e.label.as_deref().map(str::trim).filter(|l| !l.is_empty())
            );
            assert_eq!(t.box_px, e.box_px);
        }
    }
    let case = &cases()[0];
    let out = parse(case, ParseOptions::default());
    let labels: Vec<_> = out.objects().map(|o| o.label.as_deref().unwrap()).collect();
    assert_eq!(labels, ["cat", "dog"]);
}

#[test]
fn malformed_objects_are_reported_not_dropped() {
    let cases = cases();
    let by_name = |n: &str| {
        cases
            .iter()
            .find(|c| c["name"] == n)
            .unwrap_or_else(|| panic!("no case {n}"))
    };
    for name in [
        "three_locs",
        "spaced_locs",
        "short_loc_digits",
        "fewer_than_16_segs",
    ] {
        let out = parse(by_name(name), ParseOptions::default());
        assert!(out.has_malformed(), "{name}: {out:#?}");
    }
    let out = parse(by_name("inverted_coords"), ParseOptions::default());
    let obj = out.objects().next().unwrap();
    assert!(!obj.is_valid());
    assert!(obj.box_px.ymin > obj.box_px.ymax, "inverted box kept as is");
    let out = parse(by_name("multi_detect"), ParseOptions::default());
    assert!(!out.has_malformed());
    assert_eq!(out.valid_objects().count(), 2);
}
