//! RMS norm: `y = (x * rstd) * w` with `rstd = 1 / sqrt(mean(x^2) + eps)`, computed in f32 as
//! transformers does. The CPU kernels work on rows of `H` and keep each row's `rstd` for the
//! backward; `cuda::rms_norm_*` are their GPU twins.

use candle_core::{DType, Device, Result, Tensor, D};
use rayon::prelude::*;

use crate::cpu::par::grain;
use crate::cpu::simd::{dot, dot3};
use crate::cpu::view::view;
use crate::simd_fn;

/// `x`: `[.., H]`, `w`: `[H]` -> `y`: `[.., H]` in `x`'s dtype.
pub fn rms_norm_forward(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let _span = crate::profile::span("rms_norm_forward", x.device());
    #[cfg(feature = "cuda")]
    if crate::cuda::runs_on(x) {
        return crate::cuda::rms_norm_forward(x, w, eps);
    }
    let h = x.dim(D::Minus1)?;
    let (x32, w32) = (f32_contiguous(x)?, f32_contiguous(w)?);
    let mut y = vec![0f32; x.elem_count()];
    let mut rstd = vec![0f32; x.elem_count() / h.max(1)];
    rms_norm_cpu_forward(&view(&x32)?, &view(&w32)?, eps as f32, &mut y, &mut rstd);
    Tensor::from_vec(y, x.shape(), &Device::Cpu)?.to_dtype(x.dtype())
}

/// Gradients of [`rms_norm_forward`]: `dy` and `x`: `[.., H]` -> (`dx`: `[.., H]`, `dw`: `[H]`,
/// only with `train_w`). With `xhat = x * rstd`: `dw = sum(dy * xhat)`,
/// `dx = rstd * (dy*w - xhat * mean(dy*w * xhat))`.
pub fn rms_norm_backward(
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    eps: f64,
    train_w: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let _span = crate::profile::span("rms_norm_backward", x.device());
    #[cfg(feature = "cuda")]
    if crate::cuda::runs_on(x) {
        return crate::cuda::rms_norm_backward(dy, x, w, eps, train_w);
    }
    let h = x.dim(D::Minus1)?;
    let (dy32, x32, w32) = (f32_contiguous(dy)?, f32_contiguous(x)?, f32_contiguous(w)?);
    let (x32, w32) = (view(&x32)?, view(&w32)?);
    let mut scratch = vec![0f32; x.elem_count()];
    let mut rstd = vec![0f32; x.elem_count() / h.max(1)];
    rms_norm_cpu_forward(&x32, &w32, eps as f32, &mut scratch, &mut rstd);
    let mut dw = train_w.then(|| vec![0f32; h]);
    rms_norm_cpu_backward(
        &view(&dy32)?,
        &x32,
        &rstd,
        &w32,
        &mut scratch,
        false,
        dw.as_deref_mut(),
    );
    Ok((
        Tensor::from_vec(scratch, x.shape(), &Device::Cpu)?.to_dtype(x.dtype())?,
        dw.map(|dw| Tensor::from_vec(dw, h, &Device::Cpu)?.to_dtype(x.dtype()))
            .transpose()?,
    ))
}

/// `t` as a contiguous f32 tensor (itself when it already is one).
pub(crate) fn f32_contiguous(t: &Tensor) -> Result<Tensor> {
    t.to_dtype(DType::F32)?.contiguous()
}

/// Rows of `w.len()` features: `y = (x * rstd) * w` and each row's `rstd`.
pub fn rms_norm_cpu_forward(x: &[f32], w: &[f32], eps: f32, y: &mut [f32], rstd: &mut [f32]) {
    let h = w.len();
    let g = grain(h);
    x.par_chunks(g * h)
        .zip(y.par_chunks_mut(g * h))
        .zip(rstd.par_chunks_mut(g))
        .for_each(|((x, y), r)| norm_rows(x, w, eps, y, r));
}

simd_fn! {
    fn norm_rows(x: &[f32], w: &[f32], eps: f32, y: &mut [f32], rstd: &mut [f32]) {
        let h = w.len();
        for ((x, y), r) in x.chunks_exact(h).zip(y.chunks_exact_mut(h)).zip(rstd) {
            *r = 1.0 / (dot(x, x) / h as f32 + eps).sqrt();
            for ((y, x), w) in y.iter_mut().zip(x).zip(w) {
                *y = (x * *r) * w;
            }
        }
    }
}

/// Backward over rows of `w.len()` features, given each row's `rstd`: writes `dx`, or adds it to
/// `dx` with `accumulate`; adds `sum(dy * xhat)` over the rows to `dw` when given (in a fixed
/// order: per task of rows, then the tasks in order).
pub fn rms_norm_cpu_backward(
    dy: &[f32],
    x: &[f32],
    rstd: &[f32],
    w: &[f32],
    dx: &mut [f32],
    accumulate: bool,
    dw: Option<&mut [f32]>,
) {
    thread_local! {
        /// The tasks' sums of `dw`, kept from call to call.
        static PARTIAL: std::cell::RefCell<Vec<f32>> = std::cell::RefCell::default();
    }
    let h = w.len();
    let g = grain(h);
    let rows = dy
        .par_chunks(g * h)
        .zip(x.par_chunks(g * h))
        .zip(rstd.par_chunks(g))
        .zip(dx.par_chunks_mut(g * h));
    match dw {
        None => rows.for_each(|(((dy, x), r), dx)| {
            norm_rows_backward(dy, x, r, w, dx, accumulate, &mut []);
        }),
        Some(dw) => PARTIAL.with(|kept| {
            // A fresh buffer if this thread is already inside this function.
            let mut fresh = Vec::new();
            let mut borrowed = kept.try_borrow_mut();
            let partial = match borrowed.as_deref_mut() {
                Ok(p) => p,
                Err(_) => &mut fresh,
            };
            partial.clear();
            partial.resize(dy.len().div_ceil(g * h) * h, 0.0);
            rows.zip(partial.par_chunks_mut(h))
                .for_each(|((((dy, x), r), dx), p)| {
                    norm_rows_backward(dy, x, r, w, dx, accumulate, p);
                });
            for p in partial.chunks_exact(h) {
                for (d, v) in dw.iter_mut().zip(p) {
                    *d += v;
                }
            }
        }),
    }
}

simd_fn! {
    /// `dw` is empty when no weight gradient is wanted.
    fn norm_rows_backward(
        dy: &[f32],
        x: &[f32],
        rstd: &[f32],
        w: &[f32],
        dx: &mut [f32],
        accumulate: bool,
        dw: &mut [f32],
    ) {
        let h = w.len();
        for (((dy, x), &r), dx) in dy
            .chunks_exact(h)
            .zip(x.chunks_exact(h))
            .zip(rstd)
            .zip(dx.chunks_exact_mut(h))
        {
            let proj = r * dot3(dy, w, x) / h as f32;
            for (((dx, d), w), x) in dx.iter_mut().zip(dy).zip(w).zip(x) {
                let v = r * (d * w - x * r * proj);
                *dx = if accumulate { *dx + v } else { v };
            }
            for ((g, d), x) in dw.iter_mut().zip(dy).zip(x) {
                *g = d.mul_add(x * r, *g);
            }
        }
    }
}
