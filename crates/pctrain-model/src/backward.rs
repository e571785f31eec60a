//! Training passes: the forward that saves what backward needs, and the explicit backward that
//! walks the layers in reverse. Frozen weights get no gradient buffer and cost no weight-gradient
//! GEMM; with recomputation a layer keeps only its input and recomputes the rest in backward.

use candle_core::{Tensor, D};

use crate::error::Result;
use crate::layers::attention::{attention_backward, attention_mask, attention_probs};
use crate::layers::linear::{dropout_mask, linear_backward, linear_forward_train, Lora};
use crate::layers::loss::{cross_entropy_backward, shift_targets, LossSum};
use crate::layers::mlp::{swiglu_backward, swiglu_forward};
use crate::layers::norm::{rms_norm_backward, rms_norm_forward};
use crate::layers::rope::{rope_backward, rope_forward, rope_tables};
use crate::lora::{LayerLora, Target};
use crate::model::{Batch, Model};
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
    /// `(dA, dB)` per [`Target`] (LoRA mode).
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

/// What a layer's backward needs.
struct Saved {
    x: Tensor,
    h1: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    p: Tensor,
    a: Tensor,
    x_mid: Tensor,
    h2: Tensor,
    gate: Tensor,
    up: Tensor,
    z: Tensor,
    out: Tensor,
}

/// Inputs shared by every layer of a step.
struct StepContext {
    cos: Tensor,
    sin: Tensor,
    mask: Tensor,
    dropout_seed: u64,
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
        let mask = attention_mask(&batch.segment_ids, b, c.sliding_window, &device)?;
        let ctx = StepContext {
            cos,
            sin,
            mask,
            dropout_seed: opts.dropout_seed,
        };

        // Forward, keeping each layer's input (and, without recomputation, everything else).
        let mut inputs = Vec::with_capacity(c.num_layers);
        let mut saved = Vec::with_capacity(c.num_layers);
        let mut x = x0;
        for l in 0..c.num_layers {
            let s = self.layer_forward_saved(&x, l, &ctx)?;
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
        let (mut dx, dnorm) = rms_norm_backward(&dfinal, &x, &self.weights.norm, c.rms_norm_eps)?;

        // Layers in reverse.
        let mut layers = Vec::with_capacity(c.num_layers);
        for l in (0..c.num_layers).rev() {
            let s = match saved.pop() {
                Some(s) => s,
                None => self.layer_forward_saved(&inputs[l], l, &ctx)?,
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
                norm: full.then_some(dnorm),
                lm_head,
                inputs_embeds,
            },
        ))
    }

    fn adapters(&self, l: usize) -> Option<&LayerLora> {
        self.lora.as_ref().map(|a| &a.layers[l])
    }

    /// The LoRA dropout mask of layer `l`'s `target` for input `x`, when that adapter exists and
    /// its dropout is above 0; a function of the step's seed, so recomputation draws it again.
    fn dropout(
        &self,
        ctx: &StepContext,
        l: usize,
        target: Target,
        x: &Tensor,
    ) -> Result<Option<Tensor>> {
        let Some(adapter) = &self.lora else {
            return Ok(None);
        };
        let p = adapter.config.dropout;
        if p <= 0.0 || adapter.layers[l][target as usize].is_none() {
            return Ok(None);
        }
        let seed = ctx.dropout_seed
            ^ ((l as u64) << 8 | target as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        Ok(Some(dropout_mask(
            p,
            seed,
            x.dims(),
            x.dtype(),
            x.device(),
        )?))
    }

    fn layer_forward_saved(&self, x: &Tensor, l: usize, ctx: &StepContext) -> Result<Saved> {
        let c = &self.config;
        let w = &self.weights.layers[l];
        let lora = self.adapters(l);
        let adapter = |t: Target| -> Option<&Lora> { lora.and_then(|a| a[t as usize].as_ref()) };
        let (b, t, _) = x.dims3()?;
        let heads = |y: Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((b, t, n, c.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let lin = |t: Target, x: &Tensor, w: &Tensor| -> Result<Tensor> {
            let mask = self.dropout(ctx, l, t, x)?;
            Ok(linear_forward_train(x, w, adapter(t), mask.as_ref())?)
        };
        let h1 = rms_norm_forward(x, &w.input_norm, c.rms_norm_eps)?;
        let q = heads(lin(Target::Q, &h1, &w.q_proj)?, c.num_heads)?;
        let k = heads(lin(Target::K, &h1, &w.k_proj)?, c.num_kv_heads)?;
        let v = heads(lin(Target::V, &h1, &w.v_proj)?, c.num_kv_heads)?;
        let q = rope_forward(&q, &ctx.cos, &ctx.sin)?;
        let k = rope_forward(&k, &ctx.cos, &ctx.sin)?;
        let p = attention_probs(&q, &k, &ctx.mask, c.attention_scale)?;
        let kv = c.num_kv_heads;
        let o = p
            .contiguous()?
            .reshape((b, kv, c.group_size() * t, t))?
            .matmul(&v.to_dtype(p.dtype())?)?
            .reshape((b, c.num_heads, t, c.head_dim))?
            .to_dtype(x.dtype())?;
        let a = o
            .transpose(1, 2)?
            .reshape((b, t, c.num_heads * c.head_dim))?;
        let attn = lin(Target::O, &a, &w.o_proj)?;
        let x_mid = (x + (attn * c.residual_multiplier)?)?;
        let h2 = rms_norm_forward(&x_mid, &w.post_attention_norm, c.rms_norm_eps)?;
        let gate = lin(Target::Gate, &h2, &w.gate_proj)?;
        let up = lin(Target::Up, &h2, &w.up_proj)?;
        let z = swiglu_forward(&gate, &up)?;
        let m = lin(Target::Down, &z, &w.down_proj)?;
        let out = (&x_mid + (m * c.residual_multiplier)?)?;
        Ok(Saved {
            x: x.clone(),
            h1,
            q,
            k,
            v,
            p,
            a,
            x_mid,
            h2,
            gate,
            up,
            z,
            out,
        })
    }

    /// Backward of one layer: the gradient with respect to its input, and its parameters'.
    fn layer_backward(
        &self,
        dout: &Tensor,
        s: &Saved,
        l: usize,
        ctx: &StepContext,
        full: bool,
    ) -> Result<(Tensor, LayerGrads)> {
        let c = &self.config;
        let w = &self.weights.layers[l];
        let lora = self.adapters(l);
        let adapter = |t: Target| -> Option<&Lora> { lora.and_then(|a| a[t as usize].as_ref()) };
        let (b, t, h) = dout.dims3()?;
        let n = b * t;
        let flat = |x: &Tensor| -> Result<Tensor> {
            let last = x.dim(D::Minus1)?;
            Ok(x.reshape((n, last))?)
        };
        let mut lora_grads: [Option<(Tensor, Tensor)>; 7] = Default::default();
        // Weight gradients in the order q, k, v, o, gate, up, down (full mode).
        let mut weight_grads: Vec<Option<Tensor>> = vec![None; 7];
        let mut linear = |target: Target,
                          slot: usize,
                          dy: &Tensor,
                          x: &Tensor,
                          weight: &Tensor|
         -> Result<Tensor> {
            let mask = self
                .dropout(ctx, l, target, x)?
                .map(|m| flat(&m))
                .transpose()?;
            let g = linear_backward(
                &flat(dy)?,
                &flat(x)?,
                weight,
                adapter(target),
                mask.as_ref(),
                full,
            )?;
            lora_grads[target as usize] = g.dlora;
            weight_grads[slot] = g.dw;
            Ok(g.dx)
        };

        // MLP block: out = x_mid + r * down(swiglu(gate(h2), up(h2))).
        let dm = (dout * c.residual_multiplier)?;
        let dz = linear(Target::Down, 6, &dm, &s.z, &w.down_proj)?.reshape(s.z.shape())?;
        let (dgate, dup) = swiglu_backward(&dz, &s.gate, &s.up)?;
        let dh2 = (linear(Target::Gate, 4, &dgate, &s.h2, &w.gate_proj)?
            + linear(Target::Up, 5, &dup, &s.h2, &w.up_proj)?)?
        .reshape((b, t, h))?;
        let (dx_norm2, dpost) =
            rms_norm_backward(&dh2, &s.x_mid, &w.post_attention_norm, c.rms_norm_eps)?;
        let dx_mid = (dout + dx_norm2)?;

        // Attention block: x_mid = x + r * o_proj(attention(rope(q), rope(k), v)).
        let dattn = (&dx_mid * c.residual_multiplier)?;
        let da = linear(Target::O, 3, &dattn, &s.a, &w.o_proj)?;
        let da = da
            .reshape((b, t, c.num_heads, c.head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        let (dq, dk, dv) = attention_backward(&da, &s.q, &s.k, &s.v, &s.p, c.attention_scale)?;
        let dq = rope_backward(&dq, &ctx.cos, &ctx.sin)?;
        let dk = rope_backward(&dk, &ctx.cos, &ctx.sin)?;
        let unheads = |d: Tensor, heads: usize| -> Result<Tensor> {
            Ok(d.transpose(1, 2)?
                .contiguous()?
                .reshape((b, t, heads * c.head_dim))?)
        };
        let dh1 = (linear(Target::Q, 0, &unheads(dq, c.num_heads)?, &s.h1, &w.q_proj)?
            + linear(
                Target::K,
                1,
                &unheads(dk, c.num_kv_heads)?,
                &s.h1,
                &w.k_proj,
            )?
            + linear(
                Target::V,
                2,
                &unheads(dv, c.num_kv_heads)?,
                &s.h1,
                &w.v_proj,
            )?)?
        .reshape((b, t, h))?;
        let (dx_norm1, dinput_norm) = rms_norm_backward(&dh1, &s.x, &w.input_norm, c.rms_norm_eps)?;
        let dx = (dx_mid + dx_norm1)?;

        let weights = if full {
            let mut g = weight_grads
                .into_iter()
                .map(|g| g.expect("full mode trains every weight"));
            Some(LayerWeights {
                input_norm: dinput_norm,
                q_proj: g.next().expect("q"),
                k_proj: g.next().expect("k"),
                v_proj: g.next().expect("v"),
                o_proj: g.next().expect("o"),
                post_attention_norm: dpost,
                gate_proj: g.next().expect("gate"),
                up_proj: g.next().expect("up"),
                down_proj: g.next().expect("down"),
            })
        } else {
            None
        };
        Ok((
            dx,
            LayerGrads {
                lora: lora_grads,
                weights,
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

    /// The memory account's activations are exactly what a step keeps.
    #[test]
    fn memory_account_counts_the_saved_activations() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mistral");
        let config = ModelConfig::load(&dir).unwrap();
        let weights = ModelWeights::load(&dir, &config, DType::F32, &Device::Cpu).unwrap();
        let lora =
            LoraAdapter::load(&dir.join("adapter"), &config, DType::F32, &Device::Cpu).unwrap();
        let m = Model::new(config, weights, Some(lora));
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
        let (cos, sin) =
            rope_tables(m.inv_freq(), &batch.position_ids, rows, &Device::Cpu).unwrap();
        let mask = attention_mask(
            &batch.segment_ids,
            rows,
            m.config.sliding_window,
            &Device::Cpu,
        )
        .unwrap();
        let ctx = StepContext {
            cos,
            sin,
            mask,
            dropout_seed: 0,
        };
        let mut x = Tensor::zeros(
            (rows, seq_len, m.config.hidden_size),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let mut kept = bytes(&x);
        for l in 0..m.config.num_layers {
            let s = m.layer_forward_saved(&x, l, &ctx).unwrap();
            kept += [
                &s.h1, &s.q, &s.k, &s.v, &s.p, &s.a, &s.x_mid, &s.h2, &s.gate, &s.up, &s.z, &s.out,
            ]
            .into_iter()
            .map(bytes)
            .sum::<usize>();
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
    }
}
