//! The image preprocessing configuration, read from a Hugging Face `preprocessor_config.json`.
//!
//! This module owns [`PreprocessorConfig`]. It follows `transformers`' `SiglipImageProcessor`
//! (the image processor PaliGemma's processor wraps): keys that are absent, or `null`, take the
//! SigLIP class defaults (`do_resize = true`, `size = {"height": 224, "width": 224}`,
//! `resample = 3` (bicubic), `do_rescale = true`, `rescale_factor = 1/255`,
//! `do_normalize = true`, `image_mean = image_std = [0.5, 0.5, 0.5]`, `do_convert_rgb = true`).
//! Keys this crate does not use (`processor_class`, `image_processor_type`, ...) are ignored.
//! A key with the wrong type or an unsupported value is an [`ImageError::ConfigField`] naming
//! the key.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::ImageError;
use crate::resize::{Filter, Resampler};

/// SigLIP's default `rescale_factor`, `1/255` as written by Hugging Face.
pub const DEFAULT_RESCALE_FACTOR: f64 = 1.0 / 255.0;

/// Largest side length accepted in `size` (guards against absurd allocations).
pub const MAX_SIDE: u32 = 16384;

/// Image preprocessing settings (see the module docs for the defaults).
///
/// Read Hugging Face files with [`PreprocessorConfig::from_json_str`] /
/// [`PreprocessorConfig::from_file`]; the serde derives use this struct's own flat layout
/// (`height`/`width` fields, `resample` as the PIL code) and are meant for round-tripping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreprocessorConfig {
    /// Resize to `height` x `width` (squash, no aspect-ratio preservation, no crop).
    pub do_resize: bool,
    /// Output height in pixels (`size.height`).
    pub height: u32,
    /// Output width in pixels (`size.width`).
    pub width: u32,
    /// Resampling filter (`resample`, PIL enum: 0 nearest, 1 lanczos, 2 bilinear, 3 bicubic,
    /// 4 box, 5 hamming).
    #[serde(with = "filter_code")]
    pub resample: Filter,
    /// Multiply pixel values by `rescale_factor`.
    pub do_rescale: bool,
    /// Usually `1/255`.
    pub rescale_factor: f64,
    /// Subtract `image_mean` and divide by `image_std`, per channel (R, G, B).
    pub do_normalize: bool,
    /// Per-channel mean (after rescaling).
    pub image_mean: [f64; 3],
    /// Per-channel standard deviation (after rescaling); never zero.
    pub image_std: [f64; 3],
    /// Convert to RGB first. Decoding always yields RGB; when this is true,
    /// [`crate::preprocess_bytes`] composites transparent images over white as `transformers`'
    /// `convert_to_rgb` does, and when false it drops alpha.
    pub do_convert_rgb: bool,
    /// `image_seq_length` (number of image tokens) when the file states it.
    pub image_seq_length: Option<usize>,
    /// Whose resize arithmetic to reproduce. Not a Hugging Face key: [`Resampler::Torchvision`]
    /// (transformers 5.x's default backend, bit-exact with it) unless `image_processor_type`
    /// names the PIL backend (`SiglipImageProcessorPil`) or the filter is one torchvision lacks;
    /// the two differ by at most two grey levels.
    #[serde(default)]
    pub resampler: Resampler,
}

mod filter_code {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use crate::resize::Filter;

    pub(super) fn serialize<S: Serializer>(f: &Filter, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(f.pil_code())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Filter, D::Error> {
        let code = i64::deserialize(d)?;
        Filter::from_pil(code).ok_or_else(|| D::Error::custom(format!("unknown PIL filter {code}")))
    }
}

impl Default for PreprocessorConfig {
    fn default() -> Self {
        Self::square(224)
    }
}

impl PreprocessorConfig {
    /// SigLIP defaults with a square output of `size` x `size` (224, 448 or 896 for PaliGemma).
    pub fn square(size: u32) -> Self {
        Self {
            do_resize: true,
            height: size,
            width: size,
            resample: Filter::Bicubic,
            do_rescale: true,
            rescale_factor: DEFAULT_RESCALE_FACTOR,
            do_normalize: true,
            image_mean: [0.5; 3],
            image_std: [0.5; 3],
            do_convert_rgb: true,
            image_seq_length: None,
            // transformers 5.x's default SiglipImageProcessor is the torchvision backend, and
            // parity with transformers is the definition of correct here.
            resampler: Resampler::Torchvision,
        }
    }

    /// Parses the text of a `preprocessor_config.json`.
    ///
    /// # Errors
    /// [`ImageError::ConfigJson`] for malformed JSON, [`ImageError::ConfigField`] for a bad key.
    pub fn from_json_str(json: &str) -> Result<Self, ImageError> {
        let value: Value = serde_json::from_str(json)?;
        Self::from_json_value(&value)
    }

    /// Reads and parses a `preprocessor_config.json` file.
    ///
    /// # Errors
    /// [`ImageError::ConfigIo`] if the file cannot be read, otherwise as [`Self::from_json_str`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ImageError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ImageError::ConfigIo {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json_str(&text)
    }

    /// Builds a config from an already-parsed JSON object.
    ///
    /// # Errors
    /// [`ImageError::ConfigField`] naming the first offending key (or `"<root>"` if the value
    /// is not an object).
    pub fn from_json_value(value: &Value) -> Result<Self, ImageError> {
        let obj = value.as_object().ok_or_else(|| ImageError::ConfigField {
            field: "<root>",
            reason: format!("expected a JSON object, got {}", kind(value)),
        })?;
        let mut cfg = Self::default();

        if let Some(v) = get_bool(obj, "do_resize")? {
            cfg.do_resize = v;
        }
        if let Some(size) = present(obj, "size") {
            let (h, w) = parse_size(size)?;
            cfg.height = h;
            cfg.width = w;
        }
        if let Some(v) = present(obj, "resample") {
            let code = v
                .as_i64()
                .ok_or_else(|| field_err("resample", v, "a PIL filter integer"))?;
            cfg.resample = Filter::from_pil(code).ok_or_else(|| ImageError::ConfigField {
                field: "resample",
                reason: format!(
                    "unsupported PIL resampling value {code} (expected 0 nearest, 1 lanczos, \
                     2 bilinear, 3 bicubic, 4 box or 5 hamming)"
                ),
            })?;
        }
        if let Some(v) = get_bool(obj, "do_rescale")? {
            cfg.do_rescale = v;
        }
        if let Some(v) = present(obj, "rescale_factor") {
            let f = v
                .as_f64()
                .ok_or_else(|| field_err("rescale_factor", v, "a number"))?;
            if !f.is_finite() || f == 0.0 {
                return Err(ImageError::ConfigField {
                    field: "rescale_factor",
                    reason: format!("must be finite and non-zero, got {f}"),
                });
            }
            cfg.rescale_factor = f;
        }
        if let Some(v) = get_bool(obj, "do_normalize")? {
            cfg.do_normalize = v;
        }
        if let Some(v) = present(obj, "image_mean") {
            cfg.image_mean = parse_triplet("image_mean", v)?;
        }
        if let Some(v) = present(obj, "image_std") {
            let std = parse_triplet("image_std", v)?;
            if std.contains(&0.0) {
                return Err(ImageError::ConfigField {
                    field: "image_std",
                    reason: format!("must not contain zero, got {std:?}"),
                });
            }
            cfg.image_std = std;
        }
        if let Some(v) = get_bool(obj, "do_convert_rgb")? {
            cfg.do_convert_rgb = v;
        }
        if let Some(v) = present(obj, "image_seq_length") {
            let n = v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| field_err("image_seq_length", v, "a non-negative integer"))?;
            cfg.image_seq_length = Some(n);
        }
        // The PIL backend of transformers 5.x names itself `…Pil`; torchvision has no kernels
        // for the other PIL filters, and transformers falls back to PIL for those too.
        let pil_class = present(obj, "image_processor_type")
            .and_then(Value::as_str)
            .is_some_and(|t| t.ends_with("Pil"));
        let torchvision_filter = matches!(
            cfg.resample,
            Filter::Nearest | Filter::Bilinear | Filter::Bicubic
        );
        if pil_class || !torchvision_filter {
            cfg.resampler = Resampler::Pillow;
        }
        Ok(cfg)
    }
}

/// The value of `key` unless it is absent or JSON `null` (both mean "use the default").
fn present<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn get_bool(obj: &Map<String, Value>, key: &'static str) -> Result<Option<bool>, ImageError> {
    present(obj, key)
        .map(|v| {
            v.as_bool()
                .ok_or_else(|| field_err(key, v, "true or false"))
        })
        .transpose()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn field_err(field: &'static str, v: &Value, expected: &str) -> ImageError {
    ImageError::ConfigField {
        field,
        reason: format!("expected {expected}, got {} ({v})", kind(v)),
    }
}

/// `size` must be `{"height": h, "width": w}` (SigLIP's form). A bare integer is accepted as a
/// square side. `shortest_edge`/`longest_edge` forms are rejected: SigLIP never uses them.
fn parse_size(v: &Value) -> Result<(u32, u32), ImageError> {
    let side = |field: &'static str, v: &Value| -> Result<u32, ImageError> {
        let n = v
            .as_u64()
            .ok_or_else(|| field_err(field, v, "a positive integer"))?;
        if n == 0 || n > u64::from(MAX_SIDE) {
            return Err(ImageError::ConfigField {
                field,
                reason: format!("must be between 1 and {MAX_SIDE}, got {n}"),
            });
        }
        Ok(n as u32)
    };
    match v {
        Value::Number(_) => {
            let s = side("size", v)?;
            Ok((s, s))
        }
        Value::Object(map) => {
            let h = map.get("height").filter(|v| !v.is_null());
            let w = map.get("width").filter(|v| !v.is_null());
            match (h, w) {
                (Some(h), Some(w)) => Ok((side("size.height", h)?, side("size.width", w)?)),
                _ => {
                    let keys: Vec<&str> = map.keys().map(String::as_str).collect();
                    Err(ImageError::ConfigField {
                        field: "size",
                        reason: format!(
                            "expected {{\"height\": H, \"width\": W}}, got keys {keys:?} \
                             (shortest_edge/longest_edge resizing is not supported)"
                        ),
                    })
                }
            }
        }
        other => Err(field_err("size", other, "{\"height\": H, \"width\": W}")),
    }
}

/// A per-channel value: a list of 3 numbers, or one number used for all channels.
fn parse_triplet(field: &'static str, v: &Value) -> Result<[f64; 3], ImageError> {
    let finite = |x: f64| -> Result<f64, ImageError> {
        if x.is_finite() {
            Ok(x)
        } else {
            Err(ImageError::ConfigField {
                field,
                reason: format!("must be finite, got {x}"),
            })
        }
    };
    match v {
        Value::Number(n) => {
            let x = finite(n.as_f64().unwrap_or(f64::NAN))?;
            Ok([x; 3])
        }
        Value::Array(items) if items.len() == 3 => {
            let mut out = [0.0; 3];
            for (o, item) in out.iter_mut().zip(items) {
                *o = finite(
                    item.as_f64()
                        .ok_or_else(|| field_err(field, item, "a number"))?,
                )?;
            }
            Ok(out)
        }
        Value::Array(items) => Err(ImageError::ConfigField {
            field,
            reason: format!("expected 3 values (R, G, B), got {}", items.len()),
        }),
        other => Err(field_err(field, other, "a list of 3 numbers")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn resampler_follows_the_transformers_5_backend() {
        let tv = PreprocessorConfig::from_json_str(
            r#"{"image_processor_type": "SiglipImageProcessor"}"#,
        )
        .unwrap();
        assert_eq!(tv.resampler, Resampler::Torchvision);
        let pil = PreprocessorConfig::from_json_str(
            r#"{"image_processor_type": "SiglipImageProcessorPil"}"#,
        )
        .unwrap();
        assert_eq!(pil.resampler, Resampler::Pillow);
        let lanczos = PreprocessorConfig::from_json_str(r#"{"resample": 1}"#).unwrap();
        assert_eq!(
            lanczos.resampler,
            Resampler::Pillow,
            "torchvision has no lanczos"
        );
    }

    /// The `preprocessor_config.json` shipped with google/paligemma-3b-pt-224 (and PaliGemma 2).
    const HUB_224: &str = r#"{
      "_valid_processor_keys": ["images", "do_resize", "size"],
      "do_convert_rgb": null,
      "do_normalize": true,
      "do_rescale": true,
      "do_resize": true,
      "image_mean": [0.5, 0.5, 0.5],
      "image_processor_type": "SiglipImageProcessor",
      "image_seq_length": 256,
      "image_std": [0.5, 0.5, 0.5],
      "processor_class": "PaliGemmaProcessor",
      "resample": 3,
      "rescale_factor": 0.00392156862745098,
      "size": {"height": 224, "width": 224}
    }"#;

    #[test]
    fn hub_config_parses_to_siglip_defaults() {
        let cfg = PreprocessorConfig::from_json_str(HUB_224).unwrap();
        let mut want = PreprocessorConfig::square(224);
        want.image_seq_length = Some(256);
        assert_eq!(cfg, want);
        assert_eq!(cfg.rescale_factor, 0.00392156862745098);
    }

    /// `SiglipImageProcessor().to_dict()` from transformers 5.24.0 (its class defaults).
    const HF_CLASS_DEFAULTS: &str = r#"{"do_convert_rgb": true, "do_resize": true,
      "resample": 3, "do_rescale": true, "rescale_factor": 0.00392156862745098,
      "do_normalize": true, "size": {"height": 224, "width": 224},
      "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
      "image_processor_type": "SiglipImageProcessor"}"#;

    #[test]
    fn defaults_equal_transformers_siglip_class_defaults() {
        let hf = PreprocessorConfig::from_json_str(HF_CLASS_DEFAULTS).unwrap();
        assert_eq!(hf, PreprocessorConfig::default());
        assert_eq!(hf, PreprocessorConfig::from_json_str("{}").unwrap());
    }

    #[test]
    fn fixture_model_configs_parse() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/models");
        let Ok(entries) = std::fs::read_dir(dir) else {
            return; // fixtures are optional for this crate
        };
        for entry in entries.flatten() {
            let path = entry.path().join("preprocessor_config.json");
            if !path.exists() {
                continue;
            }
            let cfg = PreprocessorConfig::from_file(&path).unwrap();
            assert_eq!(cfg.height, cfg.width, "{}", path.display());
            assert!(cfg.image_seq_length.is_some(), "{}", path.display());
            assert_eq!(cfg.resample, Filter::Bicubic);
            assert!(cfg.do_convert_rgb && cfg.do_resize && cfg.do_rescale && cfg.do_normalize);
        }
    }

    #[test]
    fn empty_object_takes_all_defaults() {
        let cfg = PreprocessorConfig::from_json_str("{}").unwrap();
        assert_eq!(cfg, PreprocessorConfig::default());
        assert_eq!((cfg.height, cfg.width), (224, 224));
        assert_eq!(cfg.resample, Filter::Bicubic);
        assert!(cfg.do_resize && cfg.do_rescale && cfg.do_normalize && cfg.do_convert_rgb);
    }

    #[test]
    fn square_constructor_sets_both_sides() {
        let cfg = PreprocessorConfig::square(448);
        assert_eq!((cfg.height, cfg.width), (448, 448));
    }

    #[test]
    fn resample_codes_select_filters() {
        let c = |s| PreprocessorConfig::from_json_str(s).unwrap().resample;
        assert_eq!(c(r#"{"resample": 0}"#), Filter::Nearest);
        assert_eq!(c(r#"{"resample": 2}"#), Filter::Bilinear);
        assert_eq!(c(r#"{"resample": 3}"#), Filter::Bicubic);
    }

    #[test]
    fn unsupported_resample_names_the_field() {
        for bad in [r#"{"resample": 7}"#, r#"{"resample": "bicubic"}"#] {
            let err = PreprocessorConfig::from_json_str(bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    ImageError::ConfigField {
                        field: "resample",
                        ..
                    }
                ),
                "{err}"
            );
            assert!(err.to_string().contains("resample"));
        }
    }

    #[test]
    fn scalar_mean_broadcasts_and_wrong_lengths_are_rejected() {
        let cfg = PreprocessorConfig::from_json_str(r#"{"image_mean": 0.25}"#).unwrap();
        assert_eq!(cfg.image_mean, [0.25; 3]);
        let err = PreprocessorConfig::from_json_str(r#"{"image_std": [0.5, 0.5]}"#).unwrap_err();
        assert!(matches!(
            err,
            ImageError::ConfigField {
                field: "image_std",
                ..
            }
        ));
        let err = PreprocessorConfig::from_json_str(r#"{"image_std": [0.5, 0, 0.5]}"#).unwrap_err();
        assert!(matches!(
            err,
            ImageError::ConfigField {
                field: "image_std",
                ..
            }
        ));
    }

    #[test]
    fn bad_sizes_name_the_size_field() {
        for (json, field) in [
            (r#"{"size": {"shortest_edge": 224}}"#, "size"),
            (r#"{"size": {"height": 0, "width": 224}}"#, "size.height"),
            (r#"{"size": {"height": 224, "width": -3}}"#, "size.width"),
            (r#"{"size": "big"}"#, "size"),
        ] {
            let err = PreprocessorConfig::from_json_str(json).unwrap_err();
            match err {
                ImageError::ConfigField { field: f, .. } => assert_eq!(f, field, "{json}"),
                other => panic!("{json}: {other}"),
            }
        }
        let cfg = PreprocessorConfig::from_json_str(r#"{"size": 32}"#).unwrap();
        assert_eq!((cfg.height, cfg.width), (32, 32));
    }

    #[test]
    fn wrong_types_name_the_field() {
        let err = PreprocessorConfig::from_json_str(r#"{"do_rescale": "yes"}"#).unwrap_err();
        assert!(matches!(
            err,
            ImageError::ConfigField {
                field: "do_rescale",
                ..
            }
        ));
        let err = PreprocessorConfig::from_json_str(r#"{"rescale_factor": 0}"#).unwrap_err();
        assert!(matches!(
            err,
            ImageError::ConfigField {
                field: "rescale_factor",
                ..
            }
        ));
        assert!(matches!(
            PreprocessorConfig::from_json_str("[1, 2]"),
            Err(ImageError::ConfigField {
                field: "<root>",
                ..
            })
        ));
        assert!(matches!(
            PreprocessorConfig::from_json_str("{"),
            Err(ImageError::ConfigJson(_))
        ));
    }

    #[test]
    fn missing_file_is_a_config_io_error() {
        let err =
            PreprocessorConfig::from_file("/nonexistent/preprocessor_config.json").unwrap_err();
        assert!(matches!(err, ImageError::ConfigIo { .. }));
    }

    #[test]
    fn serde_round_trip_keeps_the_filter_code() {
        let cfg = PreprocessorConfig::square(32);
        let json = serde_json::to_string(&cfg).unwrap();
        assert!(json.contains("\"resample\":3"));
        let back: PreprocessorConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, cfg);
    }
}
