//! Building blocks shared by the vision tower and the decoder. Each exists once; variants are
//! parameters, not copies.

pub mod activation;
pub mod attention;
mod attention_bf16;
pub mod cast;
pub mod elementwise;
pub mod gemm;
pub mod gemv;
pub mod linear;
pub mod mlp;
pub mod norm;
pub mod rope;
mod simd;

use candle_core::{DType, Result, Tensor};

pub use activation::gelu_tanh;

/// `x · s` rounded once to the input dtype. PyTorch multiplies a half tensor by a Python float
/// in f32; candle's affine would first round `s` itself to bf16 (a 0.2 % error for 24^-0.5).
pub fn scale(x: &Tensor, s: f64) -> Result<Tensor> {
    match x.dtype() {
        DType::F32 | DType::F64 => x * s,
        dt => cast::to_dtype(&(cast::to_dtype(x, DType::F32)? * s)?, dt),
    }
}

/// `cap · tanh(x / cap)`, each of the three steps rounded to the input dtype as transformers
/// does it.
pub fn softcap(x: &Tensor, cap: f64) -> Result<Tensor> {
    scale(&scale(x, 1.0 / cap)?.tanh()?, cap)
}
