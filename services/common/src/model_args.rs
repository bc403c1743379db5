//! Command-line options naming the model a tier serves (shared by `serve` and `up`).

use std::path::PathBuf;

use anyhow::{Result, bail};
use candle_core::{DType, Device};
use clap::{Args, ValueEnum};
use paligemma_model::LoadOptions;

/// Weight and activation dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DtypeArg {
    F32,
    Bf16,
}

impl DtypeArg {
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }
}

/// `cpu`, `cuda` or `cuda:N`.
///
/// # Errors
/// An unknown spelling, or CUDA requested from a build without the `cuda` feature.
pub fn parse_device(spec: &str) -> Result<Device> {
    let ordinal = match spec {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        other => match other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) => n,
            None => bail!("--device `{spec}`: expected cpu, cuda or cuda:N"),
        },
    };
    Device::new_cuda(ordinal).map_err(|e| {
        anyhow::anyhow!("--device {spec}: {e} (was the binary built with --features cuda?)")
    })
}

#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Hugging Face PaliGemma model directory (config.json, model.safetensors[.index.json],
    /// tokenizer.json, preprocessor_config.json).
    #[arg(long, env = "PALIGEMMA_MODEL")]
    pub model: PathBuf,
    /// Id clients use to name the model (default: the directory's name).
    #[arg(long, env = "PALIGEMMA_MODEL_ID")]
    pub model_id: Option<String>,
    #[arg(long, value_enum, default_value_t = DtypeArg::F32, env = "PALIGEMMA_DTYPE")]
    pub dtype: DtypeArg,
    /// `cpu`, or `cuda` / `cuda:N` (needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu", env = "PALIGEMMA_DEVICE")]
    pub device: String,
}

impl ModelArgs {
    /// The model id: `--model-id`, else the directory name.
    pub fn id(&self) -> String {
        self.model_id.clone().unwrap_or_else(|| {
            self.model.file_name().map_or_else(
                || "paligemma".to_string(),
                |n| n.to_string_lossy().into_owned(),
            )
        })
    }

    /// # Errors
    /// An invalid `--device`.
    pub fn load_options(&self, show_progress: bool) -> Result<LoadOptions> {
        Ok(LoadOptions {
            dtype: self.dtype.dtype(),
            device: parse_device(&self.device)?,
            show_progress,
        })
    }
}
