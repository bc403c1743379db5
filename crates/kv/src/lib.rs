//! Paged key/value cache bookkeeping for the decoder engine, after vLLM v1's
//! `vllm/v1/core/block_pool.py` (blocks, free queue, reference counts) and
//! `vllm/v1/core/kv_cache_manager.py` (mapping sequences to blocks).
//!
//! - [`block_pool`]: fixed set of blocks by id, O(1) allocate/free through an index-linked free
//!   list, reference counts, one typed reserved block.
//! - [`block_table`]: one sequence's logical → physical block map, growth with copy-on-write of a
//!   shared partial last block, fork (n > 1 samples) and release.
//! - [`sizing`]: bytes per token and the number of blocks a byte budget buys.
//!
//! This crate owns ids and counts only. The K/V tensors live in the engine, which applies the
//! [`BlockCopy`] orders this crate returns.
#![deny(unsafe_code)]

pub mod block_pool;
pub mod block_table;
pub mod error;
pub mod sizing;

pub use block_pool::{BlockId, BlockPool, ReservedBlock};
pub use block_table::{BlockCopy, BlockTable};
pub use error::KvError;
pub use sizing::{CacheGeometry, KvLayout};
