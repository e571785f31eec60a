//! Decoding on the CPU kernels: a step's tokens through the decoder's one forward
//! ([`crate::pass::forward`], [`crate::layer::layer_forward`]) with the operations of
//! [`StepOps`] (projections on [`dots`], attention over the cache), then the picks. The buffers
//! (cache-line aligned, sized for the largest step) and the cache are allocated when decoding
//! starts; a step allocates only its list of picked ids.

use rayon::prelude::*;

use super::schedule::Room;
use super::{pick, Backend, Sampling, Step};
use crate::backend::{Forward, Projection};
use crate::config::ModelConfig;
use crate::cpu::aligned::Aligned;
use crate::cpu::dots::{dots, Product};
use crate::cpu::params::Views;
use crate::error::Result;
use crate::layers::kv_cache::{
    cache_attention_cpu, cache_write_cpu, CacheAttention, CacheShape, Places,
};
use crate::layers::linear::LoraView;
use crate::layers::mlp::swiglu_cpu_forward;
use crate::layers::norm::rms_norm_cpu_forward;
use crate::layers::rope::{rope_cpu, rope_table_into, RopeLayout};
use crate::lora::Target;
use crate::model::Model;
use crate::params::{LayerParam, Param};
use crate::pass::{self, Acts};

/// The picks' buffers, `M` picked tokens: their normed hidden states `[M, H]`, logits `[M, V]`
/// and the picks' scratch ids `[M, V]`.
struct Picks {
    last_h: Aligned,
    logits: Aligned,
    order: Vec<u32>,
}

/// The CPU decoder: the model's weights as views, the cache, the pass's activations (one layer's
/// set, sized for the largest step), the rope tables and the picks' buffers.
pub(crate) struct CpuDecoder<'m> {
    model: &'m Model,
    views: Views<'m>,
    sampling: Sampling,
    shape: CacheShape,
    keys: Aligned,
    values: Aligned,
    acts: Acts<Aligned>,
    /// Rope tables `[N, head_dim]`.
    cos: Aligned,
    sin: Aligned,
    picks: Picks,
}

impl<'m> CpuDecoder<'m> {
    pub fn new(model: &'m Model, room: Room, sampling: Sampling) -> Result<Self> {
        let c = &model.config;
        let shape = CacheShape::of(c, room.slots, room.positions);
        let (n, m) = (room.tokens, room.slots);
        let sizes = model.sizes(1, n);
        // Every buffer of a forward-only pass, at the largest step's length.
        let mut acts = Acts::new(c.num_layers, false, false, Aligned::default);
        for x in &mut acts.inputs {
            *x = Aligned::zeros(n * c.hidden_size)?;
        }
        for (b, _, len) in acts.layers[0].with_lengths(&sizes) {
            *b = Aligned::zeros(len)?;
        }
        acts.final_h = Aligned::zeros(n * c.hidden_size)?;
        acts.final_rstd = Aligned::zeros(n)?;
        for (b, len) in acts.scratch.with_lengths(&sizes, false) {
            *b = Aligned::zeros(len)?;
        }
        Ok(CpuDecoder {
            model,
            views: model.views()?,
            sampling,
            shape,
            // Zeroed, so a cache sized for the longest answer costs only what is used.
            keys: Aligned::zeros(shape.len())?,
            values: Aligned::zeros(shape.len())?,
            acts,
            cos: Aligned::zeros(n * c.head_dim)?,
            sin: Aligned::zeros(n * c.head_dim)?,
            picks: Picks {
                last_h: Aligned::zeros(m * c.hidden_size)?,
                logits: Aligned::zeros(m * c.vocab_size)?,
                order: vec![0u32; m * c.vocab_size],
            },
        })
    }
}

impl Backend for CpuDecoder<'_> {
    fn step(&mut self, step: &Step) -> Result<Vec<u32>> {
        let CpuDecoder {
            model,
            views,
            sampling,
            shape,
            keys,
            values,
            acts,
            cos,
            sin,
            picks,
        } = self;
        let c = &model.config;
        let n = step.ids.len();
        let d = c.head_dim;
        rope_table_into(
            model.inv_freq(),
            &step.positions,
            &mut cos[..n * d],
            &mut sin[..n * d],
        );
        // On a thread of the pool, so that the step's many parallel loops start there rather
        // than each being handed over from this thread and waited for.
        rayon::scope(|_| {
            let mut ops = StepOps {
                config: c,
                views: &*views,
                step,
                n,
                cos: &cos[..n * d],
                sin: &sin[..n * d],
                shape: &*shape,
                keys: &mut keys[..],
                values: &mut values[..],
            };
            pass::forward(&mut ops, acts, false, false)?;
            Ok(choose(c, views, &acts.final_h, step, *sampling, picks))
        })
    }
}

/// The picked rows of the normed hidden states `h` (`[N, H]`) through the output projection,
/// and a token chosen from each.
fn choose(
    c: &ModelConfig,
    v: &Views,
    h: &[f32],
    step: &Step,
    sampling: Sampling,
    p: &mut Picks,
) -> Vec<u32> {
    let (hs, vocab, m) = (c.hidden_size, c.vocab_size, step.picks.len());
    for (row, &t) in p.last_h.chunks_exact_mut(hs).zip(&step.picks) {
        row.copy_from_slice(&h[t * hs..(t + 1) * hs]);
    }
    let logits = &mut p.logits[..m * vocab];
    let output = Product {
        w: v.output(),
        y: logits,
        alpha: 1.0,
        accumulate: false,
    };
    dots(&p.last_h[..m * hs], m, hs, &mut [output]);
    let scaling = c.logits_scaling as f32;
    if scaling != 1.0 {
        logits.iter_mut().for_each(|l| *l /= scaling);
    }
    logits
        .par_chunks_mut(vocab)
        .zip(p.order[..m * vocab].par_chunks_mut(vocab))
        .zip(&step.draws)
        .map(|((row, order), &u)| pick(row, order, &sampling, u))
        .collect()
}

/// `y += alpha * scale * (x A^T) B^T` for the adapter `a`, its `x A^T` (`[n, r]`) into `xa`.
fn lora(a: &LoraView, x: &[f32], n: usize, k: usize, xa: &mut [f32], y: &mut [f32], alpha: f32) {
    let down = Product {
        w: a.a,
        y: xa,
        alpha: 1.0,
        accumulate: false,
    };
    dots(x, n, k, &mut [down]);
    let up = Product {
        w: a.b,
        y,
        alpha: alpha * a.scale,
        accumulate: true,
    };
    dots(xa, n, a.r, &mut [up]);
}

/// One step's operations: `n` tokens at their positions, the projections on [`dots`], keys and
/// values into the cache and attention over it. Buffers are sized for the largest step; each op
/// reads and writes the first `n` rows.
struct StepOps<'a> {
    config: &'a ModelConfig,
    views: &'a Views<'a>,
    step: &'a Step,
    n: usize,
    /// Rope tables `[n, head_dim]`.
    cos: &'a [f32],
    sin: &'a [f32],
    shape: &'a CacheShape,
    keys: &'a mut [f32],
    values: &'a mut [f32],
}

impl Forward for StepOps<'_> {
    type Buf = Aligned;

    fn config(&self) -> &ModelConfig {
        self.config
    }

    fn empty(&self) -> Aligned {
        Aligned::default()
    }

    fn embed(&mut self, x: &mut Aligned) -> Result<()> {
        let mult = self.config.embedding_multiplier as f32;
        self.views.embed_rows(&self.step.ids, mult, x);
        Ok(())
    }

    fn rms_norm(
        &mut self,
        w: Param,
        x: &Aligned,
        y: &mut Aligned,
        rstd: &mut Aligned,
    ) -> Result<()> {
        let (n, h) = (self.n, self.config.hidden_size);
        let eps = self.config.rms_norm_eps as f32;
        let w = self.views.weight(w);
        rms_norm_cpu_forward(&x[..n * h], w, eps, &mut y[..n * h], &mut rstd[..n]);
        Ok(())
    }

    /// `y (+)= alpha * (x W^T + scale * (x A^T) B^T)`, each product on [`dots`].
    fn linear(
        &mut self,
        l: usize,
        target: Target,
        x: &Aligned,
        xa: &mut Aligned,
        y: &mut Aligned,
        alpha: f32,
        accumulate: bool,
    ) -> Result<()> {
        let n = self.n;
        let p = self.views.layer(l, None);
        let w = p.weight(LayerParam::of(target));
        let (out, k) = target.shape(self.config);
        let (x, y) = (&x[..n * k], &mut y[..n * out]);
        let base = Product {
            w,
            y,
            alpha,
            accumulate,
        };
        dots(x, n, k, &mut [base]);
        if let Some(a) = &p.lora[target as usize] {
            lora(a, x, n, k, &mut xa[..n * a.r], y, alpha);
        }
        Ok(())
    }

    /// The base products in one [`dots`] call, which reads `x` once for all of them; then
    /// each adapter's.
    fn project<const P: usize>(
        &mut self,
        l: usize,
        x: &Aligned,
        outs: [Projection<'_, Aligned>; P],
    ) -> Result<()> {
        let n = self.n;
        let p = self.views.layer(l, None);
        let k = outs[0].target.shape(self.config).1;
        debug_assert!(outs.iter().all(|o| o.target.shape(self.config).1 == k));
        let x = &x[..n * k];
        let mut outs = outs;
        let mut products = outs.each_mut().map(|o| Product {
            w: p.weight(LayerParam::of(o.target)),
            y: &mut o.y[..n * o.target.shape(self.config).0],
            alpha: 1.0,
            accumulate: false,
        });
        dots(x, n, k, &mut products);
        for o in outs {
            if let Some(a) = &p.lora[o.target as usize] {
                let out = o.target.shape(self.config).0;
                lora(a, x, n, k, &mut o.xa[..n * a.r], &mut o.y[..n * out], 1.0);
            }
        }
        Ok(())
    }

    fn rope(&mut self, x: &mut Aligned, heads: usize) -> Result<()> {
        let d = self.config.head_dim;
        let layout = RopeLayout::TokenMajor { heads };
        rope_cpu(
            &mut x[..self.n * heads * d],
            d,
            layout,
            self.cos,
            self.sin,
            false,
        );
        Ok(())
    }

    /// The step's keys and values into layer `l` of the cache, then each query over its slot.
    fn attention(
        &mut self,
        l: usize,
        q: &Aligned,
        k: &Aligned,
        v: &Aligned,
        o: &mut Aligned,
        _: &mut Aligned,
    ) -> Result<()> {
        let c = self.config;
        let (n, d) = (self.n, c.head_dim);
        let (qw, kw) = (n * c.num_heads * d, n * c.num_kv_heads * d);
        let places = Places {
            slots: &self.step.slots,
            positions: &self.step.positions,
        };
        let attn = CacheAttention {
            heads: c.num_heads,
            window: c.sliding_window.unwrap_or(0),
            scale: c.attention_scale as f32,
        };
        let (keys, values) = (&mut *self.keys, &mut *self.values);
        cache_write_cpu(self.shape, l, places, &k[..kw], &v[..kw], keys, values);
        let out = &mut o[..qw];
        cache_attention_cpu(self.shape, l, &attn, places, &q[..qw], keys, values, out);
        Ok(())
    }

    fn swiglu(&mut self, gate: &Aligned, up: &Aligned, z: &mut Aligned) -> Result<()> {
        let len = self.n * self.config.intermediate_size;
        swiglu_cpu_forward(&gate[..len], &up[..len], &mut z[..len]);
        Ok(())
    }

    fn copy(&mut self, src: &Aligned, dst: &mut Aligned) -> Result<()> {
        let len = self.n * self.config.hidden_size;
        dst[..len].copy_from_slice(&src[..len]);
        Ok(())
    }
}
