//! Linear layers with an optional LoRA adapter:
//! `y = x W^T + scale * (dropout(x) A^T) B^T` with `W: [out, in]`, `A: [r, in]`, `B: [out, r]`.
//! Dropout is a mask of 0 and `1/(1-p)` given by the caller (none at inference).

use candle_core::{Result, Tensor};
use rayon::prelude::*;

use crate::cpu::gemm::{matmul, Mat, MatMut};

/// A LoRA adapter on one linear layer.
#[derive(Debug, Clone)]
pub struct Lora {
    /// `[r, in]`
    pub a: Tensor,
    /// `[out, r]`
    pub b: Tensor,
    /// `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    pub scale: f64,
}

/// `x`: `[.., in]` -> `[.., out]`, without dropout.
pub fn linear_forward(x: &Tensor, w: &Tensor, lora: Option<&Lora>) -> Result<Tensor> {
    Ok(linear_forward_train(x, w, lora, None)?.0)
}

/// `x`: `[.., in]` -> `[.., out]`, and with an adapter its `dropout(x) A^T`, `[N, r]` (leading
/// dimensions flattened, in the adapter's dtype), which its backward reads. `dropout`, shaped as
/// `x`, masks the adapter's input. Each product is one 2-D GEMM.
pub fn linear_forward_train(
    x: &Tensor,
    w: &Tensor,
    lora: Option<&Lora>,
    dropout: Option<&Tensor>,
) -> Result<(Tensor, Option<Tensor>)> {
    let _span = crate::profile::span("linear_forward_train", x.device());
    let dims = x.dims().to_vec();
    let (last, lead) = dims
        .split_last()
        .expect("a linear input has a feature dimension");
    let x2 = x.reshape(((), *last))?;
    let mut y = x2.matmul(&w.t()?)?;
    let mut kept = None;
    if let Some(l) = lora {
        // The adapter computes in its own dtype (f32 over a bf16 base).
        let xd = adapter_input(&x2, dropout.map(|m| m.reshape(((), *last))).transpose()?, l)?;
        let xa = xd.matmul(&l.a.t()?)?;
        let up = (xa.matmul(&l.b.t()?)? * l.scale)?.to_dtype(y.dtype())?;
        y = (y + up)?;
        kept = Some(xa);
    }
    let mut out_dims = lead.to_vec();
    out_dims.push(w.dim(0)?);
    Ok((y.reshape(out_dims)?, kept))
}

/// `dropout(x)` in the adapter's dtype.
fn adapter_input(x: &Tensor, dropout: Option<Tensor>, l: &Lora) -> Result<Tensor> {
    let xa = x.to_dtype(l.a.dtype())?;
    match dropout {
        Some(mask) => xa * mask.to_dtype(l.a.dtype())?,
        None => Ok(xa),
    }
}

/// Gradients of [`linear_forward`] for `x`: `[N, in]`, `dy`: `[N, out]` (tokens flattened).
#[derive(Debug, Clone)]
pub struct LinearGrads {
    /// `[N, in]`
    pub dx: Tensor,
    /// `[out, in]`, only when `W` trains.
    pub dw: Option<Tensor>,
    /// `(dA: [r, in], dB: [out, r])`, only with an adapter.
    pub dlora: Option<(Tensor, Tensor)>,
}

/// With `xd = dropout(x)`: `dx = dy W + (s (dy B) A) * mask`, `dW = dy^T x` (when `train_w`),
/// `dA = s (dy B)^T xd`, `dB = s dy^T (xd A^T)`. A frozen `W` gets no gradient and costs no
/// weight-sized GEMM. The adapter comes with the `xd A^T` its forward kept.
pub fn linear_backward(
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    lora: Option<(&Lora, &Tensor)>,
    dropout: Option<&Tensor>,
    train_w: bool,
) -> Result<LinearGrads> {
    let _span = crate::profile::span("linear_backward", x.device());
    let mut dx = dy.matmul(w)?;
    let dw = if train_w {
        Some(dy.t()?.matmul(x)?)
    } else {
        None
    };
    let dlora = match lora {
        None => None,
        Some((l, xa)) => {
            // The adapter computes in its own dtype (f32 over a bf16 base).
            let xd = adapter_input(x, dropout.cloned(), l)?;
            let dy = dy.to_dtype(l.a.dtype())?;
            let dy_b = (dy.matmul(&l.b)? * l.scale)?;
            let dxd = dy_b.matmul(&l.a)?;
            let dxd = match dropout {
                Some(mask) => (dxd * mask.to_dtype(l.a.dtype())?)?,
                None => dxd,
            };
            let dxd = dxd.to_dtype(dx.dtype())?;
            dx = (dx + dxd)?;
            let da = dy_b.t()?.matmul(&xd)?;
            let db = (dy.t()?.matmul(xa)? * l.scale)?;
            Some((da, db))
        }
    };
    Ok(LinearGrads { dx, dw, dlora })
}

/// A dropout mask shaped `shape`: each element `1/(1-p)` with probability `1-p`, else 0. Element
/// `i` is decided by `unit(mix64(seed + golden * (i + 1))) < p` alone (SplitMix64's finaliser), so
/// the same seed gives the same mask (recomputation sees it again) and the GPU draws it in
/// parallel, identically.
pub fn dropout_mask(
    p: f64,
    seed: u64,
    shape: &[usize],
    dtype: candle_core::DType,
    device: &candle_core::Device,
) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(dev) = device {
        if matches!(dtype, candle_core::DType::F32 | candle_core::DType::BF16) {
            return crate::cuda::dropout_mask(p, seed, shape, dtype, dev);
        }
    }
    let n: usize = shape.iter().product();
    let mask: Vec<f32> = (0..n).map(|i| dropout_factor(p, seed, i)).collect();
    Tensor::from_vec(mask, shape, device)?.to_dtype(dtype)
}

/// The seed of the dropout mask of layer `layer`'s `target` adapter in a pass seeded `step_seed`.
pub fn dropout_seed(step_seed: u64, layer: usize, target: crate::lora::Target) -> u64 {
    step_seed ^ ((layer as u64) << 8 | target as u64).wrapping_mul(crate::rng::GOLDEN)
}

/// Element `i` of [`dropout_mask`]: 0 or `1/(1-p)`.
#[inline(always)]
pub fn dropout_factor(p: f64, seed: u64, i: usize) -> f32 {
    let h = crate::rng::mix64(seed.wrapping_add(crate::rng::GOLDEN.wrapping_mul(i as u64 + 1)));
    if crate::rng::unit_interval(h) < p {
        0.0
    } else {
        (1.0 / (1.0 - p)) as f32
    }
}

/// LoRA dropout's probability and mask seed for one adapter in one pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dropout {
    pub p: f64,
    pub seed: u64,
}

/// `out = x * mask` (`x` `[N, in]` flat, the mask of [`dropout_mask`]), or, with `backward`,
/// `out += x * mask`.
pub fn dropout_cpu(x: &[f32], d: Dropout, out: &mut [f32], backward: bool) {
    let g = crate::cpu::par::grain(1);
    x.par_chunks(g)
        .zip(out.par_chunks_mut(g))
        .enumerate()
        .for_each(|(task, (x, o))| {
            for (j, (x, o)) in x.iter().zip(o).enumerate() {
                let v = x * dropout_factor(d.p, d.seed, task * g + j);
                *o = if backward { *o + v } else { v };
            }
        });
}

/// A LoRA adapter as f32 slices for the CPU kernels.
#[derive(Debug, Clone, Copy)]
pub struct LoraView<'a> {
    /// `[r, in]`
    pub a: &'a [f32],
    /// `[out, r]`
    pub b: &'a [f32],
    pub r: usize,
    pub scale: f32,
    /// The pass's dropout of the adapter's input, when training with dropout.
    pub dropout: Option<Dropout>,
}

/// What an adapter's forward keeps for its backward, and a buffer it reuses.
pub struct LoraSaved<'a> {
    /// `dropout(x) A^T`, `[N, r]`.
    pub xa: &'a mut [f32],
    /// Room for `dropout(x)`, `[N, in]` (used with dropout only).
    pub xd: &'a mut Vec<f32>,
}

/// `y (+)= alpha * (x W^T + scale * (dropout(x) A^T) B^T)` on f32 slices of `n` tokens: `x`
/// `[N, in]`, `w` `[out, in]`, `y` `[N, out]`; written, or added to with `accumulate`. Each
/// product is one GEMM on the operands as they lie.
pub fn linear_cpu_forward(
    n: usize,
    x: &[f32],
    w: &[f32],
    lora: Option<(&LoraView<'_>, LoraSaved<'_>)>,
    y: &mut [f32],
    alpha: f32,
    accumulate: bool,
) {
    let (in_dim, out) = (x.len() / n, y.len() / n);
    matmul(
        MatMut::new(y, n, out),
        Mat::new(x, n, in_dim),
        Mat::new(w, out, in_dim).t(),
        alpha,
        accumulate,
    );
    let Some((l, saved)) = lora else {
        return;
    };
    let xd: &[f32] = match l.dropout {
        Some(d) => {
            saved.xd.resize(x.len(), 0.0);
            dropout_cpu(x, d, saved.xd, false);
            saved.xd
        }
        None => x,
    };
    matmul(
        MatMut::new(saved.xa, n, l.r),
        Mat::new(xd, n, in_dim),
        Mat::new(l.a, l.r, in_dim).t(),
        1.0,
        false,
    );
    matmul(
        MatMut::new(y, n, out),
        Mat::new(saved.xa, n, l.r),
        Mat::new(l.b, out, l.r).t(),
        alpha * l.scale,
        true,
    );
}

/// An adapter's part of [`linear_cpu_backward`]: what its forward kept, where its gradients are
/// added, and buffers it reuses.
pub struct LoraGrads<'a> {
    /// `dropout(x) A^T`, `[N, r]`, as the forward kept it.
    pub xa: &'a [f32],
    /// `[r, in]` and `[out, r]`, added to.
    pub da: &'a mut [f32],
    pub db: &'a mut [f32],
    /// Room for `dy B`, `[N, r]`, and for `dropout(x)` or its gradient, `[N, in]`.
    pub dyb: &'a mut Vec<f32>,
    pub xd: &'a mut Vec<f32>,
}

/// The backward of [`linear_cpu_forward`] for an output gradient `alpha * dy` (`dy` `[N, out]`,
/// `n` tokens):
/// `dx (+)= alpha dy W + mask * (alpha s (dy B) A)` when `dx` is given (written, or added to with
/// `accumulate_dx`); `dA += alpha s (dy B)^T xd`, `dB += alpha s dy^T xa` with an adapter;
/// `dW += alpha dy^T x` when `dw` is given. A frozen `W` costs no weight-sized product.
#[allow(clippy::too_many_arguments)]
pub fn linear_cpu_backward(
    n: usize,
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    alpha: f32,
    lora: Option<(&LoraView<'_>, LoraGrads<'_>)>,
    dw: Option<&mut [f32]>,
    dx: Option<&mut [f32]>,
    accumulate_dx: bool,
) {
    let (in_dim, out) = (x.len() / n, dy.len() / n);
    debug_assert_eq!(w.len(), in_dim * out);
    if let Some(dw) = dw {
        matmul(
            MatMut::new(dw, out, in_dim),
            Mat::new(dy, n, out).t(),
            Mat::new(x, n, in_dim),
            alpha,
            true,
        );
    }
    let mut dx = dx;
    if let Some(dx) = dx.as_deref_mut() {
        matmul(
            MatMut::new(dx, n, in_dim),
            Mat::new(dy, n, out),
            Mat::new(w, out, in_dim),
            alpha,
            accumulate_dx,
        );
    }
    let Some((l, g)) = lora else {
        return;
    };
    let s = alpha * l.scale;
    g.dyb.resize(n * l.r, 0.0);
    matmul(
        MatMut::new(g.dyb, n, l.r),
        Mat::new(dy, n, out),
        Mat::new(l.b, out, l.r),
        s,
        false,
    );
    matmul(
        MatMut::new(g.db, out, l.r),
        Mat::new(dy, n, out).t(),
        Mat::new(g.xa, n, l.r),
        s,
        true,
    );
    match l.dropout {
        None => {
            matmul(
                MatMut::new(g.da, l.r, in_dim),
                Mat::new(g.dyb, n, l.r).t(),
                Mat::new(x, n, in_dim),
                1.0,
                true,
            );
            if let Some(dx) = dx {
                matmul(
                    MatMut::new(dx, n, in_dim),
                    Mat::new(g.dyb, n, l.r),
                    Mat::new(l.a, l.r, in_dim),
                    1.0,
                    true,
                );
            }
        }
        Some(d) => {
            g.xd.resize(x.len(), 0.0);
            dropout_cpu(x, d, g.xd, false);
            matmul(
                MatMut::new(g.da, l.r, in_dim),
                Mat::new(g.dyb, n, l.r).t(),
                Mat::new(g.xd, n, in_dim),
                1.0,
                true,
            );
            if let Some(dx) = dx {
                // The gradient of dropout(x), then through the mask.
                matmul(
                    MatMut::new(g.xd, n, in_dim),
                    Mat::new(g.dyb, n, l.r),
                    Mat::new(l.a, l.r, in_dim),
                    1.0,
                    false,
                );
                dropout_cpu(g.xd, d, dx, true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::dropout_mask;
    use candle_core::{DType, Device};

    #[test]
    fn dropout_masks_drop_about_p_and_repeat_for_a_seed() {
        let mask = |seed| -> Vec<f32> {
            dropout_mask(0.1, seed, &[100, 100], DType::F32, &Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let a = mask(5);
        let dropped = a.iter().filter(|&&v| v == 0.0).count() as f64 / a.len() as f64;
        assert!((0.09..0.11).contains(&dropped), "{dropped}");
        assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
        assert_eq!(a, mask(5));
        assert_ne!(a, mask(6));
    }
}
