//! Executes a [`StepPlan`] on the model: applies copy-on-write orders, builds each planned
//! sequence's input embeddings, runs one batched decoder pass over the paged cache and returns
//! the next-token logits. Follows the split of vLLM v1 `vllm/v1/worker/gpu_model_runner.py`
//! (`execute_model`: inputs from the scheduler output, one forward, logits out); sampling stays
//! with the scheduler's per-sequence state.
//!
//! [`StepRunner`] is the seam: the engine's tests drive the scheduler with a fake runner, and
//! a GPU runner with a paged-attention kernel would implement it over the same plan.

use std::sync::Arc;

use candle_core::{IndexOp, Tensor};
use paligemma_model::{DecoderInput, GemmaDecoder, KvCache, LogitsRows};

use crate::error::EngineError;
use crate::kv_store::{PagedKvStore, SequenceKv};
use crate::plan::{ScheduledSeq, StepOutput, StepPlan};
use crate::scheduler::Scheduler;
use crate::sequence::Sequence;

/// Runs planned steps.
pub trait StepRunner {
    /// Computes the planned tokens of every sequence in `plan` (looked up in `scheduler`) and
    /// returns one f32 logits row per planned sequence, in plan order.
    ///
    /// # Errors
    /// Model or device failures; the scheduler then fails the step's sequences.
    fn execute(
        &mut self,
        plan: &StepPlan,
        scheduler: &Scheduler,
    ) -> Result<StepOutput, EngineError>;
}

/// The CPU/candle runner: the Gemma decoder over a [`PagedKvStore`].
#[derive(Debug)]
pub struct ModelRunner {
    decoder: Arc<GemmaDecoder>,
    store: PagedKvStore,
}

impl ModelRunner {
    pub fn new(decoder: Arc<GemmaDecoder>, store: PagedKvStore) -> Self {
        Self { decoder, store }
    }

    pub fn store(&self) -> &PagedKvStore {
        &self.store
    }

    /// Input embeddings `[num_tokens, hidden]` of tokens `start..start + num_tokens` of the
    /// sequence's `prompt ++ generated`.
    fn embeds(&self, seq: &Sequence, entry: &ScheduledSeq) -> Result<Tensor, EngineError> {
        let p = seq.prompt_len();
        let end = entry.start + entry.num_tokens;
        let req = seq.request();
        let mut parts = Vec::with_capacity(2);
        if entry.start < p {
            let prompt = self
                .decoder
                .embed_prompt(&req.prompt_ids, &req.image_features)?;
            parts.push(prompt.i(entry.start..p.min(end))?);
        }
        if end > p {
            let from = entry.start.max(p) - p;
            parts.push(self.decoder.embed_tokens(&seq.generated()[from..end - p])?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Tensor::cat(&parts, 0)?
        })
    }
}

impl StepRunner for ModelRunner {
    fn execute(
        &mut self,
        plan: &StepPlan,
        scheduler: &Scheduler,
    ) -> Result<StepOutput, EngineError> {
        for copy in &plan.copies {
            self.store.copy_block(copy)?;
        }
        let mut seqs = Vec::with_capacity(plan.seqs.len());
        let mut embeds = Vec::with_capacity(plan.seqs.len());
        for entry in &plan.seqs {
            let Some(seq) = scheduler.sequence(entry.seq) else {
                return Err(EngineError::invalid(
                    "plan",
                    format!("sequence {} is not running", entry.seq.0),
                ));
            };
            embeds.push(self.embeds(seq, entry)?);
            seqs.push(seq);
        }
        let inputs: Vec<DecoderInput<'_>> = seqs
            .iter()
            .zip(&embeds)
            .map(|(seq, e)| DecoderInput {
                embeds: e,
                prefix_len: seq.prompt_len(),
                logits: LogitsRows::Last,
            })
            .collect();
        let mut views: Vec<SequenceKv<'_>> = seqs
            .iter()
            .zip(&plan.seqs)
            .map(|(seq, entry)| self.store.sequence(seq.table(), entry.start))
            .collect();
        let mut caches: Vec<&mut dyn KvCache> =
            views.iter_mut().map(|v| v as &mut dyn KvCache).collect();
        let logits = self.decoder.forward_batch(&inputs, &mut caches)?;
        let logits = logits
            .iter()
            .map(|l| l.i(0)?.to_vec1::<f32>())
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(StepOutput { logits })
    }
}
