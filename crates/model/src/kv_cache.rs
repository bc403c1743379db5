//! The seam between attention and key/value storage.
//!
//! The decoder never owns K/V: each forward pass hands it a [`KvCache`] that stores the new
//! keys/values of every layer and returns what attention must read. The contiguous cache below
//! serves one sequence; the paged block cache of the engine implements the same trait.

use candle_core::{Result, Tensor};

/// Per-sequence key/value storage for every decoder layer.
pub trait KvCache {
    /// Number of tokens whose keys/values are stored in every layer (read once, before a
    /// forward pass appends to any layer).
    fn seq_len(&self) -> usize;

    /// Stores `k, v: [kv_heads, T, head_dim]` of the next `T` tokens for `layer` and returns the
    /// keys and values of the whole sequence so far, `[kv_heads, seq_len + T, head_dim]`.
    ///
    /// # Errors
    /// Device errors, or no room left.
    fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)>;
}

/// One sequence's keys/values as contiguous tensors per layer, grown by concatenation.
#[derive(Debug, Clone)]
pub struct ContiguousKvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl ContiguousKvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
        }
    }
}

impl KvCache for ContiguousKvCache {
    fn seq_len(&self) -> usize {
        // The last layer is written last, so it holds the length before and after a pass.
        match self.layers.last() {
            Some(Some((k, _))) => k.dims().get(1).copied().unwrap_or(0),
            _ => 0,
        }
    }

    fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let Some(slot) = self.layers.get_mut(layer) else {
            candle_core::bail!("kv cache has no layer {layer}");
        };
        let (k_all, v_all) = match slot.take() {
            None => (k.contiguous()?, v.contiguous()?),
            Some((pk, pv)) => (Tensor::cat(&[&pk, k], 1)?, Tensor::cat(&[&pv, v], 1)?),
        };
        *slot = Some((k_all.clone(), v_all.clone()));
        Ok((k_all, v_all))
    }
}
