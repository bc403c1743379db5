//! The engine actor end to end on a fixture model: concurrent submissions through the handle
//! give single-sequence tokens, cancellation frees blocks, admission limits are reported with
//! their sizes, and the stats snapshot returns to an empty cache.

mod common;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use paligemma_engine::{
    EngineConfig, EngineHandle, EngineRequest, EventKind, FinishReason, GenerateRequest,
    RequestStream, SamplingParams, SubmitError, generate,
};
use paligemma_model::PaliGemma;
use tokio_util::sync::CancellationToken;

fn request(case: &common::Case, i: usize, max_new: usize) -> Result<EngineRequest> {
    Ok(EngineRequest {
        prompt_ids: case.ids.clone(),
        image_features: (&case.image_features * (0.5 + 0.2 * i as f64))?,
        max_new_tokens: max_new,
        sampling: SamplingParams::default(),
        n: 1,
        eos_ids: vec![1],
        stop_ids: vec![],
        logprobs: true,
    })
}

async fn collect(mut s: RequestStream) -> Result<(Vec<u32>, FinishReason)> {
    let mut tokens = Vec::new();
    while let Some(ev) = s.events.recv().await {
        match ev.kind {
            EventKind::Token { token, logprob } => {
                anyhow::ensure!(logprob.is_some_and(|l| l <= 0.0), "bad logprob");
                tokens.push(token);
            }
            EventKind::Finished(r) => return Ok((tokens, r)),
            EventKind::Failed(e) => anyhow::bail!("failed: {e}"),
            EventKind::Rejected(e) => anyhow::bail!("rejected: {e}"),
        }
    }
    anyhow::bail!("stream ended without a finish event")
}

fn start(model: &PaliGemma, cfg: EngineConfig) -> Result<EngineHandle> {
    Ok(EngineHandle::start(Arc::new(model.decoder().clone()), cfg)?)
}

async fn wait_idle(engine: &EngineHandle) -> Result<()> {
    let mut w = engine.watch_stats();
    tokio::time::timeout(
        Duration::from_secs(30),
        w.wait_for(|s| {
            s.live_requests == 0 && s.scheduler.running == 0 && s.scheduler.waiting == 0
        }),
    )
    .await
    .context("engine did not become idle")??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_requests_get_their_single_sequence_tokens() -> Result<()> {
    let model = common::load_model("pg2-48-window")?;
    let case = common::load_case(&model, "pg2-48-window")?;
    let engine = start(&model, EngineConfig::default())?;
    let mut streams = Vec::new();
    let mut want = Vec::new();
    for i in 0..8 {
        let req = request(&case, i, 6 + i)?;
        let g = GenerateRequest {
            prompt_ids: &req.prompt_ids,
            image_features: &req.image_features,
            max_new_tokens: req.max_new_tokens,
            sampling: req.sampling,
            eos_ids: &req.eos_ids,
            stop_ids: &[],
            logprobs: false,
            keep_logits: false,
        };
        want.push(generate(model.decoder(), &g, |_, _| true)?.tokens);
        streams.push(engine.submit(req, CancellationToken::new())?);
    }
    for (s, want) in streams.into_iter().zip(want) {
        let (tokens, _) = collect(s).await?;
        assert_eq!(tokens, want);
    }
    wait_idle(&engine).await?;
    let stats = engine.stats();
    assert_eq!(stats.scheduler.blocks_used, 0);
    assert!(stats.scheduler.steps > 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_and_dropped_requests_free_their_blocks() -> Result<()> {
    let model = common::load_model("pg1-32")?;
    let case = common::load_case(&model, "pg1-32")?;
    let engine = start(&model, EngineConfig::default())?;
    let cancel = CancellationToken::new();
    let endless = |i| -> Result<EngineRequest> {
        let mut r = request(&case, i, 4000)?;
        r.eos_ids.clear();
        Ok(r)
    };
    let mut kept = engine.submit(endless(0)?, cancel.clone())?;
    let dropped = engine.submit(endless(1)?, CancellationToken::new())?;
    // Wait for a first token, then cancel one and drop the other's receiver.
    let first = kept.events.recv().await.context("no event")?;
    assert!(matches!(first.kind, EventKind::Token { .. }));
    cancel.cancel();
    drop(dropped);
    let mut saw_cancelled = false;
    while let Some(ev) = kept.events.recv().await {
        if let EventKind::Finished(r) = ev.kind {
            saw_cancelled = r == FinishReason::Cancelled;
            break;
        }
    }
    assert!(saw_cancelled);
    wait_idle(&engine).await?;
    let stats = engine.stats();
    assert_eq!(stats.scheduler.blocks_used, 0);
    assert_eq!(stats.cancelled, 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_larger_than_the_cache_is_refused_at_submit_naming_sizes() -> Result<()> {
    let model = common::load_model("pg1-32")?;
    let case = common::load_case(&model, "pg1-32")?;
    let per_token = paligemma_engine::kv_store::kv_layout(model.decoder().config(), model.dtype())
        .bytes_per_token();
    let cfg = EngineConfig {
        kv_cache_bytes: Some(per_token * 16 * 5),
        ..EngineConfig::default()
    };
    let engine = start(&model, cfg)?;
    let err = engine
        .submit(request(&case, 0, 100)?, CancellationToken::new())
        .err()
        .context("accepted a request larger than the cache")?;
    assert!(
        matches!(
            err,
            SubmitError::TooLarge {
                tokens: 120,
                capacity_tokens: 64,
                ..
            }
        ),
        "{err}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_queue_beyond_max_waiting_rejects_requests() -> Result<()> {
    let model = common::load_model("pg1-32")?;
    let case = common::load_case(&model, "pg1-32")?;
    let cfg = EngineConfig {
        max_waiting: 1,
        max_running: 1,
        ..EngineConfig::default()
    };
    let engine = start(&model, cfg)?;
    let mut streams = Vec::new();
    for i in 0..6 {
        streams.push(engine.submit(request(&case, i, 200)?, CancellationToken::new())?);
    }
    let mut rejected = 0;
    for mut s in streams {
        if let Some(ev) = s.events.recv().await
            && let EventKind::Rejected(e) = ev.kind
        {
            assert!(matches!(*e, SubmitError::QueueFull { max_waiting: 1 }));
            rejected += 1;
        }
    }
    assert!(rejected >= 1, "no request was rejected");
    wait_idle(&engine).await?;
    assert_eq!(engine.stats().rejected, rejected);
    assert_eq!(engine.stats().scheduler.blocks_used, 0);
    Ok(())
}
