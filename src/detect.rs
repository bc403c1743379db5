//! `paligemma detect|segment`: labels → `detect a ; b` / `segment a ; b` on a local checkpoint,
//! in process (like `generate`), printed as JSON `{"objects", "invalid", "raw_text", ...}` and
//! optionally drawn on the image (`--out`, [`crate::annotate`]).
//!
//! The output is sorted into valid objects and invalid ones exactly as the gateway's Detect and
//! Segment RPCs do (the same [`structured_response`]), so the CLI and the API agree; pixel boxes
//! and masks refer to the ORIGINAL image, whose size is read from its header.

use std::io::{Cursor, IsTerminal};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use paligemma_engine::{GenerateRequest, SamplingParams, generate};
use paligemma_gateway_service::detect::{Generated, structured_response};
use paligemma_model::LoadOptions;
use paligemma_proto::v1 as pb;
use paligemma_segment::{CocoRle, MaskDecoder};
use paligemma_text::{
    BoxConvention, ImageSize, LabelMode, ParseOptions, PixelBox, PromptLayout, detect_prompt,
    segment_prompt,
};
use serde_json::{Value, json};

use crate::DtypeArg;
use crate::annotate::{self, Annotation};
use crate::pipeline::Pipeline;

/// Which task the subcommand runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    Detect,
    Segment,
}

/// How `<loc>` bins become pixels (spec §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConventionArg {
    /// big_vision's evaluator: bin / 1023, truncated; masks thresholded at logit > 0.
    BigVision,
    /// The demo Space: bin / 1024, rounded; masks = the demo's soft mask > 0.5.
    Demo,
}

#[derive(Debug, Args)]
pub struct DetectArgs {
    /// Hugging Face model directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long, env = "PALIGEMMA_MODEL")]
    pub model: PathBuf,
    /// Image file (PNG, JPEG or WebP).
    #[arg(long)]
    pub image: PathBuf,
    /// What to look for, separated by `;`, e.g. "cat;dog".
    #[arg(long)]
    pub labels: String,
    /// big_vision's VQ-VAE checkpoint (vae-oid.npz); required by `segment`.
    #[arg(long, env = "PALIGEMMA_GATEWAY_VAE")]
    pub vae: Option<PathBuf>,
    /// Write the image with boxes, labels (and masks) drawn to this PNG file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
    pub dtype: DtypeArg,
    /// `cpu`, or `cuda` / `cuda:N` (needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, value_enum, default_value_t = ConventionArg::BigVision)]
    pub convention: ConventionArg,
    /// Upper bound on generated tokens (an object takes 4 locs, 16 segs and its label).
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Report labels exactly as generated (trailing spaces kept) instead of trimmed.
    #[arg(long)]
    pub exact_labels: bool,
}

/// Runs `task` and prints the JSON result.
///
/// # Errors
/// Bad labels, unreadable image or checkpoint, a missing `--vae` for `segment`, generation or
/// mask failures, an unwritable `--out`.
pub fn run(args: &DetectArgs, task: Task) -> Result<()> {
    let labels: Vec<&str> = args.labels.split(';').collect();
    let prompt = match task {
        Task::Detect => detect_prompt(&labels),
        Task::Segment => segment_prompt(&labels),
    }?;
    let masks = match (task, &args.vae) {
        (Task::Segment, Some(path)) => Some(
            MaskDecoder::from_npz(path)
                .with_context(|| format!("cannot load the VQ-VAE checkpoint {}", path.display()))?,
        ),
        (Task::Segment, None) => {
            bail!("segment needs a VQ-VAE checkpoint: pass --vae DIR/vae-oid.npz")
        }
        (Task::Detect, _) => None,
    };
    let image_bytes = std::fs::read(&args.image)
        .with_context(|| format!("cannot read image {}", args.image.display()))?;
    let size =
        header_size(&image_bytes).with_context(|| format!("image {}", args.image.display()))?;

    let opts = LoadOptions {
        dtype: args.dtype.dtype(),
        device: crate::parse_device(&args.device)?,
        show_progress: std::io::stderr().is_terminal(),
    };
    let pipeline = Pipeline::load(&args.model, &opts)?;
    let generated = generate_text(&pipeline, &image_bytes, &prompt, args.max_new_tokens)
        .with_context(|| format!("image {}", args.image.display()))?;
    let options = ParseOptions {
        convention: match args.convention {
            ConventionArg::BigVision => BoxConvention::BigVision,
            ConventionArg::Demo => BoxConvention::Demo,
        },
        labels: if args.exact_labels {
            LabelMode::Exact
        } else {
            LabelMode::Trimmed
        },
        unique_labels: false,
    };
    let generated = Generated {
        text: generated.0,
        usage: Some(generated.1),
        size,
    };
    let response = structured_response(generated, &options, masks.as_ref().map(|m| (m, false)))?;
    if let Some(out) = &args.out {
        write_annotated(&image_bytes, &response, out)?;
    }
    println!("{}", to_json(&response));
    Ok(())
}

/// The original image's size from its header.
fn header_size(bytes: &[u8]) -> Result<ImageSize> {
    let (w, h) = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()?
        .into_dimensions()
        .context("cannot read the image size")?;
    Ok(ImageSize::new(w, h)?)
}

/// Greedy generation: the text without `<eos>` and the token counts.
fn generate_text(
    pipeline: &Pipeline,
    image_bytes: &[u8],
    prompt: &str,
    max_new_tokens: usize,
) -> Result<(String, pb::Usage)> {
    let model = &pipeline.model;
    let pixel_values = pipeline.pixel_values(image_bytes)?;
    let features = model.encode_images(&pixel_values)?.squeeze(0)?;
    let layout = PromptLayout::build(
        pipeline.tokenizer(),
        prompt,
        model.config().num_image_tokens(),
    )?;
    let eos_ids = &pipeline.eos_ids;
    let request = GenerateRequest {
        prompt_ids: &layout.ids,
        image_features: &features,
        max_new_tokens,
        sampling: SamplingParams::default(),
        eos_ids,
        stop_ids: &[],
        logprobs: false,
        keep_logits: false,
    };
    let output = generate(model.decoder(), &request, |_, _| true)?;
    let text_ids: Vec<u32> = output
        .tokens
        .iter()
        .copied()
        .filter(|t| !eos_ids.contains(t))
        .collect();
    let usage = pb::Usage {
        prompt_tokens: u32::try_from(layout.ids.len()).unwrap_or(u32::MAX),
        generated_tokens: u32::try_from(output.tokens.len()).unwrap_or(u32::MAX),
    };
    Ok((pipeline.tokenizer().decode(&text_ids, true)?, usage))
}

fn write_annotated(image_bytes: &[u8], response: &pb::DetectResponse, out: &PathBuf) -> Result<()> {
    let mut img = image::load_from_memory(image_bytes)
        .context("cannot decode the image to draw on")?
        .to_rgb8();
    let masks = response
        .objects
        .iter()
        .map(|o| {
            o.mask
                .as_ref()
                .map(|m| {
                    let size = <[u32; 2]>::try_from(m.size.as_slice())
                        .context("mask size is not [height, width]")?;
                    let rle = CocoRle {
                        size,
                        counts: m.counts.clone(),
                    };
                    Ok::<_, anyhow::Error>(rle.to_mask()?)
                })
                .transpose()
        })
        .collect::<Result<Vec<_>>>()?;
    let annotations: Vec<Annotation<'_>> = response
        .objects
        .iter()
        .zip(&masks)
        .map(|(o, mask)| Annotation {
            label: &o.label,
            box_px: o.box_px.map_or(
                PixelBox {
                    ymin: 0,
                    xmin: 0,
                    ymax: 0,
                    xmax: 0,
                },
                |b| PixelBox {
                    ymin: b.ymin,
                    xmin: b.xmin,
                    ymax: b.ymax,
                    xmax: b.xmax,
                },
            ),
            mask: mask.as_ref(),
        })
        .collect();
    annotate::draw(&mut img, &annotations);
    img.save_with_format(out, image::ImageFormat::Png)
        .with_context(|| format!("cannot write {}", out.display()))
}

/// The JSON printed on stdout (field names as in gateway.proto).
fn to_json(r: &pb::DetectResponse) -> Value {
    let objects: Vec<Value> = r
        .objects
        .iter()
        .map(|o| {
            let mut v = json!({
                "label": o.label,
                "box": o.r#box.map(|b| json!({
                    "ymin": b.ymin, "xmin": b.xmin, "ymax": b.ymax, "xmax": b.xmax,
                })),
                "box_px": o.box_px.map(|b| json!({
                    "ymin": b.ymin, "xmin": b.xmin, "ymax": b.ymax, "xmax": b.xmax,
                })),
                "loc_bins": o.loc_bins,
                "seg": if o.seg.is_empty() { Value::Null } else { json!(o.seg) },
            });
            if let Some(m) = &o.mask {
                v["mask"] = json!({
                    "size": m.size,
                    "counts": m.counts,
                    "area": m.area,
                });
            }
            v
        })
        .collect();
    let invalid: Vec<Value> = r
        .invalid
        .iter()
        .map(|i| json!({"text": i.text, "problems": i.problems}))
        .collect();
    json!({
        "objects": objects,
        "invalid": invalid,
        "raw_text": r.raw_text,
        "image_width": r.image_width,
        "image_height": r.image_height,
        "usage": r.usage.map(|u| json!({
            "prompt_tokens": u.prompt_tokens,
            "generated_tokens": u.generated_tokens,
        })),
    })
}
