// pctrain's CUDA kernels, compiled at run time with NVRTC for the GPU present. Each has a CPU twin
// in src/layers/ (or the trainer's optimizer) that the tests compare it with. Activations are f32
// or bf16 (stored as unsigned short, converted by hand so that no CUDA header is needed); all
// arithmetic is f32. Reductions run in a fixed order, so results are the same run after run.

typedef unsigned short bf16;

// NVRTC has no standard headers: minus infinity by its bits.
#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float ld(const float* p, long i) { return p[i]; }
__device__ __forceinline__ float ld(const bf16* p, long i) {
    return __uint_as_float(((unsigned)p[i]) << 16);
}
__device__ __forceinline__ bf16 to_bf16(float v) {
    unsigned u = __float_as_uint(v);
    if ((u & 0x7fffffff) > 0x7f800000) return 0x7fc0;  // NaN stays NaN
    u += 0x7fff + ((u >> 16) & 1);                     // round to nearest, ties to even
    return (bf16)(u >> 16);
}
__device__ __forceinline__ void st(float* p, long i, float v) { p[i] = v; }
__device__ __forceinline__ void st(bf16* p, long i, float v) { p[i] = to_bf16(v); }
// `v` rounded to the storage type of `T` (the CPU twin rounds there too).
__device__ __forceinline__ float rnd(float v, const float*) { return v; }
__device__ __forceinline__ float rnd(float v, const bf16*) {
    return __uint_as_float(((unsigned)to_bf16(v)) << 16);
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
    return v;
}
// Sum over a block of up to 1024 threads; every thread gets the result.
__device__ float block_sum(float v) {
    __shared__ float partial[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    int warps = (blockDim.x + 31) >> 5;
    v = lane < warps ? partial[lane] : 0.f;
    return warp_sum(v);
}
__device__ float block_max(float v) {
    __shared__ float partial[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    int warps = (blockDim.x + 31) >> 5;
    v = lane < warps ? partial[lane] : NEG_INF;
    return warp_max(v);
}

// ---------------------------------------------------------------------------------------------
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

// dx per row, and g = dy * xhat (f32, [rows, h]) whose column sums (col_sum) give dw.
template <typename T>
__device__ void rms_norm_bwd(const T* dy, const T* x, const T* w, T* dx, float* g, int h,
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
        g[row * h + i] = d * xhat;
    }
}

// out[c] = sum over rows of a[r, c], rows in order (deterministic).
extern "C" __global__ void col_sum_f32(const float* a, float* out, int rows, int cols) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    float s = 0.f;
    for (int r = 0; r < rows; r++) s += a[(long)r * cols + c];
    out[c] = s;
}

// ---------------------------------------------------------------------------------------------
// Rotary embeddings (layers/rope.rs): x [B, heads, T, d], cos/sin [B, T, d] f32.

template <typename T>
__device__ void rope(const T* x, const float* cos, const float* sin, T* y, long n, int heads,
                     int t, int d, bool backward) {
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= n) return;
    int i = idx % d;
    long pos = (idx / d) % t;
    long b = idx / ((long)d * t * heads);
    long cs = (b * t + pos) * d;
    int half = d / 2;
    long base = idx - i;
    float out;
    if (!backward) {
        // x cos + rotate_half(x) sin, rotate_half([x1, x2]) = [-x2, x1]
        float rot = i < half ? -ld(x, base + i + half) : ld(x, base + i - half);
        out = ld(x, idx) * cos[cs + i] + rot * sin[cs + i];
    } else {
        // dy cos + rotate_half^T(dy sin), rotate_half^T([a1, a2]) = [a2, -a1]
        float rot = i < half ? ld(x, base + i + half) * sin[cs + i + half]
                             : -ld(x, base + i - half) * sin[cs + i - half];
        out = ld(x, idx) * cos[cs + i] + rot;
    }
    st(y, idx, out);
}

// ---------------------------------------------------------------------------------------------
// SwiGLU (layers/mlp.rs): z = silu(gate) * up.

template <typename T>
__device__ void swiglu_fwd(const T* gate, const T* up, T* z, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = ld(gate, i);
    st(z, i, rnd(g / (1.f + expf(-g)), gate) * ld(up, i));
}

template <typename T>
__device__ void swiglu_bwd(const T* dz, const T* gate, const T* up, T* dgate, T* dup, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = ld(gate, i), u = ld(up, i), d = ld(dz, i);
    float sig = 1.f / (expf(-g) + 1.f);
    float silu = g * sig;
    float dsilu = sig * (g * (1.f - sig) + 1.f);
    st(dgate, i, d * u * dsilu);
    st(dup, i, d * silu);
}

// ---------------------------------------------------------------------------------------------
// Attention (layers/attention.rs), tiled in the flash-attention manner: scores are never stored;
// the forward keeps the log-sum-exp of each row and the backward recomputes the probabilities.
// q [B, H, T, d]; k, v [B, KV, T, d] (head h uses key/value head h / (H / KV)); seg [B, T].
// Query i may attend key j when seg[i] == seg[j], j <= i and (window == 0 or i - j < window).
// A block holds ROWS warps, one query (or key) row each; tiles of 32 rows are staged in shared
// memory with a padded stride so that lanes reading different rows hit different banks.

#define ROWS 8
#define TILE 32

__device__ __forceinline__ bool allowed(const unsigned* seg, int i, int j, int window) {
    return j <= i && seg[i] == seg[j] && (window == 0 || i - j < window);
}

template <typename T>
__device__ void load_tile(float* dst, const T* src, int first, int count, int total, int d,
                          int stride) {
    for (int e = threadIdx.x; e < count * d; e += blockDim.x) {
        int r = e / d, c = e % d;
        dst[r * stride + c] = first + r < total ? ld(src, (long)(first + r) * d + c) : 0.f;
    }
}

// One warp per query row: o = softmax(q k^T scale + mask) v, lse = log-sum-exp of the row.
template <typename T>
__device__ void attn_fwd(const T* q, const T* k, const T* v, const unsigned* seg_all, T* o,
                         float* lse, int heads, int kv_heads, int t, int d, int window,
                         float scale) {
    extern __shared__ float smem[];
    int stride = d + 1;
    float* ks = smem;                       // [TILE][stride]
    float* vs = ks + TILE * stride;         // [TILE][stride]
    float* qs = vs + TILE * stride;         // [ROWS][d]
    int b = blockIdx.z, h = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int first = blockIdx.x * ROWS, i = first + warp;
    int kvh = h / (heads / kv_heads);
    const unsigned* seg = seg_all + (long)b * t;
    const T* qh = q + ((long)b * heads + h) * t * d;
    const T* kh = k + ((long)b * kv_heads + kvh) * t * d;
    const T* vh = v + ((long)b * kv_heads + kvh) * t * d;
    for (int e = lane; e < d; e += 32) qs[warp * d + e] = i < t ? ld(qh, (long)i * d + e) : 0.f;
    float m = NEG_INF, l = 0.f;
    float acc[4] = {0.f, 0.f, 0.f, 0.f};  // dims lane, lane + 32, .. (d <= 128)
    int last = min(t - 1, first + ROWS - 1);
    int start = window > 0 ? max(0, first - window + 1) : 0;
    for (int kt = start - start % TILE; kt <= last; kt += TILE) {
        __syncthreads();
        load_tile(ks, kh, kt, TILE, t, d, stride);
        load_tile(vs, vh, kt, TILE, t, d, stride);
        __syncthreads();
        if (i >= t) continue;
        int j = kt + lane;
        float s = NEG_INF;
        if (j < t && allowed(seg, i, j, window)) {
            float dot = 0.f;
            for (int e = 0; e < d; e++) dot += qs[warp * d + e] * ks[lane * stride + e];
            s = dot * scale;
        }
        float m_new = fmaxf(m, warp_max(s));
        if (m_new == NEG_INF) continue;  // nothing visible in this tile yet
        float p = s == NEG_INF ? 0.f : expf(s - m_new);
        float corr = m == NEG_INF ? 0.f : expf(m - m_new);
        l = l * corr + warp_sum(p);
        for (int r = 0; r < 4; r++) acc[r] *= corr;
        for (int jj = 0; jj < TILE; jj++) {
            float pj = __shfl_sync(0xffffffff, p, jj);
            if (pj == 0.f) continue;
            for (int r = 0; r < 4; r++) {
                int e = lane + 32 * r;
                if (e < d) acc[r] += pj * vs[jj * stride + e];
            }
        }
        m = m_new;
    }
    if (i >= t) return;
    long row = ((long)b * heads + h) * t + i;
    for (int r = 0; r < 4; r++) {
        int e = lane + 32 * r;
        if (e < d) st(o, row * d + e, acc[r] / l);
    }
    if (lane == 0) lse[row] = m + logf(l);
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

// dq: one warp per query row, tiles of keys. dS = P (dP - delta), dq = scale dS k.
template <typename T>
__device__ void attn_bwd_dq(const T* q, const T* k, const T* v, const unsigned* seg_all,
                            const T* dout, const float* lse, const float* delta, T* dq, int heads,
                            int kv_heads, int t, int d, int window, float scale) {
    extern __shared__ float smem[];
    int stride = d + 1;
    float* ks = smem;
    float* vs = ks + TILE * stride;
    float* qs = vs + TILE * stride;   // [ROWS][d]
    float* ds_ = qs + ROWS * d;       // [ROWS][d]: the row's dO
    int b = blockIdx.z, h = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int first = blockIdx.x * ROWS, i = first + warp;
    int kvh = h / (heads / kv_heads);
    const unsigned* seg = seg_all + (long)b * t;
    long head = (long)b * heads + h;
    const T* qh = q + head * t * d;
    const T* doh = dout + head * t * d;
    const T* kh = k + ((long)b * kv_heads + kvh) * t * d;
    const T* vh = v + ((long)b * kv_heads + kvh) * t * d;
    for (int e = lane; e < d; e += 32) {
        qs[warp * d + e] = i < t ? ld(qh, (long)i * d + e) : 0.f;
        ds_[warp * d + e] = i < t ? ld(doh, (long)i * d + e) : 0.f;
    }
    float row_lse = i < t ? lse[head * t + i] : 0.f;
    float row_delta = i < t ? delta[head * t + i] : 0.f;
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    int last = min(t - 1, first + ROWS - 1);
    int start = window > 0 ? max(0, first - window + 1) : 0;
    for (int kt = start - start % TILE; kt <= last; kt += TILE) {
        __syncthreads();
        load_tile(ks, kh, kt, TILE, t, d, stride);
        load_tile(vs, vh, kt, TILE, t, d, stride);
        __syncthreads();
        if (i >= t) continue;
        int j = kt + lane;
        float dsj = 0.f;
        if (j < t && allowed(seg, i, j, window)) {
            float s = 0.f, dp = 0.f;
            for (int e = 0; e < d; e++) {
                s += qs[warp * d + e] * ks[lane * stride + e];
                dp += ds_[warp * d + e] * vs[lane * stride + e];
            }
            float p = expf(s * scale - row_lse);
            dsj = p * (dp - row_delta);
        }
        for (int jj = 0; jj < TILE; jj++) {
            float w = __shfl_sync(0xffffffff, dsj, jj);
            if (w == 0.f) continue;
            for (int r = 0; r < 4; r++) {
                int e = lane + 32 * r;
                if (e < d) acc[r] += w * ks[jj * stride + e];
            }
        }
    }
    if (i >= t) return;
    for (int r = 0; r < 4; r++) {
        int e = lane + 32 * r;
        if (e < d) st(dq, (head * t + i) * d + e, acc[r] * scale);
    }
}

// dk, dv of query head h (f32, [B, H, T, d]; the caller sums the heads that share a key/value
// head): one warp per key row, tiles of queries. dv = P^T dO, dk = scale dS^T q.
template <typename T>
__device__ void attn_bwd_dkdv(const T* q, const T* k, const T* v, const unsigned* seg_all,
                              const T* dout, const float* lse, const float* delta, float* dk,
                              float* dv, int heads, int kv_heads, int t, int d, int window,
                              float scale) {
    extern __shared__ float smem[];
    int stride = d + 1;
    float* qs = smem;                 // [TILE][stride]
    float* dos = qs + TILE * stride;  // [TILE][stride]
    float* krow = dos + TILE * stride;  // [ROWS][d]
    float* vrow = krow + ROWS * d;      // [ROWS][d]
    __shared__ float lse_s[TILE], delta_s[TILE];
    int b = blockIdx.z, h = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int first = blockIdx.x * ROWS, j = first + warp;
    int kvh = h / (heads / kv_heads);
    const unsigned* seg = seg_all + (long)b * t;
    long head = (long)b * heads + h;
    const T* qh = q + head * t * d;
    const T* doh = dout + head * t * d;
    const T* kh = k + ((long)b * kv_heads + kvh) * t * d;
    const T* vh = v + ((long)b * kv_heads + kvh) * t * d;
    for (int e = lane; e < d; e += 32) {
        krow[warp * d + e] = j < t ? ld(kh, (long)j * d + e) : 0.f;
        vrow[warp * d + e] = j < t ? ld(vh, (long)j * d + e) : 0.f;
    }
    float dk_acc[4] = {0.f, 0.f, 0.f, 0.f}, dv_acc[4] = {0.f, 0.f, 0.f, 0.f};
    int end = window > 0 ? min(t, first + ROWS - 1 + window) : t;  // last query that sees a key
    for (int qt = first - first % TILE; qt < end; qt += TILE) {
        __syncthreads();
        load_tile(qs, qh, qt, TILE, t, d, stride);
        load_tile(dos, doh, qt, TILE, t, d, stride);
        if (threadIdx.x < TILE) {
            int i = qt + threadIdx.x;
            lse_s[threadIdx.x] = i < t ? lse[head * t + i] : 0.f;
            delta_s[threadIdx.x] = i < t ? delta[head * t + i] : 0.f;
        }
        __syncthreads();
        if (j >= t) continue;
        int i = qt + lane;
        float p = 0.f, dsi = 0.f;
        if (i < t && allowed(seg, i, j, window)) {
            float s = 0.f, dp = 0.f;
            for (int e = 0; e < d; e++) {
                s += qs[lane * stride + e] * krow[warp * d + e];
                dp += dos[lane * stride + e] * vrow[warp * d + e];
            }
            p = expf(s * scale - lse_s[lane]);
            dsi = p * (dp - delta_s[lane]);
        }
        for (int ii = 0; ii < TILE; ii++) {
            float pi = __shfl_sync(0xffffffff, p, ii);
            float wi = __shfl_sync(0xffffffff, dsi, ii);
            if (pi == 0.f && wi == 0.f) continue;
            for (int r = 0; r < 4; r++) {
                int e = lane + 32 * r;
                if (e < d) {
                    dv_acc[r] += pi * dos[ii * stride + e];
                    dk_acc[r] += wi * qs[ii * stride + e];
                }
            }
        }
    }
    if (j >= t) return;
    for (int r = 0; r < 4; r++) {
        int e = lane + 32 * r;
        if (e < d) {
            dk[(head * t + j) * d + e] = dk_acc[r] * scale;
            dv[(head * t + j) * d + e] = dv_acc[r];
        }
    }
}

// ---------------------------------------------------------------------------------------------
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

// ---------------------------------------------------------------------------------------------
// LoRA dropout masks (layers/linear.rs): element i keeps (value 1 / (1 - p)) unless
// unit(hash(seed, i)) < p. The hash is SplitMix64's finaliser; the CPU twin is the same function.

__device__ __forceinline__ unsigned long long mix64(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

template <typename T>
__device__ void dropout_mask(T* out, long n, unsigned long long seed, double p, float keep) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    unsigned long long h = mix64(seed + 0x9e3779b97f4a7c15ULL * (unsigned long long)(i + 1));
    double u = (double)(h >> 11) / 9007199254740992.0;
    st(out, i, u < p ? 0.f : keep);
}

// ---------------------------------------------------------------------------------------------
// AdamW (the trainer's optim.rs), f32 parameters and moments, one pass:
// p <- p wd_factor; m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2;
// p <- p - step_size m / (sqrt(v) / bc2_sqrt + eps). A bf16 parameter keeps an f32 master copy:
// the update runs on the master, and the bf16 copy is written from it.

extern "C" __global__ void adamw_f32(float* p, const float* g, float* m, float* v, long n,
                                     float wd_factor, float b1, float omb1, float b2, float omb2,
                                     float step_size, float bc2_sqrt, float eps) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float gi = g[i];
    float mi = m[i] * b1 + gi * omb1;
    float vi = v[i] * b2 + gi * gi * omb2;
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] * wd_factor - mi / (sqrtf(vi) / bc2_sqrt + eps) * step_size;
}

extern "C" __global__ void adamw_bf16(float* master, bf16* p, const bf16* g, float* m, float* v,
                                      long n, float wd_factor, float b1, float omb1, float b2,
                                      float omb2, float step_size, float bc2_sqrt, float eps) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float gi = ld(g, i);
    float mi = m[i] * b1 + gi * omb1;
    float vi = v[i] * b2 + gi * gi * omb2;
    m[i] = mi;
    v[i] = vi;
    float w = master[i] * wd_factor - mi / (sqrtf(vi) / bc2_sqrt + eps) * step_size;
    master[i] = w;
    p[i] = to_bf16(w);
}

// ---------------------------------------------------------------------------------------------
// Entry points, one per storage type.

#define ENTRY_POINTS(T, S)                                                                       \
    extern "C" __global__ void rms_norm_fwd_##S(const T* x, const T* w, T* y, int h, float eps) { \
        rms_norm_fwd(x, w, y, h, eps);                                                           \
    }                                                                                            \
    extern "C" __global__ void rms_norm_bwd_##S(const T* dy, const T* x, const T* w, T* dx,      \
                                                float* g, int h, float eps) {                    \
        rms_norm_bwd(dy, x, w, dx, g, h, eps);                                                   \
    }                                                                                            \
    extern "C" __global__ void rope_##S(const T* x, const float* c, const float* s, T* y,       \
                                        long n, int heads, int t, int d, int backward) {         \
        rope(x, c, s, y, n, heads, t, d, backward != 0);                                         \
    }                                                                                            \
    extern "C" __global__ void swiglu_fwd_##S(const T* g, const T* u, T* z, long n) {            \
        swiglu_fwd(g, u, z, n);                                                                  \
    }                                                                                            \
    extern "C" __global__ void swiglu_bwd_##S(const T* dz, const T* g, const T* u, T* dg, T* du, \
                                              long n) {                                          \
        swiglu_bwd(dz, g, u, dg, du, n);                                                         \
    }                                                                                            \
    extern "C" __global__ void attn_fwd_##S(const T* q, const T* k, const T* v,                 \
                                            const unsigned* seg, T* o, float* lse, int heads,    \
                                            int kv_heads, int t, int d, int window,              \
                                            float scale) {                                       \
        attn_fwd(q, k, v, seg, o, lse, heads, kv_heads, t, d, window, scale);                    \
    }                                                                                            \
    extern "C" __global__ void attn_delta_##S(const T* o, const T* dout, float* delta,          \
                                              long rows, int d) {                                \
        attn_delta(o, dout, delta, rows, d);                                                     \
    }                                                                                            \
    extern "C" __global__ void attn_bwd_dq_##S(                                                  \
        const T* q, const T* k, const T* v, const unsigned* seg, const T* dout,                  \
        const float* lse, const float* delta, T* dq, int heads, int kv_heads, int t, int d,      \
        int window, float scale) {                                                               \
        attn_bwd_dq(q, k, v, seg, dout, lse, delta, dq, heads, kv_heads, t, d, window, scale);   \
    }                                                                                            \
    extern "C" __global__ void attn_bwd_dkdv_##S(                                                \
        const T* q, const T* k, const T* v, const unsigned* seg, const T* dout,                  \
        const float* lse, const float* delta, float* dk, float* dv, int heads, int kv_heads,     \
        int t, int d, int window, float scale) {                                                 \
        attn_bwd_dkdv(q, k, v, seg, dout, lse, delta, dk, dv, heads, kv_heads, t, d, window,     \
                      scale);                                                                    \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(1024)                                           \
        cross_entropy_##S(T* z, const unsigned* target, float* loss,                             \
                                                 int vocab, float scaling, float grad_scale,     \
                                                 int grad) {                                     \
        cross_entropy(z, target, loss, vocab, scaling, grad_scale, grad != 0);                   \
    }                                                                                            \
    extern "C" __global__ void dropout_mask_##S(T* out, long n, unsigned long long seed,        \
                                                double p, float keep) {                          \
        dropout_mask(out, n, seed, p, keep);                                                     \
    }

ENTRY_POINTS(float, f32)
ENTRY_POINTS(bf16, bf16)
