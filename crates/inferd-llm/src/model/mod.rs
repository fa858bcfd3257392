//! The llama model family.
