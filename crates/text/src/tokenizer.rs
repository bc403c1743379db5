//! Wrapper around a Hugging Face `tokenizer.json` with the ids PaliGemma needs.

use std::path::Path;

use crate::error::TextError;

/// A loaded Gemma tokenizer.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: u32,
    eos: u32,
    image: u32,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("image", &self.image)
            .finish()
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json`.
    ///
    /// # Errors
    /// Unreadable or invalid file; no `<bos>`, `<eos>` or `<image>` token.
    pub fn from_file(path: &Path) -> Result<Self, TextError> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| TextError::Load {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::new(inner)
    }

    /// Loads a tokenizer from the bytes of a `tokenizer.json`.
    ///
    /// # Errors
    /// Invalid JSON; missing special tokens.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TextError> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| TextError::Load {
            path: "<bytes>".into(),
            message: e.to_string(),
        })?;
        Self::new(inner)
    }

    fn new(inner: tokenizers::Tokenizer) -> Result<Self, TextError> {
        let id = |token: &'static str| {
            inner
                .token_to_id(token)
                .ok_or(TextError::MissingToken(token))
        };
        Ok(Self {
            bos: id("<bos>")?,
            eos: id("<eos>")?,
            image: id("<image>")?,
            inner,
        })
    }

    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    pub fn image_id(&self) -> u32 {
        self.image
    }

    /// Number of entries, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Encodes text without adding any special token (Gemma has no dummy prefix space).
    ///
    /// # Errors
    /// Tokenizer failure.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TextError> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| TextError::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Decodes ids to text. With `skip_special`, `<bos>`, `<eos>`, `<pad>` and `<image>` are
    /// dropped while `<loc>`/`<seg>` pieces are kept (they are not special).
    ///
    /// # Errors
    /// Tokenizer failure.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TextError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| TextError::Tokenizer(e.to_string()))
    }
}
