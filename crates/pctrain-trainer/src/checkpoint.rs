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

use crate::optim::{empty_span, AdamW, AdamWConfig, Shard};
use crate::World;

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
    /// Files the optimizer's moments are sharded into, one per rank ([`shard_file`]); 0 when
    /// they are whole, in `trainable.safetensors`.
    #[serde(default)]
    optimizer_shards: usize,
}

/// The file rank `rank` of `ranks` writes its span of the moments into: `adam_m.NAME` and
/// `adam_v.NAME` (1-D) for each trainable tensor its span covers part of.
fn shard_file(rank: usize, ranks: usize) -> String {
    format!("optimizer-{rank:05}-of-{ranks:05}.safetensors")
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
/// `keep_last` (0 keeps all), recording the ranks of `world`. Every rank calls it: rank 0 writes
/// the weights and the state, and with the optimizer sharded each rank writes its shard
/// ([`shard_file`]). Refuses weights that are not finite; on any failure (on any rank) the folder
/// being written is removed and the checkpoints already there are untouched. One of the same
/// step takes the new one's place in one step (on Linux; see [`pctrain_core::fs::replace_dir`]).
#[allow(clippy::too_many_arguments)]
pub fn save_checkpoint(
    output: &Path,
    model: &Model,
    mode: TrainMode,
    optimizer: &AdamW,
    position: Position,
    settings: &str,
    keep_last: usize,
    world: &World,
) -> Result<PathBuf, CheckpointError> {
    let name = format!("checkpoint-{:06}", optimizer.step);
    let target = output.join(&name);
    let pid = world.first_rank_value(std::process::id());
    let tmp = output.join(format!(".{name}{TMP_MARK}{pid}"));
    let sharded = optimizer.shard.is_some();
    let state = State {
        step: optimizer.step,
        position,
        mode: mode_name(mode).into(),
        adamw: optimizer.config,
        ranks: world.size(),
        optimizer_shards: if sharded { world.size() } else { 0 },
    };
    // Rank 0 makes the folder, then every rank with a shard writes it there.
    let mut written = Ok(());
    if world.is_first() {
        written = remove_unfinished(output)
            .and_then(|()| write_into(&tmp, model, mode, optimizer, &state, settings));
    }
    let mut failed = world.any(written.is_err());
    if !failed && sharded {
        let file = tmp.join(shard_file(world.rank(), world.size()));
        written = write_shard(&file, model, mode, optimizer);
        failed = world.any(written.is_err());
    }
    if failed {
        if world.is_first() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        written?;
        return Err(CheckpointError::Invalid {
            path: tmp,
            message: "another rank failed to write its part; it reports why".into(),
        });
    }
    if !world.is_first() {
        return Ok(target);
    }
    // One of the same step already there (the command line removes later checkpoints when it
    // resumes; a caller of this function may not) is replaced in one step; left under the
    // temporary name, it goes with the unfinished folders.
    pctrain_core::fs::replace_dir(&tmp, &target).map_err(io(&target))?;
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
        // A parameter with an f32 master copy is saved at full precision (a sharded master
        // copy, by its shards).
        let value = match (&optimizer.master[i], &optimizer.shard) {
            (Some(master), None) => master.clone(),
            _ => t.to_dtype(DType::F32)?,
        };
        tensors.push((format!("param.{n}"), value));
        if optimizer.shard.is_none() {
            tensors.push((format!("adam_m.{n}"), optimizer.m[i].clone()));
            tensors.push((format!("adam_v.{n}"), optimizer.v[i].clone()));
        }
    }
    write_safetensors(&dir.join("trainable.safetensors"), &tensors)?;
    let text = serde_json::to_string_pretty(state).expect("a state serialises") + "\n";
    pctrain_model::save::write_atomic(&dir.join("state.json"), text.as_bytes())?;
    pctrain_model::save::write_atomic(&dir.join("settings.json"), settings.as_bytes())?;
    Ok(())
}

/// Writes this rank's span of the moments (and of the f32 master copies) into `file` (in a folder
/// rank 0 made).
fn write_shard(
    file: &Path,
    model: &Model,
    mode: TrainMode,
    optimizer: &AdamW,
) -> Result<(), CheckpointError> {
    let shard = optimizer.shard.as_ref().expect("a sharded optimizer");
    let mut tensors = Vec::new();
    for (i, (n, _)) in model.trainable(mode).iter().enumerate() {
        if !shard.ranges[i].is_empty() {
            tensors.push((format!("adam_m.{n}"), optimizer.m[i].clone()));
            tensors.push((format!("adam_v.{n}"), optimizer.v[i].clone()));
            if let Some(master) = &optimizer.master[i] {
                tensors.push((format!("master.{n}"), master.clone()));
            }
        }
    }
    Ok(write_safetensors(file, &tensors)?)
}

/// One trainable tensor's span (or the whole of it) of the optimizer's state, read from shards.
#[derive(Debug, Clone, Default)]
struct Pieces {
    m: Vec<f32>,
    v: Vec<f32>,
    /// Empty for an f32 parameter, which has no master copy.
    master: Vec<f32>,
}

/// Appends the state that the shard `file` holds (the span `of` of the trainable tensors
/// `names`) to each tensor's `pieces`.
fn read_shard(
    file: &Path,
    names: &[&str],
    of: &Shard,
    pieces: &mut [Pieces],
) -> Result<(), CheckpointError> {
    let invalid = |message: String| CheckpointError::Invalid {
        path: file.to_path_buf(),
        message,
    };
    let mut tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(file, &Device::Cpu).map_err(|e| invalid(e.to_string()))?;
    for ((name, r), p) in names.iter().zip(&of.ranges).zip(pieces.iter_mut()) {
        if r.is_empty() {
            continue;
        }
        let mut take = |prefix: &str, out: &mut Vec<f32>, needed: bool| {
            let key = format!("{prefix}.{name}");
            let Some(t) = tensors.remove(&key) else {
                if !needed {
                    return Ok(());
                }
                return Err(invalid(format!(
                    "no tensor `{key}`: a shard of another model or of another number of ranks?"
                )));
            };
            if t.dims() != [r.len()] {
                return Err(invalid(format!(
                    "tensor `{key}` has shape {:?}, this shard's span of it is [{}]",
                    t.dims(),
                    r.len()
                )));
            }
            out.extend(t.to_dtype(DType::F32)?.to_vec1::<f32>()?);
            Ok(())
        };
        take("adam_m", &mut p.m, true)?;
        take("adam_v", &mut p.v, true)?;
        take("master", &mut p.master, false)?;
    }
    if let Some(extra) = tensors.keys().next() {
        return Err(invalid(format!(
            "tensor `{extra}` is in no span of this shard"
        )));
    }
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
/// the data position to continue from. The optimizer's moments are this rank's span alone when
/// the checkpoint holds them in as many shards as `world` has ranks and the run is `sharded`
/// (each rank then reads its own file); else they are whole, gathered from the shard files if
/// need be.
pub fn load_checkpoint(
    dir: &Path,
    model: &mut Model,
    mode: TrainMode,
    world: &World,
    sharded: bool,
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
        // A narrower parameter's f32 master copy: the saved value, or (sharded) from the shards.
        let whole_master = t.dtype() != DType::F32 && state.optimizer_shards == 0;
        master.push(whole_master.then(|| value.clone()));
        values.push(value.to_dtype(t.dtype())?);
        if state.optimizer_shards == 0 {
            m.push(take("adam_m")?);
            v.push(take("adam_v")?);
        }
    }
    if let Some(extra) = tensors.keys().next() {
        return Err(invalid(format!(
            "tensor `{extra}` belongs to no trainable tensor of this model"
        )));
    }
    let mut shard = None;
    if state.optimizer_shards > 0 {
        let sizes: Vec<usize> = params.iter().map(|(_, t)| t.elem_count()).collect();
        let names: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
        let ranks = state.optimizer_shards;
        let mine = sharded && ranks == world.size();
        let files: Vec<usize> = if mine {
            vec![world.rank()]
        } else {
            (0..ranks).collect()
        };
        let mut pieces = vec![Pieces::default(); sizes.len()];
        for r in files {
            let of = Shard::of(&sizes, r, ranks);
            read_shard(&dir.join(shard_file(r, ranks)), &names, &of, &mut pieces)?;
        }
        for (i, (p, (n, t))) in pieces.into_iter().zip(&params).enumerate() {
            // A span stays 1-D; a whole one takes its tensor's shape.
            let tensor_of = |p: Vec<f32>| -> candle_core::Result<Tensor> {
                let n = p.len();
                if mine && n == 0 {
                    return empty_span();
                }
                let p = Tensor::from_vec(p, n, &device)?;
                if mine {
                    Ok(p)
                } else {
                    p.reshape(t.shape())
                }
            };
            if t.dtype() != DType::F32 {
                if p.master.len() != p.m.len() {
                    return Err(invalid(format!(
                        "the shards hold no f32 master copy of `{n}`, which the {:?} model needs",
                        t.dtype()
                    )));
                }
                master[i] = Some(tensor_of(p.master)?);
            }
            m.push(tensor_of(p.m)?);
            v.push(tensor_of(p.v)?);
        }
        if mine {
            shard = Some(Shard::of(&sizes, world.rank(), ranks));
        }
    }
    model.set_trainable(mode, values);
    let optimizer = AdamW {
        shard,
        config: state.adamw,
        step: state.step,
        m,
        v,
        master,
    };
    Ok((optimizer, state.position))
}
