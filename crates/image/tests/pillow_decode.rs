//! Compares `decode_with` with Pillow's `Image.open(f).convert("RGB")` ([`AlphaMode::Drop`])
//! and with `transformers`' `convert_to_rgb` ([`AlphaMode::CompositeOnWhite`]) on reference
//! data written by `make_decode_refs.py` (PNG colour types and bit depths incl. 16-bit, palette,
//! tRNS and Adam7; JPEG subsamplings, progressive, restart markers, EXIF orientation; WebP
//! lossless/lossy with and without alpha; every (value, alpha) pair for compositing).
//!
//! Every case must be bit-exact (JPEG included: the crate's own decoder follows
//! libjpeg-turbo). Set `PALIGEMMA_DECODE_REFS=/path/file.safetensors` to also check a larger
//! file made with `make_decode_refs.py --jpeg-extended N`.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

use std::collections::BTreeMap;

use paligemma_image::{AlphaMode, DecodeOptions, RgbImage, decode_with};
use safetensors::SafeTensors;

const REFS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/decode_refs.safetensors"
);

fn opts(alpha: AlphaMode) -> DecodeOptions {
    DecodeOptions {
        alpha,
        ..DecodeOptions::default()
    }
}

/// (max abs difference, number of differing samples)
fn diff(got: &RgbImage, want: &[u8], shape: &[usize]) -> (u8, usize) {
    assert_eq!(shape, &[got.height() as usize, got.width() as usize, 3]);
    got.as_raw()
        .iter()
        .zip(want)
        .fold((0, 0), |(m, n), (a, b)| {
            let d = a.abs_diff(*b);
            (m.max(d), n + usize::from(d != 0))
        })
}

/// Decodes every `file/<name>` in `path` both ways and returns the worst difference per
/// format (the prefix of `<name>`).
fn check_file(path: &str) -> BTreeMap<String, u8> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<&str> = st
        .names()
        .into_iter()
        .filter_map(|k| k.strip_prefix("file/"))
        .filter(|n| *n != "composite")
        .collect();
    names.sort();
    let mut worst: BTreeMap<String, u8> = BTreeMap::new();
    for name in names {
        let file = st.tensor(&format!("file/{name}")).unwrap();
        let rgb = st.tensor(&format!("rgb/{name}")).unwrap();
        let hf = st
            .tensor(&format!("hf/{name}"))
            .unwrap_or_else(|_| rgb.clone());
        let kind = name.split('_').next().unwrap().to_owned();
        for (alpha, want, what) in [
            (AlphaMode::Drop, &rgb, "convert(RGB)"),
            (AlphaMode::CompositeOnWhite, &hf, "convert_to_rgb"),
        ] {
            let got =
                decode_with(file.data(), &opts(alpha)).unwrap_or_else(|e| panic!("{name}: {e}"));
            let (max, n) = diff(&got, want.data(), want.shape());
            if max > 0 {
                eprintln!("{name:28} {what:15}: max diff {max}, {n} samples differ");
            }
            let w = worst.entry(kind.clone()).or_default();
            *w = (*w).max(max);
        }
    }
    eprintln!("{path}: worst difference per format: {worst:?}");
    worst
}

#[test]
fn decode_matches_pillow_and_hf_convert_to_rgb_bit_exactly() {
    let worst = check_file(REFS);
    assert_eq!(worst.keys().collect::<Vec<_>>(), ["jpeg", "png", "webp"]);
    assert!(worst.values().all(|&d| d == 0), "{worst:?}");
}

#[test]
fn decode_matches_pillow_on_extended_refs_when_provided() {
    match std::env::var("PALIGEMMA_DECODE_REFS") {
        Ok(path) => {
            let worst = check_file(&path);
            assert!(worst.values().all(|&d| d == 0), "{worst:?}");
        }
        Err(_) => eprintln!("PALIGEMMA_DECODE_REFS not set; skipping the extended check"),
    }
}

#[test]
fn compositing_over_white_matches_hf_for_every_value_alpha_pair() {
    let bytes = std::fs::read(REFS).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let file = st.tensor("file/composite").unwrap();
    // The expected image is stored PNG-encoded (opaque RGB, so decoding it involves no alpha).
    let want = decode_with(
        st.tensor("hf_png/composite").unwrap().data(),
        &opts(AlphaMode::Drop),
    )
    .unwrap();
    let got = decode_with(file.data(), &opts(AlphaMode::CompositeOnWhite)).unwrap();
    assert_eq!((got.width(), got.height()), (256, 256));
    let (max, n) = diff(&got, want.as_raw(), &[256, 256, 3]);
    assert_eq!(
        (max, n),
        (0, 0),
        "compositing differs from Pillow alpha_composite"
    );
    // And dropping alpha returns the stored colours: R = v, G = 255 - v, B = 7v mod 256.
    let dropped = decode_with(file.data(), &opts(AlphaMode::Drop)).unwrap();
    for (x, y, p) in dropped.enumerate_pixels() {
        let v = x as u8;
        assert_eq!(p.0, [v, 255 - v, v.wrapping_mul(7)], "({x}, {y})");
    }
}
