//! Linear layers loaded from the checkpoint with shape checks.

use candle_core::{DType, Module, Result, Storage, Tensor};
use candle_nn::VarBuilder;

use super::gemm::PackedLinear;

/// `y = x Wᵀ (+ b)` with `W: [out, in]` as stored by PyTorch. Accepts `[.., in]` inputs.
///
/// bf16 weights on the CPU are packed at load time for the GEMM kernels when the CPU has AMX or
/// AVX-512 BF16 (see `gemm.rs`); the packed copy replaces the tensor; bf16 weights left unpacked
/// ([`Linear::from_weight`]) take `gemm::unpacked` from two rows. f32 CPU weights take the
/// gemv kernel for one row and [`few_rows_f32`] for 2..=[`FEW_ROWS_MAX`] rows (batched decode);
/// everything else is candle's matmul.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

#[derive(Debug, Clone)]
enum Weight {
    Tensor(Tensor),
    Packed(PackedLinear),
}

impl Linear {
    pub fn new(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder<'_>) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        Self::owned(weight, bias)
    }

    /// A layer owning its weight, packed for the GEMM kernels where they apply.
    fn owned(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let weight = match PackedLinear::pack(&weight, bias.as_ref())? {
            Some(packed) => Weight::Packed(packed),
            None => Weight::Tensor(weight),
        };
        Ok(Self { weight, bias })
    }

    /// Layers that read the same input (attention's q, k and v) as one, their weights (and
    /// biases) stacked along the output dimension: one GEMM with a wider output instead of
    /// several narrow ones (SigLIP's three 1152-wide projections ran at ~820 GFLOP/s on AMX,
    /// one 3456-wide at ~1350). `parts` are `(checkpoint name, out_dim)`; split the output
    /// with [`Linear::split`].
    pub fn stacked(
        in_dim: usize,
        parts: &[(&str, usize)],
        bias: bool,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        let weights = parts
            .iter()
            .map(|(name, out)| vb.pp(*name).get((*out, in_dim), "weight"))
            .collect::<Result<Vec<_>>>()?;
        let weight = Tensor::cat(&weights, 0)?;
        let bias = if bias {
            let b = parts
                .iter()
                .map(|(name, out)| vb.pp(*name).get(*out, "bias"))
                .collect::<Result<Vec<_>>>()?;
            Some(Tensor::cat(&b, 0)?)
        } else {
            None
        };
        Self::owned(weight, bias)
    }

    /// The outputs of a [`Linear::stacked`] layer, `y: [.., Σ sizes]`, as contiguous tensors of
    /// the given widths.
    pub fn split(y: &Tensor, sizes: &[usize]) -> Result<Vec<Tensor>> {
        let last = y.rank().saturating_sub(1);
        let mut start = 0;
        sizes
            .iter()
            .map(|&n| {
                let part = y.narrow(last, start, n)?.contiguous();
                start += n;
                part
            })
            .collect()
    }

    /// A layer over an existing tensor, kept as it is: it may be shared (a tied embedding), so
    /// packing it would hold the weight twice. Multi-row bf16 inputs take the small-`m` kernel on
    /// the unpacked weight up to `gemm::FEW_ROWS_MAX_BF16` rows (batched decode through a tied
    /// output head), and the GEMM kernel packing during the call beyond.
    pub fn from_weight(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight: Weight::Tensor(weight),
            bias,
        }
    }

    /// The weight as a row-major `[out, in]` tensor (unpacked into a new tensor when packed).
    pub fn weight(&self) -> Result<Tensor> {
        match &self.weight {
            Weight::Tensor(w) => Ok(w.clone()),
            Weight::Packed(p) => p.weight(),
        }
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let weight = match &self.weight {
            // The bias is already inside the packed layer's f32 accumulator.
            Weight::Packed(p) => return p.forward(x),
            Weight::Tensor(w) => w,
        };
        if let Some(y) = super::gemm::unpacked(weight, self.bias.as_ref(), x)? {
            return Ok(y);
        }
        if let Some(y) = few_rows_f32(weight, self.bias.as_ref(), x)? {
            return Ok(y);
        }
        let y = match super::gemv::single_row(weight, x)? {
            Some(y) => y,
            None => matmul(weight, x)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

fn matmul(weight: &Tensor, x: &Tensor) -> Result<Tensor> {
    match x.dims() {
        [_, _] => x.matmul(&weight.t()?),
        _ => x.broadcast_matmul(&weight.t()?),
    }
}

/// Most input rows for which [`few_rows_f32`] is used. `paligemma-kernels`' small-`m` GEMM
/// reads the weight once for all rows and beats candle 0.11's f32 matmul (gemm crate) by
/// 1.1-1.9x at 2-32 rows on the Gemma-2B MLP shapes, ties at 32 and loses from 64 rows, where
/// its dot-product tiles run out of cache bandwidth and candle's packed, blocked GEMM wins
/// (`cargo bench -p paligemma-kernels --bench gemm_f32`).
pub const FEW_ROWS_MAX: usize = 32;

/// `x · Wᵀ (+ b)` for f32 `x: [.., in]` with 2..=[`FEW_ROWS_MAX`] rows (leading dims flattened)
/// and a contiguous f32 CPU weight `[out, in]`, by the small-`m` GEMM kernel; `None` when the path
/// does not apply. Sums are f32 as in candle; the bias is added to each finished f32 sum, which is
/// the same value candle's separate `broadcast_add` gives.
pub fn few_rows_f32(weight: &Tensor, bias: Option<&Tensor>, x: &Tensor) -> Result<Option<Tensor>> {
    let (n, k) = weight.dims2()?;
    let is_f32_cpu = |t: &Tensor| t.dtype() == DType::F32 && t.device().is_cpu();
    if !is_f32_cpu(weight) || !is_f32_cpu(x) || x.rank() < 2 || x.dims().last() != Some(&k) {
        return Ok(None);
    }
    let m = x.elem_count() / k.max(1);
    if !(2..=FEW_ROWS_MAX).contains(&m) || bias.is_some_and(|b| b.dims() != [n]) {
        return Ok(None);
    }
    let a = x.flatten_all()?.to_vec1::<f32>()?;
    let bias = bias
        .map(|b| b.to_dtype(DType::F32)?.to_vec1::<f32>())
        .transpose()?;
    let mut y = vec![0f32; m * n];
    {
        let (storage, layout) = weight.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else {
            return Ok(None);
        };
        if !layout.is_contiguous() {
            return Ok(None);
        }
        let start = layout.start_offset();
        let w = &cpu.as_slice::<f32>()?[start..start + n * k];
        let threads = candle_core::utils::get_num_threads();
        paligemma_kernels::gemm_f32(&a, w, bias.as_deref(), &mut y, m, n, k, threads)
            .map_err(|e| candle_core::Error::Msg(format!("gemm_f32: {e}")))?;
    }
    let mut shape = x.dims().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = n;
    }
    Ok(Some(Tensor::from_vec(y, shape, x.device())?))
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn few_rows_match_candle_matmul_with_bias() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (45, 130), &dev)?;
        let b = Tensor::randn(0f32, 1.0, 45, &dev)?;
        let layer = Linear::from_weight(w.clone(), Some(b.clone()));
        for shape in [
            vec![2, 130],
            vec![3, 1, 130],
            vec![1, 7, 130],
            vec![32, 130],
        ] {
            let x = Tensor::randn(0f32, 1.0, shape.as_slice(), &dev)?;
            assert!(
                few_rows_f32(&w, Some(&b), &x)?.is_some(),
                "{shape:?} takes the path"
            );
            let want = x.broadcast_matmul(&w.t()?)?.broadcast_add(&b)?;
            let got = layer.forward(&x)?;
            assert_eq!(got.dims(), want.dims());
            let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-4, "{shape:?}: {diff}");
        }
        Ok(())
    }

    #[test]
    fn other_inputs_fall_back() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (8, 16), &dev)?;
        let rows = |m: usize| Tensor::zeros((m, 16), DType::F32, &dev);
        assert!(few_rows_f32(&w, None, &rows(1)?)?.is_none());
        assert!(few_rows_f32(&w, None, &rows(FEW_ROWS_MAX + 1)?)?.is_none());
        let x16 = Tensor::zeros((2, 16), DType::BF16, &dev)?;
        assert!(few_rows_f32(&w, None, &x16)?.is_none());
        let strided = w.t()?.contiguous()?.t()?;
        assert!(few_rows_f32(&strided, None, &Tensor::zeros((2, 8), DType::F32, &dev)?)?.is_none());
        Ok(())
    }
}
