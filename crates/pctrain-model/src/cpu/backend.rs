//! The CPU training backend: the operations of [`Forward`] and [`Backward`] as the CPU kernels of
//! [`crate::layers`], over f32 buffers of the model's [`Workspace`] reused from step to step (no
//! tensor is made per op), with q, k and v left token-major as the projections write them.

use std::marker::PhantomData;

use crate::backend::{AttentionSaved, Backward, Forward, LossBackward};
use crate::backward::StepOptions;
use crate::config::ModelConfig;
use crate::error::Result;
use crate::layers::attention::{
    attention_cpu_backward, attention_cpu_forward, attention_reach, AttnInputs, AttnShape,
};
use crate::layers::linear::{linear_cpu_backward, linear_cpu_forward, LoraGrads, LoraSaved};
use crate::layers::loss::{cross_entropy_cpu, shift_targets, LossGrads, LossScratch, LossSum};
use crate::layers::mlp::{swiglu_cpu_backward, swiglu_cpu_forward};
use crate::layers::norm::{rms_norm_cpu_backward, rms_norm_cpu_forward};
use crate::layers::rope::{rope_cpu, rope_table_values, RopeLayout};
use crate::lora::Target;
use crate::model::{Batch, Model};
use crate::params::{place, LayerParam, LayerPlaced, Param, Part, Placed};
use crate::pass::{self, PartHooks};
use crate::trainable::HostHooks;

use super::params::Views;
use super::workspace::{LoraScratch, Workspace};

/// One pass's operations on the CPU kernels; gradients are added into `&'g mut [f32]` slots.
pub(crate) struct CpuBackend<'a, 'g> {
    config: &'a ModelConfig,
    views: &'a Views<'a>,
    batch: &'a Batch,
    /// Tokens, `B * T`.
    n: usize,
    attn: AttnShape,
    /// Rope tables `[N, head_dim]`, and the first key each position may attend.
    cos: &'a [f32],
    sin: &'a [f32],
    reach: &'a [u32],
    /// LoRA dropout's probability and the step's seed, when training with dropout.
    dropout: Option<(f64, u64)>,
    /// Tokens per cross-entropy chunk.
    loss_chunk: usize,
    lora: &'a mut LoraScratch,
    loss: &'a mut LossScratch,
    grads: PhantomData<&'g mut [f32]>,
}

/// What a pass on the CPU reads besides the weights: the batch's rope tables and attention
/// reach, kept in the workspace.
#[derive(Default)]
pub(crate) struct Tables {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub reach: Vec<u32>,
}

impl Tables {
    pub fn of(config: &ModelConfig, inv_freq: &[f32], batch: &Batch) -> Self {
        let (cos, sin) = rope_table_values(inv_freq, &batch.position_ids);
        let window = config.sliding_window.unwrap_or(0);
        Tables {
            cos,
            sin,
            reach: attention_reach(&batch.segment_ids, batch.rows, window),
        }
    }
}

impl<'a> CpuBackend<'a, '_> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &'a ModelConfig,
        views: &'a Views<'a>,
        batch: &'a Batch,
        tables: &'a Tables,
        dropout: Option<(f64, u64)>,
        loss_chunk: usize,
        lora: &'a mut LoraScratch,
        loss: &'a mut LossScratch,
    ) -> Self {
        CpuBackend {
            config,
            views,
            batch,
            n: batch.rows * batch.seq_len,
            attn: AttnShape {
                batch: batch.rows,
                heads: config.num_heads,
                kv_heads: config.num_kv_heads,
                t: batch.seq_len,
                d: config.head_dim,
                token_major: true,
            },
            cos: &tables.cos,
            sin: &tables.sin,
            reach: &tables.reach,
            dropout,
            loss_chunk,
            lora,
            loss,
            grads: PhantomData,
        }
    }
}

impl CpuBackend<'_, '_> {
    /// Rope on token-major rows of `heads` heads, or its transpose.
    fn rotate(&self, x: &mut [f32], heads: usize, backward: bool) {
        let layout = RopeLayout::TokenMajor { heads };
        rope_cpu(
            x,
            self.config.head_dim,
            layout,
            self.cos,
            self.sin,
            backward,
        );
    }
}

impl Forward for CpuBackend<'_, '_> {
    type Buf = Vec<f32>;

    fn config(&self) -> &ModelConfig {
        self.config
    }

    fn empty(&self) -> Vec<f32> {
        Vec::new()
    }

    fn embed(&mut self, x: &mut Vec<f32>) -> Result<()> {
        let mult = self.config.embedding_multiplier as f32;
        self.views.embed_rows(&self.batch.input_ids, mult, x);
        Ok(())
    }

    fn rms_norm(
        &mut self,
        w: Param,
        x: &Vec<f32>,
        y: &mut Vec<f32>,
        rstd: &mut Vec<f32>,
    ) -> Result<()> {
        let eps = self.config.rms_norm_eps as f32;
        rms_norm_cpu_forward(x, self.views.weight(w), eps, y, rstd);
        Ok(())
    }

    fn linear(
        &mut self,
        l: usize,
        target: Target,
        x: &Vec<f32>,
        xa: &mut Vec<f32>,
        y: &mut Vec<f32>,
        alpha: f32,
        accumulate: bool,
    ) -> Result<()> {
        let p = self.views.layer(l, self.dropout);
        let lora = p.lora[target as usize].as_ref().map(|l| {
            let saved = LoraSaved {
                xa,
                xd: &mut self.lora.x,
            };
            (l, saved)
        });
        let w = p.weight(LayerParam::of(target));
        linear_cpu_forward(self.n, x, w, lora, y, alpha, accumulate);
        Ok(())
    }

    fn rope(&mut self, x: &mut Vec<f32>, heads: usize) -> Result<()> {
        self.rotate(x, heads, false);
        Ok(())
    }

    fn attention(
        &mut self,
        _: usize,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        o: &mut Vec<f32>,
        lse: &mut Vec<f32>,
    ) -> Result<()> {
        let scale = self.config.attention_scale as f32;
        let seg = &self.batch.segment_ids;
        attention_cpu_forward(&self.attn, q, k, v, seg, self.reach, scale, o, lse);
        Ok(())
    }

    fn swiglu(&mut self, gate: &Vec<f32>, up: &Vec<f32>, z: &mut Vec<f32>) -> Result<()> {
        swiglu_cpu_forward(gate, up, z);
        Ok(())
    }

    fn copy(&mut self, src: &Vec<f32>, dst: &mut Vec<f32>) -> Result<()> {
        dst.copy_from_slice(src);
        Ok(())
    }
}

impl<'g> Backward for CpuBackend<'_, 'g> {
    type Grad = &'g mut Vec<f32>;

    fn embed_backward(&mut self, dx: &Vec<f32>, g: &mut Placed<Self::Grad>) -> Result<()> {
        let Some(de) = g.embed.as_deref_mut() else {
            return Ok(());
        };
        let h = self.config.hidden_size;
        let mult = self.config.embedding_multiplier as f32;
        for (g, &id) in dx.chunks_exact(h).zip(&self.batch.input_ids) {
            let row = &mut de[id as usize * h..(id as usize + 1) * h];
            for (d, g) in row.iter_mut().zip(g) {
                *d = g.mul_add(mult, *d);
            }
        }
        Ok(())
    }

    fn rms_norm_backward(
        &mut self,
        w: Param,
        dy: &Vec<f32>,
        x: &Vec<f32>,
        rstd: &Vec<f32>,
        dx: &mut Vec<f32>,
        accumulate: bool,
        dw: Option<&mut Self::Grad>,
    ) -> Result<()> {
        let dw = dw.map(|g| g.as_mut_slice());
        rms_norm_cpu_backward(dy, x, rstd, self.views.weight(w), dx, accumulate, dw);
        Ok(())
    }

    fn linear_backward(
        &mut self,
        l: usize,
        target: Target,
        dy: &Vec<f32>,
        x: &Vec<f32>,
        xa: &Vec<f32>,
        alpha: f32,
        dx: &mut Vec<f32>,
        accumulate: bool,
        g: &mut LayerPlaced<Self::Grad>,
    ) -> Result<()> {
        let p = self.views.layer(l, self.dropout);
        let lora = match (&p.lora[target as usize], &mut g.lora[target as usize]) {
            (Some(l), Some((da, db))) => Some((
                l,
                LoraGrads {
                    xa,
                    da,
                    db,
                    dyb: &mut self.lora.dy,
                    xd: &mut self.lora.x,
                },
            )),
            _ => None,
        };
        let w = LayerParam::of(target);
        let dw = g.weights[w as usize].as_mut().map(|g| g.as_mut_slice());
        linear_cpu_backward(
            self.n,
            dy,
            x,
            p.weight(w),
            alpha,
            lora,
            dw,
            Some(dx),
            accumulate,
        );
        Ok(())
    }

    fn rope_backward(&mut self, x: &mut Vec<f32>, heads: usize) -> Result<()> {
        self.rotate(x, heads, true);
        Ok(())
    }

    fn attention_backward(
        &mut self,
        s: AttentionSaved<'_, Vec<f32>>,
        do_: &Vec<f32>,
        dq: &mut Vec<f32>,
        dk: &mut Vec<f32>,
        dv: &mut Vec<f32>,
    ) -> Result<()> {
        let inputs = AttnInputs {
            q: s.q,
            k: s.k,
            v: s.v,
            out: s.o,
            lse: s.lse,
            dout: do_,
            seg: &self.batch.segment_ids,
            reach: self.reach,
        };
        let scale = self.config.attention_scale as f32;
        attention_cpu_backward(&self.attn, inputs, scale, dq, dk, dv);
        Ok(())
    }

    fn swiglu_backward(
        &mut self,
        dz: &Vec<f32>,
        gate: &Vec<f32>,
        up: &Vec<f32>,
        dgate: &mut Vec<f32>,
        dup: &mut Vec<f32>,
    ) -> Result<()> {
        swiglu_cpu_backward(dz, gate, up, dgate, dup);
        Ok(())
    }

    fn loss(&mut self, h: &Vec<f32>, grads: Option<LossBackward<'_, Self>>) -> Result<LossSum> {
        let b = self.batch;
        let targets = shift_targets(&b.labels, &b.segment_ids, b.rows);
        // The output projection's gradient: `lm_head`'s, or the tied embedding's.
        let grads = grads.map(|lb| LossGrads {
            scale: lb.scale as f32,
            dhidden: lb.dh,
            doutput: match lb.g.lm_head.as_mut().map(|g| g.as_mut_slice()) {
                Some(d) => Some(d),
                None => lb.g.embed.as_mut().map(|g| g.as_mut_slice()),
            },
        });
        let scaling = self.config.logits_scaling as f32;
        let output = self.views.output();
        let chunk = self.loss_chunk;
        Ok(cross_entropy_cpu(
            h, output, scaling, &targets, chunk, grads, self.loss,
        ))
    }
}

impl Model {
    /// The LoRA dropout of a training pass: its probability and the step's seed, when above 0.
    fn pass_dropout(&self, seed: u64) -> Option<(f64, u64)> {
        let p = self.lora.as_ref()?.config.dropout;
        (p > 0.0).then_some((p, seed))
    }

    /// The summed next-token loss of `batch`, forward only, on the CPU kernels.
    pub(crate) fn cpu_loss(&self, batch: &Batch, chunk: usize) -> Result<LossSum> {
        let v = self.views()?;
        let mut ws = self.workspace.lock().expect("a pass panicked");
        let c = &self.config;
        ws.fit(
            &self.sizes(batch.rows, batch.seq_len),
            c.num_layers,
            false,
            false,
        );
        let Workspace {
            acts,
            tables,
            lora,
            loss,
        } = &mut *ws;
        *tables = Tables::of(c, self.inv_freq(), batch);
        let mut k = CpuBackend::new(c, &v, batch, tables, None, chunk, lora, loss);
        pass::loss(&mut k, acts)
    }

    /// Forward and backward of `batch` on the CPU kernels, adding the gradients of its summed
    /// loss times `1 / normalizer` to `grads` ([`Model::trainable`]'s buffers). Returns the loss
    /// sum and, with `want_input_grad`, the gradient with respect to the scaled embeddings
    /// (Granite's multiplier not yet applied to it), `[N, H]`.
    /// `hooks` make each part's buffers whole before the pass adds into them, and hand them out
    /// once it is done.
    pub(crate) fn cpu_forward_backward<'g>(
        &self,
        batch: &Batch,
        normalizer: f64,
        opts: StepOptions,
        grads: &'g mut [Vec<f32>],
        want_input_grad: bool,
        hooks: &mut HostHooks<'_, 'g>,
    ) -> Result<(LossSum, Option<Vec<f32>>)> {
        let c = &self.config;
        let v = self.views()?;
        let params = self.trainable_params(opts.mode);
        let mut slots = place(c.num_layers, &params, grads.iter_mut());
        let keep_all = !opts.recompute;
        let mut ws = self.workspace.lock().expect("a pass panicked");
        let sizes = self.sizes(batch.rows, batch.seq_len);
        ws.fit(&sizes, c.num_layers, keep_all, true);
        let Workspace {
            acts,
            tables,
            lora,
            loss,
        } = &mut *ws;
        *tables = Tables::of(c, self.inv_freq(), batch);
        let dropout = self.pass_dropout(opts.dropout_seed);
        let chunk = opts.loss_chunk;
        let mut k = CpuBackend::new(c, &v, batch, tables, dropout, chunk, lora, loss);
        let scale = 1.0 / normalizer;
        let loss = pass::forward_backward(&mut k, acts, keep_all, scale, &mut slots, hooks)?;
        hooks.finished(Part::Embeddings, &mut slots)?;
        Ok((loss, want_input_grad.then(|| acts.scratch.grad.clone())))
    }
}
