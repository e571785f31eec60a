//! A memory account of a training step: bytes of frozen weights, trainable weights, and the
//! activations saved between forward and backward.

use candle_core::{DType, Tensor};
use serde::Serialize;

use crate::backward::TrainMode;
use crate::layer::{ActKind, LayerActs};
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

/// Bytes of the storage behind `t`: all of it, also where `t` is a view of part of it.
pub fn stored_bytes(t: &Tensor) -> usize {
    use candle_core::{CpuStorage, Storage};
    let (storage, _) = t.storage_and_layout();
    let elements = match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => v.len(),
        Storage::Cpu(CpuStorage::BF16(v)) => v.len(),
        Storage::Cpu(CpuStorage::F16(v)) => v.len(),
        #[cfg(feature = "cuda")]
        Storage::Cuda(c) => match t.dtype() {
            DType::F32 => c.as_cuda_slice::<f32>().map_or(t.elem_count(), |s| s.len()),
            DType::BF16 => c
                .as_cuda_slice::<half::bf16>()
                .map_or(t.elem_count(), |s| s.len()),
            _ => t.elem_count(),
        },
        _ => t.elem_count(),
    };
    elements * t.dtype().size_in_bytes()
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

    /// What a training pass keeps from its forward for its backward: each layer's input and the
    /// final norm's output and `1 / rms`, and every layer's [`LayerActs`] or, with recomputation,
    /// one set (the one list both backends keep). The element sizes are the backend's: f32 on
    /// the CPU kernels; on tensors the model's dtype for activations, f32 for attention's
    /// log-sum-exps, the adapters' dtype for `x A^T`, and no norm statistics (the tensor
    /// backward recomputes them).
    fn saved_activation_bytes(&self, rows: usize, seq_len: usize, recompute: bool) -> usize {
        let c = &self.config;
        let s = self.sizes(rows, seq_len);
        let on_cpu = self.on_cpu_kernels();
        let adapter = self
            .lora
            .as_ref()
            .and_then(|a| a.layers.iter().flatten().flatten().next())
            .map_or(4, |l| l.a.dtype().size_in_bytes());
        let model = self.weights.embed_tokens.dtype().size_in_bytes();
        let size = |kind: ActKind| match (on_cpu, kind) {
            (true, _) => DType::F32.size_in_bytes(),
            (false, ActKind::Model) => model,
            (false, ActKind::NormStat) => 0,
            (false, ActKind::AttentionStat) => DType::F32.size_in_bytes(),
            (false, ActKind::Adapter) => adapter,
        };
        let per_layer: usize = LayerActs::<()>::default()
            .with_lengths(&s)
            .into_iter()
            .map(|(_, kind, len)| len * size(kind))
            .sum();
        let sets = if recompute { 1 } else { c.num_layers };
        let inputs = (c.num_layers + 1) * s.n * s.h * size(ActKind::Model);
        let final_norm = s.n * s.h * size(ActKind::Model) + s.n * size(ActKind::NormStat);
        inputs + final_norm + sets * per_layer
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use candle_core::Device;

    use super::*;
    use crate::backend::Forward;
    use crate::model::Batch;
    use crate::pass::{self, Acts};
    use crate::tensor::TensorBackend;
    use crate::{LoraAdapter, ModelConfig, ModelWeights, StepOptions};

    /// Bytes of the activations `acts` keeps for the backward (not the backward's scratch).
    fn kept<B>(acts: &mut Acts<B>, s: &crate::layer::Sizes, bytes: impl Fn(&B) -> usize) -> usize {
        let mut total = acts.inputs.iter().map(&bytes).sum::<usize>();
        total += bytes(&acts.final_h) + bytes(&acts.final_rstd);
        for a in &mut acts.layers {
            total += a
                .with_lengths(s)
                .iter()
                .map(|(b, _, _)| bytes(b))
                .sum::<usize>();
        }
        total
    }

    /// The memory account's activations are exactly what a step keeps, on tensors (a bf16 base,
    /// as a GPU runs it) and on the CPU kernels, with and without recomputation.
    #[test]
    fn memory_account_counts_the_saved_activations() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mistral");
        let config = ModelConfig::load(&dir).unwrap();
        let load = |dtype| {
            let weights = ModelWeights::load(&dir, &config, dtype, &Device::Cpu).unwrap();
            let lora =
                LoraAdapter::load(&dir.join("adapter"), &config, DType::F32, &Device::Cpu).unwrap();
            Model::new(config.clone(), weights, Some(lora))
        };
        let (rows, seq_len) = (2, 9);
        let n = rows * seq_len;
        let batch = Batch {
            rows,
            seq_len,
            input_ids: (0..n as u32).collect(),
            position_ids: (0..n as u32).map(|i| i % seq_len as u32).collect(),
            segment_ids: vec![1; n],
            labels: vec![1; n],
        };
        let layers = config.num_layers;

        let m = load(DType::BF16);
        let s = m.sizes(rows, seq_len);
        for recompute in [false, true] {
            let mut k = TensorBackend::new(&m, &batch, Some(0), 4).unwrap();
            let mut acts = Acts::new(layers, !recompute, true, || k.empty());
            let mut g = k.slots(&m.trainable_params(TrainMode::Lora));
            pass::forward_backward(
                &mut k,
                &mut acts,
                !recompute,
                1.0,
                &mut g,
                &mut pass::NoHooks,
            )
            .unwrap();
            let held = kept(&mut acts, &s, bytes);
            let account = m.memory_account(TrainMode::Lora, rows, seq_len, recompute);
            assert_eq!(
                account.saved_activation_bytes, held,
                "recompute {recompute}"
            );
        }
        let account = m.memory_account(TrainMode::Lora, rows, seq_len, false);
        assert!(account.frozen_weight_bytes > 0 && account.trainable_weight_bytes > 0);
        let full = m.memory_account(TrainMode::Full, rows, seq_len, false);
        assert_eq!(full.frozen_weight_bytes, 0);
        assert_eq!(
            full.trainable_weight_bytes,
            account.frozen_weight_bytes + account.trainable_weight_bytes
        );

        // The CPU kernels: what the workspace holds after a pass.
        let m = load(DType::F32);
        for recompute in [false, true] {
            let opts = StepOptions {
                mode: TrainMode::Lora,
                recompute,
                loss_chunk: 4,
                dropout_seed: 0,
            };
            let m = Model::new(m.config.clone(), m.weights.clone(), m.lora.clone());
            m.forward_backward(&batch, 1.0, opts).unwrap();
            let mut ws = m.workspace.lock().unwrap();
            let held = kept(&mut ws.acts, &s, |v| v.len() * 4);
            let account = m.memory_account(TrainMode::Lora, rows, seq_len, recompute);
            assert_eq!(
                account.saved_activation_bytes, held,
                "recompute {recompute}"
            );
        }
    }
}
