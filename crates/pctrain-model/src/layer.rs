//! One decoder layer, forward and backward side by side:
//! `x_mid = x + r * o_proj(attention(rope(q(norm(x))), rope(k(..)), v(..)))`,
//! `out = x_mid + r * down(silu(gate(norm(x_mid))) * up(norm(x_mid)))`, with `r` Granite's residual
//! multiplier (1 elsewhere). The forward keeps what the backward needs ([`Saved`]); training and
//! inference on tensors run this one forward (decoding has its own, `crate::generate`).

use candle_core::{Tensor, D};

use crate::backward::LayerGrads;
use crate::error::Result;
use crate::layers::attention::{
    flash_attention_backward, flash_attention_forward, AttentionSaved, SegmentMask,
};
use crate::layers::linear::{
    dropout_mask, dropout_seed, linear_backward, linear_forward_train, Lora,
};
use crate::layers::mlp::{swiglu_backward, swiglu_forward};
use crate::layers::norm::{rms_norm_backward, rms_norm_forward};
use crate::layers::rope::{rope_backward, rope_forward};
use crate::lora::{LayerLora, Target};
use crate::model::Model;
use crate::params::LayerParam;
use crate::weights::LayerWeights;

/// What a layer's backward needs.
pub(crate) struct Saved {
    pub(crate) x: Tensor,
    pub(crate) h1: Tensor,
    pub(crate) q: Tensor,
    pub(crate) k: Tensor,
    pub(crate) v: Tensor,
    pub(crate) attn: AttentionSaved,
    pub(crate) a: Tensor,
    pub(crate) x_mid: Tensor,
    pub(crate) h2: Tensor,
    pub(crate) gate: Tensor,
    pub(crate) up: Tensor,
    pub(crate) z: Tensor,
    pub(crate) out: Tensor,
}

/// Inputs shared by every layer of a pass.
pub(crate) struct LayerContext {
    pub(crate) cos: Tensor,
    pub(crate) sin: Tensor,
    pub(crate) attention: SegmentMask,
    /// Seed of the LoRA dropout masks; `None` at inference (no dropout).
    pub(crate) dropout_seed: Option<u64>,
}

/// `x` cast once to the adapters' dtype when any of `targets` (which all read `x`) has an
/// adapter: the casts of their shared input, made once.
fn adapter_input(
    lora: Option<&LayerLora>,
    targets: &[Target],
    x: &Tensor,
) -> Result<Option<Tensor>> {
    let first = lora.and_then(|a| targets.iter().find_map(|&t| a[t as usize].as_ref()));
    Ok(first.map(|l| x.to_dtype(l.a.dtype())).transpose()?)
}

impl Model {
    fn adapters(&self, l: usize) -> Option<&LayerLora> {
        self.lora.as_ref().map(|a| &a.layers[l])
    }

    /// The LoRA dropout mask of layer `l`'s `target` for input `x`, when that adapter exists and
    /// its dropout is above 0; a function of the step's seed, so recomputation draws it again.
    fn dropout(
        &self,
        ctx: &LayerContext,
        l: usize,
        target: Target,
        x: &Tensor,
    ) -> Result<Option<Tensor>> {
        let (Some(adapter), Some(step_seed)) = (&self.lora, ctx.dropout_seed) else {
            return Ok(None);
        };
        let p = adapter.config.dropout;
        let Some(lora) = adapter.layers[l][target as usize].as_ref() else {
            return Ok(None);
        };
        if p <= 0.0 {
            return Ok(None);
        }
        // In the adapter's dtype: the mask multiplies the adapter's (cast) input.
        Ok(Some(dropout_mask(
            p,
            dropout_seed(step_seed, l, target),
            x.dims(),
            lora.a.dtype(),
            x.device(),
        )?))
    }

    /// Forward of layer `l`, keeping what its backward needs.
    pub(crate) fn layer_forward(&self, x: &Tensor, l: usize, ctx: &LayerContext) -> Result<Saved> {
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
        let lin = |t: Target, x: &Tensor, x_lora: Option<&Tensor>, w: &Tensor| -> Result<Tensor> {
            let mask = self.dropout(ctx, l, t, x)?;
            Ok(linear_forward_train(
                x,
                w,
                adapter(t),
                x_lora,
                mask.as_ref(),
            )?)
        };
        let h1 = rms_norm_forward(x, &w.input_norm, c.rms_norm_eps)?;
        let h1_lora = adapter_input(lora, &[Target::Q, Target::K, Target::V], &h1)?;
        let h1_lora = h1_lora.as_ref();
        let q = heads(lin(Target::Q, &h1, h1_lora, &w.q_proj)?, c.num_heads)?;
        let k = heads(lin(Target::K, &h1, h1_lora, &w.k_proj)?, c.num_kv_heads)?;
        let v = heads(lin(Target::V, &h1, h1_lora, &w.v_proj)?, c.num_kv_heads)?;
        let q = rope_forward(&q, &ctx.cos, &ctx.sin)?;
        let k = rope_forward(&k, &ctx.cos, &ctx.sin)?;
        let attn_saved = flash_attention_forward(&q, &k, &v, &ctx.attention, c.attention_scale)?;
        let o = attn_saved.out.clone();
        let a = o
            .transpose(1, 2)?
            .reshape((b, t, c.num_heads * c.head_dim))?;
        let attn = lin(Target::O, &a, None, &w.o_proj)?;
        let x_mid = (x + (attn * c.residual_multiplier)?)?;
        let h2 = rms_norm_forward(&x_mid, &w.post_attention_norm, c.rms_norm_eps)?;
        let h2_lora = adapter_input(lora, &[Target::Gate, Target::Up], &h2)?;
        let gate = lin(Target::Gate, &h2, h2_lora.as_ref(), &w.gate_proj)?;
        let up = lin(Target::Up, &h2, h2_lora.as_ref(), &w.up_proj)?;
        let z = swiglu_forward(&gate, &up)?;
        let m = lin(Target::Down, &z, None, &w.down_proj)?;
        let out = (&x_mid + (m * c.residual_multiplier)?)?;
        Ok(Saved {
            x: x.clone(),
            h1,
            q,
            k,
            v,
            attn: attn_saved,
            a,
            x_mid,
            h2,
            gate,
            up,
            z,
            out,
        })
    }

    /// Backward of layer `l`: the gradient with respect to its input, and its parameters'.
    pub(crate) fn layer_backward(
        &self,
        dout: &Tensor,
        s: &Saved,
        l: usize,
        ctx: &LayerContext,
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
        // Weight gradients by [`LayerParam`] (full mode).
        let mut weight_grads: [Option<Tensor>; 9] = Default::default();
        let mut linear = |target: Target,
                          dy: &Tensor,
                          x: &Tensor,
                          x_lora: Option<&Tensor>,
                          weight: &Tensor|
         -> Result<Tensor> {
            let mask = self
                .dropout(ctx, l, target, x)?
                .map(|m| flat(&m))
                .transpose()?;
            let x_lora = x_lora.map(flat).transpose()?;
            let g = linear_backward(
                &flat(dy)?,
                &flat(x)?,
                weight,
                adapter(target),
                x_lora.as_ref(),
                mask.as_ref(),
                full,
            )?;
            lora_grads[target as usize] = g.dlora;
            weight_grads[LayerParam::of(target) as usize] = g.dw;
            Ok(g.dx)
        };

        // MLP block: out = x_mid + r * down(swiglu(gate(h2), up(h2))).
        let dm = (dout * c.residual_multiplier)?;
        let dz = linear(Target::Down, &dm, &s.z, None, &w.down_proj)?.reshape(s.z.shape())?;
        let (dgate, dup) = swiglu_backward(&dz, &s.gate, &s.up)?;
        let h2_lora = adapter_input(lora, &[Target::Gate, Target::Up], &s.h2)?;
        let dh2 = (linear(Target::Gate, &dgate, &s.h2, h2_lora.as_ref(), &w.gate_proj)?
            + linear(Target::Up, &dup, &s.h2, h2_lora.as_ref(), &w.up_proj)?)?
        .reshape((b, t, h))?;
        let (dx_norm2, dpost) =
            rms_norm_backward(&dh2, &s.x_mid, &w.post_attention_norm, c.rms_norm_eps, full)?;
        let dx_mid = (dout + dx_norm2)?;

        // Attention block: x_mid = x + r * o_proj(attention(rope(q), rope(k), v)).
        let dattn = (&dx_mid * c.residual_multiplier)?;
        let da = linear(Target::O, &dattn, &s.a, None, &w.o_proj)?;
        let da = da
            .reshape((b, t, c.num_heads, c.head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        let (dq, dk, dv) = flash_attention_backward(
            &da,
            &s.q,
            &s.k,
            &s.v,
            &s.attn,
            &ctx.attention,
            c.attention_scale,
        )?;
        let dq = rope_backward(&dq, &ctx.cos, &ctx.sin)?;
        let dk = rope_backward(&dk, &ctx.cos, &ctx.sin)?;
        let unheads = |d: Tensor, heads: usize| -> Result<Tensor> {
            Ok(d.transpose(1, 2)?
                .contiguous()?
                .reshape((b, t, heads * c.head_dim))?)
        };
        let h1_lora = adapter_input(lora, &[Target::Q, Target::K, Target::V], &s.h1)?;
        let h1_lora = h1_lora.as_ref();
        let dq = linear(
            Target::Q,
            &unheads(dq, c.num_heads)?,
            &s.h1,
            h1_lora,
            &w.q_proj,
        )?;
        let dk = linear(
            Target::K,
            &unheads(dk, c.num_kv_heads)?,
            &s.h1,
            h1_lora,
            &w.k_proj,
        )?;
        let dv = linear(
            Target::V,
            &unheads(dv, c.num_kv_heads)?,
            &s.h1,
            h1_lora,
            &w.v_proj,
        )?;
        let dh1 = (dq + dk + dv)?.reshape((b, t, h))?;
        let (dx_norm1, dinput_norm) =
            rms_norm_backward(&dh1, &s.x, &w.input_norm, c.rms_norm_eps, full)?;
        let dx = (dx_mid + dx_norm1)?;

        let weights = if full {
            weight_grads[LayerParam::InputNorm as usize] = dinput_norm;
            weight_grads[LayerParam::PostNorm as usize] = dpost;
            Some(LayerWeights::try_from_fn(|w| {
                weight_grads[w as usize].take().ok_or_else(|| {
                    crate::error::ModelError::Input(format!(
                        "full mode trains every weight; {} has no gradient",
                        w.name()
                    ))
                })
            })?)
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
