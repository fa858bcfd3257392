//! The generation loop (see the crate docs).
