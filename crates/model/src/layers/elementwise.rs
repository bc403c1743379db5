//! Same-shape element-wise sums and products (residual adds, Gemma's `gelu(gate) * up`) on the
//! CPU, vectorised and split over the worker threads.
//!
//! candle 0.11's bf16 `add` converts eight elements at a time through non-inlined
//! `target_feature` helpers and hands chunks to its barrier pool: the two residual adds of a
//! SigLIP layer took about a third of a bf16 vision forward (perf, batch 8). Each element here is
//! widened to f32, combined and rounded once to nearest-even — the same value candle and PyTorch
//! give for bf16 (`a + b` in f32, then one rounding), and plain f32 arithmetic for f32.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use half::bf16;

use super::activation::gelu_one;
use super::cast::{narrow, widen};
use super::simd::simd_dispatch;

/// Inputs below this many elements stay on the calling thread (spawning costs ~20 µs).
const PARALLEL_MIN: usize = 1 << 16;

#[derive(Debug, Clone, Copy)]
enum Op {
    Add,
    Mul,
    /// `gelu_tanh(a)` rounded to the dtype, times `b`, rounded again (transformers' two ops).
    GeluMul,
}

impl Op {
    #[inline(always)]
    fn f32(self, a: f32, b: f32) -> f32 {
        match self {
            Op::Add => a + b,
            Op::Mul | Op::GeluMul => a * b,
        }
    }
}

/// `a + b` for tensors of one shape and dtype.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, Op::Add)
}

/// `a * b` for tensors of one shape and dtype.
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, Op::Mul)
}

/// `gelu_tanh(a) * b`, each step rounded to the dtype as two separate ops would be.
pub fn gelu_mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, Op::GeluMul)
}

fn binary(a: &Tensor, b: &Tensor, op: Op) -> Result<Tensor> {
    let fast = a.device().is_cpu()
        && a.dims() == b.dims()
        && a.dtype() == b.dtype()
        && matches!(a.dtype(), DType::F32 | DType::BF16);
    if !fast {
        return match op {
            Op::Add => a + b,
            Op::Mul => a * b,
            Op::GeluMul => super::gelu_tanh(a)? * b,
        };
    }
    a.contiguous()?
        .apply_op2_no_bwd(&b.contiguous()?, &Binary(op))
}

struct Binary(Op);

impl CustomOp2 for Binary {
    fn name(&self) -> &'static str {
        "elementwise"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (Some((a0, a1)), Some((b0, b1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("elementwise: inputs must be contiguous");
        };
        let op = self.0;
        let out = match (s1, s2) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => {
                let (a, b) = (&a[a0..a1], &b[b0..b1]);
                let mut y = vec![0f32; a.len()];
                par_zip(a, b, &mut y, 64, |_, a, b, y| f32_chunk(op, a, b, y));
                CpuStorage::F32(y)
            }
            (CpuStorage::BF16(a), CpuStorage::BF16(b)) => {
                let (a, b) = (&a[a0..a1], &b[b0..b1]);
                let mut y = vec![bf16::ZERO; a.len()];
                par_zip(a, b, &mut y, 64, |_, a, b, y| bf16_chunk(op, a, b, y));
                CpuStorage::BF16(y)
            }
            _ => candle_core::bail!("elementwise: inputs must both be f32 or both bf16"),
        };
        Ok((out, l1.shape().clone()))
    }
}

/// Runs `f` over matching pieces of `x` and `y`, on all worker threads for large inputs.
pub(crate) fn par_map<T: Sync, U: Send>(x: &[T], y: &mut [U], f: impl Fn(&[T], &mut [U]) + Sync) {
    par_zip(x, x, y, 64, |_, x, _, y| f(x, y));
}

/// Like [`par_map`] with pieces of whole `unit`-element rows; `f` also gets the index of its
/// piece's first row.
pub(crate) fn par_rows<T: Sync, U: Send>(
    x: &[T],
    y: &mut [U],
    unit: usize,
    f: impl Fn(usize, &[T], &mut [U]) + Sync,
) {
    let unit = unit.max(1);
    par_zip(x, x, y, unit, |first, x, _, y| f(first / unit, x, y));
}

/// Runs `f` over matching pieces of `a`, `b`, `y` (each a multiple of `unit` elements long, so
/// rows and SIMD loops stay whole), on all worker threads for large inputs. `f` gets the offset
/// of its piece.
fn par_zip<T: Sync, U: Send>(
    a: &[T],
    b: &[T],
    y: &mut [U],
    unit: usize,
    f: impl Fn(usize, &[T], &[T], &mut [U]) + Sync,
) {
    let threads = candle_core::utils::get_num_threads().max(1);
    if threads == 1 || y.len() < PARALLEL_MIN {
        return f(0, a, b, y);
    }
    let piece = y.len().div_ceil(threads).next_multiple_of(unit);
    std::thread::scope(|s| {
        let f = &f;
        for (i, ((a, b), y)) in a
            .chunks(piece)
            .zip(b.chunks(piece))
            .zip(y.chunks_mut(piece))
            .enumerate()
        {
            s.spawn(move || f(i * piece, a, b, y));
        }
    });
}

simd_dispatch!(fn f32_chunk(op: Op, a: &[f32], b: &[f32], y: &mut [f32]) = f32_chunk_body;);
simd_dispatch!(fn bf16_chunk(op: Op, a: &[bf16], b: &[bf16], y: &mut [bf16]) = bf16_chunk_body;);

#[inline(always)]
fn f32_chunk_body(op: Op, a: &[f32], b: &[f32], y: &mut [f32]) {
    for ((a, b), y) in a.iter().zip(b).zip(y) {
        let a = if matches!(op, Op::GeluMul) {
            gelu_one(*a)
        } else {
            *a
        };
        *y = op.f32(a, *b);
    }
}

#[inline(always)]
fn bf16_chunk_body(op: Op, a: &[bf16], b: &[bf16], y: &mut [bf16]) {
    // Fixed-width chunks so the compiler keeps the whole body in vector registers.
    const LANES: usize = 16;
    let one = |a: bf16, b: bf16| -> bf16 {
        let a = match op {
            Op::GeluMul => widen(narrow(gelu_one(widen(a)))),
            _ => widen(a),
        };
        narrow(op.f32(a, widen(b)))
    };
    let mut ac = a.chunks_exact(LANES);
    let mut bc = b.chunks_exact(LANES);
    let mut yc = y.chunks_exact_mut(LANES);
    for ((a, b), y) in (&mut ac).zip(&mut bc).zip(&mut yc) {
        for i in 0..LANES {
            y[i] = one(a[i], b[i]);
        }
    }
    for ((a, b), y) in ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .zip(yc.into_remainder())
    {
        *y = one(*a, *b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn bits(t: &Tensor) -> Result<Vec<u32>> {
        Ok(match t.dtype() {
            DType::BF16 => t
                .flatten_all()?
                .to_vec1::<bf16>()?
                .iter()
                .map(|v| u32::from(v.to_bits()))
                .collect(),
            _ => t
                .flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .map(|v| v.to_bits())
                .collect(),
        })
    }

    #[test]
    fn identical_to_candle_in_both_dtypes_above_and_below_the_thread_split() -> Result<()> {
        let dev = Device::Cpu;
        for n in [37, PARALLEL_MIN * 3 + 5] {
            let a = (Tensor::randn(0f32, 3.0, n, &dev)?).reshape((1, n))?;
            let b = Tensor::randn(0f32, 3.0, (1, n), &dev)?;
            for dt in [DType::F32, DType::BF16] {
                let (a, b) = (a.to_dtype(dt)?, b.to_dtype(dt)?);
                assert_eq!(bits(&add(&a, &b)?)?, bits(&(&a + &b)?)?, "add {dt:?} {n}");
                assert_eq!(bits(&mul(&a, &b)?)?, bits(&(&a * &b)?)?, "mul {dt:?} {n}");
                let want = (super::super::gelu_tanh(&a)? * &b)?;
                assert_eq!(
                    bits(&gelu_mul(&a, &b)?)?,
                    bits(&want)?,
                    "gelu_mul {dt:?} {n}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn views_and_other_dtypes_still_work() -> Result<()> {
        let dev = Device::Cpu;
        let a = Tensor::randn(0f32, 1.0, (4, 6), &dev)?;
        let b = Tensor::randn(0f32, 1.0, (6, 4), &dev)?.t()?;
        assert_eq!(bits(&add(&a, &b)?)?, bits(&(&a + &b)?)?);
        let (a64, b64) = (a.to_dtype(DType::F64)?, b.to_dtype(DType::F64)?);
        let diff = (add(&a64, &b64)? - (&a64 + &b64)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f64>()?;
        assert_eq!(diff, 0.0);
        Ok(())
    }
}
