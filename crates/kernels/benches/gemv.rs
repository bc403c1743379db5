//! Decode-shape gemv (1×2048 · 2048×16384, the Gemma-2B MLP) in weight GB/s: our kernels on each
//! instruction set vs candle 0.11's matmul, f32 and bf16. Each timed call uses the next of
//! several distinct weight matrices (1 GiB in all per dtype), so weights come from memory and
//! not from a large last-level cache, as in real decode. Run with
//! `cargo bench -p paligemma-kernels`; timings on a shared machine are noisy.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use half::bf16;
use paligemma_kernels::{Isa, gemv_bf16_with, gemv_f32_with};

const ROWS: usize = 16384;
const COLS: usize = 2048;
/// Matrices per dtype: 1 GiB of f32 weights, twice the 480 MiB L3 of the development machine.
const MATS: usize = 8;
const REPS: usize = 24;

/// Weight GB/s of the best of `REPS` passes; pass `i` uses matrix `i % MATS`.
fn gbs(bytes: usize, mut f: impl FnMut(usize) -> anyhow::Result<()>) -> anyhow::Result<f64> {
    for i in 0..MATS {
        f(i)?;
    }
    let mut best = f64::INFINITY;
    for rep in 0..REPS {
        let start = Instant::now();
        f(rep % MATS)?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(bytes as f64 / best / 1e9)
}

fn main() -> anyhow::Result<()> {
    let threads = candle_core::utils::get_num_threads();
    let ws: Vec<Vec<f32>> = (0..MATS)
        .map(|m| {
            (0..ROWS * COLS)
                .map(|i| ((i * 7919 + m) % 1000) as f32 * 1e-3 - 0.5)
                .collect()
        })
        .collect();
    let wbs: Vec<Vec<bf16>> = ws
        .iter()
        .map(|w| w.iter().map(|&v| bf16::from_f32(v)).collect())
        .collect();
    let x: Vec<f32> = (0..COLS).map(|i| (i % 13) as f32 * 0.1).collect();
    let mut y = vec![0f32; ROWS];
    println!(
        "gemv 1x{COLS} . {COLS}x{ROWS} over {MATS} matrices, {threads} threads, weight GB/s (best of {REPS})"
    );
    for isa in Isa::all().into_iter().filter(|i| i.is_supported()) {
        let f = gbs(ROWS * COLS * 4, |m| {
            Ok(gemv_f32_with(isa, &ws[m], &x, &mut y, COLS, threads)?)
        })?;
        let b = gbs(ROWS * COLS * 2, |m| {
            Ok(gemv_bf16_with(isa, &wbs[m], &x, &mut y, COLS, threads)?)
        })?;
        println!("ours {isa:?}: f32 {f:6.1} GB/s | bf16 {b:6.1} GB/s");
    }
    drop(wbs);
    let dev = Device::Cpu;
    let wt: Vec<Tensor> = ws
        .into_iter()
        .map(|w| Tensor::from_vec(w, (ROWS, COLS), &dev))
        .collect::<candle_core::Result<_>>()?;
    let xt = Tensor::from_vec(x, (1, COLS), &dev)?;
    let f = gbs(ROWS * COLS * 4, |m| {
        Ok(xt.matmul(&wt[m].t()?).map(|_| ())?)
    })?;
    let wt16: Vec<Tensor> = wt
        .iter()
        .map(|w| w.to_dtype(DType::BF16))
        .collect::<candle_core::Result<_>>()?;
    drop(wt);
    let xt16 = xt.to_dtype(DType::BF16)?;
    let b = gbs(ROWS * COLS * 2, |m| {
        Ok(xt16.matmul(&wt16[m].t()?).map(|_| ())?)
    })?;
    println!("candle matmul: f32 {f:6.1} GB/s | bf16 {b:6.1} GB/s");
    drop(wt16);
    gemm_gflops(&dev)
}

/// candle's f32 GEMM at the SigLIP MLP shape (256×1152 · 1152×4304), for the gemm-crate ISA.
fn gemm_gflops(dev: &Device) -> anyhow::Result<()> {
    let (m, k, n) = (256, 1152, 4304);
    let a = Tensor::rand(-1f32, 1f32, (m, k), dev)?;
    let w = Tensor::rand(-1f32, 1f32, (n, k), dev)?;
    let mut best = f64::INFINITY;
    for _ in 0..6 {
        let start = Instant::now();
        a.matmul(&w.t()?)?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    let gflops = 2.0 * (m * k * n) as f64 / best / 1e9;
    println!("candle f32 GEMM {m}x{k}x{n}: {gflops:.0} GFLOP/s");
    Ok(())
}
