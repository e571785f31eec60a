//! Compiling the kernels (`common.cuh` and one `.cu` per layer, as one NVRTC source, once per
//! compute capability) and launching them on candle's CUDA device and stream.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::cuda_backend::cudarc;
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, DevicePtr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::DeviceId;
use candle_core::op::BackpropOp;
use candle_core::{CudaStorage, DType, Device, Result, Shape, Storage, Tensor};
use half::bf16;

/// candle's CUDA device.
pub type Dev = candle_core::CudaDevice;

/// The kernels' source: what they share, then one file per layer.
const SOURCE: &str = concat!(
    include_str!("common.cuh"),
    include_str!("norm.cu"),
    include_str!("rope.cu"),
    include_str!("mlp.cu"),
    include_str!("attention.cu"),
    include_str!("loss.cu"),
    include_str!("linear.cu"),
    include_str!("optim.cu"),
    include_str!("decode.cu"),
);

/// The name candle caches the compiled module under.
const MODULE: &str = "pctrain_kernels";

/// PTX of the kernels by compute capability.
static PTX: Mutex<Option<HashMap<(i32, i32), String>>> = Mutex::new(None);

/// Loaded kernels by device and name, so that a launch looks its kernel up once.
static FUNCTIONS: Mutex<Option<HashMap<(DeviceId, String), CudaFunction>>> = Mutex::new(None);

fn err(what: &str, e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("{what}: {e}"))
}

/// The CUDA device a tensor lives on.
pub fn device_of(t: &Tensor) -> Result<Dev> {
    match t.device() {
        Device::Cuda(d) => Ok(d.clone()),
        other => candle_core::bail!("a CUDA kernel got a tensor on {other:?}"),
    }
}

/// The kernel-name suffix of a storage type.
pub fn arg_dtype(dtype: DType) -> Option<&'static str> {
    match dtype {
        DType::F32 => Some("f32"),
        DType::BF16 => Some("bf16"),
        _ => None,
    }
}

/// The kernels compiled for `dev`'s compute capability.
fn ptx(dev: &Dev) -> Result<String> {
    let stream = dev.cuda_stream();
    let cc = stream
        .context()
        .compute_capability()
        .map_err(|e| err("reading the compute capability", e))?;
    let mut cache = PTX.lock().map_err(|e| err("the PTX cache", e))?;
    let cache = cache.get_or_insert_with(HashMap::new);
    if let Some(ptx) = cache.get(&cc) {
        return Ok(ptx.clone());
    }
    // NVRTC wants a 'static architecture name; one per compute capability is leaked.
    let arch: &'static str = Box::leak(format!("compute_{}{}", cc.0, cc.1).into_boxed_str());
    let ptx = compile(arch)?;
    cache.insert(cc, ptx.clone());
    Ok(ptx)
}

/// The kernels compiled by NVRTC to PTX for `arch` (`compute_90`, ...); needs no GPU.
pub fn compile(arch: &'static str) -> Result<String> {
    let opts = cudarc::nvrtc::CompileOptions {
        arch: Some(arch),
        use_fast_math: Some(false),
        name: Some("pctrain_kernels.cu".into()),
        ..Default::default()
    };
    Ok(cudarc::nvrtc::compile_ptx_with_opts(SOURCE, opts)
        .map_err(|e| err("compiling the kernels with NVRTC", e))?
        .to_src())
}

/// The kernel `name` (no storage-type suffix).
pub fn plain_kernel(dev: &Dev, name: &str) -> Result<CudaFunction> {
    let key = (dev.id(), name.to_string());
    if let Some(f) = FUNCTIONS
        .lock()
        .map_err(|e| err("the kernel cache", e))?
        .as_ref()
        .and_then(|m| m.get(&key))
    {
        return Ok(f.clone());
    }
    let f = dev
        .get_or_load_custom_func(name, MODULE, &ptx(dev)?)?
        .into_cuda_function();
    FUNCTIONS
        .lock()
        .map_err(|e| err("the kernel cache", e))?
        .get_or_insert_with(HashMap::new)
        .insert(key, f.clone());
    Ok(f)
}

/// The kernel `base` for storage type `dtype` (`base_f32`, `base_bf16`).
pub fn kernel(dev: &Dev, base: &str, dtype: DType) -> Result<CudaFunction> {
    let suffix =
        arg_dtype(dtype).ok_or_else(|| err(base, format!("no kernel for {dtype:?} tensors")))?;
    plain_kernel(dev, &format!("{base}_{suffix}"))
}

/// One kernel argument, by value.
enum Arg {
    I32(i32),
    I64(i64),
    U64(u64),
    F32(f32),
    F64(f64),
}

/// A kernel's arguments in order.
#[derive(Default)]
pub struct Args(Vec<Arg>);

impl Args {
    pub fn i32(&mut self, v: i32) {
        self.0.push(Arg::I32(v));
    }
    pub fn i64(&mut self, v: i64) {
        self.0.push(Arg::I64(v));
    }
    pub fn u64(&mut self, v: u64) {
        self.0.push(Arg::U64(v));
    }
    pub fn f32(&mut self, v: f32) {
        self.0.push(Arg::F32(v));
    }
    pub fn f64(&mut self, v: f64) {
        self.0.push(Arg::F64(v));
    }
    /// A device address.
    pub fn ptr(&mut self, p: u64) {
        self.0.push(Arg::U64(p));
    }
}

/// Launches `f` on a 1-D grid: `(blocks, threads per block, dynamic shared bytes)`.
pub fn launch(
    dev: &Dev,
    f: &CudaFunction,
    (grid, block, smem): (u32, u32, u32),
    fill: impl FnOnce(&mut Args),
) -> Result<()> {
    launch_3d(dev, f, (grid, 1, 1), block, smem, fill)
}

/// Launches `f` on a 3-D grid of 1-D blocks.
pub fn launch_3d(
    dev: &Dev,
    f: &CudaFunction,
    grid: (u32, u32, u32),
    block: u32,
    smem: u32,
    fill: impl FnOnce(&mut Args),
) -> Result<()> {
    if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
        return Ok(()); // nothing to do: an empty tensor
    }
    let mut args = Args::default();
    fill(&mut args);
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(f);
    for a in &args.0 {
        match a {
            Arg::I32(v) => b.arg(v),
            Arg::I64(v) => b.arg(v),
            Arg::U64(v) => b.arg(v),
            Arg::F32(v) => b.arg(v),
            Arg::F64(v) => b.arg(v),
        };
    }
    let cfg = LaunchConfig {
        grid_dim: grid,
        block_dim: (block, 1, 1),
        shared_mem_bytes: smem,
    };
    // SAFETY: every kernel takes exactly the arguments its wrapper (mod.rs, attention.rs)
    // pushes, in order, and indexes only within the sizes it is given.
    unsafe { b.launch(cfg) }.map_err(|e| err("launching a kernel", e))?;
    Ok(())
}

/// The device address of a tensor's elements (the tensor, made contiguous, is kept alive).
/// Kernels read through it, and the in-place ones (AdamW, the loss) write through it into
/// buffers the caller owns.
pub struct Slice {
    ptr: u64,
    _keep: Tensor,
}

impl Slice {
    pub fn new(t: &Tensor) -> Result<Self> {
        let t = t.contiguous()?;
        let ptr = {
            let (storage, layout) = t.storage_and_layout();
            let Storage::Cuda(cs) = &*storage else {
                candle_core::bail!("a CUDA kernel got a tensor on {:?}", t.device());
            };
            let stream = cs.device.cuda_stream();
            let offset = layout.start_offset() as u64;
            let (base, size) = match t.dtype() {
                DType::F32 => (cs.as_cuda_slice::<f32>()?.device_ptr(&stream).0, 4),
                DType::BF16 => (cs.as_cuda_slice::<bf16>()?.device_ptr(&stream).0, 2),
                DType::U32 => (cs.as_cuda_slice::<u32>()?.device_ptr(&stream).0, 4),
                other => candle_core::bail!("a CUDA kernel got a {other:?} tensor"),
            };
            base + offset * size
        };
        Ok(Slice { ptr, _keep: t })
    }

    /// For a kernel that updates `t` in place: `t` must be contiguous (a copy would take the
    /// update instead).
    pub fn in_place(t: &Tensor) -> Result<Self> {
        if !t.is_contiguous() {
            candle_core::bail!("an in-place CUDA update needs a contiguous tensor");
        }
        Slice::new(t)
    }

    pub fn push(&self, b: &mut Args) {
        b.ptr(self.ptr);
    }

    /// The device address of the first element.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }
}

/// A kernel's fresh output buffer.
pub enum Out {
    F32(CudaSlice<f32>, u64),
    Bf16(CudaSlice<bf16>, u64),
}

/// An uninitialised buffer of `n` elements of `dtype` (every kernel writes all of its output).
pub fn alloc(dev: &Dev, dtype: DType, n: usize) -> Result<Out> {
    let stream = dev.cuda_stream();
    let n = n.max(1);
    Ok(match dtype {
        DType::F32 => {
            // SAFETY: the kernel that takes this buffer writes every element before any read.
            let s = unsafe { dev.alloc::<f32>(n)? };
            let p = s.device_ptr(&stream).0;
            Out::F32(s, p)
        }
        DType::BF16 => {
            // SAFETY: as above.
            let s = unsafe { dev.alloc::<bf16>(n)? };
            let p = s.device_ptr(&stream).0;
            Out::Bf16(s, p)
        }
        other => candle_core::bail!("no kernel output of type {other:?}"),
    })
}

/// A buffer of `n` f32 zeros.
pub fn alloc_zeros(dev: &Dev, n: usize) -> Result<Out> {
    let stream = dev.cuda_stream();
    let s = dev.alloc_zeros::<f32>(n.max(1))?;
    let p = s.device_ptr(&stream).0;
    Ok(Out::F32(s, p))
}

impl Out {
    pub fn push(&self, b: &mut Args) {
        b.ptr(self.ptr());
    }

    /// The device address of the first element.
    pub fn ptr(&self) -> u64 {
        match self {
            Out::F32(_, p) | Out::Bf16(_, p) => *p,
        }
    }

    /// The buffer as a contiguous tensor of `shape`.
    pub fn into_tensor(self, dev: &Dev, shape: impl Into<Shape>) -> Result<Tensor> {
        let storage = match self {
            Out::F32(s, _) => CudaStorage::wrap_cuda_slice(s, dev.clone()),
            Out::Bf16(s, _) => CudaStorage::wrap_cuda_slice(s, dev.clone()),
        };
        Ok(Tensor::from_storage(
            Storage::Cuda(storage),
            shape,
            BackpropOp::none(),
            false,
        ))
    }
}
