//! A memory account of a training step: bytes of frozen weights, trainable weights, and the
//! activations saved between forward and backward.

use candle_core::{DType, Tensor};
use serde::Serialize;

use crate::backward::TrainMode;
use crate::cpu::workspace::LayerActs;
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

    /// What a training pass keeps from its forward for its backward. On the CPU kernels: each
    /// layer's input and the final norm's output and `1 / rms` always, and every layer's
    /// [`LayerActs`](crate::cpu::workspace::LayerActs) (normed inputs and their `1 / rms`, q, k,
    /// v, attention output and log-sum-exps, the MLP's projections, each adapter's `x A^T`), or
    /// one set with recomputation. On tensors: each layer's input and the final hidden states,
    /// and without recomputation every layer's normed inputs, q, k, v, attention output (by heads
    /// and by tokens) and log-sum-exps (f32), MLP activations.
    fn saved_activation_bytes(&self, rows: usize, seq_len: usize, recompute: bool) -> usize {
        let c = &self.config;
        let n = rows * seq_len;
        let layers = c.num_layers;
        let (h, q, kv, i) = (
            c.hidden_size,
            c.num_heads * c.head_dim,
            c.num_kv_heads * c.head_dim,
            c.intermediate_size,
        );
        let f32_bytes = DType::F32.size_in_bytes();
        if self.on_cpu_kernels() {
            let acts = LayerActs::floats(&self.sizes(rows, seq_len));
            let sets = if recompute { 1 } else { layers };
            return ((layers + 1) * n * h + n * h + n + sets * acts) * f32_bytes;
        }
        let e = self.weights.embed_tokens.dtype().size_in_bytes();
        let inputs = (layers + 1) * n * h * e;
        if recompute {
            return inputs;
        }
        let per_layer = n * h * 3 * e // h1, x_mid, h2
            + n * q * 3 * e // q, attention output twice
            + n * kv * 2 * e // k, v
            + n * c.num_heads * f32_bytes // log-sum-exps
            + n * i * 3 * e; // gate, up, silu(gate) * up
        inputs + layers * per_layer
    }
}
