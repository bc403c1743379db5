//! Small-`m` GEMM at decode shapes (one activation row per running sequence): `gemm_f32` on each
//! instruction set vs candle 0.11's f32 matmul, and the packed bf16 GEMM, for m = 1..64 at
//! k×n = 2048×16384 (Gemma-2B MLP up) and 16384×2048 (MLP down). Reported as GFLOP/s and weight
//! GB/s (weight bytes / time: the memory-bound ceiling is the machine's bandwidth). Each timed call
//! uses the next of several weight matrices so weights come from memory, as in real decode. Run
//! with `cargo bench -p paligemma-kernels --bench gemm_f32`; timings on a shared machine are
//! noisy, compare within one run.

use std::time::Instant;

use candle_core::{Device, Tensor};
use half::bf16;
use paligemma_kernels::{
    GemmIsa, GemmOut, Isa, PackedBf16, gemm_bf16_packed, gemm_f32_with, gemv_f32_with,
};

const SHAPES: [(usize, usize); 2] = [(2048, 16384), (16384, 2048)];
const MS: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];
/// Weight matrices per shape (128 MiB each in f32), cycled so no call finds W in cache.
const MATS: usize = 3;
const REPS: usize = 6;

/// Seconds of the best of `REPS` calls; call `i` uses matrix `i % MATS`.
fn best(mut f: impl FnMut(usize) -> anyhow::Result<()>) -> anyhow::Result<f64> {
    f(0)?;
    let mut best = f64::INFINITY;
    for rep in 0..REPS {
        let start = Instant::now();
        f((rep + 1) % MATS)?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn main() -> anyhow::Result<()> {
    let threads = candle_core::utils::get_num_threads();
    let dev = Device::Cpu;
    println!("C[m,n] = A[m,k]·W[n,k]ᵀ, {threads} threads, best of {REPS}: GFLOP/s (weight GB/s)");
    for (k, n) in SHAPES {
        let ws: Vec<Vec<f32>> = (0..MATS)
            .map(|s| {
                (0..n * k)
                    .map(|i| ((i * 7919 + s) % 1000) as f32 * 1e-3 - 0.5)
                    .collect()
            })
            .collect();
        let wt: Vec<Tensor> = ws
            .iter()
            .map(|w| Tensor::from_slice(w, (n, k), &dev))
            .collect::<candle_core::Result<_>>()?;
        let packed: Vec<PackedBf16> = match GemmIsa::detect() {
            GemmIsa::Portable => Vec::new(),
            isa => ws
                .iter()
                .map(|w| {
                    let w16: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
                    PackedBf16::new(isa, &w16, n, k, threads)
                })
                .collect::<Result<_, _>>()?,
        };
        println!("k={k} n={n}");
        for m in MS {
            let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.1).collect();
            let a16: Vec<bf16> = a.iter().map(|&v| bf16::from_f32(v)).collect();
            let at = Tensor::from_slice(&a, (m, k), &dev)?;
            let mut out = vec![0f32; m * n];
            let flops = 2.0 * (m * n * k) as f64;
            let cell = |secs: f64, bytes: usize| {
                format!(
                    "{:6.1} ({:5.1})",
                    flops / secs / 1e9,
                    bytes as f64 / secs / 1e9
                )
            };
            let mut line = format!("  m={m:2}");
            let candle = best(|i| Ok(at.matmul(&wt[i].t()?).map(|_| ())?))?;
            line += &format!("  candle {}", cell(candle, n * k * 4));
            for isa in Isa::all().into_iter().filter(|i| i.is_supported()) {
                let t = best(|i| {
                    Ok(gemm_f32_with(
                        isa, &a, &ws[i], None, &mut out, m, n, k, threads,
                    )?)
                })?;
                line += &format!("  {isa:?} {} {:4.1}x", cell(t, n * k * 4), candle / t);
            }
            if m == 1 {
                let t = best(|i| {
                    Ok(gemv_f32_with(
                        Isa::detect(),
                        &ws[i],
                        &a,
                        &mut out,
                        k,
                        threads,
                    )?)
                })?;
                line += &format!("  gemv {}", cell(t, n * k * 4));
            }
            if !packed.is_empty() {
                let t = best(|i| {
                    let out = GemmOut::F32(&mut out);
                    Ok(gemm_bf16_packed(&a16, &packed[i], None, out, m, threads)?)
                })?;
                line += &format!("  bf16-packed {}", cell(t, n * k * 2));
            }
            println!("{line}");
        }
    }
    Ok(())
}
