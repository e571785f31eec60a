//! One optimizer step: gradients of every micro-batch, normalised by the trained tokens of the whole
//! accumulated batch, clipped by global norm, then an AdamW update at the schedule's rate.

use candle_core::Tensor;
use pctrain_model::layers::loss::LossSum;
use pctrain_model::{Batch, Gradients, Model, Part, StepOptions};

use pctrain_dist::{Summed, World};

use crate::optim::{clip_grad_norm, clip_sharded_grad_norm, AdamW, Shard};
use crate::ranks::{share_updates, sum_gradients};
use crate::schedule::Schedule;

/// Why an optimizer step did not happen.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Model(#[from] pctrain_model::ModelError),
    /// The loss or the gradient is NaN or infinite; the weights were left as they were.
    #[error("step {step}: the loss is {loss} and the gradient norm {grad_norm}; the step was not applied")]
    NonFinite {
        step: u64,
        loss: f64,
        grad_norm: f64,
    },
}

impl From<candle_core::Error> for StepError {
    fn from(e: candle_core::Error) -> Self {
        StepError::Model(e.into())
    }
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// Mean loss per trained token over the accumulated batch.
    pub loss: f64,
    /// Trained tokens of the accumulated batch.
    pub tokens: usize,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub lr: f64,
}

/// Accumulates gradients over `micro_batches` into `grads` (normalised by their trained tokens
/// together, so that four micro-batches of one sample equal one batch of four), clips them to
/// `clip_norm` (0: off), and applies AdamW at the schedule's rate for the optimizer's next step,
/// in place. `grads` holds [`Model::trainable`]'s gradients from step to step (its buffers are
/// reused, zeroed at the start of each step). In a world of several ranks, `micro_batches` are
/// this rank's share of the step (none on a rank the data ran out for): the token count, the
/// gradients and the loss are summed over the ranks before clipping, so every rank takes the
/// same step. Gradients kept in memory (the CPU kernels) are summed while a pass's backward
/// runs, each part as soon as the pass has finished it: the last pass's, or with the gradients
/// sharded (ZeRO stage 2, `grads` then keeping this rank's spans alone) every pass's.
#[allow(clippy::too_many_arguments)]
pub fn optimizer_step(
    model: &mut Model,
    micro_batches: &[Batch],
    opts: StepOptions,
    optimizer: &mut AdamW,
    grads: &mut Gradients,
    schedule: &Schedule,
    clip_norm: f64,
    world: &World,
) -> Result<StepReport, StepError> {
    if micro_batches.is_empty() && world.size() == 1 {
        return Err(pctrain_model::ModelError::Input(
            "an optimizer step needs at least one micro-batch".into(),
        )
        .into());
    }
    if gradient_shard(optimizer).is_some() != grads.spans().is_some() {
        return Err(pctrain_model::ModelError::Input(
            "gradients kept by span go with an optimizer whose gradients are sharded \
             (ranks::rank_gradients makes the one for the other)"
                .into(),
        )
        .into());
    }
    // The step's trained tokens, and each rank's passes.
    let mut counts = vec![0f64; 1 + world.size()];
    counts[0] = micro_batches.iter().map(Batch::target_count).sum::<usize>() as f64;
    counts[1 + world.rank()] = micro_batches.len() as f64;
    world.sum_f64(&mut counts);
    let normalizer = counts[0] as usize;
    grads.zero()?;
    // Each micro-batch of each rank draws its own dropout masks.
    let opts_of = |i: usize| StepOptions {
        dropout_seed: opts.dropout_seed.wrapping_add(
            ((i * world.size() + world.rank()) as u64).wrapping_mul(pctrain_model::rng::GOLDEN),
        ),
        ..opts
    };
    let scale = normalizer.max(1) as f64;
    let summed = match gradient_shard(optimizer) {
        Some(shard) => Summed::Spans(&shard.counts),
        None => Summed::Everywhere,
    };
    // Gradients in memory are summed over the ranks part by part as a pass finishes them: kept
    // by span (ZeRO stage 2), every pass's, each rank keeping its span's sum alone, as many
    // passes on every rank (those past a rank's micro-batches hand its gradients out as they
    // are); else the last pass's. Elsewhere, all at once after the passes.
    let in_background = world.size() > 1 && grads.host().is_some();
    let by_span = in_background && grads.spans().is_some();
    let passes = match (by_span, micro_batches.len()) {
        (true, _) => counts[1..].iter().fold(0f64, |m, &c| m.max(c)) as usize,
        (false, 0) => usize::from(in_background),
        (false, n) => n,
    };
    let mut total: Option<LossSum> = None;
    for i in 0..passes {
        let batch = micro_batches.get(i);
        if !(by_span || (in_background && i + 1 == passes)) {
            let batch = batch.expect("a pass per micro-batch");
            let part = model.accumulate_gradients(batch, scale, opts_of(i), grads)?;
            total = Some(add(total, part)?);
            continue;
        }
        let mut sums = world.sums_in_background(summed);
        // A rank without rows computes nothing while its sums go.
        let computes = batch.is_some();
        let mut start =
            |part: Part, pieces| sums.start(pieces, computes && part != Part::Embeddings);
        match batch {
            Some(b) => {
                let o = opts_of(i);
                let part =
                    model.accumulate_gradients_handing_out(b, scale, o, grads, &mut start)?;
                total = Some(add(total, part)?);
            }
            None => model.hand_out_gradients(opts.mode, grads, &mut start)?,
        }
        sums.finish();
    }
    let total = match total {
        Some(t) if world.size() == 1 => t,
        local => {
            // The step's loss over every rank; the gradients likewise.
            let mut sum = [local.map_or(Ok(0.0), |t| t.sum())?];
            world.sum_f64(&mut sum);
            if !in_background {
                sum_gradients(grads, world)?;
            }
            LossSum::host(sum[0], normalizer)
        }
    };
    let device = model.device().clone();
    let clip = {
        let _span = pctrain_model::profile::span("clip_grad_norm", &device);
        match gradient_shard(optimizer) {
            Some(shard) => clip_sharded_grad_norm(grads, clip_norm, &total, shard, world)?,
            None => clip_grad_norm(grads, clip_norm, &total)?,
        }
    };
    let lr = schedule.lr(optimizer.step);
    if !clip.refused() {
        let _span = pctrain_model::profile::span("adamw", &device);
        let params = model.trainable(opts.mode);
        let refs: Vec<&Tensor> = params.iter().map(|(_, t)| t).collect();
        optimizer.update(&refs, grads, lr, &clip)?;
        if let Some(shard) = &optimizer.shard {
            share_updates(&refs, shard, world)?;
        }
    }
    // The step's one read back (on a GPU the update is queued behind it already).
    let (grad_norm, applied, sum) = clip.read(&total)?;
    let loss = sum / normalizer.max(1) as f64;
    if !applied {
        if !clip.refused() {
            // The kernels left the weights and moments alone; the count goes back too.
            optimizer.undo_step();
        }
        return Err(StepError::NonFinite {
            step: optimizer.step + 1,
            loss,
            grad_norm,
        });
    }
    Ok(StepReport {
        loss,
        tokens: normalizer,
        grad_norm,
        lr,
    })
}

/// The optimizer's shard when the gradients are sharded too (ZeRO stage 2).
fn gradient_shard(optimizer: &AdamW) -> Option<&Shard> {
    optimizer.shard.as_ref().filter(|s| s.gradients)
}

/// `part` added to the step's loss so far.
fn add(total: Option<LossSum>, part: LossSum) -> Result<LossSum, StepError> {
    Ok(match total {
        Some(t) => t.add(&part)?,
        None => part,
    })
}
