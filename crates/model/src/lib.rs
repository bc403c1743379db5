//! PaliGemma 1 and 2 in candle, numerically matching Hugging Face transformers 5.x.
//!
//! - [`config`]: typed `config.json` with the transformers defaults for absent keys.
//! - [`checkpoint`]: model-directory discovery, name layouts, shape checks, progress.
//! - [`shards`]: safetensors headers and positional reads of tensors (no memory map).
//! - [`siglip`], [`gemma`], [`paligemma`]: the networks (weights only, no request state).
//! - [`mask`]: the prefix-LM mask; [`kv_cache`]: the seam to key/value storage.
//!
//! Pure model code: no tokenizer, no image decoding, no I/O beyond the checkpoint.
#![deny(unsafe_code)]

pub mod checkpoint;
pub mod config;
pub mod encoder;
pub mod error;
pub mod gemma;
pub mod kv_cache;
pub mod layers;
pub mod mask;
pub mod paligemma;
pub mod shards;
pub mod siglip;

pub use checkpoint::ModelFiles;
pub use config::{DecoderFamily, PaliGemmaConfig, TextConfig, VisionConfig};
pub use encoder::VisionEncoder;
pub use error::{ModelError, Result};
pub use gemma::{DecoderInput, GemmaDecoder, LogitsRows};
pub use kv_cache::{ContiguousKvCache, KvCache};
pub use paligemma::{LoadOptions, PaliGemma, load_decoder};
