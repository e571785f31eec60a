//! Linear layers with an optional LoRA adapter:
//! `y = x W^T + scale * (dropout(x) A^T) B^T` with `W: [out, in]`, `A: [r, in]`, `B: [out, r]`.
//! Dropout is a mask of 0 and `1/(1-p)` given by the caller (none at inference).

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

/// `x`: `[.., in]` -> `[.., out]`, without dropout.
pub fn linear_forward(x: &Tensor, w: &Tensor, lora: Option<&Lora>) -> Result<Tensor> {
    linear_forward_train(x, w, lora, None)
}

/// `x`: `[.., in]` -> `[.., out]`; `dropout`, shaped as `x`, masks the adapter's input.
/// Leading dimensions are flattened so that each product is one 2-D GEMM.
pub fn linear_forward_train(
    x: &Tensor,
    w: &Tensor,
    lora: Option<&Lora>,
    dropout: Option<&Tensor>,
) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let (last, lead) = dims
        .split_last()
        .expect("a linear input has a feature dimension");
    let x2 = x.reshape(((), *last))?;
    let mut y = x2.matmul(&w.t()?)?;
    if let Some(l) = lora {
        // The adapter computes in its own dtype (f32 over a bf16 base).
        let xd = match dropout {
            Some(mask) => (&x2 * mask.reshape(((), *last))?)?,
            None => x2,
        }
        .to_dtype(l.a.dtype())?;
        let up = xd.matmul(&l.a.t()?)?.matmul(&l.b.t()?)?;
        let up = (up * l.scale)?.to_dtype(y.dtype())?;
        y = (y + up)?;
    }
    let mut out_dims = lead.to_vec();
    out_dims.push(w.dim(0)?);
    y.reshape(out_dims)
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
/// weight-sized GEMM.
pub fn linear_backward(
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    lora: Option<&Lora>,
    dropout: Option<&Tensor>,
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
            // The adapter computes in its own dtype (f32 over a bf16 base).
            let xd = match dropout {
                Some(mask) => (x * mask)?,
                None => x.clone(),
            }
            .to_dtype(l.a.dtype())?;
            let dy = dy.to_dtype(l.a.dtype())?;
            let dy_b = (dy.matmul(&l.b)? * l.scale)?;
            let dxd = dy_b.matmul(&l.a)?.to_dtype(dx.dtype())?;
            dx = match dropout {
                Some(mask) => (dx + (dxd * mask)?)?,
                None => (dx + dxd)?,
            };
            let da = dy_b.t()?.matmul(&xd)?;
            let xa = xd.matmul(&l.a.t()?)?;
            let db = (dy.t()?.matmul(&xa)? * l.scale)?;
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
    let keep = (1.0 / (1.0 - p)) as f32;
    let n: usize = shape.iter().product();
    let mask: Vec<f32> = (0..n as u64)
        .map(|i| {
            let h =
                crate::rng::mix64(seed.wrapping_add(0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i + 1)));
            let unit = (h >> 11) as f64 / (1u64 << 53) as f64;
            if unit < p {
                0.0
            } else {
                keep
            }
        })
        .collect();
    Tensor::from_vec(mask, shape, device)?.to_dtype(dtype)
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
