// AdamW (the trainer's optim.rs), f32 parameters and moments, one pass:
// p <- p wd_factor; m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2;
// p <- p - step_size m / (sqrt(v) / bc2_sqrt + eps). A bf16 parameter keeps an f32 master copy:
// the update runs on the master, and the bf16 copy is written from it.

// clip (null, or [norm, coef, ok] from clip_finish): the gradient is scaled by coef, and nothing
// is written when ok is 0.
extern "C" __global__ void adamw_f32(const float* clip, float* p, const float* g, float* m,
                                     float* v, long n, float wd_factor, float b1, float omb1,
                                     float b2, float omb2, float step_size, float bc2_sqrt,
                                     float eps) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n || (clip && clip[2] == 0.f)) return;
    float gi = clip ? g[i] * clip[1] : g[i];
    float mi = m[i] * b1 + gi * omb1;
    float vi = v[i] * b2 + gi * gi * omb2;
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] * wd_factor - mi / (sqrtf(vi) / bc2_sqrt + eps) * step_size;
}

extern "C" __global__ void adamw_bf16(const float* clip, float* master, bf16* p, const bf16* g,
                                      float* m, float* v, long n, float wd_factor, float b1,
                                      float omb1, float b2, float omb2, float step_size,
                                      float bc2_sqrt, float eps) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n || (clip && clip[2] == 0.f)) return;
    float gi = clip ? ld(g, i) * clip[1] : ld(g, i);
    float mi = m[i] * b1 + gi * omb1;
    float vi = v[i] * b2 + gi * gi * omb2;
    m[i] = mi;
    v[i] = vi;
    float w = master[i] * wd_factor - mi / (sqrtf(vi) / bc2_sqrt + eps) * step_size;
    master[i] = w;
    p[i] = to_bf16(w);
}

// ---------------------------------------------------------------------------------------------
// Clipping by global norm (the trainer's optim.rs), without a read back. Stage one: each block
// of sq_sum writes the sum of squares of its strided share of one tensor to partial[block].
// Stage two, clip_finish (one block of 1024): the norm over every partial, the clipping
// coefficient, and whether the step may be applied: out = [norm, coef, ok].

template <typename T>
__device__ void sq_sum(const T* g, long n, float* partial) {
    float s = 0.f;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long)gridDim.x * blockDim.x) {
        float v = ld(g, i);
        s += v * v;
    }
    s = block_sum(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

__device__ __forceinline__ bool finite(float v) {
    return (__float_as_uint(v) & 0x7f800000) != 0x7f800000;
}

extern "C" __global__ void clip_finish(const float* partial, int count, const float* loss,
                                       float max_norm, float* out) {
    float s = 0.f;
    for (int i = threadIdx.x; i < count; i += blockDim.x) s += partial[i];
    float norm = sqrtf(block_sum(s));
    if (threadIdx.x != 0) return;
    float coef = 1.f;
    if (max_norm > 0.f && max_norm / (norm + 1e-6f) < 1.f) coef = max_norm / (norm + 1e-6f);
    out[0] = norm;
    out[1] = coef;
    out[2] = finite(norm) && finite(loss[0]) ? 1.f : 0.f;
}

// Entry points, one per storage type.
#define OPTIM_ENTRY_POINTS(T, S)                                                                 \
    extern "C" __global__ void sq_sum_##S(const T* g, long n, float* partial) {                  \
        sq_sum(g, n, partial);                                                                   \
    }

OPTIM_ENTRY_POINTS(float, f32)
OPTIM_ENTRY_POINTS(bf16, bf16)
