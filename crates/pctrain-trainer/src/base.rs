//! A base model from a local folder or a hub id: config, weights and tokenizer.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use pctrain_data::TextTokenizer;
use pctrain_hub::{self as hub, HubRepo};
use pctrain_model::{Model, ModelConfig, ModelWeights};

/// Errors while finding or loading a base model.
#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    #[error(transparent)]
    Data(#[from] pctrain_data::DataError),
    #[error(transparent)]
    Model(#[from] pctrain_model::ModelError),
    #[error(transparent)]
    Hub(#[from] pctrain_hub::HubError),
    #[error("{0}: no such model folder, and not a hub id (owner/name)")]
    NotFound(String),
    #[error("{path}: {message}")]
    Index { path: PathBuf, message: String },
}

/// A model and the tokenizer that came with it.
pub struct BaseModel {
    pub dir: PathBuf,
    pub model: Model,
    pub tokenizer: TextTokenizer,
}

/// Loads `spec` (a folder, or a hub id whose files are fetched into the Hugging Face cache).
pub fn load_base(spec: &str, dtype: DType, device: &Device) -> Result<BaseModel, BaseError> {
    let dir = resolve(spec)?;
    let config = ModelConfig::load(&dir)?;
    let weights = ModelWeights::load(&dir, &config, dtype, device)?;
    let tokenizer = TextTokenizer::load(dir.to_str().unwrap_or(spec))?;
    Ok(BaseModel {
        model: Model::new(config, weights, None),
        tokenizer,
        dir,
    })
}

/// A local folder as it is; a hub id downloaded file by file into the cache's snapshot folder.
fn resolve(spec: &str) -> Result<PathBuf, BaseError> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let repo = HubRepo::parse(spec).ok_or_else(|| BaseError::NotFound(spec.to_string()))?;
    let config = hub::fetch(&repo, "config.json", true)?.expect("required file");
    for optional in [
        "tokenizer_config.json",
        "chat_template.jinja",
        "generation_config.json",
    ] {
        hub::fetch(&repo, optional, false)?;
    }
    hub::fetch(&repo, "tokenizer.json", true)?;
    match hub::fetch(&repo, "model.safetensors.index.json", false)? {
        Some(index) => {
            for shard in shard_names(&index)? {
                hub::fetch(&repo, &shard, true)?;
            }
        }
        None => {
            hub::fetch(&repo, "model.safetensors", true)?;
        }
    }
    Ok(config
        .parent()
        .expect("a cached file has a snapshot folder")
        .to_path_buf())
}

/// The shard files a `model.safetensors.index.json` names, sorted, each once.
fn shard_names(index: &Path) -> Result<Vec<String>, BaseError> {
    let err = |message: String| BaseError::Index {
        path: index.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(index).map_err(|e| err(e.to_string()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| err(format!("malformed JSON: {e}")))?;
    let map = v["weight_map"]
        .as_object()
        .ok_or_else(|| err("missing `weight_map`".into()))?;
    let mut shards: Vec<String> = map
        .values()
        .map(|s| {
            s.as_str()
                .map(String::from)
                .ok_or_else(|| err("a shard name is not a string".into()))
        })
        .collect::<Result<_, _>>()?;
    shards.sort();
    shards.dedup();
    Ok(shards)
}
