//! Tokenizer and prompt layout against transformers 5.x (`tests/fixtures/reference/
//! tokenizer_cases.json`, written by `tools/reference/make_fixtures.py` with the processor of the
//! tiny fixture checkpoints).

use std::path::{Path, PathBuf};

use paligemma_text::{PromptLayout, Tokenizer};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_file(&fixtures().join("models/pg1-32/tokenizer.json"))
        .expect("fixture tokenizer loads")
}

fn cases() -> Value {
    let text = std::fs::read_to_string(fixtures().join("reference/tokenizer_cases.json"))
        .expect("cases file");
    serde_json::from_str(&text).expect("cases JSON")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id list")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

#[test]
fn encode_and_decode_match_transformers() {
    let tok = tokenizer();
    let cases = cases();
    let list = cases["tokenizer"].as_array().expect("tokenizer cases");
    assert!(list.len() >= 20);
    for case in list {
        let text = case["text"].as_str().expect("text");
        let want = ids(&case["ids"]);
        assert_eq!(tok.encode(text).expect("encode"), want, "encode({text:?})");
        let decoded = tok.decode(&want, true).expect("decode");
        assert_eq!(
            decoded,
            case["decoded"].as_str().expect("decoded"),
            "decode of {text:?}"
        );
    }
}

#[test]
fn prompt_ids_equal_the_processor_input_ids() {
    let tok = tokenizer();
    let cases = cases();
    for case in cases["processor"].as_array().expect("processor cases") {
        let prompt = case["prompt"].as_str().expect("prompt");
        let n = case["num_image_tokens"].as_u64().expect("n") as usize;
        let layout = PromptLayout::build(&tok, prompt, n).expect("layout");
        assert_eq!(layout.ids, ids(&case["input_ids"]), "prompt {prompt:?}");
        assert_eq!(layout.prefix_len(), layout.ids.len());
    }
}

#[test]
fn every_loc_and_seg_token_round_trips_as_one_id() {
    let tok = tokenizer();
    let names = (0..1024)
        .map(|i| format!("<loc{i:04}>"))
        .chain((0..128).map(|i| format!("<seg{i:03}>")));
    let mut seen = std::collections::HashSet::new();
    for name in names {
        let ids = tok.encode(&name).expect("encode");
        assert_eq!(ids.len(), 1, "{name} must be one token, got {ids:?}");
        assert!(seen.insert(ids[0]), "{name} shares an id");
        assert_eq!(tok.decode(&ids, true).expect("decode"), name);
    }
    // Inline with text, each piece stays one token.
    let ids = tok
        .encode("<loc0012><loc1023><seg005> cat")
        .expect("encode");
    assert_eq!(
        &ids[..3],
        &[
            tok.token_to_id("<loc0012>").unwrap(),
            tok.token_to_id("<loc1023>").unwrap(),
            tok.token_to_id("<seg005>").unwrap()
        ]
    );
}

#[test]
fn image_placeholder_in_prompt_text_is_rejected() {
    let err = PromptLayout::build(&tokenizer(), "caption <image> en", 4).unwrap_err();
    assert!(err.to_string().contains("<image>"), "{err}");
}

#[test]
fn missing_or_corrupt_tokenizer_file_is_a_clear_error() {
    let err = Tokenizer::from_file(Path::new("/nonexistent/tokenizer.json")).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/tokenizer.json"),
        "{err}"
    );
    let err = Tokenizer::from_bytes(b"{not json").unwrap_err();
    assert!(err.to_string().contains("cannot load tokenizer"), "{err}");
}
