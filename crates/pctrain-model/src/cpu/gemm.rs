//! Matrix products on the CPU: the `gemm` crate's packed microkernels (AVX-512 where the CPU has
//! it, chosen at run time, else AVX2 with FMA), on strided views, so that a transposed operand is
//! read in place and never copied. The split among threads is over the output, never over the
//! shared dimension, so each element's sum runs in one fixed order.

use gemm::Parallelism;

/// A read-only matrix: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Debug, Clone, Copy)]
pub struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    /// Row-major `[rows, cols]`.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols)
    }

    /// Row-major `[rows, cols]` whose rows start `rs` elements apart (columns of a wider matrix).
    pub fn strided(data: &'a [f32], rows: usize, cols: usize, rs: usize) -> Self {
        let m = Mat {
            data,
            rows,
            cols,
            rs,
            cs: 1,
        };
        assert!(
            rows == 0 || cols == 0 || (rows - 1) * rs + cols <= data.len(),
            "a {rows} x {cols} matrix with row stride {rs} does not fit {} elements",
            data.len()
        );
        m
    }

    /// The transpose, as a view of the same elements.
    pub fn t(self) -> Self {
        Mat {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

/// A row-major output matrix `[rows, cols]` with row stride `rs`.
#[derive(Debug)]
pub struct MatMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    rs: usize,
}

impl<'a> MatMut<'a> {
    pub fn new(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols)
    }

    pub fn strided(data: &'a mut [f32], rows: usize, cols: usize, rs: usize) -> Self {
        assert!(
            rows == 0 || cols == 0 || (rows - 1) * rs + cols <= data.len(),
            "a {rows} x {cols} output with row stride {rs} does not fit {} elements",
            data.len()
        );
        MatMut {
            data,
            rows,
            cols,
            rs,
        }
    }
}

/// `dst = alpha * a b`, or `dst += alpha * a b` with `accumulate`.
pub fn matmul(dst: MatMut<'_>, a: Mat<'_>, b: Mat<'_>, alpha: f32, accumulate: bool) {
    let (m, n, k) = (dst.rows, dst.cols, a.cols);
    assert!(
        a.rows == m && b.rows == k && b.cols == n,
        "matmul: [{m}, {n}] = [{}, {}] x [{}, {}]",
        a.rows,
        a.cols,
        b.rows,
        b.cols
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst.data[r * dst.rs..r * dst.rs + n].fill(0.0);
            }
        }
        return;
    }
    // Small products are not worth waking the other threads for.
    let parallelism = if m * n * k < 32 * 32 * 64 {
        Parallelism::None
    } else {
        Parallelism::Rayon(0)
    };
    // SAFETY: the constructors checked that every index the strides reach lies inside its
    // slice, and `dst` is borrowed mutably, so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            1,
            dst.rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            alpha,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn products_of_transposed_views_match_the_written_out_sum() {
        let (m, n, k) = (37, 70, 53);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0)
            .collect();
        let want = naive(&a, &b, m, n, k);
        // b stored transposed, [n, k], read through a transposed view.
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let mut c = vec![1f32; m * n];
        matmul(
            MatMut::new(&mut c, m, n),
            Mat::new(&a, m, k),
            Mat::new(&bt, n, k).t(),
            1.0,
            false,
        );
        for (g, w) in c.iter().zip(&want) {
            assert!((g - w).abs() < 1e-4, "{g} vs {w}");
        }
        // Accumulating with a scale, into a column block of a wider output.
        let mut wide = vec![0.5f32; m * (n + 3)];
        matmul(
            MatMut::strided(&mut wide[3..], m, n, n + 3),
            Mat::new(&a, m, k),
            Mat::new(&b, k, n),
            -2.0,
            true,
        );
        for i in 0..m {
            assert_eq!(&wide[i * (n + 3)..i * (n + 3) + 3], &[0.5; 3]);
            for j in 0..n {
                let w = 0.5 - 2.0 * want[i * n + j];
                assert!((wide[i * (n + 3) + 3 + j] - w).abs() < 1e-3);
            }
        }
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn a_view_past_its_slice_is_refused() {
        let a = [0f32; 10];
        Mat::strided(&a, 3, 4, 4);
    }
}
