//! Text side of PaliGemma: the Gemma tokenizer (`tokenizer.json` via the `tokenizers` crate)
//! and the prompt layout of transformers' `PaliGemmaProcessor` (spec §2), plus the detection /
//! segmentation task prompts and the output parser (spec §9, §10).
//!
//! `<locNNNN>` and `<segNNN>` are ordinary (non-special) vocabulary entries: they encode as one
//! id each and survive decoding with special tokens skipped, so detection and segmentation
//! output keeps them.

pub mod detection;
pub mod detection_box;
mod detection_error;
pub mod detection_prompt;
mod error;
mod prompt;
mod tokenizer;

pub use detection::{
    DetectedObject, Item, LabelMode, ParseOptions, ParsedOutput, parse_detections,
};
pub use detection_box::{
    Axis, BoxConvention, ImageSize, LocBins, MAX_LOC_BIN, MAX_SEG_CODE, NUM_SEG_CODES, NormBox,
    ObjectProblem, PixelBox,
};
pub use detection_error::DetectionError;
pub use detection_prompt::{detect_prompt, segment_prompt};
pub use error::TextError;
pub use prompt::PromptLayout;
pub use tokenizer::Tokenizer;
