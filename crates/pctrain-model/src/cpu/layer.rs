//! One decoder layer on the CPU kernels, forward and backward side by side, over the buffers of a
//! [`Workspace`](super::workspace::Workspace): the same layer as [`crate::layer`], without a
//! tensor allocated per op and with q, k, v left token-major as the projections write them.
//! `x_mid = x + r * o_proj(attention(rope(q(norm(x))), rope(k(..)), v(..)))`,
//! `out = x_mid + r * down(silu(gate(norm(x_mid))) * up(norm(x_mid)))`.

use crate::config::ModelConfig;
use crate::layers::attention::{
    attention_cpu_backward, attention_cpu_forward, AttnInputs, AttnShape,
};
use crate::layers::linear::{
    linear_cpu_backward, linear_cpu_forward, LoraGrads, LoraSaved, LoraView,
};
use crate::layers::mlp::{swiglu_cpu_backward, swiglu_cpu_forward};
use crate::layers::norm::{rms_norm_cpu_backward, rms_norm_cpu_forward};
use crate::layers::rope::{rope_cpu, RopeLayout};
use crate::lora::Target;
use crate::params::{LayerParam, LayerPlaced};

use super::workspace::{LayerActs, Scratch};

/// What every layer of a pass shares: `n` tokens, attention's shape (token-major), the rope
/// tables `[N, head_dim]`, segment ids and the first key each position may attend.
pub(crate) struct Pass<'a> {
    pub config: &'a ModelConfig,
    pub n: usize,
    pub attn: AttnShape,
    pub cos: &'a [f32],
    pub sin: &'a [f32],
    pub seg: &'a [u32],
    pub reach: &'a [u32],
}

/// One layer's weights (`[out, in]` projections, `[H]` norms) and adapters, as f32 slices.
pub(crate) struct LayerParams<'a> {
    /// By [`LayerParam`].
    pub w: [&'a [f32]; 9],
    pub lora: [Option<LoraView<'a>>; 7],
}

impl LayerParams<'_> {
    pub fn weight(&self, w: LayerParam) -> &[f32] {
        self.w[w as usize]
    }
}

/// Where one layer's gradients are added: each adapter's `(dA, dB)`, and with full fine-tuning
/// every weight's.
pub(crate) type LayerSlots<'a> = LayerPlaced<&'a mut [f32]>;

impl Pass<'_> {
    /// `y (+)= alpha * target(x)`, keeping the adapter's `dropout(x) A^T` in `xa`.
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &self,
        p: &LayerParams,
        target: Target,
        x: &[f32],
        xa: &mut [f32],
        xd: &mut Vec<f32>,
        y: &mut [f32],
        alpha: f32,
        accumulate: bool,
    ) {
        let lora = p.lora[target as usize]
            .as_ref()
            .map(|l| (l, LoraSaved { xa, xd }));
        linear_cpu_forward(
            self.n,
            x,
            p.weight(LayerParam::of(target)),
            lora,
            y,
            alpha,
            accumulate,
        );
    }

    /// Forward of one layer from `x` (`[N, H]`): fills `a` and writes the output into `out`.
    pub fn layer_forward(
        &self,
        p: &LayerParams,
        x: &[f32],
        a: &mut LayerActs,
        s: &mut Scratch,
        out: &mut [f32],
    ) {
        let c = self.config;
        let (eps, r) = (c.rms_norm_eps as f32, c.residual_multiplier as f32);
        let xd = &mut s.lora_x;
        rms_norm_cpu_forward(
            x,
            p.weight(LayerParam::InputNorm),
            eps,
            &mut a.h1,
            &mut a.rstd1,
        );
        let [xq, xk, xv, xo, xg, xu, xdn] = &mut a.xa;
        self.linear(p, Target::Q, &a.h1, xq, xd, &mut a.q, 1.0, false);
        self.linear(p, Target::K, &a.h1, xk, xd, &mut a.k, 1.0, false);
        self.linear(p, Target::V, &a.h1, xv, xd, &mut a.v, 1.0, false);
        let d = c.head_dim;
        let q_rows = RopeLayout::TokenMajor { heads: c.num_heads };
        let k_rows = RopeLayout::TokenMajor {
            heads: c.num_kv_heads,
        };
        rope_cpu(&mut a.q, d, q_rows, self.cos, self.sin, false);
        rope_cpu(&mut a.k, d, k_rows, self.cos, self.sin, false);
        let scale = c.attention_scale as f32;
        attention_cpu_forward(
            &self.attn, &a.q, &a.k, &a.v, self.seg, self.reach, scale, &mut a.o, &mut a.lse,
        );
        a.x_mid.copy_from_slice(x);
        self.linear(p, Target::O, &a.o, xo, xd, &mut a.x_mid, r, true);
        rms_norm_cpu_forward(
            &a.x_mid,
            p.weight(LayerParam::PostNorm),
            eps,
            &mut a.h2,
            &mut a.rstd2,
        );
        self.linear(p, Target::Gate, &a.h2, xg, xd, &mut a.gate, 1.0, false);
        self.linear(p, Target::Up, &a.h2, xu, xd, &mut a.up, 1.0, false);
        swiglu_cpu_forward(&a.gate, &a.up, &mut s.z);
        out.copy_from_slice(&a.x_mid);
        self.linear(p, Target::Down, &s.z, xdn, xd, out, r, true);
    }

    /// The backward of `target` for the output gradient `alpha * dy`, from input `x`: adds to the
    /// adapter's and (full) the weight's gradients, and writes `dx` (or adds it, `accumulate`).
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &self,
        p: &LayerParams,
        g: &mut LayerSlots,
        target: Target,
        dy: &[f32],
        x: &[f32],
        xa: &[f32],
        s_dy: &mut Vec<f32>,
        s_x: &mut Vec<f32>,
        alpha: f32,
        dx: &mut [f32],
        accumulate: bool,
    ) {
        let lora = match (&p.lora[target as usize], &mut g.lora[target as usize]) {
            (Some(l), Some((da, db))) => Some((
                l,
                LoraGrads {
                    xa,
                    da,
                    db,
                    dyb: s_dy,
                    xd: s_x,
                },
            )),
            _ => None,
        };
        let dw = g.weights[LayerParam::of(target) as usize].as_deref_mut();
        linear_cpu_backward(
            self.n,
            dy,
            x,
            p.weight(LayerParam::of(target)),
            alpha,
            lora,
            dw,
            Some(dx),
            accumulate,
        );
    }

    /// Backward of one layer whose input was `x`: `grad` holds the output's gradient and is
    /// replaced by the input's; the parameters' gradients are added to `g`.
    pub fn layer_backward(
        &self,
        p: &LayerParams,
        x: &[f32],
        a: &LayerActs,
        s: &mut Scratch,
        grad: &mut [f32],
        g: &mut LayerSlots,
    ) {
        let c = self.config;
        let r = c.residual_multiplier as f32;
        let (sdy, sx) = (&mut s.lora_dy, &mut s.lora_x);
        let [xq, xk, xv, xo, xg, xu, xdn] = &a.xa;

        // MLP block: out = x_mid + r * down(swiglu(gate(h2), up(h2))).
        swiglu_cpu_forward(&a.gate, &a.up, &mut s.z);
        self.linear_backward(
            p,
            g,
            Target::Down,
            grad,
            &s.z,
            xdn,
            sdy,
            sx,
            r,
            &mut s.dz,
            false,
        );
        swiglu_cpu_backward(&s.dz, &a.gate, &a.up, &mut s.dgate, &mut s.dup);
        self.linear_backward(
            p,
            g,
            Target::Gate,
            &s.dgate,
            &a.h2,
            xg,
            sdy,
            sx,
            1.0,
            &mut s.dh,
            false,
        );
        self.linear_backward(
            p,
            g,
            Target::Up,
            &s.dup,
            &a.h2,
            xu,
            sdy,
            sx,
            1.0,
            &mut s.dh,
            true,
        );
        s.grad_mid.copy_from_slice(grad);
        let dpost = g.weight(LayerParam::PostNorm).map(|g| &mut **g);
        rms_norm_cpu_backward(
            &s.dh,
            &a.x_mid,
            &a.rstd2,
            p.weight(LayerParam::PostNorm),
            &mut s.grad_mid,
            true,
            dpost,
        );

        // Attention block: x_mid = x + r * o_proj(attention(rope(q), rope(k), v)).
        self.linear_backward(
            p,
            g,
            Target::O,
            &s.grad_mid,
            &a.o,
            xo,
            sdy,
            sx,
            r,
            &mut s.da,
            false,
        );
        let inputs = AttnInputs {
            q: &a.q,
            k: &a.k,
            v: &a.v,
            out: &a.o,
            lse: &a.lse,
            dout: &s.da,
            seg: self.seg,
            reach: self.reach,
        };
        let scale = c.attention_scale as f32;
        attention_cpu_backward(&self.attn, inputs, scale, &mut s.dq, &mut s.dk, &mut s.dv);
        let d = c.head_dim;
        let q_rows = RopeLayout::TokenMajor { heads: c.num_heads };
        let k_rows = RopeLayout::TokenMajor {
            heads: c.num_kv_heads,
        };
        rope_cpu(&mut s.dq, d, q_rows, self.cos, self.sin, true);
        rope_cpu(&mut s.dk, d, k_rows, self.cos, self.sin, true);
        self.linear_backward(
            p,
            g,
            Target::Q,
            &s.dq,
            &a.h1,
            xq,
            sdy,
            sx,
            1.0,
            &mut s.dh,
            false,
        );
        self.linear_backward(
            p,
            g,
            Target::K,
            &s.dk,
            &a.h1,
            xk,
            sdy,
            sx,
            1.0,
            &mut s.dh,
            true,
        );
        self.linear_backward(
            p,
            g,
            Target::V,
            &s.dv,
            &a.h1,
            xv,
            sdy,
            sx,
            1.0,
            &mut s.dh,
            true,
        );
        grad.copy_from_slice(&s.grad_mid);
        let dinput = g.weight(LayerParam::InputNorm).map(|g| &mut **g);
        rms_norm_cpu_backward(
            &s.dh,
            x,
            &a.rstd1,
            p.weight(LayerParam::InputNorm),
            grad,
            true,
            dinput,
        );
    }
}
