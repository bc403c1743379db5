//! Decoding for PaliGemma: token sampling and the single-sequence generation loop.
//!
//! The batched scheduler with a paged KV cache will live here too; for now [`generate`] runs one
//! sequence against the model's contiguous cache.

mod error;
mod generate;
mod rng;
mod sampler;

pub use error::EngineError;
pub use generate::{FinishReason, GenerateOutput, GenerateRequest, generate};
pub use sampler::{Sampler, SamplingParams};
