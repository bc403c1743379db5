//! GELU with the tanh approximation (`gelu_pytorch_tanh`), vectorisable on the CPU.
//!
//! candle 0.11 evaluates it element by element through libm's `tanhf`/`expm1f`, which showed up
//! as 7 % of a whole vision + prefill + decode profile. Here `tanh(u) = 1 − 2 / (e^{2u} + 1)`
//! with `e^v` from a range reduction and a degree-6 polynomial: straight-line f32 arithmetic
//! that LLVM turns into SIMD. Only the *absolute* error of tanh matters for GELU
//! (`0.5·x·(1 + tanh)`), and it stays below 3e-7, well inside f32 parity with PyTorch (whose
//! vectorised tanh is itself not libm's).

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

use half::bf16;

use super::cast::{narrow, to_dtype, widen};
use super::elementwise::par_map;
use super::simd::simd_dispatch;

/// `√(2/π)`, as PyTorch's `kBeta`.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const KAPPA: f32 = 0.044_715;

/// GELU-tanh of a tensor, evaluated in f32 and rounded once to the input dtype, as PyTorch does
/// for half types (candle's own bf16 kernel rounds after every intermediate operation).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    if !x.device().is_cpu() {
        return match dtype {
            DType::F32 | DType::F64 => x.gelu(),
            dt => x.to_dtype(DType::F32)?.gelu()?.to_dtype(dt),
        };
    }
    match dtype {
        DType::F32 | DType::BF16 => x.contiguous()?.apply_op1_no_bwd(&GeluTanh),
        DType::F64 => x.gelu(),
        dt => to_dtype(&to_dtype(x, DType::F32)?.apply_op1_no_bwd(&GeluTanh)?, dt),
    }
}

/// f32 in, f32 out; bf16 is widened, evaluated in f32 and rounded once, in one pass.
struct GeluTanh;

impl CustomOp1 for GeluTanh {
    fn name(&self) -> &'static str {
        "gelu-tanh"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("gelu-tanh: input must be contiguous");
        };
        let out = match storage {
            CpuStorage::F32(x) => {
                let x = &x[start..end];
                let mut y = vec![0f32; x.len()];
                par_map(x, &mut y, gelu_tanh_slice);
                CpuStorage::F32(y)
            }
            CpuStorage::BF16(x) => {
                let x = &x[start..end];
                let mut y = vec![bf16::ZERO; x.len()];
                par_map(x, &mut y, gelu_tanh_bf16);
                CpuStorage::BF16(y)
            }
            _ => candle_core::bail!("gelu-tanh: only f32 and bf16 storage"),
        };
        Ok((out, layout.shape().clone()))
    }
}

simd_dispatch!(fn gelu_tanh_bf16(x: &[bf16], y: &mut [bf16]) = gelu_tanh_bf16_body;);

#[inline(always)]
fn gelu_tanh_bf16_body(x: &[bf16], y: &mut [bf16]) {
    map_lanes(x, y, |x| narrow(gelu_one(widen(x))));
}

simd_dispatch!(
    /// `y[i] = gelu_tanh(x[i])`; `x` and `y` have the same length.
    pub fn gelu_tanh_slice(x: &[f32], y: &mut [f32]) = gelu_tanh_slice_body;
);

#[inline(always)]
fn gelu_tanh_slice_body(x: &[f32], y: &mut [f32]) {
    map_lanes(x, y, gelu_one);
}

/// `y[i] = f(x[i])` in fixed-width chunks, which let the compiler keep the whole body in vector
/// registers.
#[inline(always)]
fn map_lanes<T: Copy, U>(x: &[T], y: &mut [U], f: impl Fn(T) -> U) {
    const LANES: usize = 16;
    let mut xs = x.chunks_exact(LANES);
    let mut ys = y.chunks_exact_mut(LANES);
    for (xc, yc) in (&mut xs).zip(&mut ys) {
        for (x, y) in xc.iter().zip(yc.iter_mut()) {
            *y = f(*x);
        }
    }
    for (x, y) in xs.remainder().iter().zip(ys.into_remainder()) {
        *y = f(*x);
    }
}

#[inline(always)]
pub(crate) fn gelu_one(x: f32) -> f32 {
    let u = SQRT_2_OVER_PI * x * (1.0 + KAPPA * x * x);
    0.5 * x * (1.0 + tanh(u))
}

/// `tanh(u)` with absolute error < 3e-7, branch-free. Saturates to ±1 (and keeps NaN).
#[inline(always)]
fn tanh(u: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * u) + 1.0)
}

/// `e^v`, relative error ≈ 2e-7; 0 below −87 (also for −∞, as softmax over masked scores
/// needs), huge but finite above 88 (all `tanh` needs). NaN propagates.
#[inline(always)]
pub(crate) fn exp(v: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in a part exact in f32 and a correction (Cody–Waite), so v − n·ln2 is exact.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding then subtracting 1.5·2^23 rounds to the nearest integer without a libm call.
    const ROUND: f32 = 12_582_912.0;
    let underflow = v < -87.0;
    let v = v.clamp(-87.0, 88.0);
    let n = (v * LOG2E + ROUND) - ROUND;
    let r = (v - n * LN2_HI) - n * LN2_LO;
    // e^r on |r| ≤ ln2/2 by its Taylor series to r^6 (truncation error < 2e-7 relative).
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^n by building the exponent bits; n ∈ [−126, 127] after the clamp, so n + 127 is an
    // integer in [1, 254], and adding 2^23 leaves it in the low mantissa bits. (`n as i32` is a
    // saturating conversion LLVM did not vectorise.)
    let biased = (n + (127.0 + 8_388_608.0)).to_bits() & 0xFF;
    let scale = f32::from_bits(biased << 23);
    if underflow { 0.0 } else { p * scale }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn reference(x: f64) -> f64 {
        let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
        0.5 * x * (1.0 + u.tanh())
    }

    #[test]
    fn matches_the_f64_formula_over_the_whole_range() {
        let mut worst = 0f64;
        let mut x = -20.0f32;
        while x <= 20.0 {
            let got = f64::from(gelu_one(x));
            let want = reference(f64::from(x));
            // Absolute error relative to max(|x|, 1): tanh's absolute error times 0.5·|x|.
            let err = (got - want).abs() / f64::from(x.abs()).max(1.0);
            worst = worst.max(err);
            x += 0.000_37;
        }
        assert!(worst < 4e-7, "worst scaled error {worst:e}");
        for x in [0.0f32, -0.0, 1e-30, -1e-30, 1e-7] {
            let got = f64::from(gelu_one(x));
            assert!((got - reference(f64::from(x))).abs() <= 1e-7 * f64::from(x.abs()) + 1e-38);
        }
        assert_eq!(gelu_one(100.0), 100.0);
        assert_eq!(gelu_one(-100.0), 0.0);
        assert_eq!(gelu_one(f32::MAX), f32::MAX);
        assert!(gelu_one(f32::NAN).is_nan());
    }

    #[test]
    fn tensor_op_matches_candle_gelu_and_keeps_shape_and_dtype() -> Result<()> {
        let dev = Device::Cpu;
        let x = (Tensor::randn(0f32, 3.0, (3, 37), &dev)? * 1.0)?;
        let want = x.gelu()?;
        let got = gelu_tanh(&x)?;
        assert_eq!(got.dims(), &[3, 37]);
        let diff = (&got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 2e-6, "max |Δ| vs candle {diff}");
        // A non-contiguous view is handled too.
        let t = gelu_tanh(&x.t()?)?;
        let diff = (t - want.t()?)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 2e-6);
        // bf16 in one pass = widen, f32 GELU, one rounding (above and below the thread split).
        for n in [37, 200_003] {
            let x = Tensor::randn(0f32, 3.0, n, &dev)?.to_dtype(DType::BF16)?;
            let b = gelu_tanh(&x)?;
            assert_eq!(b.dtype(), DType::BF16);
            let want = gelu_tanh(&x.to_dtype(DType::F32)?)?.to_dtype(DType::BF16)?;
            let bits = |t: &Tensor| -> Result<Vec<u16>> {
                Ok(t.to_vec1::<bf16>()?.iter().map(|v| v.to_bits()).collect())
            };
            assert_eq!(bits(&b)?, bits(&want)?);
        }
        Ok(())
    }
}
