//! Products whose every element is one [`dot`](super::simd::dot) of a row of `x` and a row of
//! `w`: `y = alpha * x w^T (+ y)`, with `w` stored `[n, k]` as a projection's weight is. An
//! element's bits depend on its two rows alone, never on how many rows there are, how they are
//! grouped into tiles and tasks, or the thread count. Decoding runs its projections on these, so
//! that an answer is the same whatever else shares its batch (the `gemm` crate picks its blocking
//! and its kernels by shape, which moves the last bits as the batch changes).

use rayon::prelude::*;

use super::lanes::Lanes;
use super::par::Out;
use super::simd::{Isa, LANES};
use crate::simd_fn;

/// One product of a [`dots`] call: `y (+)= alpha * x w^T`, `w` `[n, k]`, `y` `[m, n]` row-major.
pub struct Product<'a> {
    pub w: &'a [f32],
    pub y: &'a mut [f32],
    pub alpha: f32,
    /// Add to `y` (`y + alpha * dot`) instead of overwriting it.
    pub accumulate: bool,
}

/// Rows of `x` per tile, and columns of `w` where AVX-512 runs it.
const ROWS: usize = 4;
const COLS: usize = 4;

/// Products a call runs at most (a layer's q, k and v share theirs).
pub const MAX_PRODUCTS: usize = 4;

/// One product as its tasks see it: the output, the weights, `alpha`, whether it accumulates,
/// and its columns.
#[derive(Clone, Copy)]
struct Part<'a> {
    y: Out,
    w: &'a [f32],
    alpha: f32,
    accumulate: bool,
    n: usize,
}

/// Runs every product of `products` (at most [`MAX_PRODUCTS`]) on the `m` rows of `x`
/// (`[m, k]` row-major), in tasks of a block of rows and a block of columns on the thread pool.
/// Nothing is allocated.
pub fn dots(x: &[f32], m: usize, k: usize, products: &mut [Product]) {
    assert_eq!(x.len(), m * k, "dots: x is not [{m}, {k}]");
    assert!(
        products.len() <= MAX_PRODUCTS,
        "dots: at most {MAX_PRODUCTS} products a call"
    );
    if m == 0 || products.is_empty() {
        return;
    }
    let mut parts: [Option<Part>; MAX_PRODUCTS] = [None; MAX_PRODUCTS];
    for (part, p) in parts.iter_mut().zip(products.iter_mut()) {
        assert!(
            k > 0 && p.w.len().is_multiple_of(k) && p.y.len() == m * (p.w.len() / k),
            "dots: w of {} and y of {} do not fit {m} rows of {k}",
            p.w.len(),
            p.y.len()
        );
        *part = Some(Part {
            y: Out::new(p.y),
            w: p.w,
            alpha: p.alpha,
            accumulate: p.accumulate,
            n: p.w.len() / k,
        });
    }
    // About 128 KB of x and of w a task (they stay in L2 while its tiles reuse them), and tasks
    // enough to keep every thread busy.
    let row_block = (32_768 / k).clamp(ROWS, 256) / ROWS * ROWS;
    let row_blocks = m.div_ceil(row_block);
    let total_cols: usize = parts.iter().flatten().map(|p| p.n).sum();
    let by_size = (32_768 / k).max(8);
    let by_count = (total_cols * row_blocks)
        .div_ceil(8 * super::threads())
        .max(8);
    let col_block = by_size.min(by_count).next_multiple_of(8);
    // Each product's tasks follow the previous product's: where they start.
    let mut first = [0; MAX_PRODUCTS + 1];
    for (i, p) in parts.iter().enumerate() {
        first[i + 1] = first[i] + p.map_or(0, |p| row_blocks * p.n.div_ceil(col_block));
    }
    let wide = Isa::active() == Isa::Avx512;
    (0..first[MAX_PRODUCTS]).into_par_iter().for_each(|t| {
        let i = first.partition_point(|&f| f <= t) - 1;
        let p = parts[i].expect("a task's product");
        let blocks = p.n.div_ceil(col_block);
        let (rb, cb) = ((t - first[i]) / blocks, (t - first[i]) % blocks);
        let rows = (rb * row_block, ((rb + 1) * row_block).min(m));
        let cols = (cb * col_block, ((cb + 1) * col_block).min(p.n));
        dots_task(x, k, p.w, p.n, p.y, p.alpha, p.accumulate, rows, cols, wide);
    });
}

simd_fn! {
    fn dots_task(
        x: &[f32],
        k: usize,
        w: &[f32],
        n: usize,
        y: Out,
        alpha: f32,
        accumulate: bool,
        rows: (usize, usize),
        cols: (usize, usize),
        wide: bool,
    ) {
        // Up to four rows and four columns a tile where 32 vector registers hold 16
        // accumulators (the x rows of a column group and its weights stay in L1), two columns
        // elsewhere; then single columns.
        let step = if wide { COLS } else { 2 };
        let dst = Dst {
            y,
            n,
            alpha,
            accumulate,
        };
        let mut c = cols.0;
        while c < cols.1 {
            let j = if cols.1 - c >= step { step } else { 1 };
            let mut r = rows.0;
            while r < rows.1 {
                let i = ROWS.min(rows.1 - r);
                // The first tile of a column group brings the next group's weights in.
                let ahead = r == rows.0;
                match (i, j) {
                    (4, 4) => tile::<4, 4>(x, k, w, r, c, dst, ahead),
                    (3, 4) => tile::<3, 4>(x, k, w, r, c, dst, ahead),
                    (2, 4) => tile::<2, 4>(x, k, w, r, c, dst, ahead),
                    (1, 4) => tile::<1, 4>(x, k, w, r, c, dst, ahead),
                    (4, 2) => tile::<4, 2>(x, k, w, r, c, dst, ahead),
                    (3, 2) => tile::<3, 2>(x, k, w, r, c, dst, ahead),
                    (2, 2) => tile::<2, 2>(x, k, w, r, c, dst, ahead),
                    (1, 2) => tile::<1, 2>(x, k, w, r, c, dst, ahead),
                    (4, _) => tile::<4, 1>(x, k, w, r, c, dst, ahead),
                    _ => {
                        for ii in 0..i {
                            tile::<1, 1>(x, k, w, r + ii, c, dst, ahead);
                        }
                    }
                }
                r += i;
            }
            c += j;
        }
    }
}

/// Where a tile's sums go: `y` (`[m, n]`), each element `alpha * sum`, or that added to it.
#[derive(Clone, Copy)]
struct Dst {
    y: Out,
    n: usize,
    alpha: f32,
    accumulate: bool,
}

impl Dst {
    /// `y[row, col] (+)= alpha * sum`.
    #[inline(always)]
    fn put(&self, row: usize, col: usize, sum: f32) {
        // SAFETY: tasks cover disjoint (row, column) blocks of `y`.
        let d = unsafe { &mut self.y.slice(row * self.n + col, 1)[0] };
        *d = if self.accumulate {
            self.alpha.mul_add(sum, *d)
        } else {
            self.alpha * sum
        };
    }
}

/// `dot(x row r + i, w row c + j)` for an `R x J` tile, in [`LANES`] lanes as
/// [`dot`](super::simd::dot) sums, on the vectors of the active instruction set, into `dst`.
#[inline(always)]
fn tile<const R: usize, const J: usize>(
    x: &[f32],
    k: usize,
    w: &[f32],
    r: usize,
    c: usize,
    dst: Dst,
    ahead: bool,
) {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::cpu::lanes::{Avx2, Avx512};
        match Isa::active() {
            // SAFETY: the active set is one this CPU has.
            Isa::Avx512 => return unsafe { tile_on::<Avx512, R, J>(x, k, w, r, c, dst, ahead) },
            Isa::Avx2 => return unsafe { tile_on::<Avx2, R, J>(x, k, w, r, c, dst, ahead) },
            Isa::Baseline => {}
        }
    }
    // SAFETY: plain arrays need no instruction set.
    unsafe { tile_on::<[f32; LANES], R, J>(x, k, w, r, c, dst, ahead) }
}

/// [`tile`] on the vectors `V`; with `ahead`, the cache lines of the next `J` rows of `w` are
/// fetched meanwhile (rows of a projection are too short for the hardware to see them coming).
///
/// # Safety
/// The CPU must have `V`'s instruction set.
#[inline(always)]
unsafe fn tile_on<V: Finish, const R: usize, const J: usize>(
    x: &[f32],
    k: usize,
    w: &[f32],
    r: usize,
    c: usize,
    dst: Dst,
    ahead: bool,
) {
    let xs: [&[f32]; R] = std::array::from_fn(|i| &x[(r + i) * k..(r + i + 1) * k]);
    let ws: [&[f32]; J] = std::array::from_fn(|j| &w[(c + j) * k..(c + j + 1) * k]);
    // SAFETY (every block below): loads read LANES elements at `o < full <= k` of rows of `k`,
    // and the caller vouches for the instruction set.
    let mut acc = [[unsafe { V::zero() }; J]; R];
    let full = k / LANES * LANES;
    // The next group's rows follow these `J` rows: `J * k` elements, `J` cache lines of them
    // asked for at each step along `k`.
    let next = ws[0].as_ptr().wrapping_add(J * k);
    let mut o = 0;
    while o < full {
        let mut wv = [unsafe { V::zero() }; J];
        for j in 0..J {
            wv[j] = unsafe { V::load(ws[j].as_ptr().add(o)) };
        }
        if ahead {
            for j in 0..J {
                prefetch(next.wrapping_add(o * J + j * LANES));
            }
        }
        for i in 0..R {
            let xv = unsafe { V::load(xs[i].as_ptr().add(o)) };
            for j in 0..J {
                acc[i][j] = unsafe { V::fma(xv, wv[j], acc[i][j]) };
            }
        }
        o += LANES;
    }
    // SAFETY: as above.
    unsafe { V::finish(&acc, &xs, &ws, full, dst, (r, c)) }
}

/// Asks for the cache line at `p` (an address that need not be valid).
#[inline(always)]
fn prefetch(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing and faults on no address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Each accumulator's last `k % LANES` products added lane by lane, then its lanes summed as
/// [`reduce`](super::simd::reduce) sums them, into `dst` at `(r + i, c + j)`.
#[inline(always)]
fn finish_lanes<V: Lanes, const R: usize, const J: usize>(
    acc: &[[V; J]; R],
    xs: &[&[f32]; R],
    ws: &[&[f32]; J],
    full: usize,
    dst: Dst,
    (r, c): (usize, usize),
) {
    for i in 0..R {
        for j in 0..J {
            // SAFETY: the caller of `tile_on` vouches for the instruction set.
            let mut lanes = unsafe { acc[i][j].lanes() };
            for l in 0..xs[i].len() - full {
                lanes[l] = xs[i][full + l].mul_add(ws[j][full + l], lanes[l]);
            }
            dst.put(r + i, c + j, super::simd::reduce(lanes));
        }
    }
}

/// How a tile's sums are finished: [`finish_lanes`], which a type may do faster with the same
/// result.
trait Finish: Lanes {
    /// # Safety
    /// The CPU must have the type's instruction set.
    #[inline(always)]
    unsafe fn finish<const R: usize, const J: usize>(
        acc: &[[Self; J]; R],
        xs: &[&[f32]; R],
        ws: &[&[f32]; J],
        full: usize,
        dst: Dst,
        at: (usize, usize),
    ) {
        finish_lanes(acc, xs, ws, full, dst, at)
    }
}

impl Finish for [f32; LANES] {}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Dst, Finish};
    use crate::cpu::lanes::{Avx2, Avx512};

    impl Finish for Avx2 {}

    impl Finish for Avx512 {
        /// A tile of up to 4 rows and at least 4 columns: the tail as masked products, the sums
        /// of each block of up to 4 x 4 accumulators at once ([`sum16`]), each row of them
        /// scaled and stored (or added) as a vector.
        #[inline(always)]
        unsafe fn finish<const R: usize, const J: usize>(
            acc: &[[Self; J]; R],
            xs: &[&[f32]; R],
            ws: &[&[f32]; J],
            full: usize,
            dst: Dst,
            (r, c): (usize, usize),
        ) {
            if R > 4 || J < 4 {
                return super::finish_lanes(acc, xs, ws, full, dst, (r, c));
            }
            let tail = xs[0].len() - full;
            let mask = ((1u32 << tail) - 1) as __mmask16;
            // SAFETY: the masked loads read the `tail` elements after `full` of each row, the
            // stores write this tile's elements of `y`, and the caller vouches for AVX-512.
            unsafe {
                let mut j0 = 0;
                while j0 < J {
                    let cols = 4.min(J - j0);
                    // Rows past `R` and columns past `cols` sum zeros, and are not stored.
                    let mut a = [_mm512_setzero_ps(); 16];
                    for i in 0..R {
                        for j in 0..cols {
                            a[4 * i + j] = acc[i][j0 + j].0;
                        }
                    }
                    if tail > 0 {
                        for i in 0..R {
                            let x = _mm512_maskz_loadu_ps(mask, xs[i].as_ptr().add(full));
                            for j in 0..cols {
                                let w = _mm512_maskz_loadu_ps(mask, ws[j0 + j].as_ptr().add(full));
                                // Lanes past the tail keep their sums (not even a zero is added).
                                a[4 * i + j] = _mm512_mask3_fmadd_ps(x, w, a[4 * i + j], mask);
                            }
                        }
                    }
                    // Lane 4 * i + j: row i, column j.
                    let rows = _mm512_permutexvar_ps(
                        _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15),
                        sum16(&a),
                    );
                    let alpha = _mm_set1_ps(dst.alpha);
                    let keep = ((1u32 << cols) - 1) as __mmask8;
                    for i in 0..R {
                        let s = match i {
                            0 => _mm512_extractf32x4_ps::<0>(rows),
                            1 => _mm512_extractf32x4_ps::<1>(rows),
                            2 => _mm512_extractf32x4_ps::<2>(rows),
                            _ => _mm512_extractf32x4_ps::<3>(rows),
                        };
                        let y = dst.y.slice((r + i) * dst.n + c + j0, cols).as_mut_ptr();
                        let v = if dst.accumulate {
                            _mm_fmadd_ps(alpha, s, _mm_maskz_loadu_ps(keep, y))
                        } else {
                            _mm_mul_ps(alpha, s)
                        };
                        _mm_mask_storeu_ps(y, keep, v);
                    }
                    j0 += 4;
                }
            }
        }
    }

    /// The sums of sixteen accumulators `a[4 * row + column]`, each added pairwise as `reduce`
    /// adds (lane `l` with `l + 8`, then `+ 4`, `+ 2`, `+ 1`): lane `4 * column + row` of the
    /// result holds `a[4 * row + column]`'s.
    ///
    /// # Safety
    /// The CPU must have AVX-512.
    #[inline(always)]
    unsafe fn sum16(a: &[__m512; 16]) -> __m512 {
        // SAFETY: the caller vouches for AVX-512. (Loops, not `array::from_fn`: a closure would
        // not be compiled for AVX-512.)
        unsafe {
            // Pairs of sums, halved: [s_2n (8 lanes), s_2n+1 (8)], lane l plus lane l + 8.
            let mut c = [_mm512_setzero_ps(); 8];
            for (n, c) in c.iter_mut().enumerate() {
                let (p, q) = (a[2 * n], a[2 * n + 1]);
                *c = _mm512_add_ps(
                    _mm512_shuffle_f32x4::<0x44>(p, q),
                    _mm512_shuffle_f32x4::<0xEE>(p, q),
                );
            }
            // Quartered: [s_4n, s_4n+1, s_4n+2, s_4n+3], 4 lanes each.
            let mut d = [_mm512_setzero_ps(); 4];
            for (n, d) in d.iter_mut().enumerate() {
                let (p, q) = (c[2 * n], c[2 * n + 1]);
                *d = _mm512_add_ps(
                    _mm512_shuffle_f32x4::<0x88>(p, q),
                    _mm512_shuffle_f32x4::<0xDD>(p, q),
                );
            }
            // In 128-bit lane m: [s_8n+m (2 lanes), s_8n+4+m (2)].
            let mut e = [_mm512_setzero_ps(); 2];
            for (n, e) in e.iter_mut().enumerate() {
                let (p, q) = (d[2 * n], d[2 * n + 1]);
                *e = _mm512_add_ps(
                    _mm512_shuffle_ps::<0x44>(p, q),
                    _mm512_shuffle_ps::<0xEE>(p, q),
                );
            }
            // Lane 4m + s holds s_4s+m.
            _mm512_add_ps(
                _mm512_shuffle_ps::<0x88>(e[0], e[1]),
                _mm512_shuffle_ps::<0xDD>(e[0], e[1]),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::simd::dot;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 - 1001.0) / 377.0)
            .collect()
    }

    #[test]
    fn every_element_is_the_dot_of_its_rows_whatever_the_rows_around_it() {
        for (m, n, k) in [
            (1, 1, 1),
            (3, 5, 17),
            (7, 70, 53),
            (37, 33, 576),
            (4, 9, 16),
        ] {
            let x = values(m * k, 1);
            let w = values(n * k, 2);
            let mut y = vec![0f32; m * n];
            let mut acc = values(m * n, 3);
            let before = acc.clone();
            dots(
                &x,
                m,
                k,
                &mut [
                    Product {
                        w: &w,
                        y: &mut y,
                        alpha: 1.0,
                        accumulate: false,
                    },
                    Product {
                        w: &w,
                        y: &mut acc,
                        alpha: -0.5,
                        accumulate: true,
                    },
                ],
            );
            for i in 0..m {
                for j in 0..n {
                    let d = dot(&x[i * k..(i + 1) * k], &w[j * k..(j + 1) * k]);
                    assert_eq!(
                        y[i * n + j].to_bits(),
                        d.to_bits(),
                        "{m}x{n}x{k} ({i}, {j})"
                    );
                    let a = (-0.5f32).mul_add(d, before[i * n + j]);
                    assert_eq!(acc[i * n + j].to_bits(), a.to_bits());
                }
            }
            // Any one row alone gives the same bits as within the batch.
            let i = m / 2;
            let mut alone = vec![0f32; n];
            dots(
                &x[i * k..(i + 1) * k],
                1,
                k,
                &mut [Product {
                    w: &w,
                    y: &mut alone,
                    alpha: 1.0,
                    accumulate: false,
                }],
            );
            assert_eq!(alone, y[i * n..(i + 1) * n]);
        }
    }

    #[test]
    fn instruction_sets_give_the_same_bits() {
        let (m, n, k) = (9, 21, 100);
        let (x, w) = (values(m * k, 4), values(n * k, 5));
        let run = |isa| {
            Isa::force(Some(isa));
            let mut y = vec![0f32; m * n];
            dots(
                &x,
                m,
                k,
                &mut [Product {
                    w: &w,
                    y: &mut y,
                    alpha: 1.0,
                    accumulate: false,
                }],
            );
            Isa::force(None);
            y
        };
        let want = run(Isa::Baseline);
        assert_eq!(run(Isa::Avx2), want);
        assert_eq!(run(Isa::Avx512), want);
    }
}
