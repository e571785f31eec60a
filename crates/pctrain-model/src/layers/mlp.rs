//! SwiGLU: `down(silu(gate(x)) * up(x))`; the gated product is computed here, projections in
//! [`super::linear`]. The CPU kernels are `cuda::swiglu_*`'s twins.

use candle_core::{Device, Result, Tensor};
use rayon::prelude::*;

use crate::cpu::par::grain;
use crate::cpu::simd::{exp, sigmoid};
use crate::cpu::view::view;
use crate::layers::norm::f32_contiguous;
use crate::simd_fn;

/// `gate`, `up`: `[.., I]` -> `silu(gate) * up`: `[.., I]`.
pub fn swiglu_forward(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let _span = crate::profile::span("swiglu_forward", gate.device());
    #[cfg(feature = "cuda")]
    if crate::cuda::runs_on(gate) {
        return crate::cuda::swiglu_forward(gate, up);
    }
    let (g, u) = (f32_contiguous(gate)?, f32_contiguous(up)?);
    let mut z = vec![0f32; gate.elem_count()];
    swiglu_cpu_forward(&view(&g)?, &view(&u)?, &mut z);
    Tensor::from_vec(z, gate.shape(), &Device::Cpu)?.to_dtype(gate.dtype())
}

/// Gradients of [`swiglu_forward`]: (`dgate`, `dup`), with
/// `silu'(g) = sigmoid(g) * (1 + g * (1 - sigmoid(g)))`.
pub fn swiglu_backward(dz: &Tensor, gate: &Tensor, up: &Tensor) -> Result<(Tensor, Tensor)> {
    let _span = crate::profile::span("swiglu_backward", gate.device());
    #[cfg(feature = "cuda")]
    if crate::cuda::runs_on(gate) {
        return crate::cuda::swiglu_backward(dz, gate, up);
    }
    let (d, g, u) = (
        f32_contiguous(dz)?,
        f32_contiguous(gate)?,
        f32_contiguous(up)?,
    );
    let n = gate.elem_count();
    let (mut dg, mut du) = (vec![0f32; n], vec![0f32; n]);
    swiglu_cpu_backward(&view(&d)?, &view(&g)?, &view(&u)?, &mut dg, &mut du);
    let t = |v: Vec<f32>| Tensor::from_vec(v, gate.shape(), &Device::Cpu)?.to_dtype(gate.dtype());
    Ok((t(dg)?, t(du)?))
}

/// `z = silu(gate) * up`, element by element.
pub fn swiglu_cpu_forward(gate: &[f32], up: &[f32], z: &mut [f32]) {
    let g = grain(1);
    gate.par_chunks(g)
        .zip(up.par_chunks(g))
        .zip(z.par_chunks_mut(g))
        .for_each(|((g, u), z)| swiglu_elems(g, u, z));
}

simd_fn! {
    fn swiglu_elems(gate: &[f32], up: &[f32], z: &mut [f32]) {
        for ((z, g), u) in z.iter_mut().zip(gate).zip(up) {
            *z = g / (1.0 + exp(-g)) * u;
        }
    }
}

/// `dgate = dz * up * silu'(gate)`, `dup = dz * silu(gate)`.
pub fn swiglu_cpu_backward(
    dz: &[f32],
    gate: &[f32],
    up: &[f32],
    dgate: &mut [f32],
    dup: &mut [f32],
) {
    let g = grain(1);
    dz.par_chunks(g)
        .zip(gate.par_chunks(g))
        .zip(up.par_chunks(g))
        .zip(dgate.par_chunks_mut(g))
        .zip(dup.par_chunks_mut(g))
        .for_each(|((((d, g), u), dg), du)| swiglu_elems_backward(d, g, u, dg, du));
}

simd_fn! {
    fn swiglu_elems_backward(dz: &[f32], gate: &[f32], up: &[f32], dgate: &mut [f32], dup: &mut [f32]) {
        for ((((dg, du), d), g), u) in dgate.iter_mut().zip(dup.iter_mut()).zip(dz).zip(gate).zip(up) {
            let s = sigmoid(*g);
            *dg = d * u * (s * (g * (1.0 - s) + 1.0));
            *du = d * (g * s);
        }
    }
}
