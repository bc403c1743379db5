//! How many blocks a byte budget buys: bytes per token = 2 (K and V) × layers × kv_heads ×
//! head_dim × dtype size, the sizing vLLM's `vllm/v1/core/kv_cache_utils.py` derives from the
//! model's KV spec (`page_size_bytes`), here for one uniform attention type.

use crate::error::KvError;

/// Shape of one token's keys and values across the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    pub num_layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Bytes of one element in the cache dtype (2 for bf16/f16, 4 for f32).
    pub dtype_bytes: usize,
}

impl KvLayout {
    /// Bytes of K and V of one token over all layers.
    pub fn bytes_per_token(&self) -> u64 {
        2 * (self.num_layers * self.kv_heads * self.head_dim * self.dtype_bytes) as u64
    }
}

/// Block size and count of a cache, and what they cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheGeometry {
    pub layout: KvLayout,
    /// Tokens per block.
    pub block_size: usize,
    /// Blocks including the reserved one.
    pub num_blocks: usize,
}

impl CacheGeometry {
    /// The most blocks of `block_size` tokens that fit in `budget_bytes` (the reserved block
    /// included in the budget).
    ///
    /// # Errors
    /// Zero-sized fields, or a budget below two blocks ([`KvError::BudgetTooSmall`]).
    pub fn from_budget(
        layout: KvLayout,
        block_size: usize,
        budget_bytes: u64,
    ) -> Result<Self, KvError> {
        for (field, v) in [
            ("num_layers", layout.num_layers),
            ("kv_heads", layout.kv_heads),
            ("head_dim", layout.head_dim),
            ("dtype_bytes", layout.dtype_bytes),
            ("block_size", block_size),
        ] {
            if v == 0 {
                return Err(KvError::InvalidGeometry {
                    field,
                    message: "must be at least 1".into(),
                });
            }
        }
        let block_bytes = layout.bytes_per_token() * block_size as u64;
        let blocks = budget_bytes / block_bytes;
        if blocks < 2 {
            return Err(KvError::BudgetTooSmall {
                budget_bytes,
                block_bytes,
                blocks,
                min_blocks: 2,
            });
        }
        let num_blocks = usize::try_from(blocks.min(u64::from(u32::MAX - 1))).map_err(|_| {
            KvError::InvalidGeometry {
                field: "kv_cache_bytes",
                message: format!("{budget_bytes} is too large for this platform"),
            }
        })?;
        Ok(Self {
            layout,
            block_size,
            num_blocks,
        })
    }

    /// Bytes of one block (all layers, K and V).
    pub fn block_bytes(&self) -> u64 {
        self.layout.bytes_per_token() * self.block_size as u64
    }

    /// Bytes of the whole cache.
    pub fn total_bytes(&self) -> u64 {
        self.block_bytes() * self.num_blocks as u64
    }

    /// Tokens the usable blocks can hold.
    pub fn token_capacity(&self) -> usize {
        (self.num_blocks - 1) * self.block_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PG1_3B: KvLayout = KvLayout {
        num_layers: 18,
        kv_heads: 1,
        head_dim: 256,
        dtype_bytes: 2,
    };

    #[test]
    fn paligemma_3b_bf16_costs_18_kib_per_token() {
        assert_eq!(PG1_3B.bytes_per_token(), 18 * 1024);
    }

    #[test]
    fn budget_buys_whole_blocks_only() -> Result<(), KvError> {
        let g = CacheGeometry::from_budget(PG1_3B, 16, 10 * 16 * 18 * 1024 + 5)?;
        assert_eq!(g.num_blocks, 10);
        assert_eq!(g.token_capacity(), 9 * 16);
        Ok(())
    }

    #[test]
    fn budget_below_two_blocks_is_rejected_with_sizes() {
        let err = CacheGeometry::from_budget(PG1_3B, 16, 1000);
        assert!(matches!(
            err,
            Err(KvError::BudgetTooSmall {
                budget_bytes: 1000,
                block_bytes: 294_912,
                ..
            })
        ));
    }
}
