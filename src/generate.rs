//! `paligemma generate`: one image + prompt → text, on a local checkpoint.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use paligemma_engine::{GenerateRequest, SamplingParams, generate};
use paligemma_model::LoadOptions;
use paligemma_text::PromptLayout;

use crate::DtypeArg;
use crate::pipeline::Pipeline;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Hugging Face model directory (config.json, model.safetensors[.index.json], tokenizer.json).
    #[arg(long, env = "PALIGEMMA_MODEL")]
    pub model: PathBuf,
    /// Image file (PNG, JPEG or WebP).
    #[arg(long)]
    pub image: PathBuf,
    /// Task prompt, e.g. "caption en", "answer en what is this?", "detect cat ; dog".
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// 0 = no limit.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
    pub dtype: DtypeArg,
    /// `cpu`, or `cuda` / `cuda:N` (needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// Include per-token log-probabilities in the JSON output.
    #[arg(long)]
    pub logprobs: bool,
    /// Write pixel_values, image_features, prefill_logits and step_logits (f32) to this
    /// safetensors file.
    #[arg(long)]
    pub dump: Option<PathBuf>,
}

pub fn run(args: &GenerateArgs) -> Result<()> {
    let opts = LoadOptions {
        dtype: args.dtype.dtype(),
        device: crate::parse_device(&args.device)?,
        show_progress: std::io::stderr().is_terminal(),
    };
    let pipeline = Pipeline::load(&args.model, &opts)?;
    let image_bytes = std::fs::read(&args.image)
        .with_context(|| format!("cannot read image {}", args.image.display()))?;
    let pixel_values = pipeline
        .pixel_values(&image_bytes)
        .with_context(|| format!("image {}", args.image.display()))?;
    let model = &pipeline.model;
    let image_features = model.encode_images(&pixel_values)?.squeeze(0)?;
    let prompt = PromptLayout::build(
        pipeline.tokenizer(),
        &args.prompt,
        model.config().num_image_tokens(),
    )?;
    let sampling = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
    };
    let eos_ids = &pipeline.eos_ids;
    let request = GenerateRequest {
        prompt_ids: &prompt.ids,
        image_features: &image_features,
        max_new_tokens: args.max_new_tokens,
        sampling,
        eos_ids,
        stop_ids: &[],
        logprobs: args.logprobs,
        keep_logits: args.dump.is_some(),
    };

    let mut streamer = pipeline.detokenizer.stream();
    let output = generate(model.decoder(), &request, |token, _| {
        if !args.json {
            print_delta(streamer.push(token));
        }
        true
    })?;
    if !args.json {
        print_delta(streamer.finish());
    }
    let text_ids: Vec<u32> = output
        .tokens
        .iter()
        .copied()
        .filter(|t| !eos_ids.contains(t))
        .collect();
    let text = pipeline.tokenizer().decode(&text_ids, true)?;
    if args.json {
        let mut json = serde_json::json!({
            "text": text,
            "tokens": output.tokens,
            "prompt_tokens": prompt.ids.len(),
            "finish_reason": output.finish_reason.as_str(),
        });
        if let Some(lps) = &output.logprobs {
            json["logprobs"] = serde_json::json!(lps);
        }
        println!("{json}");
    } else {
        println!();
    }
    if let Some(path) = &args.dump {
        dump(path, &pixel_values, &image_features, &output.step_logits)?;
    }
    Ok(())
}

/// Writes a streamed text delta to stdout at once (a tokenizer failure only ends streaming;
/// the final text is decoded again from all ids).
fn print_delta(delta: Result<String, paligemma_text::TextError>) {
    if let Ok(delta) = delta
        && !delta.is_empty()
    {
        print!("{delta}");
        let _ = std::io::stdout().flush();
    }
}

fn dump(
    path: &PathBuf,
    pixels: &Tensor,
    features: &Tensor,
    step_logits: &[Vec<f32>],
) -> Result<()> {
    let device = Device::Cpu;
    let vocab = step_logits.first().map_or(0, Vec::len);
    let flat: Vec<f32> = step_logits.iter().flatten().copied().collect();
    let steps = Tensor::from_vec(flat, (step_logits.len(), vocab), &device)?;
    let prefill = match step_logits.first() {
        Some(row) => Tensor::new(row.as_slice(), &device)?,
        None => Tensor::zeros(0, DType::F32, &device)?,
    };
    let tensors: HashMap<String, Tensor> = [
        ("pixel_values", pixels.to_dtype(DType::F32)?),
        ("image_features", features.to_dtype(DType::F32)?),
        ("prefill_logits", prefill),
        ("step_logits", steps),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    candle_core::safetensors::save(&tensors, path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
