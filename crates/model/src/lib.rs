//! PaliGemma model.
