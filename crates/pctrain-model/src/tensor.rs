//! The tensor backend: the operations of [`Forward`] and [`Backward`] as the candle-tensor entries
//! of [`crate::layers`], which run the CUDA kernels on a GPU and the CPU kernels (through f32
//! copies) for narrower dtypes on the CPU. Activations are `[N, width]` tensors in the model's
//! dtype; the roped q and k lie by heads, `[B, heads, T, d]`, as the attention kernels read them. A
//! gradient slot is empty until its first gradient.

use candle_core::{DType, Tensor};

use crate::backend::{AttentionSaved, Backward, Forward, LossBackward};
use crate::backward::StepOptions;
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::layers::attention::{
    self, flash_attention_backward, flash_attention_forward, SegmentMask,
};
use crate::layers::linear::{dropout_mask, dropout_seed, linear_backward, linear_forward_train};
use crate::layers::loss::{cross_entropy_backward, cross_entropy_forward, shift_targets, LossSum};
use crate::layers::mlp::{swiglu_backward, swiglu_forward};
use crate::layers::norm::{rms_norm_backward, rms_norm_forward};
use crate::layers::rope::{rope_backward, rope_forward, rope_tables};
use crate::lora::Target;
use crate::model::{Batch, Model};
use crate::params::{LayerParam, LayerPlaced, Param, Placed};
use crate::pass::{self, Acts};

/// One pass's operations on tensors.
pub(crate) struct TensorBackend<'a> {
    model: &'a Model,
    batch: &'a Batch,
    /// The batch's ids `[N]` on the model's device.
    ids: Tensor,
    /// Rope tables `[B, T, d]`.
    cos: Tensor,
    sin: Tensor,
    mask: SegmentMask,
    /// Seed of the LoRA dropout masks; `None` at inference (no dropout).
    dropout_seed: Option<u64>,
    /// Tokens per cross-entropy chunk.
    loss_chunk: usize,
    /// A tensor of no elements, what a buffer holds before an op writes it.
    nothing: Tensor,
    /// A decoding step's key/value cache: attention writes the step's keys and values into it
    /// and attends over it, instead of over the batch.
    #[cfg(feature = "cuda")]
    cache: Option<crate::generate::cuda::StepCache<'a>>,
}

impl<'a> TensorBackend<'a> {
    pub fn new(
        model: &'a Model,
        batch: &'a Batch,
        dropout_seed: Option<u64>,
        loss_chunk: usize,
    ) -> Result<Self> {
        let c = &model.config;
        let device = model.device();
        let n = batch.rows * batch.seq_len;
        let (cos, sin) = rope_tables(model.inv_freq(), &batch.position_ids, batch.rows, device)?;
        let window = c.sliding_window.unwrap_or(0);
        Ok(TensorBackend {
            model,
            batch,
            ids: Tensor::from_slice(&batch.input_ids, n, device)?,
            cos,
            sin,
            mask: SegmentMask::new(&batch.segment_ids, batch.rows, window, device)?,
            dropout_seed,
            loss_chunk,
            nothing: Tensor::zeros(0, DType::F32, device)?,
            #[cfg(feature = "cuda")]
            cache: None,
        })
    }

    /// The same operations for one decoding step (a batch of its tokens, each its own row),
    /// attending over `cache`.
    #[cfg(feature = "cuda")]
    pub fn with_cache(self, cache: crate::generate::cuda::StepCache<'a>) -> Self {
        TensorBackend {
            cache: Some(cache),
            ..self
        }
    }

    /// The gradient slots of `params` (in [`Model::trainable_params`]' order), empty.
    pub fn slots(&self, params: &[Param]) -> Placed<Option<Tensor>> {
        let layers = self.model.config.num_layers;
        crate::params::place(layers, params, params.iter().map(|_| None))
    }

    fn weight(&self, p: Param) -> &Tensor {
        let w = &self.model.weights;
        match p {
            Param::Embed => &w.embed_tokens,
            Param::Layer(l, lw) => w.layers[l].get(lw),
            Param::Norm => &w.norm,
            Param::LmHead => w.output(),
            Param::LoraA(..) | Param::LoraB(..) => unreachable!("adapters are read by layer"),
        }
    }

    fn adapter(&self, l: usize, t: Target) -> Option<&crate::layers::linear::Lora> {
        let a = self.model.lora.as_ref()?;
        a.layers[l][t as usize].as_ref()
    }

    /// The LoRA dropout mask of layer `l`'s `target` for input `x`, when that adapter exists and
    /// its dropout is above 0; a function of the step's seed, so recomputation draws it again.
    fn dropout(&self, l: usize, target: Target, x: &Tensor) -> Result<Option<Tensor>> {
        let (Some(adapter), Some(step_seed)) = (&self.model.lora, self.dropout_seed) else {
            return Ok(None);
        };
        let p = adapter.config.dropout;
        let Some(lora) = self.adapter(l, target) else {
            return Ok(None);
        };
        if p <= 0.0 {
            return Ok(None);
        }
        // In the adapter's dtype: the mask multiplies the adapter's (cast) input.
        let seed = dropout_seed(step_seed, l, target);
        let mask = dropout_mask(p, seed, x.dims(), lora.a.dtype(), x.device())?;
        Ok(Some(mask))
    }

    /// `[N, heads * d]` -> `[B, heads, T, d]`.
    fn by_heads(&self, x: &Tensor, heads: usize) -> Result<Tensor> {
        let (b, t, d) = (
            self.batch.rows,
            self.batch.seq_len,
            self.model.config.head_dim,
        );
        Ok(x.reshape((b, t, heads, d))?.transpose(1, 2)?.contiguous()?)
    }

    /// `[B, heads, T, d]` -> `[N, heads * d]`.
    fn by_tokens(&self, x: &Tensor) -> Result<Tensor> {
        let (b, heads, t, d) = x.dims4()?;
        Ok(x.transpose(1, 2)?
            .contiguous()?
            .reshape((b * t, heads * d))?)
    }
}

/// `slot += g` (or `= g` for its first gradient), when the slot exists.
fn add(slot: Option<&mut Option<Tensor>>, g: Tensor) -> Result<()> {
    if let Some(slot) = slot {
        *slot = Some(match slot.take() {
            Some(old) => (old + g)?,
            None => g,
        });
    }
    Ok(())
}

/// `out = y` or, with `accumulate`, `out += y`.
fn write(out: &mut Tensor, y: Tensor, accumulate: bool) -> Result<()> {
    *out = if accumulate { (&*out + y)? } else { y };
    Ok(())
}

/// `y * alpha`, skipping the product when `alpha` is 1.
fn scaled(y: Tensor, alpha: f32) -> Result<Tensor> {
    Ok(if alpha == 1.0 { y } else { (y * alpha as f64)? })
}

impl Forward for TensorBackend<'_> {
    type Buf = Tensor;

    fn config(&self) -> &ModelConfig {
        &self.model.config
    }

    fn empty(&self) -> Tensor {
        self.nothing.clone()
    }

    fn embed(&mut self, x: &mut Tensor) -> Result<()> {
        let e = self.model.weights.embed_tokens.index_select(&self.ids, 0)?;
        *x = (e * self.model.config.embedding_multiplier)?;
        Ok(())
    }

    fn rms_norm(&mut self, w: Param, x: &Tensor, y: &mut Tensor, _: &mut Tensor) -> Result<()> {
        *y = rms_norm_forward(x, self.weight(w), self.model.config.rms_norm_eps)?;
        Ok(())
    }

    fn linear(
        &mut self,
        l: usize,
        target: Target,
        x: &Tensor,
        xa: &mut Tensor,
        y: &mut Tensor,
        alpha: f32,
        accumulate: bool,
    ) -> Result<()> {
        let mask = self.dropout(l, target, x)?;
        let w = self.weight(Param::Layer(l, LayerParam::of(target)));
        let (out, kept) = linear_forward_train(x, w, self.adapter(l, target), mask.as_ref())?;
        if let Some(kept) = kept {
            *xa = kept;
        }
        write(y, scaled(out, alpha)?, accumulate)
    }

    fn rope(&mut self, x: &mut Tensor, heads: usize) -> Result<()> {
        *x = rope_forward(&self.by_heads(x, heads)?, &self.cos, &self.sin)?;
        Ok(())
    }

    fn attention(
        &mut self,
        l: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        o: &mut Tensor,
        lse: &mut Tensor,
    ) -> Result<()> {
        let c = &self.model.config;
        #[cfg(feature = "cuda")]
        if let Some(cache) = &self.cache {
            return cache.attend(c, l, q, k, v, o);
        }
        #[cfg(not(feature = "cuda"))]
        let _ = l; // the layer picks a decoding step's cache, which needs CUDA
        let v = self.by_heads(v, c.num_kv_heads)?;
        let saved = flash_attention_forward(q, k, &v, &self.mask, c.attention_scale)?;
        *o = self.by_tokens(&saved.out)?;
        *lse = saved.lse;
        Ok(())
    }

    fn swiglu(&mut self, gate: &Tensor, up: &Tensor, z: &mut Tensor) -> Result<()> {
        *z = swiglu_forward(gate, up)?;
        Ok(())
    }

    fn copy(&mut self, src: &Tensor, dst: &mut Tensor) -> Result<()> {
        *dst = src.clone();
        Ok(())
    }
}

impl Backward for TensorBackend<'_> {
    type Grad = Option<Tensor>;

    fn embed_backward(&mut self, dx: &Tensor, g: &mut Placed<Option<Tensor>>) -> Result<()> {
        if g.embed.is_none() {
            return Ok(());
        }
        let dx = (dx * self.model.config.embedding_multiplier)?;
        let zeros = self.model.weights.embed_tokens.zeros_like()?;
        add(g.embed.as_mut(), zeros.index_add(&self.ids, &dx, 0)?)
    }

    fn rms_norm_backward(
        &mut self,
        w: Param,
        dy: &Tensor,
        x: &Tensor,
        _: &Tensor,
        dx: &mut Tensor,
        accumulate: bool,
        dw: Option<&mut Option<Tensor>>,
    ) -> Result<()> {
        let eps = self.model.config.rms_norm_eps;
        let (d, g) = rms_norm_backward(dy, x, self.weight(w), eps, dw.is_some())?;
        write(dx, d, accumulate)?;
        if let Some(g) = g {
            add(dw, g)?;
        }
        Ok(())
    }

    fn linear_backward(
        &mut self,
        l: usize,
        target: Target,
        dy: &Tensor,
        x: &Tensor,
        xa: &Tensor,
        alpha: f32,
        dx: &mut Tensor,
        accumulate: bool,
        g: &mut LayerPlaced<Option<Tensor>>,
    ) -> Result<()> {
        let mask = self.dropout(l, target, x)?;
        let lw = LayerParam::of(target);
        let w = self.weight(Param::Layer(l, lw));
        let lora = self.adapter(l, target).map(|a| (a, xa));
        let train_w = g.weights[lw as usize].is_some();
        let dy = scaled(dy.clone(), alpha)?;
        let grads = linear_backward(&dy, x, w, lora, mask.as_ref(), train_w)?;
        write(dx, grads.dx, accumulate)?;
        if let Some(dw) = grads.dw {
            add(g.weight(lw), dw)?;
        }
        if let (Some((da, db)), Some((sa, sb))) = (grads.dlora, &mut g.lora[target as usize]) {
            add(Some(sa), da)?;
            add(Some(sb), db)?;
        }
        Ok(())
    }

    fn rope_backward(&mut self, x: &mut Tensor, _: usize) -> Result<()> {
        *x = self.by_tokens(&rope_backward(x, &self.cos, &self.sin)?)?;
        Ok(())
    }

    fn attention_backward(
        &mut self,
        s: AttentionSaved<'_, Tensor>,
        do_: &Tensor,
        dq: &mut Tensor,
        dk: &mut Tensor,
        dv: &mut Tensor,
    ) -> Result<()> {
        let c = &self.model.config;
        let saved = attention::AttentionSaved {
            out: self.by_heads(s.o, c.num_heads)?,
            lse: s.lse.clone(),
        };
        let v = self.by_heads(s.v, c.num_kv_heads)?;
        let do_ = self.by_heads(do_, c.num_heads)?;
        let scale = c.attention_scale;
        let (q, k, mask) = (s.q, s.k, &self.mask);
        let (gq, gk, gv) = flash_attention_backward(&do_, q, k, &v, &saved, mask, scale)?;
        *dq = gq;
        *dk = gk;
        *dv = self.by_tokens(&gv)?;
        Ok(())
    }

    fn swiglu_backward(
        &mut self,
        dz: &Tensor,
        gate: &Tensor,
        up: &Tensor,
        dgate: &mut Tensor,
        dup: &mut Tensor,
    ) -> Result<()> {
        (*dgate, *dup) = swiglu_backward(dz, gate, up)?;
        Ok(())
    }

    fn loss(&mut self, h: &Tensor, grads: Option<LossBackward<'_, Self>>) -> Result<LossSum> {
        let b = self.batch;
        let targets = shift_targets(&b.labels, &b.segment_ids, b.rows);
        let c = &self.model.config;
        let output = self.model.weights.output();
        let (scaling, chunk) = (c.logits_scaling, self.loss_chunk);
        let Some(lb) = grads else {
            return Ok(cross_entropy_forward(h, output, scaling, &targets, chunk)?);
        };
        // The output projection's gradient: `lm_head`'s, or the tied embedding's.
        let slot = match lb.g.lm_head.is_some() {
            true => lb.g.lm_head.as_mut(),
            false => lb.g.embed.as_mut(),
        };
        let train = slot.is_some();
        let ce = cross_entropy_backward(h, output, scaling, &targets, chunk, lb.scale, train)?;
        *lb.dh = ce.dhidden;
        if let Some(d) = ce.doutput {
            add(slot, d)?;
        }
        Ok(ce.loss)
    }
}

impl Model {
    /// Final hidden states (after the last norm) of `batch` on tensors, forward only: `[N, H]`.
    pub(crate) fn tensor_hidden_states(&self, batch: &Batch) -> Result<Tensor> {
        let mut k = TensorBackend::new(self, batch, None, 1)?;
        let mut acts = Acts::new(self.config.num_layers, false, false, || k.empty());
        pass::forward(&mut k, &mut acts, false, false)?;
        Ok(acts.final_h)
    }

    /// The summed next-token loss of `batch` on tensors, forward only.
    pub(crate) fn tensor_loss(&self, batch: &Batch, chunk: usize) -> Result<LossSum> {
        let mut k = TensorBackend::new(self, batch, None, chunk)?;
        let mut acts = Acts::new(self.config.num_layers, false, false, || k.empty());
        pass::loss(&mut k, &mut acts)
    }

    /// Forward and backward of `batch` on tensors, one op at a time (a GPU's path, and a CPU's
    /// for narrower dtypes): the summed loss, the gradients of `opts.mode`'s trainable tensors
    /// (of the loss times `1 / normalizer`, in [`Model::trainable_params`]' order) and the
    /// gradient with respect to the scaled embeddings (Granite's multiplier not yet applied to
    /// it), `[N, H]`.
    pub(crate) fn tensor_forward_backward(
        &self,
        batch: &Batch,
        normalizer: f64,
        opts: StepOptions,
    ) -> Result<(LossSum, Vec<Tensor>, Tensor)> {
        let mut k = TensorBackend::new(self, batch, Some(opts.dropout_seed), opts.loss_chunk)?;
        let keep_all = !opts.recompute;
        let layers = self.config.num_layers;
        let mut acts = Acts::new(layers, keep_all, true, || k.empty());
        let params = self.trainable_params(opts.mode);
        let mut g = k.slots(&params);
        let loss = pass::forward_backward(
            &mut k,
            &mut acts,
            keep_all,
            1.0 / normalizer,
            &mut g,
            &mut pass::NoHooks,
        )?;
        let grads = params
            .iter()
            .map(|&p| {
                g.take(p).ok_or_else(|| {
                    ModelError::Input(format!("{} trains but got no gradient", p.name()))
                })
            })
            .collect::<Result<_>>()?;
        Ok((loss, grads, acts.scratch.grad))
    }
}
