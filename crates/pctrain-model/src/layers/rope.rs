//! Rotary position embeddings in Llama's half-split layout (`rotate_half`), with Llama 3.1's
//! frequency-dependent scaling.

use candle_core::{DType, Device, Result, Tensor};

use crate::config::RopeConfig;

/// Inverse frequencies, `head_dim / 2` of them, as transformers computes them.
pub fn inverse_frequencies(rope: &RopeConfig, head_dim: usize) -> Vec<f32> {
    let base: Vec<f32> = (0..head_dim / 2)
        .map(|i| 1.0 / (rope.theta as f32).powf((2 * i) as f32 / head_dim as f32))
        .collect();
    let Some(s) = rope.llama3 else {
        return base;
    };
    let old = s.original_max_position_embeddings as f32;
    let low_freq_wavelen = old / s.low_freq_factor as f32;
    let high_freq_wavelen = old / s.high_freq_factor as f32;
    let factor = s.factor as f32;
    base.into_iter()
        .map(|f| {
            let wavelen = 2.0 * std::f32::consts::PI / f;
            if wavelen > low_freq_wavelen {
                f / factor
            } else if wavelen < high_freq_wavelen {
                f
            } else {
                let smooth = (old / wavelen - s.low_freq_factor as f32)
                    / (s.high_freq_factor - s.low_freq_factor) as f32;
                (1.0 - smooth) * f / factor + smooth * f
            }
        })
        .collect()
}

/// Cosines and sines for each position: `[B, T, head_dim]` each (the half-size table repeated,
/// as `cat(freqs, freqs)`).
pub fn rope_tables(
    inv_freq: &[f32],
    position_ids: &[u32],
    batch: usize,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let half = inv_freq.len();
    let t = position_ids.len() / batch;
    let mut angles = Vec::with_capacity(position_ids.len() * 2 * half);
    for &p in position_ids {
        for _ in 0..2 {
            angles.extend(inv_freq.iter().map(|f| f * p as f32));
        }
    }
    let angles = Tensor::from_vec(angles, (batch, t, 2 * half), device)?;
    Ok((angles.cos()?, angles.sin()?))
}

/// `x`: `[B, heads, T, d]`, `cos`/`sin`: `[B, T, d]` -> `x * cos + rotate_half(x) * sin`.
pub fn rope_forward(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if crate::cuda::runs_on(x) {
        return crate::cuda::rope(x, cos, sin, false);
    }
    let dtype = x.dtype();
    let d = x.dim(3)?;
    let (cos, sin) = (cos.unsqueeze(1)?, sin.unsqueeze(1)?);
    let x = x.to_dtype(DType::F32)?;
    let rotated = rotate_half(&x, d)?;
    (x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?.to_dtype(dtype)
}

/// `[x1, x2] -> [-x2, x1]` on the last dimension.
fn rotate_half(x: &Tensor, d: usize) -> Result<Tensor> {
    let x1 = x.narrow(3, 0, d / 2)?;
    let x2 = x.narrow(3, d / 2, d / 2)?;
    Tensor::cat(&[&x2.neg()?, &x1], 3)
}

/// Gradient of [`rope_forward`]: `dx = dy * cos + rotate_half^T(dy * sin)`, where
/// `rotate_half^T([a1, a2]) = [a2, -a1]`.
pub fn rope_backward(dy: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if crate::cuda::runs_on(dy) {
        return crate::cuda::rope(dy, cos, sin, true);
    }
    let dtype = dy.dtype();
    let d = dy.dim(3)?;
    let (cos, sin) = (cos.unsqueeze(1)?, sin.unsqueeze(1)?);
    let dy = dy.to_dtype(DType::F32)?;
    let s = dy.broadcast_mul(&sin)?;
    let s1 = s.narrow(3, 0, d / 2)?;
    let s2 = s.narrow(3, d / 2, d / 2)?;
    let rotated_t = Tensor::cat(&[&s2, &s1.neg()?], 3)?;
    (dy.broadcast_mul(&cos)? + rotated_t)?.to_dtype(dtype)
}
