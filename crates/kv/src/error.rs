//! The kv crate's error type: every variant names the sizes involved.

/// Errors of block bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// Not enough free blocks right now (the scheduler may preempt and retry).
    #[error("need {needed} free KV blocks, {free} are free")]
    OutOfBlocks { needed: usize, free: usize },
    /// A block was freed or forked while not allocated.
    #[error("KV block {block} is not allocated (reference count 0)")]
    NotAllocated { block: u32 },
    /// A block id outside the pool.
    #[error("KV block {block} is outside the pool of {num_blocks} blocks")]
    UnknownBlock { block: u32, num_blocks: usize },
    /// The byte budget does not buy the minimum number of blocks.
    #[error(
        "KV cache budget of {budget_bytes} bytes holds {blocks} blocks of {block_bytes} bytes; \
         at least {min_blocks} are needed"
    )]
    BudgetTooSmall {
        budget_bytes: u64,
        block_bytes: u64,
        blocks: u64,
        min_blocks: u64,
    },
    /// A geometry field is zero or overflows.
    #[error("invalid KV cache geometry: `{field}` {message}")]
    InvalidGeometry {
        field: &'static str,
        message: String,
    },
}
