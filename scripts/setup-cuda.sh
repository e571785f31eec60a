#!/usr/bin/env bash
# Installs a CUDA 13.0 toolkit from PyPI's nvidia wheels into .cuda/ (ignored by git), so that
# `cargo build --release --features cuda` works on a machine without a system toolkit, even one
# without a GPU. Prints the environment to build with:
#
#     eval "$(scripts/setup-cuda.sh)"
#     cargo build --release --features cuda
#
# What the binary needs at run time: the NVIDIA driver (libcuda.so.1, 580 or newer for CUDA 13.0),
# and libcublas.so.13, libcublasLt.so.13, libcurand.so.10, libnvrtc.so.13, libcudart.so.13 on the
# library path (a cu130 PyTorch install has them under site-packages/nvidia/cu13/lib); built with
# `--features cuda,mpi`, also libnccl.so.2 (site-packages/nvidia/nccl/lib there).
#
# Knobs: CUDA_DIR (default .cuda), CUDA_COMPUTE_CAP (default 90: the compute capability candle's
# own kernels are built for; pctrain's kernels are compiled at run time for the GPU present).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CUDA_DIR=${CUDA_DIR:-$ROOT/.cuda}
WHEELS=$CUDA_DIR/wheels
CUDA_HOME=$CUDA_DIR/nvidia/cu13

if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  mkdir -p "$WHEELS"
  # Stay on 13.0: newer nvcc emits PTX that a CUDA 13.0 driver may not load.
  pip download --quiet --no-deps -d "$WHEELS" \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 \
    nvidia-cublas==13.0.0.19 nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.48 >&2
  pip install --quiet --no-deps --no-index --target "$CUDA_DIR" "$WHEELS"/*.whl >&2
  rm -rf "$WHEELS"
fi

# NCCL, for runs of several GPUs (`--features cuda,mpi`): the version cudarc's bindings name.
# Its own folder: pip would replace the shared nvidia/ of the toolkit's.
NCCL_LIB=$CUDA_DIR/nccl/nvidia/nccl/lib
if [ ! -e "$NCCL_LIB/libnccl.so.2" ]; then
  mkdir -p "$WHEELS"
  pip download --quiet --no-deps -d "$WHEELS" nvidia-nccl-cu13==2.30.7 >&2
  pip install --quiet --no-deps --no-index --target "$CUDA_DIR/nccl" "$WHEELS"/*.whl >&2
  rm -rf "$WHEELS"
fi
ln -sfn libnccl.so.2 "$NCCL_LIB/libnccl.so"

# The wheels ship only versioned libraries; the linker wants the plain names.
for so in libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13 libcudart.so.13; do
  ln -sfn "$so" "$CUDA_HOME/lib/${so%%.so*}.so"
done

# libcuda.so comes with the driver, not with any wheel. To link without one, build a stub with the
# driver's soname that defines every cu* function cudarc may call. Never ship or load the stub.
if [ ! -f "$CUDA_HOME/lib/stubs/libcuda.so" ]; then
  CUDARC=$(grep -A1 '^name = "cudarc"' "$ROOT/Cargo.lock" | sed -n 's/^version = "\(.*\)"/\1/p' | head -1)
  REG=${CARGO_HOME:-$HOME/.cargo}/registry
  (cd "$ROOT" && cargo fetch --quiet >&2)
  DRIVER_RS=$(ls "$REG"/src/*/cudarc-"$CUDARC"/src/driver/sys/mod.rs 2>/dev/null | head -1 || true)
  if [ -z "$DRIVER_RS" ]; then
    mkdir -p "$CUDA_DIR/tmp"
    tar -xzf "$(ls "$REG"/cache/*/cudarc-"$CUDARC".crate | head -1)" -C "$CUDA_DIR/tmp" \
      "cudarc-$CUDARC/src/driver/sys/mod.rs"
    DRIVER_RS=$CUDA_DIR/tmp/cudarc-$CUDARC/src/driver/sys/mod.rs
  fi
  mkdir -p "$CUDA_HOME/lib/stubs"
  grep -o '^pub unsafe fn cu[A-Za-z0-9_]*' "$DRIVER_RS" | sed 's/^pub unsafe fn //' | sort -u \
    | awk '{printf "int %s(void){return 100;}\n", $1}' > "$CUDA_HOME/lib/stubs/libcuda_stub.c"
  gcc -shared -fPIC -O0 -Wl,-soname,libcuda.so.1 \
    -o "$CUDA_HOME/lib/stubs/libcuda.so" "$CUDA_HOME/lib/stubs/libcuda_stub.c"
fi

cat <<ENV
export CUDA_HOME=$CUDA_HOME
export PATH=$CUDA_HOME/bin:\$PATH
export LIBRARY_PATH=$CUDA_HOME/lib:$CUDA_HOME/lib/stubs:$NCCL_LIB\${LIBRARY_PATH:+:\$LIBRARY_PATH}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CUDARC_CUDA_VERSION=13000
export CUDAFORGE_THREADS=\$(nproc)
ENV
