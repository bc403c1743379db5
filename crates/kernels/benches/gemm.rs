//! bf16 GEMM at the prefill / vision-encoder shapes, in GFLOP/s: our kernels on each available
//! level (weight packed beforehand, and packed inside the call) vs candle 0.11's matmul in bf16
//! and f32. Shapes are m×k×n with `W: [n, k]`: SigLIP's attention projection and MLP at 256
//! rows, and the Gemma-2B MLP (up, down) at a 266-token prefill. Run with
//! `cargo bench -p paligemma-kernels --bench gemm`; timings on a shared machine are noisy.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use half::bf16;
use paligemma_kernels::{GemmIsa, GemmOut, PackedBf16, gemm_bf16_packed, gemm_bf16_with};

const SHAPES: [(usize, usize, usize); 5] = [
    (256, 1152, 1152),
    (256, 1152, 4304),
    (256, 4304, 1152),
    (266, 2048, 16384),
    (266, 16384, 2048),
];

/// GFLOP/s of the best of `reps` timed calls after one warm-up call.
fn gflops(
    (m, k, n): (usize, usize, usize),
    reps: usize,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    f()?;
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let start = Instant::now();
        f()?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(2.0 * (m * k * n) as f64 / best / 1e9)
}

fn main() -> anyhow::Result<()> {
    let threads = candle_core::utils::get_num_threads();
    let dev = Device::Cpu;
    println!(
        "bf16 GEMM C = A·Wᵀ, {threads} threads, GFLOP/s (best of several); ratio = / candle bf16"
    );
    for shape in SHAPES {
        let (m, k, n) = shape;
        let at = Tensor::rand(-1f32, 1f32, (m, k), &dev)?;
        let wt = Tensor::rand(-1f32, 1f32, (n, k), &dev)?;
        let (at16, wt16) = (at.to_dtype(DType::BF16)?, wt.to_dtype(DType::BF16)?);
        let a: Vec<bf16> = at16.flatten_all()?.to_vec1()?;
        let w: Vec<bf16> = wt16.flatten_all()?.to_vec1()?;
        let mut c = vec![bf16::ZERO; m * n];

        let candle_bf16 = gflops(shape, 4, || Ok(at16.matmul(&wt16.t()?).map(|_| ())?))?;
        let candle_f32 = gflops(shape, 4, || Ok(at.matmul(&wt.t()?).map(|_| ())?))?;
        println!("{m}x{k}x{n}");
        println!(
            "  {:<34} {candle_bf16:7.1} GFLOP/s  1.00x",
            "candle matmul bf16"
        );
        let ratio = candle_f32 / candle_bf16;
        println!(
            "  {:<34} {candle_f32:7.1} GFLOP/s  {ratio:.2}x",
            "candle matmul f32"
        );
        for isa in GemmIsa::all().into_iter().filter(|i| i.is_supported()) {
            let reps = if isa == GemmIsa::Portable { 2 } else { 8 };
            let per_call = gflops(shape, reps, || {
                let out = GemmOut::Bf16(&mut c);
                Ok(gemm_bf16_with(isa, &a, &w, None, out, m, n, k, threads)?)
            })?;
            let ratio = per_call / candle_bf16;
            let label = format!("ours {isa:?}, packing W per call");
            println!("  {label:<34} {per_call:7.1} GFLOP/s  {ratio:.2}x");
            let start = Instant::now();
            let packed = PackedBf16::new(isa, &w, n, k, threads)?;
            let pack_ms = start.elapsed().as_secs_f64() * 1e3;
            let prepacked = gflops(shape, reps, || {
                let out = GemmOut::Bf16(&mut c);
                Ok(gemm_bf16_packed(&a, &packed, None, out, m, threads)?)
            })?;
            let ratio = prepacked / candle_bf16;
            let label = format!("ours {isa:?}, W packed once");
            println!(
                "  {label:<34} {prepacked:7.1} GFLOP/s  {ratio:.2}x  (packing: {pack_ms:.1} ms)"
            );
        }
    }
    decode()
}

/// Few-row shapes (decode, short prompts) on a W packed for each level, vs the gemv kernel.
fn decode() -> anyhow::Result<()> {
    let threads = candle_core::utils::get_num_threads();
    let (k, n) = (2048, 16384);
    let w: Vec<bf16> = (0..n * k)
        .map(|i| bf16::from_f32((i % 1000) as f32 * 1e-3 - 0.5))
        .collect();
    let x: Vec<f32> = (0..k).map(|i| (i % 13) as f32 * 0.1).collect();
    let mut y = vec![0f32; n];
    let gemv = gflops((1, k, n), 8, || {
        Ok(paligemma_kernels::gemv_bf16(&w, &x, &mut y, k, threads)?)
    })?;
    println!(
        "1x{k}x{n}: gemv_bf16 {gemv:.1} GFLOP/s ({:.1} GB/s of W)",
        gemv * 1.0
    );
    for isa in GemmIsa::all().into_iter().filter(|i| i.is_supported()) {
        let packed = PackedBf16::new(isa, &w, n, k, threads)?;
        for m in [1, 4, 16] {
            let a: Vec<bf16> = (0..m * k)
                .map(|i| bf16::from_f32((i % 13) as f32 * 0.1))
                .collect();
            let mut c = vec![0f32; m * n];
            let g = gflops((m, k, n), 8, || {
                Ok(gemm_bf16_packed(
                    &a,
                    &packed,
                    None,
                    GemmOut::F32(&mut c),
                    m,
                    threads,
                )?)
            })?;
            println!(
                "  {m}x{k}x{n} ours {isa:?}: {g:.1} GFLOP/s ({:.1} GB/s of W)",
                g / m as f64
            );
        }
    }
    Ok(())
}
