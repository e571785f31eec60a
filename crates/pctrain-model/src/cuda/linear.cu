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

// Entry points, one per storage type.
#define LINEAR_ENTRY_POINTS(T, S)                                                                \
    extern "C" __global__ void dropout_mask_##S(T* out, long n, unsigned long long seed,         \
                                                double p, float keep) {                          \
        dropout_mask(out, n, seed, p, keep);                                                     \
    }

LINEAR_ENTRY_POINTS(float, f32)
LINEAR_ENTRY_POINTS(bf16, bf16)
