//! Property test of the block pool and block tables: a deterministic random driver runs long
//! mixes of allocate / append / fork / release and checks every invariant after each step.

use std::collections::HashMap;

use paligemma_kv::block_table::blocks_for;
use paligemma_kv::{BlockId, BlockPool, BlockTable, KvError};

/// SplitMix64: a seedable generator without dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn check(pool: &BlockPool, tables: &[BlockTable]) {
    if let Err(m) = pool.check_invariants() {
        panic!("pool invariant broken: {m}");
    }
    let mut owners: HashMap<BlockId, u32> = HashMap::new();
    for t in tables {
        assert_eq!(t.blocks().len(), blocks_for(t.num_tokens(), t.block_size()));
        for &b in t.blocks() {
            *owners.entry(b).or_default() += 1;
        }
    }
    for (&b, &n) in &owners {
        assert_eq!(pool.ref_count(b), n, "block {b:?}");
    }
    assert_eq!(pool.num_used(), owners.len());
    assert_eq!(pool.num_used() + pool.num_free(), pool.num_usable());
}

fn drive(seed: u64, num_blocks: usize, block_size: usize, steps: usize) {
    let mut rng = Rng(seed);
    let mut pool = BlockPool::new(num_blocks).unwrap_or_else(|e| panic!("{e}"));
    let mut tables: Vec<BlockTable> = Vec::new();
    for _ in 0..steps {
        match rng.below(10) {
            0..=2 => {
                let mut t = BlockTable::new(block_size);
                let n = 1 + rng.below(3 * block_size);
                match t.append(&mut pool, n) {
                    Ok(copy) => {
                        assert!(copy.is_none());
                        tables.push(t);
                    }
                    Err(KvError::OutOfBlocks { needed, free }) => {
                        assert!(needed > free);
                        assert_eq!(t.num_tokens(), 0);
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            3..=5 if !tables.is_empty() => {
                let i = rng.below(tables.len());
                let n = 1 + rng.below(block_size + 2);
                let before = tables[i].clone();
                let needed = before.blocks_needed(&pool, n);
                match tables[i].append(&mut pool, n) {
                    Ok(copy) => {
                        assert_eq!(tables[i].num_tokens(), before.num_tokens() + n);
                        if let Some(c) = copy {
                            assert_eq!(c.tokens, before.num_tokens() % block_size);
                            assert_eq!(Some(&c.src), before.blocks().last());
                        }
                        // The block now written into is private to this table.
                        let tail = before.num_tokens() / block_size;
                        if let Some(&b) = tables[i].blocks().get(tail) {
                            assert_eq!(pool.ref_count(b), 1);
                        }
                    }
                    Err(KvError::OutOfBlocks { needed: n2, free }) => {
                        assert_eq!(n2, needed);
                        assert!(n2 > free);
                        assert_eq!(tables[i], before);
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            6 | 7 if !tables.is_empty() => {
                let i = rng.below(tables.len());
                let child = tables[i].fork(&mut pool).unwrap_or_else(|e| panic!("{e}"));
                tables.push(child);
            }
            _ if !tables.is_empty() => {
                let i = rng.below(tables.len());
                let mut t = tables.swap_remove(i);
                t.release(&mut pool).unwrap_or_else(|e| panic!("{e}"));
            }
            _ => {}
        }
        check(&pool, &tables);
    }
    for mut t in tables.drain(..) {
        t.release(&mut pool).unwrap_or_else(|e| panic!("{e}"));
    }
    check(&pool, &tables);
    assert_eq!(pool.num_free(), pool.num_usable());
}

#[test]
fn random_alloc_fork_free_sequences_keep_pool_invariants() {
    for seed in 0..40 {
        drive(seed, 2 + (seed as usize % 30), 1 + (seed as usize % 5), 400);
    }
}

#[test]
fn large_pool_under_long_random_workload_ends_with_every_block_free() {
    drive(0xC0FFEE, 257, 16, 5000);
}
