//! The small-`m` GEMM with bf16 weights on every instruction set agrees with an f64 reference of
//! the widened weights, with the portable path, and with the f32 kernel given the same weights
//! widened beforehand, on odd shapes (tiles with remainders, `k` tails) and thread counts.

use half::bf16;
use paligemma_kernels::{Isa, KernelError, gemm_f32_bf16_with, gemm_f32_with};

fn data(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| {
            let h = i
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed.wrapping_mul(0x9e37_79b9))
                .rotate_left(13);
            (h >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

fn to_bf16(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f32(x)).collect()
}

/// f64 `A · Wᵀ + bias` of the bf16 weight's values.
fn reference(a: &[f32], w: &[bf16], bias: &[f32], k: usize) -> Vec<f64> {
    let mut out = Vec::new();
    for x in a.chunks_exact(k.max(1)).take(a.len() / k.max(1)) {
        for (row, b) in w.chunks_exact(k.max(1)).zip(bias) {
            let dot: f64 = row
                .iter()
                .zip(x)
                .map(|(p, q)| f64::from(p.to_f32()) * f64::from(*q))
                .sum();
            out.push(dot + f64::from(*b));
        }
    }
    out
}

const MS: [usize; 6] = [1, 2, 3, 7, 16, 33];
const KS: [usize; 4] = [1, 15, 64, 1152];
const NS: [usize; 3] = [1, 17, 300];

#[test]
fn matches_f64_reference_portable_and_the_f32_kernel_on_every_isa() {
    for (m, k, n) in MS
        .into_iter()
        .flat_map(|m| KS.into_iter().flat_map(move |k| NS.map(|n| (m, k, n))))
    {
        let (a, w, bias) = (data(m * k, 1), to_bf16(&data(n * k, 2)), data(n, 3));
        let wide: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
        let want = reference(&a, &w, &bias, k);
        // f32 sums of k products of values in [-1, 1]: error grows at most ~k·eps.
        let tol = 4.0 * f64::from(f32::EPSILON) * (k as f64) + 1e-6;
        let mut portable = vec![f32::NAN; m * n];
        gemm_f32_bf16_with(
            Isa::Portable,
            &a,
            &w,
            Some(&bias),
            &mut portable,
            m,
            n,
            k,
            1,
        )
        .unwrap();
        for isa in Isa::all().into_iter().filter(|i| i.is_supported()) {
            let mut f32_kernel = vec![f32::NAN; m * n];
            gemm_f32_with(isa, &a, &wide, Some(&bias), &mut f32_kernel, m, n, k, 1).unwrap();
            for threads in [1, 2, 5] {
                let mut out = vec![f32::NAN; m * n];
                gemm_f32_bf16_with(isa, &a, &w, Some(&bias), &mut out, m, n, k, threads).unwrap();
                for (i, (g, r)) in out.iter().zip(&want).enumerate() {
                    let what = format!("{isa:?} m{m} k{k} n{n} t{threads} [{i}]");
                    assert!((f64::from(*g) - r).abs() <= tol, "{what}: {g} vs {r}");
                    let p = portable[i];
                    assert!(
                        (g - p).abs() <= (tol * 2.0) as f32,
                        "{what}: {g} vs portable {p}"
                    );
                    // Widening is exact and the additions run in the same order: bit-identical.
                    assert_eq!(
                        g.to_bits(),
                        f32_kernel[i].to_bits(),
                        "{what}: vs f32 kernel"
                    );
                }
            }
        }
    }
}

#[test]
fn large_problems_split_over_threads_agree() {
    let (m, k, n) = (5, 1024, 1003);
    let (a, w) = (data(m * k, 4), to_bf16(&data(n * k, 5)));
    let want = reference(&a, &w, &vec![0.0; n], k);
    for isa in Isa::all().into_iter().filter(|i| i.is_supported()) {
        for threads in [1, 2, 3, 8] {
            let mut out = vec![f32::NAN; m * n];
            gemm_f32_bf16_with(isa, &a, &w, None, &mut out, m, n, k, threads).unwrap();
            for (g, r) in out.iter().zip(&want) {
                assert!((f64::from(*g) - r).abs() <= 1e-3, "{isa:?} t{threads}");
            }
        }
    }
}

#[test]
fn empty_k_gives_the_bias_and_bad_lengths_are_rejected() {
    let isa = Isa::detect();
    let mut out = vec![f32::NAN; 6];
    gemm_f32_bf16_with(isa, &[], &[], Some(&[1.0, 2.0, 3.0]), &mut out, 2, 3, 0, 2).unwrap();
    assert_eq!(out, [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
    let w = [bf16::ZERO; 6];
    let err = gemm_f32_bf16_with(isa, &[0.0; 4], &w[..5], None, &mut out, 2, 3, 2, 1);
    assert_eq!(
        err,
        Err(KernelError::Length {
            what: "w",
            got: 5,
            expected: 6
        })
    );
    let err = gemm_f32_bf16_with(isa, &[0.0; 4], &w, None, &mut out[..5], 2, 3, 2, 1);
    assert!(matches!(err, Err(KernelError::Length { what: "out", .. })));
}
