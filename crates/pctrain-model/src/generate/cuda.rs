//! Decoding on a GPU: a step's tokens (each a row of its own) through the decoder's one forward
//! ([`crate::pass::forward`]) on the tensor backend (cuBLAS products, the CUDA kernels training
//! uses too), its attention over the cache ([`StepCache`], allocated once and written in place),
//! and the picks by `cuda/decode.cu`'s kernels. A step uploads its ids, positions, slots,
//! segment ids, picks and draws, and reads back only the chosen ids.

use candle_core::{DType, Tensor};

use super::schedule::Room;
use super::{Backend, Sampling, Step};
use crate::backend::Forward;
use crate::config::ModelConfig;
use crate::cuda::decode::{cache_attention, cache_write, pick_rows};
use crate::error::Result;
use crate::layers::kv_cache::{CacheAttention, CacheShape};
use crate::layers::loss::IGNORE_INDEX;
use crate::model::Batch;
use crate::model::Model;
use crate::pass::{self, Acts};
use crate::tensor::TensorBackend;

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
        // Each token a row of its own, at its position.
        let batch = Batch {
            rows: n,
            seq_len: 1,
            input_ids: step.ids.clone(),
            position_ids: step.positions.clone(),
            segment_ids: vec![1; n],
            labels: vec![IGNORE_INDEX; n],
        };
        let cache = StepCache {
            shape: &self.shape,
            keys: &self.keys,
            values: &self.values,
            slots: Tensor::from_slice(&step.slots, n, device)?,
            positions: Tensor::from_slice(&step.positions, n, device)?,
        };
        // No dropout; the loss chunk is never used (a decoder computes no loss).
        let mut ops = TensorBackend::new(model, &batch, None, 1)?.with_cache(cache);
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

/// A decoding step's view of the cache: where its tokens go (`[N]` slots and positions, u32 on
/// the GPU) and the cache they go into.
pub(crate) struct StepCache<'a> {
    pub shape: &'a CacheShape,
    pub keys: &'a Tensor,
    pub values: &'a Tensor,
    pub slots: Tensor,
    pub positions: Tensor,
}

impl StepCache<'_> {
    /// Layer `l`'s attention for the step: its keys and values (roped `k` `[N, kv_heads, 1, d]`,
    /// `v` `[N, kv_heads * d]`) into the cache, then each query (`q` `[N, heads, 1, d]`) over its
    /// slot, into `o` `[N, heads * d]`.
    pub fn attend(
        &self,
        c: &ModelConfig,
        l: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        o: &mut Tensor,
    ) -> Result<()> {
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
}
