//! The vision half of PaliGemma: SigLIP tower + `multi_modal_projector`, loadable on its own so
//! the vision tier never maps the decoder's weights.
//!
//! Output rows ("soft tokens") are `[N, D]` with D the decoder width; they enter the decoder
//! unscaled (spec §4).

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

use crate::checkpoint::{Checkpoint, ModelFiles};
use crate::config::PaliGemmaConfig;
use crate::error::{ModelError, Result};
use crate::layers::linear::Linear;
use crate::paligemma::{LoadOptions, check_dtype};
use crate::siglip::VisionTower;

/// SigLIP + projector; holds weights only.
#[derive(Debug, Clone)]
pub struct VisionEncoder {
    config: PaliGemmaConfig,
    tower: VisionTower,
    /// `multi_modal_projector.linear`: vision hidden → decoder hidden, with bias.
    projector: Linear,
    dtype: DType,
    device: Device,
}

impl VisionEncoder {
    /// Loads only the vision tower and projector of a model directory.
    ///
    /// # Errors
    /// As [`crate::PaliGemma::load`].
    pub fn load(files: &ModelFiles, opts: &LoadOptions) -> Result<Self> {
        check_dtype(opts.dtype)?;
        let config = PaliGemmaConfig::from_file(&files.config)?;
        let checkpoint = Checkpoint::open(&files.weights, opts.show_progress)?;
        let vb = VarBuilder::from_backend(Box::new(checkpoint), opts.dtype, opts.device.clone());
        Self::new(config, vb)
    }

    /// `vb` at the checkpoint root (legacy names).
    ///
    /// # Errors
    /// Missing or mis-shaped tensors.
    pub fn new(config: PaliGemmaConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let tower = VisionTower::new(&config.vision, vb.pp("vision_tower.vision_model"))?;
        let projector = Linear::new(
            config.vision.hidden_size,
            config.projection_dim,
            true,
            vb.pp("multi_modal_projector.linear"),
        )?;
        Ok(Self {
            config,
            tower,
            projector,
            dtype: vb.dtype(),
            device: vb.device().clone(),
        })
    }

    pub fn config(&self) -> &PaliGemmaConfig {
        &self.config
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// `[N, D]`: soft tokens per image and their width.
    pub fn output_shape(&self) -> (usize, usize) {
        (self.config.num_image_tokens(), self.config.projection_dim)
    }

    /// `pixels [B, 3, S, S]` (any float dtype; cast to the model dtype as transformers does) →
    /// soft tokens `[B, N, D]` in the model dtype.
    ///
    /// # Errors
    /// Wrong pixel shape; device errors.
    pub fn encode(&self, pixels: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = pixels.dims4().map_err(|_| {
            ModelError::Input(format!(
                "pixel_values must be [B, 3, S, S], got {:?}",
                pixels.dims()
            ))
        })?;
        let s = self.config.vision.image_size;
        if c != self.config.vision.num_channels || h != s || w != s {
            return Err(ModelError::Input(format!(
                "pixel_values are [{c}, {h}, {w}] per image, the vision tower expects [{}, {s}, {s}]",
                self.config.vision.num_channels
            )));
        }
        let pixels = pixels.to_device(&self.device)?.to_dtype(self.dtype)?;
        let hidden = self.tower.forward(&pixels)?;
        Ok(self.projector.forward(&hidden)?)
    }
}
