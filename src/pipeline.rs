//! A loaded model directory: weights, tokenizer and image preprocessing, checked against each
//! other. The CLI uses it directly; the tiers will each take the part they need.

use std::path::Path;

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use paligemma_gateway_service::detokenize::Detokenizer;
use paligemma_image::{PixelValues, PreprocessorConfig};
use paligemma_model::{LoadOptions, ModelFiles, PaliGemma};
use paligemma_text::Tokenizer;
use paligemma_vision_service::preprocessor_config;

pub struct Pipeline {
    pub model: PaliGemma,
    /// The tokenizer, with the streaming detokeniser the gateway uses.
    pub detokenizer: Detokenizer,
    /// Ids that end generation: the checkpoint's `eos_token_id`s and the tokenizer's `<eos>`.
    pub eos_ids: Vec<u32>,
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
        let mut eos_ids = config.eos_token_ids.clone();
        eos_ids.push(tokenizer.eos_id());
        Ok(Self {
            detokenizer: Detokenizer::new(tokenizer, eos_ids.clone()),
            eos_ids,
            model,
            preprocessor,
        })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        self.detokenizer.tokenizer()
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
