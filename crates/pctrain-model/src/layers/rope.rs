//! Rotary position embeddings in Llama's half-split layout (`rotate_half`), with Llama 3.1's
//! frequency-dependent scaling.

use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;

use crate::cpu::par::grain;
use crate::cpu::view::view;
use crate::layers::norm::f32_contiguous;
use crate::simd_fn;

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
/// as `cat(freqs, freqs)`). On a GPU they are made there from the positions: those are a few
/// kilobytes to upload where the tables are megabytes, and a large copy from pageable memory may
/// wait for the work already queued (a later micro-batch's would wait for the step so far).
pub fn rope_tables(
    inv_freq: &[f32],
    position_ids: &[u32],
    batch: usize,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let t = position_ids.len() / batch;
    let d = 2 * inv_freq.len();
    if !device.is_cpu() {
        let positions: Vec<f32> = position_ids.iter().map(|&p| p as f32).collect();
        let positions = Tensor::from_vec(positions, (position_ids.len(), 1), device)?;
        let freq = Tensor::from_slice(inv_freq, (1, inv_freq.len()), device)?;
        // p * f in f32, as on the host.
        let half = positions.broadcast_mul(&freq)?;
        let angle = Tensor::cat(&[&half, &half], 1)?;
        return Ok((
            angle.cos()?.reshape((batch, t, d))?,
            angle.sin()?.reshape((batch, t, d))?,
        ));
    }
    let (cos, sin) = rope_table_values(inv_freq, position_ids);
    Ok((
        Tensor::from_vec(cos, (batch, t, d), device)?,
        Tensor::from_vec(sin, (batch, t, d), device)?,
    ))
}

/// The values of [`rope_tables`]: `[positions, 2 * inv_freq.len()]` cosines and sines of
/// `p * f` in f32, as transformers computes them.
pub fn rope_table_values(inv_freq: &[f32], position_ids: &[u32]) -> (Vec<f32>, Vec<f32>) {
    let n = position_ids.len() * 2 * inv_freq.len();
    let (mut cos, mut sin) = (vec![0f32; n], vec![0f32; n]);
    rope_table_into(inv_freq, position_ids, &mut cos, &mut sin);
    (cos, sin)
}

/// [`rope_table_values`] written into `cos` and `sin` (`[positions, 2 * inv_freq.len()]` each).
pub fn rope_table_into(inv_freq: &[f32], position_ids: &[u32], cos: &mut [f32], sin: &mut [f32]) {
    let d = 2 * inv_freq.len();
    let rows = cos.chunks_exact_mut(d).zip(sin.chunks_exact_mut(d));
    for ((c, s), &p) in rows.zip(position_ids) {
        for (i, f) in inv_freq.iter().chain(inv_freq).enumerate() {
            let angle = f * p as f32;
            c[i] = angle.cos();
            s[i] = angle.sin();
        }
    }
}

/// `x`: `[B, heads, T, d]`, `cos`/`sin`: `[B, T, d]` -> `x * cos + rotate_half(x) * sin`, with
/// `rotate_half([x1, x2]) = [-x2, x1]`.
pub fn rope_forward(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let _span = crate::profile::span("rope_forward", x.device());
    rope(x, cos, sin, false)
}

/// Gradient of [`rope_forward`]: `dx = dy * cos + rotate_half^T(dy * sin)`, where
/// `rotate_half^T([a1, a2]) = [a2, -a1]`.
pub fn rope_backward(dy: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let _span = crate::profile::span("rope_backward", dy.device());
    rope(dy, cos, sin, true)
}

fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, backward: bool) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if crate::cuda::runs_on(x) {
        return crate::cuda::rope(x, cos, sin, backward);
    }
    let (_, heads, t, d) = x.dims4()?;
    let mut y = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let (cos, sin) = (f32_contiguous(cos)?, f32_contiguous(sin)?);
    let layout = RopeLayout::HeadMajor { heads, t };
    rope_cpu(&mut y, d, layout, &view(&cos)?, &view(&sin)?, backward);
    Tensor::from_vec(y, x.shape(), &Device::Cpu)?.to_dtype(x.dtype())
}

/// How rows of `head_dim` lie in a tensor, which says the table row of each.
#[derive(Debug, Clone, Copy)]
pub enum RopeLayout {
    /// `[B, heads, T, d]` with tables `[B, T, d]`.
    HeadMajor { heads: usize, t: usize },
    /// `[B, T, heads, d]` (the projections' output as it is) with tables `[B * T, d]`.
    TokenMajor { heads: usize },
}

impl RopeLayout {
    #[inline(always)]
    fn table_row(self, row: usize) -> usize {
        match self {
            RopeLayout::HeadMajor { heads, t } => row / (heads * t) * t + row % t,
            RopeLayout::TokenMajor { heads } => row / heads,
        }
    }
}

/// Rotates the rows of `d` of `x` in place (forward, or with `backward` its gradient).
pub fn rope_cpu(
    x: &mut [f32],
    d: usize,
    layout: RopeLayout,
    cos: &[f32],
    sin: &[f32],
    backward: bool,
) {
    let g = grain(d);
    x.par_chunks_mut(g * d)
        .enumerate()
        .for_each(|(task, x)| rope_rows(x, task * g, d, layout, cos, sin, backward));
}

simd_fn! {
    fn rope_rows(
        x: &mut [f32],
        first_row: usize,
        d: usize,
        layout: RopeLayout,
        cos: &[f32],
        sin: &[f32],
        backward: bool,
    ) {
        let half = d / 2;
        for (i, row) in x.chunks_exact_mut(d).enumerate() {
            let at = layout.table_row(first_row + i) * d;
            let (c, s) = (&cos[at..at + d], &sin[at..at + d]);
            let (x1, x2) = row.split_at_mut(half);
            for j in 0..half {
                let (a, b) = (x1[j], x2[j]);
                if backward {
                    x1[j] = a * c[j] + b * s[j + half];
                    x2[j] = b * c[j + half] - a * s[j];
                } else {
                    x1[j] = a * c[j] - b * s[j];
                    x2[j] = b * c[j + half] + a * s[j + half];
                }
            }
        }
    }
}
