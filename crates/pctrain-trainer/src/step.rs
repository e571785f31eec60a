//! One optimizer step: gradients of every micro-batch, normalised by the trained tokens of the whole
//! accumulated batch, clipped by global norm, then an AdamW update at the schedule's rate.

use candle_core::Tensor;
use pctrain_model::{Batch, Grads, Model, StepOptions, Target, TrainMode};

use crate::optim::{clip_grad_norm, AdamW};
use crate::schedule::Schedule;

/// What trains, in a fixed order: LoRA `A`, `B` per layer and target (PEFT's names), or every
/// weight of the model.
pub fn trainable(model: &Model, mode: TrainMode) -> Vec<(String, Tensor)> {
    match mode {
        TrainMode::Lora => {
            let Some(adapter) = &model.lora else {
                return Vec::new();
            };
            let mut out = Vec::new();
            for (l, layer) in adapter.layers.iter().enumerate() {
                for t in Target::ALL {
                    if let Some(lora) = &layer[t as usize] {
                        let prefix = t.peft_prefix(l);
                        out.push((format!("{prefix}.lora_A.weight"), lora.a.clone()));
                        out.push((format!("{prefix}.lora_B.weight"), lora.b.clone()));
                    }
                }
            }
            out
        }
        TrainMode::Full => {
            let w = &model.weights;
            let mut out = vec![(
                "model.embed_tokens.weight".to_string(),
                w.embed_tokens.clone(),
            )];
            for (l, layer) in w.layers.iter().enumerate() {
                let p = format!("model.layers.{l}");
                for (name, t) in layer.named() {
                    out.push((format!("{p}.{name}.weight"), t.clone()));
                }
            }
            out.push(("model.norm.weight".into(), w.norm.clone()));
            if let Some(h) = &w.lm_head {
                out.push(("lm_head.weight".into(), h.clone()));
            }
            out
        }
    }
}

/// The gradients of [`trainable`]'s tensors, in the same order.
fn gradients(grads: &Grads, mode: TrainMode) -> Vec<Tensor> {
    match mode {
        TrainMode::Lora => grads
            .layers
            .iter()
            .flat_map(|l| {
                l.lora
                    .iter()
                    .flatten()
                    .flat_map(|(a, b)| [a.clone(), b.clone()])
            })
            .collect(),
        TrainMode::Full => {
            let mut out = vec![grads.embed_tokens.clone().expect("full mode")];
            for l in &grads.layers {
                let w = l.weights.as_ref().expect("full mode");
                out.extend(w.named().into_iter().map(|(_, t)| t.clone()));
            }
            out.push(grads.norm.clone().expect("full mode"));
            out.extend(grads.lm_head.clone());
            out
        }
    }
}

/// Puts updated values back, in [`trainable`]'s order.
pub(crate) fn set_trainable(
    model: &mut Model,
    mode: TrainMode,
    mut values: std::vec::IntoIter<Tensor>,
) {
    let mut next = || values.next().expect("one value per trainable tensor");
    match mode {
        TrainMode::Lora => {
            if let Some(adapter) = &mut model.lora {
                for layer in &mut adapter.layers {
                    for lora in layer.iter_mut().flatten() {
                        lora.a = next();
                        lora.b = next();
                    }
                }
            }
        }
        TrainMode::Full => {
            let w = &mut model.weights;
            w.embed_tokens = next();
            for l in &mut w.layers {
                for t in l.tensors_mut() {
                    *t = next();
                }
            }
            w.norm = next();
            if let Some(h) = &mut w.lm_head {
                *h = next();
            }
        }
    }
}

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

/// Accumulates gradients over `micro_batches` (normalised by their trained tokens together, so
/// that four micro-batches of one sample equal one batch of four), clips them to `clip_norm`
/// (0: off), and applies AdamW at the schedule's rate for the optimizer's next step.
pub fn optimizer_step(
    model: &mut Model,
    micro_batches: &[Batch],
    opts: StepOptions,
    optimizer: &mut AdamW,
    schedule: &Schedule,
    clip_norm: f64,
) -> Result<StepReport, StepError> {
    if micro_batches.is_empty() {
        return Err(pctrain_model::ModelError::Input(
            "an optimizer step needs at least one micro-batch".into(),
        )
        .into());
    }
    let normalizer: usize = micro_batches.iter().map(Batch::target_count).sum();
    let mut sum = 0.0;
    let mut total: Option<Vec<Tensor>> = None;
    for (i, batch) in micro_batches.iter().enumerate() {
        // Each micro-batch draws its own dropout masks.
        let opts = StepOptions {
            dropout_seed: opts
                .dropout_seed
                .wrapping_add((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            ..opts
        };
        let (loss, grads) = model.forward_backward(batch, normalizer.max(1) as f64, opts)?;
        sum += loss.sum;
        let g = gradients(&grads, opts.mode);
        total = Some(match total {
            None => g,
            Some(acc) => acc
                .iter()
                .zip(&g)
                .map(|(a, b)| a + b)
                .collect::<candle_core::Result<_>>()?,
        });
    }
    let mut grads = total.unwrap_or_default();
    let grad_norm = clip_grad_norm(&mut grads, clip_norm)?;
    let loss = sum / normalizer.max(1) as f64;
    if !(loss.is_finite() && grad_norm.is_finite()) {
        // Stop before the update, so the weights stay those of the last good step.
        return Err(StepError::NonFinite {
            step: optimizer.step + 1,
            loss,
            grad_norm,
        });
    }
    let lr = schedule.lr(optimizer.step);
    let params = trainable(model, opts.mode);
    let refs: Vec<&Tensor> = params.iter().map(|(_, t)| t).collect();
    let grad_refs: Vec<&Tensor> = grads.iter().collect();
    let updated = optimizer.update(&refs, &grad_refs, lr)?;
    set_trainable(model, opts.mode, updated.into_iter());
    Ok(StepReport {
        loss,
        tokens: normalizer,
        grad_norm,
        lr,
    })
}
