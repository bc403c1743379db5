//! Decode-time fast path for linear layers: one activation row times a weight matrix.
//!
//! At batch 1 a linear layer is a matrix-vector product whose cost is streaming the weights
//! from memory. candle 0.11 reaches ~12 GB/s on it in f32 and ~1 GB/s in bf16 (it widens the
//! whole bf16 weight to a fresh f32 buffer on every call); `paligemma-kernels`' gemv streams at
//! memory bandwidth in both (measured by `cargo bench -p paligemma-kernels`). Numerically it
//! accumulates in f32 and rounds the output once to the activation dtype, as PyTorch does.

use candle_core::{DType, Result, Storage, Tensor};
use half::bf16;

/// `x · Wᵀ` for `x` of shape `[1, in]` (or `[1, 1, in]`) on the CPU with `W: [out, in]` contiguous
/// in f32 or bf16 and `x` of the same dtype; `None` when the fast path does not apply.
pub fn single_row(weight: &Tensor, x: &Tensor) -> Result<Option<Tensor>> {
    let (rows, cols) = weight.dims2()?;
    let dtype = weight.dtype();
    let single = matches!(x.dims(), [1, c] | [1, 1, c] if *c == cols);
    if !single
        || !x.device().is_cpu()
        || x.dtype() != dtype
        || !matches!(dtype, DType::F32 | DType::BF16)
    {
        return Ok(None);
    }
    let xs = x.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let mut y = vec![0f32; rows];
    let threads = candle_core::utils::get_num_threads();
    {
        let (storage, layout) = weight.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else {
            return Ok(None);
        };
        if !layout.is_contiguous() {
            return Ok(None);
        }
        let range = layout.start_offset()..layout.start_offset() + rows * cols;
        let result = match dtype {
            DType::F32 => paligemma_kernels::gemv_f32(
                &cpu.as_slice::<f32>()?[range],
                &xs,
                &mut y,
                cols,
                threads,
            ),
            _ => paligemma_kernels::gemv_bf16(
                &cpu.as_slice::<bf16>()?[range],
                &xs,
                &mut y,
                cols,
                threads,
            ),
        };
        result.map_err(|e| candle_core::Error::Msg(format!("gemv: {e}")))?;
    }
    let mut shape = x.dims().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = rows;
    }
    Ok(Some(
        Tensor::from_vec(y, shape, x.device())?.to_dtype(dtype)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn single_row_matches_candle_matmul_in_f32_and_bf16() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (37, 129), &dev)?;
        let x = Tensor::randn(0f32, 1.0, (1, 129), &dev)?;
        let want = x.matmul(&w.t()?)?;
        let got = single_row(&w, &x)?.expect("fast path applies");
        let diff = (got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-4, "f32 diff {diff}");

        let (wb, xb) = (w.to_dtype(DType::BF16)?, x.to_dtype(DType::BF16)?);
        let want = xb
            .to_dtype(DType::F32)?
            .matmul(&wb.to_dtype(DType::F32)?.t()?)?;
        let got = single_row(&wb, &xb)?
            .expect("fast path applies")
            .to_dtype(DType::F32)?;
        let rel = ((got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?)
            / want.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(rel < 8e-3, "bf16 relative diff {rel} (one output rounding)");
        Ok(())
    }

    #[test]
    fn other_shapes_and_dtypes_fall_back() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (8, 16), &dev)?;
        assert!(single_row(&w, &Tensor::zeros((2, 16), DType::F32, &dev)?)?.is_none());
        assert!(single_row(&w, &Tensor::zeros((1, 16), DType::BF16, &dev)?)?.is_none());
        assert!(
            single_row(
                &w.t()?.contiguous()?.t()?,
                &Tensor::zeros((1, 8), DType::F32, &dev)?
            )?
            .is_none()
        );
        Ok(())
    }
}
