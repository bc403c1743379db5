//! Parity of `preprocess_bytes` (decode + convert + resize + normalise) with Hugging Face
//! `transformers`' `SiglipImageProcessor`.
//!
//! Reference: `tests/fixtures/reference/pixels.safetensors` at the workspace root (written by
//! the fixture generator with transformers 5.24.0, Pillow 13.0.0, torch 2.15 / torchvision
//! 0.29 on an AVX-512 CPU):
//! * `<stem>_<S>` (S = 32, 48): `pixel_values[0]`, `[3, S, S]` f32, default (torchvision)
//!   backend — `torchvision.transforms.v2.functional.resize(bicubic, antialias=True)`;
//! * `<stem>_<S>_pil`: the same from `SiglipImageProcessorPil` (Pillow `Image.resize`);
//! * `<stem>_224_u8`: the torchvision backend's resized `u8` image at 224 (its pixel values are
//!   exactly `(u8 - 127.5) / 127.5`).
//!
//! Images: `tests/fixtures/images/{photo.jpg, rgba.png, grey.png, wide.webp, tall.png}`.
//!
//! Each backend is compared with the matching [`Resampler`] and must agree within one grey
//! level (`1/127.5 + 1e-6`); in fact every case agrees to within 1e-7 (decoding, compositing
//! and both resamplers are bit-exact, and the PIL backend's f64 normalisation differs from
//! the f32 formula by at most an ulp).
//! The cross comparison (Pillow arithmetic vs the torchvision backend) is printed and bounded
//! by two grey levels: the two `transformers` backends themselves differ by up to 2 levels
//! (`generation_report.json`, `pixel_backend_diff`).

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

use std::collections::HashMap;

use paligemma_image::{PixelValues, PreprocessorConfig, Resampler, preprocess_bytes};
use safetensors::{Dtype, SafeTensors};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");
const STEMS: [(&str, &str); 5] = [
    ("photo", "photo.jpg"),
    ("rgba", "rgba.png"),
    ("grey", "grey.png"),
    ("wide", "wide.webp"),
    ("tall", "tall.png"),
];
const LEVEL: f32 = 1.0 / 127.5;
const TOL: f32 = LEVEL + 1e-6;
const CROSS_TOL: f32 = 2.0 * LEVEL + 1e-6;

fn load_refs(bytes: &[u8]) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let mut out = HashMap::new();
    for (name, t) in st.tensors() {
        let data: Vec<f32> = match t.dtype() {
            Dtype::F32 => t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            // u8 images become pixel values exactly as HF computes them.
            Dtype::U8 => t
                .data()
                .iter()
                .map(|&p| (p as f32 - 127.5) / 127.5)
                .collect(),
            other => panic!("{name}: unexpected dtype {other:?}"),
        };
        out.insert(name, (t.shape().to_vec(), data));
    }
    out
}

fn ours(file: &str, size: u32, resampler: Resampler) -> PixelValues {
    let bytes = std::fs::read(format!("{FIXTURES}/images/{file}")).unwrap();
    let mut cfg = PreprocessorConfig::square(size);
    cfg.resampler = resampler;
    preprocess_bytes(&bytes, &cfg).unwrap()
}

/// Max |a - b| and the number of values differing by more than 1e-6.
fn compare(a: &PixelValues, shape: &[usize], b: &[f32]) -> (f32, usize) {
    assert_eq!(shape, &[3, a.height, a.width]);
    assert_eq!(a.data.len(), b.len());
    let mut max = 0.0f32;
    let mut n = 0;
    for (x, y) in a.data.iter().zip(b) {
        let d = (x - y).abs();
        max = max.max(d);
        n += usize::from(d > 1e-6);
    }
    (max, n)
}

#[test]
fn preprocess_bytes_matches_hf_siglip_processor_both_backends() {
    let path = format!("{FIXTURES}/reference/pixels.safetensors");
    let Ok(bytes) = std::fs::read(&path) else {
        panic!("{path} is missing (written by the fixture generator)");
    };
    let refs = load_refs(&bytes);
    let mut failures = Vec::new();
    for (stem, file) in STEMS {
        for size in [224u32, 32, 48] {
            let pil = ours(file, size, Resampler::Pillow);
            let tv = ours(file, size, Resampler::Torchvision);
            assert_eq!(pil.shape(), [1, 3, size as usize, size as usize]);
            let tv_key = if size == 224 {
                format!("{stem}_224_u8")
            } else {
                format!("{stem}_{size}")
            };
            let mut checks = vec![
                (tv_key.clone(), "torchvision", "torchvision", &tv, TOL),
                (tv_key, "torchvision", "pillow", &pil, CROSS_TOL),
            ];
            if size != 224 {
                checks.push((format!("{stem}_{size}_pil"), "pil", "pillow", &pil, TOL));
            }
            for (key, backend, mine, pv, tol) in checks {
                let (shape, want) = refs.get(&key).unwrap_or_else(|| panic!("missing {key}"));
                let (max, n) = compare(pv, shape, want);
                eprintln!(
                    "{key:>14} (HF {backend:>11} vs ours {mine:>11}): max diff {max:.7} \
                     ({:.2} levels), {n} of {} values differ",
                    max * 127.5,
                    want.len()
                );
                if max > tol {
                    failures.push(format!("{key} vs {mine}: {max}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "over tolerance: {failures:?}");
}
