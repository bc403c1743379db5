//! Typed `config.json` of a Hugging Face PaliGemma checkpoint.
//!
//! Hugging Face writes config files as diffs against the config classes' defaults, so an absent
//! key means "the class default" — and the defaults differ between `GemmaConfig` (PaliGemma 1),
//! `Gemma2Config` (PaliGemma 2) and `SiglipVisionConfig`. Parsing therefore happens in two steps:
//! a raw serde struct with optional fields, then [`PaliGemmaConfig::from_json`] resolves every
//! field to a concrete value with the defaults of transformers 5.x (spec §7.3) and validates it.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{ModelError, Result};

/// Which Gemma generation the decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoderFamily {
    /// Gemma 1 (PaliGemma 1): pre-norms only, no softcaps.
    Gemma,
    /// Gemma 2 (PaliGemma 2): post-norms, softcaps, alternating sliding-window layers.
    Gemma2,
}

/// Attention span of one decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerAttention {
    Full,
    /// Keys further than `window` tokens behind the query are masked, except inside the
    /// bidirectional prefix (HF-5 semantics, spec §6.5).
    Sliding {
        window: usize,
    },
}

/// Gemma decoder configuration, every value resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    pub family: DecoderFamily,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// Scores are multiplied by `query_pre_attn_scalar^-0.5` (Gemma 1: `head_dim^-0.5`).
    pub query_pre_attn_scalar: f64,
    /// Gemma 2 only: `cap * tanh(scores / cap)` before the mask.
    pub attn_logit_softcapping: Option<f64>,
    /// Gemma 2 only: `cap * tanh(logits / cap)` on the final logits.
    pub final_logit_softcapping: Option<f64>,
    /// One entry per layer.
    pub layer_attention: Vec<LayerAttention>,
}

/// SigLIP vision tower configuration, every value resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub layer_norm_eps: f64,
}

impl VisionConfig {
    /// Patches per side of the (square) input image.
    pub fn patches_per_side(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Number of soft tokens one image becomes: (image_size / patch_size)².
    pub fn num_image_tokens(&self) -> usize {
        self.patches_per_side() * self.patches_per_side()
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// A PaliGemma checkpoint's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct PaliGemmaConfig {
    /// Token id of `<image>` (257152 in official checkpoints).
    pub image_token_index: u32,
    /// Width of the projector output; equals `text.hidden_size`.
    pub projection_dim: usize,
    pub bos_token_id: u32,
    /// Generation stops at any of these.
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: u32,
    pub text: TextConfig,
    pub vision: VisionConfig,
}

#[derive(Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    image_token_index: Option<u32>,
    image_token_id: Option<u32>,
    projection_dim: Option<usize>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<Value>,
    pad_token_id: Option<u32>,
    text_config: Option<Value>,
    vision_config: Option<Value>,
}

#[derive(Deserialize, Default)]
struct RawText {
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    hidden_act: Option<String>,
    hidden_activation: Option<String>,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_parameters: Option<Value>,
    rope_scaling: Option<Value>,
    attention_bias: Option<bool>,
    query_pre_attn_scalar: Option<f64>,
    attn_logit_softcapping: Option<f64>,
    final_logit_softcapping: Option<f64>,
    sliding_window: Option<usize>,
    layer_types: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
struct RawVision {
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_channels: Option<usize>,
    image_size: Option<usize>,
    patch_size: Option<usize>,
    layer_norm_eps: Option<f64>,
    hidden_act: Option<String>,
    vision_use_head: Option<bool>,
}

impl PaliGemmaConfig {
    /// Reads and resolves `config.json`.
    ///
    /// # Errors
    /// Unreadable file, invalid JSON, unknown `model_type`, unsupported or inconsistent values.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::BadFile {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::from_json(&text)
    }

    /// Resolves a `config.json` document, filling absent keys with the transformers defaults.
    ///
    /// # Errors
    /// Invalid JSON, unknown `model_type`, unsupported or inconsistent values.
    pub fn from_json(json: &str) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(json)
            .map_err(|e| ModelError::config("<root>", format!("invalid JSON: {e}")))?;
        match raw.model_type.as_deref() {
            Some("paligemma") => {}
            Some(other) => {
                return Err(ModelError::config(
                    "model_type",
                    format!("`{other}` is not a PaliGemma checkpoint (expected \"paligemma\")"),
                ));
            }
            None => return Err(ModelError::config("model_type", "missing")),
        }
        let text = resolve_text(raw.text_config)?;
        let vision = resolve_vision(raw.vision_config)?;
        let image_token_index = raw
            .image_token_index
            .or(raw.image_token_id)
            .unwrap_or(256_000);
        let eos_token_ids = match raw.eos_token_id {
            None => vec![1],
            Some(Value::Number(n)) => vec![as_u32(&n, "eos_token_id")?],
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::Number(n) => as_u32(n, "eos_token_id"),
                    _ => Err(ModelError::config("eos_token_id", "expected integers")),
                })
                .collect::<Result<_>>()?,
            Some(_) => {
                return Err(ModelError::config(
                    "eos_token_id",
                    "expected an integer or a list of integers",
                ));
            }
        };
        let cfg = Self {
            image_token_index,
            projection_dim: raw.projection_dim.unwrap_or(text.hidden_size),
            bos_token_id: raw.bos_token_id.unwrap_or(2),
            eos_token_ids,
            pad_token_id: raw.pad_token_id.unwrap_or(0),
            text,
            vision,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Number of `<image>` tokens (= soft tokens) per image.
    pub fn num_image_tokens(&self) -> usize {
        self.vision.num_image_tokens()
    }

    fn validate(&self) -> Result<()> {
        let t = &self.text;
        let v = &self.vision;
        let positive = [
            ("text_config.hidden_size", t.hidden_size),
            ("text_config.intermediate_size", t.intermediate_size),
            ("text_config.num_hidden_layers", t.num_hidden_layers),
            ("text_config.num_attention_heads", t.num_attention_heads),
            ("text_config.num_key_value_heads", t.num_key_value_heads),
            ("text_config.head_dim", t.head_dim),
            ("text_config.vocab_size", t.vocab_size),
            ("vision_config.hidden_size", v.hidden_size),
            ("vision_config.intermediate_size", v.intermediate_size),
            ("vision_config.num_hidden_layers", v.num_hidden_layers),
            ("vision_config.num_attention_heads", v.num_attention_heads),
            ("vision_config.image_size", v.image_size),
            ("vision_config.patch_size", v.patch_size),
            ("vision_config.num_channels", v.num_channels),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(ModelError::config(field, "must be positive"));
            }
        }
        if !t.num_attention_heads.is_multiple_of(t.num_key_value_heads) {
            return Err(ModelError::config(
                "text_config.num_key_value_heads",
                format!(
                    "{} query heads are not a multiple of {} key/value heads",
                    t.num_attention_heads, t.num_key_value_heads
                ),
            ));
        }
        if !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return Err(ModelError::config(
                "vision_config.num_attention_heads",
                format!(
                    "hidden_size {} is not divisible by {} heads",
                    v.hidden_size, v.num_attention_heads
                ),
            ));
        }
        if !v.image_size.is_multiple_of(v.patch_size) {
            return Err(ModelError::config(
                "vision_config.patch_size",
                format!(
                    "image_size {} is not a multiple of patch_size {}",
                    v.image_size, v.patch_size
                ),
            ));
        }
        if self.projection_dim != t.hidden_size {
            return Err(ModelError::config(
                "projection_dim",
                format!(
                    "{} differs from text_config.hidden_size {}: the projector must output decoder-width rows",
                    self.projection_dim, t.hidden_size
                ),
            ));
        }
        if self.image_token_index as usize >= t.vocab_size {
            return Err(ModelError::config(
                "image_token_index",
                format!(
                    "{} is outside the text vocabulary ({} rows)",
                    self.image_token_index, t.vocab_size
                ),
            ));
        }
        if !t.head_dim.is_multiple_of(2) {
            return Err(ModelError::config(
                "text_config.head_dim",
                "RoPE needs an even head_dim",
            ));
        }
        Ok(())
    }
}

fn as_u32(n: &serde_json::Number, field: &str) -> Result<u32> {
    n.as_u64()
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| ModelError::config(field, format!("{n} is not a token id")))
}

fn parse_section<T: for<'de> Deserialize<'de> + Default>(
    value: Option<Value>,
    field: &str,
) -> Result<T> {
    match value {
        None | Some(Value::Null) => Ok(T::default()),
        Some(v) => serde_json::from_value(v).map_err(|e| ModelError::config(field, e.to_string())),
    }
}

/// `hidden_act` / `hidden_activation`: every spelling must mean GELU with the tanh approximation.
fn check_activation(field: &str, value: Option<&str>) -> Result<()> {
    match value {
        // Legacy Gemma configs say "gelu" but were trained with the tanh approximation (spec §11).
        None | Some("gelu_pytorch_tanh" | "gelu_tanh" | "gelu" | "gelu_new" | "gelu_fast") => {
            Ok(())
        }
        Some(other) => Err(ModelError::config(
            field,
            format!("activation `{other}` is not supported (PaliGemma uses gelu_pytorch_tanh)"),
        )),
    }
}

fn resolve_text(value: Option<Value>) -> Result<TextConfig> {
    let raw: RawText = parse_section(value, "text_config")?;
    let family = match raw.model_type.as_deref() {
        Some("gemma") | None => DecoderFamily::Gemma,
        Some("gemma2") => DecoderFamily::Gemma2,
        Some(other) => {
            return Err(ModelError::config(
                "text_config.model_type",
                format!("decoder `{other}` is not supported (expected \"gemma\" or \"gemma2\")"),
            ));
        }
    };
    if let (Some(a), Some(b)) = (&raw.hidden_act, &raw.hidden_activation)
        && a != b
    {
        return Err(ModelError::config(
            "text_config.hidden_activation",
            format!("conflicts with hidden_act (`{b}` vs `{a}`)"),
        ));
    }
    check_activation("text_config.hidden_act", raw.hidden_act.as_deref())?;
    check_activation(
        "text_config.hidden_activation",
        raw.hidden_activation.as_deref(),
    )?;
    if raw.attention_bias == Some(true) {
        return Err(ModelError::config(
            "text_config.attention_bias",
            "attention biases are not supported",
        ));
    }
    let rope_theta = resolve_rope_theta(&raw)?;
    // The PaliGemma config class builds a Gemma 2B-shaped text config when none is given;
    // the individual defaults below are those of GemmaConfig / Gemma2Config (transformers 5.x).
    let gemma2 = family == DecoderFamily::Gemma2;
    let head_dim = raw.head_dim.unwrap_or(256);
    let num_hidden_layers = raw
        .num_hidden_layers
        .unwrap_or(if gemma2 { 26 } else { 28 });
    let layer_attention = if gemma2 {
        let window = raw.sliding_window.unwrap_or(4096);
        let types: Vec<String> = raw.layer_types.clone().unwrap_or_else(|| {
            (0..num_hidden_layers)
                .map(|i| {
                    if (i + 1) % 2 == 1 {
                        "sliding_attention"
                    } else {
                        "full_attention"
                    }
                    .to_string()
                })
                .collect()
        });
        if types.len() != num_hidden_layers {
            return Err(ModelError::config(
                "text_config.layer_types",
                format!("{} entries for {} layers", types.len(), num_hidden_layers),
            ));
        }
        types
            .iter()
            .map(|t| match t.as_str() {
                "sliding_attention" => Ok(LayerAttention::Sliding { window }),
                "full_attention" => Ok(LayerAttention::Full),
                other => Err(ModelError::config(
                    "text_config.layer_types",
                    format!("unknown layer type `{other}`"),
                )),
            })
            .collect::<Result<Vec<_>>>()?
    } else {
        vec![LayerAttention::Full; num_hidden_layers]
    };
    if layer_attention
        .iter()
        .any(|l| matches!(l, LayerAttention::Sliding { window: 0 }))
    {
        return Err(ModelError::config(
            "text_config.sliding_window",
            "must be positive",
        ));
    }
    let positive_cap = |v: Option<f64>| v.filter(|c| *c > 0.0);
    Ok(TextConfig {
        family,
        vocab_size: raw.vocab_size.unwrap_or(256_000),
        hidden_size: raw.hidden_size.unwrap_or(if gemma2 { 2304 } else { 3072 }),
        intermediate_size: raw
            .intermediate_size
            .unwrap_or(if gemma2 { 9216 } else { 24576 }),
        num_hidden_layers,
        num_attention_heads: raw
            .num_attention_heads
            .unwrap_or(if gemma2 { 8 } else { 16 }),
        num_key_value_heads: raw
            .num_key_value_heads
            .unwrap_or(if gemma2 { 4 } else { 16 }),
        head_dim,
        max_position_embeddings: raw.max_position_embeddings.unwrap_or(8192),
        rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
        rope_theta,
        query_pre_attn_scalar: if gemma2 {
            raw.query_pre_attn_scalar.unwrap_or(256.0)
        } else {
            head_dim as f64
        },
        attn_logit_softcapping: if gemma2 {
            positive_cap(raw.attn_logit_softcapping.or(Some(50.0)))
        } else {
            None
        },
        final_logit_softcapping: if gemma2 {
            positive_cap(raw.final_logit_softcapping.or(Some(30.0)))
        } else {
            None
        },
        layer_attention,
    })
}

/// RoPE base: `rope_theta` (4.x) or `rope_parameters.rope_theta` (5.x). Only the default
/// (unscaled) rope type exists in PaliGemma checkpoints.
fn resolve_rope_theta(raw: &RawText) -> Result<f64> {
    let mut theta = raw.rope_theta;
    for (field, params) in [
        ("rope_parameters", &raw.rope_parameters),
        ("rope_scaling", &raw.rope_scaling),
    ] {
        let Some(Value::Object(map)) = params else {
            continue;
        };
        if let Some(kind) = map.get("rope_type").or_else(|| map.get("type"))
            && kind.as_str() != Some("default")
        {
            return Err(ModelError::config(
                format!("text_config.{field}.rope_type"),
                format!("{kind} is not supported (only the default RoPE)"),
            ));
        }
        if let Some(t) = map.get("rope_theta").and_then(Value::as_f64) {
            theta = Some(t);
        }
    }
    let theta = theta.unwrap_or(10_000.0);
    if theta <= 0.0 {
        return Err(ModelError::config(
            "text_config.rope_theta",
            "must be positive",
        ));
    }
    Ok(theta)
}

fn resolve_vision(value: Option<Value>) -> Result<VisionConfig> {
    let raw: RawVision = parse_section(value, "vision_config")?;
    check_activation("vision_config.hidden_act", raw.hidden_act.as_deref())?;
    if raw.vision_use_head == Some(true) {
        // The pooling head is unused by PaliGemma; its weights are simply not loaded.
        tracing::debug!("vision_config.vision_use_head is true; the MAP head is ignored");
    }
    Ok(VisionConfig {
        hidden_size: raw.hidden_size.unwrap_or(768),
        intermediate_size: raw.intermediate_size.unwrap_or(3072),
        num_hidden_layers: raw.num_hidden_layers.unwrap_or(12),
        num_attention_heads: raw.num_attention_heads.unwrap_or(12),
        num_channels: raw.num_channels.unwrap_or(3),
        image_size: raw.image_size.unwrap_or(224),
        patch_size: raw.patch_size.unwrap_or(16),
        layer_norm_eps: raw.layer_norm_eps.unwrap_or(1e-6),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The config.json of google/paligemma-3b-pt-224 as published (diff against class defaults).
    const PG1_224: &str = r#"{
      "architectures": ["PaliGemmaForConditionalGeneration"],
      "bos_token_id": 2, "eos_token_id": 1, "hidden_size": 2048, "ignore_index": -100,
      "image_token_index": 257152, "model_type": "paligemma", "pad_token_id": 0,
      "projection_dim": 2048,
      "text_config": {"hidden_size": 2048, "intermediate_size": 16384, "model_type": "gemma",
        "num_attention_heads": 8, "num_hidden_layers": 18, "num_image_tokens": 256,
        "num_key_value_heads": 1, "torch_dtype": "float32", "vocab_size": 257216},
      "torch_dtype": "float32", "transformers_version": "4.41.0.dev0",
      "vision_config": {"hidden_size": 1152, "intermediate_size": 4304, "model_type": "siglip_vision_model",
        "num_attention_heads": 16, "num_hidden_layers": 27, "num_image_tokens": 256, "patch_size": 14,
        "projection_dim": 2048, "projector_hidden_act": "gelu_fast", "vision_use_head": false},
      "vocab_size": 257152
    }"#;

    #[test]
    fn official_pg1_config_resolves_with_class_defaults() {
        let c = PaliGemmaConfig::from_json(PG1_224).unwrap();
        assert_eq!(c.text.family, DecoderFamily::Gemma);
        assert_eq!(c.text.head_dim, 256);
        assert_eq!(c.text.rope_theta, 10_000.0);
        assert_eq!(c.text.query_pre_attn_scalar, 256.0);
        assert_eq!(c.text.attn_logit_softcapping, None);
        assert_eq!(
            c.vision.image_size, 224,
            "224 variants omit image_size; the class default applies"
        );
        assert_eq!(c.num_image_tokens(), 256);
        assert_eq!(c.image_token_index, 257_152);
        assert_eq!(c.eos_token_ids, vec![1]);
    }

    #[test]
    fn gemma2_defaults_alternate_sliding_layers_starting_with_even() {
        let json = r#"{"model_type":"paligemma","projection_dim":2304,"image_token_index":257152,
          "text_config":{"model_type":"gemma2","vocab_size":257216,"num_hidden_layers":4},
          "vision_config":{"patch_size":14,"image_size":896}}"#;
        let c = PaliGemmaConfig::from_json(json).unwrap();
        assert_eq!(c.text.family, DecoderFamily::Gemma2);
        assert_eq!(c.text.hidden_size, 2304);
        assert_eq!(c.text.attn_logit_softcapping, Some(50.0));
        assert_eq!(c.text.final_logit_softcapping, Some(30.0));
        let sliding = LayerAttention::Sliding { window: 4096 };
        assert_eq!(
            c.text.layer_attention,
            vec![sliding, LayerAttention::Full, sliding, LayerAttention::Full]
        );
        assert_eq!(c.num_image_tokens(), 4096);
    }

    #[test]
    fn unknown_model_type_is_named_in_the_error() {
        let err = PaliGemmaConfig::from_json(r#"{"model_type":"llava"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("model_type") && err.contains("llava"), "{err}");
        let err = PaliGemmaConfig::from_json(
            r#"{"model_type":"paligemma","text_config":{"model_type":"llama"}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("text_config.model_type"), "{err}");
    }

    #[test]
    fn inconsistent_shapes_are_rejected_with_the_field_name() {
        let json = r#"{"model_type":"paligemma","projection_dim":2048,
          "text_config":{"hidden_size":2048,"num_attention_heads":8,"num_key_value_heads":3,"vocab_size":257216},
          "vision_config":{"patch_size":14}}"#;
        let err = PaliGemmaConfig::from_json(json).unwrap_err().to_string();
        assert!(err.contains("num_key_value_heads"), "{err}");
        let json = r#"{"model_type":"paligemma","projection_dim":1000,"image_token_index":5,
          "text_config":{"hidden_size":2048,"vocab_size":300}, "vision_config":{"patch_size":14}}"#;
        let err = PaliGemmaConfig::from_json(json).unwrap_err().to_string();
        assert!(err.contains("projection_dim"), "{err}");
    }

    #[test]
    fn rope_parameters_of_transformers_5_are_read() {
        let json = r#"{"model_type":"paligemma","projection_dim":64,"image_token_index":5,
          "text_config":{"hidden_size":64,"vocab_size":300,"head_dim":16,
             "rope_parameters":{"rope_type":"default","rope_theta":500.0}},
          "vision_config":{"patch_size":8,"image_size":32}}"#;
        assert_eq!(
            PaliGemmaConfig::from_json(json).unwrap().text.rope_theta,
            500.0
        );
        let bad = json.replace("\"default\"", "\"linear\"");
        assert!(
            PaliGemmaConfig::from_json(&bad)
                .unwrap_err()
                .to_string()
                .contains("rope_type")
        );
    }
}
