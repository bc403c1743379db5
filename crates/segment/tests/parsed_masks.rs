//! End to end: model text → `parse_detections` → decoder → pasted mask, against the masks the
//! references produced for `parser-cases.json` (`parser_NN_bv_mask`,
//! `parser_NN_space_objK_u8` in `decoder-cases.npz`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use paligemma_segment::{SegmentError, object_mask, object_soft_mask};
use paligemma_text::{BoxConvention, ImageSize, Item, LabelMode, ParseOptions, parse_detections};
use serde_json::Value;

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(common::fixture("parser-cases.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    doc["cases"].as_array().unwrap().clone()
}

fn size(case: &Value) -> ImageSize {
    ImageSize::new(
        case["width"].as_u64().unwrap() as u32,
        case["height"].as_u64().unwrap() as u32,
    )
    .unwrap()
}

#[test]
fn big_vision_masks_of_parsed_outputs_match_the_evaluator() {
    let dec = common::decoder();
    let npz = common::Cases::open();
    let mut compared = 0;
    for case in cases() {
        let out = parse_detections(
            case["text"].as_str().unwrap(),
            size(&case),
            &ParseOptions::default(),
        );
        let Some(key) = case["bv"]["mask"]["key"].as_str() else {
            continue;
        };
        let obj = out.big_vision_object().expect("evaluator scored it");
        let mask = object_mask(&dec, obj).unwrap();
        let expected = npz.u8(key);
        let diff = mask
            .as_slice()
            .iter()
            .zip(&expected)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(diff, 0, "case {}: {diff} pixels differ", case["id"]);
        assert_eq!(mask.area(), case["bv"]["mask"]["ones"].as_u64().unwrap());
        compared += 1;
    }
    assert_eq!(compared, 4);
}

#[test]
fn demo_soft_masks_of_parsed_outputs_match_the_demo_within_one_step() {
    let dec = common::decoder();
    let npz = common::Cases::open();
    let opts = ParseOptions {
        convention: BoxConvention::Demo,
        labels: LabelMode::Exact,
        unique_labels: false,
    };
    let (mut compared, mut worst) = (0, 0u8);
    for case in cases() {
        let out = parse_detections(case["text"].as_str().unwrap(), size(&case), &opts);
        let expected = case["space"]["objs"].as_array().unwrap();
        for (item, exp) in out.items.iter().zip(expected) {
            let Item::Object(obj) = item else { continue };
            let mask = &exp["mask"];
            if mask.is_null() {
                assert!(matches!(
                    object_soft_mask(&dec, obj),
                    Err(SegmentError::NoSegCodes)
                ));
                continue;
            }
            if mask["undefined"].as_bool() == Some(true) {
                // <seg200>: NaN in the reference; we refuse it.
                assert!(matches!(
                    object_soft_mask(&dec, obj),
                    Err(SegmentError::InvalidObject(_))
                ));
                continue;
            }
            let expected = npz.u8(mask["key"].as_str().unwrap());
            match object_soft_mask(&dec, obj) {
                Ok(soft) => {
                    for (a, b) in soft.as_slice().iter().zip(&expected) {
                        worst = worst.max(a.abs_diff(*b));
                    }
                }
                // Invalid (e.g. empty after rounding): the demo pastes nothing.
                Err(SegmentError::InvalidObject(_)) => {
                    assert!(expected.iter().all(|&v| v == 0), "case {}", case["id"]);
                }
                Err(e) => panic!("case {}: {e}", case["id"]),
            }
            compared += 1;
        }
    }
    eprintln!("parsed demo masks: max |diff| {worst}/255");
    assert!(worst <= 2);
    assert!(compared >= 8, "{compared}");
}
