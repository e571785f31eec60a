//! [`LANES`] f32 lanes as the vector registers of each instruction set: one AVX-512 register, two
//! AVX ones, or a plain array. Kernels whose loops the compiler does not vectorize well (several
//! accumulators that must stay in registers) are written once over [`Lanes`] and run on the type
//! of [`Isa::active`](super::simd::Isa::active); every lane does the same fused multiply-add on
//! each, so all give the same bits.

use super::simd::LANES;

/// [`LANES`] f32 lanes.
pub(crate) trait Lanes: Copy {
    /// # Safety
    /// The CPU must have the type's instruction set (and so for every method).
    unsafe fn zero() -> Self;
    /// Every lane `v`.
    unsafe fn splat(v: f32) -> Self;
    /// # Safety
    /// `p` must point at [`LANES`] readable elements.
    unsafe fn load(p: *const f32) -> Self;
    /// `a * b + c`, one rounding a lane.
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
    unsafe fn lanes(self) -> [f32; LANES];
}

impl Lanes for [f32; LANES] {
    #[inline(always)]
    unsafe fn zero() -> Self {
        [0.0; LANES]
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        [v; LANES]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller's promise.
        unsafe { p.cast::<[f32; LANES]>().read_unaligned() }
    }
    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        let mut out = c;
        for l in 0..LANES {
            out[l] = a[l].mul_add(b[l], c[l]);
        }
        out
    }
    #[inline(always)]
    unsafe fn lanes(self) -> [f32; LANES] {
        self
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Avx2, Avx512};

/// Runs `$body` with `$V` the [`Lanes`] type of the active instruction set. The body must be an
/// `unsafe` block (the types' methods are unsafe), call only inlined code, and hold no closure
/// (a closure would not be compiled with the set's instructions); the enclosing kernel must be a
/// [`simd_fn!`](crate::simd_fn) (or inlined into one).
#[macro_export]
macro_rules! on_lanes {
    ($V:ident => $body:expr) => {{
        #[cfg(target_arch = "x86_64")]
        {
            match $crate::cpu::simd::Isa::active() {
                $crate::cpu::simd::Isa::Avx512 => {
                    type $V = $crate::cpu::lanes::Avx512;
                    $body
                }
                $crate::cpu::simd::Isa::Avx2 => {
                    type $V = $crate::cpu::lanes::Avx2;
                    $body
                }
                $crate::cpu::simd::Isa::Baseline => {
                    type $V = [f32; $crate::cpu::simd::LANES];
                    $body
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            type $V = [f32; $crate::cpu::simd::LANES];
            $body
        }
    }};
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Lanes, LANES};

    /// One AVX-512 register.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx512(pub __m512);

    /// Two AVX registers.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx2(pub __m256, pub __m256);

    // SAFETY (every block below): the caller vouches for the instruction set and the pointers.
    impl Lanes for Avx512 {
        #[inline(always)]
        unsafe fn zero() -> Self {
            Avx512(unsafe { _mm512_setzero_ps() })
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            Avx512(unsafe { _mm512_set1_ps(v) })
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Avx512(unsafe { _mm512_loadu_ps(p) })
        }
        #[inline(always)]
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
            Avx512(unsafe { _mm512_fmadd_ps(a.0, b.0, c.0) })
        }
        #[inline(always)]
        unsafe fn lanes(self) -> [f32; LANES] {
            let mut out = [0f32; LANES];
            unsafe { _mm512_storeu_ps(out.as_mut_ptr(), self.0) };
            out
        }
    }

    impl Lanes for Avx2 {
        #[inline(always)]
        unsafe fn zero() -> Self {
            unsafe { Avx2(_mm256_setzero_ps(), _mm256_setzero_ps()) }
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            unsafe { Avx2(_mm256_set1_ps(v), _mm256_set1_ps(v)) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            unsafe { Avx2(_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))) }
        }
        #[inline(always)]
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
            unsafe {
                Avx2(
                    _mm256_fmadd_ps(a.0, b.0, c.0),
                    _mm256_fmadd_ps(a.1, b.1, c.1),
                )
            }
        }
        #[inline(always)]
        unsafe fn lanes(self) -> [f32; LANES] {
            let mut out = [0f32; LANES];
            unsafe {
                _mm256_storeu_ps(out.as_mut_ptr(), self.0);
                _mm256_storeu_ps(out.as_mut_ptr().add(8), self.1);
            }
            out
        }
    }
}
