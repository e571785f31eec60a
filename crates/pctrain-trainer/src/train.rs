//! The training loop: rows from the loader, grouped into micro-batches and optimizer steps.

use pctrain_data::{Encoded, Loader, LoaderConfig, PackedRow, Position};
use pctrain_model::{Batch, Model, ModelError, StepOptions};

use pctrain_dist::World;

use crate::optim::{AdamW, AdamWConfig};
use crate::ranks::{my_rows, rank_gradients, rank_optimizer, rank_shard};
use crate::schedule::Schedule;
use crate::step::{optimizer_step, StepError, StepReport};

/// How a run trains.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub loader: LoaderConfig,
    /// Rows per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Optimizer steps to run (the schedule spans them); the loader's epochs may end first.
    pub max_steps: u64,
    pub schedule: Schedule,
    pub adamw: AdamWConfig,
    /// Global gradient norm bound; 0 turns clipping off.
    pub clip_norm: f64,
    /// ZeRO stage: 0 keeps the whole optimizer state on every rank; 1 shards it across them;
    /// 2 shards the summed gradients too.
    pub zero_stage: u8,
    pub step: StepOptions,
}

/// Where a run stands after a step, for the caller to report or checkpoint.
pub struct Progress<'a> {
    pub model: &'a Model,
    pub optimizer: &'a AdamW,
    /// Bytes of the gradient buffers this rank keeps from step to step.
    pub gradient_bytes: usize,
    /// The next row the loader yields.
    pub position: Position,
}

/// Where a run ended: every step's report, and the optimizer and data position to checkpoint.
pub struct Finished {
    pub reports: Vec<StepReport>,
    pub optimizer: AdamW,
    pub position: Position,
}

/// Trains `model` on `samples` until the optimizer has taken `cfg.max_steps` steps (or the
/// loader's epochs run out), from `resume` (an optimizer and data position from a checkpoint) or
/// from the start, calling `on_step` after each step. Every rank of `world` reads the same
/// seeded rows and trains on its own `cfg.batch_size` of each micro-batch's
/// `world.size() * cfg.batch_size` ([`my_rows`]); the position is that of the whole world.
pub fn train<E: From<StepError>>(
    model: &mut Model,
    samples: &[Encoded],
    pad_id: u32,
    cfg: &TrainConfig,
    resume: Option<(AdamW, Position)>,
    world: &World,
    mut on_step: impl FnMut(&StepReport, Progress) -> Result<(), E>,
) -> Result<Finished, E> {
    let model_err = |e: candle_core::Error| StepError::from(ModelError::from(e));
    let (resumed, start) = match resume {
        Some((o, p)) => (Some(o), p),
        None => (None, Position::default()),
    };
    let shard = rank_shard(model, cfg.step.mode, world, cfg.zero_stage).map_err(model_err)?;
    let mut optimizer = {
        let params = model.trainable(cfg.step.mode);
        let refs: Vec<_> = params.iter().map(|(_, t)| t).collect();
        rank_optimizer(cfg.adamw, &refs, resumed, shard).map_err(model_err)?
    };
    let mut grads = rank_gradients(model, cfg.step.mode, &optimizer).map_err(model_err)?;
    let mut loader = Loader::new(samples, cfg.loader.clone(), pad_id, start)
        .map_err(|e| StepError::from(ModelError::Input(e.to_string())))?;
    let mut reports = Vec::new();
    while optimizer.step < cfg.max_steps {
        let mut micro = Vec::with_capacity(cfg.grad_accum);
        let batch_size = cfg.batch_size.max(1);
        let mut any_rows = false;
        for _ in 0..cfg.grad_accum.max(1) {
            let rows: Vec<PackedRow> = loader
                .by_ref()
                .take(batch_size * world.size())
                .map(|(_, r)| r)
                .collect();
            if rows.is_empty() {
                break;
            }
            any_rows = true;
            let mine = my_rows(rows, world, batch_size);
            if !mine.is_empty() {
                micro.push(collate(&mine, cfg.loader.seq_len));
            }
        }
        if !any_rows {
            break;
        }
        let step = StepOptions {
            dropout_seed: cfg.step.dropout_seed
                ^ optimizer.step.wrapping_mul(0x2545_f491_4f6c_dd1d),
            ..cfg.step
        };
        let report = optimizer_step(
            model,
            &micro,
            step,
            &mut optimizer,
            &mut grads,
            &cfg.schedule,
            cfg.clip_norm,
            world,
        )?;
        on_step(
            &report,
            Progress {
                model,
                optimizer: &optimizer,
                gradient_bytes: grads.held_bytes(),
                position: loader.position(),
            },
        )?;
        reports.push(report);
    }
    Ok(Finished {
        reports,
        optimizer,
        position: loader.position(),
    })
}

/// Stacks packed rows into one `[B, T]` batch.
pub fn collate(rows: &[PackedRow], seq_len: usize) -> Batch {
    let mut batch = Batch {
        rows: rows.len(),
        seq_len,
        input_ids: Vec::with_capacity(rows.len() * seq_len),
        position_ids: Vec::with_capacity(rows.len() * seq_len),
        segment_ids: Vec::with_capacity(rows.len() * seq_len),
        labels: Vec::with_capacity(rows.len() * seq_len),
    };
    for row in rows {
        batch.input_ids.extend(&row.input_ids);
        batch.position_ids.extend(&row.position_ids);
        batch.segment_ids.extend(&row.segment_ids);
        batch.labels.extend(&row.labels);
    }
    batch
}
