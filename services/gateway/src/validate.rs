//! Request validation: a [`GenerateRequest`] becomes a [`ValidRequest`] (parse, don't
//! re-check — the pipeline accepts nothing else), following text-generation-inference's
//! `router/src/validation.rs`. Every field rule is checked and all violations are reported
//! together; the context-length rule needs the tokenized prompt and is checked last.

use paligemma_proto::v1::{GenerateRequest, SamplingParams, WireDtype};
use paligemma_text::{PromptLayout, Tokenizer};

use crate::error::{GatewayError, ValidationError};

/// The bounds a request is checked against.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The one model id served; requests may also leave `model` empty.
    pub model_id: String,
    /// Largest encoded image, in bytes.
    pub max_image_bytes: usize,
    /// Largest prompt, in bytes of UTF-8.
    pub max_prompt_bytes: usize,
    /// `max_new_tokens` for requests that send 0.
    pub default_max_new_tokens: u32,
    /// Largest `max_new_tokens` accepted.
    pub max_new_tokens_limit: u32,
    /// The decoder's `max_position_embeddings`: prompt + generated tokens must fit, in tokens.
    pub context: usize,
    /// Soft-token dtype for requests that leave `wire_dtype` unspecified.
    pub default_wire_dtype: WireDtype,
    /// `<image>` placeholders per image.
    pub num_image_tokens: usize,
}

/// A request that passed every rule, with its prompt laid out.
#[derive(Debug, Clone)]
pub struct ValidRequest {
    /// Encoded image file, 1..=`max_image_bytes` bytes.
    pub image: Vec<u8>,
    /// `<image>`×N, `<bos>`, prompt tokens, `\n`.
    pub prompt_ids: Vec<u32>,
    /// 1..=limit, and `prompt_ids.len() + max_new_tokens <= context`.
    pub max_new_tokens: u32,
    /// `None` = greedy; temperature finite and >= 0, top_p in [0, 1].
    pub sampling: Option<SamplingParams>,
    pub logprobs: bool,
    /// Soft-token dtype asked of the vision tier (may be UNSPECIFIED = its model dtype).
    pub wire_dtype: WireDtype,
}

/// Checks `request` against `limits` and lays out its prompt.
///
/// # Errors
/// [`GatewayError::Invalid`] listing every broken rule; [`GatewayError::Text`] if the
/// tokenizer fails.
pub fn validate(
    request: GenerateRequest,
    limits: &Limits,
    tokenizer: &Tokenizer,
) -> Result<ValidRequest, GatewayError> {
    let mut errors = Vec::new();
    if request.image.is_empty() {
        errors.push(ValidationError::EmptyImage);
    } else if request.image.len() > limits.max_image_bytes {
        errors.push(ValidationError::ImageTooLarge {
            size: request.image.len(),
            limit: limits.max_image_bytes,
        });
    }
    if !request.model.is_empty() && request.model != limits.model_id {
        errors.push(ValidationError::UnknownModel {
            requested: request.model.clone(),
            served: limits.model_id.clone(),
        });
    }
    if request.prompt.len() > limits.max_prompt_bytes {
        errors.push(ValidationError::PromptTooLarge {
            size: request.prompt.len(),
            limit: limits.max_prompt_bytes,
        });
    } else if request.prompt.contains("<image>") {
        errors.push(ValidationError::PromptHasImageToken);
    }
    if request.max_new_tokens > limits.max_new_tokens_limit {
        errors.push(ValidationError::MaxNewTokensOverLimit {
            requested: request.max_new_tokens,
            limit: limits.max_new_tokens_limit,
        });
    }
    if let Some(s) = &request.sampling {
        if !s.temperature.is_finite() || s.temperature < 0.0 {
            errors.push(ValidationError::Temperature(s.temperature));
        }
        if !(0.0..=1.0).contains(&s.top_p) {
            errors.push(ValidationError::TopP(s.top_p));
        }
    }
    let wire_dtype = match WireDtype::try_from(request.wire_dtype) {
        Ok(WireDtype::Unspecified) => limits.default_wire_dtype,
        Ok(dtype) => dtype,
        Err(_) => {
            errors.push(ValidationError::WireDtype(request.wire_dtype));
            WireDtype::Unspecified
        }
    };
    if !errors.is_empty() {
        return Err(GatewayError::Invalid(errors));
    }

    let prompt = PromptLayout::build(tokenizer, &request.prompt, limits.num_image_tokens)?;
    let room = limits.context.saturating_sub(prompt.ids.len());
    let requested = match request.max_new_tokens {
        0 => limits.default_max_new_tokens,
        n => n,
    };
    let max_new_tokens = if request.max_new_tokens == 0 {
        // The default shrinks to fit a long prompt; an explicit value never does.
        requested.min(u32::try_from(room).unwrap_or(u32::MAX))
    } else {
        requested
    };
    if max_new_tokens == 0 || max_new_tokens as usize > room {
        return Err(GatewayError::Invalid(vec![
            ValidationError::ContextOverflow {
                prompt_tokens: prompt.ids.len(),
                max_new_tokens: requested,
                context: limits.context,
            },
        ]));
    }
    Ok(ValidRequest {
        image: request.image,
        prompt_ids: prompt.ids,
        max_new_tokens,
        sampling: request.sampling,
        logprobs: request.logprobs,
        wire_dtype,
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn tokenizer() -> Tokenizer {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/models/pg1-32/tokenizer.json");
        Tokenizer::from_file(&path).unwrap()
    }

    fn limits() -> Limits {
        Limits {
            model_id: "pg1-32".into(),
            max_image_bytes: 10,
            max_prompt_bytes: 100,
            default_max_new_tokens: 64,
            max_new_tokens_limit: 1024,
            context: 100,
            default_wire_dtype: WireDtype::Unspecified,
            num_image_tokens: 16,
        }
    }

    fn request() -> GenerateRequest {
        GenerateRequest {
            image: vec![1, 2, 3],
            prompt: "caption en".into(),
            ..Default::default()
        }
    }

    fn fields(err: GatewayError) -> Vec<&'static str> {
        match err {
            GatewayError::Invalid(errors) => errors.iter().map(ValidationError::field).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_valid_request_gets_its_prompt_layout_and_the_default_max_new_tokens() {
        let tok = tokenizer();
        let valid = validate(request(), &limits(), &tok).unwrap();
        let layout = PromptLayout::build(&tok, "caption en", 16).unwrap();
        assert_eq!(valid.prompt_ids, layout.ids);
        assert_eq!(valid.max_new_tokens, 64);
        assert_eq!(valid.wire_dtype, WireDtype::Unspecified);
    }

    #[test]
    fn every_broken_rule_is_reported_with_its_field() {
        let tok = tokenizer();
        let req = GenerateRequest {
            image: Vec::new(),
            prompt: "<image> what".into(),
            model: "other".into(),
            max_new_tokens: 5000,
            sampling: Some(SamplingParams {
                temperature: f32::NAN,
                top_p: 1.5,
                ..Default::default()
            }),
            wire_dtype: 42,
            ..Default::default()
        };
        let err = validate(req, &limits(), &tok).unwrap_err();
        assert_eq!(
            fields(err),
            [
                "image",
                "model",
                "prompt",
                "max_new_tokens",
                "sampling.temperature",
                "sampling.top_p",
                "wire_dtype"
            ]
        );
    }

    #[test]
    fn the_default_max_new_tokens_shrinks_to_fit_but_an_explicit_one_must_fit() {
        let tok = tokenizer();
        let prompt_len = validate(request(), &limits(), &tok)
            .unwrap()
            .prompt_ids
            .len();
        let mut tight = limits();
        tight.context = prompt_len + 10;
        assert_eq!(
            validate(request(), &tight, &tok).unwrap().max_new_tokens,
            10
        );
        let explicit = GenerateRequest {
            max_new_tokens: 11,
            ..request()
        };
        assert_eq!(
            fields(validate(explicit, &tight, &tok).unwrap_err()),
            ["max_new_tokens"]
        );
        tight.context = prompt_len;
        assert_eq!(
            fields(validate(request(), &tight, &tok).unwrap_err()),
            ["max_new_tokens"]
        );
    }

    #[test]
    fn an_explicit_wire_dtype_overrides_the_default() {
        let tok = tokenizer();
        let mut l = limits();
        l.default_wire_dtype = WireDtype::Bf16;
        assert_eq!(
            validate(request(), &l, &tok).unwrap().wire_dtype,
            WireDtype::Bf16
        );
        let req = GenerateRequest {
            wire_dtype: WireDtype::F32 as i32,
            ..request()
        };
        assert_eq!(validate(req, &l, &tok).unwrap().wire_dtype, WireDtype::F32);
    }
}
