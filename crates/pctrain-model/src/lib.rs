//! The model crate: configs, weights, the decoder with explicit backward and LoRA (issue 3).
