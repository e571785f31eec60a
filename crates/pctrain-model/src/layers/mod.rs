//! The decoder's layers, each in its own file. Shapes use `B` batch rows, `T` positions, `H` hidden
//! size, `N = B*T` tokens.

pub mod attention;
pub mod attention_blocks;
pub mod kv_cache;
pub mod linear;
pub mod loss;
pub mod mlp;
pub mod norm;
pub mod rope;
