//! End-to-end tests of `paligemma generate` on the tiny fixture checkpoints: our own image
//! preprocessing, tokenisation and generation against the transformers reference, and clear
//! errors (never panics) on bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn paligemma(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_paligemma"))
        .args(args)
        .output()
        .expect("binary runs")
}

fn reference(case: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join(format!("reference/{case}.json")))
        .expect("reference json");
    serde_json::from_str(&text).expect("valid json")
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id"))
        .collect()
}

/// A scratch copy of a fixture model directory that a test may break.
struct Scratch(PathBuf);

impl Scratch {
    fn copy_of(case: &str, tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("paligemma-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        for entry in std::fs::read_dir(fixtures().join("models").join(case)).expect("fixture dir") {
            let entry = entry.expect("entry");
            std::fs::copy(entry.path(), dir.join(entry.file_name())).expect("copy");
        }
        Self(dir)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 path")
    }

    fn edit_config(&self, edit: impl FnOnce(&mut Value)) {
        let path = self.0.join("config.json");
        let mut config: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("config")).expect("json");
        edit(&mut config);
        std::fs::write(&path, config.to_string()).expect("write config");
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn generate_json(model: &str, image: &str, prompt: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "generate", "--model", model, "--image", image, "--prompt", prompt, "--json",
    ];
    args.extend_from_slice(extra);
    let out = paligemma(&args);
    assert!(
        out.status.success(),
        "generate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

#[test]
fn generate_reproduces_transformers_greedy_tokens_from_image_files() {
    for case in ["pg1-32", "pg1-48-gqa", "pg2-32", "pg2-48-window"] {
        let r = reference(case);
        let model = fixtures().join(r["model_dir"].as_str().expect("model_dir"));
        let image = fixtures().join(r["image"].as_str().expect("image"));
        let got = generate_json(
            model.to_str().expect("path"),
            image.to_str().expect("path"),
            r["prompt"].as_str().expect("prompt"),
            &["--max-new-tokens", "32"],
        );
        assert_eq!(ids(&got["tokens"]), ids(&r["tokens"]), "{case}: tokens");
        assert_eq!(got["text"], r["decoded"], "{case}: text");
        assert_eq!(
            got["prompt_tokens"].as_u64(),
            r["prompt_len"].as_u64(),
            "{case}: prompt length"
        );
        assert_eq!(got["finish_reason"], "length");
    }
}

#[test]
fn bf16_generation_matches_transformers_bf16() {
    let r = reference("pg2-32");
    let got = generate_json(
        fixtures().join("models/pg2-32").to_str().expect("path"),
        fixtures()
            .join(r["image"].as_str().expect("image"))
            .to_str()
            .expect("path"),
        r["prompt"].as_str().expect("prompt"),
        &["--max-new-tokens", "32", "--dtype", "bf16"],
    );
    assert_eq!(ids(&got["tokens"]), ids(&r["bf16_tokens"]));
}

#[test]
fn sampling_is_reproducible_with_a_seed_and_reports_logprobs() {
    let model = fixtures().join("models/pg1-32");
    let image = fixtures().join("images/photo.jpg");
    let run = |seed: &str| {
        generate_json(
            model.to_str().expect("path"),
            image.to_str().expect("path"),
            "caption en",
            &[
                "--max-new-tokens",
                "12",
                "--temperature",
                "1.0",
                "--top-k",
                "50",
                "--top-p",
                "0.9",
                "--seed",
                seed,
                "--logprobs",
            ],
        )
    };
    let (a, b, c) = (run("7"), run("7"), run("8"));
    assert_eq!(a["tokens"], b["tokens"]);
    assert_ne!(a["tokens"], c["tokens"]);
    let lps = a["logprobs"].as_array().expect("logprobs");
    assert_eq!(lps.len(), 12);
    assert!(lps.iter().all(|v| v.as_f64().is_some_and(|x| x <= 0.0)));
}

#[test]
fn dump_writes_the_reference_quantities() {
    let r = reference("pg1-32");
    let dump =
        std::env::temp_dir().join(format!("paligemma-dump-{}.safetensors", std::process::id()));
    let dump_arg = dump.to_str().expect("path").to_string();
    let model = fixtures().join("models/pg1-32");
    let image = fixtures().join("images/photo.jpg");
    generate_json(
        model.to_str().expect("path"),
        image.to_str().expect("path"),
        "caption en",
        &["--max-new-tokens", "5", "--dump", &dump_arg],
    );
    let bytes = std::fs::read(&dump).expect("dump written");
    let _ = std::fs::remove_file(&dump);
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    let shape = |name: &str| st.tensor(name).expect(name).shape().to_vec();
    let vocab = r["text_vocab_size"].as_u64().expect("vocab") as usize;
    assert_eq!(shape("pixel_values"), vec![1, 3, 32, 32]);
    assert_eq!(shape("image_features"), vec![16, 64]);
    assert_eq!(shape("prefill_logits"), vec![vocab]);
    assert_eq!(shape("step_logits"), vec![5, vocab]);
    for name in [
        "pixel_values",
        "image_features",
        "prefill_logits",
        "step_logits",
    ] {
        assert_eq!(
            st.tensor(name).expect(name).dtype(),
            safetensors::Dtype::F32,
            "{name}"
        );
    }
    // The values are transformers' own: pixels bit-exact, features and logits within 1e-4.
    let reference_bytes =
        std::fs::read(fixtures().join("reference/pg1-32.safetensors")).expect("reference");
    let reference =
        safetensors::SafeTensors::deserialize(&reference_bytes).expect("reference safetensors");
    let f32s = |st: &safetensors::SafeTensors<'_>, name: &str| -> Vec<f32> {
        st.tensor(name)
            .expect(name)
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    assert_eq!(f32s(&st, "pixel_values"), f32s(&reference, "pixel_values"));
    let max_rel = |ours: &[f32], want: &[f32]| {
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        ours.iter()
            .zip(want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
            / scale
    };
    assert!(
        max_rel(
            &f32s(&st, "image_features"),
            &f32s(&reference, "image_features")
        ) < 1e-4
    );
    let want_steps = f32s(&reference, "step_logits");
    assert!(max_rel(&f32s(&st, "prefill_logits"), &want_steps[..vocab]) < 1e-4);
    assert!(max_rel(&f32s(&st, "step_logits"), &want_steps[..5 * vocab]) < 1e-4);
}

/// Runs `generate` expecting failure; returns stderr.
fn expect_error(model: &str, image: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "generate",
        "--model",
        model,
        "--image",
        image,
        "--prompt",
        "caption en",
    ];
    args.extend_from_slice(extra);
    let out = paligemma(&args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "expected failure, got success");
    assert!(
        !stderr.contains("panicked"),
        "panic instead of an error: {stderr}"
    );
    stderr
}

fn photo() -> String {
    fixtures()
        .join("images/photo.jpg")
        .to_str()
        .expect("path")
        .to_string()
}

#[test]
fn missing_and_corrupt_files_are_named() {
    let err = expect_error("/nonexistent/model", &photo(), &[]);
    assert!(
        err.contains("/nonexistent/model") && err.contains("not a directory"),
        "{err}"
    );

    let scratch = Scratch::copy_of("pg1-32", "noconfig");
    std::fs::remove_file(scratch.0.join("config.json")).expect("rm");
    let err = expect_error(scratch.path(), &photo(), &[]);
    assert!(err.contains("missing config.json"), "{err}");

    let scratch = Scratch::copy_of("pg1-32", "noweights");
    std::fs::remove_file(scratch.0.join("model.safetensors")).expect("rm");
    let err = expect_error(scratch.path(), &photo(), &[]);
    assert!(err.contains("model.safetensors"), "{err}");

    let scratch = Scratch::copy_of("pg1-32", "truncated");
    let weights = scratch.0.join("model.safetensors");
    let bytes = std::fs::read(&weights).expect("read");
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).expect("truncate");
    let err = expect_error(scratch.path(), &photo(), &[]);
    assert!(err.contains("model.safetensors"), "{err}");

    let scratch = Scratch::copy_of("pg1-32", "garbage");
    std::fs::write(
        scratch.0.join("model.safetensors"),
        b"definitely not safetensors",
    )
    .expect("write");
    let err = expect_error(scratch.path(), &photo(), &[]);
    assert!(err.contains("not a safetensors file"), "{err}");

    let scratch = Scratch::copy_of("pg1-32", "badjson");
    std::fs::write(scratch.0.join("config.json"), b"{\"model_type\": ").expect("write");
    let err = expect_error(scratch.path(), &photo(), &[]);
    assert!(
        err.contains("config.json") && err.contains("invalid JSON"),
        "{err}"
    );

    let scratch = Scratch::copy_of("pg1-32", "notok");
    std::fs::remove_file(scratch.0.join("tokenizer.json")).expect("rm");
    let err = expect_error(scratch.path(), &photo(), &[]);
    assert!(err.contains("tokenizer.json"), "{err}");
}

#[test]
fn unknown_model_type_is_rejected() {
    let scratch = Scratch::copy_of("pg1-32", "modeltype");
    scratch.edit_config(|c| c["model_type"] = "llava".into());
    let err = expect_error(scratch.path(), &photo(), &[]);
    assert!(err.contains("model_type") && err.contains("llava"), "{err}");
}

#[test]
fn shapes_that_disagree_with_the_config_name_the_tensor() {
    let scratch = Scratch::copy_of("pg1-32", "shape");
    scratch.edit_config(|c| c["text_config"]["intermediate_size"] = 96.into());
    let err = expect_error(scratch.path(), &photo(), &[]);
    assert!(
        err.contains("gate_proj.weight") && err.contains("[128, 64]") && err.contains("[96, 64]"),
        "{err}"
    );

    let scratch = Scratch::copy_of("pg1-32", "layers");
    scratch.edit_config(|c| c["text_config"]["num_hidden_layers"] = 3.into());
    let err = expect_error(scratch.path(), &photo(), &[]);
    assert!(err.contains("language_model.model.layers.2"), "{err}");
}

#[test]
fn undecodable_or_missing_images_are_clear_errors() {
    let model = fixtures().join("models/pg1-32");
    let model = model.to_str().expect("path");
    let err = expect_error(model, "/nonexistent/cat.jpg", &[]);
    assert!(err.contains("/nonexistent/cat.jpg"), "{err}");

    let bogus = std::env::temp_dir().join(format!("paligemma-bogus-{}.png", std::process::id()));
    std::fs::write(&bogus, b"\x89PNG\r\n\x1a\n garbage that is not a png").expect("write");
    let err = expect_error(model, bogus.to_str().expect("path"), &[]);
    let _ = std::fs::remove_file(&bogus);
    assert!(err.contains("paligemma-bogus"), "{err}");
}

#[test]
fn a_request_beyond_the_position_limit_is_rejected() {
    let scratch = Scratch::copy_of("pg1-32", "poslimit");
    scratch.edit_config(|c| c["text_config"]["max_position_embeddings"] = 30.into());
    let err = expect_error(scratch.path(), &photo(), &["--max-new-tokens", "11"]);
    assert!(
        err.contains("position limit of 30") && err.contains("max_new_tokens"),
        "{err}"
    );
    // 20 prompt tokens + 10 fits exactly.
    let out = paligemma(&[
        "generate",
        "--model",
        scratch.path(),
        "--image",
        &photo(),
        "--prompt",
        "caption en",
        "--max-new-tokens",
        "10",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
