//! Inference: greedy or sampled generation with a key/value cache (batch 1).

use candle_core::{Tensor, D};

use crate::error::{ModelError, Result};
use crate::layer::{AttentionMask, LayerContext};
use crate::layers::attention::decode_mask;
use crate::layers::norm::rms_norm_forward;
use crate::layers::rope::rope_tables;
use crate::model::Model;
use crate::rng::Rng64;

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token.
    Greedy,
    /// Softmax sampling at `temperature`, from the smallest set of tokens whose probability reaches
    /// `top_p`, with a seeded generator.
    Sample {
        temperature: f64,
        top_p: f64,
        seed: u64,
    },
}

/// Keys and values of every layer so far: `[1, kv_heads, S, head_dim]` each.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Model {
    /// Runs `ids` (positions `cache.len()..`) through the model, extending `cache`; returns the
    /// logits of the last position, `[V]`.
    pub fn decode_step(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let c = &self.config;
        let device = self.device().clone();
        let (start, n) = (cache.len, ids.len());
        if n == 0 {
            return Err(ModelError::Input(
                "decode_step needs at least one token".into(),
            ));
        }
        if let Some(id) = ids.iter().find(|&&i| i as usize >= c.vocab_size) {
            return Err(ModelError::Input(format!(
                "token id {id} is outside the vocabulary"
            )));
        }
        let positions: Vec<u32> = (start..start + n).map(|p| p as u32).collect();
        let (cos, sin) = rope_tables(self.inv_freq(), &positions, 1, &device)?;
        let mask = decode_mask(start, n, c.sliding_window, &device)?;
        let ids_t = Tensor::from_slice(ids, n, &device)?;
        let mut x = (self
            .weights
            .embed_tokens
            .index_select(&ids_t, 0)?
            .reshape((1, n, c.hidden_size))?
            * c.embedding_multiplier)?;
        let ctx = LayerContext {
            cos,
            sin,
            attention: AttentionMask::Dense(mask),
            dropout_seed: None,
        };
        cache.layers.resize(c.num_layers, None);
        for l in 0..c.num_layers {
            x = self
                .layer_forward(&x, l, &ctx, Some(&mut cache.layers[l]))?
                .out;
        }
        cache.len += n;
        let last = rms_norm_forward(&x.narrow(1, n - 1, 1)?, &self.weights.norm, c.rms_norm_eps)?;
        let logits = last
            .reshape((1, c.hidden_size))?
            .matmul(&self.weights.output().t()?)?;
        Ok((logits.squeeze(0)? / c.logits_scaling)?)
    }

    /// Generates up to `max_new` tokens after `prompt`, stopping after any of `stop`.
    pub fn generate(
        &self,
        prompt: &[u32],
        max_new: usize,
        sampling: Sampling,
        stop: &[u32],
    ) -> Result<Vec<u32>> {
        let mut cache = KvCache::default();
        let mut rng = Rng64::new(match sampling {
            Sampling::Sample { seed, .. } => seed,
            Sampling::Greedy => 0,
        });
        let mut out = Vec::with_capacity(max_new);
        let mut logits = self.decode_step(prompt, &mut cache)?;
        for _ in 0..max_new {
            let next = match sampling {
                Sampling::Greedy => logits.argmax(D::Minus1)?.to_scalar::<u32>()?,
                Sampling::Sample {
                    temperature, top_p, ..
                } => sample(&logits, temperature, top_p, &mut rng)?,
            };
            out.push(next);
            if stop.contains(&next) || out.len() == max_new {
                break;
            }
            logits = self.decode_step(&[next], &mut cache)?;
        }
        Ok(out)
    }
}

/// Draws from `softmax(logits / temperature)` restricted to the top-p nucleus.
fn sample(logits: &Tensor, temperature: f64, top_p: f64, rng: &mut Rng64) -> Result<u32> {
    let logits: Vec<f32> = logits.to_dtype(candle_core::DType::F32)?.to_vec1()?;
    let t = temperature.max(1e-6) as f32;
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, ((l - max) / t).exp()))
        .collect();
    let total: f32 = probs.iter().map(|p| p.1).sum();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = 0.0;
    let mut nucleus = Vec::new();
    for (id, p) in probs {
        nucleus.push((id, p / total));
        kept += p / total;
        if f64::from(kept) >= top_p {
            break;
        }
    }
    let draw = rng.unit() as f32 * kept;
    let mut acc = 0.0;
    for &(id, p) in &nucleus {
        acc += p;
        if draw < acc {
            return Ok(id);
        }
    }
    Ok(nucleus.last().map_or(0, |n| n.0))
}
