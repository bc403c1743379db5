//! Stage timings of image preprocessing on a 1 MP photo-like JPEG, next to Pillow / torchvision /
//! transformers on the same bytes when a Python with Pillow is available.
//!
//! ```text
//! CARGO_TARGET_DIR=... cargo bench -p paligemma-image --bench preprocess
//! ```
//!
//! The JPEG is made here, deterministically (1000x1000, quality 90, 4:2:0, standard Huffman
//! tables, like `tools/reference/bench_transformers.py make`: gradients plus Gaussian noise of
//! sigma 12), so the bench needs no files. Each row is the best of `PALIGEMMA_BENCH_REPS`
//! (default 20) runs, single process, so a shared machine's noise mostly cancels in the ratio
//! column (reference time / our time: above 1 means we are faster).
//!
//! The Python side runs when `PALIGEMMA_BENCH_PYTHON` (or `python3`) imports
//! Pillow; torchvision and transformers rows appear when those import too. It also writes its
//! outputs, and the bench prints our maximum difference from each, so a fast-but-wrong change
//! shows up here as well as in the tests. `PALIGEMMA_BENCH_THREADS` sets torch's thread count;
//! an empty `PALIGEMMA_BENCH_PYTHON` skips the Python side (e.g. under `perf record`).

#![allow(clippy::unwrap_used)] // a bench: a panic is a failed run

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use paligemma_image::{
    Filter, PreprocessorConfig, Resampler, RgbImage, decode, preprocess, preprocess_bytes,
    resize_with,
};

const SIDE: u16 = 1000;
const SIZES: [u32; 2] = [224, 448];

/// Deterministic standard normal samples (xorshift64* + Box-Muller).
struct Gauss(u64);

impl Gauss {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
        (v as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn next(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

fn photo_jpeg() -> Vec<u8> {
    let n = usize::from(SIDE);
    let mut g = Gauss(0x9E37_79B9_7F4A_7C15);
    let mut rgb = Vec::with_capacity(n * n * 3);
    for y in 0..n {
        for x in 0..n {
            let (xf, yf) = (x as f64, y as f64);
            for base in [xf / 4.0, yf / 4.0, (xf + yf) / 8.0] {
                rgb.push((base + 12.0 * g.next()).clamp(0.0, 255.0) as u8);
            }
        }
    }
    let mut out = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut out, 90);
    enc.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_2_0);
    enc.encode(&rgb, SIDE, SIDE, jpeg_encoder::ColorType::Rgb)
        .unwrap();
    out
}

fn best_ms(reps: usize, f: &mut dyn FnMut()) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64() * 1e3);
    }
    best
}

/// The Python side: prints `key ms` lines and writes reference outputs into `dir`.
const PY: &str = r##"
import io, os, sys, time
from PIL import Image
import numpy as np
data = open(sys.argv[1], "rb").read()
out, reps = sys.argv[2], int(sys.argv[3])
def best(fn):
    b = float("inf")
    for _ in range(reps):
        t = time.perf_counter(); fn(); b = min(b, time.perf_counter() - t)
    return b * 1e3
def dec():
    return Image.open(io.BytesIO(data)).convert("RGB")
img = dec()
print("pil_decode", best(dec))
open(os.path.join(out, "decode.raw"), "wb").write(img.tobytes())
for s in (224, 448):
    r = img.resize((s, s), Image.BICUBIC)
    print(f"pil_resize_{s}", best(lambda: img.resize((s, s), Image.BICUBIC)))
    open(os.path.join(out, f"pil_{s}.raw"), "wb").write(r.tobytes())
try:
    import torch
    import torchvision.transforms.v2.functional as F
    from torchvision.transforms import InterpolationMode
    if os.environ.get("PALIGEMMA_BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["PALIGEMMA_BENCH_THREADS"]))
    print("torch_threads", torch.get_num_threads())
    t = torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()
    for s in (224, 448):
        f = lambda: F.resize(t, [s, s], interpolation=InterpolationMode.BICUBIC, antialias=True)
        r = f()
        print(f"tv_resize_{s}", best(f))
        open(os.path.join(out, f"tv_{s}.raw"), "wb").write(r.permute(1, 2, 0).contiguous().numpy().tobytes())
except ImportError as e:
    print("# torchvision unavailable:", e, file=sys.stderr)
try:
    from transformers import SiglipImageProcessor
    for s in (224, 448):
        p = SiglipImageProcessor(size={"height": s, "width": s})
        f = lambda: p(images=dec(), return_tensors="pt")["pixel_values"]
        pv = f()
        print(f"hf_{s}", best(f))
        open(os.path.join(out, f"hf_{s}.raw"), "wb").write(pv.numpy().astype("<f4").tobytes())
except ImportError as e:
    print("# transformers unavailable:", e, file=sys.stderr)
"##;

fn python() -> Option<PathBuf> {
    if std::env::var_os("PALIGEMMA_BENCH_PYTHON").is_some_and(|p| p.is_empty()) {
        return None; // explicitly off, e.g. under a profiler
    }
    let candidates = std::env::var_os("PALIGEMMA_BENCH_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from("python3")]);
    for py in candidates {
        let ok = Command::new(&py)
            .args(["-c", "import PIL, numpy"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(py);
        }
    }
    None
}

/// Runs the Python side; `(key, value)` pairs, or why not.
fn reference(jpeg: &[u8], dir: &Path, reps: usize) -> Result<Vec<(String, f64)>, String> {
    let py = python().ok_or(
        "no Python with Pillow + numpy (set PALIGEMMA_BENCH_PYTHON); reference rows skipped",
    )?;
    let file = dir.join("bench.jpg");
    std::fs::write(&file, jpeg).map_err(|e| e.to_string())?;
    let out = Command::new(&py)
        .arg("-c")
        .arg(PY)
        .arg(&file)
        .arg(dir)
        .arg(reps.to_string())
        .output()
        .map_err(|e| format!("{}: {e}", py.display()))?;
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        return Err(format!("{} failed: {}", py.display(), out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect())
}

fn max_diff_u8(ours: &RgbImage, file: &Path) -> Option<u8> {
    let want = std::fs::read(file).ok()?;
    (want.len() == ours.as_raw().len())
        .then(|| {
            ours.as_raw()
                .iter()
                .zip(&want)
                .map(|(a, b)| a.abs_diff(*b))
                .max()
        })
        .flatten()
}

fn max_diff_f32(ours: &[f32], file: &Path) -> Option<f32> {
    let want = std::fs::read(file).ok()?;
    (want.len() == ours.len() * 4).then(|| {
        ours.iter()
            .zip(want.chunks_exact(4))
            .map(|(a, b)| (a - f32::from_le_bytes([b[0], b[1], b[2], b[3]])).abs())
            .fold(0.0, f32::max)
    })
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a listing; nothing to list
    }
    let reps: usize = std::env::var("PALIGEMMA_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let jpeg = photo_jpeg();
    let img = decode(&jpeg).unwrap();
    println!(
        "1 MP JPEG: {}x{}, {} bytes (q90, 4:2:0); best of {reps} runs",
        img.width(),
        img.height(),
        jpeg.len()
    );

    let dir = std::env::temp_dir().join(format!("paligemma-image-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let refs = reference(&jpeg, &dir, reps).unwrap_or_else(|why| {
        println!("reference: {why}");
        Vec::new()
    });
    let reference_ms = |k: &str| refs.iter().find(|(key, _)| key == k).map(|(_, v)| *v);

    // (stage, our ms, reference name, reference key, exactness note)
    let mut rows: Vec<(String, f64, &str, String, String)> = Vec::new();
    let exact = |d: Option<String>| d.unwrap_or_else(|| "-".into());

    // `PALIGEMMA_BENCH_ONLY=<substring>` times only the matching stages, e.g. for `perf stat`
    // (whose per-task cycle counts, unlike wall time, ignore other load on a shared machine).
    let only = std::env::var("PALIGEMMA_BENCH_ONLY").ok();
    let wanted = |stage: &str| only.as_ref().is_none_or(|o| stage.contains(o.as_str()));
    let timed = |stage: &str, reps: usize, f: &mut dyn FnMut()| {
        if wanted(stage) {
            best_ms(reps, f)
        } else {
            f64::NAN
        }
    };

    let ms = timed("jpeg decode", reps, &mut || {
        std::hint::black_box(decode(&jpeg).unwrap());
    });
    let d = max_diff_u8(&img, &dir.join("decode.raw")).map(|d| format!("max|Δ| {d}"));
    rows.push((
        "jpeg decode".into(),
        ms,
        "Pillow open+convert",
        "pil_decode".into(),
        exact(d),
    ));

    for s in SIZES {
        for (resampler, name, key, file) in [
            (Resampler::Pillow, "Pillow resize", "pil_resize", "pil"),
            (
                Resampler::Torchvision,
                "torchvision resize",
                "tv_resize",
                "tv",
            ),
        ] {
            let run = || resize_with(&img, s, s, Filter::Bicubic, resampler).unwrap();
            let out = run();
            let stage = format!("resize {s} bicubic ({resampler:?})");
            let ms = timed(&stage, reps, &mut || {
                std::hint::black_box(run());
            });
            let d = max_diff_u8(&out, &dir.join(format!("{file}_{s}.raw")));
            rows.push((
                stage,
                ms,
                name,
                format!("{key}_{s}"),
                exact(d.map(|d| format!("max|Δ| {d}"))),
            ));
        }
    }

    let small = resize_with(&img, 224, 224, Filter::Bicubic, Resampler::Torchvision).unwrap();
    let cfg = PreprocessorConfig::square(224);
    let ms = timed("normalise 224", reps.max(100), &mut || {
        std::hint::black_box(preprocess(&small, &cfg).unwrap());
    });
    rows.push(("normalise 224".into(), ms, "", String::new(), "-".into()));

    for s in SIZES {
        let cfg = PreprocessorConfig::square(s);
        let run = || preprocess_bytes(&jpeg, &cfg).unwrap();
        let pv = run();
        let stage = format!("preprocess_bytes {s} ({:?})", cfg.resampler);
        let ms = timed(&stage, reps, &mut || {
            std::hint::black_box(run());
        });
        let d = max_diff_f32(&pv.data, &dir.join(format!("hf_{s}.raw")));
        rows.push((
            stage,
            ms,
            "HF SiglipImageProcessor",
            format!("hf_{s}"),
            exact(d.map(|d| format!("max|Δ| {d:.2e}"))),
        ));
    }
    let _ = std::fs::remove_dir_all(&dir);

    if let Some(t) = reference_ms("torch_threads") {
        println!("torch threads: {t}");
    }
    println!(
        "{:<34} {:>9}  {:<24} {:>9} {:>8}  vs reference output",
        "stage", "ours ms", "reference", "ref ms", "ref/ours"
    );
    for (stage, ms, name, key, note) in rows {
        let (r, ratio) = match reference_ms(&key) {
            Some(r) => (format!("{r:.3}"), format!("{:.2}x", r / ms)),
            None => ("-".into(), "-".into()),
        };
        println!("{stage:<34} {ms:>9.3}  {name:<24} {r:>9} {ratio:>8}  {note}");
    }
}
