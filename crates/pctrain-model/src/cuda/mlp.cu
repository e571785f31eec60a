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

// Entry points, one per storage type.
#define MLP_ENTRY_POINTS(T, S)                                                                   \
    extern "C" __global__ void swiglu_fwd_##S(const T* g, const T* u, T* z, long n) {            \
        swiglu_fwd(g, u, z, n);                                                                  \
    }                                                                                            \
    extern "C" __global__ void swiglu_bwd_##S(const T* dz, const T* g, const T* u, T* dg, T* du, \
                                              long n) {                                          \
        swiglu_bwd(dz, g, u, dg, du, n);                                                         \
    }

MLP_ENTRY_POINTS(float, f32)
MLP_ENTRY_POINTS(bf16, bf16)
