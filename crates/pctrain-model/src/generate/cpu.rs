//! Decoding on the CPU kernels: a step's tokens through every layer over buffers sized once, the
//! projections on [`dots`], attention over the cache, then the picks. The buffers and the cache
//! are allocated when decoding starts; a step allocates only its list of picked ids.

use rayon::prelude::*;

use super::schedule::Room;
use super::{pick, Backend, Sampling, Step};
use crate::cpu::aligned::Aligned;
use crate::cpu::dots::{dots, Product};
use crate::cpu::params::{LayerParams, Views};
use crate::error::Result;
use crate::layers::kv_cache::{
    cache_attention_cpu, cache_write_cpu, CacheAttention, CacheShape, Places,
};
use crate::layers::mlp::swiglu_cpu_forward;
use crate::layers::norm::rms_norm_cpu_forward;
use crate::layers::rope::{rope_cpu, rope_table_into, RopeLayout};
use crate::lora::Target;
use crate::model::Model;
use crate::params::LayerParam;

/// A step's activations, `N` tokens (`M` of them picked): `H` hidden, `Q`/`K` query and
/// key/value widths, `I` intermediate, `V` vocabulary, `r` the largest adapter rank.
struct Buffers {
    /// The residual stream `[N, H]`, a normed copy `[N, H]` and its `1 / rms` `[N]`.
    x: Aligned,
    h: Aligned,
    rstd: Aligned,
    /// `[N, Q]`, `[N, K]`, `[N, K]`, attention's output `[N, Q]`.
    q: Aligned,
    k: Aligned,
    v: Aligned,
    o: Aligned,
    /// `[N, I]` each.
    gate: Aligned,
    up: Aligned,
    z: Aligned,
    /// An adapter's `x A^T`, `[N, r]`.
    xa: Aligned,
    /// Rope tables `[N, head_dim]`.
    cos: Aligned,
    sin: Aligned,
    /// The picked tokens' hidden states `[M, H]` (then normed, `[M, H]`), logits `[M, V]` and
    /// the picks' scratch ids `[M, V]`.
    last: Aligned,
    last_h: Aligned,
    logits: Aligned,
    order: Vec<u32>,
}

/// The CPU backend: the model's weights as views, the cache and the step's buffers.
pub(crate) struct CpuDecoder<'m> {
    model: &'m Model,
    views: Views<'m>,
    sampling: Sampling,
    shape: CacheShape,
    keys: Aligned,
    values: Aligned,
    b: Buffers,
}

impl<'m> CpuDecoder<'m> {
    pub fn new(model: &'m Model, room: Room, sampling: Sampling) -> Result<Self> {
        let c = &model.config;
        let shape = CacheShape::of(c, room.slots, room.positions);
        let (n, m) = (room.tokens, room.slots);
        let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let rank = model.lora.as_ref().map_or(0, |a| a.config.r);
        let f = Aligned::zeros;
        let b = Buffers {
            x: f(n * c.hidden_size)?,
            h: f(n * c.hidden_size)?,
            rstd: f(n)?,
            q: f(n * q)?,
            k: f(n * kv)?,
            v: f(n * kv)?,
            o: f(n * q)?,
            gate: f(n * c.intermediate_size)?,
            up: f(n * c.intermediate_size)?,
            z: f(n * c.intermediate_size)?,
            xa: f(n * rank)?,
            cos: f(n * c.head_dim)?,
            sin: f(n * c.head_dim)?,
            last: f(m * c.hidden_size)?,
            last_h: f(m * c.hidden_size)?,
            logits: f(m * c.vocab_size)?,
            order: vec![0u32; m * c.vocab_size],
        };
        Ok(CpuDecoder {
            model,
            views: model.views()?,
            sampling,
            shape,
            // Zeroed, so a cache sized for the longest answer costs only what is used.
            keys: f(shape.len())?,
            values: f(shape.len())?,
            b,
        })
    }
}

/// `x` (`[n, k]`) through the projections `outs` (target, output) of one layer: each output
/// `y (+)= alpha * (x W^T + scale * (x A^T) B^T)`, the adapter's `x A^T` in `xa`.
#[allow(clippy::too_many_arguments)]
fn project<const P: usize>(
    p: &LayerParams,
    x: &[f32],
    n: usize,
    k: usize,
    outs: [(Target, &mut [f32]); P],
    alpha: f32,
    accumulate: bool,
    xa: &mut [f32],
) {
    let targets: [Target; P] = std::array::from_fn(|i| outs[i].0);
    let mut products = outs.map(|(t, y)| Product {
        w: p.weight(LayerParam::of(t)),
        y,
        alpha,
        accumulate,
    });
    dots(x, n, k, &mut products);
    for (t, product) in targets.into_iter().zip(products) {
        let Some(l) = &p.lora[t as usize] else {
            continue;
        };
        let xa = &mut xa[..n * l.r];
        let down = Product {
            w: l.a,
            y: xa,
            alpha: 1.0,
            accumulate: false,
        };
        dots(x, n, k, &mut [down]);
        let up = Product {
            w: l.b,
            y: product.y,
            alpha: alpha * l.scale,
            accumulate: true,
        };
        dots(xa, n, l.r, &mut [up]);
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
            b,
        } = self;
        let (model, views) = (*model, &*views);
        // On a thread of the pool, so that the step's many parallel loops start there rather
        // than each being handed over from this thread and waited for.
        Ok(rayon::scope(|_| {
            let cache = (&*shape, &mut **keys, &mut **values);
            forward(model, views, *sampling, cache, b, step)
        }))
    }
}

/// One step: the tokens of `step` through every layer, their keys and values into the cache,
/// and the picks.
fn forward(
    model: &Model,
    v: &Views,
    sampling: Sampling,
    (shape, keys, values): (&CacheShape, &mut [f32], &mut [f32]),
    b: &mut Buffers,
    step: &Step,
) -> Vec<u32> {
    let c = &model.config;
    let (hs, d, n) = (c.hidden_size, c.head_dim, step.ids.len());
    let (qw, kw, iw) = (c.num_heads * d, c.num_kv_heads * d, c.intermediate_size);
    let (eps, r) = (c.rms_norm_eps as f32, c.residual_multiplier as f32);
    let mult = c.embedding_multiplier as f32;
    for (x, &id) in b.x.chunks_exact_mut(hs).zip(&step.ids) {
        let row = &v.embed[id as usize * hs..(id as usize + 1) * hs];
        for (x, e) in x.iter_mut().zip(row) {
            *x = e * mult;
        }
    }
    rope_table_into(
        model.inv_freq(),
        &step.positions,
        &mut b.cos[..n * d],
        &mut b.sin[..n * d],
    );
    let places = Places {
        slots: &step.slots,
        positions: &step.positions,
    };
    let attn = CacheAttention {
        heads: c.num_heads,
        window: c.sliding_window.unwrap_or(0),
        scale: c.attention_scale as f32,
    };
    let x = &mut b.x[..n * hs];
    let h = &mut b.h[..n * hs];
    let rstd = &mut b.rstd[..n];
    let (q, k, vv, o) = (
        &mut b.q[..n * qw],
        &mut b.k[..n * kw],
        &mut b.v[..n * kw],
        &mut b.o[..n * qw],
    );
    let (gate, up, z) = (
        &mut b.gate[..n * iw],
        &mut b.up[..n * iw],
        &mut b.z[..n * iw],
    );
    let (cos, sin) = (&b.cos[..n * d], &b.sin[..n * d]);
    for l in 0..c.num_layers {
        let p = v.layer(l, None);
        rms_norm_cpu_forward(x, p.weight(LayerParam::InputNorm), eps, h, rstd);
        let qkv = [
            (Target::Q, &mut *q),
            (Target::K, &mut *k),
            (Target::V, &mut *vv),
        ];
        project(&p, h, n, hs, qkv, 1.0, false, &mut b.xa);
        rope_cpu(
            q,
            d,
            RopeLayout::TokenMajor { heads: c.num_heads },
            cos,
            sin,
            false,
        );
        let k_rows = RopeLayout::TokenMajor {
            heads: c.num_kv_heads,
        };
        rope_cpu(k, d, k_rows, cos, sin, false);
        cache_write_cpu(shape, l, places, k, vv, keys, values);
        cache_attention_cpu(shape, l, &attn, places, q, keys, values, o);
        project(&p, o, n, qw, [(Target::O, &mut *x)], r, true, &mut b.xa);
        rms_norm_cpu_forward(x, p.weight(LayerParam::PostNorm), eps, h, rstd);
        let mlp = [(Target::Gate, &mut *gate), (Target::Up, &mut *up)];
        project(&p, h, n, hs, mlp, 1.0, false, &mut b.xa);
        swiglu_cpu_forward(gate, up, z);
        project(&p, z, n, iw, [(Target::Down, &mut *x)], r, true, &mut b.xa);
    }

    let m = step.picks.len();
    let vocab = c.vocab_size;
    for (row, &t) in b.last.chunks_exact_mut(hs).zip(&step.picks) {
        row.copy_from_slice(&x[t * hs..(t + 1) * hs]);
    }
    let (last, last_h) = (&b.last[..m * hs], &mut b.last_h[..m * hs]);
    rms_norm_cpu_forward(last, &v.norm, eps, last_h, &mut b.rstd[..m]);
    let logits = &mut b.logits[..m * vocab];
    let output = Product {
        w: v.output(),
        y: logits,
        alpha: 1.0,
        accumulate: false,
    };
    dots(last_h, m, hs, &mut [output]);
    let scaling = c.logits_scaling as f32;
    if scaling != 1.0 {
        logits.iter_mut().for_each(|l| *l /= scaling);
    }
    logits
        .par_chunks_mut(vocab)
        .zip(b.order[..m * vocab].par_chunks_mut(vocab))
        .zip(&step.draws)
        .map(|((row, order), &u)| pick(row, order, &sampling, u))
        .collect()
}
