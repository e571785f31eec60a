//! Evaluation: mean next-token cross-entropy over the trained tokens of a set of samples.

use pctrain_data::{Encoded, Loader, LoaderConfig, Position};
use pctrain_model::Model;

use crate::train::collate;
use serde::Serialize;

/// What `pctrain eval` prints.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EvalResult {
    /// Mean cross-entropy per trained token (nats).
    pub loss: f64,
    /// Trained tokens scored.
    pub tokens: usize,
}

/// Scores `samples`, packed into rows of `seq_len` (attention never crosses samples, so packing
/// does not change the result), `rows_per_batch` rows at a time.
pub fn evaluate(
    model: &Model,
    samples: &[Encoded],
    seq_len: usize,
    pad_id: u32,
    rows_per_batch: usize,
) -> pctrain_model::Result<EvalResult> {
    let cfg = LoaderConfig {
        seq_len,
        packing: true,
        shuffle: false,
        epochs: 1,
        ..LoaderConfig::default()
    };
    let loader = Loader::new(samples, cfg, pad_id, Position::default())
        .map_err(|e| pctrain_model::ModelError::Input(e.to_string()))?;
    let rows: Vec<_> = loader.map(|(_, row)| row).collect();
    let (mut sum, mut tokens) = (0.0, 0);
    for chunk in rows.chunks(rows_per_batch.max(1)) {
        let batch = collate(chunk, seq_len);
        let part = model.loss_sum(&batch, 1024)?;
        sum += part.sum()?;
        tokens += part.count;
    }
    Ok(EvalResult {
        loss: if tokens == 0 {
            f64::NAN
        } else {
            sum / tokens as f64
        },
        tokens,
    })
}
