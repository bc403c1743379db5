//! `paligemma bench-compare`: our implementation and Hugging Face transformers side by side, on
//! identical random weights, in one run (performance issue, part 1).
//!
//! 1. `tools/reference/bench_transformers.py make` builds a random PaliGemma of the requested
//!    shape with transformers, `save_pretrained`s it (safetensors, f32) to a temporary directory
//!    and writes a 1 MP JPEG next to it. Both sides load that directory.
//! 2. This process measures the machine's memory bandwidth (a multi-threaded read of a large
//!    array), which bounds decode: every token streams all decoder weights once.
//! 3. For each dtype, our side runs in a child `paligemma bench-compare --worker DIR` and the
//!    transformers side in `bench_transformers.py run`, one after the other, each in its own
//!    process so that peak RSS is its own. Both print one JSON object.
//! 4. The table shows ours, theirs and ours/theirs (time ratios: below 1 means we are faster).
//!
//! Without a Python that imports torch and transformers the comparison is skipped with a message
//! and our side runs alone on uniform random weights of the same shape (no preprocessing row then).
//! Timings on a shared machine are noisy: compare ratios from the same run only.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use clap::{Args, ValueEnum};
use paligemma_model::{
    DecoderInput, LoadOptions, LogitsRows, ModelFiles, PaliGemma, PaliGemmaConfig, TextConfig,
};
use serde::{Deserialize, Serialize};

use crate::DtypeArg;

/// The transformers side, relative to the repository root.
const SCRIPT: &str = "tools/reference/bench_transformers.py";
/// Text tokens after the image tokens (`<bos>` + 15), as in the Python script.
const TEXT_TOKENS: usize = 16;

#[derive(Debug, Clone, Copy, ValueEnum)]
#[allow(non_camel_case_types)]
pub enum CompareShape {
    /// PaliGemma-3B widths with 4 vision + 4 text layers and a 32k vocab (~2 GB f32 decoder).
    Mid,
    /// The real PaliGemma 1 3B at 224 px (needs ~12 GB per f32 copy).
    #[value(name = "pg1-224")]
    Pg1_224,
    /// PaliGemma 2 3B widths (Gemma 2 2B decoder: softcaps, sliding window, 4 KV heads) with
    /// 4 + 4 layers and a 32k vocab.
    #[value(name = "pg2-mid")]
    Pg2Mid,
    /// The real PaliGemma 2 3B at 224 px.
    #[value(name = "pg2-3b-224")]
    Pg2_3B224,
}

impl CompareShape {
    fn name(self) -> &'static str {
        match self {
            Self::Mid => "mid",
            Self::Pg1_224 => "pg1-224",
            Self::Pg2Mid => "pg2-mid",
            Self::Pg2_3B224 => "pg2-3b-224",
        }
    }

    /// `config.json` for the random-weight fallback; the same shape the Python script builds
    /// (`SHAPES` in tools/reference/bench_transformers.py).
    fn config_json(self) -> String {
        let (text_layers, vision_layers, vocab, image_token) = match self {
            Self::Mid | Self::Pg2Mid => (4, 4, 32768, 32767),
            Self::Pg1_224 | Self::Pg2_3B224 => (18, 27, 257_216, 257_152),
        };
        let text_layers = match self {
            Self::Pg2_3B224 => 26,
            _ => text_layers,
        };
        // Gemma 1 2B and Gemma 2 2B widths; the rest are each family's HF defaults.
        let (family, hidden, intermediate, kv_heads) = match self {
            Self::Mid | Self::Pg1_224 => ("gemma", 2048, 16384, 1),
            Self::Pg2Mid | Self::Pg2_3B224 => ("gemma2", 2304, 9216, 4),
        };
        format!(
            r#"{{"model_type":"paligemma","image_token_index":{image_token},"projection_dim":{hidden},
            "text_config":{{"model_type":"{family}","hidden_size":{hidden},"intermediate_size":{intermediate},
              "num_hidden_layers":{text_layers},"num_attention_heads":8,"num_key_value_heads":{kv_heads},
              "head_dim":256,"vocab_size":{vocab}}},
            "vision_config":{{"hidden_size":1152,"intermediate_size":4304,
              "num_hidden_layers":{vision_layers},"num_attention_heads":16,"patch_size":14,
              "image_size":224}}}}"#
        )
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DtypeChoice {
    F32,
    Bf16,
    Both,
}

#[derive(Debug, Args)]
pub struct BenchCompareArgs {
    /// Python interpreter with the pinned tools/reference environment.
    #[arg(long, env = "PALIGEMMA_PYTHON", default_value = "python3")]
    pub python: PathBuf,
    #[arg(long, value_enum, default_value_t = CompareShape::Mid)]
    pub shape: CompareShape,
    #[arg(long, value_enum, default_value_t = DtypeChoice::Both)]
    pub dtype: DtypeChoice,
    /// Timed decode steps (after one warm-up step).
    #[arg(long, default_value_t = 8)]
    pub decode_tokens: usize,
    /// Rounds per dtype, alternating ours and transformers; each metric keeps its best round
    /// (peak RSS its largest), which damps a shared machine's noise for both sides alike.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rounds: u32,
    /// Batch size of the second vision-encode measurement (1 skips it).
    #[arg(long, default_value_t = 8)]
    pub vision_batch: usize,
    /// Reuse a model directory made by an earlier run instead of building a new one.
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
    /// Internal: run our side on this model directory and print JSON.
    #[arg(long, hide = true)]
    pub worker: Option<PathBuf>,
    /// Internal (with `--worker`): random weights of `--shape` instead of loading the directory.
    #[arg(long, hide = true)]
    pub random_weights: bool,
    /// Internal (with `--worker`): the dtype to run.
    #[arg(long, hide = true, value_enum)]
    pub worker_dtype: Option<DtypeArg>,
}

/// Uniform random weights in [-0.035, 0.035] for the no-Python fallback. Not zeros: fresh zero
/// pages all map one physical page, so "reading" them would hit the cache and time nothing.
struct UniformWeights;

impl candle_nn::var_builder::SimpleBackend for UniformWeights {
    fn get(
        &self,
        shape: candle_core::Shape,
        _: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        Tensor::rand(-0.035f32, 0.035, shape, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("random weights need a shape for {name}")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// One side's measurements for one dtype (the JSON both workers print).
#[derive(Debug, Default, Serialize, Deserialize)]
struct SideResult {
    preprocess_ms: Option<f64>,
    vision_b1_ms: f64,
    vision_batch_ms: Option<f64>,
    prefill_ms: f64,
    prefill_tokens: usize,
    decode_ms_per_token: f64,
    peak_rss_mib: f64,
    threads: usize,
}

impl SideResult {
    /// The best of two rounds: the shorter time per metric, the larger peak RSS.
    fn best(self, other: Self) -> Self {
        let min_opt = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Self {
            preprocess_ms: min_opt(self.preprocess_ms, other.preprocess_ms),
            vision_b1_ms: self.vision_b1_ms.min(other.vision_b1_ms),
            vision_batch_ms: min_opt(self.vision_batch_ms, other.vision_batch_ms),
            prefill_ms: self.prefill_ms.min(other.prefill_ms),
            prefill_tokens: self.prefill_tokens,
            decode_ms_per_token: self.decode_ms_per_token.min(other.decode_ms_per_token),
            peak_rss_mib: self.peak_rss_mib.max(other.peak_rss_mib),
            threads: self.threads,
        }
    }
}

pub fn run(args: &BenchCompareArgs) -> Result<()> {
    if let Some(dir) = &args.worker {
        let dtype = args.worker_dtype.unwrap_or(DtypeArg::F32);
        let result = worker(args, dir, dtype)?;
        println!("{}", serde_json::to_string(&result)?);
        return Ok(());
    }
    let threads = candle_core::utils::get_num_threads();
    let python = python_ok(&args.python);
    if let Err(why) = &python {
        eprintln!("transformers comparison skipped: {why:#}; running our side on random weights");
    }
    let temp = TempDir::new(args.shape)?;
    let model_dir = match (&args.model_dir, &python) {
        (Some(dir), _) => Some(dir.clone()),
        (None, Ok(())) => {
            eprintln!(
                "building random {} weights with transformers in {} ...",
                args.shape.name(),
                temp.0.display()
            );
            run_json::<serde_json::Value>(
                Command::new(&args.python)
                    .arg(script_path()?)
                    .args(["make", "--shape", args.shape.name(), "--out"])
                    .arg(&temp.0),
            )?;
            Some(temp.0.clone())
        }
        (None, Err(_)) => None,
    };
    let config = match &model_dir {
        Some(dir) => PaliGemmaConfig::from_file(&dir.join("config.json"))?,
        None => PaliGemmaConfig::from_json(&args.shape.config_json())?,
    };
    eprintln!("measuring memory bandwidth with {threads} threads ...");
    let bandwidth = read_bandwidth_gbs(threads);

    let dtypes: &[DtypeArg] = match args.dtype {
        DtypeChoice::F32 => &[DtypeArg::F32],
        DtypeChoice::Bf16 => &[DtypeArg::Bf16],
        DtypeChoice::Both => &[DtypeArg::F32, DtypeArg::Bf16],
    };
    let exe = std::env::current_exe().context("cannot find own executable")?;
    let mut rows = Vec::new();
    for &dtype in dtypes {
        let (mut ours, mut theirs): (Option<SideResult>, Option<SideResult>) = (None, None);
        for round in 1..=args.rounds {
            eprintln!("ours, {}, round {round}/{} ...", dtype.name(), args.rounds);
            let mut cmd = Command::new(&exe);
            cmd.args(["bench-compare", "--shape", args.shape.name()]);
            cmd.args(["--worker-dtype", dtype.name()]);
            cmd.args(["--decode-tokens", &args.decode_tokens.to_string()]);
            cmd.args(["--vision-batch", &args.vision_batch.to_string()]);
            match &model_dir {
                Some(dir) => cmd.arg("--worker").arg(dir),
                None => cmd.args(["--worker", ".", "--random-weights"]),
            };
            let result: SideResult = run_json(&mut cmd)?;
            ours = Some(match ours {
                Some(prev) => prev.best(result),
                None => result,
            });
            if let (Some(dir), Ok(())) = (&model_dir, &python) {
                eprintln!(
                    "transformers, {}, round {round}/{} ...",
                    dtype.name(),
                    args.rounds
                );
                let result = run_json::<SideResult>(
                    Command::new(&args.python)
                        .arg(script_path()?)
                        .args(["run", "--dtype", dtype.name()])
                        .args(["--threads", &threads.to_string()])
                        .args(["--decode-tokens", &args.decode_tokens.to_string()])
                        .args(["--vision-batch", &args.vision_batch.to_string()])
                        .arg("--model")
                        .arg(dir),
                );
                match result {
                    Ok(r) => {
                        theirs = Some(match theirs {
                            Some(prev) => prev.best(r),
                            None => r,
                        })
                    }
                    Err(e) => eprintln!("transformers {} failed: {e:#}", dtype.name()),
                }
            }
        }
        let ours = ours.context("no round ran")?;
        rows.push((dtype, ours, theirs));
    }
    print_table(args, &config.text, threads, bandwidth, &rows);
    Ok(())
}

/// Our side for one dtype: the same measurements, order and repetitions as the Python script.
fn worker(args: &BenchCompareArgs, dir: &Path, dtype: DtypeArg) -> Result<SideResult> {
    let device = Device::Cpu;
    let model = if args.random_weights {
        let config = PaliGemmaConfig::from_json(&args.shape.config_json())?;
        let vb = VarBuilder::from_backend(Box::new(UniformWeights), dtype.dtype(), device.clone());
        PaliGemma::new(config, vb, false)?
    } else {
        let opts = LoadOptions {
            dtype: dtype.dtype(),
            device: device.clone(),
            show_progress: false,
        };
        PaliGemma::load(&ModelFiles::discover(dir)?, &opts)?
    };
    let config = model.config().clone();
    let size = config.vision.image_size;
    let mut result = SideResult {
        threads: candle_core::utils::get_num_threads(),
        ..SideResult::default()
    };

    let image = dir.join("image.jpg");
    let pixels = if !args.random_weights && image.is_file() {
        let bytes = std::fs::read(&image)?;
        let cfg = paligemma_image::PreprocessorConfig::square(u32::try_from(size)?);
        let preprocess = || paligemma_image::preprocess_bytes(&bytes, &cfg);
        let p = preprocess()?;
        result.preprocess_ms = Some(best_ms(5, || preprocess().map(|_| ()))?);
        Tensor::from_vec(p.data, (1, p.channels, p.height, p.width), &device)?
    } else {
        Tensor::rand(-1f32, 1f32, (1, 3, size, size), &device)?
    };
    let encode = |batch: usize| -> Result<Tensor> {
        let pix = pixels.repeat((batch, 1, 1, 1))?.to_dtype(dtype.dtype())?;
        Ok(model.encode_images(&pix)?)
    };
    let features = encode(1)?.squeeze(0)?;
    result.vision_b1_ms = best_ms(2, || encode(1).map(|_| ()))?;
    if args.vision_batch > 1 {
        result.vision_batch_ms = Some(best_ms(1, || encode(args.vision_batch).map(|_| ()))?);
    }

    let mut ids = vec![config.image_token_index; config.num_image_tokens()];
    ids.push(config.bos_token_id);
    ids.extend((0..TEXT_TOKENS as u32 - 1).map(|i| 1000 + i));
    result.prefill_tokens = ids.len();
    let decoder = model.decoder();
    let prefill = || -> Result<(Tensor, paligemma_model::ContiguousKvCache)> {
        let mut kv = model.new_kv_cache();
        let embeds = model.embed_prompt(&ids, &features)?;
        let input = DecoderInput {
            embeds: &embeds,
            prefix_len: ids.len(),
            logits: LogitsRows::Last,
        };
        let logits = decoder.forward(&input, &mut kv)?;
        Ok((logits, kv))
    };
    let (mut logits, mut kv) = prefill()?;
    result.prefill_ms = best_ms(2, || prefill().map(|_| ()))?;

    let mut step = |logits: &Tensor| -> Result<Tensor> {
        let token = logits
            .squeeze(0)?
            .to_dtype(DType::F32)?
            .argmax(0)?
            .to_scalar::<u32>()?;
        let embeds = decoder.embed_tokens(&[token])?;
        let input = DecoderInput {
            embeds: &embeds,
            prefix_len: ids.len(),
            logits: LogitsRows::Last,
        };
        Ok(decoder.forward(&input, &mut kv)?)
    };
    logits = step(&logits)?; // warm-up
    let start = Instant::now();
    for _ in 0..args.decode_tokens {
        logits = step(&logits)?;
    }
    result.decode_ms_per_token =
        start.elapsed().as_secs_f64() * 1e3 / args.decode_tokens.max(1) as f64;
    result.peak_rss_mib = peak_rss_mib().unwrap_or(f64::NAN);
    Ok(result)
}

fn best_ms<E: Into<anyhow::Error>>(
    reps: usize,
    mut f: impl FnMut() -> std::result::Result<(), E>,
) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) {
        let start = Instant::now();
        f().map_err(Into::into)?;
        best = best.min(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(best)
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Bytes one decode step must read: every decoder layer's weights and the (tied) LM head.
fn decode_weight_bytes(text: &TextConfig, dtype: DType) -> f64 {
    let h = text.hidden_size as f64;
    let q = (text.num_attention_heads * text.head_dim) as f64;
    let kv = (text.num_key_value_heads * text.head_dim) as f64;
    let i = text.intermediate_size as f64;
    let layer = h * q + 2.0 * h * kv + q * h + 3.0 * h * i + 4.0 * h;
    let params = text.num_hidden_layers as f64 * layer + h + text.vocab_size as f64 * h;
    params * dtype.size_in_bytes() as f64
}

/// Read bandwidth in GB/s: `threads` threads summing disjoint parts of a 1 GiB array, best of 5.
fn read_bandwidth_gbs(threads: usize) -> f64 {
    const WORDS: usize = 1 << 27; // 1 GiB of u64
    let data: Vec<u64> = (0..WORDS as u64).collect();
    let chunk = WORDS.div_ceil(threads.max(1));
    let mut best = f64::INFINITY;
    let mut sink = 0u64;
    for _ in 0..5 {
        let start = Instant::now();
        sink ^= std::thread::scope(|s| {
            let handles: Vec<_> = data
                .chunks(chunk)
                .map(|part| s.spawn(move || sum_words(part)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(0))
                .fold(0, u64::wrapping_add)
        });
        best = best.min(start.elapsed().as_secs_f64());
    }
    std::hint::black_box(sink);
    (WORDS * 8) as f64 / best / 1e9
}

/// Eight independent accumulators so the loop vectorises and is bound by loads.
fn sum_words(part: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let mut blocks = part.chunks_exact(8);
    for block in &mut blocks {
        for (a, &w) in acc.iter_mut().zip(block) {
            *a = a.wrapping_add(w);
        }
    }
    let tail = blocks
        .remainder()
        .iter()
        .fold(0, |a: u64, &w| a.wrapping_add(w));
    acc.iter().fold(tail, |a, &w| a.wrapping_add(w))
}

fn print_table(
    args: &BenchCompareArgs,
    text: &TextConfig,
    threads: usize,
    bandwidth_gbs: f64,
    rows: &[(DtypeArg, SideResult, Option<SideResult>)],
) {
    println!(
        "\nbench-compare: shape {}, {threads} threads, measured read bandwidth {bandwidth_gbs:.1} GB/s",
        args.shape.name()
    );
    println!(
        "{:<5} {:<28} {:>12} {:>12} {:>12}",
        "dtype", "metric", "ours", "transformers", "ours/theirs"
    );
    for (dtype, ours, theirs) in rows {
        let b = args.vision_batch;
        let metrics: [(String, Option<f64>, Option<f64>); 6] = [
            (
                "preprocess 1 MP JPEG (ms)".into(),
                ours.preprocess_ms,
                theirs.as_ref().and_then(|t| t.preprocess_ms),
            ),
            (
                "vision encode b1 (ms)".into(),
                Some(ours.vision_b1_ms),
                theirs.as_ref().map(|t| t.vision_b1_ms),
            ),
            (
                format!("vision encode b{b} (ms)"),
                ours.vision_batch_ms,
                theirs.as_ref().and_then(|t| t.vision_batch_ms),
            ),
            (
                format!("prefill {} tokens (ms)", ours.prefill_tokens),
                Some(ours.prefill_ms),
                theirs.as_ref().map(|t| t.prefill_ms),
            ),
            (
                "decode b1 (ms/token)".into(),
                Some(ours.decode_ms_per_token),
                theirs.as_ref().map(|t| t.decode_ms_per_token),
            ),
            (
                "peak RSS (MiB)".into(),
                Some(ours.peak_rss_mib),
                theirs.as_ref().map(|t| t.peak_rss_mib),
            ),
        ];
        for (name, o, t) in metrics {
            let Some(o) = o else { continue };
            let (t_s, r_s) = match t {
                Some(t) => (format!("{t:.1}"), format!("{:.2}", o / t)),
                None => ("-".into(), "-".into()),
            };
            println!(
                "{:<5} {name:<28} {o:>12.1} {t_s:>12} {r_s:>12}",
                dtype.name()
            );
        }
        let bytes = decode_weight_bytes(text, dtype.dtype());
        let bound_ms = bytes / (bandwidth_gbs * 1e9) * 1e3;
        let theirs_frac = theirs
            .as_ref()
            .map(|t| {
                format!(
                    ", transformers {:.0} %",
                    100.0 * bound_ms / t.decode_ms_per_token
                )
            })
            .unwrap_or_default();
        println!(
            "{:<5} decode bound: {:.2} GB/token / {bandwidth_gbs:.1} GB/s = {bound_ms:.1} ms/token; ours at {:.0} % of it{theirs_frac}",
            dtype.name(),
            bytes / 1e9,
            100.0 * bound_ms / ours.decode_ms_per_token,
        );
    }
    println!(
        "(ratios are time ratios: < 1 means ours is faster; best of {} alternating round(s) per side on a shared machine, still noisy)",
        args.rounds
    );
}

/// Checks that `python` can import torch and transformers.
fn python_ok(python: &Path) -> Result<()> {
    let out = Command::new(python)
        .args(["-c", "import torch, transformers"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "{} cannot import torch/transformers ({}); install tools/reference/requirements.txt",
            python.display(),
            err.lines().last().unwrap_or("no message")
        );
    }
    Ok(())
}

/// The Python script, found from the working directory or the source tree this binary was built
/// from.
fn script_path() -> Result<PathBuf> {
    let candidates = [
        PathBuf::from(SCRIPT),
        Path::new(env!("CARGO_MANIFEST_DIR")).join(SCRIPT),
    ];
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .with_context(|| format!("cannot find {SCRIPT}"))
}

/// Runs a child whose stdout's last line is one JSON object; stderr passes through.
fn run_json<T: serde::de::DeserializeOwned>(cmd: &mut Command) -> Result<T> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    serde_json::from_str(line).with_context(|| format!("bad JSON from {cmd:?}: {line}"))
}

/// A scratch directory for the random checkpoint (≈2 GB for `mid`), removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(shape: CompareShape) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "paligemma-bench-compare-{}-{}",
            shape.name(),
            std::process::id()
        ));
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
