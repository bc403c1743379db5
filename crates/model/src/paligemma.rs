//! PaliGemma: SigLIP vision tower → linear projector → Gemma decoder
//! (transformers `modeling_paligemma.py`, 5.x; spec §4).
//!
//! Image soft tokens enter the decoder unscaled; text embeddings are multiplied by √hidden
//! rounded to the model dtype. The soft tokens replace the `<image>` placeholders of the prompt.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::checkpoint::{Checkpoint, ModelFiles};
use crate::config::PaliGemmaConfig;
use crate::encoder::VisionEncoder;
use crate::error::{ModelError, Result};
use crate::gemma::GemmaDecoder;
use crate::kv_cache::ContiguousKvCache;

/// How to materialise the weights.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Weight and activation dtype: F32 or BF16 (F16 also works but is not parity-tested).
    pub dtype: DType,
    pub device: Device,
    /// Show a progress bar on stderr while weights are read.
    pub show_progress: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            device: Device::Cpu,
            show_progress: false,
        }
    }
}

/// Rejects dtypes the model is not built for.
pub(crate) fn check_dtype(dtype: DType) -> Result<()> {
    if matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
        Ok(())
    } else {
        Err(ModelError::Input(format!(
            "dtype {dtype:?} is not supported (use f32 or bf16)"
        )))
    }
}

/// The whole model; holds weights only.
#[derive(Debug, Clone)]
pub struct PaliGemma {
    encoder: VisionEncoder,
    decoder: GemmaDecoder,
}

impl PaliGemma {
    /// Loads a Hugging Face model directory.
    ///
    /// # Errors
    /// Missing or corrupt files, an unsupported config, tensors missing or shaped unlike the
    /// config says.
    pub fn load(files: &ModelFiles, opts: &LoadOptions) -> Result<Self> {
        check_dtype(opts.dtype)?;
        let config = PaliGemmaConfig::from_file(&files.config)?;
        let checkpoint = Checkpoint::open(&files.weights, opts.show_progress)?;
        let untied = checkpoint.contains(LM_HEAD);
        let vb = VarBuilder::from_backend(Box::new(checkpoint), opts.dtype, opts.device.clone());
        Self::new(config, vb, untied)
    }

    /// Builds the model from a `VarBuilder` whose names follow the legacy layout.
    ///
    /// # Errors
    /// Missing or mis-shaped tensors.
    pub fn new(config: PaliGemmaConfig, vb: VarBuilder<'_>, untied_lm_head: bool) -> Result<Self> {
        let decoder = new_decoder(&config, &vb, untied_lm_head)?;
        let encoder = VisionEncoder::new(config, vb)?;
        Ok(Self { encoder, decoder })
    }

    pub fn config(&self) -> &PaliGemmaConfig {
        self.encoder.config()
    }

    pub fn encoder(&self) -> &VisionEncoder {
        &self.encoder
    }

    pub fn decoder(&self) -> &GemmaDecoder {
        &self.decoder
    }

    pub fn dtype(&self) -> DType {
        self.decoder.dtype()
    }

    pub fn device(&self) -> &Device {
        self.decoder.device()
    }

    /// A fresh single-sequence KV cache for this model.
    pub fn new_kv_cache(&self) -> ContiguousKvCache {
        ContiguousKvCache::new(self.config().text.num_hidden_layers)
    }

    /// SigLIP + projector: see [`VisionEncoder::encode`].
    ///
    /// # Errors
    /// Wrong pixel shape; device errors.
    pub fn encode_images(&self, pixels: &Tensor) -> Result<Tensor> {
        self.encoder.encode(pixels)
    }

    /// See [`GemmaDecoder::embed_prompt`].
    ///
    /// # Errors
    /// As [`GemmaDecoder::embed_prompt`].
    pub fn embed_prompt(&self, ids: &[u32], image_features: &Tensor) -> Result<Tensor> {
        self.decoder.embed_prompt(ids, image_features)
    }
}

const LM_HEAD: &str = "language_model.lm_head.weight";

fn new_decoder(
    config: &PaliGemmaConfig,
    vb: &VarBuilder<'_>,
    untied_lm_head: bool,
) -> Result<GemmaDecoder> {
    let text = &config.text;
    let lm_head = if untied_lm_head {
        Some(
            vb.pp("language_model.lm_head")
                .get((text.vocab_size, text.hidden_size), "weight")?,
        )
    } else {
        None
    };
    Ok(GemmaDecoder::new(
        text,
        config.image_token_index,
        vb.pp("language_model.model"),
        lm_head,
    )?)
}

/// Loads only the Gemma decoder (and its LM head) of a model directory, for the decoder tier.
///
/// # Errors
/// As [`PaliGemma::load`].
pub fn load_decoder(
    files: &ModelFiles,
    opts: &LoadOptions,
) -> Result<(PaliGemmaConfig, GemmaDecoder)> {
    check_dtype(opts.dtype)?;
    let config = PaliGemmaConfig::from_file(&files.config)?;
    let checkpoint = Checkpoint::open(&files.weights, opts.show_progress)?;
    let untied = checkpoint.contains(LM_HEAD);
    let vb = VarBuilder::from_backend(Box::new(checkpoint), opts.dtype, opts.device.clone());
    let decoder = new_decoder(&config, &vb, untied)?;
    Ok((config, decoder))
}
