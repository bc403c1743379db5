//! Why the engine refused a request at admission. Kept apart from [`crate::EngineError`] (the
//! generation loop's errors) so each maps to one gRPC status: every variant here but
//! `Invalid` is RESOURCE_EXHAUSTED or UNAVAILABLE, and each names the sizes involved.

use crate::error::EngineError;

/// An admission refusal.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// A request field is out of range (INVALID_ARGUMENT).
    #[error(transparent)]
    Invalid(#[from] EngineError),
    /// One sample alone would not fit in the whole KV cache (RESOURCE_EXHAUSTED).
    #[error(
        "request needs {tokens} tokens = {blocks_needed} KV blocks of {block_size} tokens, \
         but the whole cache has {capacity_blocks} blocks ({capacity_tokens} tokens)"
    )]
    TooLarge {
        tokens: usize,
        blocks_needed: usize,
        block_size: usize,
        capacity_blocks: usize,
        capacity_tokens: usize,
    },
    /// The waiting queue is at `--max-waiting` (RESOURCE_EXHAUSTED).
    #[error("the waiting queue is full ({max_waiting} requests, --max-waiting)")]
    QueueFull { max_waiting: usize },
    /// The engine thread has stopped (UNAVAILABLE).
    #[error("the engine has shut down")]
    ShutDown,
}
