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

// Entry points, one per storage type.
#define ROPE_ENTRY_POINTS(T, S)                                                                  \
    extern "C" __global__ void rope_##S(const T* x, const float* c, const float* s, T* y,        \
                                        long n, int heads, int t, int d, int backward) {         \
        rope(x, c, s, y, n, heads, t, d, backward != 0);                                         \
    }

ROPE_ENTRY_POINTS(float, f32)
ROPE_ENTRY_POINTS(bf16, bf16)
