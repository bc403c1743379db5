//! `paligemma bench`: vision encode, prefill and decode timings on random weights of a real
//! PaliGemma shape, with peak RSS. Each dtype runs in its own child process so that peak RSS is
//! that dtype's alone.
//!
//! This measures our implementation only; the side-by-side comparison with transformers is a
//! separate benchmark (see the performance issue).

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use candle_nn::var_builder::SimpleBackend;
use clap::{Args, ValueEnum};
use paligemma_model::{DecoderInput, LogitsRows, PaliGemma, PaliGemmaConfig};

use crate::DtypeArg;

#[derive(Debug, Clone, Copy, ValueEnum)]
#[allow(non_camel_case_types)]
pub enum ShapeArg {
    /// PaliGemma 1 3B at 224 px: SigLIP-So400m + Gemma 2B (18 layers, MQA).
    #[value(name = "pg1-224")]
    Pg1_224,
    /// PaliGemma 2 3B at 224 px: SigLIP-So400m + Gemma 2 2B (26 layers).
    #[value(name = "pg2-3b-224")]
    Pg2_3B224,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value_t = ShapeArg::Pg1_224)]
    pub shape: ShapeArg,
    /// Run one dtype in this process (default: f32 and bf16, each in a child process).
    #[arg(long, value_enum)]
    pub dtype: Option<DtypeArg>,
    /// Prompt text tokens after the 256 image tokens.
    #[arg(long, default_value_t = 10)]
    pub text_tokens: usize,
    /// Decode steps to time.
    #[arg(long, default_value_t = 8)]
    pub decode_tokens: usize,
    /// Override the number of decoder layers (quick runs; the real shape when absent).
    #[arg(long)]
    pub text_layers: Option<usize>,
    /// Override the number of vision layers.
    #[arg(long)]
    pub vision_layers: Option<usize>,
    /// `cpu`, or `cuda` / `cuda:N` (needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

fn config_json(shape: ShapeArg) -> &'static str {
    match shape {
        ShapeArg::Pg1_224 => {
            r#"{"model_type":"paligemma","image_token_index":257152,"projection_dim":2048,
            "text_config":{"model_type":"gemma","hidden_size":2048,"intermediate_size":16384,
              "num_hidden_layers":18,"num_attention_heads":8,"num_key_value_heads":1,"vocab_size":257216},
            "vision_config":{"hidden_size":1152,"intermediate_size":4304,"num_hidden_layers":27,
              "num_attention_heads":16,"patch_size":14,"image_size":224}}"#
        }
        ShapeArg::Pg2_3B224 => {
            r#"{"model_type":"paligemma","image_token_index":257152,"projection_dim":2304,
            "text_config":{"model_type":"gemma2","hidden_size":2304,"intermediate_size":9216,
              "num_hidden_layers":26,"num_attention_heads":8,"num_key_value_heads":4,"vocab_size":257216},
            "vision_config":{"hidden_size":1152,"intermediate_size":4304,"num_hidden_layers":27,
              "num_attention_heads":16,"patch_size":14,"image_size":224}}"#
        }
    }
}

/// Deterministic pseudo-random weights in about [-0.035, 0.035], generated on demand
/// (far faster than a Gaussian sampler for billions of values; timings do not depend on them).
struct RandomWeights;

impl SimpleBackend for RandomWeights {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let seed = name
            .bytes()
            .fold(0x9E37_79B9u32, |h, b| h.rotate_left(5) ^ u32::from(b));
        let n = shape.elem_count();
        let data: Vec<f32> = (0..n as u32)
            .map(|i| {
                let x = i
                    .wrapping_mul(2_654_435_761)
                    .wrapping_add(seed)
                    .rotate_left(13);
                (x >> 8) as f32 / (1u32 << 24) as f32 * 0.07 - 0.035
            })
            .collect();
        Tensor::from_vec(data, shape, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("random weights need a shape for {name}")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

pub fn run(args: &BenchArgs) -> Result<()> {
    match args.dtype {
        Some(dtype) => run_one(args, dtype),
        None => {
            let exe = std::env::current_exe().context("cannot find own executable")?;
            for dtype in ["f32", "bf16"] {
                let mut cmd = Command::new(&exe);
                cmd.args(["bench", "--dtype", dtype, "--shape", shape_name(args.shape)]);
                cmd.args(["--text-tokens", &args.text_tokens.to_string()]);
                cmd.args(["--decode-tokens", &args.decode_tokens.to_string()]);
                cmd.args(["--device", &args.device]);
                if let Some(n) = args.text_layers {
                    cmd.args(["--text-layers", &n.to_string()]);
                }
                if let Some(n) = args.vision_layers {
                    cmd.args(["--vision-layers", &n.to_string()]);
                }
                let status = cmd.status().context("cannot start benchmark child")?;
                if !status.success() {
                    bail!("{dtype} benchmark failed: {status}");
                }
            }
            Ok(())
        }
    }
}

fn shape_name(shape: ShapeArg) -> &'static str {
    match shape {
        ShapeArg::Pg1_224 => "pg1-224",
        ShapeArg::Pg2_3B224 => "pg2-3b-224",
    }
}

fn run_one(args: &BenchArgs, dtype_arg: DtypeArg) -> Result<()> {
    let mut config = PaliGemmaConfig::from_json(config_json(args.shape))?;
    if let Some(n) = args.text_layers {
        config.text.num_hidden_layers = n;
        config.text.layer_attention.truncate(n);
        config
            .text
            .layer_attention
            .resize(n, paligemma_model::config::LayerAttention::Full);
    }
    if let Some(n) = args.vision_layers {
        config.vision.num_hidden_layers = n;
    }
    let dtype = dtype_arg.dtype();
    let device = crate::parse_device(&args.device)?;
    let start = Instant::now();
    let vb = VarBuilder::from_backend(Box::new(RandomWeights), dtype, device.clone());
    let model = PaliGemma::new(config.clone(), vb, false)?;
    let init_s = start.elapsed().as_secs_f64();

    let size = config.vision.image_size;
    let pixels = Tensor::rand(-1f32, 1f32, (1, 3, size, size), &device)?;
    let start = Instant::now();
    let features = model.encode_images(&pixels)?.squeeze(0)?;
    device.synchronize()?;
    let vision_ms = start.elapsed().as_secs_f64() * 1e3;

    let n_image = config.num_image_tokens();
    let mut ids = vec![config.image_token_index; n_image];
    ids.push(config.bos_token_id);
    ids.extend((0..args.text_tokens as u32).map(|i| 1000 + i));
    let decoder = model.decoder();
    let mut kv = model.new_kv_cache();
    let start = Instant::now();
    let embeds = model.embed_prompt(&ids, &features)?;
    let input = DecoderInput {
        embeds: &embeds,
        prefix_len: ids.len(),
        logits: LogitsRows::Last,
    };
    let mut logits = decoder.forward(&input, &mut kv)?;
    device.synchronize()?;
    let prefill_ms = start.elapsed().as_secs_f64() * 1e3;

    let start = Instant::now();
    for _ in 0..args.decode_tokens {
        let token = logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?;
        let embeds = decoder.embed_tokens(&[token])?;
        let input = DecoderInput {
            embeds: &embeds,
            prefix_len: ids.len(),
            logits: LogitsRows::Last,
        };
        logits = decoder.forward(&input, &mut kv)?;
    }
    let decode_s = start.elapsed().as_secs_f64();
    let tok_s = args.decode_tokens as f64 / decode_s;
    println!(
        "{shape} {dt:>4}: vision encode {vision_ms:8.0} ms | prefill {n} tokens {prefill_ms:8.0} ms | decode {tok_s:6.2} tok/s ({ms:.0} ms/token) | peak RSS {rss:.0} MiB | weight init {init_s:.1} s | threads {threads}",
        shape = shape_name(args.shape),
        dt = dtype_arg.name(),
        n = ids.len(),
        ms = decode_s * 1e3 / args.decode_tokens.max(1) as f64,
        rss = peak_rss_mib().unwrap_or(f64::NAN),
        threads = candle_core::utils::get_num_threads(),
    );
    Ok(())
}
