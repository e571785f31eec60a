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
    let n = hidden.dim(0)?;
    let mut total = LossSum { sum: 0.0, count: 0 };
    let out_t = output.t()?;
    for start in (0..n).step_by(chunk.max(1)) {
        let len = chunk.min(n - start);
        let rows: Vec<(usize, u32)> = (start..start + len)
            .filter(|&i| targets[i] != IGNORE_INDEX)
            .map(|i| (i, targets[i] as u32))
            .collect();
        if rows.is_empty() {
            continue;
        }
        let device = hidden.device();
        let index = Tensor::from_vec(
            rows.iter().map(|&(i, _)| i as u32).collect::<Vec<_>>(),
            rows.len(),
            device,
        )?;
        let h = hidden.index_select(&index, 0)?;
        let logits = (h.matmul(&out_t)?.to_dtype(DType::F32)? / logits_scaling)?;
        let lse = logits.log_sum_exp(D::Minus1)?;
        let target = Tensor::from_vec(
            rows.iter().map(|&(_, t)| t).collect::<Vec<_>>(),
            (rows.len(), 1),
            device,
        )?;
        let picked = logits.gather(&target, 1)?.squeeze(1)?;
        let losses: Vec<f32> = (lse - picked)?.to_vec1()?;
        total.sum += losses.iter().map(|&l| f64::from(l)).sum::<f64>();
        total.count += rows.len();
    }
    Ok(total)
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
    let (n, h_dim) = hidden.dims2()?;
    let vocab = output.dim(0)?;
    let device = hidden.device();
    let mut loss = LossSum { sum: 0.0, count: 0 };
    let mut dhidden = Tensor::zeros((n, h_dim), hidden.dtype(), device)?;
    let mut doutput = None::<Tensor>;
    let out_t = output.t()?;
    for start in (0..n).step_by(chunk.max(1)) {
        let len = chunk.min(n - start);
        let rows: Vec<(usize, usize)> = (start..start + len)
            .filter(|&i| targets[i] != IGNORE_INDEX)
            .map(|i| (i, targets[i] as usize))
            .collect();
        if rows.is_empty() {
            continue;
        }
        let index = Tensor::from_vec(
            rows.iter().map(|&(i, _)| i as u32).collect::<Vec<_>>(),
            rows.len(),
            device,
        )?;
        let h = hidden.index_select(&index, 0)?;
        let z = (h.matmul(&out_t)?.to_dtype(DType::F32)? / logits_scaling)?;
        let lse = z.log_sum_exp(D::Minus1)?;
        let mut onehot = vec![0f32; rows.len() * vocab];
        for (r, &(_, t)) in rows.iter().enumerate() {
            onehot[r * vocab + t] = 1.0;
        }
        let onehot = Tensor::from_vec(onehot, (rows.len(), vocab), device)?;
        let picked = (&z * &onehot)?.sum(D::Minus1)?;
        let losses: Vec<f32> = (&lse - picked)?.to_vec1()?;
        loss.sum += losses.iter().map(|&l| f64::from(l)).sum::<f64>();
        loss.count += rows.len();
        let p = z.broadcast_sub(&lse.unsqueeze(1)?)?.exp()?;
        let dz = (((p - onehot)? * (grad_scale / logits_scaling))?).to_dtype(hidden.dtype())?;
        dhidden = dhidden.index_add(&index, &dz.matmul(output)?, 0)?;
        if train_output {
            let d = dz.t()?.matmul(&h)?;
            doutput = Some(match doutput {
                Some(acc) => (acc + d)?,
                None => d,
            });
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
