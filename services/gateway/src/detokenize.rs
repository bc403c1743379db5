//! Incremental detokenisation: generated ids in, text deltas out.
//!
//! Follows text-generation-inference's `decode_token` (router): each push decodes a short
//! window — the ids since the previous emitted boundary — and emits what it adds to the
//! previous window's text. Gemma's decoder chain (Replace ▁, ByteFallback, Fuse) is local
//! except for one step: ByteFallback decodes a whole run of `<0xNN>` byte tokens at once, and
//! if the run is not valid UTF-8 it yields one U+FFFD per byte — so a later byte token can
//! change how earlier ones read (`E6 A1 A1` is "桡", `E6 A1 A1 A1` is four U+FFFD). A boundary
//! therefore never falls inside a run: text is held while the last id is a byte token (or one
//! that decodes to nothing, such as a skipped special token, which a run can span), and
//! [`TextStreamer::finish`] flushes whatever is held. The concatenated deltas then equal
//! `tokenizer.decode(ids without eos, skip_special = true)`, i.e. what transformers decodes.
//! End-of-sequence ids never reach the text; `<loc>`/`<seg>` pieces do (they are not special).

use std::collections::HashSet;

use paligemma_text::{TextError, Tokenizer};

/// The tokenizer plus what streaming needs to know about its vocabulary.
#[derive(Debug)]
pub struct Detokenizer {
    tokenizer: Tokenizer,
    /// Ids that end generation and never reach the text.
    eos_ids: Vec<u32>,
    /// The 256 `<0xNN>` byte-fallback tokens.
    byte_ids: HashSet<u32>,
}

impl Detokenizer {
    /// `eos_ids`: ids kept out of the text (`<eos>` and the checkpoint's `eos_token_id`s).
    pub fn new(tokenizer: Tokenizer, eos_ids: Vec<u32>) -> Self {
        let byte_ids = (0..=255u8)
            .filter_map(|b| tokenizer.token_to_id(&format!("<0x{b:02X}>")))
            .collect();
        Self {
            tokenizer,
            eos_ids,
            byte_ids,
        }
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// A streamer for one request.
    pub fn stream(&self) -> TextStreamer<'_> {
        TextStreamer {
            detokenizer: self,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }
}

/// Turns one request's generated ids into text deltas.
#[derive(Debug)]
pub struct TextStreamer<'a> {
    detokenizer: &'a Detokenizer,
    /// Generated ids except end-of-sequence ones.
    ids: Vec<u32>,
    /// Start of the decode window (a boundary: never inside a byte run).
    prefix_offset: usize,
    /// End of what has been emitted (a boundary too).
    read_offset: usize,
}

impl TextStreamer<'_> {
    /// Adds one generated id; returns the text it completes (often empty).
    ///
    /// # Errors
    /// Tokenizer failure.
    pub fn push(&mut self, id: u32) -> Result<String, TextError> {
        let d = self.detokenizer;
        if d.eos_ids.contains(&id) {
            return Ok(String::new());
        }
        self.ids.push(id);
        if d.byte_ids.contains(&id) || d.tokenizer.decode(&[id], true)?.is_empty() {
            return Ok(String::new());
        }
        self.advance()
    }

    /// Emits whatever is held back (e.g. a byte run at the very end).
    ///
    /// # Errors
    /// Tokenizer failure.
    pub fn finish(&mut self) -> Result<String, TextError> {
        self.advance()
    }

    fn advance(&mut self) -> Result<String, TextError> {
        if self.read_offset == self.ids.len() {
            return Ok(String::new());
        }
        let tokenizer = &self.detokenizer.tokenizer;
        let prefix = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset], true)?;
        let text = tokenizer.decode(&self.ids[self.prefix_offset..], true)?;
        let Some(delta) = text.strip_prefix(prefix.as_str()) else {
            // Not expected at a boundary; hold and retry with the next id.
            tracing::debug!("window text does not extend its prefix; holding");
            return Ok(String::new());
        };
        let delta = delta.to_string();
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(delta)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn tokenizer() -> Tokenizer {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/models/pg1-32/tokenizer.json");
        Tokenizer::from_file(&path).unwrap()
    }

    fn stream(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
        let d = Detokenizer::new(tokenizer(), vec![tok.eos_id()]);
        let mut s = d.stream();
        let mut deltas: Vec<String> = ids.iter().map(|&id| s.push(id).unwrap()).collect();
        deltas.push(s.finish().unwrap());
        deltas
    }

    #[test]
    fn deltas_of_the_reference_output_assemble_to_its_decoded_text() {
        let tok = tokenizer();
        // tests/fixtures/reference/pg1-32.json: tokens and decoded (byte-fallback pieces
        // included), followed by <eos>.
        let mut ids = vec![
            1176, 665, 876, 1482, 1317, 1020, 387, 1207, 1399, 1399, 1399, 710, 234, 165, 165, 165,
            165, 939, 482, 1413, 1413, 1413, 1016, 1016, 1016, 1016, 1016, 1016, 1016, 455, 455,
            455,
        ];
        let expected = tok.decode(&ids, true).unwrap();
        ids.push(tok.eos_id());
        assert_eq!(stream(&tok, &ids).concat(), expected);
        assert!(expected.starts_with("<loc0682><loc0171>"));
    }

    #[test]
    fn a_multi_byte_character_appears_once_whole() {
        let tok = tokenizer();
        // "é" = C3 A9: two byte-fallback tokens.
        let byte = |b: u8| tok.token_to_id(&format!("<0x{b:02X}>")).unwrap();
        let a = tok.encode("a").unwrap();
        let ids = [a.clone(), vec![byte(0xC3), byte(0xA9)], a].concat();
        let deltas = stream(&tok, &ids);
        assert_eq!(deltas.concat(), "aéa");
        assert!(deltas.iter().all(|d| !d.contains('\u{FFFD}')), "{deltas:?}");
        assert_eq!(
            deltas.iter().filter(|d| d.contains('é')).count(),
            1,
            "{deltas:?}"
        );
    }

    #[test]
    fn an_incomplete_character_at_the_end_is_flushed_by_finish() {
        let tok = tokenizer();
        let d = Detokenizer::new(tokenizer(), vec![tok.eos_id()]);
        let mut s = d.stream();
        assert_eq!(s.push(tok.token_to_id("<0xC3>").unwrap()).unwrap(), "");
        assert_eq!(s.push(tok.eos_id()).unwrap(), "");
        assert_eq!(s.finish().unwrap(), "\u{FFFD}");
    }

    #[test]
    fn a_byte_run_is_decoded_whole_even_when_a_prefix_of_it_is_valid() {
        let tok = tokenizer();
        let byte = |b: u8| tok.token_to_id(&format!("<0x{b:02X}>")).unwrap();
        let a = tok.encode("a").unwrap();
        // E6 A1 A1 alone is "桡"; with a fourth byte the run is invalid: four U+FFFD.
        let ids = [vec![byte(0xE6), byte(0xA1), byte(0xA1), byte(0xA1)], a].concat();
        let expected = tok.decode(&ids, true).unwrap();
        assert_eq!(expected, "\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}a");
        assert_eq!(stream(&tok, &ids).concat(), expected);
    }
}
