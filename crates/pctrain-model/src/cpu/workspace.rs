//! The buffers of a CPU pass, named as llm.c names its activations, kept by the model and reused
//! from step to step: they grow to the largest batch seen and are never freed between steps.
//! `N = B*T` tokens; `H` hidden size, `Q = heads * head_dim`, `K = kv_heads * head_dim`, `I`
//! intermediate size, `r` an adapter's rank.

use crate::layers::loss::LossScratch;

/// What one decoder layer keeps from its forward for its backward.
#[derive(Default)]
pub(crate) struct LayerActs {
    /// `rms_norm(x)`, `[N, H]`, and each row's `1 / rms`, `[N]`.
    pub h1: Vec<f32>,
    pub rstd1: Vec<f32>,
    /// After rope, `[N, Q]` and `[N, K]` (token-major).
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    /// `[N, K]`
    pub v: Vec<f32>,
    /// Attention's output, `[N, Q]`, and each score row's log-sum-exp, `[B, heads, T]`.
    pub o: Vec<f32>,
    pub lse: Vec<f32>,
    /// `x + r * o_proj(o)`, `[N, H]`.
    pub x_mid: Vec<f32>,
    /// `rms_norm(x_mid)`, `[N, H]`, and its `1 / rms`, `[N]`.
    pub h2: Vec<f32>,
    pub rstd2: Vec<f32>,
    /// The MLP's projections, `[N, I]`.
    pub gate: Vec<f32>,
    pub up: Vec<f32>,
    /// Per LoRA target, `dropout(input) A^T`, `[N, r]`.
    pub xa: [Vec<f32>; 7],
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

impl LayerActs {
    /// Every buffer with the floats it holds for sizes `s`: the one list that `fit` allocates
    /// and the memory account counts.
    fn with_lengths(&mut self, s: &Sizes) -> Vec<(&mut Vec<f32>, usize)> {
        let mut out = vec![
            (&mut self.h1, s.n * s.h),
            (&mut self.rstd1, s.n),
            (&mut self.q, s.n * s.q),
            (&mut self.k, s.n * s.kv),
            (&mut self.v, s.n * s.kv),
            (&mut self.o, s.n * s.q),
            (&mut self.lse, s.lse),
            (&mut self.x_mid, s.n * s.h),
            (&mut self.h2, s.n * s.h),
            (&mut self.rstd2, s.n),
            (&mut self.gate, s.n * s.inter),
            (&mut self.up, s.n * s.inter),
        ];
        out.extend(self.xa.iter_mut().zip(s.ranks).map(|(xa, r)| (xa, s.n * r)));
        out
    }

    pub fn fit(&mut self, s: &Sizes) {
        for (v, len) in self.with_lengths(s) {
            fit(v, len);
        }
    }

    /// The floats one layer's activations hold for sizes `s`.
    pub fn floats(s: &Sizes) -> usize {
        LayerActs::default()
            .with_lengths(s)
            .iter()
            .map(|(_, len)| len)
            .sum()
    }
}

/// Buffers of the backward and the loss, shared by every layer.
#[derive(Default)]
pub(crate) struct Scratch {
    /// `silu(gate) * up`, `[N, I]` (not kept: recomputed in backward).
    pub z: Vec<f32>,
    /// The gradient flowing down the layers, `[N, H]`, and its value between a layer's blocks.
    pub grad: Vec<f32>,
    pub grad_mid: Vec<f32>,
    /// A normed input's gradient, `[N, H]`.
    pub dh: Vec<f32>,
    /// Gradients of attention's output `[N, Q]`, of q `[N, Q]`, k and v `[N, K]`.
    pub da: Vec<f32>,
    pub dq: Vec<f32>,
    pub dk: Vec<f32>,
    pub dv: Vec<f32>,
    /// Gradients of the MLP's gate, up and product, `[N, I]`.
    pub dgate: Vec<f32>,
    pub dup: Vec<f32>,
    pub dz: Vec<f32>,
    /// An adapter's `dy B`, `[N, r]`, and its dropped-out input or that input's gradient.
    pub lora_dy: Vec<f32>,
    pub lora_x: Vec<f32>,
}

impl Scratch {
    pub fn fit(&mut self, s: &Sizes, backward: bool) {
        fit(&mut self.z, s.n * s.inter);
        if !backward {
            return;
        }
        for (b, len) in [
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
        ] {
            fit(b, len);
        }
    }
}

/// Everything a CPU pass writes.
#[derive(Default)]
pub(crate) struct Workspace {
    /// Each layer's input, the last one the final norm's: `[N, H]` each (all `L + 1` in a
    /// training pass, two in turn when only the loss is wanted).
    pub inputs: Vec<Vec<f32>>,
    /// Every layer's activations, or one set reused by each layer in turn (recomputation, and
    /// passes without a backward).
    pub layers: Vec<LayerActs>,
    /// The final norm's output `[N, H]` and `1 / rms` `[N]`.
    pub final_h: Vec<f32>,
    pub final_rstd: Vec<f32>,
    /// Rope tables `[N, head_dim]`, and the first key each position may attend.
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub reach: Vec<u32>,
    pub scratch: Scratch,
    pub loss: LossScratch,
}

impl Workspace {
    /// Sizes every buffer for a pass over `layers` layers of `s`, keeping all layers'
    /// activations or one set.
    pub fn fit(&mut self, s: &Sizes, layers: usize, keep_all: bool, backward: bool) {
        // Buffers beyond what this pass needs are kept for the next training pass.
        let inputs = if backward { layers + 1 } else { 2 };
        if self.inputs.len() < inputs {
            self.inputs.resize_with(inputs, Vec::new);
        }
        for x in &mut self.inputs[..inputs] {
            fit(x, s.n * s.h);
        }
        let sets = if keep_all { layers } else { 1 };
        if self.layers.len() < sets {
            self.layers.resize_with(sets, LayerActs::default);
        }
        for a in &mut self.layers[..sets] {
            a.fit(s);
        }
        fit(&mut self.final_h, s.n * s.h);
        fit(&mut self.final_rstd, s.n);
        self.scratch.fit(s, backward);
    }
}

/// `v` with `len` elements (growing its allocation only when it has to; new elements are 0).
fn fit(v: &mut Vec<f32>, len: usize) {
    v.resize(len, 0.0);
}

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let floats: usize = self.inputs.iter().map(Vec::capacity).sum();
        write!(
            f,
            "Workspace {{ {} layers, {floats} input floats }}",
            self.layers.len()
        )
    }
}
