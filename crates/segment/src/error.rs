//! The segment crate's error type: bad checkpoints, bad codes or boxes, encoding failures.

use std::path::PathBuf;

use paligemma_text::ObjectProblem;

/// Everything that can go wrong loading the mask decoder or producing a mask.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// The npz file could not be opened or is not a readable npz (e.g. truncated).
    #[error("{path}: cannot read npz: {message}")]
    Npz {
        /// The checkpoint path.
        path: PathBuf,
        /// What the reader reported.
        message: String,
    },
    /// A tensor the decoder needs is absent.
    #[error("{path}: missing tensor `{name}`")]
    MissingTensor {
        /// The checkpoint path.
        path: PathBuf,
        /// The npz entry name (without `.npy`).
        name: String,
    },
    /// A tensor has the wrong shape.
    #[error("tensor `{name}`: shape {actual:?}, expected {expected}")]
    BadShape {
        /// The npz entry name.
        name: String,
        /// What the decoder needs, e.g. `[128, 512, 1, 1]` or `[N, C] with N >= 1`.
        expected: String,
        /// The shape in the file.
        actual: Vec<usize>,
    },
    /// A tensor has a dtype other than float32.
    #[error("tensor `{name}`: dtype {actual}, expected float32")]
    BadDType {
        /// The npz entry name.
        name: String,
        /// The dtype in the file.
        actual: String,
    },
    /// Not exactly 16 codes were given.
    #[error("codes: got {actual} codes, a mask needs exactly {expected}")]
    WrongCodeCount {
        /// Codes per mask (16).
        expected: usize,
        /// Codes given.
        actual: usize,
    },
    /// A code is not a codebook row.
    #[error("codes[{index}] = {value}: out of range, the codebook has {codebook_size} entries")]
    CodeOutOfRange {
        /// Position of the code.
        index: usize,
        /// The code.
        value: u32,
        /// Number of codebook rows (valid codes are `0..codebook_size`).
        codebook_size: usize,
    },
    /// The object has no `<seg>` tokens, so there is no mask to decode.
    #[error("object has no seg codes (a detection, not a segmentation)")]
    NoSegCodes,
    /// The object failed validation; big_vision gives it no mask.
    #[error("object is invalid: {0:?}")]
    InvalidObject(Vec<ObjectProblem>),
    /// The box covers no pixel or does not fit inside the image.
    #[error(
        "box rows {ymin}..{ymax}, cols {xmin}..{xmax} is empty or outside the {width}x{height} image"
    )]
    BadBox {
        ymin: u32,
        xmin: u32,
        ymax: u32,
        xmax: u32,
        width: u32,
        height: u32,
    },
    /// A mask buffer does not match its stated size.
    #[error("mask data has {actual} bytes, {width}x{height} needs {expected}")]
    BadMaskSize {
        width: u32,
        height: u32,
        expected: usize,
        actual: usize,
    },
    /// The tensor library failed while decoding.
    #[error("decoder computation failed: {0}")]
    Compute(String),
    /// Resizing the mask failed (Pillow-exact resizer of `paligemma-image`).
    #[error("mask resize failed: {0}")]
    Resize(String),
    /// PNG encoding failed.
    #[error("PNG encoding failed: {0}")]
    Png(String),
}

impl From<candle_core::Error> for SegmentError {
    fn from(e: candle_core::Error) -> Self {
        Self::Compute(e.to_string())
    }
}
