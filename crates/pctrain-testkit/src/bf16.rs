//! How far a training step with bf16 weights and activations may land from the f32 step: an error
//! budget (not a proof) in bf16's unit roundoff `u = 2^-8` (8 significant bits, round to nearest).
//! Every op rounds its output to bf16 once (products are summed in f32), so a value carries one
//! relative error of at most `u` per op it went through.
//! - A weight's gradient is reached from the loss through at most 4 roundings at the ends (the
//!   logits' gradient, the output projection's and the final norm's backward, the first layer's
//!   normed input) and 12 per layer (in backward: down projection, SwiGLU, gate and up, post-norm,
//!   residual sum, output projection, attention, rope, q, k and v, input norm). Errors that add
//!   up along that path without cancelling give `u * (4 + 12 L)` for `L` layers: each trainable
//!   tensor's gradient (and, with AdamW's `eps` at 1, its first update, which follows the
//!   gradient) is within that, in relative L2 norm.
//! - The loss is a mean over the batch's tokens, and the global gradient norm moves by the
//!   projection of the gradients' errors on the gradient; both average errors that do not line
//!   up, so they stay within `u`.
//!
//! Measured once (a throwaway harness, not kept) on the CPU's bf16 path against its f32 kernels,
//! with the GPU tests' shapes and batch (2 layers of Llama-3-8B's shape with a LoRA on every
//! target, and 2 of Llama-3.2-1B's fully trained; budget `28u` = 0.109): loss 1.5e-4 and 9.1e-5,
//! gradient norm 1.9e-5 and 4.0e-5, worst tensor 0.037 and 0.023. The fixture's test in
//! `pctrain-model` (`tests/grads.rs`) holds the CPU's bf16 path to it in CI.

/// bf16's unit roundoff.
pub const UNIT_ROUNDOFF: f64 = 1.0 / 256.0;

/// Relative differences a bf16 step may show against the f32 step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    pub loss: f64,
    pub grad_norm: f64,
    /// Of each trainable tensor's gradient or first update, in L2 norm.
    pub gradient: f64,
}

/// The tolerance of a bf16 step of a model of `layers` decoder layers.
pub fn bf16_step(layers: usize) -> Tolerance {
    let u = UNIT_ROUNDOFF;
    Tolerance {
        loss: u,
        grad_norm: u,
        gradient: u * (4 + 12 * layers) as f64,
    }
}
