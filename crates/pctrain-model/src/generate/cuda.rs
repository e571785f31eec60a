//! Decoding on a GPU: a step's tokens through the layers as the tensor path runs them (cuBLAS
//! products, the decoder's own RMS norm, rope and SwiGLU kernels), the cache allocated once and
//! written in place, attention over it and the picks by `cuda/decode.cu`'s kernels. A step
//! uploads its ids, slots, positions and draws, and reads back only the chosen ids.

use candle_core::{DType, Tensor};

use super::schedule::Room;
use super::{Backend, Sampling, Step};
use crate::cuda::decode::{cache_attention, cache_write, pick_rows};
use crate::error::Result;
use crate::layers::kv_cache::{CacheAttention, CacheShape};
use crate::layers::linear::linear_forward;
use crate::layers::mlp::swiglu_forward;
use crate::layers::norm::rms_norm_forward;
use crate::layers::rope::{rope_forward, rope_tables};
use crate::lora::Target;
use crate::model::Model;

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
        let (n, d) = (step.ids.len(), c.head_dim);
        let (heads, kv_heads) = (c.num_heads, c.num_kv_heads);
        let (eps, r) = (c.rms_norm_eps, c.residual_multiplier);
        let ids = Tensor::from_slice(&step.ids, n, device)?;
        let slots = Tensor::from_slice(&step.slots, n, device)?;
        let positions = Tensor::from_slice(&step.positions, n, device)?;
        let mut x = model.weights.embed_tokens.index_select(&ids, 0)?;
        if c.embedding_multiplier != 1.0 {
            x = (x * c.embedding_multiplier)?;
        }
        // Tables [N, 1, d]: each token a row of one position, as rope's [B, T, d] wants.
        let (cos, sin) = rope_tables(model.inv_freq(), &step.positions, n, device)?;
        let attn = CacheAttention {
            heads,
            window: c.sliding_window.unwrap_or(0),
            scale: c.attention_scale as f32,
        };
        for (l, w) in model.weights.layers.iter().enumerate() {
            let lora = model.lora.as_ref().map(|a| &a.layers[l]);
            let lin = |x: &Tensor, w: &Tensor, t: Target| {
                linear_forward(x, w, lora.and_then(|a| a[t as usize].as_ref()))
            };
            let h = rms_norm_forward(&x, &w.input_norm, eps)?;
            let q = lin(&h, &w.q_proj, Target::Q)?.reshape((n, heads, 1, d))?;
            let k = lin(&h, &w.k_proj, Target::K)?.reshape((n, kv_heads, 1, d))?;
            let v = lin(&h, &w.v_proj, Target::V)?;
            let q = rope_forward(&q, &cos, &sin)?;
            let k = rope_forward(&k, &cos, &sin)?;
            let (keys, values) = (&self.keys, &self.values);
            cache_write(&self.shape, l, &slots, &positions, &k, &v, keys, values)?;
            let o = cache_attention(&self.shape, l, &attn, &slots, &positions, &q, keys, values)?;
            let o = o.reshape((n, heads * d))?;
            x = (x + (lin(&o, &w.o_proj, Target::O)? * r)?)?;
            let h = rms_norm_forward(&x, &w.post_attention_norm, eps)?;
            let gate = lin(&h, &w.gate_proj, Target::Gate)?;
            let up = lin(&h, &w.up_proj, Target::Up)?;
            let z = swiglu_forward(&gate, &up)?;
            x = (x + (lin(&z, &w.down_proj, Target::Down)? * r)?)?;
        }
        let m = step.picks.len();
        if m == 0 {
            // Only prompt tokens that do not end their prompt: nothing to choose yet.
            return Ok(Vec::new());
        }
        let picks: Vec<u32> = step.picks.iter().map(|&t| t as u32).collect();
        let last = x.index_select(&Tensor::from_vec(picks, m, device)?, 0)?;
        let last = rms_norm_forward(&last, &model.weights.norm, eps)?;
        let logits = last
            .matmul(&model.weights.output().t()?)?
            .to_dtype(DType::F32)?;
        let logits = (logits / c.logits_scaling)?;
        let draws = Tensor::from_slice(&step.draws, m, device)?;
        let chosen = pick_rows(&logits, &draws, &self.scratch, &self.sampling)?;
        Ok(chosen.to_vec1::<u32>()?)
    }
}
