//! One sequence's block table: logical block i of the sequence lives in physical block
//! `blocks[i]`, token t in slot `t % block_size` of logical block `t / block_size`. Follows the
//! request → blocks mapping of vLLM v1 `vllm/v1/core/kv_cache_manager.py` (`allocate_slots`,
//! `free`) and the copy-on-write of a shared partial block that vLLM v0's block manager did for
//! parallel sampling.
//!
//! ```text
//!   tokens:  0 1 2 3 | 4 5 6 7 | 8 9          block_size = 4, num_tokens = 10
//!   table:   [   7   |   2     |  5  ]        physical ids from the pool
//! ```
//!
//! Growth is all-or-nothing: when the pool cannot supply every block a reservation needs, the
//! table is untouched and the caller (the scheduler) decides whom to preempt.

use crate::block_pool::{BlockId, BlockPool};
use crate::error::KvError;

/// An order to copy the first `tokens` slots of block `src` into block `dst` (all layers, K and
/// V). Emitted when a sequence must write into a partial block it shares with a fork.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockCopy {
    pub src: BlockId,
    pub dst: BlockId,
    /// Filled slots to copy (1..block_size).
    pub tokens: usize,
}

/// Physical blocks of one sequence and the number of token slots reserved in them.
///
/// Invariant: `blocks.len() == ceil(num_tokens / block_size)`, and this table holds one
/// reference on each of its blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockTable {
    blocks: Vec<BlockId>,
    num_tokens: usize,
    block_size: usize,
}

/// Blocks needed to hold `tokens` tokens.
pub fn blocks_for(tokens: usize, block_size: usize) -> usize {
    tokens.div_ceil(block_size.max(1))
}

impl BlockTable {
    /// An empty table for blocks of `block_size` tokens (≥ 1).
    pub fn new(block_size: usize) -> Self {
        Self {
            blocks: Vec::new(),
            num_tokens: 0,
            block_size: block_size.max(1),
        }
    }

    /// Token slots reserved (tokens whose K/V are, or are about to be, stored).
    pub fn num_tokens(&self) -> usize {
        self.num_tokens
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Physical blocks in logical order.
    pub fn blocks(&self) -> &[BlockId] {
        &self.blocks
    }

    /// `(block, offset)` holding token `pos`, if reserved.
    pub fn slot(&self, pos: usize) -> Option<(BlockId, usize)> {
        if pos >= self.num_tokens {
            return None;
        }
        let block = *self.blocks.get(pos / self.block_size)?;
        Some((block, pos % self.block_size))
    }

    /// Free blocks that reserving `new_tokens` more slots would take from `pool`, counting a
    /// copy-on-write of a shared partial last block.
    pub fn blocks_needed(&self, pool: &BlockPool, new_tokens: usize) -> usize {
        if new_tokens == 0 {
            return 0;
        }
        let grow = blocks_for(self.num_tokens + new_tokens, self.block_size) - self.blocks.len();
        grow + usize::from(self.shared_partial_tail(pool).is_some())
    }

    /// Reserves `new_tokens` more slots, allocating blocks as needed. If the last block is
    /// partial and shared with another table, it is replaced by a private copy first and the
    /// returned [`BlockCopy`] tells the storage owner to copy its filled slots.
    ///
    /// # Errors
    /// [`KvError::OutOfBlocks`] (the table and pool are unchanged).
    pub fn append(
        &mut self,
        pool: &mut BlockPool,
        new_tokens: usize,
    ) -> Result<Option<BlockCopy>, KvError> {
        let needed = self.blocks_needed(pool, new_tokens);
        if needed > pool.num_free() {
            return Err(KvError::OutOfBlocks {
                needed,
                free: pool.num_free(),
            });
        }
        if new_tokens == 0 {
            return Ok(None);
        }
        let mut copy = None;
        if let Some(src) = self.shared_partial_tail(pool) {
            let dst = pool.allocate()?;
            pool.free(src)?;
            if let Some(last) = self.blocks.last_mut() {
                *last = dst;
            }
            copy = Some(BlockCopy {
                src,
                dst,
                tokens: self.num_tokens % self.block_size,
            });
        }
        let grow = blocks_for(self.num_tokens + new_tokens, self.block_size) - self.blocks.len();
        let fresh = pool.allocate_many(grow)?;
        self.blocks.extend(fresh);
        self.num_tokens += new_tokens;
        Ok(copy)
    }

    /// A second table sharing every block of this one (one more reference each): the start of
    /// n > 1 samples after a shared prefill.
    ///
    /// # Errors
    /// [`KvError::NotAllocated`] if this table refers to a freed block (a bookkeeping bug).
    pub fn fork(&self, pool: &mut BlockPool) -> Result<Self, KvError> {
        for &b in &self.blocks {
            pool.fork(b)?;
        }
        Ok(self.clone())
    }

    /// Drops this table's reference on each block and empties it. Blocks whose last owner this
    /// was return to the pool.
    ///
    /// # Errors
    /// [`KvError::NotAllocated`] on a double free (a bookkeeping bug); the table is emptied anyway.
    pub fn release(&mut self, pool: &mut BlockPool) -> Result<(), KvError> {
        self.num_tokens = 0;
        let mut first_err = Ok(());
        for b in self.blocks.drain(..) {
            if let Err(e) = pool.free(b)
                && first_err.is_ok()
            {
                first_err = Err(e);
            }
        }
        first_err
    }

    fn shared_partial_tail(&self, pool: &BlockPool) -> Option<BlockId> {
        let last = *self.blocks.last()?;
        (!self.num_tokens.is_multiple_of(self.block_size) && pool.ref_count(last) > 1)
            .then_some(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_map_tokens_to_blocks_and_offsets() -> Result<(), KvError> {
        let mut pool = BlockPool::new(8)?;
        let mut t = BlockTable::new(4);
        assert_eq!(t.append(&mut pool, 6)?, None);
        assert_eq!(t.blocks().len(), 2);
        assert_eq!(t.slot(5), Some((t.blocks()[1], 1)));
        assert_eq!(t.slot(6), None);
        t.append(&mut pool, 2)?;
        assert_eq!(t.blocks().len(), 2);
        t.append(&mut pool, 1)?;
        assert_eq!(t.blocks().len(), 3);
        Ok(())
    }

    #[test]
    fn failed_growth_leaves_table_and_pool_unchanged() -> Result<(), KvError> {
        let mut pool = BlockPool::new(3)?;
        let mut t = BlockTable::new(4);
        t.append(&mut pool, 3)?;
        let before = t.clone();
        assert_eq!(
            t.append(&mut pool, 10),
            Err(KvError::OutOfBlocks { needed: 3, free: 1 })
        );
        assert_eq!(t, before);
        assert_eq!(pool.num_free(), 1);
        Ok(())
    }

    #[test]
    fn writing_into_a_shared_partial_block_copies_it_first() -> Result<(), KvError> {
        let mut pool = BlockPool::new(8)?;
        let mut parent = BlockTable::new(4);
        parent.append(&mut pool, 6)?;
        let mut child = parent.fork(&mut pool)?;
        assert_eq!(pool.num_used(), 2);
        let shared_tail = parent.blocks()[1];
        assert_eq!(child.blocks_needed(&pool, 1), 1);
        let copy = child.append(&mut pool, 1)?;
        assert_eq!(
            copy,
            Some(BlockCopy {
                src: shared_tail,
                dst: child.blocks()[1],
                tokens: 2
            })
        );
        assert_eq!(child.blocks()[0], parent.blocks()[0]);
        assert_eq!(pool.ref_count(shared_tail), 1);
        // The parent now owns its tail alone and writes in place.
        assert_eq!(parent.append(&mut pool, 1)?, None);
        assert_eq!(pool.num_used(), 3);
        Ok(())
    }

    #[test]
    fn full_shared_blocks_are_never_copied() -> Result<(), KvError> {
        let mut pool = BlockPool::new(8)?;
        let mut parent = BlockTable::new(4);
        parent.append(&mut pool, 8)?;
        let mut child = parent.fork(&mut pool)?;
        assert_eq!(child.append(&mut pool, 1)?, None);
        assert_eq!(pool.num_used(), 3);
        Ok(())
    }

    #[test]
    fn releasing_every_table_frees_every_block() -> Result<(), KvError> {
        let mut pool = BlockPool::new(8)?;
        let mut a = BlockTable::new(4);
        a.append(&mut pool, 5)?;
        let mut b = a.fork(&mut pool)?;
        b.append(&mut pool, 4)?;
        a.release(&mut pool)?;
        assert!(pool.num_used() > 0);
        b.release(&mut pool)?;
        assert_eq!(pool.num_used(), 0);
        assert_eq!(b.num_tokens(), 0);
        Ok(())
    }
}
