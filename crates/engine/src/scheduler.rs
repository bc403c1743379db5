//! The continuous-batching scheduler, after vLLM v1 `vllm/v1/core/sched/scheduler.py` (fixed
//! step order, token budget, preempt-by-recompute) with the ids of `vllm/v1/core/block_pool.py`
//! kept in `paligemma-kv`. Sync, no tensors, no I/O: [`Scheduler::schedule`] returns a
//! [`StepPlan`], the runner executes it, [`Scheduler::update`] turns the logits into events.
//!
//! Step order: (1) every running sequence, oldest first, reserves slots for its uncomputed
//! tokens under the token budget; when blocks run out the most recently admitted running
//! sequence is preempted (blocks freed, requeued at the front for recompute) until the
//! reservation fits or the sequence itself was the victim; (2) only if nothing was preempted,
//! waiting sequences are admitted in FCFS order while the batch, the token budget and the free
//! blocks allow; (3) the plan lists who computes which tokens and the copy-on-write orders.

use std::sync::Arc;

use paligemma_kv::block_table::blocks_for;
use paligemma_kv::{BlockPool, KvError};

use crate::error::EngineError;
use crate::generate::FinishReason;
use crate::plan::{ScheduledSeq, StepOutput, StepPlan};
use crate::request_queue::RequestQueue;
use crate::sampler::logprob;
use crate::sequence::{EngineRequest, RequestId, SeqId, Sequence};
use crate::submit_error::SubmitError;

/// Limits of the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Tokens per KV block.
    pub block_size: usize,
    /// KV blocks including the reserved one.
    pub num_blocks: usize,
    /// Tokens computed per step at most (a lone prefill larger than this still runs alone).
    pub max_batch_tokens: usize,
    /// Sequences in a batch at most.
    pub max_running: usize,
    /// New requests waiting at most (`--max-waiting`).
    pub max_waiting: usize,
    /// The model's position limit (prompt + new tokens).
    pub max_model_len: usize,
}

/// What happened to one sample of a request.
#[derive(Debug, Clone)]
pub enum EventKind {
    /// A generated id (and its log-probability when requested).
    Token { token: u32, logprob: Option<f32> },
    /// The sample ended; no more events for it.
    Finished(FinishReason),
    /// The step computing this sample failed; its blocks are freed; no more events for it.
    Failed(Arc<EngineError>),
    /// The engine refused the request at admission (queue full); no more events.
    Rejected(Arc<SubmitError>),
}

/// An event for the caller of `request`.
#[derive(Debug, Clone)]
pub struct RequestEvent {
    pub request: RequestId,
    pub sample: usize,
    pub kind: EventKind,
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    /// Blocks that can be allocated (all but the reserved one).
    pub blocks_usable: usize,
    pub blocks_used: usize,
    pub blocks_free: usize,
    pub running: usize,
    pub waiting: usize,
    /// Preemptions since start.
    pub preemptions: u64,
    /// Steps run since start.
    pub steps: u64,
    /// Tokens computed by the last step.
    pub last_step_tokens: usize,
    /// Sequences in the last step.
    pub last_step_seqs: usize,
    /// Tokens computed since start (prefill, recompute and decode).
    pub tokens_computed: u64,
}

#[derive(Debug)]
pub struct Scheduler {
    cfg: SchedulerConfig,
    pool: BlockPool,
    waiting: RequestQueue,
    /// In admission order: the last is the most recently admitted (the preemption victim).
    running: Vec<Sequence>,
    next_seq: u64,
    stats: SchedulerStats,
}

impl Scheduler {
    /// # Errors
    /// [`KvError::InvalidGeometry`] for fewer than 2 blocks.
    pub fn new(cfg: SchedulerConfig) -> Result<Self, KvError> {
        Ok(Self {
            pool: BlockPool::new(cfg.num_blocks)?,
            waiting: RequestQueue::new(cfg.max_waiting),
            running: Vec::new(),
            next_seq: 0,
            stats: SchedulerStats::default(),
            cfg,
        })
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    /// The admission size check alone (no queue state), for callers that want to refuse
    /// before queueing.
    ///
    /// # Errors
    /// [`SubmitError::TooLarge`] naming the sizes.
    pub fn check_fits(cfg: &SchedulerConfig, req: &EngineRequest) -> Result<(), SubmitError> {
        let tokens = req.max_tokens();
        let blocks_needed = blocks_for(tokens, cfg.block_size);
        let capacity_blocks = cfg.num_blocks.saturating_sub(1);
        if blocks_needed > capacity_blocks {
            return Err(SubmitError::TooLarge {
                tokens,
                blocks_needed,
                block_size: cfg.block_size,
                capacity_blocks,
                capacity_tokens: capacity_blocks * cfg.block_size,
            });
        }
        Ok(())
    }

    /// Queues a request (its first sample; the others fork after its prefill).
    ///
    /// # Errors
    /// Invalid fields, a request larger than the whole cache, or a full waiting queue.
    pub fn add(&mut self, id: RequestId, req: Arc<EngineRequest>) -> Result<(), SubmitError> {
        req.validate(self.cfg.max_model_len)?;
        Self::check_fits(&self.cfg, &req)?;
        let seq = Sequence::new(self.new_seq_id(), id, req, self.cfg.block_size);
        self.waiting.push_new(seq)
    }

    /// Removes every sample of `request` wherever it is and frees its blocks. Returns the
    /// number of sequences removed.
    pub fn abort(&mut self, request: RequestId) -> usize {
        let mut gone = self.waiting.remove_request(request);
        let (mut drop, keep): (Vec<_>, Vec<_>) = self
            .running
            .drain(..)
            .partition(|s| s.request_id == request);
        self.running = keep;
        gone.append(&mut drop);
        let n = gone.len();
        for mut seq in gone {
            self.release(&mut seq);
        }
        n
    }

    /// Whether any sequence is running or waiting.
    pub fn has_work(&self) -> bool {
        !self.running.is_empty() || !self.waiting.is_empty()
    }

    /// A running sequence by id (the runner reads its tokens and block table).
    pub fn sequence(&self, id: SeqId) -> Option<&Sequence> {
        self.running.iter().find(|s| s.id == id)
    }

    pub fn stats(&self) -> SchedulerStats {
        SchedulerStats {
            blocks_usable: self.pool.num_usable(),
            blocks_used: self.pool.num_used(),
            blocks_free: self.pool.num_free(),
            running: self.running.len(),
            waiting: self.waiting.len(),
            ..self.stats
        }
    }

    /// Plans the next step (see the module docs for the order).
    pub fn schedule(&mut self) -> StepPlan {
        let mut plan = StepPlan::default();
        let mut budget = self.cfg.max_batch_tokens;
        self.schedule_running(&mut plan, &mut budget);
        if plan.preempted.is_empty() {
            self.admit_waiting(&mut plan, &mut budget);
        }
        plan
    }

    fn schedule_running(&mut self, plan: &mut StepPlan, budget: &mut usize) {
        let mut i = 0;
        while i < self.running.len() {
            let n = self.running[i].uncomputed();
            if n > *budget && !plan.is_empty() {
                i += 1;
                continue;
            }
            let seq = &mut self.running[i];
            match seq.table.append(&mut self.pool, n) {
                Ok(copy) => {
                    plan.copies.extend(copy);
                    plan.seqs.push(ScheduledSeq {
                        seq: seq.id,
                        start: seq.computed,
                        num_tokens: n,
                    });
                    *budget = budget.saturating_sub(n);
                    i += 1;
                }
                Err(_) => {
                    // Preempt the most recently admitted; it may be this sequence itself.
                    let victim = self.running.len() - 1;
                    self.preempt(victim, plan);
                }
            }
        }
    }

    fn admit_waiting(&mut self, plan: &mut StepPlan, budget: &mut usize) {
        while self.running.len() < self.cfg.max_running {
            let Some(seq) = self.waiting.front_mut() else {
                return;
            };
            let n = seq.uncomputed();
            if n > *budget && !plan.is_empty() {
                return;
            }
            let Ok(copy) = seq.table.append(&mut self.pool, n) else {
                return;
            };
            let Some(seq) = self.waiting.pop_front() else {
                return;
            };
            plan.copies.extend(copy);
            plan.seqs.push(ScheduledSeq {
                seq: seq.id,
                start: seq.computed,
                num_tokens: n,
            });
            *budget = budget.saturating_sub(n);
            self.running.push(seq);
        }
    }

    fn preempt(&mut self, index: usize, plan: &mut StepPlan) {
        let mut seq = self.running.remove(index);
        self.release(&mut seq);
        seq.computed = 0;
        plan.preempted.push(seq.id);
        self.stats.preemptions += 1;
        self.waiting.push_preempted(seq);
    }

    fn release(&mut self, seq: &mut Sequence) {
        // A failure here is a bookkeeping bug; the table is emptied regardless.
        if let Err(e) = seq.table.release(&mut self.pool) {
            tracing::error!(seq = seq.id.0, error = %e, "KV block bookkeeping bug on release");
        }
    }

    fn new_seq_id(&mut self) -> SeqId {
        self.next_seq += 1;
        SeqId(self.next_seq)
    }

    /// Applies a step's result: advances computed counts, samples, forks pending samples,
    /// retires finished sequences (freeing their blocks) and returns the events in order. On a
    /// failed step every planned sequence fails and is freed.
    pub fn update(
        &mut self,
        plan: &StepPlan,
        out: Result<StepOutput, EngineError>,
    ) -> Vec<RequestEvent> {
        self.stats.steps += 1;
        self.stats.last_step_tokens = plan.num_tokens();
        self.stats.last_step_seqs = plan.seqs.len();
        self.stats.tokens_computed += plan.num_tokens() as u64;
        let mut events = Vec::new();
        match out {
            Err(e) => self.fail_plan(plan, Arc::new(e), &mut events),
            Ok(out) if out.logits.len() != plan.seqs.len() => {
                let e = EngineError::invalid(
                    "step_output",
                    format!(
                        "{} logits rows for {} sequences",
                        out.logits.len(),
                        plan.seqs.len()
                    ),
                );
                self.fail_plan(plan, Arc::new(e), &mut events);
            }
            Ok(out) => {
                for (entry, logits) in plan.seqs.iter().zip(&out.logits) {
                    self.advance(entry, logits, &mut events);
                }
            }
        }
        events
    }

    fn fail_plan(&mut self, plan: &StepPlan, e: Arc<EngineError>, events: &mut Vec<RequestEvent>) {
        for entry in &plan.seqs {
            if let Some(i) = self.running.iter().position(|s| s.id == entry.seq) {
                let mut seq = self.running.remove(i);
                self.release(&mut seq);
                events.push(RequestEvent {
                    request: seq.request_id,
                    sample: seq.sample,
                    kind: EventKind::Failed(Arc::clone(&e)),
                });
            }
        }
    }

    fn advance(&mut self, entry: &ScheduledSeq, logits: &[f32], events: &mut Vec<RequestEvent>) {
        let Some(i) = self.running.iter().position(|s| s.id == entry.seq) else {
            return;
        };
        self.running[i].computed = entry.start + entry.num_tokens;
        let mut forks = Vec::new();
        if self.running[i].forks_pending > 0 {
            let n = self.running[i].forks_pending;
            self.running[i].forks_pending = 0;
            for sample in 1..=n {
                let id = self.new_seq_id();
                let parent = &self.running[i];
                match parent.table.fork(&mut self.pool) {
                    Ok(table) => forks.push(parent.fork(id, sample, table)),
                    Err(e) => events.push(RequestEvent {
                        request: parent.request_id,
                        sample,
                        kind: EventKind::Failed(Arc::new(EngineError::invalid(
                            "n",
                            format!("fork of sample {sample} failed: {e}"),
                        ))),
                    }),
                }
            }
        }
        let mut retire = Vec::new();
        if Self::sample_into(&mut self.running[i], logits, events) {
            retire.push(self.running[i].id);
        }
        for mut child in forks {
            if Self::sample_into(&mut child, logits, events) {
                self.release(&mut child);
            } else {
                self.running.push(child);
            }
        }
        for id in retire {
            if let Some(j) = self.running.iter().position(|s| s.id == id) {
                let mut seq = self.running.remove(j);
                self.release(&mut seq);
            }
        }
    }

    /// Samples one token into `seq`; returns whether the sequence has finished.
    fn sample_into(seq: &mut Sequence, logits: &[f32], events: &mut Vec<RequestEvent>) -> bool {
        let token = seq.sampler.sample(logits);
        let lp = seq.request.logprobs.then(|| logprob(logits, token));
        seq.generated.push(token);
        events.push(RequestEvent {
            request: seq.request_id,
            sample: seq.sample,
            kind: EventKind::Token { token, logprob: lp },
        });
        let req = &seq.request;
        let reason = if req.eos_ids.contains(&token) {
            Some(FinishReason::Eos)
        } else if req.stop_ids.contains(&token) {
            Some(FinishReason::Stop)
        } else if seq.generated.len() >= req.max_new_tokens {
            Some(FinishReason::Length)
        } else {
            None
        };
        if let Some(reason) = reason {
            events.push(RequestEvent {
                request: seq.request_id,
                sample: seq.sample,
                kind: EventKind::Finished(reason),
            });
            return true;
        }
        false
    }
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
