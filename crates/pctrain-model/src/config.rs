//! Model configuration read from a Hugging Face `config.json`: Llama (3 and 3.1, with `llama3` rope
//! scaling), Mistral (sliding window, explicit `head_dim`) and Granite (multipliers, tied
//! embeddings). One decoder serves all three; their differences are fields here.

use std::path::Path;

use serde::Deserialize;

use crate::error::{ModelError, Result};

/// The model families pctrain builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Mistral,
    Granite,
}

impl Architecture {
    fn from_class(name: &str) -> Option<Self> {
        match name {
            "LlamaForCausalLM" => Some(Architecture::Llama),
            "MistralForCausalLM" => Some(Architecture::Mistral),
            "GraniteForCausalLM" => Some(Architecture::Granite),
            _ => None,
        }
    }
}

/// Llama 3.1's frequency-dependent rope scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

/// Rotary position embedding settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    pub llama3: Option<Llama3Scaling>,
}

/// Everything the decoder needs to know about a model's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope: RopeConfig,
    pub max_position_embeddings: usize,
    /// Mistral: a query attends to at most this many positions (itself included).
    pub sliding_window: Option<usize>,
    pub tie_word_embeddings: bool,
    /// Granite: embeddings are multiplied by this (1 elsewhere).
    pub embedding_multiplier: f64,
    /// Attention score scale: Granite's `attention_multiplier`, else `1/sqrt(head_dim)`.
    pub attention_scale: f64,
    /// Granite: each block's output is multiplied by this before the residual add (1 elsewhere).
    pub residual_multiplier: f64,
    /// Granite: logits are divided by this (1 elsewhere).
    pub logits_scaling: f64,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// The fields of a Hugging Face `config.json` the decoder reads (the others are ignored).
#[derive(Deserialize)]
struct HfConfig {
    hidden_size: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    rms_norm_eps: f64,
    /// transformers 4 and model repos: `rope_theta` and `rope_scaling`.
    rope_theta: Option<f64>,
    rope_scaling: Option<RopeFields>,
    /// transformers 5: both in `rope_parameters`.
    rope_parameters: Option<RopeFields>,
    max_position_embeddings: Option<usize>,
    sliding_window: Option<usize>,
    tie_word_embeddings: Option<bool>,
    embedding_multiplier: Option<f64>,
    attention_multiplier: Option<f64>,
    residual_multiplier: Option<f64>,
    logits_scaling: Option<f64>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<TokenIds>,
}

/// `architectures`, read first: an unsupported model is named before its other fields are read.
#[derive(Deserialize)]
struct HfArchitectures {
    architectures: Vec<String>,
}

/// `eos_token_id`: one id or a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

/// `rope_scaling` / `rope_parameters`.
#[derive(Deserialize)]
struct RopeFields {
    rope_type: Option<String>,
    /// The older name of `rope_type` (transformers writes both).
    #[serde(rename = "type")]
    kind: Option<String>,
    rope_theta: Option<f64>,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<usize>,
}

impl ModelConfig {
    /// Reads `DIR/config.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        Self::from_json(&text, &path)
    }

    /// Parses the text of a `config.json`; `path` names it in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let err = |message: String| ModelError::Config {
            path: path.to_path_buf(),
            message,
        };
        let malformed = |e: serde_json::Error| {
            if e.is_syntax() || e.is_eof() {
                err(format!("malformed JSON: {e}"))
            } else {
                err(e.to_string())
            }
        };
        let head: HfArchitectures = serde_json::from_str(text).map_err(malformed)?;
        let class = head
            .architectures
            .first()
            .ok_or_else(|| err("field `architectures` is empty".into()))?;
        let architecture = Architecture::from_class(class).ok_or_else(|| {
            err(format!(
                "unsupported architecture {class:?} (pctrain builds LlamaForCausalLM, \
                 MistralForCausalLM and GraniteForCausalLM)"
            ))
        })?;
        let f: HfConfig = serde_json::from_str(text).map_err(malformed)?;
        let num_heads = f.num_attention_heads;
        let num_kv_heads = f.num_key_value_heads.unwrap_or(num_heads);
        if num_heads == 0 || num_kv_heads == 0 || !num_heads.is_multiple_of(num_kv_heads) {
            return Err(err(format!(
                "num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads}"
            )));
        }
        let hidden_size = f.hidden_size;
        let head_dim = match f.head_dim {
            Some(d) => d,
            None if hidden_size.is_multiple_of(num_heads) => hidden_size / num_heads,
            None => {
                return Err(err(format!(
                    "hidden_size {hidden_size} is not a multiple of num_attention_heads {num_heads} and no head_dim is given"
                )))
            }
        };
        if head_dim % 2 != 0 {
            return Err(err(format!(
                "head_dim {head_dim} must be even for rotary embeddings"
            )));
        }
        let granite = architecture == Architecture::Granite;
        let multiplier = |key: &str, value: Option<f64>| -> Result<f64> {
            match (granite, value) {
                (false, _) => Ok(1.0),
                (true, Some(v)) => Ok(v),
                (true, None) => Err(err(format!("missing field `{key}`"))),
            }
        };
        let rope = rope(&f).map_err(err)?;
        Ok(ModelConfig {
            architecture,
            vocab_size: f.vocab_size,
            hidden_size,
            intermediate_size: f.intermediate_size,
            num_layers: f.num_hidden_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: f.rms_norm_eps,
            rope,
            max_position_embeddings: f.max_position_embeddings.unwrap_or(4096),
            sliding_window: match (architecture, f.sliding_window) {
                (Architecture::Mistral, Some(0)) => {
                    return Err(err("field `sliding_window` must be at least 1".into()))
                }
                (Architecture::Mistral, w) => w,
                _ => None,
            },
            tie_word_embeddings: f.tie_word_embeddings.unwrap_or(false),
            embedding_multiplier: multiplier("embedding_multiplier", f.embedding_multiplier)?,
            attention_scale: if granite {
                multiplier("attention_multiplier", f.attention_multiplier)?
            } else {
                1.0 / (head_dim as f64).sqrt()
            },
            residual_multiplier: multiplier("residual_multiplier", f.residual_multiplier)?,
            logits_scaling: multiplier("logits_scaling", f.logits_scaling)?,
            bos_token_id: f.bos_token_id,
            eos_token_ids: match f.eos_token_id {
                None => Vec::new(),
                Some(TokenIds::One(id)) => vec![id],
                Some(TokenIds::Many(ids)) => ids,
            },
        })
    }

    /// Query heads per key/value head.
    pub fn group_size(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }
}

/// The rope settings: `rope_parameters` (transformers 5) or `rope_theta` and `rope_scaling`
/// (transformers 4 and model repos); an error says what is wrong.
fn rope(f: &HfConfig) -> std::result::Result<RopeConfig, String> {
    let params = f.rope_parameters.as_ref();
    let theta = params
        .and_then(|p| p.rope_theta)
        .or(f.rope_theta)
        .unwrap_or(10_000.0);
    let Some(scaling) = params.or(f.rope_scaling.as_ref()) else {
        return Ok(RopeConfig {
            theta,
            llama3: None,
        });
    };
    let kind = scaling.rope_type.as_deref().or(scaling.kind.as_deref());
    let llama3 = match kind.unwrap_or("default") {
        "default" => None,
        "llama3" => {
            let need =
                |key: &str, v: Option<f64>| v.ok_or(format!("rope scaling: missing field `{key}`"));
            let scaling = Llama3Scaling {
                factor: need("factor", scaling.factor)?,
                low_freq_factor: need("low_freq_factor", scaling.low_freq_factor)?,
                high_freq_factor: need("high_freq_factor", scaling.high_freq_factor)?,
                original_max_position_embeddings: scaling
                    .original_max_position_embeddings
                    .ok_or("rope scaling: missing field `original_max_position_embeddings`")?,
            };
            let valid = scaling.factor > 0.0
                && scaling.low_freq_factor > 0.0
                && scaling.high_freq_factor > scaling.low_freq_factor
                && scaling.original_max_position_embeddings > 0;
            if !valid {
                return Err(format!(
                    "llama3 rope scaling needs factor > 0, 0 < low_freq_factor < high_freq_factor \
                     and original_max_position_embeddings > 0, got {scaling:?}"
                ));
            }
            Some(scaling)
        }
        other => {
            return Err(format!(
                "unsupported rope scaling {other:?} (supported: default, llama3)"
            ))
        }
    };
    Ok(RopeConfig { theta, llama3 })
}
