//! Scheduler behaviour against a fake runner (no model): preemption policy, admission limits,
//! forks sharing prefix blocks, and no leaked blocks after any mix of outcomes.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::*;
use crate::runner::StepRunner;
use crate::sampler::SamplingParams;

const VOCAB: usize = 32;

/// Next token = a hash of the sequence's tokens so far: deterministic across preemption.
struct FakeRunner {
    fail_on_step: Option<u64>,
    steps: u64,
}

impl StepRunner for FakeRunner {
    fn execute(
        &mut self,
        plan: &StepPlan,
        scheduler: &Scheduler,
    ) -> Result<StepOutput, EngineError> {
        self.steps += 1;
        if self.fail_on_step == Some(self.steps) {
            return Err(EngineError::invalid("fake", "injected failure"));
        }
        let mut logits = Vec::new();
        for entry in &plan.seqs {
            let seq = scheduler
                .sequence(entry.seq)
                .ok_or_else(|| EngineError::invalid("seq", "missing"))?;
            assert_eq!(seq.table().num_tokens(), entry.start + entry.num_tokens);
            let h = seq
                .request()
                .prompt_ids
                .iter()
                .chain(seq.generated())
                .fold(7usize, |a, &t| (a * 31 + t as usize) % 1_000_003);
            let mut row = vec![0f32; VOCAB];
            row[2 + h % (VOCAB - 2)] = 1.0;
            logits.push(row);
        }
        Ok(StepOutput { logits })
    }
}

fn fake() -> FakeRunner {
    FakeRunner {
        fail_on_step: None,
        steps: 0,
    }
}

fn config(num_blocks: usize) -> SchedulerConfig {
    SchedulerConfig {
        block_size: 4,
        num_blocks,
        max_batch_tokens: 1024,
        max_running: 16,
        max_waiting: 16,
        max_model_len: 1024,
    }
}

fn request(prompt_len: usize, max_new_tokens: usize) -> Arc<EngineRequest> {
    Arc::new(EngineRequest {
        prompt_ids: (0..prompt_len as u32).map(|i| 2 + i % 20).collect(),
        image_features: Tensor::zeros((0, 4), DType::F32, &Device::Cpu)
            .unwrap_or_else(|e| panic!("{e}")),
        max_new_tokens,
        sampling: SamplingParams::default(),
        n: 1,
        eos_ids: vec![],
        stop_ids: vec![],
        logprobs: false,
    })
}

/// Runs to completion; returns the tokens of each (request, sample).
fn run(
    s: &mut Scheduler,
    r: &mut FakeRunner,
) -> std::collections::BTreeMap<(u64, usize), Vec<u32>> {
    let mut out = std::collections::BTreeMap::new();
    let mut guard = 0;
    while s.has_work() {
        guard += 1;
        assert!(guard < 10_000, "scheduler makes no progress");
        let plan = s.schedule();
        if plan.is_empty() {
            continue;
        }
        let res = r.execute(&plan, s);
        for ev in s.update(&plan, res) {
            if let EventKind::Token { token, .. } = ev.kind {
                out.entry((ev.request, ev.sample))
                    .or_insert_with(Vec::new)
                    .push(token);
            }
        }
    }
    out
}

#[test]
fn most_recently_admitted_sequence_is_preempted_when_blocks_run_out() -> anyhow::Result<()> {
    // 6 usable blocks of 4 tokens; two prompts of 8 tokens take 4 blocks; decoding needs more.
    let mut s = Scheduler::new(config(7))?;
    s.add(1, request(8, 12))?;
    s.add(2, request(8, 12))?;
    let mut r = fake();
    let first = s.schedule();
    assert_eq!(first.seqs.len(), 2);
    let res = r.execute(&first, &s);
    s.update(&first, res);
    let mut preempted = None;
    for _ in 0..20 {
        let plan = s.schedule();
        if let Some(&id) = plan.preempted.first() {
            preempted = Some(id);
            break;
        }
        let res = r.execute(&plan, &s);
        s.update(&plan, res);
    }
    let id = preempted.ok_or_else(|| anyhow::anyhow!("no preemption happened"))?;
    assert_eq!(id, SeqId(2), "the later admission is the victim");
    assert_eq!(s.stats().waiting, 1);
    Ok(())
}

#[test]
fn preempted_requests_complete_with_the_tokens_of_an_unconstrained_run() -> anyhow::Result<()> {
    let reqs = [(8, 12), (5, 9), (11, 6), (3, 14)];
    let mut big = Scheduler::new(config(200))?;
    let mut small = Scheduler::new(config(9))?;
    for (i, &(p, n)) in reqs.iter().enumerate() {
        big.add(i as u64, request(p, n))?;
        small.add(i as u64, request(p, n))?;
    }
    let want = run(&mut big, &mut fake());
    let got = run(&mut small, &mut fake());
    assert!(small.stats().preemptions > 0);
    assert_eq!(got, want);
    assert_eq!(small.stats().blocks_used, 0);
    Ok(())
}

#[test]
fn request_larger_than_the_whole_cache_is_rejected_naming_sizes() -> anyhow::Result<()> {
    let mut s = Scheduler::new(config(5))?;
    let err = s.add(1, request(10, 7));
    let Err(e @ SubmitError::TooLarge { .. }) = err else {
        panic!("expected TooLarge, got {err:?}");
    };
    assert_eq!(
        e.to_string(),
        "request needs 17 tokens = 5 KV blocks of 4 tokens, but the whole cache has 4 blocks \
         (16 tokens)"
    );
    Ok(())
}

#[test]
fn full_waiting_queue_rejects_new_requests() -> anyhow::Result<()> {
    let mut s = Scheduler::new(SchedulerConfig {
        max_waiting: 2,
        ..config(50)
    })?;
    s.add(1, request(4, 4))?;
    s.add(2, request(4, 4))?;
    assert!(matches!(
        s.add(3, request(4, 4)),
        Err(SubmitError::QueueFull { max_waiting: 2 })
    ));
    Ok(())
}

#[test]
fn token_budget_limits_admissions_per_step() -> anyhow::Result<()> {
    let mut s = Scheduler::new(SchedulerConfig {
        max_batch_tokens: 10,
        ..config(50)
    })?;
    for id in 0..3 {
        s.add(id, request(6, 4))?;
    }
    let plan = s.schedule();
    assert_eq!(
        plan.seqs.len(),
        1,
        "a second prefill would exceed 10 tokens"
    );
    let res = fake().execute(&plan, &s);
    s.update(&plan, res);
    let plan = s.schedule();
    assert_eq!(plan.num_decode_seqs(), 1);
    assert_eq!(plan.num_prefill_tokens(), 6);
    Ok(())
}

#[test]
fn n_samples_use_the_prefix_blocks_once() -> anyhow::Result<()> {
    let mut s = Scheduler::new(config(100))?;
    let mut req = (*request(20, 6)).clone();
    req.n = 4;
    req.sampling = SamplingParams {
        temperature: 1.0,
        seed: 9,
        ..SamplingParams::default()
    };
    s.add(1, Arc::new(req))?;
    let mut r = fake();
    let plan = s.schedule();
    let res = r.execute(&plan, &s);
    let events = s.update(&plan, res);
    assert_eq!(s.stats().running, 4);
    assert_eq!(
        s.stats().blocks_used,
        5,
        "20 prefix tokens = 5 blocks, shared by 4"
    );
    assert_eq!(events.len(), 4);
    let out = run(&mut s, &mut r);
    assert_eq!(out.len(), 4);
    assert_eq!(s.stats().blocks_used, 0);
    Ok(())
}

#[test]
fn finished_cancelled_failed_and_preempted_requests_leave_no_block_in_use() -> anyhow::Result<()> {
    let mut s = Scheduler::new(config(12))?;
    let mut r = FakeRunner {
        fail_on_step: Some(4),
        steps: 0,
    };
    for id in 0..6 {
        s.add(id, request(5 + id as usize, 8))?;
    }
    let mut failed = 0;
    let mut step = 0;
    while s.has_work() {
        step += 1;
        assert!(step < 1000);
        if step == 3 {
            s.abort(1);
        }
        if step == 6 {
            s.abort(5);
        }
        let plan = s.schedule();
        if plan.is_empty() {
            continue;
        }
        let res = r.execute(&plan, &s);
        failed += s
            .update(&plan, res)
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Failed(_)))
            .count();
    }
    assert!(failed > 0);
    assert!(s.stats().preemptions > 0);
    assert_eq!(s.stats().blocks_used, 0);
    assert_eq!(s.stats().blocks_free, s.stats().blocks_usable);
    Ok(())
}
