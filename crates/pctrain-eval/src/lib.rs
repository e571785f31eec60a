//! Evaluation: a model's answers to conversations ([`generation`]: chat template, continuous
//! batching, pseudo-code stripped for models that answer with it) and their scores on IFEval
//! ([`ifeval`]).

pub mod generation;
pub mod ifeval;

pub use generation::{Answer, GenerateError, GenerateOptions, Generator};
