//! Tokenizer and prompt layout.
