//! Pasting against the references (`decoder-cases.npz` `paste*` arrays, fixture README §3):
//! big_vision's float BILINEAR resize + `> 0`, and the demo's uint8 BICUBIC soft mask.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Cases;
use paligemma_segment::{
    MaskLogits, logits_to_u8_demo, paste_big_vision, paste_demo, paste_demo_u8,
    resize_logits_big_vision,
};
use paligemma_text::{BoxConvention, ImageSize, ParseOptions, PixelBox, parse_detections};

/// How far from the threshold a big_vision resized value may be for a float32 port to flip it.
const NEAR_THRESHOLD: f32 = 1e-5;

struct PasteCase {
    j: usize,
    code_index: usize,
    bins: [u16; 4],
    size: ImageSize,
}

fn paste_cases(c: &Cases) -> Vec<PasteCase> {
    let idx = c.i32("paste_code_index");
    let bins = c.i32("paste_box_bins");
    let wh = c.i32("paste_image_wh");
    (0..idx.len())
        .map(|j| PasteCase {
            j,
            code_index: idx[j] as usize,
            bins: [0, 1, 2, 3].map(|k| bins[j * 4 + k] as u16),
            size: ImageSize::new(wh[j * 2] as u32, wh[j * 2 + 1] as u32).unwrap(),
        })
        .collect()
}

/// The case as model text, parsed in `convention`: `<loc>x4 <seg>x16 obj`.
fn parse_case(
    p: &PasteCase,
    codes: &[u16],
    convention: BoxConvention,
) -> paligemma_text::DetectedObject {
    let mut text: String = p.bins.iter().map(|b| format!("<loc{b:04}>")).collect();
    text.extend(codes.iter().map(|c| format!("<seg{c:03}>")));
    text.push_str(" obj");
    let opts = ParseOptions {
        convention,
        ..ParseOptions::default()
    };
    let out = parse_detections(&text, p.size, &opts);
    out.objects().next().unwrap().clone()
}

fn codes_of(c: &Cases, row: usize) -> Vec<u16> {
    c.i32("codes")[row * 16..(row + 1) * 16]
        .iter()
        .map(|&v| v as u16)
        .collect()
}

fn mismatches(a: &[u8], b: &[u8]) -> Vec<usize> {
    assert_eq!(a.len(), b.len());
    (0..a.len()).filter(|&i| a[i] != b[i]).collect()
}

#[test]
fn big_vision_paste_of_the_reference_logits_is_exact() {
    let c = Cases::open();
    let valid = c.u8("paste_bv_valid");
    let boxes = c.i32("paste_bv_box_px");
    for p in paste_cases(&c) {
        let key = |s: &str| format!("paste{:02}_bv_{s}", p.j);
        if valid[p.j] == 0 {
            assert!(!c.has(&key("m64")));
            continue;
        }
        let b = &boxes[p.j * 4..p.j * 4 + 4];
        let bx = PixelBox {
            ymin: b[0] as u32,
            xmin: b[1] as u32,
            ymax: b[2] as u32,
            xmax: b[3] as u32,
        };
        let m64 = MaskLogits::from_vec(c.f32(&key("m64"))).unwrap();
        let resized = resize_logits_big_vision(&m64, &bx, p.size).unwrap();
        let expected = c.f32(&key("resized_f32"));
        assert_eq!(resized.len(), expected.len(), "case {}", p.j);
        let worst = resized
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert_eq!(
            worst, 0.0,
            "case {}: Pillow F resize differs by {worst}",
            p.j
        );
        let mask = paste_big_vision(&m64, &bx, p.size).unwrap();
        assert_eq!(mask.as_slice(), &c.u8(&key("mask"))[..], "case {}", p.j);
    }
}

#[test]
fn big_vision_masks_from_our_decoder_match_except_at_the_threshold() {
    let c = Cases::open();
    let dec = common::decoder();
    let valid = c.u8("paste_bv_valid");
    let mut flips = 0;
    for p in paste_cases(&c) {
        let codes = codes_of(&c, p.code_index);
        let obj = parse_case(&p, &codes, BoxConvention::BigVision);
        let key = |s: &str| format!("paste{:02}_bv_{s}", p.j);
        let expected = c.u8(&key("mask"));
        assert_eq!(
            obj.is_valid(),
            valid[p.j] == 1,
            "case {}: {:?}",
            p.j,
            obj.problems
        );
        let b = &c.i32("paste_bv_box_px")[p.j * 4..p.j * 4 + 4];
        if !obj.is_valid() {
            assert!(expected.iter().all(|&v| v == 0));
            assert!(paligemma_segment::object_mask(&dec, &obj).is_err());
            continue;
        }
        let px = obj.box_px;
        assert_eq!(
            [px.ymin, px.xmin, px.ymax, px.xmax],
            [0, 1, 2, 3].map(|k| b[k] as u32)
        );
        let mask = paligemma_segment::object_mask(&dec, &obj).unwrap();
        let resized = c.f32(&key("resized_f32"));
        let bw = px.width() as usize;
        for i in mismatches(mask.as_slice(), &expected) {
            let (y, x) = (i / p.size.width() as usize, i % p.size.width() as usize);
            let r = resized[(y - px.ymin as usize) * bw + (x - px.xmin as usize)];
            assert!(
                r.abs() <= NEAR_THRESHOLD,
                "case {} pixel ({y},{x}): reference {r}",
                p.j
            );
            flips += 1;
        }
    }
    eprintln!("big_vision paste: {flips} near-threshold pixel flips");
}

#[test]
fn demo_quantisation_and_bicubic_paste_of_the_reference_logits_are_exact() {
    let c = Cases::open();
    let boxes = c.i32("paste_space_box_px");
    for p in paste_cases(&c) {
        let key = |s: &str| format!("paste{:02}_space_{s}", p.j);
        let m64 = MaskLogits::from_vec(c.f32(&key("m64_f32"))).unwrap();
        let u8s = c.u8(&key("m64_u8"));
        assert_eq!(logits_to_u8_demo(&m64), u8s, "case {}", p.j);
        let b = &boxes[p.j * 4..p.j * 4 + 4];
        let bx = PixelBox {
            xmin: b[0] as u32,
            ymin: b[1] as u32,
            xmax: b[2] as u32,
            ymax: b[3] as u32,
        };
        let expected = c.u8(&key("mask_u8"));
        let obj = parse_case(&p, &[0; 16], BoxConvention::Demo);
        assert_eq!(obj.box_px, bx, "case {}", p.j);
        if bx.is_empty() {
            assert!(expected.iter().all(|&v| v == 0));
            assert!(paste_demo_u8(&u8s, &bx, p.size).is_err());
            continue;
        }
        let soft = paste_demo_u8(&u8s, &bx, p.size).unwrap();
        assert_eq!(soft.as_slice(), &expected[..], "case {}", p.j);
    }
}

#[test]
fn demo_masks_from_our_decoder_stay_within_one_quantisation_step() {
    let c = Cases::open();
    let dec = common::decoder();
    let (mut worst, mut differing) = (0u8, 0usize);
    for p in paste_cases(&c) {
        let obj = parse_case(&p, &codes_of(&c, p.code_index), BoxConvention::Demo);
        if obj.box_px.is_empty() {
            continue;
        }
        let logits = dec.decode(obj.seg.as_ref().unwrap()).unwrap();
        let soft = paste_demo(&logits, &obj.box_px, p.size).unwrap();
        let expected = c.u8(&format!("paste{:02}_space_mask_u8", p.j));
        for (a, b) in soft.as_slice().iter().zip(&expected) {
            let d = a.abs_diff(*b);
            worst = worst.max(d);
            differing += usize::from(d > 0);
        }
    }
    eprintln!("demo paste: max |diff| {worst}/255 on {differing} pixels");
    assert!(worst <= 2, "max diff {worst}");
}
