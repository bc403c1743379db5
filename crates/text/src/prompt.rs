//! The PaliGemma prompt layout (transformers 5.x `PaliGemmaProcessor`, spec §2.2):
//!
//! ```text
//! <image> × (images · tokens per image)   <bos>   tokens(prompt + "\n")
//! ```
//!
//! The whole sequence is the bidirectional prefix. The processor tokenises `prompt + "\n"` as
//! one string; for ordinary prompts this equals big_vision's separate `"\n"` token, and we follow
//! the processor so that `input_ids` match exactly.

use crate::error::TextError;
use crate::tokenizer::Tokenizer;

/// A tokenised prompt ready for the decoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptLayout {
    /// `<image>`×N, `<bos>`, prompt ids, newline id(s).
    pub ids: Vec<u32>,
    /// Number of `<image>` placeholders at the start.
    pub num_image_tokens: usize,
}

impl PromptLayout {
    /// Lays out a prompt for `num_image_tokens` soft tokens (images × tokens per image).
    ///
    /// # Errors
    /// A prompt containing the literal `<image>` placeholder (images travel separately), or a
    /// tokenizer failure.
    pub fn build(
        tokenizer: &Tokenizer,
        prompt: &str,
        num_image_tokens: usize,
    ) -> Result<Self, TextError> {
        if prompt.contains("<image>") {
            return Err(TextError::Prompt(
                "must not contain `<image>`: images are passed separately and placed before <bos>"
                    .into(),
            ));
        }
        let text = tokenizer.encode(&format!("{prompt}\n"))?;
        let mut ids = Vec::with_capacity(num_image_tokens + 1 + text.len());
        ids.extend(std::iter::repeat_n(tokenizer.image_id(), num_image_tokens));
        ids.push(tokenizer.bos_id());
        ids.extend(text);
        Ok(Self {
            ids,
            num_image_tokens,
        })
    }

    /// Length of the bidirectional prefix: the whole prompt.
    pub fn prefix_len(&self) -> usize {
        self.ids.len()
    }
}
