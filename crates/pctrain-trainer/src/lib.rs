//! pctrain's trainer: loading a base model, evaluation, and (next) the training loop,
//! checkpoints and export.

pub mod base;
pub mod eval;

pub use base::{load_base, BaseModel};
pub use candle_core::{DType, Device};
pub use eval::{evaluate, EvalResult};
