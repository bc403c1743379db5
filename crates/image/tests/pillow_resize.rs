//! Compares `paligemma_image::resize` with Pillow's `Image.resize` on reference data written
//! by `make_resize_refs.py` (Pillow version recorded in the file's metadata).
//!
//! Requirement: max difference ≤ 1 grey level; the test also reports whether every case is
//! bit-exact and fails if any is not (Pillow's arithmetic is reproduced exactly).
//! Set `PALIGEMMA_RESIZE_REFS=/path/to/extended.safetensors` to also check a larger file made
//! with `make_resize_refs.py --extended N`.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

use std::collections::BTreeMap;

use paligemma_image::{Filter, Resampler, RgbImage, resize_with};
use safetensors::{Dtype, SafeTensors};

const REFS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/resize_refs.safetensors"
);

/// `tv_<filter>` names are torchvision references; the rest are Pillow's.
fn filter_by_name(name: &str) -> (Filter, Resampler) {
    if let Some(rest) = name.strip_prefix("tv_") {
        return (filter_by_name(rest).0, Resampler::Torchvision);
    }
    let f = match name {
        "nearest" => Filter::Nearest,
        "bilinear" => Filter::Bilinear,
        "bicubic" => Filter::Bicubic,
        "lanczos" => Filter::Lanczos,
        "box" => Filter::Box,
        "hamming" => Filter::Hamming,
        other => panic!("unknown filter {other}"),
    };
    (f, Resampler::Pillow)
}

fn to_image(st: &SafeTensors<'_>, key: &str) -> RgbImage {
    let t = st.tensor(key).unwrap();
    assert_eq!(t.dtype(), Dtype::U8, "{key}");
    let shape = t.shape();
    assert_eq!(shape.len(), 3, "{key}");
    assert_eq!(shape[2], 3, "{key}");
    RgbImage::from_raw(shape[1] as u32, shape[0] as u32, t.data().to_vec()).unwrap()
}

#[derive(Default)]
struct Stats {
    cases: usize,
    exact_cases: usize,
    max_diff: u8,
    differing_samples: usize,
}

/// Runs every `out/...` case in the file; returns per-filter statistics.
fn check_file(path: &str) -> BTreeMap<String, Stats> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut stats: BTreeMap<String, Stats> = BTreeMap::new();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_owned).collect();
    names.sort();
    for key in names.iter().filter(|k| k.starts_with("out/")) {
        let parts: Vec<&str> = key.split('/').collect();
        let [_, src_name, filter, size] = parts[..] else {
            panic!("bad key {key}");
        };
        let (w, h) = size.split_once('x').unwrap();
        let (w, h): (u32, u32) = (w.parse().unwrap(), h.parse().unwrap());
        let src = to_image(&st, &format!("src/{src_name}"));
        let want = to_image(&st, key);
        let (f, resampler) = filter_by_name(filter);
        let got = resize_with(&src, w, h, f, resampler).unwrap();
        assert_eq!((got.width(), got.height()), (w, h), "{key}");
        let mut max = 0u8;
        let mut n = 0;
        for (a, b) in got.as_raw().iter().zip(want.as_raw()) {
            let d = a.abs_diff(*b);
            max = max.max(d);
            n += usize::from(d != 0);
        }
        if max > 0 {
            eprintln!("{key}: max diff {max}, {n} samples differ");
        }
        let s = stats.entry(filter.to_owned()).or_default();
        s.cases += 1;
        s.exact_cases += usize::from(max == 0);
        s.max_diff = s.max_diff.max(max);
        s.differing_samples += n;
    }
    for (f, s) in &stats {
        eprintln!(
            "{path}: {f}: {} cases, {} bit-exact, max diff {}, {} samples differ",
            s.cases, s.exact_cases, s.max_diff, s.differing_samples
        );
    }
    stats
}

fn assert_matches_pillow(stats: &BTreeMap<String, Stats>) {
    assert!(!stats.is_empty());
    for (f, s) in stats {
        assert!(
            s.max_diff <= 1,
            "{f}: max diff {} > 1 grey level",
            s.max_diff
        );
        assert_eq!(s.exact_cases, s.cases, "{f}: not bit-exact with Pillow");
    }
}

#[test]
fn resize_matches_pillow_bit_exactly_for_all_filters_and_sizes() {
    let stats = check_file(REFS);
    for f in [
        "bicubic", "bilinear", "nearest", "lanczos", "box", "hamming",
    ] {
        assert!(stats.contains_key(f), "reference data lacks {f}");
    }
    assert!(stats["bicubic"].cases >= 25);
    assert!(stats["tv_bicubic"].cases >= 5);
    assert_matches_pillow(&stats);
}

#[test]
fn resize_matches_pillow_on_extended_refs_when_provided() {
    match std::env::var("PALIGEMMA_RESIZE_REFS") {
        Ok(path) => assert_matches_pillow(&check_file(&path)),
        Err(_) => eprintln!("PALIGEMMA_RESIZE_REFS not set; skipping the extended check"),
    }
}
