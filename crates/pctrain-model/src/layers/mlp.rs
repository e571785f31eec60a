//! SwiGLU: `down(silu(gate(x)) * up(x))`; the gated product is computed here, projections in
//! [`super::linear`].

use candle_core::{Result, Tensor};

/// `gate`, `up`: `[.., I]` -> `silu(gate) * up`: `[.., I]`.
pub fn swiglu_forward(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if crate::cuda::runs_on(gate) {
        return crate::cuda::swiglu_forward(gate, up);
    }
    gate.silu()? * up
}

/// Gradients of [`swiglu_forward`]: (`dgate`, `dup`), with
/// `silu'(g) = sigmoid(g) * (1 + g * (1 - sigmoid(g)))`.
pub fn swiglu_backward(dz: &Tensor, gate: &Tensor, up: &Tensor) -> Result<(Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if crate::cuda::runs_on(gate) {
        return crate::cuda::swiglu_backward(dz, gate, up);
    }
    let sig = (gate.neg()?.exp()? + 1.0)?.recip()?;
    let silu = (gate * &sig)?;
    let dsilu = (&sig * ((gate * (1.0 - &sig)?)? + 1.0)?)?;
    let dgate = ((dz * up)? * dsilu)?;
    let dup = (dz * silu)?;
    Ok((dgate, dup))
}
