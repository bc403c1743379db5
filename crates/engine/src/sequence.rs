//! One sample of one request as the scheduler tracks it, after vLLM v1 `vllm/v1/request.py`
//! (`Request`: token ids, `num_computed_tokens`, status) with PaliGemma's extra: the image soft
//! tokens are kept for the sequence's whole life, so a preempted sequence is recomputed from
//! them and its tokens so far without asking the vision tier again.
//!
//! One model of progress (vLLM's): a sequence's tokens are `prompt ++ generated`; the first
//! `computed` have K/V in the cache; a step computes the rest. A fresh or preempted sequence
//! has `computed == 0` (its whole prompt and output are recomputed in one prefill); a running
//! one has exactly one uncomputed token, its last sampled id.

use std::sync::Arc;

use candle_core::Tensor;
use paligemma_kv::BlockTable;

use crate::error::EngineError;
use crate::sampler::{Sampler, SamplingParams};

/// Caller-chosen id of a request (unique among live requests).
pub type RequestId = u64;

/// Engine-assigned id of one sequence (one sample of a request), unique for the engine's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub u64);

/// What a request asks the engine to generate.
#[derive(Debug, Clone)]
pub struct EngineRequest {
    /// Full prompt ids: `<image>`×K, `<bos>`, prompt, `\n`. All of it is the bidirectional prefix.
    pub prompt_ids: Vec<u32>,
    /// Soft tokens `[K, D]` for the `<image>` placeholders, any float dtype.
    pub image_features: Tensor,
    /// Upper bound on generated tokens per sample (≥ 1).
    pub max_new_tokens: usize,
    /// Sample `i` (0-based) draws with `seed + i`.
    pub sampling: SamplingParams,
    /// Number of samples (≥ 1); they share the prefix's KV blocks.
    pub n: usize,
    pub eos_ids: Vec<u32>,
    pub stop_ids: Vec<u32>,
    /// Report `log p(token)` with each token.
    pub logprobs: bool,
}

impl EngineRequest {
    /// Tokens one sample occupies at most: prompt + `max_new_tokens`.
    pub fn max_tokens(&self) -> usize {
        self.prompt_ids.len().saturating_add(self.max_new_tokens)
    }

    /// # Errors
    /// [`EngineError::InvalidRequest`] naming the field.
    pub fn validate(&self, max_model_len: usize) -> Result<(), EngineError> {
        self.sampling.validate()?;
        if self.prompt_ids.is_empty() {
            return Err(EngineError::invalid("prompt_ids", "must not be empty"));
        }
        if self.max_new_tokens == 0 {
            return Err(EngineError::invalid("max_new_tokens", "must be at least 1"));
        }
        if self.n == 0 {
            return Err(EngineError::invalid("n", "must be at least 1"));
        }
        if self.max_tokens() > max_model_len {
            return Err(EngineError::invalid(
                "max_new_tokens",
                format!(
                    "prompt of {} tokens + {} new tokens exceeds the model's position limit of \
                     {max_model_len}",
                    self.prompt_ids.len(),
                    self.max_new_tokens
                ),
            ));
        }
        Ok(())
    }
}

/// One sample in flight.
#[derive(Debug)]
pub struct Sequence {
    pub(crate) id: SeqId,
    pub(crate) request_id: RequestId,
    /// Index of this sample within its request.
    pub(crate) sample: usize,
    pub(crate) request: Arc<EngineRequest>,
    pub(crate) generated: Vec<u32>,
    /// Tokens of `prompt ++ generated` whose K/V are stored.
    pub(crate) computed: usize,
    pub(crate) table: BlockTable,
    pub(crate) sampler: Sampler,
    /// Samples still to fork from this one once its prefill is computed (sample 0 only).
    pub(crate) forks_pending: usize,
}

impl Sequence {
    pub(crate) fn new(
        id: SeqId,
        request_id: RequestId,
        request: Arc<EngineRequest>,
        block_size: usize,
    ) -> Self {
        Self {
            id,
            request_id,
            sample: 0,
            sampler: Sampler::new(request.sampling),
            forks_pending: request.n - 1,
            request,
            generated: Vec::new(),
            computed: 0,
            table: BlockTable::new(block_size),
        }
    }

    /// Sample `sample` sharing this sequence's blocks (one more reference each) and state.
    pub(crate) fn fork(&self, id: SeqId, sample: usize, table: BlockTable) -> Self {
        let params = SamplingParams {
            seed: self.request.sampling.seed.wrapping_add(sample as u64),
            ..self.request.sampling
        };
        Self {
            id,
            request_id: self.request_id,
            sample,
            request: Arc::clone(&self.request),
            generated: self.generated.clone(),
            computed: self.computed,
            table,
            sampler: Sampler::new(params),
            forks_pending: 0,
        }
    }

    pub fn id(&self) -> SeqId {
        self.id
    }

    pub fn request_id(&self) -> RequestId {
        self.request_id
    }

    pub fn request(&self) -> &EngineRequest {
        &self.request
    }

    pub fn prompt_len(&self) -> usize {
        self.request.prompt_ids.len()
    }

    /// Ids generated so far.
    pub fn generated(&self) -> &[u32] {
        &self.generated
    }

    /// Tokens with stored K/V.
    pub fn computed(&self) -> usize {
        self.computed
    }

    pub fn table(&self) -> &BlockTable {
        &self.table
    }

    /// `prompt ++ generated` length.
    pub fn num_tokens(&self) -> usize {
        self.prompt_len() + self.generated.len()
    }

    /// Tokens the next step must compute.
    pub fn uncomputed(&self) -> usize {
        self.num_tokens() - self.computed
    }
}
