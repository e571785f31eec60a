//! Checkpoints: what trains, the optimizer's moments and step, and the data position, in
//! `checkpoint-NNNNNN/` folders under the run's output. A checkpoint is written into a temporary
//! folder and renamed into place, so a crash while saving leaves the previous one usable.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use pctrain_data::Position;
use pctrain_model::save::write_safetensors;
use pctrain_model::{Model, TrainMode};
use serde::{Deserialize, Serialize};

use crate::optim::{AdamW, AdamWConfig};

/// Errors while saving or loading a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error(transparent)]
    Model(#[from] pctrain_model::ModelError),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

/// `state.json` of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct State {
    /// Optimizer steps taken.
    step: u64,
    /// The next row the loader yields.
    position: Position,
    mode: String,
    adamw: AdamWConfig,
    /// Processes of the run that wrote it (checkpoints from before runs of several have none).
    #[serde(default = "one")]
    ranks: usize,
}

fn one() -> usize {
    1
}

fn mode_name(mode: TrainMode) -> &'static str {
    match mode {
        TrainMode::Lora => "lora",
        TrainMode::Full => "full",
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Saves a checkpoint of `model`'s trainable tensors, `optimizer`, `position` and the run's
/// `settings` (JSON text) into `output/checkpoint-{step}`, then removes all but the newest
/// `keep_last` (0 keeps all), recording the `ranks` of the run. Refuses weights that are not
/// finite; on any failure the folder being written is removed and the checkpoints already there
/// are untouched.
#[allow(clippy::too_many_arguments)]
pub fn save_checkpoint(
    output: &Path,
    model: &Model,
    mode: TrainMode,
    optimizer: &AdamW,
    position: Position,
    settings: &str,
    keep_last: usize,
    ranks: usize,
) -> Result<PathBuf, CheckpointError> {
    remove_unfinished(output)?;
    let name = format!("checkpoint-{:06}", optimizer.step);
    let target = output.join(&name);
    let tmp = output.join(format!(".{name}{TMP_MARK}{}", std::process::id()));
    let state = State {
        step: optimizer.step,
        position,
        mode: mode_name(mode).into(),
        adamw: optimizer.config,
        ranks,
    };
    let written = write_into(&tmp, model, mode, optimizer, &state, settings);
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if target.exists() {
        std::fs::remove_dir_all(&target).map_err(io(&target))?;
    }
    std::fs::rename(&tmp, &target).map_err(io(&target))?;
    std::fs::File::open(output)
        .and_then(|d| d.sync_all())
        .map_err(io(output))?;
    if keep_last > 0 {
        let all = checkpoints(output)?;
        for old in &all[..all.len().saturating_sub(keep_last)] {
            std::fs::remove_dir_all(old).map_err(io(old))?;
        }
    }
    Ok(target)
}

/// What names a checkpoint folder still being written: `.checkpoint-NNNNNN.tmp-PID`.
const TMP_MARK: &str = ".tmp-";

/// Writes a checkpoint's files into the new folder `dir`.
fn write_into(
    dir: &Path,
    model: &Model,
    mode: TrainMode,
    optimizer: &AdamW,
    state: &State,
    settings: &str,
) -> Result<(), CheckpointError> {
    if optimizer.shard.is_some() {
        return Err(CheckpointError::Invalid {
            path: dir.to_path_buf(),
            message: "a checkpoint holds the whole optimizer state: gather the shards first".into(),
        });
    }
    let params = model.trainable(mode);
    for (i, (n, t)) in params.iter().enumerate() {
        // A sum carries NaN and infinity through (a max may skip NaN).
        let finite = |t: &Tensor| -> Result<bool, CheckpointError> {
            Ok(t.to_dtype(DType::F32)?
                .abs()?
                .sum_all()?
                .to_scalar::<f32>()?
                .is_finite())
        };
        let master_ok = match &optimizer.master[i] {
            Some(m) => finite(m)?,
            None => true,
        };
        if !(finite(t)? && master_ok) {
            return Err(CheckpointError::Invalid {
                path: dir.to_path_buf(),
                message: format!("`{n}` holds NaN or infinite values; not saved"),
            });
        }
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut tensors = Vec::with_capacity(params.len() * 3);
    for (i, (n, t)) in params.iter().enumerate() {
        // A parameter with an f32 master copy is saved at full precision.
        let value = match &optimizer.master[i] {
            Some(master) => master.clone(),
            None => t.to_dtype(DType::F32)?,
        };
        tensors.push((format!("param.{n}"), value));
        tensors.push((format!("adam_m.{n}"), optimizer.m[i].clone()));
        tensors.push((format!("adam_v.{n}"), optimizer.v[i].clone()));
    }
    write_safetensors(&dir.join("trainable.safetensors"), &tensors)?;
    let text = serde_json::to_string_pretty(state).expect("a state serialises") + "\n";
    pctrain_model::save::write_atomic(&dir.join("state.json"), text.as_bytes())?;
    pctrain_model::save::write_atomic(&dir.join("settings.json"), settings.as_bytes())?;
    Ok(())
}

/// Removes checkpoint folders a crash left half-written.
pub fn remove_unfinished(output: &Path) -> Result<(), CheckpointError> {
    if !output.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(output).map_err(io(output))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".checkpoint-") && name.contains(TMP_MARK) {
            let path = entry.path();
            std::fs::remove_dir_all(&path).map_err(io(&path))?;
        }
    }
    Ok(())
}

/// The checkpoint folders of a run, oldest first.
pub fn checkpoints(output: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    if !output.is_dir() {
        return Ok(Vec::new());
    }
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(output)
        .map_err(io(output))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("checkpoint-")?.parse().ok()?;
            e.path()
                .join("state.json")
                .is_file()
                .then_some((step, e.path()))
        })
        .collect();
    found.sort();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// The processes of the run that wrote the checkpoint in `dir`: a run resumes from it with as many
/// (its rows per step and the ranks' shares of them depend on it).
pub fn checkpoint_ranks(dir: &Path) -> Result<usize, CheckpointError> {
    Ok(read_state(dir)?.ranks)
}

fn read_state(dir: &Path) -> Result<State, CheckpointError> {
    let state_path = dir.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(io(&state_path))?;
    serde_json::from_str(&text).map_err(|e| CheckpointError::Invalid {
        path: dir.to_path_buf(),
        message: format!("state.json: {e}"),
    })
}

/// Loads a checkpoint into `model` (checking every name and shape) and returns the optimizer and
/// the data position to continue from.
pub fn load_checkpoint(
    dir: &Path,
    model: &mut Model,
    mode: TrainMode,
) -> Result<(AdamW, Position), CheckpointError> {
    let invalid = |message: String| CheckpointError::Invalid {
        path: dir.to_path_buf(),
        message,
    };
    let state = read_state(dir)?;
    if state.mode != mode_name(mode) {
        return Err(invalid(format!(
            "a {} checkpoint cannot resume a {} run",
            state.mode,
            mode_name(mode)
        )));
    }
    let file = dir.join("trainable.safetensors");
    let mut tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(&file, &Device::Cpu).map_err(|e| invalid(e.to_string()))?;
    let params = model.trainable(mode);
    let device = model.device().clone();
    let (mut values, mut m, mut v, mut master) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (n, t) in &params {
        let mut take = |prefix: &str| -> Result<Tensor, CheckpointError> {
            let key = format!("{prefix}.{n}");
            let found = tensors.remove(&key).ok_or_else(|| {
                invalid(format!(
                    "no tensor `{key}`: a checkpoint of another model or adapter?"
                ))
            })?;
            if found.dims() != t.dims() {
                return Err(invalid(format!(
                    "tensor `{key}` has shape {:?}, the model needs {:?}: a checkpoint of another model?",
                    found.dims(),
                    t.dims()
                )));
            }
            Ok(found.to_device(&device)?)
        };
        let value = take("param")?;
        master.push((t.dtype() != DType::F32).then(|| value.clone()));
        values.push(value.to_dtype(t.dtype())?);
        m.push(take("adam_m")?);
        v.push(take("adam_v")?);
    }
    if let Some(extra) = tensors.keys().next() {
        return Err(invalid(format!(
            "tensor `{extra}` belongs to no trainable tensor of this model"
        )));
    }
    model.set_trainable(mode, values);
    let optimizer = AdamW {
        shard: None,
        config: state.adamw,
        step: state.step,
        m,
        v,
        master,
    };
    Ok((optimizer, state.position))
}
