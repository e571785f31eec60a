//! Linear layers with an optional LoRA adapter:
//! `y = x W^T + scale * (x A^T) B^T` with `W: [out, in]`, `A: [r, in]`, `B: [out, r]`.

use candle_core::{Result, Tensor};

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

/// `x`: `[.., in]` -> `[.., out]`.
pub fn linear_forward(x: &Tensor, w: &Tensor, lora: Option<&Lora>) -> Result<Tensor> {
    let y = x.broadcast_matmul(&w.t()?)?;
    match lora {
        None => Ok(y),
        Some(l) => {
            let down = x.broadcast_matmul(&l.a.t()?)?;
            let up = down.broadcast_matmul(&l.b.t()?)?;
            y + (up * l.scale)?
        }
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

/// `dx = dy W + s (dy B) A`, `dW = dy^T x` (when `train_w`), `dA = s (dy B)^T x`,
/// `dB = s dy^T (x A^T)`. A frozen `W` gets no gradient and costs no weight-sized GEMM.
pub fn linear_backward(
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    lora: Option<&Lora>,
    train_w: bool,
) -> Result<LinearGrads> {
    let mut dx = dy.matmul(w)?;
    let dw = if train_w {
        Some(dy.t()?.matmul(x)?)
    } else {
        None
    };
    let dlora = match lora {
        None => None,
        Some(l) => {
            let dy_b = (dy.matmul(&l.b)? * l.scale)?;
            dx = (dx + dy_b.matmul(&l.a)?)?;
            let da = dy_b.t()?.matmul(x)?;
            let xa = x.matmul(&l.a.t()?)?;
            let db = (dy.t()?.matmul(&xa)? * l.scale)?;
            Some((da, db))
        }
    };
    Ok(LinearGrads { dx, dw, dlora })
}
