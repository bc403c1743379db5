//! bf16 ↔ f32 conversion of whole tensors on the CPU, bit-identical to candle's `to_dtype`.
//!
//! bf16 models compute norms, GELU and softmax in f32, so every layer converts activations
//! back and forth several times. candle 0.11 does that one element at a time through a generic
//! map (11 % of a bf16 vision forward in `unary_map`); these loops are branch-free bit
//! arithmetic over fixed-width chunks, which the compiler turns into SIMD.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use half::bf16;

use super::simd::simd_dispatch;

/// `x` as `dtype`; the CPU bf16 ↔ f32 directions take the vectorised path, everything else is
/// candle's `to_dtype`. Results are identical either way (round to nearest even).
pub fn to_dtype(x: &Tensor, dtype: DType) -> Result<Tensor> {
    match (x.dtype(), dtype) {
        (from, to) if from == to => Ok(x.clone()),
        (DType::BF16, DType::F32) if x.device().is_cpu() => {
            x.contiguous()?.apply_op1_no_bwd(&Cast(DType::F32))
        }
        (DType::F32, DType::BF16) if x.device().is_cpu() => {
            x.contiguous()?.apply_op1_no_bwd(&Cast(DType::BF16))
        }
        _ => x.to_dtype(dtype),
    }
}

struct Cast(DType);

impl CustomOp1 for Cast {
    fn name(&self) -> &'static str {
        "cast-bf16-f32"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("cast: input must be contiguous");
        };
        let out = match (storage, self.0) {
            (CpuStorage::BF16(x), DType::F32) => CpuStorage::F32(widen_all(&x[start..end])),
            (CpuStorage::F32(x), DType::BF16) => CpuStorage::BF16(narrow_all(&x[start..end])),
            (_, to) => candle_core::bail!("cast: only bf16 <-> f32, not to {to:?}"),
        };
        Ok((out, layout.shape().clone()))
    }
}

simd_dispatch!(fn widen_all(x: &[bf16]) -> Vec<f32> = widen_all_body;);
simd_dispatch!(fn narrow_all(x: &[f32]) -> Vec<bf16> = narrow_all_body;);

#[inline(always)]
fn widen_all_body(x: &[bf16]) -> Vec<f32> {
    x.iter().map(|v| widen(*v)).collect()
}

#[inline(always)]
fn narrow_all_body(x: &[f32]) -> Vec<bf16> {
    x.iter().map(|v| narrow(*v)).collect()
}

/// Exact: a bf16 is the top half of an f32.
#[inline(always)]
pub(crate) fn widen(v: bf16) -> f32 {
    f32::from_bits(u32::from(v.to_bits()) << 16)
}

/// Round to nearest, ties to even (the kernels crate's branch-free rounding).
pub(crate) use paligemma_kernels::round_bf16 as narrow;

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn identical_to_candle_including_ties_and_specials() -> Result<()> {
        let dev = Device::Cpu;
        let mut values: Vec<f32> = (0..20_000)
            .map(|i| ((i as f32) * 0.731).sin() * 10f32.powi((i % 60) - 30))
            .collect();
        values.extend([
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN_POSITIVE,
            1e-40,
            // Exact ties between two bf16 values, both parities.
            f32::from_bits(0x3F80_8000),
            f32::from_bits(0x3F81_8000),
            f32::from_bits(0x7F7F_8000),
        ]);
        let x = Tensor::from_vec(values.clone(), values.len(), &dev)?;
        let want = x.to_dtype(DType::BF16)?;
        let got = to_dtype(&x, DType::BF16)?;
        let bits = |t: &Tensor| -> Result<Vec<u16>> {
            Ok(t.to_vec1::<bf16>()?.iter().map(|v| v.to_bits()).collect())
        };
        assert_eq!(bits(&got)?, bits(&want)?);
        let back = to_dtype(&got, DType::F32)?.to_vec1::<f32>()?;
        let want_back = want.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        assert_eq!(
            back.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            want_back.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        let nan = to_dtype(&Tensor::new(&[f32::NAN], &dev)?, DType::BF16)?;
        assert!(nan.to_vec1::<bf16>()?[0].is_nan());
        // A transposed view is made contiguous first.
        let m = Tensor::from_vec(values[..12].to_vec(), (3, 4), &dev)?.t()?;
        let got = to_dtype(&m, DType::BF16)?.to_dtype(DType::F32)?;
        let want = m.to_dtype(DType::BF16)?.to_dtype(DType::F32)?;
        assert_eq!(got.to_vec2::<f32>()?, want.to_vec2::<f32>()?);
        Ok(())
    }
}
