//! A loaded model directory: weights, tokenizer and image preprocessing, checked against each
//! other. The CLI uses it directly; the tiers will each take the part they need.

use std::path::Path;

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use paligemma_image::{PixelValues, PreprocessorConfig};
use paligemma_model::{LoadOptions, ModelFiles, PaliGemma};
use paligemma_text::Tokenizer;

pub struct Pipeline {
    pub model: PaliGemma,
    pub tokenizer: Tokenizer,
    pub preprocessor: PreprocessorConfig,
}

impl Pipeline {
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let files = ModelFiles::discover(dir)?;
        let tokenizer_path = files.tokenizer.clone().with_context(|| {
            format!("model directory {}: missing tokenizer.json", dir.display())
        })?;
        let tokenizer = Tokenizer::from_file(&tokenizer_path)?;
        let model = PaliGemma::load(&files, opts)?;
        let config = model.config();
        if tokenizer.image_id() != config.image_token_index {
            bail!(
                "tokenizer.json maps <image> to {} but config.json says image_token_index {}",
                tokenizer.image_id(),
                config.image_token_index
            );
        }
        let preprocessor = preprocessor_config(&files, config.vision.image_size)?;
        Ok(Self {
            model,
            tokenizer,
            preprocessor,
        })
    }

    /// Decoded image bytes → `pixel_values [1, 3, S, S]` f32.
    pub fn pixel_values(&self, image_bytes: &[u8]) -> Result<Tensor> {
        let pixels = paligemma_image::preprocess_bytes(image_bytes, &self.preprocessor)?;
        pixels_to_tensor(pixels, self.model.device())
    }
}

pub fn pixels_to_tensor(p: PixelValues, device: &Device) -> Result<Tensor> {
    let shape = p.shape();
    Ok(Tensor::from_vec(
        p.data,
        (shape[0], shape[1], shape[2], shape[3]),
        device,
    )?)
}

/// `preprocessor_config.json` (hub checkpoints), else the `image_processor` section of
/// `processor_config.json` (what transformers 5.x `save_pretrained` writes), else the SigLIP
/// defaults at the model's resolution. The resize target must equal the model's input size.
fn preprocessor_config(files: &ModelFiles, image_size: usize) -> Result<PreprocessorConfig> {
    let processor_json = files.dir.join("processor_config.json");
    let cfg = if let Some(path) = &files.preprocessor_config {
        PreprocessorConfig::from_file(path)?
    } else if processor_json.is_file() {
        let text = std::fs::read_to_string(&processor_json)?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid JSON", processor_json.display()))?;
        match value.get("image_processor") {
            Some(section) => PreprocessorConfig::from_json_value(section)?,
            None => PreprocessorConfig::square(image_size as u32),
        }
    } else {
        PreprocessorConfig::square(image_size as u32)
    };
    if cfg.height as usize != image_size || cfg.width as usize != image_size {
        bail!(
            "preprocessor resizes to {}x{} but the vision tower takes {image_size}x{image_size}",
            cfg.width,
            cfg.height
        );
    }
    Ok(cfg)
}
