// Cross-entropy of one chunk of rows (layers/loss.rs): z [M, V] raw logits (before the division
// by `scaling`), target [M]. loss[r] = lse - z_t; with `grad`, z is overwritten by
// dz = (softmax - onehot) * grad_scale / scaling. One block per row.

template <typename T>
__device__ void cross_entropy(T* z, const unsigned* target, float* loss, int vocab, float scaling,
                              float grad_scale, bool grad) {
    long row = blockIdx.x;
    T* zr = z + row * vocab;
    float mx = NEG_INF;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) mx = fmaxf(mx, ld(zr, i) / scaling);
    mx = block_max(mx);
    float se = 0.f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) se += expf(ld(zr, i) / scaling - mx);
    float lse = mx + logf(block_sum(se));
    unsigned tgt = target[row];
    if (threadIdx.x == 0) loss[row] = lse - ld(zr, tgt) / scaling;
    __syncthreads();  // every thread has read z before it is overwritten
    if (!grad) return;
    float g = grad_scale / scaling;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        float p = expf(ld(zr, i) / scaling - lse);
        st(zr, i, (p - (i == (int)tgt ? 1.f : 0.f)) * g);
    }
}

// dst[index[r], c] = src[r, c] for the m rows of src (distinct indices below n; others are
// skipped, never written out of bounds).
template <typename T>
__device__ void write_rows(T* dst, const unsigned* index, const T* src, long elems, int h, int n) {
    long e = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= elems) return;
    unsigned row = index[e / h];
    if (row >= (unsigned)n) return;
    dst[(long)row * h + e % h] = src[e];
}

// Entry points, one per storage type.
#define LOSS_ENTRY_POINTS(T, S)                                                                  \
    extern "C" __global__ void __launch_bounds__(1024)                                           \
        cross_entropy_##S(T* z, const unsigned* target, float* loss,                             \
                                                 int vocab, float scaling, float grad_scale,     \
                                                 int grad) {                                     \
        cross_entropy(z, target, loss, vocab, scaling, grad_scale, grad != 0);                   \
    }                                                                                            \
    extern "C" __global__ void write_rows_##S(T* dst, const unsigned* index, const T* src,       \
                                              long elems, int h, int n) {                        \
        write_rows(dst, index, src, elems, h, n);                                                \
    }

LOSS_ENTRY_POINTS(float, f32)
LOSS_ENTRY_POINTS(bf16, bf16)
