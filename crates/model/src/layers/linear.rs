//! Linear layers loaded from the checkpoint with shape checks.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::gemm::PackedLinear;

/// `y = x Wᵀ (+ b)` with `W: [out, in]` as stored by PyTorch. Accepts `[.., in]` inputs.
///
/// bf16 weights on the CPU are packed at load time for the GEMM kernels when the CPU has AMX or
/// AVX-512 BF16 (see `gemm.rs`); the packed copy replaces the tensor. Otherwise candle's matmul
/// (with the gemv kernel for single rows) runs as before.
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
        let weight = match PackedLinear::pack(&weight, bias.as_ref())? {
            Some(packed) => Weight::Packed(packed),
            None => Weight::Tensor(weight),
        };
        Ok(Self { weight, bias })
    }

    /// A layer over an existing tensor, kept as it is: it may be shared (a tied embedding), so
    /// packing it would hold the weight twice. Multi-row bf16 inputs still take the GEMM kernel,
    /// which then packs during the call.
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
