//! RMS norm: `y = x / sqrt(mean(x^2) + eps) * w`, computed in f32 as transformers does.

use candle_core::{DType, Result, Tensor, D};

/// `x`: `[.., H]`, `w`: `[H]` -> `y`: `[.., H]` in `x`'s dtype.
pub fn rms_norm_forward(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if crate::cuda::runs_on(x) {
        return crate::cuda::rms_norm_forward(x, w, eps);
    }
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let rstd = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&rstd)?.to_dtype(dtype)?.broadcast_mul(w)
}

/// Gradients of [`rms_norm_forward`]: `dy` and `x`: `[.., H]` -> (`dx`: `[.., H]`, `dw`: `[H]`).
/// With `xhat = x * rstd`: `dw = sum(dy * xhat)`,
/// `dx = rstd * (dy*w - xhat * mean(dy*w * xhat))`.
pub fn rms_norm_backward(
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if crate::cuda::runs_on(x) {
        return crate::cuda::rms_norm_backward(dy, x, w, eps);
    }
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let dy = dy.to_dtype(DType::F32)?;
    let w = w.to_dtype(DType::F32)?;
    let h = x.dim(D::Minus1)?;
    let rstd = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    let xhat = x.broadcast_mul(&rstd)?;
    let dw = (&dy * &xhat)?.reshape(((), h))?.sum(0)?;
    let dxhat = dy.broadcast_mul(&w)?;
    let proj = (&dxhat * &xhat)?.mean_keepdim(D::Minus1)?;
    let dx = (dxhat - xhat.broadcast_mul(&proj)?)?.broadcast_mul(&rstd)?;
    Ok((dx.to_dtype(dtype)?, dw.to_dtype(dtype)?))
}
