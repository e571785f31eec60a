//! The vector instructions the CPU kernels run on, chosen once at run time (AVX-512, else AVX2 with
//! FMA, else the x86-64 baseline), and the vector math they share. A kernel is written once, as
//! plain loops over slices, and [`simd_fn!`](crate::simd_fn) compiles it for each instruction set.
//! Sums run over 16 fixed lanes whatever the vector width, and every product-sum is an explicit
//! fused multiply-add, so all instruction sets give the same bits.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// Lanes of every reduction: a sum over a row adds element `i` into lane `i % LANES`, then the
/// lanes in order.
pub const LANES: usize = 16;

/// An instruction set the kernels are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// x86-64 without AVX (or another architecture).
    Baseline = 1,
    /// AVX2 with FMA (x86-64-v3).
    Avx2 = 2,
    /// AVX-512 F, BW, DQ and VL (x86-64-v4).
    Avx512 = 3,
}

/// 0: no override; else an [`Isa`] discriminant.
static OVERRIDE: AtomicU8 = AtomicU8::new(0);

impl Isa {
    /// The widest set this CPU has, detected once.
    pub fn widest() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(detect)
    }

    /// The set kernels run on now: the widest, unless [`Isa::force`] narrowed it.
    #[inline]
    pub fn active() -> Isa {
        match OVERRIDE.load(Ordering::Relaxed) {
            1 => Isa::Baseline,
            2 => Isa::Avx2,
            _ => Isa::widest(),
        }
    }

    /// Runs every kernel of the process on `isa` (narrowed to what the CPU has) from now on, or
    /// again on the widest set with `None`: for tests that compare instruction sets.
    pub fn force(isa: Option<Isa>) {
        let v = isa.map_or(0, |i| i.min(Isa::widest()) as u8);
        OVERRIDE.store(v, Ordering::Relaxed);
    }
}

fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        let v3 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        let v4 = v3
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512vl");
        if v4 {
            return Isa::Avx512;
        }
        if v3 {
            return Isa::Avx2;
        }
    }
    Isa::Baseline
}

/// Defines a kernel compiled once per [`Isa`], which runs the version of [`Isa::active`]. The
/// body must call only `#[inline(always)]` helpers (so that they are compiled with it) and no
/// closures that run elsewhere (threads take the kernel per chunk instead).
#[macro_export]
macro_rules! simd_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v4($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v3($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                match $crate::cpu::simd::Isa::active() {
                    // SAFETY: `active` only reports instruction sets this CPU has.
                    $crate::cpu::simd::Isa::Avx512 => return unsafe { v4($($arg),*) },
                    $crate::cpu::simd::Isa::Avx2 => return unsafe { v3($($arg),*) },
                    $crate::cpu::simd::Isa::Baseline => {}
                }
            }
            body($($arg),*)
        }
    };
}

/// `e^x` to about one unit in the last place, without branches (so loops over it vectorize):
/// `x = n ln 2 + r` with `|r| <= ln 2 / 2`, a degree-7 polynomial for `e^r`, and `2^n` built in
/// the exponent bits. Below -87.33 it is 0; above 88.37 it stays at `e^88.37`; NaN stays NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two, so that `n * LN2_HI` is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    const HI: f32 = 88.37;
    const LO: f32 = -87.33;
    let xc = if x > HI { HI } else { x };
    let xc = if xc < LO { LO } else { xc };
    let t = xc.mul_add(LOG2E, ROUND);
    let n = t - ROUND;
    let r = n.mul_add(-LN2_HI, xc);
    let r = n.mul_add(-LN2_LO, r);
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let y = p.mul_add(r * r, r) + 1.0;
    let n = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let scale = f32::from_bits(((n + 127) << 23) as u32);
    if x < LO {
        0.0
    } else {
        y * scale
    }
}

/// `1 / (1 + e^-x)`.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Sums lanes pairwise, in a fixed order.
#[inline(always)]
pub(crate) fn reduce(mut acc: [f32; LANES]) -> f32 {
    let mut width = LANES / 2;
    while width > 0 {
        for l in 0..width {
            acc[l] += acc[l + width];
        }
        width /= 2;
    }
    acc[0]
}

/// `sum(a[i] * b[i])`, in [`LANES`] lanes.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; LANES];
    let (ca, ra) = a.as_chunks::<LANES>();
    let (cb, rb) = b.as_chunks::<LANES>();
    for (x, y) in ca.iter().zip(cb) {
        for l in 0..LANES {
            acc[l] = x[l].mul_add(y[l], acc[l]);
        }
    }
    for (l, (x, y)) in ra.iter().zip(rb).enumerate() {
        acc[l] = x.mul_add(*y, acc[l]);
    }
    reduce(acc)
}

/// `sum(a[i] * b[i] * c[i])`, in [`LANES`] lanes.
#[inline(always)]
pub fn dot3(a: &[f32], b: &[f32], c: &[f32]) -> f32 {
    debug_assert!(a.len() == b.len() && b.len() == c.len());
    let mut acc = [0f32; LANES];
    let (ca, ra) = a.as_chunks::<LANES>();
    let (cb, rb) = b.as_chunks::<LANES>();
    let (cc, rc) = c.as_chunks::<LANES>();
    for ((x, y), z) in ca.iter().zip(cb).zip(cc) {
        for l in 0..LANES {
            acc[l] = (x[l] * y[l]).mul_add(z[l], acc[l]);
        }
    }
    for (l, ((x, y), z)) in ra.iter().zip(rb).zip(rc).enumerate() {
        acc[l] = (x * y).mul_add(*z, acc[l]);
    }
    reduce(acc)
}

/// `sum(a[i])`, in [`LANES`] lanes.
#[inline(always)]
pub fn sum(a: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ca, ra) = a.as_chunks::<LANES>();
    for x in ca {
        for l in 0..LANES {
            acc[l] += x[l];
        }
    }
    for (l, x) in ra.iter().enumerate() {
        acc[l] += x;
    }
    reduce(acc)
}

/// The largest element (NaN if any element is NaN; minus infinity for an empty slice).
#[inline(always)]
pub fn max(a: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let (ca, ra) = a.as_chunks::<LANES>();
    let mut nan = false;
    for x in ca {
        for l in 0..LANES {
            nan |= x[l].is_nan();
            acc[l] = if x[l] > acc[l] { x[l] } else { acc[l] };
        }
    }
    for (l, x) in ra.iter().enumerate() {
        nan |= x.is_nan();
        acc[l] = if *x > acc[l] { *x } else { acc[l] };
    }
    if nan {
        return f32::NAN;
    }
    acc.into_iter().fold(f32::NEG_INFINITY, f32::max)
}

/// `y[i] += a * x[i]`.
#[inline(always)]
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    debug_assert_eq!(x.len(), y.len());
    for (y, x) in y.iter_mut().zip(x) {
        *y = a.mul_add(*x, *y);
    }
}

crate::simd_fn! {
    /// `sum(a[i]^2)`, in [`LANES`] lanes.
    pub fn sum_of_squares(a: &[f32]) -> f32 {
        dot(a, a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_libm_and_keeps_its_edges() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (f64::from(exp(x)), f64::from(x).exp());
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 2.5e-7, "largest relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(100.0).is_finite() && exp(100.0) > 1e38);
    }

    #[test]
    fn reductions_are_exact_on_small_integers_and_see_nan() {
        let a: Vec<f32> = (0..37).map(|i| i as f32).collect();
        let b: Vec<f32> = (0..37).map(|i| (i % 5) as f32).collect();
        let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert_eq!(dot(&a, &b), want);
        assert_eq!(sum(&a), 666.0);
        assert_eq!(max(&a), 36.0);
        let mut n = a.clone();
        n[20] = f32::NAN;
        assert!(max(&n).is_nan() && sum(&n).is_nan());
    }
}
