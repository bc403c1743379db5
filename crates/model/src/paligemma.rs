//! PaliGemma: SigLIP vision tower → linear projector → Gemma decoder
//! (transformers `modeling_paligemma.py`, 5.x; spec §4).
//!
//! Image soft tokens enter the decoder unscaled; text embeddings are multiplied by √hidden
//! rounded to the model dtype. The soft tokens replace the `<image>` placeholders of the prompt.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

use crate::checkpoint::{Checkpoint, ModelFiles};
use crate::config::PaliGemmaConfig;
use crate::error::{ModelError, Result};
use crate::gemma::GemmaDecoder;
use crate::kv_cache::ContiguousKvCache;
use crate::layers::linear::Linear;
use crate::siglip::VisionTower;

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

/// The whole model; holds weights only.
#[derive(Debug, Clone)]
pub struct PaliGemma {
    config: PaliGemmaConfig,
    vision: VisionTower,
    /// `multi_modal_projector.linear`: vision hidden → decoder hidden, with bias.
    projector: Linear,
    decoder: GemmaDecoder,
}

impl PaliGemma {
    /// Loads a Hugging Face model directory.
    ///
    /// # Errors
    /// Missing or corrupt files, an unsupported config, tensors missing or shaped unlike the
    /// config says.
    pub fn load(files: &ModelFiles, opts: &LoadOptions) -> Result<Self> {
        let config = PaliGemmaConfig::from_file(&files.config)?;
        if !matches!(opts.dtype, DType::F32 | DType::BF16 | DType::F16) {
            return Err(ModelError::Input(format!(
                "dtype {:?} is not supported (use f32 or bf16)",
                opts.dtype
            )));
        }
        let checkpoint = Checkpoint::open(&files.weights, opts.show_progress)?;

        Self::from_checkpoint(config, checkpoint, opts)
    }

    fn from_checkpoint(
        config: PaliGemmaConfig,
        checkpoint: Checkpoint,
        opts: &LoadOptions,
    ) -> Result<Self> {
        let has_lm_head = checkpoint.contains("language_model.lm_head.weight");
        let vb = VarBuilder::from_backend(Box::new(checkpoint), opts.dtype, opts.device.clone());

        Self::new(config, vb, has_lm_head)
    }

    /// Builds the model from a `VarBuilder` whose names follow the legacy layout.
    ///
    /// # Errors
    /// Missing or mis-shaped tensors.
    pub fn new(config: PaliGemmaConfig, vb: VarBuilder<'_>, untied_lm_head: bool) -> Result<Self> {
        let text = &config.text;
        let vision = VisionTower::new(&config.vision, vb.pp("vision_tower.vision_model"))?;
        let projector = Linear::new(
            config.vision.hidden_size,
            config.projection_dim,
            true,
            vb.pp("multi_modal_projector.linear"),
        )?;
        let lm_head = if untied_lm_head {
            Some(
                vb.pp("language_model.lm_head")
                    .get((text.vocab_size, text.hidden_size), "weight")?,
            )
        } else {
            None
        };
        let decoder = GemmaDecoder::new(text, vb.pp("language_model.model"), lm_head)?;
        Ok(Self {
            config,
            vision,
            projector,
            decoder,
        })
    }

    pub fn config(&self) -> &PaliGemmaConfig {
        &self.config
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
        ContiguousKvCache::new(self.config.text.num_hidden_layers)
    }

    /// SigLIP + projector: `pixels [B, 3, S, S]` (any float dtype; cast to the model dtype as
    /// transformers does) → soft tokens `[B, N, D]` in the model dtype.
    ///
    /// # Errors
    /// Wrong pixel shape; device errors.
    pub fn encode_images(&self, pixels: &Tensor) -> Result<Tensor> {
        let pixels = pixels.to_device(self.device())?.to_dtype(self.dtype())?;
        let hidden = self.vision.forward(&pixels)?;
        Ok(self.projector.forward(&hidden)?)
    }

    /// Input embeddings `[L, D]` of a prompt: text rows scaled by √D, and the rows of
    /// `image_features` (`[K, D]`, K = number of `<image>` ids in `ids`) placed, in order, at
    /// the `<image>` positions.
    ///
    /// # Errors
    /// Empty prompt, ids outside the vocabulary, or a number of `<image>` ids different from
    /// the number of soft-token rows.
    pub fn embed_prompt(&self, ids: &[u32], image_features: &Tensor) -> Result<Tensor> {
        if ids.is_empty() {
            return Err(ModelError::Input("empty prompt".into()));
        }
        let image_id = self.config.image_token_index;
        let (rows, width) = image_features.dims2()?;
        let placeholders = ids.iter().filter(|&&id| id == image_id).count();
        if placeholders != rows {
            return Err(ModelError::Input(format!(
                "prompt has {placeholders} <image> tokens but {rows} soft-token rows were given"
            )));
        }
        if width != self.config.text.hidden_size {
            return Err(ModelError::Input(format!(
                "soft tokens are {width} wide, the decoder expects {}",
                self.config.text.hidden_size
            )));
        }
        let text = self.decoder.embed_tokens(ids)?;
        if rows == 0 {
            return Ok(text);
        }
        // Gather from [text rows ; image rows]: position i takes text row i, or the next image row.
        let table = Tensor::cat(&[&text, &image_features.to_dtype(self.dtype())?], 0)?;
        let mut next_image = ids.len() as u32;
        let index: Vec<u32> = (0..ids.len() as u32)
            .zip(ids)
            .map(|(i, &id)| {
                if id == image_id {
                    next_image += 1;
                    next_image - 1
                } else {
                    i
                }
            })
            .collect();
        let index = Tensor::new(index.as_slice(), self.device())?;
        Ok(table.index_select(&index, 0)?)
    }
}
