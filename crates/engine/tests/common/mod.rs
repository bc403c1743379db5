//! Fixture loading shared by the engine's integration tests: the tiny random checkpoints of
//! `tests/fixtures/models/` and their transformers reference inputs and tokens.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use paligemma_model::{LoadOptions, ModelFiles, PaliGemma};

pub const CASES: [&str; 4] = ["pg1-32", "pg1-48-gqa", "pg2-32", "pg2-48-window"];

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

pub fn load_model(case: &str) -> Result<PaliGemma> {
    let files = ModelFiles::discover(&fixtures().join("models").join(case))?;
    let opts = LoadOptions {
        dtype: DType::F32,
        ..LoadOptions::default()
    };
    Ok(PaliGemma::load(&files, &opts)?)
}

/// The reference prompt of a case: ids, soft tokens `[K, D]`, and transformers' greedy tokens.
pub struct Case {
    pub ids: Vec<u32>,
    pub image_features: Tensor,
    pub tokens: Vec<u32>,
}

pub fn load_case(model: &PaliGemma, case: &str) -> Result<Case> {
    let path = fixtures().join(format!("reference/{case}.safetensors"));
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
        .with_context(|| path.display().to_string())?;
    let get = |n: &str| tensors.get(n).with_context(|| format!("no `{n}`"));
    let ids = get("input_ids")?
        .to_dtype(DType::I64)?
        .flatten_all()?
        .to_vec1::<i64>()?
        .into_iter()
        .map(|v| v as u32)
        .collect();
    let image_features = model.encode_images(get("pixel_values")?)?.squeeze(0)?;
    let json = std::fs::read_to_string(fixtures().join(format!("reference/{case}.json")))?;
    let json: serde_json::Value = serde_json::from_str(&json)?;
    let tokens = json["tokens"]
        .as_array()
        .context("tokens")?
        .iter()
        .filter_map(|v| v.as_u64().map(|v| v as u32))
        .collect();
    Ok(Case {
        ids,
        image_features,
        tokens,
    })
}
