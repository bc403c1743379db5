//! Checking a `DecodeRequest` against the model and the replica's limits, once: the result,
//! [`ValidRequest`], is the only thing generation accepts (TGI `validation.rs`'s "parse, don't
//! re-check").

use paligemma_engine::SamplingParams;
use paligemma_proto::v1::DecodeRequest;

use crate::error::DecoderError;

/// What requests are checked against: the model's vocabulary and positions, the replica's
/// token budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Rows of the embedding table; every id must be below it.
    pub vocab_size: usize,
    /// Id of the `<image>` placeholder.
    pub image_token_id: u32,
    /// Prompt + generated tokens must fit (tokens).
    pub max_position_embeddings: usize,
    /// Largest `max_new_tokens` accepted (tokens).
    pub max_new_tokens_limit: usize,
}

/// A `DecodeRequest` whose every field is in range for the model and matches the soft tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRequest {
    /// Non-empty, every id below the vocabulary size, as many `<image>` ids as soft-token rows.
    pub prompt_ids: Vec<u32>,
    /// In `1..=max_new_tokens_limit`, and prompt + this ≤ `max_position_embeddings`.
    pub max_new_tokens: usize,
    /// Validated sampling (`top_p` 0 already mapped to 1 = off).
    pub sampling: SamplingParams,
    /// Every id below the vocabulary size.
    pub stop_ids: Vec<u32>,
    /// Return `log p` of each generated token.
    pub logprobs: bool,
    /// The caller's id, for logs and traces only.
    pub request_id: String,
}

/// Checks `req` for a stream of `soft_token_rows` soft tokens.
///
/// # Errors
/// [`DecoderError::Invalid`] naming the first field out of range and its bound.
pub fn validate(
    req: DecodeRequest,
    soft_token_rows: usize,
    limits: &RequestLimits,
) -> Result<ValidRequest, DecoderError> {
    let vocab = limits.vocab_size;
    if req.prompt_ids.is_empty() {
        return Err(DecoderError::invalid(
            "prompt_ids",
            "must not be empty (<image> × N, <bos>, prompt, \"\\n\")",
        ));
    }
    check_ids("prompt_ids", &req.prompt_ids, vocab)?;
    let image_ids = req
        .prompt_ids
        .iter()
        .filter(|&&id| id == limits.image_token_id)
        .count();
    if image_ids != soft_token_rows {
        return Err(DecoderError::invalid(
            "prompt_ids",
            format!(
                "{image_ids} <image> ids (id {}) but {soft_token_rows} soft-token rows were sent",
                limits.image_token_id
            ),
        ));
    }
    let prompt_len = req.prompt_ids.len();
    let max_pos = limits.max_position_embeddings;
    if prompt_len >= max_pos {
        return Err(DecoderError::invalid(
            "prompt_ids",
            format!(
                "{prompt_len} tokens leave no room for new tokens under the model's position limit of {max_pos}"
            ),
        ));
    }
    let max_new_tokens = req.max_new_tokens as usize;
    if max_new_tokens == 0 || max_new_tokens > limits.max_new_tokens_limit {
        return Err(DecoderError::invalid(
            "max_new_tokens",
            format!(
                "{max_new_tokens} is not in 1..={}",
                limits.max_new_tokens_limit
            ),
        ));
    }
    if prompt_len + max_new_tokens > max_pos {
        return Err(DecoderError::invalid(
            "max_new_tokens",
            format!(
                "prompt of {prompt_len} tokens + {max_new_tokens} new tokens exceeds the model's position limit of {max_pos}"
            ),
        ));
    }
    check_ids("stop_ids", &req.stop_ids, vocab)?;
    let sampling = sampling(req.sampling.unwrap_or_default())?;
    Ok(ValidRequest {
        prompt_ids: req.prompt_ids,
        max_new_tokens,
        sampling,
        stop_ids: req.stop_ids,
        logprobs: req.logprobs,
        request_id: req.request_id,
    })
}

fn check_ids(field: &'static str, ids: &[u32], vocab: usize) -> Result<(), DecoderError> {
    match ids
        .iter()
        .enumerate()
        .find(|(_, id)| **id as usize >= vocab)
    {
        Some((i, id)) => Err(DecoderError::invalid(
            field,
            format!("id {id} at index {i} is outside the vocabulary of {vocab} tokens"),
        )),
        None => Ok(()),
    }
}

fn sampling(p: paligemma_proto::v1::SamplingParams) -> Result<SamplingParams, DecoderError> {
    if !p.temperature.is_finite() || p.temperature < 0.0 {
        return Err(DecoderError::invalid(
            "sampling.temperature",
            format!("{} must be finite and >= 0 (0 = greedy)", p.temperature),
        ));
    }
    if !(0.0..=1.0).contains(&p.top_p) {
        return Err(DecoderError::invalid(
            "sampling.top_p",
            format!("{} must be in [0, 1] (0 or 1 = off)", p.top_p),
        ));
    }
    Ok(SamplingParams {
        temperature: p.temperature,
        top_k: p.top_k as usize,
        top_p: if p.top_p == 0.0 { 1.0 } else { p.top_p },
        seed: p.seed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A change that breaks one field of a good request.
    type Mutation = fn(&mut DecodeRequest);

    const LIMITS: RequestLimits = RequestLimits {
        vocab_size: 100,
        image_token_id: 99,
        max_position_embeddings: 64,
        max_new_tokens_limit: 32,
    };

    fn good() -> DecodeRequest {
        DecodeRequest {
            prompt_ids: vec![99, 99, 2, 10, 11, 12],
            max_new_tokens: 8,
            ..DecodeRequest::default()
        }
    }

    fn field_of(req: DecodeRequest) -> String {
        let err = validate(req, 2, &LIMITS).unwrap_err();
        err.to_string()
    }

    #[test]
    fn a_well_formed_request_defaults_to_greedy_without_top_p() {
        let valid = validate(good(), 2, &LIMITS).unwrap();
        assert_eq!(valid.max_new_tokens, 8);
        assert!(valid.sampling.is_greedy());
        assert_eq!(valid.sampling.top_p, 1.0);
        valid.sampling.validate().unwrap();
    }

    #[test]
    fn each_out_of_range_field_is_named() {
        let cases: [(Mutation, &str); 10] = [
            (|r| r.prompt_ids.clear(), "prompt_ids: must not be empty"),
            (|r| r.prompt_ids[3] = 100, "prompt_ids: id 100 at index 3"),
            (|r| r.prompt_ids.push(99), "prompt_ids: 3 <image> ids"),
            (|r| r.prompt_ids.resize(64, 5), "prompt_ids: 64 tokens"),
            (
                |r| r.max_new_tokens = 0,
                "max_new_tokens: 0 is not in 1..=32",
            ),
            (|r| r.max_new_tokens = 33, "max_new_tokens: 33 is not in"),
            (
                |r| {
                    r.prompt_ids.resize(40, 5);
                    r.max_new_tokens = 30;
                },
                "max_new_tokens: prompt of 40 tokens + 30",
            ),
            (|r| r.stop_ids = vec![1, 500], "stop_ids: id 500 at index 1"),
            (
                |r| {
                    r.sampling = Some(paligemma_proto::v1::SamplingParams {
                        temperature: f32::NAN,
                        ..Default::default()
                    });
                },
                "sampling.temperature: NaN",
            ),
            (
                |r| {
                    r.sampling = Some(paligemma_proto::v1::SamplingParams {
                        top_p: 1.5,
                        ..Default::default()
                    });
                },
                "sampling.top_p: 1.5",
            ),
        ];
        for (mutate, want) in cases {
            let mut req = good();
            mutate(&mut req);
            let got = field_of(req);
            assert!(got.starts_with(want), "{got} (wanted {want})");
        }
    }

    #[test]
    fn negative_temperature_is_refused() {
        let mut req = good();
        req.sampling = Some(paligemma_proto::v1::SamplingParams {
            temperature: -0.5,
            ..Default::default()
        });
        assert!(field_of(req).starts_with("sampling.temperature: -0.5"));
    }
}
