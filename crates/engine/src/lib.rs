//! Decoding for PaliGemma: token sampling, the single-sequence generation loop, and the
//! continuous-batching engine over a paged KV cache.
//!
//! - [`generate`]: one sequence against the model's contiguous cache (CLI, parity tests).
//! - [`scheduler`]: waiting/running queues, token budget, preempt-by-recompute; sync, no
//!   tensors ([`plan::StepPlan`] out, [`scheduler::RequestEvent`]s back).
//! - [`runner`]: executes a plan with the batched decoder forward over [`kv_store`].
//! - [`engine`]: the actor thread owning scheduler and runner; requests by channel, events on
//!   a bounded per-request channel, cancellation by `CancellationToken`.

pub mod engine;
mod error;
mod generate;
pub mod kv_store;
pub mod plan;
pub mod request_queue;
mod rng;
pub mod runner;
mod sampler;
pub mod scheduler;
pub mod sequence;
mod submit_error;

pub use engine::{EngineConfig, EngineHandle, EngineStats, RequestStream, StartError};
pub use error::EngineError;
pub use generate::{FinishReason, GenerateOutput, GenerateRequest, generate};
pub use sampler::{Sampler, SamplingParams};
pub use scheduler::{EventKind, RequestEvent, Scheduler, SchedulerConfig, SchedulerStats};
pub use sequence::{EngineRequest, RequestId, SeqId};
pub use submit_error::SubmitError;
