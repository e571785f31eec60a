// Attention's row kernels (layers/attention_blocks.rs; cuda/attention.rs runs the products on
// cuBLAS). A block's scores are rows [B * heads * rows, ld] f32, already scaled: row r is query
// i = q0 + r % rows of head (r / rows) % heads of batch row r / (rows * heads), column c is key
// k0 + c, for c < keys. Query i may see key j when seg[i] == seg[j], j <= i and (window == 0 or
// i - j < window); what it may not see gets probability 0. One block of threads per row.

#define ROWS 8

__device__ __forceinline__ bool allowed(const unsigned* seg, int i, int j, int window) {
    return j <= i && seg[i] == seg[j] && (window == 0 || i - j < window);
}

// p = softmax of the visible scores, lse[head row] = their log-sum-exp.
template <typename T>
__device__ void attn_softmax(const float* s, const unsigned* seg_all, T* p, float* lse, int heads,
                             int t, int q0, int rows, int k0, int keys, int ld, int window) {
    long r = blockIdx.x;
    long bh = r / rows;
    int i = q0 + (int)(r % rows);
    const unsigned* seg = seg_all + (bh / heads) * t;
    const float* sr = s + r * ld;
    float mx = NEG_INF;
    for (int c = threadIdx.x; c < keys; c += blockDim.x)
        if (allowed(seg, i, k0 + c, window)) mx = fmaxf(mx, sr[c]);
    mx = block_max(mx);
    float se = 0.f;
    for (int c = threadIdx.x; c < keys; c += blockDim.x)
        if (allowed(seg, i, k0 + c, window)) se += expf(sr[c] - mx);
    float l = mx + logf(block_sum(se));
    T* pr = p + r * ld;
    for (int c = threadIdx.x; c < keys; c += blockDim.x)
        st(pr, c, allowed(seg, i, k0 + c, window) ? expf(sr[c] - l) : 0.f);
    if (threadIdx.x == 0) lse[bh * t + i] = l;
}

// From the recomputed scores s, dp = dO V^T, lse and delta: p = exp(s - lse) and
// ds = p (dp - delta), both 0 where masked.
template <typename T>
__device__ void attn_softmax_bwd(const float* s, const float* dp, const float* lse,
                                 const float* delta, const unsigned* seg_all, T* p, T* ds,
                                 int heads, int t, int q0, int rows, int k0, int keys, int ld,
                                 int window) {
    long r = blockIdx.x;
    long bh = r / rows;
    int i = q0 + (int)(r % rows);
    const unsigned* seg = seg_all + (bh / heads) * t;
    float l = lse[bh * t + i], dl = delta[bh * t + i];
    for (int c = threadIdx.x; c < keys; c += blockDim.x) {
        long x = r * ld + c;
        float pv = 0.f, g = 0.f;
        if (allowed(seg, i, k0 + c, window)) {
            pv = expf(s[x] - l);
            g = pv * (dp[x] - dl);
        }
        st(p, x, pv);
        st(ds, x, g);
    }
}

// Rows q0..q0 + rows of every head: [BH, t, d] -> [BH, rows, d] (to_block), or back.
template <typename T>
__device__ void attn_copy_rows(const T* src, T* dst, long n, int t, int q0, int rows, int d,
                               bool to_block) {
    long e = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= n) return;
    long r = e / d;
    long whole = ((r / rows) * t + q0 + r % rows) * d + e % d;
    if (to_block) dst[e] = src[whole];
    else dst[whole] = src[e];
}

// delta[row] = sum(do * o) over the row's d features (the backward's rowsum(dP * P)).
template <typename T>
__device__ void attn_delta(const T* o, const T* dout, float* delta, long rows, int d) {
    long row = (long)blockIdx.x * ROWS + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    float s = 0.f;
    for (int e = lane; e < d; e += 32) s += ld(o, row * d + e) * ld(dout, row * d + e);
    s = warp_sum(s);
    if (lane == 0) delta[row] = s;
}

// Entry points, one per storage type.
#define ATTENTION_ENTRY_POINTS(T, S)                                                             \
    extern "C" __global__ void attn_softmax_##S(const float* s, const unsigned* seg, T* p,       \
                                                float* lse, int heads, int t, int q0, int rows,  \
                                                int k0, int keys, int ld, int window) {          \
        attn_softmax(s, seg, p, lse, heads, t, q0, rows, k0, keys, ld, window);                  \
    }                                                                                            \
    extern "C" __global__ void attn_softmax_bwd_##S(                                             \
        const float* s, const float* dp, const float* lse, const float* delta,                   \
        const unsigned* seg, T* p, T* ds, int heads, int t, int q0, int rows, int k0, int keys,  \
        int ld, int window) {                                                                    \
        attn_softmax_bwd(s, dp, lse, delta, seg, p, ds, heads, t, q0, rows, k0, keys, ld,        \
                         window);                                                                \
    }                                                                                            \
    extern "C" __global__ void attn_copy_rows_##S(const T* src, T* dst, long n, int t, int q0,   \
                                                  int rows, int d, int to_block) {               \
        attn_copy_rows(src, dst, n, t, q0, rows, d, to_block != 0);                              \
    }                                                                                            \
    extern "C" __global__ void attn_delta_##S(const T* o, const T* dout, float* delta,           \
                                              long rows, int d) {                                \
        attn_delta(o, dout, delta, rows, d);                                                     \
    }

ATTENTION_ENTRY_POINTS(float, f32)
ATTENTION_ENTRY_POINTS(bf16, bf16)
