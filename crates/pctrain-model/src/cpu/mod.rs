//! The CPU side of the decoder: vector instructions chosen at run time ([`simd`]), f32 views of
//! tensors ([`view`]), matrix products on strided views ([`gemm`]), the split of rows among
//! threads ([`par`]), and the CPU backend of the training pass (`backend`), over buffers reused
//! from step to step (`workspace`). The layers' CPU kernels live beside their forward and backward in
//! [`crate::layers`].

pub mod aligned;
pub(crate) mod backend;
pub mod dots;
pub mod gemm;
pub(crate) mod lanes;
pub mod par;
pub(crate) mod params;
pub mod simd;
pub mod view;
pub(crate) mod workspace;

/// Threads the CPU kernels and matrix products share (rayon's global pool; `RAYON_NUM_THREADS`
/// sets it).
pub fn threads() -> usize {
    rayon::current_num_threads()
}
