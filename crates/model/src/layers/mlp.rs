//! Feed-forward blocks: Gemma's gated GELU MLP and SigLIP's two-layer MLP.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::elementwise::gelu_mul;
use super::gelu_tanh;
use super::linear::Linear;

/// `down(gelu_tanh(gate(x)) * up(x))`, no biases.
#[derive(Debug, Clone)]
pub struct GatedMlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl GatedMlp {
    pub fn new(hidden: usize, intermediate: usize, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(Self {
            gate_proj: Linear::new(hidden, intermediate, false, vb.pp("gate_proj"))?,
            up_proj: Linear::new(hidden, intermediate, false, vb.pp("up_proj"))?,
            down_proj: Linear::new(intermediate, hidden, false, vb.pp("down_proj"))?,
        })
    }
}

impl Module for GatedMlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = self.gate_proj.forward(x)?;
        let up = self.up_proj.forward(x)?;
        self.down_proj.forward(&gelu_mul(&gate, &up)?)
    }
}

/// `fc2(gelu_tanh(fc1(x)))` with biases.
#[derive(Debug, Clone)]
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    pub fn new(hidden: usize, intermediate: usize, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(Self {
            fc1: Linear::new(hidden, intermediate, true, vb.pp("fc1"))?,
            fc2: Linear::new(intermediate, hidden, true, vb.pp("fc2"))?,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&gelu_tanh(&self.fc1.forward(x)?)?)
    }
}
