//! Strided-batched matrix products on candle's cuBLAS handle (and so its stream), with the
//! operand and result types chosen per call: bf16 operands accumulate in f32 on the tensor cores
//! and may write f32 results, which candle's own matmul does not offer.

use std::ffi::c_void;

use candle_core::cuda_backend::cudarc::cublas::{result, sys};
use candle_core::{DType, Result};

use super::launch::Dev;

/// A row-major matrix operand: its first element's device address, type, leading dimension (in
/// elements), the distance to the next batch entry (in elements), and whether it is used
/// transposed.
#[derive(Debug, Clone, Copy)]
pub struct Operand {
    pub ptr: u64,
    pub dtype: DType,
    pub ld: usize,
    pub stride: usize,
    pub trans: bool,
}

/// The sizes and scalars of one product: `C = alpha op(A) op(B) + beta C`, `op(A)` `[m, k]`,
/// `op(B)` `[k, n]`, `C` `[m, n]`, for each of `batch` entries.
#[derive(Debug, Clone, Copy)]
pub struct Product {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub batch: usize,
    pub alpha: f32,
    pub beta: f32,
}

fn data_type(dtype: DType) -> Result<sys::cudaDataType> {
    match dtype {
        DType::F32 => Ok(sys::cudaDataType::CUDA_R_32F),
        DType::BF16 => Ok(sys::cudaDataType::CUDA_R_16BF),
        other => candle_core::bail!("no cuBLAS product of {other:?} matrices here"),
    }
}

fn op(trans: bool) -> sys::cublasOperation_t {
    if trans {
        sys::cublasOperation_t::CUBLAS_OP_T
    } else {
        sys::cublasOperation_t::CUBLAS_OP_N
    }
}

fn int(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("gemm: {what} {v} is over i32")))
}

/// Runs one strided-batched product, f32 arithmetic. cuBLAS is column-major: the row-major
/// `C = op(A) op(B)` is the column-major `C^T = op(B)^T op(A)^T`, so B goes first.
pub fn gemm(dev: &Dev, p: Product, a: Operand, b: Operand, c: Operand) -> Result<()> {
    if a.dtype != b.dtype || (a.dtype == DType::F32 && c.dtype != DType::F32) || c.trans {
        candle_core::bail!(
            "gemm: operands of {:?} and {:?} into {:?}{} is not a product cuBLAS runs here",
            a.dtype,
            b.dtype,
            c.dtype,
            if c.trans { " transposed" } else { "" }
        );
    }
    if p.m == 0 || p.n == 0 || p.batch == 0 {
        return Ok(());
    }
    let blas = dev.cublas_handle();
    let (alpha, beta) = (p.alpha, p.beta);
    // SAFETY: the caller's operands describe live device buffers large enough for these sizes,
    // leading dimensions and strides; cuBLAS runs on candle's stream, ordered with the kernels.
    unsafe {
        result::gemm_strided_batched_ex(
            *blas.handle(),
            op(b.trans),
            op(a.trans),
            int("n", p.n)?,
            int("m", p.m)?,
            int("k", p.k)?,
            &alpha as *const f32 as *const c_void,
            b.ptr as *const c_void,
            data_type(b.dtype)?,
            int("ldb", b.ld)?,
            b.stride as i64,
            a.ptr as *const c_void,
            data_type(a.dtype)?,
            int("lda", a.ld)?,
            a.stride as i64,
            &beta as *const f32 as *const c_void,
            c.ptr as *mut c_void,
            data_type(c.dtype)?,
            int("ldc", c.ld)?,
            c.stride as i64,
            int("batch", p.batch)?,
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(|e| candle_core::Error::Msg(format!("cuBLAS product: {e:?}")))
}
