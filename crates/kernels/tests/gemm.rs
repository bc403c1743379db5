//! Every bf16 GEMM level agrees with an f64 reference and with the portable level, on shapes
//! that are not multiples of the tile sizes, with and without bias, f32 and bf16 output.

use half::bf16;
use paligemma_kernels::{
    GemmIsa, GemmOut, KernelError, PackedBf16, gemm_bf16_packed, gemm_bf16_with,
};

fn data(n: usize, seed: u32) -> Vec<bf16> {
    (0..n as u32)
        .map(|i| {
            let h = i
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed.wrapping_mul(40_503))
                .rotate_left(13);
            bf16::from_f32((h >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0)
        })
        .collect()
}

/// f64 reference of `A · Wᵀ + bias`, and the sum of |products| per output (the scale of the
/// f32 rounding error, whatever the summation order).
fn reference(
    a: &[bf16],
    w: &[bf16],
    bias: Option<&[f32]>,
    (m, n, k): (usize, usize, usize),
) -> (Vec<f64>, Vec<f64>) {
    let mut want = vec![0f64; m * n];
    let mut scale = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let (mut s, mut a_s) = (bias.map_or(0.0, |b| f64::from(b[j])), 0.0);
            for t in 0..k {
                let p = f64::from(a[i * k + t].to_f32()) * f64::from(w[j * k + t].to_f32());
                s += p;
                a_s += p.abs();
            }
            want[i * n + j] = s;
            scale[i * n + j] = a_s + bias.map_or(0.0, |b| f64::from(b[j].abs()));
        }
    }
    (want, scale)
}

fn levels() -> Vec<GemmIsa> {
    GemmIsa::all()
        .into_iter()
        .filter(|i| i.is_supported())
        .collect()
}

const MS: [usize; 5] = [1, 3, 17, 64, 257];
const KS: [usize; 4] = [1, 31, 64, 1152];
const NS: [usize; 4] = [1, 15, 33, 300];

#[test]
fn every_level_matches_the_reference_on_odd_shapes() {
    println!("levels: {:?}", levels());
    for isa in levels() {
        for &m in &MS {
            for &k in &KS {
                for &n in &NS {
                    // The biggest shapes only at a few (m, n) to keep the test quick.
                    if k == 1152 && m * n > 64 * 33 && !(m == 257 && n == 300) {
                        continue;
                    }
                    let (a, w) = (data(m * k, 1), data(n * k, 2));
                    let bias: Vec<f32> = data(n, 3).iter().map(|v| v.to_f32()).collect();
                    let bias = (n % 2 == 1).then_some(&bias[..]);
                    let (want, scale) = reference(&a, &w, bias, (m, n, k));
                    let threads = 1 + (m + n + k) % 3;
                    let mut c = vec![f32::NAN; m * n];
                    let out = GemmOut::F32(&mut c);
                    gemm_bf16_with(isa, &a, &w, bias, out, m, n, k, threads).unwrap();
                    for (idx, (&g, (&r, &s))) in c.iter().zip(want.iter().zip(&scale)).enumerate() {
                        // f32 accumulation in any order: error ≤ ~k·eps·Σ|products|.
                        let tol = (k as f64 + 2.0) * f64::from(f32::EPSILON) * s + 1e-30;
                        assert!(
                            (f64::from(g) - r).abs() <= tol,
                            "{isa:?} m{m} n{n} k{k} t{threads} at ({}, {}): {g} vs {r}",
                            idx / n,
                            idx % n
                        );
                    }
                }
            }
        }
    }
}

/// Packed A beyond the AMX kernel's L2 budget (512 KiB), or more than 256 rows, is multiplied
/// in `k` chunks with partial sums carried between them; odd sizes so the last row block and column unit are
/// partial, and a thread count that leaves one thread fewer columns.
#[test]
fn long_k_in_chunks_matches_the_reference() {
    // The last two: 19 row blocks in one group, 27 in two groups (14 + 13).
    for (m, n, k, threads) in [
        (100, 70, 3000, 2),
        (40, 33, 7000, 3),
        (300, 40, 1100, 2),
        (420, 40, 300, 2),
    ] {
        let (a, w) = (data(m * k, 6), data(n * k, 7));
        let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.5 - 7.0).collect();
        let (want, scale) = reference(&a, &w, Some(&bias), (m, n, k));
        for isa in levels() {
            let mut c = vec![f32::NAN; m * n];
            let out = GemmOut::F32(&mut c);
            gemm_bf16_with(isa, &a, &w, Some(&bias), out, m, n, k, threads).unwrap();
            for (idx, (&g, (&r, &s))) in c.iter().zip(want.iter().zip(&scale)).enumerate() {
                let tol = (k as f64 + 2.0) * f64::from(f32::EPSILON) * s + 1e-30;
                assert!(
                    (f64::from(g) - r).abs() <= tol,
                    "{isa:?} m{m} n{n} k{k} at ({}, {}): {g} vs {r}",
                    idx / n,
                    idx % n
                );
            }
        }
    }
}

#[test]
fn levels_agree_with_portable_and_bf16_output_is_rounded_once() {
    let (m, n, k) = (70, 100, 200);
    let (a, w) = (data(m * k, 4), data(n * k, 5));
    let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.25 - 3.0).collect();
    let mut portable = vec![0f32; m * n];
    let out = GemmOut::F32(&mut portable);
    gemm_bf16_with(GemmIsa::Portable, &a, &w, Some(&bias), out, m, n, k, 2).unwrap();
    for isa in levels() {
        let mut c = vec![0f32; m * n];
        gemm_bf16_with(isa, &a, &w, Some(&bias), GemmOut::F32(&mut c), m, n, k, 3).unwrap();
        for (x, y) in c.iter().zip(&portable) {
            assert!(
                (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                "{isa:?}: {x} vs {y}"
            );
        }
        let mut h = vec![bf16::ZERO; m * n];
        gemm_bf16_with(isa, &a, &w, Some(&bias), GemmOut::Bf16(&mut h), m, n, k, 2).unwrap();
        for (x, y) in h.iter().zip(&c) {
            assert_eq!(
                *x,
                bf16::from_f32(*y),
                "{isa:?}: bf16 output is f32 result rounded"
            );
        }
    }
}

#[test]
fn packed_weights_give_the_same_result_as_packing_per_call() {
    for (m, n, k) in [(33, 47, 96), (2, 5, 31), (80, 40, 64)] {
        let (a, w) = (data(m * k, 6), data(n * k, 7));
        for isa in levels() {
            let packed = PackedBf16::new(isa, &w, n, k, 3).unwrap();
            assert_eq!((packed.n(), packed.k(), packed.isa()), (n, k, isa));
            assert_eq!(packed.unpack(), w, "{isa:?} unpack");
            let mut c1 = vec![0f32; m * n];
            let mut c2 = vec![0f32; m * n];
            gemm_bf16_with(isa, &a, &w, None, GemmOut::F32(&mut c1), m, n, k, 2).unwrap();
            gemm_bf16_packed(&a, &packed, None, GemmOut::F32(&mut c2), m, 2).unwrap();
            // Same kernel, or (AMX below 64 rows) the AVX-512 BF16 one: summation order only.
            for (x, y) in c1.iter().zip(&c2) {
                assert!(
                    (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                    "{isa:?}: {x} vs {y}"
                );
            }
        }
    }
}

#[test]
fn degenerate_shapes_and_bad_lengths() {
    for isa in levels() {
        // k = 0: the output is the bias.
        let mut c = vec![f32::NAN; 6];
        let bias = [1.0, 2.0, 3.0];
        gemm_bf16_with(isa, &[], &[], Some(&bias), GemmOut::F32(&mut c), 2, 3, 0, 2).unwrap();
        assert_eq!(c, [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
        // m = 0 or n = 0: nothing to write.
        gemm_bf16_with(
            isa,
            &[],
            &data(12, 1),
            None,
            GemmOut::F32(&mut []),
            0,
            3,
            4,
            2,
        )
        .unwrap();
        gemm_bf16_with(
            isa,
            &data(8, 1),
            &[],
            None,
            GemmOut::F32(&mut []),
            2,
            0,
            4,
            2,
        )
        .unwrap();
        let mut c = vec![0f32; 4];
        let err = gemm_bf16_with(
            isa,
            &data(5, 1),
            &data(6, 1),
            None,
            GemmOut::F32(&mut c),
            2,
            2,
            3,
            1,
        )
        .unwrap_err();
        assert_eq!(
            err,
            KernelError::Length {
                what: "a",
                got: 5,
                expected: 6
            }
        );
        let err = gemm_bf16_with(
            isa,
            &data(6, 1),
            &data(6, 1),
            Some(&[0.0]),
            GemmOut::F32(&mut c),
            2,
            2,
            3,
            1,
        )
        .unwrap_err();
        assert_eq!(
            err,
            KernelError::Length {
                what: "bias",
                got: 1,
                expected: 2
            }
        );
        let err = gemm_bf16_with(
            isa,
            &data(6, 1),
            &data(6, 1),
            None,
            GemmOut::F32(&mut c[..3]),
            2,
            2,
            3,
            1,
        )
        .unwrap_err();
        assert!(
            matches!(err, KernelError::Length { what: "out", .. }),
            "{err:?}"
        );
    }
}
