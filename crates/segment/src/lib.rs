//! PaliGemma segmentation masks (spec §10): big_vision's VQ-VAE mask decoder (16 `<seg>` codes
//! → 64×64 logits, [`MaskDecoder`]), pasting into the object's box on the original image in
//! big_vision's or the demo's style ([`paste`]), and the mask encodings the API returns: COCO
//! uncompressed RLE and PNG ([`BinaryMask`], [`SoftMask`]).
//!
//! References: `big_vision/evaluators/proj/paligemma/transfers/segmentation.py` (decoder,
//! paste, validity) and the demo Space's `paligemma_parse.py` (soft-mask paste). Parsing the
//! model's text into objects lives in `paligemma-text` ([`paligemma_text::parse_detections`]);
//! typical use:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use paligemma_segment::{MaskDecoder, object_mask};
//! use paligemma_text::{ImageSize, ParseOptions, parse_detections};
//! let decoder = MaskDecoder::from_npz("vae-oid.npz")?;
//! let out = parse_detections("<loc0256>...", ImageSize::new(640, 480)?, &ParseOptions::default());
//! for obj in out.valid_objects().filter(|o| o.seg.is_some()) {
//!     let rle = object_mask(&decoder, obj)?.to_coco_rle();
//! #   let _ = rle;
//! }
//! # Ok(()) }
//! ```

pub mod decoder;
mod error;
pub mod mask;
pub mod paste;

pub use decoder::{MASK_SIDE, MaskDecoder, MaskLogits};
pub use error::SegmentError;
pub use mask::{BinaryMask, CocoRle, SoftMask};
pub use paste::{
    logits_to_u8_demo, object_mask, object_soft_mask, paste_big_vision, paste_demo, paste_demo_u8,
    pillow_resize_f32_bilinear, resize_logits_big_vision,
};
