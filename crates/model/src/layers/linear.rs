//! Linear layers loaded from the checkpoint with shape checks.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// `y = x Wᵀ (+ b)` with `W: [out, in]` as stored by PyTorch. Accepts `[.., in]` inputs.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder<'_>) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    pub fn from_weight(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match super::gemv::single_row(&self.weight, x)? {
            Some(y) => y,
            None => self.matmul(x)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

impl Linear {
    fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        match x.dims() {
            [_, _] => x.matmul(&self.weight.t()?),
            _ => x.broadcast_matmul(&self.weight.t()?),
        }
    }
}
