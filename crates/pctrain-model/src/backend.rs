//! The line between the decoder's composition and what it runs on. The layer
//! ([`crate::layer`]) and the pass ([`crate::pass`]) are written once over [`Forward`] and
//! [`Backward`]: a backend's buffers, the operations a forward is made of, and their backwards.
//! Training backends implement both: the CPU kernels over f32 buffers reused from step to step
//! ([`crate::cpu::backend`]), and candle tensors ([`crate::tensor`]), whose layer entries run the
//! CUDA kernels on a GPU and the CPU kernels for narrower dtypes. The decoders of
//! [`crate::generate`] implement [`Forward`], with attention over their key/value cache.
//!
//! The line is drawn at the layer functions, as llm.c draws it between `train_gpt2.c` and
//! `train_gpt2.cu` (each op a function over named buffers, written into rather than returned),
//! not at tensor primitives as burn draws it: a layer's forward and backward here are a few
//! fused kernels, and a primitive-level trait would give the composition back to a graph.
//!
//! Buffers are written in place: an op's output argument is overwritten, or added to where it
//! says `accumulate`. An activation is `[N, width]`, token-major (`N = B * T`), except the roped q
//! and k and their gradients, which lie as the backend's attention wants them (only
//! [`Forward::attention`], its backward and [`Forward::rope`] read them).

use crate::config::ModelConfig;
use crate::error::Result;
use crate::layers::loss::LossSum;
use crate::lora::Target;
use crate::params::{LayerPlaced, Param, Placed};

/// A forward pass's operations on one backend: what training, evaluation and decoding share.
pub(crate) trait Forward {
    /// An activation buffer.
    type Buf;

    fn config(&self) -> &ModelConfig;

    /// A buffer with nothing in it yet (an op's output sizes it).
    fn empty(&self) -> Self::Buf;

    /// `x` = the tokens' embeddings times Granite's multiplier, `[N, H]`.
    fn embed(&mut self, x: &mut Self::Buf) -> Result<()>;

    /// `y = rms_norm(x) * w` for the norm weight `w` (a layer's or the final one), keeping
    /// each row's `1 / rms` in `rstd` where the backend's backward reads it.
    fn rms_norm(
        &mut self,
        w: Param,
        x: &Self::Buf,
        y: &mut Self::Buf,
        rstd: &mut Self::Buf,
    ) -> Result<()>;

    /// `y (+)= alpha * target(x)` for layer `l`'s projection `target` with its adapter (and the
    /// pass's dropout), keeping the adapter's `dropout(x) A^T` in `xa`.
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &mut self,
        l: usize,
        target: Target,
        x: &Self::Buf,
        xa: &mut Self::Buf,
        y: &mut Self::Buf,
        alpha: f32,
        accumulate: bool,
    ) -> Result<()>;

    /// `y = target(x)` for several of layer `l`'s projections of one input (q, k and v; gate
    /// and up): one [`Forward::linear`] each, unless the backend shares the reads of `x`.
    fn project<const P: usize>(
        &mut self,
        l: usize,
        x: &Self::Buf,
        outs: [Projection<'_, Self::Buf>; P],
    ) -> Result<()> {
        for p in outs {
            self.linear(l, p.target, x, p.xa, p.y, 1.0, false)?;
        }
        Ok(())
    }

    /// Rotates `x` (`heads` heads) by the tokens' positions in place.
    fn rope(&mut self, x: &mut Self::Buf, heads: usize) -> Result<()>;

    /// Layer `l`'s masked attention of roped `q`, `k` over `v`: the output `o` `[N, heads * d]`
    /// and each score row's log-sum-exp `lse` for the backward. A decoder writes its keys and
    /// values into its cache first, attends over the cache, and leaves `lse` alone.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &mut self,
        l: usize,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        o: &mut Self::Buf,
        lse: &mut Self::Buf,
    ) -> Result<()>;

    /// `z = silu(gate) * up`.
    fn swiglu(&mut self, gate: &Self::Buf, up: &Self::Buf, z: &mut Self::Buf) -> Result<()>;

    /// `dst = src`.
    fn copy(&mut self, src: &Self::Buf, dst: &mut Self::Buf) -> Result<()>;
}

/// A training pass's operations besides the forward's: the loss and each op's backward.
pub(crate) trait Backward: Forward {
    /// Where one trainable tensor's gradient is added.
    type Grad;

    /// Adds the embedding's gradient for the lookup's output gradient `dx` (before the
    /// multiplier), when the embedding trains.
    fn embed_backward(&mut self, dx: &Self::Buf, g: &mut Placed<Self::Grad>) -> Result<()>;

    /// `dx (+)= d rms_norm / dx`; adds `w`'s gradient to `dw` when given.
    #[allow(clippy::too_many_arguments)]
    fn rms_norm_backward(
        &mut self,
        w: Param,
        dy: &Self::Buf,
        x: &Self::Buf,
        rstd: &Self::Buf,
        dx: &mut Self::Buf,
        accumulate: bool,
        dw: Option<&mut Self::Grad>,
    ) -> Result<()>;

    /// The backward of [`Forward::linear`] for the output gradient `alpha * dy`: `dx (+)=`, and
    /// the adapter's (LoRA) or the weight's (full) gradients added to `g`.
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &mut self,
        l: usize,
        target: Target,
        dy: &Self::Buf,
        x: &Self::Buf,
        xa: &Self::Buf,
        alpha: f32,
        dx: &mut Self::Buf,
        accumulate: bool,
        g: &mut LayerPlaced<Self::Grad>,
    ) -> Result<()>;

    /// The transpose of [`Forward::rope`], turning a roped gradient back into a token-major one.
    fn rope_backward(&mut self, x: &mut Self::Buf, heads: usize) -> Result<()>;

    /// The backward of [`Forward::attention`] for `do_`: `dq`, `dk` (roped, for
    /// [`Backward::rope_backward`]) and `dv` (token-major).
    fn attention_backward(
        &mut self,
        saved: AttentionSaved<'_, Self::Buf>,
        do_: &Self::Buf,
        dq: &mut Self::Buf,
        dk: &mut Self::Buf,
        dv: &mut Self::Buf,
    ) -> Result<()>;

    /// The backward of [`Forward::swiglu`].
    fn swiglu_backward(
        &mut self,
        dz: &Self::Buf,
        gate: &Self::Buf,
        up: &Self::Buf,
        dgate: &mut Self::Buf,
        dup: &mut Self::Buf,
    ) -> Result<()>;

    /// The batch's summed next-token loss from the final hidden states `h`; with `grads`, its
    /// gradient times `grads.scale` written into `grads.dh`, and the output projection's added
    /// to `grads.g` when it trains.
    fn loss(&mut self, h: &Self::Buf, grads: Option<LossBackward<'_, Self>>) -> Result<LossSum>;
}

/// One output of [`Forward::project`]: the target, where its adapter keeps `x A^T`, and `y`.
pub(crate) struct Projection<'a, B> {
    pub target: Target,
    pub xa: &'a mut B,
    pub y: &'a mut B,
}

impl<'a, B> Projection<'a, B> {
    pub fn new(target: Target, xa: &'a mut B, y: &'a mut B) -> Self {
        Projection { target, xa, y }
    }
}

/// What the attention forward kept for its backward.
pub(crate) struct AttentionSaved<'a, B> {
    pub q: &'a B,
    pub k: &'a B,
    pub v: &'a B,
    pub o: &'a B,
    pub lse: &'a B,
}

/// Where the loss's backward writes.
pub(crate) struct LossBackward<'a, K: Backward + ?Sized> {
    /// The caller's `1 / normalizer`.
    pub scale: f64,
    pub dh: &'a mut K::Buf,
    pub g: &'a mut Placed<K::Grad>,
}
