//! Exports in the layouts transformers, PEFT and vLLM load: a PEFT adapter folder, or a whole
//! model (`config.json`, safetensors shards with their index, `generation_config.json`), each with
//! the tokenizer files, the chat template it was trained with and a model card. A folder is built
//! beside its target and renamed into place, so an interrupted export leaves the previous one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use pctrain_model::save::{write_atomic, write_safetensors};
use pctrain_model::{Model, ModelError, TrainMode};
use serde_json::{json, Value};

use pctrain_data::TrainedWith;

/// transformers' default `max_shard_size` ("5GB"), in bytes.
pub const MAX_SHARD_BYTES: u64 = 5_000_000_000;

/// Errors while exporting.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// What an export carries besides the weights.
#[derive(Debug, Clone)]
pub struct ExportMeta {
    /// The base model's `config.json`.
    pub config: Value,
    /// The base model's `generation_config.json`, if it has one.
    pub generation_config: Option<Value>,
    /// Tokenizer files by name (`tokenizer.json`, `tokenizer_config.json`, `chat_template.jinja`).
    pub tokenizer_files: Vec<(String, Vec<u8>)>,
    /// The base's hub id or folder, for `adapter_config.json` and the model card.
    pub base: String,
    /// A line for the model card: how it was trained.
    pub summary: String,
    /// The mix and pc template it trained with, written as `pctrain.json` (so that `generate`
    /// strips the pseudo-code its answers start with).
    pub trained_with: TrainedWith,
}

/// How a base or a data file is named where it would be published: a hub id as it is; a local
/// file or folder by its own name, never its path on this machine.
pub fn published_name(spec: &str) -> String {
    let path = Path::new(spec);
    if !path.exists() {
        return spec.to_string();
    }
    path.canonicalize()
        .ok()
        .as_deref()
        .unwrap_or(path)
        .file_name()
        .map_or_else(|| spec.to_string(), |n| n.to_string_lossy().into_owned())
}

/// Writes the adapter of `model` (a LoRA run) as a PEFT adapter folder at `out`.
pub fn export_adapter(model: &Model, meta: &ExportMeta, out: &Path) -> Result<(), ExportError> {
    let adapter = model
        .lora
        .as_ref()
        .ok_or_else(|| ExportError::Invalid("the model has no LoRA adapter to export".into()))?;
    // PEFT resolves `base_model_name_or_path` as a hub id or a folder: no `@revision`.
    let base = pctrain_hub::HubRepo::parse(&meta.base).map_or(meta.base.clone(), |r| r.id);
    build_folder(out, |dir| {
        adapter.save(dir, Some(&base))?;
        write_common(dir, meta, true)
    })
}

/// Writes `model` (its adapter merged in, if it has one) as a model folder at `out`, its weights
/// in `dtype`, in shards of at most `max_shard_bytes`.
pub fn export_merged(
    model: &Model,
    meta: &ExportMeta,
    out: &Path,
    dtype: DType,
    max_shard_bytes: u64,
) -> Result<(), ExportError> {
    let mut merged = Model::new(
        model.config.clone(),
        model.weights.clone(),
        model.lora.clone(),
    );
    merged.merge_lora()?;
    let tensors: Vec<(String, Tensor)> = merged
        .trainable(TrainMode::Full)
        .into_iter()
        .map(|(n, t)| Ok((n, t.to_dtype(dtype)?)))
        .collect::<Result<_, candle_core::Error>>()?;
    build_folder(out, |dir| {
        write_shards(dir, &tensors, max_shard_bytes)?;
        let mut config = meta.config.clone();
        let name = dtype_name(dtype);
        if let Some(obj) = config.as_object_mut() {
            if obj.contains_key("torch_dtype") {
                obj.insert("torch_dtype".into(), name.into());
            }
            obj.insert("dtype".into(), name.into());
        }
        write_json(&dir.join("config.json"), &config)?;
        let generation = meta.generation_config.clone().unwrap_or_else(|| {
            json!({
                "_from_model_config": true,
                "bos_token_id": meta.config.get("bos_token_id"),
                "eos_token_id": meta.config.get("eos_token_id"),
            })
        });
        write_json(&dir.join("generation_config.json"), &generation)?;
        write_common(dir, meta, false)
    })
}

/// The name transformers gives a dtype in `config.json`.
fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    }
}

/// Writes `tensors` as `model.safetensors`, or, when they exceed `max_bytes`, as
/// `model-0000i-of-0000n.safetensors` shards filled in order (a tensor larger than the limit gets
/// a shard of its own) with `model.safetensors.index.json`. Returns the file names.
pub fn write_shards(
    dir: &Path,
    tensors: &[(String, Tensor)],
    max_bytes: u64,
) -> Result<Vec<String>, ExportError> {
    let bytes = |t: &Tensor| (t.elem_count() * t.dtype().size_in_bytes()) as u64;
    let mut shards: Vec<Vec<usize>> = Vec::new();
    let mut size = 0u64;
    for (i, (_, t)) in tensors.iter().enumerate() {
        let b = bytes(t);
        match shards.last_mut() {
            Some(shard) if size + b <= max_bytes => {
                shard.push(i);
                size += b;
            }
            _ => {
                shards.push(vec![i]);
                size = b;
            }
        }
    }
    if shards.len() <= 1 {
        write_safetensors(&dir.join("model.safetensors"), tensors)?;
        return Ok(vec!["model.safetensors".into()]);
    }
    let n = shards.len();
    let mut names = Vec::with_capacity(n);
    let mut weight_map = BTreeMap::new();
    for (k, shard) in shards.iter().enumerate() {
        let name = format!("model-{:05}-of-{n:05}.safetensors", k + 1);
        let part: Vec<(String, Tensor)> = shard.iter().map(|&i| tensors[i].clone()).collect();
        write_safetensors(&dir.join(&name), &part)?;
        for (tensor, _) in &part {
            weight_map.insert(tensor.clone(), name.clone());
        }
        names.push(name);
    }
    let index = json!({
        "metadata": {
            "total_parameters": tensors.iter().map(|(_, t)| t.elem_count() as u64).sum::<u64>(),
            "total_size": tensors.iter().map(|(_, t)| bytes(t)).sum::<u64>(),
        },
        "weight_map": weight_map,
    });
    write_json(&dir.join("model.safetensors.index.json"), &index)?;
    Ok(names)
}

/// Tokenizer files and the model card.
fn write_common(dir: &Path, meta: &ExportMeta, adapter: bool) -> Result<(), ExportError> {
    for (name, bytes) in &meta.tokenizer_files {
        write_atomic(&dir.join(name), bytes)?;
    }
    write_atomic(&dir.join("README.md"), model_card(meta, adapter).as_bytes())?;
    let trained = serde_json::to_value(&meta.trained_with).expect("plain fields serialise");
    write_json(&dir.join(TrainedWith::FILE), &trained)
}

/// A model card with the hub's metadata header.
fn model_card(meta: &ExportMeta, adapter: bool) -> String {
    // The hub's `base_model` names a hub repository, never a local folder.
    let hub_base = (!Path::new(&meta.base).exists())
        .then(|| pctrain_hub::HubRepo::parse(&meta.base).map(|r| r.id))
        .flatten();
    let mut header = String::from("---\n");
    if let Some(id) = &hub_base {
        header += &format!("base_model: {id}\n");
    }
    if adapter {
        header += "library_name: peft\n";
    } else {
        header += "library_name: transformers\n";
    }
    header += "pipeline_tag: text-generation\ntags:\n- pctrain\n- pseudo-code\n";
    if adapter {
        header += "- lora\n";
    }
    header += "---\n\n";
    let what = if adapter { "A LoRA adapter" } else { "A model" };
    let base = published_name(&meta.base);
    format!(
        "{header}# {}\n\n{what} fine-tuned from `{base}` with pctrain on instructions re-expressed \
         as pseudo-code.\n\n{}\n",
        out_title(&base),
        meta.summary
    )
}

fn out_title(base: &str) -> String {
    let name = base.rsplit('/').next().unwrap_or(base);
    format!("{name} (pctrain)")
}

/// Writes pretty JSON (two-space indent, as transformers writes) atomically.
fn write_json(path: &Path, value: &Value) -> Result<(), ExportError> {
    let text = serde_json::to_string_pretty(value).expect("a JSON value serialises") + "\n";
    write_atomic(path, text.as_bytes())?;
    Ok(())
}

/// Builds a folder with `fill` in a sibling temporary folder, then swaps it in for `out`.
fn build_folder(
    out: &Path,
    fill: impl FnOnce(&Path) -> Result<(), ExportError>,
) -> Result<(), ExportError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ExportError::Io { path, source }
    };
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    let name = out
        .file_name()
        .ok_or_else(|| ExportError::Invalid(format!("{}: not a folder name", out.display())))?
        .to_string_lossy()
        .into_owned();
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    // Left by an export that stopped half-way (process ids repeat).
    for stale in [&tmp, &old] {
        if stale.exists() {
            std::fs::remove_dir_all(stale).map_err(io(stale))?;
        }
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let had_old = out.exists();
    if had_old {
        std::fs::rename(out, &old).map_err(io(out))?;
    }
    if let Err(e) = std::fs::rename(&tmp, out) {
        // Put the previous export back.
        if had_old {
            let _ = std::fs::rename(&old, out);
        }
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(io(out)(e));
    }
    if had_old {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn shards_split_at_the_limit_with_a_sorted_index() {
        let dir = tempfile::tempdir().unwrap();
        let t = |n: usize| Tensor::zeros(n, DType::F32, &Device::Cpu).unwrap();
        // 400, 400, 1200 (over the limit alone), 40 bytes with a 1000-byte limit.
        let tensors = vec![
            ("b.weight".to_string(), t(100)),
            ("a.weight".to_string(), t(100)),
            ("c.weight".to_string(), t(300)),
            ("d.weight".to_string(), t(10)),
        ];
        let names = write_shards(dir.path(), &tensors, 1000).unwrap();
        assert_eq!(
            names,
            [
                "model-00001-of-00003.safetensors",
                "model-00002-of-00003.safetensors",
                "model-00003-of-00003.safetensors"
            ]
        );
        let text =
            std::fs::read_to_string(dir.path().join("model.safetensors.index.json")).unwrap();
        let index: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(index["metadata"]["total_size"], 2040);
        let keys: Vec<&String> = index["weight_map"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["a.weight", "b.weight", "c.weight", "d.weight"]);
        assert_eq!(
            index["weight_map"]["d.weight"],
            "model-00003-of-00003.safetensors"
        );
        assert!(
            text.contains("\n  \"metadata\": {\n    \"total_parameters\""),
            "{text}"
        );
        let single = tempfile::tempdir().unwrap();
        let names = write_shards(single.path(), &tensors, MAX_SHARD_BYTES).unwrap();
        assert_eq!(names, ["model.safetensors"]);
        assert!(!single.path().join("model.safetensors.index.json").exists());
    }

    #[test]
    fn a_failed_export_leaves_the_previous_folder() {
        let parent = tempfile::tempdir().unwrap();
        let out = parent.path().join("export");
        build_folder(&out, |d| {
            std::fs::write(d.join("a"), "1").unwrap();
            Ok(())
        })
        .unwrap();
        let failed = build_folder(&out, |d| {
            std::fs::write(d.join("a"), "2").unwrap();
            Err(ExportError::Invalid("disk full".into()))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read_to_string(out.join("a")).unwrap(), "1");
        let left: Vec<_> = std::fs::read_dir(parent.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "a temporary folder was left behind");
    }
}
