//! Every SIMD gemv path agrees with the portable one, on awkward shapes and thread counts.

use half::bf16;
use paligemma_kernels::{Isa, KernelError, gemv_bf16_with, gemv_f32_with};

fn data(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| {
            let h = i
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed)
                .rotate_left(13);
            (h >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

/// f64 reference of `W · x`.
fn reference(w: &[f32], x: &[f32], cols: usize) -> Vec<f64> {
    w.chunks_exact(cols)
        .map(|row| {
            row.iter()
                .zip(x)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum()
        })
        .collect()
}

fn assert_close(got: &[f32], want: &[f64], cols: usize, what: &str) {
    let tol = 1e-5 * (cols as f64).sqrt().max(1.0) * 4.0;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(*g) - w).abs() <= tol,
            "{what} row {i}: {g} vs {w}"
        );
    }
}

const SHAPES: [(usize, usize); 6] = [(1, 1), (3, 7), (5, 16), (17, 63), (33, 129), (64, 2048)];

#[test]
fn f32_gemv_matches_reference_on_every_isa() {
    for isa in Isa::all().into_iter().filter(|i| i.is_supported()) {
        for (rows, cols) in SHAPES {
            let (w, x) = (data(rows * cols, 1), data(cols, 2));
            let want = reference(&w, &x, cols);
            for threads in [1, 2, 3, 8] {
                let mut y = vec![f32::NAN; rows];
                gemv_f32_with(isa, &w, &x, &mut y, cols, threads).unwrap();
                assert_close(
                    &y,
                    &want,
                    cols,
                    &format!("{isa:?} f32 {rows}x{cols} t{threads}"),
                );
            }
        }
    }
}

#[test]
fn bf16_gemv_matches_widened_reference_on_every_isa() {
    for isa in Isa::all().into_iter().filter(|i| i.is_supported()) {
        for (rows, cols) in SHAPES {
            let wb: Vec<bf16> = data(rows * cols, 3)
                .into_iter()
                .map(bf16::from_f32)
                .collect();
            let w: Vec<f32> = wb.iter().map(|v| v.to_f32()).collect();
            let x = data(cols, 4);
            let want = reference(&w, &x, cols);
            for threads in [1, 2, 5] {
                let mut y = vec![f32::NAN; rows];
                gemv_bf16_with(isa, &wb, &x, &mut y, cols, threads).unwrap();
                assert_close(
                    &y,
                    &want,
                    cols,
                    &format!("{isa:?} bf16 {rows}x{cols} t{threads}"),
                );
            }
        }
    }
}

#[test]
fn simd_paths_agree_with_portable_path() {
    let (rows, cols) = (40, 1000);
    let (w, x) = (data(rows * cols, 5), data(cols, 6));
    let mut portable = vec![0f32; rows];
    gemv_f32_with(Isa::Portable, &w, &x, &mut portable, cols, 1).unwrap();
    for isa in Isa::all().into_iter().filter(|i| i.is_supported()) {
        let mut y = vec![0f32; rows];
        gemv_f32_with(isa, &w, &x, &mut y, cols, 2).unwrap();
        for (a, b) in y.iter().zip(&portable) {
            assert!((a - b).abs() <= 1e-4, "{isa:?}: {a} vs portable {b}");
        }
    }
}

#[test]
fn empty_and_zero_width_shapes_are_handled() {
    let mut y: Vec<f32> = vec![];
    gemv_f32_with(Isa::Portable, &[], &[1.0], &mut y, 1, 2).unwrap();
    let mut y = vec![f32::NAN; 3];
    gemv_f32_with(Isa::detect(), &[], &[], &mut y, 0, 2).unwrap();
    assert_eq!(y, vec![0.0; 3]);
}

#[test]
fn mismatched_lengths_are_rejected() {
    let mut y = vec![0f32; 2];
    let err = gemv_f32_with(Isa::Portable, &[0.0; 5], &[0.0; 3], &mut y, 3, 1).unwrap_err();
    assert_eq!(
        err,
        KernelError::Length {
            what: "w",
            got: 5,
            expected: 6
        }
    );
    let err = gemv_f32_with(Isa::Portable, &[0.0; 6], &[0.0; 2], &mut y, 3, 1).unwrap_err();
    assert_eq!(
        err,
        KernelError::Length {
            what: "x",
            got: 2,
            expected: 3
        }
    );
}
