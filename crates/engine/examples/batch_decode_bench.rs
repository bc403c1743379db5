//! Benchmark (not a test): aggregate decode tokens/s of the continuous-batching engine at 1, 4,
//! 16 and 64 concurrent sequences on a mid-size random Gemma decoder (CPU), plus KV bytes
//! wasted per sequence and the step time split between prefill and decode.
//!
//! `cargo run -p paligemma-engine --example batch_decode_bench [--release] -- [--dtype f32|bf16]
//! [--streams 1,4,16,64]`

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use paligemma_engine::kv_store::{PagedKvStore, kv_layout};
use paligemma_engine::runner::{ModelRunner, StepRunner};
use paligemma_engine::{EngineRequest, SamplingParams, Scheduler, SchedulerConfig};
use paligemma_kv::CacheGeometry;
use paligemma_model::{GemmaDecoder, PaliGemmaConfig};

const IMAGE_TOKENS: usize = 64;
const NEW_TOKENS: usize = 32;
const BLOCK: usize = 16;

fn config() -> Result<PaliGemmaConfig> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/models/pg1-32/config.json"
    );
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let t = &mut v["text_config"];
    t["hidden_size"] = 1024.into();
    t["intermediate_size"] = 4096.into();
    t["num_hidden_layers"] = 6.into();
    t["num_attention_heads"] = 8.into();
    t["num_key_value_heads"] = 1.into();
    t["head_dim"] = 128.into();
    t["vocab_size"] = 16384.into();
    v["hidden_size"] = 1024.into();
    v["projection_dim"] = 1024.into();
    v["vision_config"]["projection_dim"] = 1024.into();
    v["image_token_index"] = 16000.into();
    Ok(PaliGemmaConfig::from_json(&v.to_string())?)
}

/// `--dtype` and `--streams` from the command line.
fn args() -> Result<(DType, Vec<usize>)> {
    let (mut dtype, mut streams) = (DType::F32, vec![1, 4, 16, 64]);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_default();
        match flag.as_str() {
            "--dtype" => {
                dtype = match value.as_str() {
                    "f32" => DType::F32,
                    "bf16" => DType::BF16,
                    other => anyhow::bail!("--dtype f32|bf16, not {other:?}"),
                }
            }
            "--streams" => streams = value.split(',').map(str::parse).collect::<Result<_, _>>()?,
            other => anyhow::bail!("unknown flag {other:?} (--dtype, --streams)"),
        }
    }
    Ok((dtype, streams))
}

fn main() -> Result<()> {
    let (dtype, streams) = args()?;
    let cfg = config()?;
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let build = |vm: &VarMap| {
        let vb = VarBuilder::from_varmap(vm, dtype, &dev);
        GemmaDecoder::new(
            &cfg.text,
            cfg.image_token_index,
            vb.pp("language_model.model"),
            None,
        )
    };
    // The first build only creates the variables; the decoder is built again after they are
    // randomised because bf16 layers copy (pack) their weights at load time.
    build(&vm)?;
    for var in vm.all_vars() {
        let r = Tensor::randn(0f32, 0.02, var.shape(), &dev)?.to_dtype(dtype)?;
        var.set(&r)?;
    }
    let decoder = Arc::new(build(&vm)?);
    let layout = kv_layout(decoder.config(), dtype);
    println!(
        "dtype {dtype:?}, bytes per token: {}",
        layout.bytes_per_token()
    );
    let mut base = None;
    for conc in streams {
        let budget = layout.bytes_per_token() * (BLOCK * 64 * 8) as u64 * 2;
        let geometry = CacheGeometry::from_budget(layout, BLOCK, budget)?;
        let store = PagedKvStore::new(geometry, dtype, &dev)?;
        let mut runner = ModelRunner::new(Arc::clone(&decoder), store);
        let mut s = Scheduler::new(SchedulerConfig {
            block_size: BLOCK,
            num_blocks: geometry.num_blocks,
            max_batch_tokens: 1 << 20,
            max_running: 128,
            max_waiting: 128,
            max_model_len: 8192,
        })?;
        for i in 0..conc {
            let mut prompt_ids = vec![cfg.image_token_index; IMAGE_TOKENS];
            prompt_ids.extend((0..8 + i % 7).map(|j| 3 + j as u32));
            s.add(
                i as u64,
                Arc::new(EngineRequest {
                    prompt_ids,
                    image_features: Tensor::randn(0f32, 1.0, (IMAGE_TOKENS, 1024), &dev)?
                        .to_dtype(dtype)?,
                    max_new_tokens: NEW_TOKENS,
                    sampling: SamplingParams::default(),
                    n: 1,
                    eos_ids: vec![],
                    stop_ids: vec![],
                    logprobs: false,
                }),
            )?;
        }
        let (mut prefill_s, mut decode_s, mut decode_tokens, mut wasted) =
            (0f64, 0f64, 0usize, 0usize);
        let mut decode_steps = 0;
        while s.has_work() {
            let plan = s.schedule();
            if plan.is_empty() {
                continue;
            }
            if plan.num_decode_seqs() == plan.seqs.len() && decode_steps == 2 {
                wasted = plan
                    .seqs
                    .iter()
                    .filter_map(|e| s.sequence(e.seq))
                    .map(|q| q.table().blocks().len() * BLOCK - q.table().num_tokens())
                    .sum::<usize>();
            }
            let t = Instant::now();
            let out = runner.execute(&plan, &s);
            let dt = t.elapsed().as_secs_f64();
            if plan.num_prefill_tokens() > 0 {
                prefill_s += dt;
            } else {
                decode_s += dt;
                decode_tokens += plan.seqs.len();
                decode_steps += 1;
            }
            s.update(&plan, out);
        }
        let tps = decode_tokens as f64 / decode_s;
        let speedup = tps / *base.get_or_insert(tps);
        println!(
            "concurrency {conc:3}: decode {tps:8.1} tok/s ({speedup:4.1}x of 1), decode step {:6.1} ms, \
             prefill total {:7.1} ms, KV wasted {:.0} bytes/seq ({:.2} blocks)",
            1e3 * decode_s / decode_steps.max(1) as f64,
            1e3 * prefill_s,
            (wasted * layout.bytes_per_token() as usize) as f64 / conc as f64,
            wasted as f64 / conc as f64 / BLOCK as f64,
        );
    }
    Ok(())
}
