//! Base weights from `model.safetensors` or its shards (`model.safetensors.index.json`),
//! memory-mapped and converted to the run's dtype. Pickled checkpoints are refused.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::params::{LayerParam, Param};

/// The weights of one decoder layer; linear weights are `[out_features, in_features]`.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    /// `[hidden]`
    pub input_norm: Tensor,
    /// `[heads * head_dim, hidden]`
    pub q_proj: Tensor,
    /// `[kv_heads * head_dim, hidden]`
    pub k_proj: Tensor,
    /// `[kv_heads * head_dim, hidden]`
    pub v_proj: Tensor,
    /// `[hidden, heads * head_dim]`
    pub o_proj: Tensor,
    /// `[hidden]`
    pub post_attention_norm: Tensor,
    /// `[intermediate, hidden]`
    pub gate_proj: Tensor,
    /// `[intermediate, hidden]`
    pub up_proj: Tensor,
    /// `[hidden, intermediate]`
    pub down_proj: Tensor,
}

impl LayerWeights {
    /// A layer's weights made one by one, in [`LayerParam::ALL`]'s order.
    pub fn try_from_fn<E>(
        mut f: impl FnMut(LayerParam) -> std::result::Result<Tensor, E>,
    ) -> std::result::Result<Self, E> {
        Ok(LayerWeights {
            input_norm: f(LayerParam::InputNorm)?,
            q_proj: f(LayerParam::Q)?,
            k_proj: f(LayerParam::K)?,
            v_proj: f(LayerParam::V)?,
            o_proj: f(LayerParam::O)?,
            post_attention_norm: f(LayerParam::PostNorm)?,
            gate_proj: f(LayerParam::Gate)?,
            up_proj: f(LayerParam::Up)?,
            down_proj: f(LayerParam::Down)?,
        })
    }

    pub fn get(&self, w: LayerParam) -> &Tensor {
        match w {
            LayerParam::InputNorm => &self.input_norm,
            LayerParam::Q => &self.q_proj,
            LayerParam::K => &self.k_proj,
            LayerParam::V => &self.v_proj,
            LayerParam::O => &self.o_proj,
            LayerParam::PostNorm => &self.post_attention_norm,
            LayerParam::Gate => &self.gate_proj,
            LayerParam::Up => &self.up_proj,
            LayerParam::Down => &self.down_proj,
        }
    }

    pub fn get_mut(&mut self, w: LayerParam) -> &mut Tensor {
        match w {
            LayerParam::InputNorm => &mut self.input_norm,
            LayerParam::Q => &mut self.q_proj,
            LayerParam::K => &mut self.k_proj,
            LayerParam::V => &mut self.v_proj,
            LayerParam::O => &mut self.o_proj,
            LayerParam::PostNorm => &mut self.post_attention_norm,
            LayerParam::Gate => &mut self.gate_proj,
            LayerParam::Up => &mut self.up_proj,
            LayerParam::Down => &mut self.down_proj,
        }
    }

    /// Each tensor with its name within `model.layers.{i}`, in [`LayerParam::ALL`]'s order.
    pub fn named(&self) -> [(&'static str, &Tensor); 9] {
        LayerParam::ALL.map(|w| (w.name(), self.get(w)))
    }
}

/// All base weights of a model.
#[derive(Debug, Clone)]
pub struct ModelWeights {
    /// `[vocab, hidden]`
    pub embed_tokens: Tensor,
    pub layers: Vec<LayerWeights>,
    /// `[hidden]`
    pub norm: Tensor,
    /// `[vocab, hidden]`; `None` when tied to `embed_tokens`.
    pub lm_head: Option<Tensor>,
}

impl ModelWeights {
    /// Loads the weights in `dir` as `dtype` on `device`, checking every name and shape.
    pub fn load(dir: &Path, config: &ModelConfig, dtype: DType, device: &Device) -> Result<Self> {
        let files = weight_files(dir)?;
        // SAFETY: the files are mapped read-only; like every safetensors loader, this relies on
        // nobody truncating or rewriting them while the model loads.
        let st = unsafe { MmapedSafetensors::multi(&files) }.map_err(|e| ModelError::Weights {
            path: dir.to_path_buf(),
            message: format!("cannot read safetensors: {e}"),
        })?;
        let loader = Loader {
            st: &st,
            dir,
            dtype,
            device,
        };
        let (h, v) = (config.hidden_size, config.vocab_size);
        let layers = (0..config.num_layers)
            .map(|l| {
                LayerWeights::try_from_fn(|w| {
                    loader.get(&Param::Layer(l, w).name(), &w.shape(config))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(loader.get(&Param::LmHead.name(), &[v, h])?)
        };
        Ok(ModelWeights {
            embed_tokens: loader.get(&Param::Embed.name(), &[v, h])?,
            layers,
            norm: loader.get(&Param::Norm.name(), &[h])?,
            lm_head,
        })
    }

    /// The output projection: `lm_head`, or the embeddings when tied. `[vocab, hidden]`
    pub fn output(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }
}

struct Loader<'a> {
    st: &'a MmapedSafetensors,
    dir: &'a Path,
    dtype: DType,
    device: &'a Device,
}

impl Loader<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let err = |message: String| ModelError::Weights {
            path: self.dir.to_path_buf(),
            message,
        };
        let view = self
            .st
            .get(name)
            .map_err(|_| err(format!("missing tensor `{name}`")))?;
        if view.shape() != shape {
            return Err(err(format!(
                "tensor `{name}` has shape {:?}, expected {shape:?}",
                view.shape()
            )));
        }
        // f32 for the CPU kernels: straight from the file into storage that starts a cache line.
        if self.device.is_cpu()
            && self.dtype == DType::F32
            && view.dtype() == safetensors::Dtype::F32
        {
            return Ok(crate::cpu::aligned::aligned_from_le_bytes(
                view.data(),
                shape,
            )?);
        }
        let t = self
            .st
            .load(name, self.device)
            .map_err(|e| err(format!("tensor `{name}`: {e}")))?;
        Ok(crate::cpu::aligned::aligned_tensor(
            t.to_dtype(self.dtype)?,
        )?)
    }
}

/// The safetensors files of a model folder: `model.safetensors`, or the shards its index names.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let err = |message: String| ModelError::Weights {
        path: dir.to_path_buf(),
        message,
    };
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|source| ModelError::Io {
            path: index.clone(),
            source,
        })?;
        let v: Value = serde_json::from_str(&text).map_err(|e| ModelError::Weights {
            path: index.clone(),
            message: format!("malformed JSON: {e}"),
        })?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| ModelError::Weights {
                path: index.clone(),
                message: "missing `weight_map`".into(),
            })?;
        let shards: BTreeSet<&str> = map.values().filter_map(Value::as_str).collect();
        let files: Vec<PathBuf> = shards.iter().map(|s| dir.join(s)).collect();
        if let Some(missing) = files.iter().find(|f| !f.is_file()) {
            return Err(err(format!(
                "shard {} named by model.safetensors.index.json is missing",
                missing.display()
            )));
        }
        return Ok(files);
    }
    let pickled = std::fs::read_dir(dir)
        .map_err(|source| ModelError::Io {
            path: dir.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.ends_with(".bin") || n.ends_with(".pt") || n.ends_with(".pth"));
    match pickled {
        Some(name) => Err(err(format!(
            "{name} is a pickled PyTorch checkpoint, which pctrain refuses to load (it can run \
             code); only safetensors load. Convert it with transformers' save_pretrained(..., \
             safe_serialization=True)"
        ))),
        None => Err(err(
            "no model.safetensors or model.safetensors.index.json".into()
        )),
    }
}
