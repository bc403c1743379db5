//! Finding and reading a Hugging Face PaliGemma checkpoint directory.
//!
//! Accepts `model.safetensors` or a sharded `model.safetensors.index.json`, and tensor names in
//! every layout of spec §7.2, which are normalised to the legacy layout the model structs use:
//! `vision_tower.vision_model.*`, `multi_modal_projector.*`, `language_model.model.*`,
//! `language_model.lm_head.weight`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use indicatif::{ProgressBar, ProgressStyle};

use crate::error::{ModelError, Result};
use crate::shards::Shards;

/// The files of a model directory.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub dir: PathBuf,
    pub config: PathBuf,
    /// One or more safetensors shards.
    pub weights: Vec<PathBuf>,
    pub tokenizer: Option<PathBuf>,
    pub preprocessor_config: Option<PathBuf>,
}

/// Canonical-name prefixes of the weights that determine the soft tokens.
pub const VISION_PREFIXES: [&str; 2] = ["vision_tower.", "multi_modal_projector."];

impl ModelFiles {
    /// Fingerprint of the vision tower + projector weights: what a soft-token stream carries so
    /// the decoder tier can refuse tokens made by different vision weights.
    ///
    /// # Errors
    /// Unreadable weights.
    pub fn vision_fingerprint(&self) -> Result<String> {
        Checkpoint::open(&self.weights, false)?.fingerprint(&VISION_PREFIXES)
    }

    /// Locates the checkpoint files in `dir`.
    ///
    /// # Errors
    /// Missing directory, `config.json` or weights; an unreadable shard index.
    pub fn discover(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(ModelError::BadFile {
                path: dir.to_path_buf(),
                message: "not a directory (expected a Hugging Face model directory)".into(),
            });
        }
        let config = dir.join("config.json");
        if !config.is_file() {
            return Err(ModelError::MissingFile {
                dir: dir.to_path_buf(),
                file: "config.json",
                why: "the model configuration",
            });
        }
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let weights = if single.is_file() {
            vec![single]
        } else if index.is_file() {
            shards_from_index(dir, &index)?
        } else {
            return Err(ModelError::MissingFile {
                dir: dir.to_path_buf(),
                file: "model.safetensors",
                why: "no model.safetensors or model.safetensors.index.json",
            });
        };
        let optional = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            weights,
            tokenizer: optional("tokenizer.json"),
            preprocessor_config: optional("preprocessor_config.json"),
        })
    }
}

fn shards_from_index(dir: &Path, index: &Path) -> Result<Vec<PathBuf>> {
    let bad = |message: String| ModelError::BadFile {
        path: index.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(index).map_err(|e| bad(e.to_string()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no `weight_map` object".into()))?;
    let files: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
    if files.is_empty() {
        return Err(bad("`weight_map` names no files".into()));
    }
    files
        .into_iter()
        .map(|f| {
            let p = dir.join(f);
            if p.is_file() {
                Ok(p)
            } else {
                Err(bad(format!(
                    "shard `{f}` listed in weight_map does not exist"
                )))
            }
        })
        .collect()
}

/// Maps a tensor name of any supported layout to the legacy layout.
pub fn canonical_name(name: &str) -> String {
    const VISION: &str = "vision_tower.vision_model.";
    if let Some(rest) = name.strip_prefix("model.language_model.") {
        return format!("language_model.model.{rest}");
    }
    if name == "lm_head.weight" {
        return "language_model.lm_head.weight".into();
    }
    if let Some(rest) = name.strip_prefix("model.multi_modal_projector.") {
        return format!("multi_modal_projector.{rest}");
    }
    let vision_rest = name
        .strip_prefix("model.vision_tower.")
        .or_else(|| name.strip_prefix("vision_tower."));
    if let Some(rest) = vision_rest {
        let rest = rest.strip_prefix("vision_model.").unwrap_or(rest);
        return format!("{VISION}{rest}");
    }
    name.to_string()
}

/// Safetensors shards exposed to candle's `VarBuilder` under canonical names, with shape checks
/// that name the tensor and a progress bar over the bytes read.
pub struct Checkpoint {
    tensors: Shards,
    /// canonical name → name in the file.
    names: HashMap<String, String>,
    progress: ProgressBar,
}

impl Checkpoint {
    /// Opens the shards and indexes their tensor names.
    ///
    /// # Errors
    /// Unreadable or corrupt safetensors files; two tensors mapping to the same canonical name.
    pub fn open(files: &[PathBuf], show_progress: bool) -> Result<Self> {
        let tensors = Shards::open(files)?;
        let mut names = HashMap::new();
        let mut total_bytes = 0u64;
        for (name, info) in tensors.tensors() {
            total_bytes += info.byte_len();
            let canonical = canonical_name(name);
            if let Some(previous) = names.insert(canonical.clone(), name.clone()) {
                return Err(ModelError::BadFile {
                    path: files.first().cloned().unwrap_or_default(),
                    message: format!("tensors `{previous}` and `{name}` both map to `{canonical}`"),
                });
            }
        }
        let progress = if show_progress {
            let bar = ProgressBar::new(total_bytes);
            if let Ok(style) = ProgressStyle::with_template(
                "loading weights {bar:40} {binary_bytes}/{binary_total_bytes} ({eta})",
            ) {
                bar.set_style(style);
            }
            bar
        } else {
            ProgressBar::hidden()
        };
        Ok(Self {
            tensors,
            names,
            progress,
        })
    }

    /// A stable fingerprint of the tensors whose canonical names start with one of `prefixes`:
    /// xxh3-64 over (name, dtype, shape, raw bytes) in name order, so any change to those weights
    /// — values, dtype or layout — changes it, and it does not depend on the load dtype.
    pub fn fingerprint(&self, prefixes: &[&str]) -> Result<String> {
        let mut selected: Vec<(&String, &String)> = self
            .names
            .iter()
            .filter(|(c, _)| prefixes.iter().any(|p| c.starts_with(p)))
            .collect();
        selected.sort();
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        for (canonical, actual) in selected {
            let Some(info) = self.tensors.get(actual) else {
                continue;
            };
            hasher.update(canonical.as_bytes());
            hasher.update(format!("{}{:?}", safetensors_dtype(info.dtype), info.shape).as_bytes());
            self.tensors
                .for_each_chunk(info, |bytes| hasher.update(bytes))?;
        }
        Ok(format!("xxh3:{:016x}", hasher.digest()))
    }

    pub fn contains(&self, canonical: &str) -> bool {
        self.names.contains_key(canonical)
    }

    /// Finishes the progress bar.
    pub fn finish(&self) {
        self.progress.finish_and_clear();
    }

    fn load(&self, canonical: &str, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let Some(actual) = self.names.get(canonical) else {
            return Err(candle_core::Error::Msg(
                ModelError::MissingTensor {
                    name: canonical.into(),
                }
                .to_string(),
            ));
        };
        let tensor = self.tensors.load(actual, device)?;
        if let Some(info) = self.tensors.get(actual) {
            self.progress.inc(info.byte_len());
        }
        // f32 checkpoints (the published PaliGemma ones) loaded as bf16 take the vectorised
        // cast; candle's element-by-element one was most of a bf16 load's CPU time.
        crate::layers::cast::to_dtype(&tensor, dtype)
    }
}

/// The safetensors spelling of a dtype, so fingerprints stay what the memory-mapped loader
/// computed (`safetensors::Dtype`'s `Debug`).
fn safetensors_dtype(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "F32",
        DType::BF16 => "BF16",
        DType::F16 => "F16",
        DType::F64 => "F64",
        DType::U8 => "U8",
        DType::U32 => "U32",
        DType::I64 => "I64",
        _ => "other",
    }
}

impl SimpleBackend for Checkpoint {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Some(actual) = self.names.get(name) {
            let found = self
                .tensors
                .get(actual)
                .map(|info| info.shape.clone())
                .unwrap_or_default();
            if found != shape.dims() {
                let err = ModelError::ShapeMismatch {
                    name: name.into(),
                    expected: shape.dims().to_vec(),
                    found,
                };
                return Err(candle_core::Error::Msg(err.to_string()));
            }
        }
        self.load(name, dtype, device)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.load(name, dtype, device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.contains(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_layout_maps_to_the_legacy_names() {
        let cases = [
            (
                "language_model.model.layers.3.mlp.up_proj.weight",
                "language_model.model.layers.3.mlp.up_proj.weight",
            ),
            (
                "model.language_model.layers.3.mlp.up_proj.weight",
                "language_model.model.layers.3.mlp.up_proj.weight",
            ),
            ("lm_head.weight", "language_model.lm_head.weight"),
            (
                "language_model.lm_head.weight",
                "language_model.lm_head.weight",
            ),
            (
                "vision_tower.vision_model.post_layernorm.bias",
                "vision_tower.vision_model.post_layernorm.bias",
            ),
            (
                "vision_tower.post_layernorm.bias",
                "vision_tower.vision_model.post_layernorm.bias",
            ),
            (
                "model.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight",
                "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight",
            ),
            (
                "model.vision_tower.encoder.layers.0.mlp.fc1.weight",
                "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight",
            ),
            (
                "model.multi_modal_projector.linear.bias",
                "multi_modal_projector.linear.bias",
            ),
            (
                "multi_modal_projector.linear.bias",
                "multi_modal_projector.linear.bias",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(canonical_name(input), want, "{input}");
        }
    }
}
