//! The loader accepts every checkpoint layout of spec §7.2 — legacy names, transformers ≥ 4.52
//! names (`model.language_model.*`, `model.vision_tower.vision_model.*`, `lm_head.weight`),
//! transformers-5 vision names without `vision_model.`, an explicit (untied) `lm_head`, and
//! sharded checkpoints — and gives the same logits as transformers for all of them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use paligemma_model::checkpoint::canonical_name;
use paligemma_model::{DecoderInput, LoadOptions, LogitsRows, ModelFiles, PaliGemma};

const CASE: &str = "pg2-32";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("paligemma-layout-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::copy(
            fixtures().join("models").join(CASE).join("config.json"),
            dir.join("config.json"),
        )
        .expect("copy config");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fixture_tensors() -> Result<HashMap<String, Tensor>> {
    let path = fixtures()
        .join("models")
        .join(CASE)
        .join("model.safetensors");
    Ok(candle_core::safetensors::load(path, &Device::Cpu)?)
}

/// Max relative error of the last prefill row against the transformers reference.
fn prefill_error(dir: &Path) -> Result<f32> {
    let model = PaliGemma::load(&ModelFiles::discover(dir)?, &LoadOptions::default())?;
    let reference = candle_core::safetensors::load(
        fixtures().join(format!("reference/{CASE}.safetensors")),
        &Device::Cpu,
    )?;
    let ids: Vec<u32> = reference["input_ids"]
        .to_dtype(DType::I64)?
        .to_vec1::<i64>()?
        .iter()
        .map(|&v| v as u32)
        .collect();
    let features = model
        .encode_images(&reference["pixel_values"])?
        .squeeze(0)?;
    let embeds = model.embed_prompt(&ids, &features)?;
    let mut kv = model.new_kv_cache();
    let input = DecoderInput {
        embeds: &embeds,
        prefix_len: ids.len(),
        logits: LogitsRows::All,
    };
    let ours = model.decoder().forward(&input, &mut kv)?;
    let want = &reference["prefill_logits"];
    let diff = (ours - want)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?;
    let scale = want.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    Ok(diff / scale)
}

fn newer_name(canonical: &str) -> String {
    if let Some(rest) = canonical.strip_prefix("language_model.model.") {
        format!("model.language_model.{rest}")
    } else if let Some(rest) = canonical.strip_prefix("vision_tower.vision_model.") {
        format!("model.vision_tower.vision_model.{rest}")
    } else if let Some(rest) = canonical.strip_prefix("multi_modal_projector.") {
        format!("model.multi_modal_projector.{rest}")
    } else {
        canonical.to_string()
    }
}

#[test]
fn legacy_layout_loads() -> Result<()> {
    let dir = TempDir::new("legacy");
    let tensors: HashMap<String, Tensor> = fixture_tensors()?
        .into_iter()
        .map(|(k, v)| (canonical_name(&k), v))
        .collect();
    assert!(
        tensors
            .keys()
            .any(|k| k.starts_with("vision_tower.vision_model."))
    );
    candle_core::safetensors::save(&tensors, dir.0.join("model.safetensors"))?;
    assert!(prefill_error(&dir.0)? < 1e-4);
    Ok(())
}

#[test]
fn newer_layout_with_explicit_lm_head_loads() -> Result<()> {
    let dir = TempDir::new("newer");
    let mut tensors: HashMap<String, Tensor> = fixture_tensors()?
        .into_iter()
        .map(|(k, v)| (newer_name(&canonical_name(&k)), v))
        .collect();
    let embed = tensors["model.language_model.embed_tokens.weight"].clone();
    tensors.insert("lm_head.weight".into(), embed);
    candle_core::safetensors::save(&tensors, dir.0.join("model.safetensors"))?;
    assert!(prefill_error(&dir.0)? < 1e-4);
    Ok(())
}

#[test]
fn an_untied_lm_head_is_used_instead_of_the_embeddings() -> Result<()> {
    let dir = TempDir::new("untied");
    let mut tensors = fixture_tensors()?;
    let embed = tensors["language_model.model.embed_tokens.weight"].clone();
    tensors.insert("language_model.lm_head.weight".into(), (embed * 2.0)?);
    candle_core::safetensors::save(&tensors, dir.0.join("model.safetensors"))?;
    assert!(
        prefill_error(&dir.0)? > 1e-2,
        "a different lm_head must change the logits"
    );
    Ok(())
}

#[test]
fn sharded_checkpoint_with_index_loads() -> Result<()> {
    let dir = TempDir::new("sharded");
    let mut shards: [HashMap<String, Tensor>; 2] = [HashMap::new(), HashMap::new()];
    let mut weight_map = serde_json::Map::new();
    for (name, tensor) in fixture_tensors()? {
        let shard = usize::from(name.starts_with("language_model"));
        let file = format!("model-0000{}-of-00002.safetensors", shard + 1);
        weight_map.insert(name.clone(), file.into());
        shards[shard].insert(name, tensor);
    }
    for (i, shard) in shards.iter().enumerate() {
        candle_core::safetensors::save(
            shard,
            dir.0
                .join(format!("model-0000{}-of-00002.safetensors", i + 1)),
        )?;
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        dir.0.join("model.safetensors.index.json"),
        index.to_string(),
    )?;
    assert_eq!(ModelFiles::discover(&dir.0)?.weights.len(), 2);
    assert!(prefill_error(&dir.0)? < 1e-4);

    std::fs::remove_file(dir.0.join("model-00002-of-00002.safetensors"))?;
    let err = ModelFiles::discover(&dir.0).unwrap_err().to_string();
    assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
    Ok(())
}

#[test]
fn a_missing_tensor_is_named() -> Result<()> {
    let dir = TempDir::new("missing");
    let mut tensors = fixture_tensors()?;
    tensors.remove("multi_modal_projector.linear.bias");
    candle_core::safetensors::save(&tensors, dir.0.join("model.safetensors"))?;
    let err = PaliGemma::load(&ModelFiles::discover(&dir.0)?, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("multi_modal_projector.linear.bias"), "{err}");
    Ok(())
}

#[test]
fn vision_fingerprint_ignores_the_name_layout_but_not_the_values() -> Result<()> {
    let original =
        ModelFiles::discover(&fixtures().join("models").join(CASE))?.vision_fingerprint()?;
    let renamed = TempDir::new("fp-renamed");
    let tensors: HashMap<String, Tensor> = fixture_tensors()?
        .into_iter()
        .map(|(k, v)| (canonical_name(&k), v))
        .collect();
    candle_core::safetensors::save(&tensors, renamed.0.join("model.safetensors"))?;
    assert_eq!(
        ModelFiles::discover(&renamed.0)?.vision_fingerprint()?,
        original
    );

    let changed = TempDir::new("fp-changed");
    let mut tensors = fixture_tensors()?;
    let bias = tensors["multi_modal_projector.linear.bias"].clone();
    tensors.insert("multi_modal_projector.linear.bias".into(), (bias + 1e-3)?);
    candle_core::safetensors::save(&tensors, changed.0.join("model.safetensors"))?;
    assert_ne!(
        ModelFiles::discover(&changed.0)?.vision_fingerprint()?,
        original
    );

    // Decoder weights do not enter the vision fingerprint.
    let decoder_only = TempDir::new("fp-decoder");
    let mut tensors = fixture_tensors()?;
    let norm = tensors["language_model.model.norm.weight"].clone();
    tensors.insert("language_model.model.norm.weight".into(), (norm + 1.0)?);
    candle_core::safetensors::save(&tensors, decoder_only.0.join("model.safetensors"))?;
    assert_eq!(
        ModelFiles::discover(&decoder_only.0)?.vision_fingerprint()?,
        original
    );
    Ok(())
}
