//! Cross-entropy over next-token targets, computed in chunks of tokens so that the f32 logits of a
//! whole batch never exist at once. Labels are aligned with the inputs (as in transformers): the
//! target of position `t` is `labels[t + 1]`; -100 is ignored.

use candle_core::{DType, Result, Tensor, D};

/// The label of a position that is not trained.
pub const IGNORE_INDEX: i64 = -100;

/// Next-token targets of `labels` (`[B, T]`, row-major): `labels` shifted left by one within each
/// row. The last position of each row, and the last position of each packed sample (whose next
/// token belongs to another sample), are ignored.
pub fn shift_targets(labels: &[i64], segment_ids: &[u32], batch: usize) -> Vec<i64> {
    let t = labels.len() / batch;
    let mut out = Vec::with_capacity(labels.len());
    for (row, seg) in labels.chunks(t).zip(segment_ids.chunks(t)) {
        for p in 0..t {
            let same_sample = p + 1 < t && seg[p + 1] == seg[p] && seg[p] != 0;
            out.push(if same_sample {
                row[p + 1]
            } else {
                IGNORE_INDEX
            });
        }
    }
    out
}

/// Sum of the cross-entropy over trained targets, and their count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossSum {
    pub sum: f64,
    pub count: usize,
}

/// `hidden`: `[N, H]` final hidden states, `output`: `[V, H]`, `targets`: `N` next-token ids
/// (or -100). Logits are `hidden @ output^T / logits_scaling`, `chunk` rows at a time.
pub fn cross_entropy_forward(
    hidden: &Tensor,
    output: &Tensor,
    logits_scaling: f64,
    targets: &[i64],
    chunk: usize,
) -> Result<LossSum> {
    #[cfg(feature = "cuda")]
    if crate::cuda::runs_on(hidden) {
        let grads =
            cross_entropy_cuda(hidden, output, logits_scaling, targets, chunk, None, false)?;
        return Ok(grads.loss);
    }
    let n = hidden.dim(0)?;
    let mut total = LossSum { sum: 0.0, count: 0 };
    let out_t = output.t()?;
    for start in (0..n).step_by(chunk.max(1)) {
        let len = chunk.min(n - start);
        let Some(c) = chunk_logits(hidden, &out_t, logits_scaling, targets, start..start + len)?
        else {
            continue;
        };
        let losses: Vec<f32> = (&c.lse - c.picked()?)?.to_vec1()?;
        total.sum += losses.iter().map(|&l| f64::from(l)).sum::<f64>();
        total.count += c.targets.len();
    }
    Ok(total)
}

/// The logits of the rows of one chunk that have a target.
struct ChunkLogits {
    /// Row numbers in the batch, `[M]`.
    index: Tensor,
    /// Hidden states of those rows, `[M, H]`.
    hidden: Tensor,
    targets: Vec<u32>,
    /// `[M, V]` f32 logits.
    z: Tensor,
    /// `[M]` log-sum-exp of each row.
    lse: Tensor,
}

impl ChunkLogits {
    /// One-hot rows of the targets, `[M, V]`.
    fn onehot(&self) -> Result<Tensor> {
        let vocab = self.z.dim(1)?;
        let mut onehot = vec![0f32; self.targets.len() * vocab];
        for (r, &t) in self.targets.iter().enumerate() {
            onehot[r * vocab + t as usize] = 1.0;
        }
        Tensor::from_vec(onehot, (self.targets.len(), vocab), self.z.device())
    }

    /// The target's logit in each row, `[M]`.
    fn picked(&self) -> Result<Tensor> {
        let t = Tensor::from_vec(
            self.targets.clone(),
            (self.targets.len(), 1),
            self.z.device(),
        )?;
        self.z.gather(&t, 1)?.squeeze(1)
    }
}

/// Logits of the rows in `rows` whose target is not ignored; `None` when there are none.
fn chunk_logits(
    hidden: &Tensor,
    out_t: &Tensor,
    logits_scaling: f64,
    targets: &[i64],
    rows: std::ops::Range<usize>,
) -> Result<Option<ChunkLogits>> {
    let kept: Vec<usize> = rows.filter(|&i| targets[i] != IGNORE_INDEX).collect();
    if kept.is_empty() {
        return Ok(None);
    }
    let index = Tensor::from_vec(
        kept.iter().map(|&i| i as u32).collect::<Vec<_>>(),
        kept.len(),
        hidden.device(),
    )?;
    let h = hidden.index_select(&index, 0)?;
    let z = (h.matmul(out_t)?.to_dtype(DType::F32)? / logits_scaling)?;
    let lse = z.log_sum_exp(D::Minus1)?;
    Ok(Some(ChunkLogits {
        index,
        hidden: h,
        targets: kept.iter().map(|&i| targets[i] as u32).collect(),
        z,
        lse,
    }))
}

/// Gradients of the summed loss scaled by `grad_scale` (the caller's `1 / normalizer`).
#[derive(Debug, Clone)]
pub struct CrossEntropyGrads {
    pub loss: LossSum,
    /// `[N, H]`; zero on rows without a target.
    pub dhidden: Tensor,
    /// `[V, H]`, only when the output projection trains.
    pub doutput: Option<Tensor>,
}

/// Forward and backward of [`cross_entropy_forward`] in one pass over the chunks, so each chunk's
/// logits are computed once: `dz = (softmax(z) - onehot(target)) * grad_scale`,
/// `dhidden = dz W / c`, `dW = dz^T h / c` with `c = logits_scaling`.
pub fn cross_entropy_backward(
    hidden: &Tensor,
    output: &Tensor,
    logits_scaling: f64,
    targets: &[i64],
    chunk: usize,
    grad_scale: f64,
    train_output: bool,
) -> Result<CrossEntropyGrads> {
    #[cfg(feature = "cuda")]
    if crate::cuda::runs_on(hidden) {
        return cross_entropy_cuda(
            hidden,
            output,
            logits_scaling,
            targets,
            chunk,
            Some(grad_scale),
            train_output,
        );
    }
    let (n, h_dim) = hidden.dims2()?;
    let vocab = output.dim(0)?;
    let mut loss = LossSum { sum: 0.0, count: 0 };
    let mut dhidden = Tensor::zeros((n, h_dim), hidden.dtype(), hidden.device())?;
    let mut doutput = None::<Tensor>;
    let out_t = output.t()?;
    for start in (0..n).step_by(chunk.max(1)) {
        let len = chunk.min(n - start);
        let Some(c) = chunk_logits(hidden, &out_t, logits_scaling, targets, start..start + len)?
        else {
            continue;
        };
        let onehot = c.onehot()?;
        let losses: Vec<f32> = (&c.lse - (&c.z * &onehot)?.sum(D::Minus1)?)?.to_vec1()?;
        loss.sum += losses.iter().map(|&l| f64::from(l)).sum::<f64>();
        loss.count += c.targets.len();
        let p = c.z.broadcast_sub(&c.lse.unsqueeze(1)?)?.exp()?;
        let dz = ((p - onehot)? * (grad_scale / logits_scaling))?.to_dtype(hidden.dtype())?;
        dhidden = dhidden.index_add(&c.index, &dz.matmul(output)?, 0)?;
        if train_output {
            let d = dz.t()?.matmul(&c.hidden)?;
            doutput = Some(match doutput {
                Some(acc) => (acc + d)?,
                None => d,
            });
        }
    }
    if train_output && doutput.is_none() {
        doutput = Some(Tensor::zeros(
            (vocab, h_dim),
            output.dtype(),
            output.device(),
        )?);
    }
    Ok(CrossEntropyGrads {
        loss,
        dhidden,
        doutput,
    })
}

/// [`cross_entropy_backward`] (or, without `grad_scale`, the loss alone) on a GPU: each chunk's
/// logits come from cuBLAS, and one fused kernel gives the losses and writes `dz` over the logits,
/// so no one-hot matrix is built and the chunk's logits exist once.
#[cfg(feature = "cuda")]
fn cross_entropy_cuda(
    hidden: &Tensor,
    output: &Tensor,
    logits_scaling: f64,
    targets: &[i64],
    chunk: usize,
    grad_scale: Option<f64>,
    train_output: bool,
) -> Result<CrossEntropyGrads> {
    let (n, h_dim) = hidden.dims2()?;
    let vocab = output.dim(0)?;
    let device = hidden.device();
    let out_t = output.t()?;
    let mut loss = LossSum { sum: 0.0, count: 0 };
    let mut dhidden = Tensor::zeros((n, h_dim), hidden.dtype(), device)?;
    let mut doutput = None::<Tensor>;
    for start in (0..n).step_by(chunk.max(1)) {
        let rows: Vec<u32> = (start..(start + chunk.max(1)).min(n))
            .filter(|&i| targets[i] != IGNORE_INDEX)
            .map(|i| i as u32)
            .collect();
        if rows.is_empty() {
            continue;
        }
        let index = Tensor::from_slice(&rows, rows.len(), device)?;
        let picked: Vec<u32> = rows.iter().map(|&i| targets[i as usize] as u32).collect();
        let picked = Tensor::from_slice(&picked, picked.len(), device)?;
        let h = hidden.index_select(&index, 0)?;
        let z = h.matmul(&out_t)?;
        let (losses, dz) = crate::cuda::cross_entropy(z, &picked, logits_scaling, grad_scale)?;
        loss.sum += losses
            .to_vec1::<f32>()?
            .iter()
            .map(|&l| f64::from(l))
            .sum::<f64>();
        loss.count += rows.len();
        if let Some(dz) = dz {
            dhidden = dhidden.index_add(&index, &dz.matmul(output)?, 0)?;
            if train_output {
                let d = dz.t()?.matmul(&h)?;
                doutput = Some(match doutput {
                    Some(acc) => (acc + d)?,
                    None => d,
                });
            }
        }
    }
    if train_output && doutput.is_none() {
        doutput = Some(Tensor::zeros((vocab, h_dim), output.dtype(), device)?);
    }
    Ok(CrossEntropyGrads {
        loss,
        dhidden,
        doutput,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_never_cross_samples_or_rows() {
        let labels = [10, 11, 12, 13, 14, 15, 16, -100];
        let segments = [1, 1, 1, 2, 2, 2, 2, 0];
        assert_eq!(
            shift_targets(&labels, &segments, 2),
            vec![11, 12, -100, -100, 15, 16, -100, -100]
        );
    }
}
