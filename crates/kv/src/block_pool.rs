//! The block pool: a fixed set of KV blocks addressed by id, with reference counts and an
//! O(1) free list, after vLLM v1 `vllm/v1/core/block_pool.py` and the index-linked
//! `FreeKVCacheBlockQueue` of `vllm/v1/core/kv_cache_utils.py` (as ported by mistral.rs's
//! `paged_attention/block_pool.rs`: blocks in one `Vec`, links are indices, no `Rc`).
//!
//! ```text
//!   entries: [ R | 1 | 2 | 3 | 4 | 5 | ... ]      R = reserved block (id 0), never handed out
//!   free list (doubly linked through entries):  head -> 3 <-> 5 <-> 1 <- tail
//! ```
//!
//! Allocation pops the head, freeing pushes the tail (least recently freed first). Block 0 is
//! the [`ReservedBlock`]: a typed value, not a sentinel in the free list, so kernels can point
//! padding slots at it without any refcount special cases. A [`BlockId`] can only be minted by
//! [`BlockPool::allocate`], so the reserved block can never be freed or forked.

use crate::error::KvError;

/// Link value meaning "none" in the free list.
const NO_LINK: u32 = u32::MAX;

/// Id of an allocatable block (never the reserved block). Only the pool creates these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(u32);

impl BlockId {
    /// Row of this block in the engine's `[num_blocks, block_size, ...]` cache tensors.
    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// The raw id (for logs and kernel block tables).
    pub fn raw(self) -> u32 {
        self.0
    }
}

/// The one block kept out of circulation (id 0): the target of padding slots in a batched
/// kernel's block table. Never allocated, freed or reference counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReservedBlock(u32);

impl ReservedBlock {
    /// Row of the reserved block in the cache tensors.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

#[derive(Debug, Clone)]
struct Entry {
    ref_count: u32,
    prev: u32,
    next: u32,
}

/// Reference-counted KV blocks with an O(1) free list.
///
/// Invariants (checked by [`BlockPool::check_invariants`]): a block is on the free list iff its
/// reference count is 0; the list holds `num_free` distinct allocatable blocks; the reserved
/// block is never on it.
#[derive(Debug, Clone)]
pub struct BlockPool {
    entries: Vec<Entry>,
    head: u32,
    tail: u32,
    num_free: usize,
}

impl BlockPool {
    /// A pool of `num_blocks` blocks including the reserved one, so `num_blocks - 1` are usable.
    ///
    /// # Errors
    /// [`KvError::InvalidGeometry`] for fewer than 2 blocks or more than `u32::MAX - 1`.
    pub fn new(num_blocks: usize) -> Result<Self, KvError> {
        if num_blocks < 2 || num_blocks >= NO_LINK as usize {
            return Err(KvError::InvalidGeometry {
                field: "num_blocks",
                message: format!("{num_blocks} must be in 2..{}", NO_LINK),
            });
        }
        let mut pool = Self {
            entries: vec![
                Entry {
                    ref_count: 0,
                    prev: NO_LINK,
                    next: NO_LINK,
                };
                num_blocks
            ],
            head: NO_LINK,
            tail: NO_LINK,
            num_free: 0,
        };
        for id in 1..num_blocks as u32 {
            pool.push_back(id);
        }
        Ok(pool)
    }

    /// Total blocks including the reserved one.
    pub fn num_blocks(&self) -> usize {
        self.entries.len()
    }

    /// Blocks that can ever be allocated (`num_blocks - 1`).
    pub fn num_usable(&self) -> usize {
        self.entries.len() - 1
    }

    /// Blocks currently free.
    pub fn num_free(&self) -> usize {
        self.num_free
    }

    /// Blocks currently held by at least one owner.
    pub fn num_used(&self) -> usize {
        self.num_usable() - self.num_free
    }

    /// The reserved padding block.
    pub fn reserved(&self) -> ReservedBlock {
        ReservedBlock(0)
    }

    /// Reference count of `block` (0 when free).
    pub fn ref_count(&self, block: BlockId) -> u32 {
        self.entries.get(block.index()).map_or(0, |e| e.ref_count)
    }

    /// Takes one free block with reference count 1, in O(1).
    ///
    /// # Errors
    /// [`KvError::OutOfBlocks`] when none is free.
    pub fn allocate(&mut self) -> Result<BlockId, KvError> {
        let id = self
            .pop_front()
            .ok_or(KvError::OutOfBlocks { needed: 1, free: 0 })?;
        self.entries[id as usize].ref_count = 1;
        Ok(BlockId(id))
    }

    /// Takes `n` blocks or none at all.
    ///
    /// # Errors
    /// [`KvError::OutOfBlocks`] naming `n` and the free count; nothing is allocated then.
    pub fn allocate_many(&mut self, n: usize) -> Result<Vec<BlockId>, KvError> {
        if n > self.num_free {
            return Err(KvError::OutOfBlocks {
                needed: n,
                free: self.num_free,
            });
        }
        (0..n).map(|_| self.allocate()).collect()
    }

    /// Adds an owner to an allocated block (a forked sequence sharing it).
    ///
    /// # Errors
    /// [`KvError::NotAllocated`] if the block is free.
    pub fn fork(&mut self, block: BlockId) -> Result<(), KvError> {
        let entry = self.entry_mut(block)?;
        if entry.ref_count == 0 {
            return Err(KvError::NotAllocated { block: block.0 });
        }
        entry.ref_count += 1;
        Ok(())
    }

    /// Drops one owner; the block returns to the tail of the free list at reference count 0.
    ///
    /// # Errors
    /// [`KvError::NotAllocated`] on a double free.
    pub fn free(&mut self, block: BlockId) -> Result<(), KvError> {
        let entry = self.entry_mut(block)?;
        if entry.ref_count == 0 {
            return Err(KvError::NotAllocated { block: block.0 });
        }
        entry.ref_count -= 1;
        if entry.ref_count == 0 {
            self.push_back(block.0);
        }
        Ok(())
    }

    /// Verifies the free-list and reference-count invariants; returns a description of the
    /// first violation. Linear in the pool size: for tests and debug assertions.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut seen = vec![false; self.entries.len()];
        let (mut cur, mut prev, mut count) = (self.head, NO_LINK, 0usize);
        while cur != NO_LINK {
            let i = cur as usize;
            let e = self
                .entries
                .get(i)
                .ok_or(format!("link to {cur} outside pool"))?;
            if i == 0 {
                return Err("reserved block is on the free list".into());
            }
            if seen[i] {
                return Err(format!("block {i} appears twice on the free list"));
            }
            if e.ref_count != 0 {
                return Err(format!(
                    "free block {i} has reference count {}",
                    e.ref_count
                ));
            }
            if e.prev != prev {
                return Err(format!("block {i} has a broken back link"));
            }
            seen[i] = true;
            count += 1;
            prev = cur;
            cur = e.next;
        }
        if prev != self.tail {
            return Err("tail does not end the free list".into());
        }
        if count != self.num_free {
            return Err(format!(
                "free list holds {count}, counter says {}",
                self.num_free
            ));
        }
        for (i, e) in self.entries.iter().enumerate().skip(1) {
            if e.ref_count == 0 && !seen[i] {
                return Err(format!("block {i} has reference count 0 but is not free"));
            }
        }
        Ok(())
    }

    fn entry_mut(&mut self, block: BlockId) -> Result<&mut Entry, KvError> {
        let num_blocks = self.entries.len();
        self.entries
            .get_mut(block.index())
            .ok_or(KvError::UnknownBlock {
                block: block.0,
                num_blocks,
            })
    }

    fn push_back(&mut self, id: u32) {
        let old_tail = self.tail;
        {
            let e = &mut self.entries[id as usize];
            e.prev = old_tail;
            e.next = NO_LINK;
        }
        if old_tail == NO_LINK {
            self.head = id;
        } else {
            self.entries[old_tail as usize].next = id;
        }
        self.tail = id;
        self.num_free += 1;
    }

    fn pop_front(&mut self) -> Option<u32> {
        let id = self.head;
        if id == NO_LINK {
            return None;
        }
        let next = self.entries[id as usize].next;
        self.head = next;
        if next == NO_LINK {
            self.tail = NO_LINK;
        } else {
            self.entries[next as usize].prev = NO_LINK;
        }
        let e = &mut self.entries[id as usize];
        e.prev = NO_LINK;
        e.next = NO_LINK;
        self.num_free -= 1;
        Some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_block_is_never_allocated() -> Result<(), KvError> {
        let mut pool = BlockPool::new(4)?;
        let ids = pool.allocate_many(3)?;
        assert!(ids.iter().all(|b| b.index() != pool.reserved().index()));
        assert_eq!(pool.num_free(), 0);
        assert!(matches!(
            pool.allocate(),
            Err(KvError::OutOfBlocks { needed: 1, free: 0 })
        ));
        Ok(())
    }

    #[test]
    fn freed_blocks_are_reused_least_recently_freed_first() -> Result<(), KvError> {
        let mut pool = BlockPool::new(4)?;
        let [a, b, c] = [pool.allocate()?, pool.allocate()?, pool.allocate()?];
        pool.free(b)?;
        pool.free(a)?;
        pool.free(c)?;
        assert_eq!(pool.allocate()?, b);
        assert_eq!(pool.allocate()?, a);
        pool.check_invariants()
            .map_err(|m| KvError::InvalidGeometry {
                field: "pool",
                message: m,
            })?;
        Ok(())
    }

    #[test]
    fn shared_block_returns_to_the_pool_after_its_last_owner() -> Result<(), KvError> {
        let mut pool = BlockPool::new(3)?;
        let a = pool.allocate()?;
        pool.fork(a)?;
        assert_eq!(pool.ref_count(a), 2);
        pool.free(a)?;
        assert_eq!(pool.num_free(), 1);
        pool.free(a)?;
        assert_eq!(pool.num_free(), 2);
        assert_eq!(pool.free(a), Err(KvError::NotAllocated { block: a.raw() }));
        assert_eq!(pool.fork(a), Err(KvError::NotAllocated { block: a.raw() }));
        Ok(())
    }

    #[test]
    fn allocate_many_is_all_or_nothing() -> Result<(), KvError> {
        let mut pool = BlockPool::new(4)?;
        assert_eq!(
            pool.allocate_many(4),
            Err(KvError::OutOfBlocks { needed: 4, free: 3 })
        );
        assert_eq!(pool.num_free(), 3);
        Ok(())
    }

    #[test]
    fn pool_needs_a_usable_block_besides_the_reserved_one() {
        assert!(BlockPool::new(1).is_err());
    }
}
