//! The single-sequence generation loop: prefill the prompt (image soft tokens + text), then one
//! token per step until an end-of-sequence id or the token budget.

use candle_core::{IndexOp, Tensor};
use paligemma_model::{ContiguousKvCache, DecoderInput, GemmaDecoder, LogitsRows};

use crate::error::EngineError;
use crate::sampler::{Sampler, SamplingParams, logprob};

/// One generation request.
#[derive(Debug, Clone)]
pub struct GenerateRequest<'a> {
    /// Full prompt ids: `<image>`×K, `<bos>`, prompt, `\n` (see `paligemma_text::PromptLayout`).
    pub prompt_ids: &'a [u32],
    /// Soft tokens `[K, D]` for the `<image>` placeholders (from `VisionEncoder::encode`, locally
    /// or received from the vision tier); any float dtype, cast to the decoder's.
    pub image_features: &'a Tensor,
    /// Upper bound on generated tokens (≥ 1).
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// The model's end-of-sequence ids (finish reason [`FinishReason::Eos`]).
    pub eos_ids: &'a [u32],
    /// Caller-supplied ids that also end generation (finish reason [`FinishReason::Stop`]).
    pub stop_ids: &'a [u32],
    /// Record `log p(token)` of each generated token.
    pub logprobs: bool,
    /// Keep every step's full logits row (for `--dump` and tests; costs vocab × 4 bytes a step).
    pub keep_logits: bool,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence id was generated (it is the last entry of `tokens`).
    Eos,
    /// `max_new_tokens` were generated.
    Length,
    /// A caller-supplied stop id was generated (the last entry of `tokens`).
    Stop,
    /// The token callback asked to stop (client gone, deadline passed).
    Cancelled,
}

impl FinishReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Eos => "eos",
            Self::Length => "length",
            Self::Stop => "stop",
            Self::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone)]
pub struct GenerateOutput {
    /// Generated ids, including the stop id if one ended generation.
    pub tokens: Vec<u32>,
    /// `log p` of each generated token under the unmodified distribution, if requested.
    pub logprobs: Option<Vec<f32>>,
    pub finish_reason: FinishReason,
    /// `step_logits[t]`: the f32 logits token `t` was chosen from, if `keep_logits`.
    pub step_logits: Vec<Vec<f32>>,
}

/// Runs generation on `decoder` (only the Gemma half of PaliGemma: the vision tier may run
/// elsewhere), calling `on_token(id, logprob)` with each id as soon as it is chosen (`logprob`
/// only when requested); a callback returning `false` cancels generation before the next step.
/// The position limit is the decoder config's `max_position_embeddings`; the KV cache is a
/// fresh [`ContiguousKvCache`] dropped on return.
///
/// # Errors
/// Invalid request fields (zero or too many tokens for the model's position limit, bad sampling
/// parameters, feature/placeholder mismatch), or a model failure.
pub fn generate(
    decoder: &GemmaDecoder,
    req: &GenerateRequest<'_>,
    mut on_token: impl FnMut(u32, Option<f32>) -> bool,
) -> Result<GenerateOutput, EngineError> {
    req.sampling.validate()?;
    if req.max_new_tokens == 0 {
        return Err(EngineError::invalid("max_new_tokens", "must be at least 1"));
    }
    let limit = decoder.config().max_position_embeddings;
    let total = req.prompt_ids.len().saturating_add(req.max_new_tokens);
    if total > limit {
        return Err(EngineError::invalid(
            "max_new_tokens",
            format!(
                "prompt of {} tokens + {} new tokens exceeds the model's position limit of {limit}",
                req.prompt_ids.len(),
                req.max_new_tokens
            ),
        ));
    }
    let prefix_len = req.prompt_ids.len();
    let mut kv = ContiguousKvCache::new(decoder.config().num_hidden_layers);
    let mut sampler = Sampler::new(req.sampling);
    let mut out = GenerateOutput {
        tokens: Vec::new(),
        logprobs: req.logprobs.then(Vec::new),
        finish_reason: FinishReason::Length,
        step_logits: Vec::new(),
    };

    let mut embeds = decoder.embed_prompt(req.prompt_ids, req.image_features)?;
    loop {
        let input = DecoderInput {
            embeds: &embeds,
            prefix_len,
            logits: LogitsRows::Last,
        };
        let logits = decoder.forward(&input, &mut kv)?.i(0)?.to_vec1::<f32>()?;
        let token = sampler.sample(&logits);
        let lp = req.logprobs.then(|| logprob(&logits, token));
        if let (Some(lps), Some(lp)) = (out.logprobs.as_mut(), lp) {
            lps.push(lp);
        }
        if req.keep_logits {
            out.step_logits.push(logits);
        }
        out.tokens.push(token);
        let keep_going = on_token(token, lp);
        if req.eos_ids.contains(&token) {
            out.finish_reason = FinishReason::Eos;
            break;
        }
        if req.stop_ids.contains(&token) {
            out.finish_reason = FinishReason::Stop;
            break;
        }
        if !keep_going {
            out.finish_reason = FinishReason::Cancelled;
            break;
        }
        if out.tokens.len() >= req.max_new_tokens {
            break;
        }
        embeds = decoder.embed_tokens(&[token])?;
    }
    Ok(out)
}
