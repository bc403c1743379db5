//! The paged K/V tensors and a per-sequence view of them that implements the model's
//! [`KvCache`] seam, after vLLM's split between `vllm/v1/core/kv_cache_manager.py` (ids, in
//! `paligemma-kv`) and the worker's cache tensors (`vllm/v1/worker/gpu_model_runner.py`
//! `initialize_kv_cache`, which owns the per-layer tensors the kernels index).
//!
//! Per layer, K and V are one tensor each of `num_blocks × block_size` token slots, stored
//! `[num_blocks * block_size, kv_heads, head_dim]` in the model dtype (the same memory as
//! `[num_blocks, block_size, kv_heads, head_dim]`). Slot `b * block_size + o` is offset `o` of
//! physical block `b`.
//!
//! CPU path: [`SequenceKv::append`] scatters the new tokens into their slots and gathers the
//! sequence's keys/values through its block table into a contiguous `[kv_heads, S, head_dim]`
//! for the eager attention. A CUDA paged-attention kernel would instead read the slots in
//! place given the block table; that kernel is the seam (a `KvCache` implementation that
//! returns no gathered copy), not this file.

use candle_core::{DType, Device, Result, Tensor};
use paligemma_kv::{BlockCopy, BlockTable, CacheGeometry, KvLayout};
use paligemma_model::KvCache;
use paligemma_model::TextConfig;

/// Bytes of one element of `dtype` in the cache.
pub fn dtype_bytes(dtype: DType) -> usize {
    dtype.size_in_bytes()
}

/// The K/V layout of a decoder config in `dtype`.
pub fn kv_layout(cfg: &TextConfig, dtype: DType) -> KvLayout {
    KvLayout {
        num_layers: cfg.num_hidden_layers,
        kv_heads: cfg.num_key_value_heads,
        head_dim: cfg.head_dim,
        dtype_bytes: dtype_bytes(dtype),
    }
}

/// Per-layer key and value tensors of every block (see the module docs for the layout).
#[derive(Debug)]
pub struct PagedKvStore {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    geometry: CacheGeometry,
}

impl PagedKvStore {
    /// Zero-filled storage for `geometry` in `dtype` on `device`.
    ///
    /// # Errors
    /// Allocation failure on the device.
    pub fn new(geometry: CacheGeometry, dtype: DType, device: &Device) -> Result<Self> {
        let l = geometry.layout;
        let shape = (
            geometry.num_blocks * geometry.block_size,
            l.kv_heads,
            l.head_dim,
        );
        let mut keys = Vec::with_capacity(l.num_layers);
        let mut values = Vec::with_capacity(l.num_layers);
        for _ in 0..l.num_layers {
            keys.push(Tensor::zeros(shape, dtype, device)?);
            values.push(Tensor::zeros(shape, dtype, device)?);
        }
        Ok(Self {
            keys,
            values,
            geometry,
        })
    }

    pub fn geometry(&self) -> &CacheGeometry {
        &self.geometry
    }

    /// Applies a copy-on-write order from the block table (all layers, K and V).
    ///
    /// # Errors
    /// Device errors or an order outside the cache.
    pub fn copy_block(&self, copy: &BlockCopy) -> Result<()> {
        let bs = self.geometry.block_size;
        let (src, dst) = (copy.src.index() * bs, copy.dst.index() * bs);
        for t in self.keys.iter().chain(&self.values) {
            // `slice_set` refuses a source sharing the destination's storage: copy out first.
            let rows = t.narrow(0, src, copy.tokens)?.copy()?;
            t.slice_set(&rows, 0, dst)?;
        }
        Ok(())
    }

    /// A view of one sequence for a forward pass: `computed` tokens already stored, new tokens
    /// written into the slots `table` reserved after them.
    pub fn sequence<'a>(&'a self, table: &'a BlockTable, computed: usize) -> SequenceKv<'a> {
        SequenceKv {
            store: self,
            table,
            len: computed,
            gather: None,
        }
    }
}

/// One sequence's keys/values inside a [`PagedKvStore`], addressed through its block table.
#[derive(Debug)]
pub struct SequenceKv<'a> {
    store: &'a PagedKvStore,
    table: &'a BlockTable,
    /// Tokens stored in every layer.
    len: usize,
    /// Slot ids of the tokens `0..n` for the pass in flight, shared by all layers.
    gather: Option<(usize, Tensor)>,
}

impl SequenceKv<'_> {
    fn slot(&self, pos: usize) -> Result<usize> {
        match self.table.slot(pos) {
            Some((block, offset)) => Ok(block.index() * self.table.block_size() + offset),
            None => candle_core::bail!(
                "token {pos} has no reserved KV slot (block table holds {} tokens)",
                self.table.num_tokens()
            ),
        }
    }

    /// Writes `x: [kv_heads, T, head_dim]` into the slots of tokens `len..len + T`, one
    /// `slice_set` per run of consecutive slots (one per block touched).
    fn write(&self, dst: &Tensor, x: &Tensor) -> Result<()> {
        let t = x.dim(1)?;
        let rows = x.transpose(0, 1)?.contiguous()?;
        let mut i = 0;
        while i < t {
            let start = self.slot(self.len + i)?;
            let mut run = 1;
            while i + run < t && self.slot(self.len + i + run)? == start + run {
                run += 1;
            }
            dst.slice_set(&rows.narrow(0, i, run)?.contiguous()?, 0, start)?;
            i += run;
        }
        Ok(())
    }

    fn gather_index(&mut self, n: usize, device: &Device) -> Result<Tensor> {
        if let Some((len, idx)) = &self.gather
            && *len == n
        {
            return Ok(idx.clone());
        }
        let slots = (0..n)
            .map(|p| self.slot(p).map(|s| s as u32))
            .collect::<Result<Vec<u32>>>()?;
        let idx = Tensor::from_vec(slots, n, device)?;
        self.gather = Some((n, idx.clone()));
        Ok(idx)
    }
}

impl KvCache for SequenceKv<'_> {
    fn seq_len(&self) -> usize {
        self.len
    }

    fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let store = self.store;
        let (Some(kc), Some(vc)) = (store.keys.get(layer), store.values.get(layer)) else {
            candle_core::bail!("paged kv cache has no layer {layer}");
        };
        let t = k.dim(1)?;
        self.write(kc, k)?;
        self.write(vc, v)?;
        let idx = self.gather_index(self.len + t, kc.device())?;
        let gather = |c: &Tensor| c.index_select(&idx, 0)?.transpose(0, 1)?.contiguous();
        let out = (gather(kc)?, gather(vc)?);
        if layer + 1 == store.keys.len() {
            self.len += t;
        }
        Ok(out)
    }
}
