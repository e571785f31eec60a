//! A training pass: embeddings, the layers' forward (see [`crate::layer`]), the chunked loss, and
//! the explicit backward that walks the layers in reverse. Frozen weights get no gradient buffer and cost no weight-gradient
//! GEMM; with recomputation a layer keeps only its input and recomputes the rest in backward.

use candle_core::Tensor;

use crate::error::Result;
use crate::layer::LayerContext;
use crate::layers::attention::SegmentMask;
use crate::layers::loss::{cross_entropy_backward, shift_targets, LossSum};
use crate::layers::norm::{rms_norm_backward, rms_norm_forward};
use crate::layers::rope::rope_tables;
use crate::model::{Batch, Model};
use crate::params::{place, Param};
use crate::trainable::Gradients;
use crate::weights::LayerWeights;

/// What trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainMode {
    /// The LoRA adapters only; base weights are frozen.
    Lora,
    /// Every weight (no adapters).
    Full,
}

/// How a training step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepOptions {
    pub mode: TrainMode,
    /// Keep only each layer's input and recompute its activations in backward.
    pub recompute: bool,
    /// Tokens per cross-entropy chunk.
    pub loss_chunk: usize,
    /// Seed of this step's LoRA dropout masks (used when the adapter's dropout is above 0).
    pub dropout_seed: u64,
}

/// Gradients of one decoder layer.
#[derive(Debug, Clone)]
pub struct LayerGrads {
    /// `(dA, dB)` per [`crate::lora::Target`] (LoRA mode).
    pub lora: [Option<(Tensor, Tensor)>; 7],
    /// Every weight of the layer (full mode).
    pub weights: Option<LayerWeights>,
}

/// Gradients of a step, for what trains only.
#[derive(Debug, Clone)]
pub struct Grads {
    pub layers: Vec<LayerGrads>,
    /// Full mode: `[V, H]` (including the output projection's share when tied).
    pub embed_tokens: Option<Tensor>,
    /// Full mode: `[H]`.
    pub norm: Option<Tensor>,
    /// Full mode, untied: `[V, H]`.
    pub lm_head: Option<Tensor>,
    /// Gradient with respect to the embedding lookup's output (before Granite's multiplier):
    /// `[B, T, H]`.
    pub inputs_embeds: Tensor,
}

impl Grads {
    /// The gradients of `model`'s trainable tensors in `mode` (`tensors`, in
    /// [`Model::trainable_params`]' order), by what they belong to.
    fn from_trainable(
        model: &Model,
        mode: TrainMode,
        tensors: Vec<Tensor>,
        inputs_embeds: Tensor,
    ) -> Self {
        let params = model.trainable_params(mode);
        let placed = place(model.config.num_layers, &params, tensors);
        let layers = placed
            .layers
            .into_iter()
            .map(|mut l| LayerGrads {
                lora: l.lora,
                weights: (mode == TrainMode::Full).then(|| {
                    LayerWeights::try_from_fn(|w| l.weights[w as usize].take().ok_or(()))
                        .expect("full mode trains every weight")
                }),
            })
            .collect();
        Grads {
            layers,
            embed_tokens: placed.embed,
            norm: placed.norm,
            lm_head: placed.lm_head,
            inputs_embeds,
        }
    }

    /// The gradient of `p`, if it has one.
    pub fn get(&self, p: Param) -> Option<&Tensor> {
        match p {
            Param::Embed => self.embed_tokens.as_ref(),
            Param::Layer(l, w) => self.layers[l].weights.as_ref().map(|g| g.get(w)),
            Param::Norm => self.norm.as_ref(),
            Param::LmHead => self.lm_head.as_ref(),
            Param::LoraA(l, t) => self.layers[l].lora[t as usize].as_ref().map(|g| &g.0),
            Param::LoraB(l, t) => self.layers[l].lora[t as usize].as_ref().map(|g| &g.1),
        }
    }
}

impl Model {
    /// One forward and backward pass. The loss is the sum over trained tokens times `1 /
    /// normalizer` (the trained tokens of the whole accumulated batch), so that gradients of
    /// micro-batches add up to those of the global batch.
    pub fn forward_backward(
        &self,
        batch: &Batch,
        normalizer: f64,
        opts: StepOptions,
    ) -> Result<(LossSum, Grads)> {
        batch.check(self.config.vocab_size)?;
        if !self.on_cpu_kernels() {
            return self.tensor_forward_backward(batch, normalizer, opts);
        }
        let mut grads = Gradients::zeros(self, opts.mode)?;
        let host = grads
            .host_mut()
            .expect("the CPU kernels keep gradients in memory");
        let (loss, input_grad) = self.cpu_forward_backward(batch, normalizer, opts, host, true)?;
        let input_grad = input_grad.expect("asked for");
        let dims = (batch.rows, batch.seq_len, self.config.hidden_size);
        let inputs_embeds = Tensor::from_vec(input_grad, dims, self.device())?;
        Ok((
            loss,
            Grads::from_trainable(self, opts.mode, grads.to_tensors()?, inputs_embeds),
        ))
    }

    /// One pass as [`Model::forward_backward`], its gradients added to `grads` (those of one
    /// optimizer step, [`Model::trainable`]'s for `opts.mode`): in place on the CPU.
    pub fn accumulate_gradients(
        &self,
        batch: &Batch,
        normalizer: f64,
        opts: StepOptions,
        grads: &mut Gradients,
    ) -> Result<LossSum> {
        batch.check(self.config.vocab_size)?;
        if let Some(host) = grads.host_mut() {
            return Ok(self
                .cpu_forward_backward(batch, normalizer, opts, host, false)?
                .0);
        }
        let (loss, g) = self.tensor_forward_backward(batch, normalizer, opts)?;
        grads.add(g.into_trainable(&self.trainable_params(opts.mode)))?;
        Ok(loss)
    }

    /// [`Model::forward_backward`] on tensors, one op at a time (a GPU's path, and a CPU's for
    /// narrower dtypes).
    fn tensor_forward_backward(
        &self,
        batch: &Batch,
        normalizer: f64,
        opts: StepOptions,
    ) -> Result<(LossSum, Grads)> {
        let c = &self.config;
        let (b, t) = (batch.rows, batch.seq_len);
        let device = self.device().clone();
        let ids = Tensor::from_slice(&batch.input_ids, b * t, &device)?;
        let embeds =
            self.weights
                .embed_tokens
                .index_select(&ids, 0)?
                .reshape((b, t, c.hidden_size))?;
        let x0 = (&embeds * c.embedding_multiplier)?;
        let (cos, sin) = rope_tables(self.inv_freq(), &batch.position_ids, b, &device)?;
        let attention = SegmentMask::new(
            &batch.segment_ids,
            b,
            c.sliding_window.unwrap_or(0),
            &device,
        )?;
        let ctx = LayerContext {
            cos,
            sin,
            attention,
            dropout_seed: Some(opts.dropout_seed),
        };

        // Forward, keeping each layer's input (and, without recomputation, everything else).
        let mut inputs = Vec::with_capacity(c.num_layers);
        let mut saved = Vec::with_capacity(c.num_layers);
        let mut x = x0;
        for l in 0..c.num_layers {
            let s = self.layer_forward(&x, l, &ctx)?;
            inputs.push(x);
            x = s.out.clone();
            if !opts.recompute {
                saved.push(s);
            }
        }
        let final_h = rms_norm_forward(&x, &self.weights.norm, c.rms_norm_eps)?;

        // Loss and its gradient with respect to the final hidden states.
        let full = opts.mode == TrainMode::Full;
        let targets = shift_targets(&batch.labels, &batch.segment_ids, b);
        let ce = cross_entropy_backward(
            &final_h.reshape((b * t, c.hidden_size))?,
            self.weights.output(),
            c.logits_scaling,
            &targets,
            opts.loss_chunk,
            1.0 / normalizer,
            full,
        )?;
        let dfinal = ce.dhidden.reshape((b, t, c.hidden_size))?;
        let (mut dx, dnorm) =
            rms_norm_backward(&dfinal, &x, &self.weights.norm, c.rms_norm_eps, full)?;

        // Layers in reverse.
        let mut layers = Vec::with_capacity(c.num_layers);
        for l in (0..c.num_layers).rev() {
            let s = match saved.pop() {
                Some(s) => s,
                None => self.layer_forward(&inputs[l], l, &ctx)?,
            };
            let (dinput, grads) = self.layer_backward(&dx, &s, l, &ctx, full)?;
            dx = dinput;
            layers.push(grads);
        }
        layers.reverse();

        let inputs_embeds = (&dx * c.embedding_multiplier)?;
        let (embed_tokens, lm_head) = if full {
            let dflat = inputs_embeds.reshape((b * t, c.hidden_size))?;
            let zeros = self.weights.embed_tokens.zeros_like()?;
            let mut de = zeros.index_add(&ids, &dflat, 0)?;
            let doutput = ce.doutput.expect("full mode trains the output");
            if self.weights.lm_head.is_some() {
                (Some(de), Some(doutput))
            } else {
                de = (de + doutput)?;
                (Some(de), None)
            }
        } else {
            (None, None)
        };
        Ok((
            ce.loss,
            Grads {
                layers,
                embed_tokens,
                norm: dnorm,
                lm_head,
                inputs_embeds,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use candle_core::{DType, Device};

    use super::*;
    use crate::{LoraAdapter, ModelConfig, ModelWeights};

    fn bytes(t: &Tensor) -> usize {
        t.elem_count() * t.dtype().size_in_bytes()
    }

    /// The memory account's activations are exactly what a step keeps, on tensors (a bf16 base,
    /// as a GPU runs it) and on the CPU kernels.
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

        let m = load(DType::BF16);
        let (cos, sin) =
            rope_tables(m.inv_freq(), &batch.position_ids, rows, &Device::Cpu).unwrap();
        let attention = SegmentMask::new(
            &batch.segment_ids,
            rows,
            m.config.sliding_window.unwrap_or(0),
            &Device::Cpu,
        )
        .unwrap();
        let ctx = LayerContext {
            cos,
            sin,
            attention,
            dropout_seed: None,
        };
        let mut x = Tensor::zeros(
            (rows, seq_len, m.config.hidden_size),
            DType::BF16,
            &Device::Cpu,
        )
        .unwrap();
        let mut kept = bytes(&x);
        for l in 0..m.config.num_layers {
            let s = m.layer_forward(&x, l, &ctx).unwrap();
            kept += [
                &s.h1, &s.q, &s.k, &s.v, &s.a, &s.x_mid, &s.h2, &s.gate, &s.up, &s.z, &s.out,
            ]
            .into_iter()
            .map(bytes)
            .sum::<usize>();
            kept += bytes(&s.attn.out) + bytes(&s.attn.lse);
            x = s.out;
        }
        let account = m.memory_account(TrainMode::Lora, rows, seq_len, false);
        assert_eq!(account.saved_activation_bytes, kept);
        let recomputed = m.memory_account(TrainMode::Lora, rows, seq_len, true);
        assert_eq!(
            recomputed.saved_activation_bytes,
            (m.config.num_layers + 1) * bytes(&x)
        );
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
            let ws = m.workspace.lock().unwrap();
            let floats = |v: &[f32]| v.len();
            let mut held = ws.inputs.iter().map(|x| floats(x)).sum::<usize>()
                + floats(&ws.final_h)
                + floats(&ws.final_rstd);
            for a in &ws.layers {
                held += [
                    &a.h1, &a.rstd1, &a.q, &a.k, &a.v, &a.o, &a.lse, &a.x_mid, &a.h2, &a.rstd2,
                    &a.gate, &a.up,
                ]
                .into_iter()
                .map(|v| floats(v))
                .sum::<usize>();
                held += a.xa.iter().map(|v| floats(v)).sum::<usize>();
            }
            let account = m.memory_account(TrainMode::Lora, rows, seq_len, recompute);
            assert_eq!(
                account.saved_activation_bytes,
                held * 4,
                "recompute {recompute}"
            );
        }
    }
}
