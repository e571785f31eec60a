//! The decoder: embeddings, layers of (norm, attention, residual, norm, SwiGLU, residual), final
//! norm, and the output projection. One implementation for Llama, Mistral and Granite.

use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor};

use crate::cpu::workspace::Workspace;

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::layers::loss::{shift_targets, LossSum};
use crate::layers::rope::inverse_frequencies;
use crate::lora::{LoraAdapter, Target};
use crate::params::LayerParam;
use crate::weights::ModelWeights;

/// One batch of packed rows, row-major `[B, T]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub rows: usize,
    pub seq_len: usize,
    pub input_ids: Vec<u32>,
    /// Position within each sample, restarting per sample.
    pub position_ids: Vec<u32>,
    /// 1-based sample number within the row, 0 on padding.
    pub segment_ids: Vec<u32>,
    /// Aligned with `input_ids`; -100 where not trained.
    pub labels: Vec<i64>,
}

impl Batch {
    /// Positions whose next-token target is trained (what the loss sums over).
    pub fn target_count(&self) -> usize {
        shift_targets(&self.labels, &self.segment_ids, self.rows)
            .iter()
            .filter(|&&t| t != crate::layers::loss::IGNORE_INDEX)
            .count()
    }

    /// Checks that every vector has `rows * seq_len` entries, ids and labels fit the vocabulary.
    pub(crate) fn check(&self, vocab: usize) -> Result<()> {
        let n = self.rows * self.seq_len;
        let lens = [
            self.input_ids.len(),
            self.position_ids.len(),
            self.segment_ids.len(),
            self.labels.len(),
        ];
        if lens.iter().any(|&l| l != n) {
            return Err(ModelError::Input(format!(
                "batch of {} x {} needs {n} ids, positions, segments and labels, got {lens:?}",
                self.rows, self.seq_len
            )));
        }
        if n == 0 {
            return Err(ModelError::Input("an empty batch".into()));
        }
        if let Some(id) = self.input_ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(ModelError::Input(format!(
                "token id {id} is outside the vocabulary of {vocab}"
            )));
        }
        if let Some(l) = self
            .labels
            .iter()
            .find(|&&l| l != crate::layers::loss::IGNORE_INDEX && !(0..vocab as i64).contains(&l))
        {
            return Err(ModelError::Input(format!(
                "label {l} is neither -100 nor a token id of the vocabulary of {vocab}"
            )));
        }
        Ok(())
    }
}

/// A decoder with its weights and, optionally, LoRA adapters. On the CPU it keeps the buffers of
/// its passes from one to the next (clones share them).
#[derive(Debug, Clone)]
pub struct Model {
    pub config: ModelConfig,
    pub weights: ModelWeights,
    pub lora: Option<LoraAdapter>,
    inv_freq: Vec<f32>,
    pub(crate) workspace: Arc<Mutex<Workspace>>,
}

impl Model {
    pub fn new(config: ModelConfig, weights: ModelWeights, lora: Option<LoraAdapter>) -> Self {
        let inv_freq = inverse_frequencies(&config.rope, config.head_dim);
        Model {
            config,
            weights,
            lora,
            inv_freq,
            workspace: Arc::default(),
        }
    }

    /// Rotary inverse frequencies, `head_dim / 2`.
    pub(crate) fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    pub fn device(&self) -> &Device {
        self.weights.embed_tokens.device()
    }

    /// Final hidden states (after the last norm): `[B, T, H]`.
    pub fn hidden_states(&self, batch: &Batch) -> Result<Tensor> {
        let c = &self.config;
        batch.check(c.vocab_size)?;
        let h = self.tensor_hidden_states(batch)?;
        Ok(h.reshape((batch.rows, batch.seq_len, c.hidden_size))?)
    }

    /// Folds the adapters into the base weights (`W += scale * B A`) and drops them.
    pub fn merge_lora(&mut self) -> Result<()> {
        let Some(adapter) = self.lora.take() else {
            return Ok(());
        };
        for (w, layer) in self.weights.layers.iter_mut().zip(&adapter.layers) {
            for t in Target::ALL {
                let Some(l) = &layer[t as usize] else {
                    continue;
                };
                let weight = w.get_mut(LayerParam::of(t));
                let delta = (l.b.matmul(&l.a)? * l.scale)?.to_dtype(weight.dtype())?;
                *weight = (&*weight + delta)?;
            }
        }
        Ok(())
    }

    /// Logits `[B, T, V]` for the whole batch (for inference and tests; training uses
    /// [`Model::loss_sum`], which never holds them all).
    pub fn logits(&self, batch: &Batch) -> Result<Tensor> {
        let h = self.hidden_states(batch)?;
        let logits = h.broadcast_matmul(&self.weights.output().t()?)?;
        Ok((logits / self.config.logits_scaling)?)
    }

    /// Summed next-token cross-entropy over trained positions and their count; the caller divides
    /// by the count of its (global) batch.
    pub fn loss_sum(&self, batch: &Batch, chunk: usize) -> Result<LossSum> {
        batch.check(self.config.vocab_size)?;
        if self.on_cpu_kernels() {
            return self.cpu_loss(batch, chunk);
        }
        self.tensor_loss(batch, chunk)
    }
}
