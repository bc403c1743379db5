//! Text side of PaliGemma: the Gemma tokenizer (`tokenizer.json` via the `tokenizers` crate)
//! and the prompt layout of transformers' `PaliGemmaProcessor` (spec §2).
//!
//! `<locNNNN>` and `<segNNN>` are ordinary (non-special) vocabulary entries: they encode as one
//! id each and survive decoding with special tokens skipped, so detection and segmentation
//! output keeps them.

mod error;
mod prompt;
mod tokenizer;

pub use error::TextError;
pub use prompt::PromptLayout;
pub use tokenizer::Tokenizer;
