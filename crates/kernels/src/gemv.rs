//! Shape checks, row splitting over threads and the portable dot products of the gemv kernels.

use crate::gemm_f32::Weight;
use crate::{Isa, KernelError};

/// Validates `w: [y_len, cols]`, `x: [cols]` and that the CPU supports `isa`.
pub(crate) fn check(
    isa: Isa,
    w_len: usize,
    x_len: usize,
    y_len: usize,
    cols: usize,
) -> Result<(), KernelError> {
    if !isa.is_supported() {
        return Err(KernelError::Unsupported(isa));
    }
    if x_len != cols {
        return Err(KernelError::Length {
            what: "x",
            got: x_len,
            expected: cols,
        });
    }
    let expected = y_len.saturating_mul(cols);
    if w_len != expected {
        return Err(KernelError::Length {
            what: "w",
            got: w_len,
            expected,
        });
    }
    Ok(())
}

/// Splits the rows of `w` (and `y`) into `threads` contiguous parts and runs `dot` on each row.
/// Shapes were checked by [`check`].
pub(crate) fn run<T: Sync>(
    w: &[T],
    x: &[f32],
    y: &mut [f32],
    cols: usize,
    threads: usize,
    dot: impl Fn(&[T], &[f32]) -> f32 + Sync,
) {
    if cols == 0 {
        y.fill(0.0);
        return;
    }
    let rows_per = y.len().div_ceil(threads.max(1));
    let work = |w: &[T], y: &mut [f32]| {
        for (out, row) in y.iter_mut().zip(w.chunks_exact(cols)) {
            *out = dot(row, x);
        }
    };
    if rows_per >= y.len() {
        work(w, y);
        return;
    }
    std::thread::scope(|s| {
        let parts = y.chunks_mut(rows_per).zip(w.chunks(rows_per * cols));
        for (y_part, w_part) in parts {
            s.spawn(|| work(w_part, y_part));
        }
    });
}

/// `Σ f32(a[i])·b[i]` for equal-length slices, on the given (supported) instruction set.
pub(crate) fn dot<W: Weight>(isa: Isa, a: &[W], b: &[f32]) -> f32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => crate::x86::dot_avx512(a, b),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => crate::x86::dot_avx2(a, b),
        _ => dot_portable(a, b),
    }
}

/// `Σ f32(a[i])·b[i]` in eight lane-wise partial sums (what the SIMD versions do per lane, so
/// the loop vectorises without reassociating a single sum), then the tail.
pub(crate) fn dot_portable<W: Weight>(a: &[W], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x.widen() * y)
        .sum();
    for (ca, cb) in a8.zip(b8) {
        for ((s, x), y) in acc.iter_mut().zip(ca).zip(cb) {
            *s += x.widen() * y;
        }
    }
    acc.iter().sum::<f32>() + tail
}
