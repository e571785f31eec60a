//! What every pctrain crate shares, so it is written once: files written atomically and durably
//! ([`fs`]), and the stable hashes and seeded generator that data order, blends, dropout and
//! sampling depend on ([`hash`]).

pub mod fs;
pub mod hash;
