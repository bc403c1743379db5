//! Errors of the detection/segmentation text helpers ([`crate::detection`],
//! [`crate::detection_prompt`]).
//!
//! Parsing model output never fails: malformed pieces are reported inside the parse result (see
//! [`crate::ObjectProblem`]); these errors cover caller input only (prompt labels, image sizes).

/// A caller-supplied value the detection helpers cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DetectionError {
    /// `detect_prompt` / `segment_prompt` got no labels.
    #[error("labels: the list is empty; `{task}` needs at least one label")]
    EmptyLabelList {
        /// The task word (`detect` or `segment`).
        task: &'static str,
    },
    /// A label is empty or only whitespace.
    #[error("labels[{index}]: the label is empty")]
    EmptyLabel {
        /// Position of the label in the list.
        index: usize,
    },
    /// A label contains a character the output grammar reserves (`;` separates objects, `<`/`>`
    /// delimit `<loc>`/`<seg>` tokens, a newline ends the prompt).
    #[error("labels[{index}]: {label:?} contains the reserved character {found:?}")]
    ReservedCharacter {
        /// Position of the label in the list.
        index: usize,
        /// The offending label.
        label: String,
        /// The first reserved character found.
        found: char,
    },
    /// The image has a zero dimension.
    #[error("image size {width}x{height}: width and height must be at least 1 pixel")]
    EmptyImage {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
}
