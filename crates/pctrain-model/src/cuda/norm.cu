// RMS norm (layers/norm.rs). One block per row of `h` features.

template <typename T>
__device__ void rms_norm_fwd(const T* x, const T* w, T* y, int h, float eps) {
    long row = blockIdx.x;
    const T* xr = x + row * h;
    float ss = 0.f;
    for (int i = threadIdx.x; i < h; i += blockDim.x) {
        float v = ld(xr, i);
        ss += v * v;
    }
    float rstd = 1.f / sqrtf(block_sum(ss) / h + eps);
    for (int i = threadIdx.x; i < h; i += blockDim.x)
        st(y, row * h + i, rnd(ld(xr, i) * rstd, x) * ld(w, i));
}

// dx per row, and (when rstd_out is not null) each row's rstd for rms_norm_dw_partial.
template <typename T>
__device__ void rms_norm_bwd(const T* dy, const T* x, const T* w, T* dx, float* rstd_out, int h,
                             float eps) {
    long row = blockIdx.x;
    const T* xr = x + row * h;
    const T* dyr = dy + row * h;
    float ss = 0.f;
    for (int i = threadIdx.x; i < h; i += blockDim.x) {
        float v = ld(xr, i);
        ss += v * v;
    }
    float rstd = 1.f / sqrtf(block_sum(ss) / h + eps);
    float proj = 0.f;
    for (int i = threadIdx.x; i < h; i += blockDim.x)
        proj += ld(dyr, i) * ld(w, i) * ld(xr, i) * rstd;
    proj = block_sum(proj) / h;
    for (int i = threadIdx.x; i < h; i += blockDim.x) {
        float xhat = ld(xr, i) * rstd, d = ld(dyr, i);
        st(dx, row * h + i, rstd * (d * ld(w, i) - xhat * proj));
    }
    if (rstd_out && threadIdx.x == 0) rstd_out[row] = rstd;
}

// Stage one of dw = sum over rows of dy * xhat: partial[chunk, c] over rows
// chunk * per .. (chunk + 1) * per, in order; chunks on the grid's x, columns on its y. Stage two
// is col_sum over the chunks.
template <typename T>
__device__ void rms_norm_dw_partial(const T* dy, const T* x, const float* rstd, float* partial,
                                    int rows, int h, int per) {
    int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= h) return;
    int first = blockIdx.x * per, last = min(rows, first + per);
    float s = 0.f;
    for (int r = first; r < last; r++) {
        long i = (long)r * h + c;
        s += ld(dy, i) * ld(x, i) * rstd[r];
    }
    partial[(long)blockIdx.x * h + c] = s;
}

// out[c] = sum over rows of a[r, c], rows in order (deterministic).
extern "C" __global__ void col_sum_f32(const float* a, float* out, int rows, int cols) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    float s = 0.f;
    for (int r = 0; r < rows; r++) s += a[(long)r * cols + c];
    out[c] = s;
}

// Entry points, one per storage type.
#define NORM_ENTRY_POINTS(T, S)                                                                  \
    extern "C" __global__ void rms_norm_fwd_##S(const T* x, const T* w, T* y, int h, float eps) { \
        rms_norm_fwd(x, w, y, h, eps);                                                           \
    }                                                                                            \
    extern "C" __global__ void rms_norm_bwd_##S(const T* dy, const T* x, const T* w, T* dx,      \
                                                float* rstd, int h, float eps) {                 \
        rms_norm_bwd(dy, x, w, dx, rstd, h, eps);                                                \
    }                                                                                            \
    extern "C" __global__ void rms_norm_dw_partial_##S(const T* dy, const T* x,                  \
                                                       const float* rstd, float* partial,        \
                                                       int rows, int h, int per) {               \
        rms_norm_dw_partial(dy, x, rstd, partial, rows, h, per);                                 \
    }

NORM_ENTRY_POINTS(float, f32)
NORM_ENTRY_POINTS(bf16, bf16)
