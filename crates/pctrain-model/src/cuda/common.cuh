// What every kernel file of pctrain uses (cuda/launch.rs compiles them as one NVRTC source, for the
// GPU present). Each kernel has a CPU twin in src/layers/ (or the trainer's optimizer) that the
// tests compare it with. Activations are f32
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
