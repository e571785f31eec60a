//! Cross-entropy over next-token targets, computed in chunks of tokens so that the f32 logits of a
//! whole batch never exist at once. Labels are aligned with the inputs (as in transformers): the
//! target of position `t` is `labels[t + 1]`; -100 is ignored.

use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;

use crate::cpu::gemm::{matmul, Mat, MatMut};
use crate::cpu::par::grain;
use crate::cpu::simd::{exp, max, sum, LANES};
use crate::cpu::view::view;
use crate::layers::norm::f32_contiguous;
use crate::simd_fn;

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

/// Sum of the cross-entropy over trained targets, and their count. The sum stays where it was
/// computed: a GPU's is a device scalar, read back only when asked for ([`LossSum::sum`]), so a
/// training step never waits on it.
#[derive(Debug, Clone)]
pub struct LossSum {
    total: Total,
    pub count: usize,
}

#[derive(Debug, Clone)]
enum Total {
    Host(f64),
    /// An f32 scalar on the device.
    Device(Tensor),
}

impl LossSum {
    /// A sum computed on the host.
    pub fn host(sum: f64, count: usize) -> Self {
        LossSum {
            total: Total::Host(sum),
            count,
        }
    }

    /// A sum held as a scalar tensor on its device.
    pub fn device(sum: Tensor, count: usize) -> Self {
        LossSum {
            total: Total::Device(sum),
            count,
        }
    }

    /// The sum (reading a device's scalar back).
    pub fn sum(&self) -> Result<f64> {
        match &self.total {
            Total::Host(v) => Ok(*v),
            Total::Device(t) => Ok(f64::from(t.to_dtype(DType::F32)?.to_scalar::<f32>()?)),
        }
    }

    /// The sum as an f32 scalar tensor on `device` (no copy when it is there already).
    pub fn on(&self, device: &Device) -> Result<Tensor> {
        match &self.total {
            Total::Host(v) => Tensor::new(*v as f32, device),
            Total::Device(t) => t.to_dtype(DType::F32)?.to_device(device),
        }
    }

    /// The two sums added: on the host when both are there, else on the device.
    pub fn add(&self, other: &LossSum) -> Result<LossSum> {
        let count = self.count + other.count;
        Ok(match (&self.total, &other.total) {
            (Total::Host(a), Total::Host(b)) => LossSum::host(a + b, count),
            (Total::Device(t), _) | (_, Total::Device(t)) => {
                let device = t.device();
                LossSum::device((self.on(device)? + other.on(device)?)?, count)
            }
        })
    }
}

/// An error unless there is one target per row of `hidden` (`[N, H]`), each -100 or an id of
/// `output`'s (`[V, H]`) vocabulary.
fn check_targets(hidden: &Tensor, output: &Tensor, targets: &[i64]) -> Result<()> {
    let (n, vocab) = (hidden.dim(0)?, output.dim(0)?);
    if targets.len() != n {
        candle_core::bail!("cross-entropy: {} targets for {n} rows", targets.len());
    }
    if let Some(t) = targets
        .iter()
        .find(|&&t| t != IGNORE_INDEX && !(0..vocab as i64).contains(&t))
    {
        candle_core::bail!("cross-entropy: target {t} is outside the vocabulary of {vocab}");
    }
    Ok(())
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
    let _span = crate::profile::span("cross_entropy_forward", hidden.device());
    check_targets(hidden, output, targets)?;
    #[cfg(feature = "cuda")]
    if crate::cuda::runs_on(hidden) {
        let (loss, _) =
            cross_entropy_cuda(hidden, output, logits_scaling, targets, chunk, None, false)?;
        return Ok(loss);
    }
    let (h32, w32) = (f32_contiguous(hidden)?, f32_contiguous(output)?);
    let mut scratch = LossScratch::default();
    let loss = cross_entropy_cpu(
        &view(&h32)?,
        &view(&w32)?,
        logits_scaling as f32,
        targets,
        chunk,
        None,
        &mut scratch,
    );
    Ok(loss)
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
    let _span = crate::profile::span("cross_entropy_backward", hidden.device());
    check_targets(hidden, output, targets)?;
    #[cfg(feature = "cuda")]
    if crate::cuda::runs_on(hidden) {
        let (loss, grads) = cross_entropy_cuda(
            hidden,
            output,
            logits_scaling,
            targets,
            chunk,
            Some(grad_scale),
            train_output,
        )?;
        let (dhidden, doutput) =
            grads.ok_or_else(|| candle_core::Error::Msg("the loss gave no gradients".into()))?;
        return Ok(CrossEntropyGrads {
            loss,
            dhidden,
            doutput,
        });
    }
    let (n, h_dim) = hidden.dims2()?;
    let vocab = output.dim(0)?;
    let (h32, w32) = (f32_contiguous(hidden)?, f32_contiguous(output)?);
    let mut dhidden = vec![0f32; n * h_dim];
    let mut doutput = train_output.then(|| vec![0f32; vocab * h_dim]);
    let mut scratch = LossScratch::default();
    let loss = cross_entropy_cpu(
        &view(&h32)?,
        &view(&w32)?,
        logits_scaling as f32,
        targets,
        chunk,
        Some(LossGrads {
            scale: grad_scale as f32,
            dhidden: &mut dhidden,
            doutput: doutput.as_deref_mut(),
        }),
        &mut scratch,
    );
    let dtype = hidden.dtype();
    Ok(CrossEntropyGrads {
        loss,
        dhidden: Tensor::from_vec(dhidden, (n, h_dim), &Device::Cpu)?.to_dtype(dtype)?,
        doutput: doutput
            .map(|d| Tensor::from_vec(d, (vocab, h_dim), &Device::Cpu)?.to_dtype(output.dtype()))
            .transpose()?,
    })
}

/// Where [`cross_entropy_cpu`] writes gradients: `dhidden` `[N, H]` (rows without a target
/// zero) and, when the output projection trains, `doutput` `[V, H]`, added to.
pub struct LossGrads<'a> {
    /// The caller's `1 / normalizer`.
    pub scale: f32,
    pub dhidden: &'a mut [f32],
    pub doutput: Option<&'a mut [f32]>,
}

/// Buffers [`cross_entropy_cpu`] reuses from call to call: the rows of a chunk that have a
/// target, their hidden states, their logits (then logit gradients) and hidden-state gradients.
#[derive(Debug, Default)]
pub struct LossScratch {
    rows: Vec<usize>,
    targets: Vec<u32>,
    hidden: Vec<f32>,
    logits: Vec<f32>,
    dhidden: Vec<f32>,
    losses: Vec<f32>,
}

/// The chunked cross-entropy on f32 slices, `hidden` `[N, H]` and `output` `[V, H]`: per chunk of
/// positions, the rows with a target are gathered, their logits `hidden output^T / scaling` come
/// from one product, each row's loss (and, with `grads`, `dz = (softmax - onehot) * scale /
/// scaling` in place of the logits), then `dhidden = dz output` and `doutput += dz^T hidden`.
pub fn cross_entropy_cpu(
    hidden: &[f32],
    output: &[f32],
    logits_scaling: f32,
    targets: &[i64],
    chunk: usize,
    mut grads: Option<LossGrads<'_>>,
    s: &mut LossScratch,
) -> LossSum {
    let n = targets.len();
    let h = hidden.len() / n.max(1);
    let vocab = output.len() / h.max(1);
    let (mut sum, mut count) = (0f64, 0usize);
    if let Some(g) = grads.as_mut() {
        g.dhidden.fill(0.0);
    }
    for start in (0..n).step_by(chunk.max(1)) {
        s.rows.clear();
        s.rows
            .extend((start..(start + chunk.max(1)).min(n)).filter(|&i| targets[i] != IGNORE_INDEX));
        let m = s.rows.len();
        if m == 0 {
            continue;
        }
        s.targets.clear();
        s.targets.extend(s.rows.iter().map(|&i| targets[i] as u32));
        s.hidden.clear();
        for &i in &s.rows {
            s.hidden.extend_from_slice(&hidden[i * h..(i + 1) * h]);
        }
        s.logits.resize(m * vocab, 0.0);
        matmul(
            MatMut::new(&mut s.logits, m, vocab),
            Mat::new(&s.hidden, m, h),
            Mat::new(output, vocab, h).t(),
            1.0 / logits_scaling,
            false,
        );
        s.losses.resize(m, 0.0);
        let g = grads.as_ref().map_or(0.0, |g| g.scale / logits_scaling);
        let want_grad = grads.is_some();
        let rows_per_task = grain(vocab);
        s.logits
            .par_chunks_mut(rows_per_task * vocab)
            .zip(s.targets.par_chunks(rows_per_task))
            .zip(s.losses.par_chunks_mut(rows_per_task))
            .for_each(|((z, t), l)| loss_rows(z, vocab, t, l, want_grad, g));
        sum += s.losses.iter().map(|&l| f64::from(l)).sum::<f64>();
        count += m;
        let Some(gr) = grads.as_mut() else {
            continue;
        };
        s.dhidden.resize(m * h, 0.0);
        matmul(
            MatMut::new(&mut s.dhidden, m, h),
            Mat::new(&s.logits, m, vocab),
            Mat::new(output, vocab, h),
            1.0,
            false,
        );
        for (r, &i) in s.rows.iter().enumerate() {
            gr.dhidden[i * h..(i + 1) * h].copy_from_slice(&s.dhidden[r * h..(r + 1) * h]);
        }
        if let Some(dout) = gr.doutput.as_deref_mut() {
            matmul(
                MatMut::new(dout, vocab, h),
                Mat::new(&s.logits, m, vocab).t(),
                Mat::new(&s.hidden, m, h),
                1.0,
                true,
            );
        }
    }
    LossSum::host(sum, count)
}

simd_fn! {
    /// Rows of `vocab` logits: each row's loss `lse - z[target]`; with `want_grad`, the logits
    /// become `(softmax - onehot) * g`.
    fn loss_rows(z: &mut [f32], vocab: usize, targets: &[u32], losses: &mut [f32], want_grad: bool, g: f32) {
        for ((z, &t), loss) in z.chunks_exact_mut(vocab).zip(targets).zip(losses) {
            let mx = max(z);
            let mut acc = [0f32; LANES];
            let (chunks, rest) = z.as_chunks::<LANES>();
            for c in chunks {
                for l in 0..LANES {
                    acc[l] += exp(c[l] - mx);
                }
            }
            for (l, v) in rest.iter().enumerate() {
                acc[l] += exp(v - mx);
            }
            let lse = mx + sum(&acc).ln();
            *loss = lse - z[t as usize];
            if want_grad {
                for v in z.iter_mut() {
                    *v = exp(*v - lse) * g;
                }
                z[t as usize] -= g;
            }
        }
    }
}

/// `dhidden` and, when the output projection trains, `doutput`.
#[cfg(feature = "cuda")]
type HiddenAndOutputGrads = (Tensor, Option<Tensor>);

/// [`cross_entropy_backward`] (or, without `grad_scale`, the loss alone) on a GPU, over chunks of
/// `chunk` trained rows: each chunk's logits come from cuBLAS, and one fused kernel gives the
/// losses and writes `dz` over the logits, so no one-hot matrix is built and the chunk's logits
/// exist once. With `grad_scale`, the chunk's rows of `dhidden` are written in place (and, with
/// `train_output`, `doutput` summed); the losses are summed on the device: nothing is read back.
#[cfg(feature = "cuda")]
fn cross_entropy_cuda(
    hidden: &Tensor,
    output: &Tensor,
    logits_scaling: f64,
    targets: &[i64],
    chunk: usize,
    grad_scale: Option<f64>,
    train_output: bool,
) -> Result<(LossSum, Option<HiddenAndOutputGrads>)> {
    let (n, h_dim) = hidden.dims2()?;
    let vocab = output.dim(0)?;
    let device = hidden.device();
    let out_t = output.t()?;
    let rows: Vec<u32> = (0..n)
        .filter(|&i| targets[i] != IGNORE_INDEX)
        .map(|i| i as u32)
        .collect();
    let picked: Vec<u32> = rows.iter().map(|&i| targets[i as usize] as u32).collect();
    let trained = rows.len();
    let dhidden = grad_scale
        .map(|_| Tensor::zeros((n, h_dim), hidden.dtype(), device))
        .transpose()?;
    let mut doutput = None::<Tensor>;
    let mut losses = Vec::new();
    if trained > 0 {
        let index = Tensor::from_slice(&rows, trained, device)?;
        let picked = Tensor::from_slice(&picked, trained, device)?;
        for start in (0..trained).step_by(chunk.max(1)) {
            let len = chunk.max(1).min(trained - start);
            let index = index.narrow(0, start, len)?;
            let h = hidden.index_select(&index, 0)?;
            let z = h.matmul(&out_t)?;
            let (loss, dz) = crate::cuda::cross_entropy(
                z,
                &picked.narrow(0, start, len)?,
                logits_scaling,
                grad_scale,
            )?;
            losses.push(loss);
            if let (Some(dz), Some(dhidden)) = (dz, &dhidden) {
                crate::cuda::write_rows(dhidden, &index, &dz.matmul(output)?)?;
                if train_output {
                    let d = dz.t()?.matmul(&h)?;
                    doutput = Some(match doutput {
                        Some(acc) => (acc + d)?,
                        None => d,
                    });
                }
            }
        }
    }
    let sum = match losses.len() {
        0 => Tensor::zeros((), DType::F32, device)?,
        _ => Tensor::cat(&losses, 0)?.sum_all()?,
    };
    if train_output && doutput.is_none() {
        doutput = Some(Tensor::zeros((vocab, h_dim), output.dtype(), device)?);
    }
    Ok((LossSum::device(sum, trained), dhidden.map(|d| (d, doutput))))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Host sums add on the host; a device sum (here a tensor on the CPU device) makes the total
    /// a tensor, read back only by `sum`.
    #[test]
    fn loss_sums_add_where_they_are() {
        let a = LossSum::host(1.5, 2);
        let b = LossSum::host(2.25, 3);
        let ab = a.add(&b).unwrap();
        assert_eq!((ab.sum().unwrap(), ab.count), (3.75, 5));
        let d = LossSum::device(Tensor::new(0.5f32, &Device::Cpu).unwrap(), 1);
        let total = ab.add(&d).unwrap();
        assert!(matches!(total.total, Total::Device(_)));
        assert_eq!((total.sum().unwrap(), total.count), (4.25, 6));
    }

    /// A target outside the vocabulary, or a count that is not one per row, is an error that
    /// says so, not an index out of bounds.
    #[test]
    fn bad_targets_are_errors() {
        let hidden = Tensor::zeros((3, 4), DType::F32, &Device::Cpu).unwrap();
        let output = Tensor::zeros((5, 4), DType::F32, &Device::Cpu).unwrap();
        let err = cross_entropy_forward(&hidden, &output, 1.0, &[1, 5, -100], 2).unwrap_err();
        assert!(
            err.to_string()
                .contains("target 5 is outside the vocabulary of 5"),
            "{err}"
        );
        let err =
            cross_entropy_backward(&hidden, &output, 1.0, &[1, 2], 2, 1.0, false).unwrap_err();
        assert!(err.to_string().contains("2 targets for 3 rows"), "{err}");
        assert!(cross_entropy_forward(&hidden, &output, 1.0, &[0, 4, -100], 2).is_ok());
    }

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
