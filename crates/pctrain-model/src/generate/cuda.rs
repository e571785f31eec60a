//! Decoding on a GPU: a step's tokens through the decoder's one forward ([`crate::pass::forward`])
//! with the operations of [`StepOps`] (cuBLAS products, the decoder's own RMS norm, rope and
//! SwiGLU kernels), the cache allocated once and written in place, attention over it and the
//! picks by `cuda/decode.cu`'s kernels. A step
//! uploads its ids, slots, positions and draws, and reads back only the chosen ids.

use candle_core::{DType, Tensor};

use super::schedule::Room;
use super::{Backend, Sampling, Step};
use crate::backend::Forward;
use crate::config::ModelConfig;
use crate::cuda::decode::{cache_attention, cache_write, pick_rows};
use crate::error::Result;
use crate::layers::kv_cache::{CacheAttention, CacheShape};
use crate::layers::linear::linear_forward;
use crate::layers::mlp::swiglu_forward;
use crate::layers::norm::rms_norm_forward;
use crate::layers::rope::{rope_forward, rope_tables};
use crate::lora::Target;
use crate::model::Model;
use crate::params::{LayerParam, Param};
use crate::pass::{self, Acts};

/// The GPU backend: the cache (keys and values, in the weights' type) and the picks' scratch.
pub(crate) struct CudaDecoder<'m> {
    model: &'m Model,
    sampling: Sampling,
    shape: CacheShape,
    keys: Tensor,
    values: Tensor,
    /// `[slots * V]` f32: each picked row's weights.
    scratch: Tensor,
}

impl<'m> CudaDecoder<'m> {
    pub fn new(model: &'m Model, room: Room, sampling: Sampling) -> Result<Self> {
        let c = &model.config;
        let shape = CacheShape::of(c, room.slots, room.positions);
        let dtype = model.weights.embed_tokens.dtype();
        if !crate::cuda::runs_on(&model.weights.embed_tokens) {
            return Err(crate::error::ModelError::Input(format!(
                "decoding on a GPU takes f32 or bf16 weights, not {dtype:?}"
            )));
        }
        let device = model.device();
        Ok(CudaDecoder {
            model,
            sampling,
            shape,
            keys: Tensor::zeros(shape.len(), dtype, device)?,
            values: Tensor::zeros(shape.len(), dtype, device)?,
            scratch: Tensor::zeros(room.slots * c.vocab_size, DType::F32, device)?,
        })
    }
}

impl Backend for CudaDecoder<'_> {
    fn step(&mut self, step: &Step) -> Result<Vec<u32>> {
        let model = self.model;
        let c = &model.config;
        let device = model.device();
        let n = step.ids.len();
        // Tables [N, 1, d]: each token a row of one position, as rope's [B, T, d] wants.
        let (cos, sin) = rope_tables(model.inv_freq(), &step.positions, n, device)?;
        let mut ops = StepOps {
            model,
            ids: Tensor::from_slice(&step.ids, n, device)?,
            slots: Tensor::from_slice(&step.slots, n, device)?,
            positions: Tensor::from_slice(&step.positions, n, device)?,
            cos,
            sin,
            shape: &self.shape,
            keys: &self.keys,
            values: &self.values,
            nothing: Tensor::zeros(0, DType::F32, device)?,
        };
        let mut acts = Acts::new(c.num_layers, false, false, || ops.empty());
        pass::forward(&mut ops, &mut acts, false, false)?;
        let m = step.picks.len();
        if m == 0 {
            // Only prompt tokens that do not end their prompt: nothing to choose yet.
            return Ok(Vec::new());
        }
        let picks: Vec<u32> = step.picks.iter().map(|&t| t as u32).collect();
        let last = acts
            .final_h
            .index_select(&Tensor::from_vec(picks, m, device)?, 0)?;
        let logits = last
            .matmul(&model.weights.output().t()?)?
            .to_dtype(DType::F32)?;
        let logits = (logits / c.logits_scaling)?;
        let draws = Tensor::from_slice(&step.draws, m, device)?;
        let chosen = pick_rows(&logits, &draws, &self.scratch, &self.sampling)?;
        Ok(chosen.to_vec1::<u32>()?)
    }
}

/// One step's operations on the GPU: `N` tokens at their positions, the layer entries of
/// [`crate::layers`] (cuBLAS products, the decoder's own kernels), keys and values into the cache
/// and attention over it. Roped q and k lie `[N, heads, 1, d]`.
struct StepOps<'a> {
    model: &'a Model,
    /// `[N]` u32 each.
    ids: Tensor,
    slots: Tensor,
    positions: Tensor,
    /// `[N, 1, d]`.
    cos: Tensor,
    sin: Tensor,
    shape: &'a CacheShape,
    keys: &'a Tensor,
    values: &'a Tensor,
    nothing: Tensor,
}

impl Forward for StepOps<'_> {
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
        let weights = &self.model.weights;
        let w = match w {
            Param::Layer(l, lw) => weights.layers[l].get(lw),
            _ => &weights.norm,
        };
        *y = rms_norm_forward(x, w, self.model.config.rms_norm_eps)?;
        Ok(())
    }

    fn linear(
        &mut self,
        l: usize,
        target: Target,
        x: &Tensor,
        _: &mut Tensor,
        y: &mut Tensor,
        alpha: f32,
        accumulate: bool,
    ) -> Result<()> {
        let w = self.model.weights.layers[l].get(LayerParam::of(target));
        let lora = self.model.lora.as_ref();
        let adapter = lora.and_then(|a| a.layers[l][target as usize].as_ref());
        let out = linear_forward(x, w, adapter)?;
        let out = if alpha == 1.0 {
            out
        } else {
            (out * f64::from(alpha))?
        };
        *y = if accumulate { (&*y + out)? } else { out };
        Ok(())
    }

    fn rope(&mut self, x: &mut Tensor, heads: usize) -> Result<()> {
        let (n, d) = (x.dim(0)?, self.model.config.head_dim);
        *x = rope_forward(&x.reshape((n, heads, 1, d))?, &self.cos, &self.sin)?;
        Ok(())
    }

    /// The step's keys and values into layer `l` of the cache, then each query over its slot.
    fn attention(
        &mut self,
        l: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        o: &mut Tensor,
        _: &mut Tensor,
    ) -> Result<()> {
        let c = &self.model.config;
        let attn = CacheAttention {
            heads: c.num_heads,
            window: c.sliding_window.unwrap_or(0),
            scale: c.attention_scale as f32,
        };
        let (slots, positions) = (&self.slots, &self.positions);
        let (keys, values) = (self.keys, self.values);
        cache_write(self.shape, l, slots, positions, k, v, keys, values)?;
        let out = cache_attention(self.shape, l, &attn, slots, positions, q, keys, values)?;
        *o = out.reshape((q.dim(0)?, c.num_heads * c.head_dim))?;
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
