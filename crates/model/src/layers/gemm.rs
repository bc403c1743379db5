//! bf16 CPU fast path for linear layers: `paligemma-kernels`' GEMM (AMX tiles or AVX-512 BF16).
//!
//! candle 0.11's bf16 matmul widens the whole weight to f32 on every call and reaches 60-90
//! GFLOP/s on the prefill and vision-encoder shapes; the AMX kernel reaches 470-1060 on a weight
//! packed once and 210-410 when it packs per call (`cargo bench -p paligemma-kernels --bench
//! gemm`). Weights of [`super::linear::Linear::new`] are therefore packed at load time, replacing
//! the row-major copy (the same memory); at one row the packed kernel streams W as fast as the
//! gemv kernel (16-17 GB/s), so it serves decode as well.
//!
//! Numerics: products of bf16 are exact in f32, sums are f32, the bias is added to the f32
//! accumulator and the result is rounded to bf16 once, as PyTorch's `addmm` does (candle
//! rounded the matmul and then the bias addition separately).

use std::sync::Arc;

use candle_core::{DType, Device, Result, Storage, Tensor};
use half::bf16;
use paligemma_kernels::{GemmIsa, GemmOut, Isa, PackedBf16};

/// The GEMM level to use for bf16 linear layers, when one beats candle's matmul (the portable
/// loop does not).
pub fn fast_isa() -> Option<GemmIsa> {
    let isa = GemmIsa::detect();
    (isa != GemmIsa::Portable).then_some(isa)
}

pub(crate) fn kernel_err(e: paligemma_kernels::KernelError) -> candle_core::Error {
    candle_core::Error::Msg(format!("gemm: {e}"))
}

/// A bf16 weight `[out, in]` packed for the GEMM kernels, with its bias in f32.
#[derive(Debug, Clone)]
pub struct PackedLinear {
    weight: Arc<PackedBf16>,
    bias: Option<Arc<[f32]>>,
    device: Device,
}

impl PackedLinear {
    /// Packs `weight` when it is a bf16 CPU tensor and a fast level exists; `None` otherwise.
    pub fn pack(weight: &Tensor, bias: Option<&Tensor>) -> Result<Option<Self>> {
        let Some(isa) = fast_isa() else {
            return Ok(None);
        };
        if weight.dtype() != DType::BF16 || !weight.device().is_cpu() {
            return Ok(None);
        }
        let (n, k) = weight.dims2()?;
        let w = weight.flatten_all()?.to_vec1::<bf16>()?;
        let threads = candle_core::utils::get_num_threads();
        let packed = PackedBf16::new(isa, &w, n, k, threads).map_err(kernel_err)?;
        Ok(Some(Self {
            weight: Arc::new(packed),
            bias: bias_f32(bias)?,
            device: weight.device().clone(),
        }))
    }

    /// The weight back as a row-major `[out, in]` bf16 tensor.
    pub fn weight(&self) -> Result<Tensor> {
        let (n, k) = (self.weight.n(), self.weight.k());
        Tensor::from_vec(self.weight.unpack(), (n, k), &self.device)
    }

    /// `x · Wᵀ + b` for `x: [.., in]` (converted to bf16 if it is not), as bf16.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, k) = (self.weight.n(), self.weight.k());
        let x = x.to_dtype(DType::BF16)?;
        let (m, out_shape) = rows_and_shape(&x, k, n)?;
        let mut y = vec![bf16::ZERO; m * n];
        with_bf16_slice(&x, |a| {
            paligemma_kernels::gemm_bf16_packed(
                a,
                &self.weight,
                self.bias.as_deref(),
                GemmOut::Bf16(&mut y),
                m,
                candle_core::utils::get_num_threads(),
            )
            .map_err(kernel_err)
        })?;
        Tensor::from_vec(y, out_shape, x.device())
    }
}

/// Most input rows for which a bf16 weight that is not packed takes `paligemma-kernels`'
/// small-`m` GEMM (`gemm_f32_bf16`: the weight read once, widened on load) instead of the bf16
/// GEMM packing it during the call. For the tied output head, packing per call costs a full
/// rewrite of the ~1 GB embedding on every decode step. At k×n = 2048×16384 the small-`m` kernel
/// is 2.4-6x faster than packing per call at 2-32 rows and ties at 64, where the AMX kernel's
/// throughput pays for the packing (`cargo bench -p paligemma-kernels --bench gemm_f32_bf16`).
pub const FEW_ROWS_MAX_BF16: usize = 32;

/// `x · Wᵀ + b` for bf16 weights that are not packed (shared ones, such as tied embeddings):
/// 2..=[`FEW_ROWS_MAX_BF16`] rows by the small-`m` kernel, more by the GEMM kernel packing
/// `weight` during the call. `None` when the path does not apply.
pub fn unpacked(weight: &Tensor, bias: Option<&Tensor>, x: &Tensor) -> Result<Option<Tensor>> {
    let cpu_bf16 = |t: &Tensor| t.dtype() == DType::BF16 && t.device().is_cpu();
    if !cpu_bf16(weight) || !cpu_bf16(x) || x.rank() < 2 {
        return Ok(None);
    }
    let (n, k) = weight.dims2()?;
    let (m, out_shape) = rows_and_shape(x, k, n)?;
    if m < 2 {
        // One row is the gemv path's (no packing needed).
        return Ok(None);
    }
    let bias = bias_f32(bias)?;
    if m <= FEW_ROWS_MAX_BF16 && Isa::detect() != Isa::Portable {
        let y = few_rows(weight, bias.as_deref(), x, m, n, k)?;
        return Ok(Some(Tensor::from_vec(y, out_shape, x.device())?));
    }
    if fast_isa().is_none() {
        return Ok(None);
    }
    let mut y = vec![bf16::ZERO; m * n];
    let threads = candle_core::utils::get_num_threads();
    with_bf16_slice(weight, |w| {
        with_bf16_slice(x, |a| {
            let out = GemmOut::Bf16(&mut y);
            paligemma_kernels::gemm_bf16(a, w, bias.as_deref(), out, m, n, k, threads)
                .map_err(kernel_err)
        })
    })?;
    Ok(Some(Tensor::from_vec(y, out_shape, x.device())?))
}

/// `x · Wᵀ + b` by `gemm_f32_bf16`: `x` widened to f32 once (exact), f32 sums with the bias
/// added, each result rounded to bf16 once, as the packed path does.
fn few_rows(
    weight: &Tensor,
    bias: Option<&[f32]>,
    x: &Tensor,
    m: usize,
    n: usize,
    k: usize,
) -> Result<Vec<bf16>> {
    let a: Vec<f32> = with_bf16_slice(x, |a| Ok(a.iter().map(|v| v.to_f32()).collect()))?;
    let mut y = vec![0f32; m * n];
    let threads = candle_core::utils::get_num_threads();
    with_bf16_slice(weight, |w| {
        paligemma_kernels::gemm_f32_bf16(&a, w, bias, &mut y, m, n, k, threads).map_err(kernel_err)
    })?;
    Ok(y.into_iter().map(bf16::from_f32).collect())
}

fn bias_f32(bias: Option<&Tensor>) -> Result<Option<Arc<[f32]>>> {
    bias.map(|b| {
        Ok(Arc::from(
            b.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
        ))
    })
    .transpose()
}

/// Rows of `x: [.., k]` (leading dims flattened) and the output shape `[.., n]`.
fn rows_and_shape(x: &Tensor, k: usize, n: usize) -> Result<(usize, Vec<usize>)> {
    let dims = x.dims();
    match dims.last() {
        Some(&last) if last == k => {}
        _ => candle_core::bail!("linear: input {dims:?} does not end in {k}"),
    }
    let mut shape = dims.to_vec();
    if let Some(last) = shape.last_mut() {
        *last = n;
    }
    Ok((x.elem_count() / k.max(1), shape))
}

/// Calls `f` with the elements of the bf16 CPU tensor `t` in row-major order, without copying
/// when `t` is contiguous.
pub(crate) fn with_bf16_slice<R>(t: &Tensor, f: impl FnOnce(&[bf16]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("gemm: tensor is not on the CPU");
    };
    let start = layout.start_offset();
    let data = cpu.as_slice::<bf16>()?;
    f(&data[start..start + t.elem_count()])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// f64 reference `x · Wᵀ + b` of the bf16 values, rounded once to bf16.
    fn reference(w: &Tensor, b: &Tensor, x: &Tensor) -> Result<Tensor> {
        let f = |t: &Tensor| t.to_dtype(DType::F64);
        let y = f(x)?.broadcast_matmul(&f(w)?.t()?)?.broadcast_add(&f(b)?)?;
        y.to_dtype(DType::BF16)
    }

    #[test]
    fn packed_and_unpacked_paths_match_a_single_rounding() -> Result<()> {
        if fast_isa().is_none() {
            return Ok(());
        }
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (45, 70), &dev)?.to_dtype(DType::BF16)?;
        let b = Tensor::randn(0f32, 1.0, 45, &dev)?.to_dtype(DType::BF16)?;
        let packed = PackedLinear::pack(&w, Some(&b))?.expect("bf16 CPU weight packs");
        assert_eq!(
            packed.weight()?.to_dtype(DType::F32)?.to_vec2::<f32>()?,
            w.to_dtype(DType::F32)?.to_vec2::<f32>()?
        );
        // 5 and 2·3 rows take the small-`m` kernel, 33 the GEMM packing during the call.
        let past = FEW_ROWS_MAX_BF16 + 1;
        for shape in [vec![1, 70], vec![5, 70], vec![2, 3, 70], vec![past, 70]] {
            let x = Tensor::randn(0f32, 1.0, shape.as_slice(), &dev)?.to_dtype(DType::BF16)?;
            let want = reference(&w, &b, &x)?.to_dtype(DType::F32)?;
            let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
            let mut outs = vec![packed.forward(&x)?];
            outs.extend(unpacked(&w, Some(&b), &x)?);
            for got in outs {
                assert_eq!(got.dims(), want.dims());
                let diff = (got.to_dtype(DType::F32)? - &want)?.abs()?.max_all()?;
                // At most one bf16 rounding step apart (f32 sums in another order).
                let diff = diff.to_scalar::<f32>()?;
                assert!(
                    diff <= scale * 2f32.powi(-7),
                    "{shape:?}: {diff} (scale {scale})"
                );
            }
        }
        // A non-contiguous input gives the same result as its contiguous copy.
        let x = Tensor::randn(0f32, 1.0, (70, 4), &dev)?
            .to_dtype(DType::BF16)?
            .t()?;
        let a = packed.forward(&x)?.to_dtype(DType::F32)?;
        let c = packed.forward(&x.contiguous()?)?.to_dtype(DType::F32)?;
        assert_eq!(a.to_vec2::<f32>()?, c.to_vec2::<f32>()?);
        Ok(())
    }

    #[test]
    fn f32_weights_are_not_packed() -> Result<()> {
        let w = Tensor::zeros((4, 8), DType::F32, &Device::Cpu)?;
        assert!(PackedLinear::pack(&w, None)?.is_none());
        let x = Tensor::zeros((3, 8), DType::F32, &Device::Cpu)?;
        assert!(unpacked(&w, None, &x)?.is_none());
        Ok(())
    }
}
