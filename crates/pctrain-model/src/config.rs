//! Model configuration read from a Hugging Face `config.json`: Llama (3 and 3.1, with `llama3` rope
//! scaling), Mistral (sliding window, explicit `head_dim`) and Granite (multipliers, tied
//! embeddings). One decoder serves all three; their differences are fields here.

use std::path::Path;

use serde_json::{Map, Value};

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
        let v: Value =
            serde_json::from_str(text).map_err(|e| err(format!("malformed JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| err("expected a JSON object".into()))?;
        let f = Fields { obj, err: &err };
        let class = obj
            .get("architectures")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .ok_or_else(|| err("missing field `architectures`".into()))?;
        let architecture = Architecture::from_class(class).ok_or_else(|| {
            err(format!(
                "unsupported architecture {class:?} (pctrain builds LlamaForCausalLM, \
                 MistralForCausalLM and GraniteForCausalLM)"
            ))
        })?;
        let hidden_size = f.usize("hidden_size")?;
        let num_heads = f.usize("num_attention_heads")?;
        let num_kv_heads = f.opt_usize("num_key_value_heads")?.unwrap_or(num_heads);
        if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(err(format!(
                "num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads}"
            )));
        }
        let head_dim = match f.opt_usize("head_dim")? {
            Some(d) => d,
            None if hidden_size % num_heads == 0 => hidden_size / num_heads,
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
        let multiplier = |key: &str| -> Result<f64> {
            if granite {
                f.f64(key)
            } else {
                Ok(1.0)
            }
        };
        Ok(ModelConfig {
            architecture,
            vocab_size: f.usize("vocab_size")?,
            hidden_size,
            intermediate_size: f.usize("intermediate_size")?,
            num_layers: f.usize("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: f.f64("rms_norm_eps")?,
            rope: rope(&f)?,
            max_position_embeddings: f.opt_usize("max_position_embeddings")?.unwrap_or(4096),
            sliding_window: match architecture {
                Architecture::Mistral => match f.opt_usize("sliding_window")? {
                    Some(0) => return Err(err("field `sliding_window` must be at least 1".into())),
                    w => w,
                },
                _ => None,
            },
            tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            embedding_multiplier: multiplier("embedding_multiplier")?,
            attention_scale: if granite {
                f.f64("attention_multiplier")?
            } else {
                1.0 / (head_dim as f64).sqrt()
            },
            residual_multiplier: multiplier("residual_multiplier")?,
            logits_scaling: multiplier("logits_scaling")?,
            bos_token_id: f.opt_usize("bos_token_id")?.map(|i| i as u32),
            eos_token_ids: match obj.get("eos_token_id") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Number(n)) => vec![n
                    .as_u64()
                    .ok_or_else(|| err("eos_token_id: expected a token id".into()))?
                    as u32],
                Some(Value::Array(ids)) => ids
                    .iter()
                    .map(|i| i.as_u64().map(|i| i as u32))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| err("eos_token_id: expected token ids".into()))?,
                Some(_) => return Err(err("eos_token_id: expected an id or a list of ids".into())),
            },
        })
    }

    /// Query heads per key/value head.
    pub fn group_size(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }
}

/// Reads `rope_theta`/`rope_scaling` (transformers 4 and model repos) or `rope_parameters`
/// (transformers 5).
fn rope(f: &Fields) -> Result<RopeConfig> {
    let params = match f.obj.get("rope_parameters") {
        Some(Value::Object(p)) => Some(p),
        _ => None,
    };
    let theta = match params.and_then(|p| p.get("rope_theta")) {
        Some(v) => v
            .as_f64()
            .ok_or_else(|| (f.err)("rope_parameters.rope_theta: expected a number".into()))?,
        None => f.opt_f64("rope_theta")?.unwrap_or(10_000.0),
    };
    let scaling = match (params, f.obj.get("rope_scaling")) {
        (Some(p), _) => Some(p),
        (None, Some(Value::Object(s))) => Some(s),
        _ => None,
    };
    let Some(scaling) = scaling else {
        return Ok(RopeConfig {
            theta,
            llama3: None,
        });
    };
    let kind = scaling
        .get("rope_type")
        .or_else(|| scaling.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let s = Fields {
        obj: scaling,
        err: f.err,
    };
    let llama3 = match kind {
        "default" => None,
        "llama3" => {
            let scaling = Llama3Scaling {
                factor: s.f64("factor")?,
                low_freq_factor: s.f64("low_freq_factor")?,
                high_freq_factor: s.f64("high_freq_factor")?,
                original_max_position_embeddings: s.usize("original_max_position_embeddings")?,
            };
            let valid = scaling.factor > 0.0
                && scaling.low_freq_factor > 0.0
                && scaling.high_freq_factor > scaling.low_freq_factor
                && scaling.original_max_position_embeddings > 0;
            if !valid {
                return Err((f.err)(format!(
                    "llama3 rope scaling needs factor > 0, 0 < low_freq_factor < high_freq_factor \
                     and original_max_position_embeddings > 0, got {scaling:?}"
                )));
            }
            Some(scaling)
        }
        other => {
            return Err((f.err)(format!(
                "unsupported rope scaling {other:?} (supported: default, llama3)"
            )))
        }
    };
    Ok(RopeConfig { theta, llama3 })
}

/// Typed access to a JSON object's fields, with errors that name the field.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    err: &'a dyn Fn(String) -> ModelError,
}

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.get(key)
            .map(|v| {
                v.as_u64().map(|n| n as usize).ok_or_else(|| {
                    (self.err)(format!("field `{key}`: expected a non-negative integer"))
                })
            })
            .transpose()
    }

    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| (self.err)(format!("missing field `{key}`")))
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        self.get(key)
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| (self.err)(format!("field `{key}`: expected a number")))
            })
            .transpose()
    }

    fn f64(&self, key: &str) -> Result<f64> {
        self.opt_f64(key)?
            .ok_or_else(|| (self.err)(format!("missing field `{key}`")))
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| (self.err)(format!("field `{key}`: expected true or false")))
            })
            .transpose()
    }
}
