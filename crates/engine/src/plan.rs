//! The value types between scheduler and runner, after vLLM v1 `vllm/v1/core/sched/output.py`
//! (`SchedulerOutput`) and `vllm/v1/outputs.py` (`ModelRunnerOutput`): the plan names sequences,
//! token ranges and block copies, never tensors; the output is one logits row per planned
//! sequence.

use paligemma_kv::BlockCopy;

use crate::sequence::SeqId;

/// One sequence's share of a step: compute tokens `start..start + num_tokens` of its
/// `prompt ++ generated`, whose slots the scheduler has reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduledSeq {
    pub seq: SeqId,
    /// Tokens already computed (0 for a prefill or a recompute after preemption).
    pub start: usize,
    pub num_tokens: usize,
}

impl ScheduledSeq {
    pub fn is_prefill(&self) -> bool {
        self.start == 0
    }
}

/// What one engine step runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepPlan {
    /// Sequences in batch order.
    pub seqs: Vec<ScheduledSeq>,
    /// Copy-on-write orders to apply to the cache before the forward pass.
    pub copies: Vec<BlockCopy>,
    /// Sequences preempted while planning this step (their blocks are already free).
    pub preempted: Vec<SeqId>,
}

impl StepPlan {
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Tokens run through the model this step.
    pub fn num_tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.num_tokens).sum()
    }

    pub fn num_prefill_tokens(&self) -> usize {
        self.seqs
            .iter()
            .filter(|s| s.is_prefill())
            .map(|s| s.num_tokens)
            .sum()
    }

    pub fn num_decode_seqs(&self) -> usize {
        self.seqs.iter().filter(|s| !s.is_prefill()).count()
    }
}

/// The runner's result: `logits[i]` is the f32 next-token logits row of `plan.seqs[i]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepOutput {
    pub logits: Vec<Vec<f32>>,
}
