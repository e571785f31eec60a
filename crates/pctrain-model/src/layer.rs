//! One decoder layer, forward and backward side by side, written once over a backend
//! ([`Forward`], [`Backward`]):
//! `x_mid = x + r * o_proj(attention(rope(q(norm(x))), rope(k(..)), v(..)))`,
//! `out = x_mid + r * down(silu(gate(norm(x_mid))) * up(norm(x_mid)))`, with `r` Granite's residual
//! multiplier (1 elsewhere). Activations are named as llm.c names them and listed once
//! ([`LayerActs::with_lengths`]): the CPU workspace allocates by the list and the memory account
//! sums it. `N = B*T` tokens; `H` hidden size, `Q = heads * head_dim`, `K = kv_heads *
//! head_dim`, `I` intermediate size, `r` an adapter's rank.

use crate::backend::{AttentionSaved, Backward, Forward, Projection};
use crate::error::Result;
use crate::lora::Target;
use crate::model::Model;
use crate::params::{LayerParam, LayerPlaced, Param};

/// What one decoder layer keeps from its forward for its backward.
#[derive(Default)]
pub(crate) struct LayerActs<B> {
    /// `rms_norm(x)`, `[N, H]`, and each row's `1 / rms`, `[N]`.
    pub h1: B,
    pub rstd1: B,
    /// After rope, `[N, Q]` and `[N, K]`.
    pub q: B,
    pub k: B,
    /// `[N, K]`
    pub v: B,
    /// Attention's output, `[N, Q]`, and each score row's log-sum-exp, `[B, heads, T]` (f32).
    pub o: B,
    pub lse: B,
    /// `x + r * o_proj(o)`, `[N, H]`.
    pub x_mid: B,
    /// `rms_norm(x_mid)`, `[N, H]`, and its `1 / rms`, `[N]`.
    pub h2: B,
    pub rstd2: B,
    /// The MLP's projections, `[N, I]`.
    pub gate: B,
    pub up: B,
    /// Per LoRA target, `dropout(input) A^T`, `[N, r]` (in the adapter's dtype).
    pub xa: [B; 7],
}

/// What an activation holds, which says its element type on a backend: the model's dtype, f32
/// statistics, or the adapters' dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ActKind {
    Model,
    /// `1 / rms` of a norm's rows.
    NormStat,
    /// Attention's log-sum-exps.
    AttentionStat,
    Adapter,
}

/// The sizes a pass's buffers take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sizes {
    pub n: usize,
    pub h: usize,
    pub q: usize,
    pub kv: usize,
    pub inter: usize,
    /// `B * heads * T`
    pub lse: usize,
    /// Each target's rank (0: no adapter).
    pub ranks: [usize; 7],
}

impl<B> LayerActs<B> {
    /// Every buffer with what it holds and its length (elements) for sizes `s`: the one list
    /// that the CPU workspace allocates and the memory account counts.
    pub fn with_lengths(&mut self, s: &Sizes) -> Vec<(&mut B, ActKind, usize)> {
        use ActKind::*;
        let mut out = vec![
            (&mut self.h1, Model, s.n * s.h),
            (&mut self.rstd1, NormStat, s.n),
            (&mut self.q, Model, s.n * s.q),
            (&mut self.k, Model, s.n * s.kv),
            (&mut self.v, Model, s.n * s.kv),
            (&mut self.o, Model, s.n * s.q),
            (&mut self.lse, AttentionStat, s.lse),
            (&mut self.x_mid, Model, s.n * s.h),
            (&mut self.h2, Model, s.n * s.h),
            (&mut self.rstd2, NormStat, s.n),
            (&mut self.gate, Model, s.n * s.inter),
            (&mut self.up, Model, s.n * s.inter),
        ];
        out.extend(
            self.xa
                .iter_mut()
                .zip(s.ranks)
                .map(|(xa, r)| (xa, Adapter, s.n * r)),
        );
        out
    }

    /// A set whose every buffer is `empty()`.
    pub fn new(empty: impl Fn() -> B) -> Self {
        LayerActs {
            h1: empty(),
            rstd1: empty(),
            q: empty(),
            k: empty(),
            v: empty(),
            o: empty(),
            lse: empty(),
            x_mid: empty(),
            h2: empty(),
            rstd2: empty(),
            gate: empty(),
            up: empty(),
            xa: std::array::from_fn(|_| empty()),
        }
    }
}

/// Buffers of a layer's backward (and `z` of its forward), shared by every layer in turn.
#[derive(Default)]
pub(crate) struct Scratch<B> {
    /// `silu(gate) * up`, `[N, I]` (not kept: recomputed in backward).
    pub z: B,
    /// The gradient flowing down the layers, `[N, H]`, and its value between a layer's blocks.
    pub grad: B,
    pub grad_mid: B,
    /// A normed input's gradient, `[N, H]`.
    pub dh: B,
    /// Gradients of attention's output `[N, Q]`, of q `[N, Q]`, k and v `[N, K]`.
    pub da: B,
    pub dq: B,
    pub dk: B,
    pub dv: B,
    /// Gradients of the MLP's gate, up and product, `[N, I]`.
    pub dgate: B,
    pub dup: B,
    pub dz: B,
}

impl<B> Scratch<B> {
    /// The buffers with their lengths for sizes `s`: `z` alone for a pass without a backward.
    pub fn with_lengths(&mut self, s: &Sizes, backward: bool) -> Vec<(&mut B, usize)> {
        let mut out = vec![(&mut self.z, s.n * s.inter)];
        if backward {
            out.extend([
                (&mut self.grad, s.n * s.h),
                (&mut self.grad_mid, s.n * s.h),
                (&mut self.dh, s.n * s.h),
                (&mut self.da, s.n * s.q),
                (&mut self.dq, s.n * s.q),
                (&mut self.dk, s.n * s.kv),
                (&mut self.dv, s.n * s.kv),
                (&mut self.dgate, s.n * s.inter),
                (&mut self.dup, s.n * s.inter),
                (&mut self.dz, s.n * s.inter),
            ]);
        }
        out
    }

    pub fn new(empty: impl Fn() -> B) -> Self {
        Scratch {
            z: empty(),
            grad: empty(),
            grad_mid: empty(),
            dh: empty(),
            da: empty(),
            dq: empty(),
            dk: empty(),
            dv: empty(),
            dgate: empty(),
            dup: empty(),
            dz: empty(),
        }
    }
}

impl Model {
    /// The sizes of a pass's buffers for a batch of `rows x seq_len`.
    pub(crate) fn sizes(&self, rows: usize, seq_len: usize) -> Sizes {
        let c = &self.config;
        let n = rows * seq_len;
        let mut ranks = [0; 7];
        if let Some(a) = &self.lora {
            for t in &a.config.targets {
                ranks[*t as usize] = a.config.r;
            }
        }
        Sizes {
            n,
            h: c.hidden_size,
            q: c.num_heads * c.head_dim,
            kv: c.num_kv_heads * c.head_dim,
            inter: c.intermediate_size,
            lse: n * c.num_heads,
            ranks,
        }
    }
}

/// Forward of layer `l` from `x` (`[N, H]`): fills `a` and writes the output into `out`.
pub(crate) fn layer_forward<K: Forward>(
    k: &mut K,
    l: usize,
    x: &K::Buf,
    a: &mut LayerActs<K::Buf>,
    s: &mut Scratch<K::Buf>,
    out: &mut K::Buf,
) -> Result<()> {
    let c = k.config();
    let (heads, kv_heads) = (c.num_heads, c.num_kv_heads);
    let r = c.residual_multiplier as f32;
    let norm = |w| Param::Layer(l, w);
    let [xq, xk, xv, xo, xg, xu, xdn] = &mut a.xa;

    // Attention block: x_mid = x + r * o_proj(attention(rope(q), rope(k), v)).
    k.rms_norm(norm(LayerParam::InputNorm), x, &mut a.h1, &mut a.rstd1)?;
    let qkv = [
        Projection::new(Target::Q, xq, &mut a.q),
        Projection::new(Target::K, xk, &mut a.k),
        Projection::new(Target::V, xv, &mut a.v),
    ];
    k.project(l, &a.h1, qkv)?;
    k.rope(&mut a.q, heads)?;
    k.rope(&mut a.k, kv_heads)?;
    k.attention(l, &a.q, &a.k, &a.v, &mut a.o, &mut a.lse)?;
    k.copy(x, &mut a.x_mid)?;
    k.linear(l, Target::O, &a.o, xo, &mut a.x_mid, r, true)?;

    // MLP block: out = x_mid + r * down(swiglu(gate(h2), up(h2))).
    k.rms_norm(
        norm(LayerParam::PostNorm),
        &a.x_mid,
        &mut a.h2,
        &mut a.rstd2,
    )?;
    let gate_up = [
        Projection::new(Target::Gate, xg, &mut a.gate),
        Projection::new(Target::Up, xu, &mut a.up),
    ];
    k.project(l, &a.h2, gate_up)?;
    k.swiglu(&a.gate, &a.up, &mut s.z)?;
    k.copy(&a.x_mid, out)?;
    k.linear(l, Target::Down, &s.z, xdn, out, r, true)
}

/// Backward of layer `l` whose input was `x`: `s.grad` holds the output's gradient and is
/// replaced by the input's; the parameters' gradients are added to `g`.
pub(crate) fn layer_backward<K: Backward>(
    k: &mut K,
    l: usize,
    x: &K::Buf,
    a: &LayerActs<K::Buf>,
    s: &mut Scratch<K::Buf>,
    g: &mut LayerPlaced<K::Grad>,
) -> Result<()> {
    let c = k.config();
    let (heads, kv_heads) = (c.num_heads, c.num_kv_heads);
    let r = c.residual_multiplier as f32;
    let norm = |w| Param::Layer(l, w);
    let [xq, xk, xv, xo, xg, xu, xdn] = &a.xa;

    // MLP block: out = x_mid + r * down(swiglu(gate(h2), up(h2))).
    k.swiglu(&a.gate, &a.up, &mut s.z)?;
    k.linear_backward(l, Target::Down, &s.grad, &s.z, xdn, r, &mut s.dz, false, g)?;
    k.swiglu_backward(&s.dz, &a.gate, &a.up, &mut s.dgate, &mut s.dup)?;
    k.linear_backward(
        l,
        Target::Gate,
        &s.dgate,
        &a.h2,
        xg,
        1.0,
        &mut s.dh,
        false,
        g,
    )?;
    k.linear_backward(l, Target::Up, &s.dup, &a.h2, xu, 1.0, &mut s.dh, true, g)?;
    k.copy(&s.grad, &mut s.grad_mid)?;
    let dpost = g.weight(LayerParam::PostNorm);
    let post = norm(LayerParam::PostNorm);
    k.rms_norm_backward(
        post,
        &s.dh,
        &a.x_mid,
        &a.rstd2,
        &mut s.grad_mid,
        true,
        dpost,
    )?;

    // Attention block: x_mid = x + r * o_proj(attention(rope(q), rope(k), v)).
    k.linear_backward(l, Target::O, &s.grad_mid, &a.o, xo, r, &mut s.da, false, g)?;
    let saved = AttentionSaved {
        q: &a.q,
        k: &a.k,
        v: &a.v,
        o: &a.o,
        lse: &a.lse,
    };
    k.attention_backward(saved, &s.da, &mut s.dq, &mut s.dk, &mut s.dv)?;
    k.rope_backward(&mut s.dq, heads)?;
    k.rope_backward(&mut s.dk, kv_heads)?;
    k.linear_backward(l, Target::Q, &s.dq, &a.h1, xq, 1.0, &mut s.dh, false, g)?;
    k.linear_backward(l, Target::K, &s.dk, &a.h1, xk, 1.0, &mut s.dh, true, g)?;
    k.linear_backward(l, Target::V, &s.dv, &a.h1, xv, 1.0, &mut s.dh, true, g)?;
    k.copy(&s.grad_mid, &mut s.grad)?;
    let dinput = g.weight(LayerParam::InputNorm);
    let input = norm(LayerParam::InputNorm);
    k.rms_norm_backward(input, &s.dh, x, &a.rstd1, &mut s.grad, true, dinput)
}
