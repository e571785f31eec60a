// Decoding (layers/kv_cache.rs, generate/sample.rs): the key/value cache written in place, each
// token's attention over its slot's cache, and the choice of each next token, on the device so
// that a step reads back nothing but the chosen ids.
//
// The cache of (layer, slot, key/value head) starts at ((layer * slots + slot) * kv_heads +
// head) * cap * d; keys lie in tiles of DECODE_TILE positions stored transposed ([d, TILE]),
// values [cap, d].

#define DECODE_TILE 16
// Positions whose scores a block holds at once (shared memory, f32).
#define DECODE_CHUNK 1024

__device__ __forceinline__ long cache_base(int layer, int slot, int head, int slots, int kv_heads,
                                           int cap, int d) {
    return (((long)layer * slots + slot) * kv_heads + head) * cap * d;
}
__device__ __forceinline__ long key_at(int pos, int c, int d) {
    return (long)(pos / DECODE_TILE) * DECODE_TILE * d + c * DECODE_TILE + pos % DECODE_TILE;
}

// Keys and values [n, kv_heads * d] of a step's tokens into `layer` of the cache. Grid: (n,
// kv_heads); threads over the d features.
template <typename T>
__device__ void cache_write(const T* k, const T* v, const unsigned* slots, const unsigned* pos,
                            T* keys, T* values, int layer, int nslots, int kv_heads, int cap,
                            int d) {
    int t = blockIdx.x, g = blockIdx.y;
    long base = cache_base(layer, slots[t], g, nslots, kv_heads, cap, d);
    int p = pos[t];
    long row = ((long)t * kv_heads + g) * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        keys[base + key_at(p, c, d)] = k[row + c];
        values[base + (long)p * d + c] = v[row + c];
    }
}

// Token t's query head h ([n, heads * d]) over positions lo..=pos of its slot: softmax(scale q
// k^T) v into out. One block a (token, head), blockDim >= d; chunks of DECODE_CHUNK positions
// with a running maximum and sum (the CPU twin normalises all scores at once: the same values to
// rounding).
template <typename T>
__device__ void cache_attention(const T* q, const T* keys, const T* values,
                                const unsigned* slots, const unsigned* pos, T* out, int layer,
                                int nslots, int heads, int kv_heads, int cap, int d, int window,
                                float scale) {
    __shared__ float qs[256];
    __shared__ float s[DECODE_CHUNK];
    int t = blockIdx.x, h = blockIdx.y;
    int p = pos[t];
    int lo = window > 0 ? max(0, p + 1 - window) : 0;
    long base = cache_base(layer, slots[t], h / (heads / kv_heads), nslots, kv_heads, cap, d);
    long row = ((long)t * heads + h) * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x) qs[c] = ld(q, row + c);
    __syncthreads();
    float m = NEG_INF, l = 0.f, acc = 0.f;
    for (int s0 = lo; s0 <= p; s0 += DECODE_CHUNK) {
        int len = min(DECODE_CHUNK, p + 1 - s0);
        float cmax = NEG_INF;
        for (int i = threadIdx.x; i < len; i += blockDim.x) {
            int j = s0 + i;
            float dot = 0.f;
            for (int c = 0; c < d; c++) dot = fmaf(qs[c], ld(keys, base + key_at(j, c, d)), dot);
            s[i] = dot * scale;
            cmax = fmaxf(cmax, s[i]);
        }
        cmax = block_max(cmax);
        float m_new = fmaxf(m, cmax);
        float corr = m == NEG_INF ? 0.f : expf(m - m_new);
        float part = 0.f;
        for (int i = threadIdx.x; i < len; i += blockDim.x) {
            s[i] = expf(s[i] - m_new);
            part += s[i];
        }
        l = l * corr + block_sum(part);
        __syncthreads();
        if (threadIdx.x < d) {
            float a = acc * corr;
            for (int i = 0; i < len; i++)
                a = fmaf(s[i], ld(values, base + (long)(s0 + i) * d + threadIdx.x), a);
            acc = a;
        }
        m = m_new;
        __syncthreads();
    }
    if (threadIdx.x < d) st(out, row + threadIdx.x, acc / l);
}

// The ordered key of a float: larger floats have larger keys.
__device__ __forceinline__ unsigned order_key(float x) {
    unsigned u = __float_as_uint(x);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float key_value(unsigned k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// Row r of logits [rows, v] -> out[r]: the first largest (top_k = -1: greedy, and for a row with
// a NaN or an infinity), or the token where the running sum, in id order, of the weights
// exp((x - max) * inv_t), cut to the top_k largest logits (0: all) and then to the nucleus of
// mass top_p, first passes draws[r] times their sum. One block a row (a power of two, at most
// 1024 threads); scratch holds the rows' weights [rows, v].
extern "C" __global__ void pick_rows(const float* logits, const float* draws, float* scratch,
                                     unsigned* out, int v, int top_k, float inv_t, float top_p) {
    __shared__ float best_v[1024];
    __shared__ int best_i[1024];
    __shared__ double spans[1024];
    __shared__ double total_mass;
    int r = blockIdx.x, tid = threadIdx.x, nt = blockDim.x;
    const float* x = logits + (long)r * v;
    float* e = scratch + (long)r * v;
    // The first largest (NaN never wins), and whether any logit is not finite.
    float bv = NEG_INF;
    int bi = -1;
    float odd = 0.f;
    for (int i = tid; i < v; i += nt) {
        float xi = x[i];
        if (xi != xi || xi == __int_as_float(0x7f800000)) odd = 1.f;
        if (xi == xi && (bi < 0 || xi > bv)) bv = xi, bi = i;
    }
    best_v[tid] = bv;
    best_i[tid] = bi;
    __syncthreads();
    for (int w = nt / 2; w > 0; w >>= 1) {
        if (tid < w) {
            float ov = best_v[tid + w];
            int oi = best_i[tid + w];
            bool better = oi >= 0 && (best_i[tid] < 0 || ov > best_v[tid] ||
                                      (ov == best_v[tid] && oi < best_i[tid]));
            if (better) best_v[tid] = ov, best_i[tid] = oi;
        }
        __syncthreads();
    }
    float m = best_v[0];
    int argmax = best_i[0] < 0 ? 0 : best_i[0];
    // Greedy, or a row the CPU twin also takes greedily: its maximum is not finite.
    if (top_k < 0 || block_sum(odd) > 0.f || m == NEG_INF) {
        if (tid == 0) out[r] = argmax;
        return;
    }
    // The k-th largest logit: bit by bit from the top, the largest key with at least k logits at
    // or above it.
    float floor = NEG_INF;
    if (top_k > 0 && top_k < v) {
        unsigned prefix = 0;
        for (int bit = 31; bit >= 0; bit--) {
            unsigned cand = prefix | (1u << bit);
            float n = 0.f;
            for (int i = tid; i < v; i += nt) n += order_key(x[i]) >= cand ? 1.f : 0.f;
            if (block_sum(n) >= (float)top_k) prefix = cand;
        }
        floor = key_value(prefix);
    }
    float part = 0.f;
    for (int i = tid; i < v; i += nt) {
        float w = x[i] >= floor ? expf((x[i] - m) * inv_t) : 0.f;
        e[i] = w;
        part += w;
    }
    float total = block_sum(part);
    if (top_p < 1.f) {
        // The nucleus's last weight: the largest weight whose weights at or above it reach
        // top_p of the total (weights are not negative, so their bits are in order).
        float target = top_p * total;
        unsigned prefix = 0;
        for (int bit = 30; bit >= 0; bit--) {
            unsigned cand = prefix | (1u << bit);
            float s = 0.f;
            for (int i = tid; i < v; i += nt) s += __float_as_uint(e[i]) >= cand ? e[i] : 0.f;
            if (block_sum(s) >= target) prefix = cand;
        }
        // The largest weight is the maximum's, exp(0) = 1: a target of 0 keeps just it.
        float cut = target > 0.f ? __uint_as_float(prefix) : 1.f;
        for (int i = tid; i < v; i += nt)
            if (e[i] < cut) e[i] = 0.f;
    }
    __syncthreads();
    // The walk in id order, in f64 as the CPU twin walks (there every weight moves the sum):
    // each thread sums a contiguous span, the spans' sums are scanned in order, and the thread
    // whose span holds the target walks it.
    int span = (v + nt - 1) / nt, first = min(v, tid * span), last = min(v, first + span);
    double own = 0.0;
    for (int i = first; i < last; i++) own += (double)e[i];
    spans[tid] = own;
    __syncthreads();
    if (tid == 0) {
        double acc = 0.0;
        for (int i = 0; i < nt; i++) {
            double c = spans[i];
            spans[i] = acc;
            acc += c;
        }
        total_mass = acc;
        best_i[0] = -1;
    }
    __syncthreads();
    double target = (double)draws[r] * total_mass;
    double base = spans[tid];
    double end = tid == nt - 1 ? total_mass : spans[tid + 1];
    if (first < last && target >= base && target < end) {
        // Summed from 0 as `own` was, so that base + the span's sum is `end` to the bit and the
        // walk ends inside the span.
        double s = 0.0;
        for (int i = first; i < last; i++) {
            if (e[i] > 0.f) {
                s += (double)e[i];
                best_i[0] = i;
                if (target < base + s) break;
            }
        }
    }
    __syncthreads();
    if (tid == 0) out[r] = best_i[0] < 0 ? argmax : best_i[0];
}

// Entry points, one per storage type.
#define DECODE_ENTRY_POINTS(T, S)                                                                \
    extern "C" __global__ void cache_write_##S(const T* k, const T* v, const unsigned* slots,    \
                                               const unsigned* pos, T* keys, T* values,          \
                                               int layer, int nslots, int kv_heads, int cap,     \
                                               int d) {                                          \
        cache_write(k, v, slots, pos, keys, values, layer, nslots, kv_heads, cap, d);            \
    }                                                                                            \
    extern "C" __global__ void cache_attention_##S(                                              \
        const T* q, const T* keys, const T* values, const unsigned* slots, const unsigned* pos,  \
        T* out, int layer, int nslots, int heads, int kv_heads, int cap, int d, int window,      \
        float scale) {                                                                           \
        cache_attention(q, keys, values, slots, pos, out, layer, nslots, heads, kv_heads, cap,   \
                        d, window, scale);                                                       \
    }

DECODE_ENTRY_POINTS(float, f32)
DECODE_ENTRY_POINTS(bf16, bf16)
