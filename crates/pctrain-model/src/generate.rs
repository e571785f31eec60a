//! Inference: greedy or sampled generation with a key/value cache, for a batch of prompts of
//! different lengths. Rows are left-padded to a common length; each has its own positions and a
//! mask that hides its padding, and rows that finish leave the batch.

use candle_core::{DType, Tensor, D};

use crate::error::{ModelError, Result};
use crate::layer::{AttentionMask, LayerContext};
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
    /// `top_p`, with a seeded generator (row `i` of a call draws from `seed + i`).
    Sample {
        temperature: f64,
        top_p: f64,
        seed: u64,
    },
}

/// Keys and values of every layer so far, `[rows, kv_heads, S, head_dim]` each, for rows whose
/// first `pad[r]` columns are padding.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    pad: Vec<usize>,
    len: usize,
}

impl KvCache {
    /// Columns cached (padding included).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps only the rows `keep` (indices into the current rows, in order).
    fn keep_rows(&mut self, keep: &[usize]) -> Result<()> {
        let device = match self.layers.iter().flatten().next() {
            Some((k, _)) => k.device().clone(),
            None => return Ok(()),
        };
        let idx: Vec<u32> = keep.iter().map(|&r| r as u32).collect();
        let idx = Tensor::from_vec(idx, keep.len(), &device)?;
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.index_select(&idx, 0)?;
            *v = v.index_select(&idx, 0)?;
        }
        self.pad = keep.iter().map(|&r| self.pad[r]).collect();
        Ok(())
    }
}

/// Additive mask `[rows, 1, n, start + n]` for `n` new columns at `start..start + n`: a real
/// query sees the real keys up to itself (within `window` positions); a padding query sees only
/// itself, so that no row of scores is wholly masked.
fn padded_mask(
    pad: &[usize],
    start: usize,
    n: usize,
    window: Option<usize>,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let total = start + n;
    let mut mask = vec![f32::NEG_INFINITY; pad.len() * n * total];
    for (r, &p) in pad.iter().enumerate() {
        for i in 0..n {
            let q = start + i;
            let row = &mut mask[(r * n + i) * total..(r * n + i + 1) * total];
            if q < p {
                row[q] = 0.0;
                continue;
            }
            for (k, m) in row.iter_mut().enumerate().take(q + 1).skip(p) {
                if window.is_none_or(|w| q - k < w) {
                    *m = 0.0;
                }
            }
        }
    }
    Ok(Tensor::from_vec(mask, (pad.len(), 1, n, total), device)?)
}

impl Model {
    /// Runs `ids` (`[rows, n]` row-major, columns `cache.len()..`) through the model, extending
    /// `cache`; returns the logits of each row's last column, `[rows, V]` f32.
    fn forward_cached(&self, ids: &[u32], rows: usize, cache: &mut KvCache) -> Result<Tensor> {
        let c = &self.config;
        let device = self.device().clone();
        let n = ids.len() / rows.max(1);
        if rows == 0 || n == 0 || ids.len() != rows * n {
            return Err(ModelError::Input(
                "decoding needs the same number of tokens (at least one) in every row".into(),
            ));
        }
        if let Some(id) = ids.iter().find(|&&i| i as usize >= c.vocab_size) {
            return Err(ModelError::Input(format!(
                "token id {id} is outside the vocabulary"
            )));
        }
        cache.pad.resize(rows, 0);
        let start = cache.len;
        let positions: Vec<u32> = cache
            .pad
            .iter()
            .flat_map(|&p| (start..start + n).map(move |j| j.saturating_sub(p) as u32))
            .collect();
        let (cos, sin) = rope_tables(self.inv_freq(), &positions, rows, &device)?;
        let mask = padded_mask(&cache.pad, start, n, c.sliding_window, &device)?;
        let ids_t = Tensor::from_slice(ids, rows * n, &device)?;
        let mut x = (self
            .weights
            .embed_tokens
            .index_select(&ids_t, 0)?
            .reshape((rows, n, c.hidden_size))?
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
            .reshape((rows, c.hidden_size))?
            .matmul(&self.weights.output().t()?)?;
        Ok((logits.to_dtype(DType::F32)? / c.logits_scaling)?)
    }

    /// Runs `ids` (positions `cache.len()..`) of one row through the model, extending `cache`;
    /// returns the logits of the last position, `[V]`.
    pub fn decode_step(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        Ok(self.forward_cached(ids, 1, cache)?.squeeze(0)?)
    }

    /// Generates up to `max_new` tokens after `prompt`, stopping after any of `stop`.
    pub fn generate(
        &self,
        prompt: &[u32],
        max_new: usize,
        sampling: Sampling,
        stop: &[u32],
    ) -> Result<Vec<u32>> {
        let mut out =
            self.generate_batch(&[prompt.to_vec()], max_new, sampling, stop, |_, _| {})?;
        Ok(out.pop().unwrap_or_default())
    }

    /// Generates up to `max_new` tokens after each of `prompts` together, a row stopping after
    /// any of `stop`; `on_token(prompt index, token)` sees every token as it is chosen. The
    /// tokens of each prompt, in the order of `prompts`; a row's tokens do not depend on the
    /// other rows (up to float rounding of the padded products).
    pub fn generate_batch(
        &self,
        prompts: &[Vec<u32>],
        max_new: usize,
        sampling: Sampling,
        stop: &[u32],
        mut on_token: impl FnMut(usize, u32),
    ) -> Result<Vec<Vec<u32>>> {
        let mut out = vec![Vec::with_capacity(max_new); prompts.len()];
        if prompts.is_empty() || max_new == 0 {
            return Ok(out);
        }
        if prompts.iter().any(Vec::is_empty) {
            return Err(ModelError::Input("a prompt has no tokens".into()));
        }
        let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let mut cache = KvCache {
            pad: prompts.iter().map(|p| width - p.len()).collect(),
            ..KvCache::default()
        };
        let ids: Vec<u32> = prompts
            .iter()
            .flat_map(|p| std::iter::repeat_n(p[0], width - p.len()).chain(p.iter().copied()))
            .collect();
        let mut rngs: Vec<Rng64> = (0..prompts.len() as u64)
            .map(|i| match sampling {
                Sampling::Sample { seed, .. } => Rng64::new(seed.wrapping_add(i)),
                Sampling::Greedy => Rng64::new(0),
            })
            .collect();
        // The prompt index of each row still in the batch.
        let mut live: Vec<usize> = (0..prompts.len()).collect();
        let mut logits = self.forward_cached(&ids, live.len(), &mut cache)?;
        loop {
            let next: Vec<u32> = match sampling {
                Sampling::Greedy => logits.argmax(D::Minus1)?.to_vec1::<u32>()?,
                Sampling::Sample {
                    temperature, top_p, ..
                } => {
                    let rows: Vec<Vec<f32>> = logits.to_vec2()?;
                    rows.iter()
                        .zip(&live)
                        .map(|(l, &i)| sample(l, temperature, top_p, &mut rngs[i]))
                        .collect()
                }
            };
            let mut keep = Vec::with_capacity(live.len());
            for (r, (&i, &token)) in live.iter().zip(&next).enumerate() {
                out[i].push(token);
                on_token(i, token);
                if !stop.contains(&token) && out[i].len() < max_new {
                    keep.push(r);
                }
            }
            if keep.is_empty() {
                return Ok(out);
            }
            if keep.len() < live.len() {
                cache.keep_rows(&keep)?;
                live = keep.iter().map(|&r| live[r]).collect();
            }
            let ids: Vec<u32> = live
                .iter()
                .map(|&i| *out[i].last().expect("one token"))
                .collect();
            logits = self.forward_cached(&ids, live.len(), &mut cache)?;
        }
    }
}

/// Draws from `softmax(logits / temperature)` restricted to the top-p nucleus.
fn sample(logits: &[f32], temperature: f64, top_p: f64, rng: &mut Rng64) -> u32 {
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
            return id;
        }
    }
    nucleus.last().map_or(0, |n| n.0)
}
