//! A memory account of a training step: bytes of frozen weights, trainable weights, and the
//! activations saved between forward and backward.

use candle_core::{DType, Tensor};
use serde::Serialize;

use crate::backward::TrainMode;
use crate::model::Model;

/// Bytes held during a training step (gradients and optimizer state are the trainer's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemoryAccount {
    pub frozen_weight_bytes: usize,
    pub trainable_weight_bytes: usize,
    /// Activations kept from forward to backward for a batch of `rows x seq_len`.
    pub saved_activation_bytes: usize,
}

fn bytes(t: &Tensor) -> usize {
    t.elem_count() * t.dtype().size_in_bytes()
}

impl Model {
    /// The account for `mode` and a batch of `rows x seq_len`, with or without recomputation.
    pub fn memory_account(
        &self,
        mode: TrainMode,
        rows: usize,
        seq_len: usize,
        recompute: bool,
    ) -> MemoryAccount {
        let w = &self.weights;
        let mut base =
            bytes(&w.embed_tokens) + bytes(&w.norm) + w.lm_head.as_ref().map_or(0, bytes);
        for l in &w.layers {
            base += l.named().into_iter().map(|(_, t)| bytes(t)).sum::<usize>();
        }
        let adapters: usize = self.lora.as_ref().map_or(0, |a| {
            a.layers
                .iter()
                .flatten()
                .flatten()
                .map(|l| bytes(&l.a) + bytes(&l.b))
                .sum()
        });
        let (frozen, trainable) = match mode {
            TrainMode::Lora => (base, adapters),
            TrainMode::Full => (0, base + adapters),
        };
        MemoryAccount {
            frozen_weight_bytes: frozen,
            trainable_weight_bytes: trainable,
            saved_activation_bytes: self.saved_activation_bytes(rows, seq_len, recompute),
        }
    }

    /// Each layer's input and the final hidden states always; with recomputation nothing else
    /// (one layer's activations exist at a time during backward), without it every layer's
    /// normed inputs, q, k, v, attention probabilities (f32), attention output, MLP activations.
    fn saved_activation_bytes(&self, rows: usize, seq_len: usize, recompute: bool) -> usize {
        let c = &self.config;
        let e = self.weights.embed_tokens.dtype().size_in_bytes();
        let n = rows * seq_len;
        let layers = c.num_layers;
        let inputs = (layers + 1) * n * c.hidden_size * e;
        if recompute {
            return inputs;
        }
        let per_layer = n * c.hidden_size * 3 * e // h1, x_mid, h2
            + n * c.num_heads * c.head_dim * 2 * e // q, attention output
            + n * c.num_kv_heads * c.head_dim * 2 * e // k, v
            + rows * c.num_heads * seq_len * seq_len * DType::F32.size_in_bytes() // probabilities
            + n * c.intermediate_size * 3 * e; // gate, up, silu(gate) * up
        inputs + layers * per_layer
    }
}
