//! `GemmaDecoder::forward_batch` gives the same f32 logits (≤ 1e-5 relative) as one
//! `forward` per sequence, for batches that mix prefills (with and without a causal suffix)
//! and decode steps of sequences at different lengths, on every fixture model.

mod common;

use anyhow::Result;
use candle_core::{DType, Tensor};
use paligemma_model::{ContiguousKvCache, DecoderInput, GemmaDecoder, KvCache, LogitsRows};

fn relative_error(a: &Tensor, b: &Tensor) -> Result<f32> {
    let max = |t: &Tensor| -> Result<f32> {
        Ok(t.to_dtype(DType::F32)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?)
    };
    anyhow::ensure!(a.dims() == b.dims(), "{:?} vs {:?}", a.dims(), b.dims());
    Ok(max(&(a - b)?)? / max(b)?.max(1e-12))
}

struct Seq {
    embeds: Tensor,
    prefix_len: usize,
    logits: LogitsRows,
}

/// Runs `seqs` once batched and once one by one, from clones of the same caches, and compares.
fn compare(
    decoder: &GemmaDecoder,
    seqs: &[Seq],
    caches: &mut [ContiguousKvCache],
    label: &str,
) -> Result<()> {
    let inputs: Vec<DecoderInput<'_>> = seqs
        .iter()
        .map(|s| DecoderInput {
            embeds: &s.embeds,
            prefix_len: s.prefix_len,
            logits: s.logits,
        })
        .collect();
    let mut single_caches = caches.to_vec();
    let mut views: Vec<&mut dyn KvCache> =
        caches.iter_mut().map(|c| c as &mut dyn KvCache).collect();
    let batched = decoder.forward_batch(&inputs, &mut views)?;
    for (i, (input, kv)) in inputs.iter().zip(single_caches.iter_mut()).enumerate() {
        let single = decoder.forward(input, kv)?;
        let err = relative_error(&batched[i], &single)?;
        assert!(err <= 1e-5, "{label}: sequence {i} relative error {err}");
        assert_eq!(kv.seq_len(), caches[i].seq_len());
    }
    Ok(())
}

#[test]
fn batched_forward_matches_per_sequence_forward_for_mixed_prefill_and_decode() -> Result<()> {
    for name in common::CASES {
        let model = common::load_model(name)?;
        let case = common::load_case(&model, name)?;
        let decoder = model.decoder();
        let layers = decoder.config().num_hidden_layers;
        let full = model.embed_prompt(&case.ids, &case.image_features)?;
        let other_image = (&case.image_features * 0.5)?;
        let other = model.embed_prompt(&case.ids, &other_image)?;
        let p = case.ids.len();

        // Step 1: three prefills of different shapes (one with a causal suffix, all logits).
        let mut caches = vec![ContiguousKvCache::new(layers); 3];
        let step1 = [
            Seq {
                embeds: full.clone(),
                prefix_len: p,
                logits: LogitsRows::Last,
            },
            Seq {
                embeds: other.narrow(0, 0, p - 3)?,
                prefix_len: p - 6,
                logits: LogitsRows::All,
            },
            Seq {
                embeds: full.narrow(0, 0, p - 1)?,
                prefix_len: p - 1,
                logits: LogitsRows::Last,
            },
        ];
        compare(decoder, &step1, &mut caches, name)?;

        // Step 2: two decodes at different lengths, a multi-token chunk, a fresh prefill.
        caches.push(ContiguousKvCache::new(layers));
        let tok = |id: u32| decoder.embed_tokens(&[id]);
        let step2 = [
            Seq {
                embeds: tok(case.tokens[0])?,
                prefix_len: p,
                logits: LogitsRows::Last,
            },
            Seq {
                embeds: decoder.embed_tokens(&case.tokens[..3])?,
                prefix_len: p - 6,
                logits: LogitsRows::All,
            },
            Seq {
                embeds: tok(case.tokens[1])?,
                prefix_len: p - 1,
                logits: LogitsRows::Last,
            },
            Seq {
                embeds: other.clone(),
                prefix_len: p,
                logits: LogitsRows::Last,
            },
        ];
        compare(decoder, &step2, &mut caches, name)?;
    }
    Ok(())
}

#[test]
fn empty_batch_gives_no_logits_and_mismatched_caches_are_refused() -> Result<()> {
    let model = common::load_model("pg1-32")?;
    let decoder = model.decoder();
    assert!(decoder.forward_batch(&[], &mut [])?.is_empty());
    let e = decoder.embed_tokens(&[2])?;
    let input = DecoderInput {
        embeds: &e,
        prefix_len: 1,
        logits: LogitsRows::Last,
    };
    assert!(decoder.forward_batch(&[input], &mut []).is_err());
    Ok(())
}
