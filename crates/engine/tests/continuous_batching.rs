//! The scheduler and the model runner together on the fixture models: batched greedy output
//! equals single-sequence `generate` for staggered mixed requests, under forced preemption too,
//! n = 4 samples share their prefix blocks and reproduce by seed, different prompts never share
//! blocks, and every block is free at the end.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use anyhow::Result;
use candle_core::{DType, Tensor};
use paligemma_engine::kv_store::{PagedKvStore, kv_layout};
use paligemma_engine::runner::{ModelRunner, StepRunner};
use paligemma_engine::{
    EngineRequest, EventKind, GenerateRequest, SamplingParams, Scheduler, SchedulerConfig, generate,
};
use paligemma_kv::CacheGeometry;
use paligemma_kv::block_table::blocks_for;
use paligemma_model::{GemmaDecoder, PaliGemma};

const EOS: u32 = 1;

/// Generated tokens per (request id, sample index).
type Outputs = BTreeMap<(u64, usize), Vec<u32>>;

struct Setup {
    model: PaliGemma,
    case: common::Case,
    image_tokens: usize,
}

fn setup(name: &str) -> Result<Setup> {
    let model = common::load_model(name)?;
    let case = common::load_case(&model, name)?;
    let image_tokens = case.image_features.dim(0)?;
    Ok(Setup {
        model,
        case,
        image_tokens,
    })
}

/// Request `i`: its own image (scaled soft tokens), prompt length and token budget.
fn request(s: &Setup, i: usize, sampling: SamplingParams, n: usize) -> Result<EngineRequest> {
    let image_id = *s.case.ids.first().unwrap_or(&0);
    let text = &s.case.ids[s.image_tokens..];
    let mut prompt_ids = vec![image_id; s.image_tokens];
    prompt_ids.push(text[0]);
    for j in 0..(i * 3) % 11 {
        prompt_ids.push(3 + ((i * 37 + j * 11) % 1500) as u32);
    }
    prompt_ids.extend_from_slice(&text[1..]);
    let image_features = (&s.case.image_features * (0.4 + 0.15 * i as f64))?;
    Ok(EngineRequest {
        prompt_ids,
        image_features,
        max_new_tokens: 8 + (i * 5) % 17,
        sampling,
        n,
        eos_ids: vec![EOS],
        stop_ids: vec![],
        logprobs: false,
    })
}

fn single(
    decoder: &GemmaDecoder,
    req: &EngineRequest,
    sampling: SamplingParams,
) -> Result<Vec<u32>> {
    let g = GenerateRequest {
        prompt_ids: &req.prompt_ids,
        image_features: &req.image_features,
        max_new_tokens: req.max_new_tokens,
        sampling,
        eos_ids: &req.eos_ids,
        stop_ids: &req.stop_ids,
        logprobs: false,
        keep_logits: false,
    };
    Ok(generate(decoder, &g, |_, _| true)?.tokens)
}

struct Driver {
    scheduler: Scheduler,
    runner: ModelRunner,
}

impl Driver {
    fn new(model: &PaliGemma, block_size: usize, num_blocks: usize) -> Result<Self> {
        let decoder = Arc::new(model.decoder().clone());
        let layout = kv_layout(decoder.config(), DType::F32);
        let budget = layout.bytes_per_token() * (block_size * num_blocks) as u64;
        let geometry = CacheGeometry::from_budget(layout, block_size, budget)?;
        let store = PagedKvStore::new(geometry, DType::F32, decoder.device())?;
        let scheduler = Scheduler::new(SchedulerConfig {
            block_size,
            num_blocks: geometry.num_blocks,
            max_batch_tokens: 4096,
            max_running: 32,
            max_waiting: 64,
            max_model_len: 8192,
        })?;
        Ok(Self {
            scheduler,
            runner: ModelRunner::new(decoder, store),
        })
    }

    /// Runs until idle, adding `joins[step]` before each step; returns tokens per (request,
    /// sample) and the largest number of sequences in one step.
    fn run(
        &mut self,
        mut joins: BTreeMap<usize, Vec<(u64, EngineRequest)>>,
    ) -> Result<(Outputs, usize)> {
        let mut out = BTreeMap::new();
        let mut widest = 0;
        let mut step = 0;
        while self.scheduler.has_work() || !joins.is_empty() {
            if let Some(reqs) = joins.remove(&step) {
                for (id, req) in reqs {
                    self.scheduler.add(id, Arc::new(req))?;
                }
            }
            step += 1;
            anyhow::ensure!(step < 5000, "no progress");
            let plan = self.scheduler.schedule();
            if plan.is_empty() {
                continue;
            }
            widest = widest.max(plan.seqs.len());
            let res = self.runner.execute(&plan, &self.scheduler);
            for ev in self.scheduler.update(&plan, res) {
                match ev.kind {
                    EventKind::Token { token, .. } => out
                        .entry((ev.request, ev.sample))
                        .or_insert_with(Vec::new)
                        .push(token),
                    EventKind::Failed(e) => anyhow::bail!("request {} failed: {e}", ev.request),
                    _ => {}
                }
            }
        }
        Ok((out, widest))
    }
}

fn staggered(s: &Setup, count: usize) -> Result<BTreeMap<usize, Vec<(u64, EngineRequest)>>> {
    let mut joins: BTreeMap<usize, Vec<_>> = BTreeMap::new();
    for i in 0..count {
        let at = [0, 0, 1, 1, 2, 3, 3, 4, 6, 7][i % 10];
        joins
            .entry(at)
            .or_default()
            .push((i as u64, request(s, i, SamplingParams::default(), 1)?));
    }
    Ok(joins)
}

fn expected(s: &Setup, count: usize) -> Result<Outputs> {
    let mut want = BTreeMap::new();
    for i in 0..count {
        let req = request(s, i, SamplingParams::default(), 1)?;
        want.insert(
            (i as u64, 0),
            single(s.model.decoder(), &req, req.sampling)?,
        );
    }
    Ok(want)
}

#[test]
fn batched_greedy_output_equals_single_sequence_output_for_ten_staggered_requests() -> Result<()> {
    for name in ["pg1-48-gqa", "pg2-48-window"] {
        let s = setup(name)?;
        let want = expected(&s, 10)?;
        let mut d = Driver::new(&s.model, 16, 256)?;
        let (got, widest) = d.run(staggered(&s, 10)?)?;
        assert!(
            widest >= 8,
            "{name}: at most {widest} sequences shared a step"
        );
        assert_eq!(got, want, "{name}");
        assert_eq!(d.scheduler.stats().preemptions, 0);
        assert_eq!(d.scheduler.stats().blocks_used, 0, "{name}: leaked blocks");
    }
    Ok(())
}

#[test]
fn cache_too_small_for_the_batch_preempts_and_every_request_completes_with_the_same_tokens()
-> Result<()> {
    let s = setup("pg2-48-window")?;
    let want = expected(&s, 10)?;
    // Room for about two sequences at a time: preemption must happen.
    let mut d = Driver::new(&s.model, 4, 40)?;
    let (got, _) = d.run(staggered(&s, 10)?)?;
    let stats = d.scheduler.stats();
    assert!(stats.preemptions > 0, "no preemption happened: {stats:?}");
    eprintln!("forced preemption: {stats:?}");
    assert_eq!(got, want);
    assert_eq!(d.scheduler.stats().blocks_used, 0, "leaked blocks");
    Ok(())
}

#[test]
fn four_samples_use_the_prefix_blocks_once_and_reproduce_by_seed() -> Result<()> {
    let s = setup("pg1-48-gqa")?;
    let sampling = SamplingParams {
        temperature: 0.9,
        top_k: 0,
        top_p: 1.0,
        seed: 1234,
    };
    let mut req = request(&s, 3, sampling, 4)?;
    req.max_new_tokens = 10;
    req.eos_ids.clear();
    let prefix_blocks = blocks_for(req.prompt_ids.len(), 16);

    let mut d = Driver::new(&s.model, 16, 128)?;
    d.scheduler.add(1, Arc::new(req.clone()))?;
    let plan = d.scheduler.schedule();
    let res = d.runner.execute(&plan, &d.scheduler);
    d.scheduler.update(&plan, res);
    assert_eq!(d.scheduler.stats().running, 4);
    assert_eq!(d.scheduler.stats().blocks_used, prefix_blocks);
    let (rest, _) = d.run(BTreeMap::new())?;
    assert_eq!(d.scheduler.stats().blocks_used, 0);

    let mut d2 = Driver::new(&s.model, 16, 128)?;
    let joins = BTreeMap::from([(0, vec![(1, req.clone())])]);
    let (again, _) = d2.run(joins)?;
    assert_eq!(again.len(), 4);
    let distinct: HashSet<&Vec<u32>> = again.values().collect();
    assert!(distinct.len() > 1, "samples with different seeds all agree");
    // Each sample equals a single-sequence generation with seed + sample index.
    for (&(_, sample), tokens) in &again {
        let sp = SamplingParams {
            seed: sampling.seed + sample as u64,
            ..sampling
        };
        assert_eq!(
            tokens,
            &single(s.model.decoder(), &req, sp)?,
            "sample {sample}"
        );
        assert_eq!(tokens[1..], rest[&(1, sample)][..], "sample {sample} rerun");
    }
    Ok(())
}

#[test]
fn different_prompts_with_the_same_image_never_share_kv_blocks() -> Result<()> {
    let s = setup("pg1-32")?;
    let mut a = request(&s, 1, SamplingParams::default(), 1)?;
    let mut b = request(&s, 2, SamplingParams::default(), 1)?;
    b.image_features = a.image_features.clone();
    a.max_new_tokens = 4;
    b.max_new_tokens = 4;
    let mut d = Driver::new(&s.model, 4, 64)?;
    d.scheduler.add(1, Arc::new(a.clone()))?;
    d.scheduler.add(2, Arc::new(b.clone()))?;
    let plan = d.scheduler.schedule();
    let tables: Vec<Vec<_>> = plan
        .seqs
        .iter()
        .filter_map(|e| d.scheduler.sequence(e.seq))
        .map(|q| q.table().blocks().to_vec())
        .collect();
    assert_eq!(tables.len(), 2);
    let first: HashSet<_> = tables[0].iter().collect();
    assert!(tables[1].iter().all(|b| !first.contains(b)));
    let res = d.runner.execute(&plan, &d.scheduler);
    d.scheduler.update(&plan, res);
    let (got, _) = d.run(BTreeMap::new())?;
    let img: &Tensor = &a.image_features;
    assert_eq!(img.dims(), b.image_features.dims());
    assert_eq!(
        got[&(1, 0)][..],
        single(s.model.decoder(), &a, a.sampling)?[1..]
    );
    assert_eq!(
        got[&(2, 0)][..],
        single(s.model.decoder(), &b, b.sampling)?[1..]
    );
    Ok(())
}
