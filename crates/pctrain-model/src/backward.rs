//! A training step's entry points: what trains, how a step runs, and the gradients a pass gives,
//! on whichever backend holds the model (the pass itself is `pass.rs`).

use candle_core::Tensor;

use crate::error::Result;
use crate::layers::loss::LossSum;
use crate::model::{Batch, Model};
use crate::params::{place, Param};
use crate::trainable::{Gradients, HandOut};
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
        let dims = (batch.rows, batch.seq_len, self.config.hidden_size);
        let (loss, tensors, input_grad) = if self.on_cpu_kernels() {
            let mut grads = Gradients::zeros(self, opts.mode)?;
            let params = self.trainable_params(opts.mode);
            let (host, mut hooks) = grads
                .host_mut(&params, None)
                .expect("the CPU kernels keep gradients in memory");
            let (loss, dx) =
                self.cpu_forward_backward(batch, normalizer, opts, host, true, &mut hooks)?;
            let dx = dx.expect("asked for");
            let dx = Tensor::from_vec(dx, dims, self.device())?;
            (loss, grads.to_tensors()?, dx)
        } else {
            let (loss, tensors, dx) = self.tensor_forward_backward(batch, normalizer, opts)?;
            (loss, tensors, dx.reshape(dims)?)
        };
        let inputs_embeds = (input_grad * self.config.embedding_multiplier)?;
        Ok((
            loss,
            Grads::from_trainable(self, opts.mode, tensors, inputs_embeds),
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
        if grads.spans().is_some() {
            return Err(crate::ModelError::Input(
                "gradients kept by span take passes that hand them out".into(),
            ));
        }
        let params = self.trainable_params(opts.mode);
        if let Some((host, mut hooks)) = grads.host_mut(&params, None) {
            return Ok(self
                .cpu_forward_backward(batch, normalizer, opts, host, false, &mut hooks)?
                .0);
        }
        let (loss, tensors, _) = self.tensor_forward_backward(batch, normalizer, opts)?;
        grads.add(tensors)?;
        Ok(loss)
    }

    /// [`Model::accumulate_gradients`] on gradients kept in memory (the CPU kernels), handing
    /// each part's buffers to `hand_out` as soon as the pass has added its last into them, in
    /// [`crate::params::Part::order`]: the last layer's while the backward of the others still
    /// runs. A data-parallel run starts summing them over its ranks there. Gradients kept by
    /// span ([`Gradients::zeros_in_spans`]) are made whole part by part just before the pass adds
    /// into them, this rank's span keeping its values; what `hand_out` does with them is what
    /// they hold afterwards.
    pub fn accumulate_gradients_handing_out<'g>(
        &self,
        batch: &Batch,
        normalizer: f64,
        opts: StepOptions,
        grads: &'g mut Gradients,
        hand_out: HandOut<'_, 'g>,
    ) -> Result<LossSum> {
        batch.check(self.config.vocab_size)?;
        let params = self.trainable_params(opts.mode);
        let Some((host, mut hooks)) = grads.host_mut(&params, Some(hand_out)) else {
            return Err(crate::ModelError::Input(
                "gradients handed out part by part are kept in memory".into(),
            ));
        };
        let (loss, _) =
            self.cpu_forward_backward(batch, normalizer, opts, host, false, &mut hooks)?;
        Ok(loss)
    }
}
