//! The paged K/V store gives the same greedy tokens as the model's contiguous cache (and as
//! transformers) on every fixture model, with blocks scattered through the pool and with a
//! forked sequence continuing from shared prefix blocks.

mod common;

use anyhow::Result;
use candle_core::{DType, IndexOp, Tensor};
use paligemma_engine::kv_store::{PagedKvStore, kv_layout};
use paligemma_engine::{GenerateRequest, SamplingParams, generate};
use paligemma_kv::{BlockPool, BlockTable, CacheGeometry};
use paligemma_model::{DecoderInput, GemmaDecoder, LogitsRows};

fn contiguous_greedy(decoder: &GemmaDecoder, case: &common::Case, n: usize) -> Result<Vec<u32>> {
    let req = GenerateRequest {
        prompt_ids: &case.ids,
        image_features: &case.image_features,
        max_new_tokens: n,
        sampling: SamplingParams::default(),
        eos_ids: &[],
        stop_ids: &[],
        logprobs: false,
        keep_logits: false,
    };
    Ok(generate(decoder, &req, |_, _| true)?.tokens)
}

/// Runs one forward of `embeds` for the sequence of `table`, reserving its slots first.
fn step(
    decoder: &GemmaDecoder,
    store: &PagedKvStore,
    pool: &mut BlockPool,
    table: &mut BlockTable,
    embeds: &Tensor,
    prefix_len: usize,
) -> Result<u32> {
    let computed = table.num_tokens();
    if let Some(copy) = table.append(pool, embeds.dim(0)?)? {
        store.copy_block(&copy)?;
    }
    let mut kv = store.sequence(table, computed);
    let input = DecoderInput {
        embeds,
        prefix_len,
        logits: LogitsRows::Last,
    };
    let logits = decoder.forward(&input, &mut kv)?.i(0)?;
    Ok(logits.argmax(0)?.to_scalar::<u32>()?)
}

fn paged_greedy_from(
    decoder: &GemmaDecoder,
    store: &PagedKvStore,
    pool: &mut BlockPool,
    table: &mut BlockTable,
    first: u32,
    prefix_len: usize,
    n: usize,
) -> Result<Vec<u32>> {
    let mut tokens = vec![first];
    while tokens.len() < n {
        let embeds = decoder.embed_tokens(&tokens[tokens.len() - 1..])?;
        tokens.push(step(decoder, store, pool, table, &embeds, prefix_len)?);
    }
    Ok(tokens)
}

fn store_for(decoder: &GemmaDecoder, block_size: usize, blocks: usize) -> Result<PagedKvStore> {
    let layout = kv_layout(decoder.config(), DType::F32);
    let budget = layout.bytes_per_token() * (block_size * blocks) as u64;
    let geometry = CacheGeometry::from_budget(layout, block_size, budget)?;
    Ok(PagedKvStore::new(geometry, DType::F32, decoder.device())?)
}

#[test]
fn paged_cache_greedy_tokens_equal_contiguous_cache_and_transformers() -> Result<()> {
    for name in common::CASES {
        let model = common::load_model(name)?;
        let case = common::load_case(&model, name)?;
        let decoder = model.decoder();
        let n = case.tokens.len();
        let want = contiguous_greedy(decoder, &case, n)?;
        assert_eq!(want, case.tokens, "{name}: contiguous vs transformers");

        let store = store_for(decoder, 4, 64)?;
        let mut pool = BlockPool::new(store.geometry().num_blocks)?;
        // Scatter the sequence's blocks: hold every other block while it grows.
        let holes = pool.allocate_many(20)?;
        for b in holes.iter().step_by(2) {
            pool.free(*b)?;
        }
        let mut table = BlockTable::new(4);
        let embeds = model.embed_prompt(&case.ids, &case.image_features)?;
        let first = step(
            decoder,
            &store,
            &mut pool,
            &mut table,
            &embeds,
            case.ids.len(),
        )?;
        let got = paged_greedy_from(
            decoder,
            &store,
            &mut pool,
            &mut table,
            first,
            case.ids.len(),
            n,
        )?;
        assert_eq!(got, want, "{name}: paged vs contiguous");
        table.release(&mut pool)?;
    }
    Ok(())
}

#[test]
fn forked_sequences_continue_identically_from_shared_prefix_blocks() -> Result<()> {
    let name = "pg2-48-window";
    let model = common::load_model(name)?;
    let case = common::load_case(&model, name)?;
    let decoder = model.decoder();
    let n = 12;
    let want = contiguous_greedy(decoder, &case, n)?;

    let store = store_for(decoder, 16, 32)?;
    let mut pool = BlockPool::new(store.geometry().num_blocks)?;
    let mut parent = BlockTable::new(16);
    let embeds = model.embed_prompt(&case.ids, &case.image_features)?;
    let prefix_len = case.ids.len();
    assert!(
        prefix_len % 16 != 0,
        "the test needs a partial shared block"
    );
    let first = step(decoder, &store, &mut pool, &mut parent, &embeds, prefix_len)?;
    let prefix_blocks = pool.num_used();
    let mut child = parent.fork(&mut pool)?;
    assert_eq!(pool.num_used(), prefix_blocks, "a fork takes no new blocks");

    let from_child =
        paged_greedy_from(decoder, &store, &mut pool, &mut child, first, prefix_len, n)?;
    let from_parent = paged_greedy_from(
        decoder,
        &store,
        &mut pool,
        &mut parent,
        first,
        prefix_len,
        n,
    )?;
    assert_eq!(from_child, want);
    assert_eq!(from_parent, want);
    child.release(&mut pool)?;
    parent.release(&mut pool)?;
    assert_eq!(pool.num_used(), 0);
    Ok(())
}
