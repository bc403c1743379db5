//! Small-`m` GEMM on an unpacked bf16 weight (a tied embedding used as the output head, which is
//! not packed so as not to hold it twice): `gemm_f32_bf16` on each instruction set vs the bf16
//! GEMM that packs the weight during the call (`gemm_bf16`, what such a weight took before) and
//! candle 0.11's bf16 matmul, for m = 1..64 at k×n = 2048×16384. Reported as GFLOP/s and weight
//! GB/s. Each timed call uses the next of several weight matrices so weights come from memory.
//! Run with `cargo bench -p paligemma-kernels --bench gemm_f32_bf16`; timings on a shared machine
//! are noisy, compare within one run.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use half::bf16;
use paligemma_kernels::{GemmIsa, GemmOut, Isa, gemm_bf16, gemm_f32_bf16_with};

const K: usize = 2048;
const N: usize = 16384;
const MS: [usize; 8] = [1, 2, 4, 8, 16, 24, 32, 64];
/// Weight matrices (64 MiB each), cycled so no call finds W in cache.
const MATS: usize = 3;
const REPS: usize = 5;

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
    println!(
        "C[m,n] = A[m,k]·W[n,k]ᵀ, bf16 W unpacked, k={K} n={N}, {threads} threads, best of {REPS}: \
         GFLOP/s (weight GB/s)"
    );
    let ws: Vec<Vec<bf16>> = (0..MATS)
        .map(|s| {
            (0..N * K)
                .map(|i| bf16::from_f32(((i * 7919 + s) % 1000) as f32 * 1e-3 - 0.5))
                .collect()
        })
        .collect();
    let wt: Vec<Tensor> = ws
        .iter()
        .map(|w| Tensor::from_slice(w, (N, K), &dev))
        .collect::<candle_core::Result<_>>()?;
    for m in MS {
        let a: Vec<f32> = (0..m * K).map(|i| (i % 13) as f32 * 0.1).collect();
        let a16: Vec<bf16> = a.iter().map(|&v| bf16::from_f32(v)).collect();
        let at = Tensor::from_slice(&a, (m, K), &dev)?.to_dtype(DType::BF16)?;
        let mut out = vec![0f32; m * N];
        let flops = 2.0 * (m * N * K) as f64;
        let cell = |secs: f64| {
            let bytes = (N * K * 2) as f64;
            format!("{:6.1} ({:5.1})", flops / secs / 1e9, bytes / secs / 1e9)
        };
        let mut line = format!("  m={m:2}");
        let candle = best(|i| Ok(at.matmul(&wt[i].t()?).map(|_| ())?))?;
        line += &format!("  candle {}", cell(candle));
        for isa in Isa::all().into_iter().filter(|i| i.is_supported()) {
            let t = best(|i| {
                Ok(gemm_f32_bf16_with(
                    isa, &a, &ws[i], None, &mut out, m, N, K, threads,
                )?)
            })?;
            line += &format!("  {isa:?} {} {:4.1}x", cell(t), candle / t);
        }
        if GemmIsa::detect() != GemmIsa::Portable {
            let t = best(|i| {
                let out = GemmOut::F32(&mut out);
                Ok(gemm_bf16(&a16, &ws[i], None, out, m, N, K, threads)?)
            })?;
            line += &format!("  bf16-pack-per-call {}", cell(t));
        }
        println!("{line}");
    }
    Ok(())
}
