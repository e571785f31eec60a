//! The `tiny` preset: a small Llama-shaped model initialised from a seed (as transformers
//! initialises Llama: normal(0, 0.02) weights, unit norms), with the built-in tokenizer, so it needs
//! no download and trains on CPU in minutes.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use pctrain_model::rng::Rng64;
use pctrain_model::weights::LayerWeights;
use pctrain_model::{Model, ModelConfig, ModelWeights};

/// The tiny preset's `config.json`: 4 layers, hidden 128, grouped-query attention, the built-in
/// tokenizer's 2048 tokens.
pub const TINY_CONFIG: &str = r#"{
  "architectures": ["LlamaForCausalLM"],
  "model_type": "llama",
  "vocab_size": 2048,
  "hidden_size": 128,
  "intermediate_size": 352,
  "num_hidden_layers": 4,
  "num_attention_heads": 4,
  "num_key_value_heads": 2,
  "rms_norm_eps": 1e-5,
  "rope_theta": 10000.0,
  "max_position_embeddings": 2048,
  "tie_word_embeddings": false,
  "bos_token_id": 0,
  "eos_token_id": 1
}"#;

/// The tiny model with weights drawn from `seed`.
pub fn tiny_model(seed: u64, device: &Device) -> pctrain_model::Result<Model> {
    let config = ModelConfig::from_json(TINY_CONFIG, Path::new("tiny preset"))?;
    let weights = init_weights(&config, seed, device)?;
    Ok(Model::new(config, weights, None))
}

/// Weights as transformers initialises a Llama: linear layers and embeddings from normal(0, 0.02),
/// norms at 1.
pub fn init_weights(
    config: &ModelConfig,
    seed: u64,
    device: &Device,
) -> pctrain_model::Result<ModelWeights> {
    let mut rng = Rng64::new(seed);
    let normal = |shape: &[usize]| -> candle_core::Result<Tensor> {
        let n: usize = shape.iter().product();
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            // Box-Muller: two independent normals from two uniforms.
            let (u1, u2) = (rng.unit().max(f64::MIN_POSITIVE), rng.unit());
            let r = (-2.0 * u1.ln()).sqrt();
            let theta = 2.0 * std::f64::consts::PI * u2;
            v.push((0.02 * r * theta.cos()) as f32);
            v.push((0.02 * r * theta.sin()) as f32);
        }
        v.truncate(n);
        Tensor::from_vec(v, shape, device)
    };
    weights_from(config, DType::F32, device, normal)
}

/// Weights drawn on the device itself (cuRAND on a GPU) in `dtype`: for benchmarks of large
/// shapes, where drawing on the CPU would take minutes. Not reproducible across devices.
pub fn random_weights(
    config: &ModelConfig,
    dtype: DType,
    device: &Device,
) -> pctrain_model::Result<ModelWeights> {
    weights_from(config, dtype, device, |shape| {
        Tensor::randn(0f32, 0.02, shape, device)?.to_dtype(dtype)
    })
}

/// Every weight of `config`'s model: projections and embeddings from `normal`, norms at 1.
fn weights_from(
    config: &ModelConfig,
    dtype: DType,
    device: &Device,
    mut normal: impl FnMut(&[usize]) -> candle_core::Result<Tensor>,
) -> pctrain_model::Result<ModelWeights> {
    let (h, i, v) = (
        config.hidden_size,
        config.intermediate_size,
        config.vocab_size,
    );
    let (q, kv) = (
        config.num_heads * config.head_dim,
        config.num_kv_heads * config.head_dim,
    );
    let ones = |n: usize| Tensor::ones(n, dtype, device);
    let embed_tokens = normal(&[v, h])?;
    let mut layers = Vec::with_capacity(config.num_layers);
    for _ in 0..config.num_layers {
        layers.push(LayerWeights {
            input_norm: ones(h)?,
            q_proj: normal(&[q, h])?,
            k_proj: normal(&[kv, h])?,
            v_proj: normal(&[kv, h])?,
            o_proj: normal(&[h, q])?,
            post_attention_norm: ones(h)?,
            gate_proj: normal(&[i, h])?,
            up_proj: normal(&[i, h])?,
            down_proj: normal(&[h, i])?,
        });
    }
    let lm_head = if config.tie_word_embeddings {
        None
    } else {
        Some(normal(&[v, h])?)
    };
    Ok(ModelWeights {
        embed_tokens,
        layers,
        norm: ones(h)?,
        lm_head,
    })
}
