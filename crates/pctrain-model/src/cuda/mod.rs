//! pctrain's CUDA kernels (one `.cu` per layer beside this file), compiled with NVRTC at first use
//! for the compute capability of the GPU present, so one binary runs on any NVIDIA GPU its driver
//! supports; candle provides the device, the allocations and cuBLAS. Each function here has a CPU
//! twin in `crate::layers` (named in its doc) that `tests/cuda.rs` compares it with on a GPU.

mod attention;
pub mod decode;
mod gemm;
mod launch;

pub use attention::{attention_backward, attention_forward};

use candle_core::{DType, Result, Tensor};

use launch::{alloc, arg_dtype, device_of, kernel, launch, Dev, Slice};

/// Threads per block of the row-wise kernels.
const BLOCK: u32 = 256;
/// Rows per partial column sum of the RMS-norm weight gradient.
const NORM_CHUNK: usize = 64;

fn blocks(n: usize, per: u32) -> u32 {
    n.div_ceil(per as usize) as u32
}

/// [`crate::layers::norm::rms_norm_forward`]: `x` `[.., H]`, `w` `[H]`.
pub fn rms_norm_forward(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let dev = device_of(x)?;
    let h = x.dim(candle_core::D::Minus1)?;
    let rows = x.elem_count() / h;
    let (xs, ws) = (Slice::new(x)?, Slice::new(&w.to_dtype(x.dtype())?)?);
    let y = alloc(&dev, x.dtype(), x.elem_count())?;
    let f = kernel(&dev, "rms_norm_fwd", x.dtype())?;
    launch(&dev, &f, (rows as u32, BLOCK, 0), |b| {
        xs.push(b);
        ws.push(b);
        y.push(b);
        b.i32(h as i32);
        b.f32(eps as f32);
    })?;
    y.into_tensor(&dev, x.shape())
}

/// [`crate::layers::norm::rms_norm_backward`]: (`dx` `[.., H]`, `dw` `[H]` with `train_w`). `dw`
/// is reduced in two stages: column sums over chunks of [`NORM_CHUNK`] rows, then over the chunks,
/// each in a fixed order.
pub fn rms_norm_backward(
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    eps: f64,
    train_w: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let dev = device_of(x)?;
    let dtype = x.dtype();
    let h = x.dim(candle_core::D::Minus1)?;
    let rows = x.elem_count() / h;
    let dy = dy.to_dtype(dtype)?;
    let (dys, xs, ws) = (
        Slice::new(&dy)?,
        Slice::new(x)?,
        Slice::new(&w.to_dtype(dtype)?)?,
    );
    let dx = alloc(&dev, dtype, x.elem_count())?;
    let rstd = train_w.then(|| alloc(&dev, DType::F32, rows)).transpose()?;
    let f = kernel(&dev, "rms_norm_bwd", dtype)?;
    launch(&dev, &f, (rows as u32, BLOCK, 0), |b| {
        dys.push(b);
        xs.push(b);
        ws.push(b);
        dx.push(b);
        b.ptr(rstd.as_ref().map_or(0, |r| r.ptr()));
        b.i32(h as i32);
        b.f32(eps as f32);
    })?;
    let dx = dx.into_tensor(&dev, x.shape())?;
    let Some(rstd) = rstd else {
        return Ok((dx, None));
    };
    let chunks = rows.div_ceil(NORM_CHUNK);
    let partial = alloc(&dev, DType::F32, chunks * h)?;
    let f = kernel(&dev, "rms_norm_dw_partial", dtype)?;
    let grid = (chunks as u32, blocks(h, BLOCK), 1);
    launch::launch_3d(&dev, &f, grid, BLOCK, 0, |b| {
        dys.push(b);
        xs.push(b);
        rstd.push(b);
        partial.push(b);
        b.i32(rows as i32);
        b.i32(h as i32);
        b.i32(NORM_CHUNK as i32);
    })?;
    let dw = alloc(&dev, DType::F32, h)?;
    let sum = launch::plain_kernel(&dev, "col_sum_f32")?;
    launch(&dev, &sum, (blocks(h, BLOCK), BLOCK, 0), |b| {
        partial.push(b);
        dw.push(b);
        b.i32(chunks as i32);
        b.i32(h as i32);
    })?;
    Ok((dx, Some(dw.into_tensor(&dev, h)?.to_dtype(dtype)?)))
}

/// [`crate::layers::rope::rope_forward`] (`backward` false) or
/// [`crate::layers::rope::rope_backward`]: `x` `[B, heads, T, d]`, `cos`/`sin` `[B, T, d]` f32.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, backward: bool) -> Result<Tensor> {
    let dev = device_of(x)?;
    let (_, heads, t, d) = x.dims4()?;
    let n = x.elem_count();
    let xs = Slice::new(x)?;
    let (cs, ss) = (
        Slice::new(&cos.to_dtype(DType::F32)?)?,
        Slice::new(&sin.to_dtype(DType::F32)?)?,
    );
    let y = alloc(&dev, x.dtype(), n)?;
    let f = kernel(&dev, "rope", x.dtype())?;
    launch(&dev, &f, (blocks(n, BLOCK), BLOCK, 0), |b| {
        xs.push(b);
        cs.push(b);
        ss.push(b);
        y.push(b);
        b.i64(n as i64);
        b.i32(heads as i32);
        b.i32(t as i32);
        b.i32(d as i32);
        b.i32(backward as i32);
    })?;
    y.into_tensor(&dev, x.shape())
}

/// [`crate::layers::mlp::swiglu_forward`].
pub fn swiglu_forward(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let dev = device_of(gate)?;
    let n = gate.elem_count();
    let (gs, us) = (Slice::new(gate)?, Slice::new(up)?);
    let z = alloc(&dev, gate.dtype(), n)?;
    let f = kernel(&dev, "swiglu_fwd", gate.dtype())?;
    launch(&dev, &f, (blocks(n, BLOCK), BLOCK, 0), |b| {
        gs.push(b);
        us.push(b);
        z.push(b);
        b.i64(n as i64);
    })?;
    z.into_tensor(&dev, gate.shape())
}

/// [`crate::layers::mlp::swiglu_backward`]: (`dgate`, `dup`).
pub fn swiglu_backward(dz: &Tensor, gate: &Tensor, up: &Tensor) -> Result<(Tensor, Tensor)> {
    let dev = device_of(gate)?;
    let n = gate.elem_count();
    let dz = dz.to_dtype(gate.dtype())?;
    let (dzs, gs, us) = (Slice::new(&dz)?, Slice::new(gate)?, Slice::new(up)?);
    let dg = alloc(&dev, gate.dtype(), n)?;
    let du = alloc(&dev, gate.dtype(), n)?;
    let f = kernel(&dev, "swiglu_bwd", gate.dtype())?;
    launch(&dev, &f, (blocks(n, BLOCK), BLOCK, 0), |b| {
        dzs.push(b);
        gs.push(b);
        us.push(b);
        dg.push(b);
        du.push(b);
        b.i64(n as i64);
    })?;
    Ok((
        dg.into_tensor(&dev, gate.shape())?,
        du.into_tensor(&dev, gate.shape())?,
    ))
}

/// The cross-entropy of one chunk of rows (see [`crate::layers::loss`]): `z` `[M, V]` raw logits
/// (before the division by `scaling`), `targets` `[M]` u32. Returns each row's loss (f32 `[M]`)
/// and, with `grad_scale`, `dz = (softmax - onehot) * grad_scale / scaling` written over `z`'s
/// own buffer (so the chunk's logits take memory once).
pub fn cross_entropy(
    z: Tensor,
    targets: &Tensor,
    scaling: f64,
    grad_scale: Option<f64>,
) -> Result<(Tensor, Option<Tensor>)> {
    let dev = device_of(&z)?;
    let (m, vocab) = z.dims2()?;
    if targets.dims() != [m] || targets.dtype() != DType::U32 {
        candle_core::bail!("cross_entropy: {m} rows need u32 targets [{m}]");
    }
    let z = z.contiguous()?;
    let loss = alloc(&dev, DType::F32, m)?;
    let ts = Slice::new(targets)?;
    let f = kernel(&dev, "cross_entropy", z.dtype())?;
    {
        let zs = Slice::in_place(&z)?;
        launch(&dev, &f, (m as u32, BLOCK * 4, 0), |b| {
            zs.push(b);
            ts.push(b);
            loss.push(b);
            b.i32(vocab as i32);
            b.f32(scaling as f32);
            b.f32(grad_scale.unwrap_or(0.0) as f32);
            b.i32(grad_scale.is_some() as i32);
        })?;
    }
    Ok((loss.into_tensor(&dev, m)?, grad_scale.map(|_| z)))
}

/// Rows `index[r]` of `dst` (`[N, H]`, written in place) set to rows `r` of `src` (`[M, H]`, as
/// `dst`'s dtype); the indices must be distinct and below `N`.
pub fn write_rows(dst: &Tensor, index: &Tensor, src: &Tensor) -> Result<()> {
    let dev = device_of(dst)?;
    let (n, h) = dst.dims2()?;
    let m = src.dim(0)?;
    if src.dims() != [m, h] || index.dims() != [m] || index.dtype() != DType::U32 {
        candle_core::bail!(
            "write_rows: {:?} rows by {:?} indices into {:?}",
            src.dims(),
            index.dims(),
            dst.dims()
        );
    }
    let src = src.to_dtype(dst.dtype())?;
    let (ds, is, ss) = (Slice::in_place(dst)?, Slice::new(index)?, Slice::new(&src)?);
    let elems = m * h;
    let f = kernel(&dev, "write_rows", dst.dtype())?;
    launch(&dev, &f, (blocks(elems, BLOCK), BLOCK, 0), |b| {
        ds.push(b);
        is.push(b);
        ss.push(b);
        b.i64(elems as i64);
        b.i32(h as i32);
        b.i32(n as i32);
    })
}

/// [`crate::layers::linear::dropout_mask`] drawn on the GPU: `1/(1-p)` or 0 per element.
pub fn dropout_mask(p: f64, seed: u64, shape: &[usize], dtype: DType, dev: &Dev) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let out = alloc(dev, dtype, n)?;
    let f = kernel(dev, "dropout_mask", dtype)?;
    launch(dev, &f, (blocks(n, BLOCK), BLOCK, 0), |b| {
        out.push(b);
        b.i64(n as i64);
        b.u64(seed);
        b.f64(p);
        b.f32((1.0 / (1.0 - p)) as f32);
    })?;
    out.into_tensor(dev, shape)
}

/// The constants of one AdamW step (see the trainer's `optim.rs`).
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    pub wd_factor: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub step_size: f64,
    pub bc2_sqrt: f64,
    pub eps: f64,
}

/// Blocks (partial sums) per tensor in the first stage of [`grad_norm_clip`].
const NORM_PARTS: usize = 256;

/// The global L2 norm of `grads` and what clipping it to `max_norm` (0: off) makes of it, in one
/// device reduction (partial sums of squares per tensor, then one block over them all, each in
/// a fixed order) and without a read back: `[norm, coef, ok]` f32 with
/// `coef = min(1, max_norm / (norm + 1e-6))` (1 when off) and `ok` 1 when the norm and `loss`
/// (an f32 scalar on the device) are finite, else 0. [`adamw`] applies it.
pub fn grad_norm_clip(grads: &[Tensor], max_norm: f64, loss: &Tensor) -> Result<Tensor> {
    let dev = device_of(loss)?;
    let partials = launch::alloc_zeros(&dev, grads.len() * NORM_PARTS)?;
    for (i, g) in grads.iter().enumerate() {
        let n = g.elem_count();
        let gs = Slice::new(g)?;
        let f = kernel(&dev, "sq_sum", g.dtype())?;
        let parts = n.div_ceil(BLOCK as usize * 4).clamp(1, NORM_PARTS);
        let at = partials.ptr() + (i * NORM_PARTS * 4) as u64;
        launch(&dev, &f, (parts as u32, BLOCK, 0), |b| {
            gs.push(b);
            b.i64(n as i64);
            b.ptr(at);
        })?;
    }
    let ls = Slice::new(&loss.to_dtype(DType::F32)?)?;
    let out = alloc(&dev, DType::F32, 3)?;
    let f = launch::plain_kernel(&dev, "clip_finish")?;
    launch(&dev, &f, (1, 1024, 0), |b| {
        partials.push(b);
        b.i32((grads.len() * NORM_PARTS) as i32);
        ls.push(b);
        b.f32(max_norm as f32);
        out.push(b);
    })?;
    out.into_tensor(&dev, 3)
}

/// One fused AdamW update in place: `param` (f32, or bf16 with its f32 `master`), `m`, `v` f32.
/// With `clip` ([`grad_norm_clip`]'s) the gradient is scaled by its `coef`, and nothing changes
/// when its `ok` is 0.
pub fn adamw(
    param: &Tensor,
    master: Option<&Tensor>,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    c: AdamWStep,
    clip: Option<&Tensor>,
) -> Result<()> {
    let dev = device_of(param)?;
    let n = param.elem_count();
    // The kernel trusts these sizes: a mismatch must be an error here, not a stray write.
    let fits = |what: &str, t: &Tensor, f32_only: bool| -> Result<()> {
        if t.elem_count() != n || (f32_only && t.dtype() != DType::F32) {
            candle_core::bail!(
                "adamw: {what} ({:?}, {:?}) does not fit the parameter ({:?}, {:?})",
                t.dtype(),
                t.dims(),
                param.dtype(),
                param.dims()
            );
        }
        Ok(())
    };
    fits("the gradient", grad, false)?;
    fits("the first moment", m, true)?;
    fits("the second moment", v, true)?;
    if let Some(master) = master {
        fits("the master copy", master, true)?;
    }
    let grad = grad.to_dtype(param.dtype())?.contiguous()?;
    let gs = Slice::new(&grad)?;
    let clip = match clip {
        Some(t) if t.dims() == [3] && t.dtype() == DType::F32 => Some(Slice::new(t)?),
        Some(t) => candle_core::bail!(
            "adamw: a clip of {:?} {:?}, not f32 [3]",
            t.dtype(),
            t.dims()
        ),
        None => None,
    };
    let clip_ptr = clip.as_ref().map_or(0, Slice::ptr);
    let (ms, vs) = (Slice::in_place(m)?, Slice::in_place(v)?);
    let ps = Slice::in_place(param)?;
    let consts = |b: &mut launch::Args| {
        b.i64(n as i64);
        b.f32(c.wd_factor as f32);
        b.f32(c.beta1 as f32);
        b.f32((1.0 - c.beta1) as f32);
        b.f32(c.beta2 as f32);
        b.f32((1.0 - c.beta2) as f32);
        b.f32(c.step_size as f32);
        b.f32(c.bc2_sqrt as f32);
        b.f32(c.eps as f32);
    };
    match (param.dtype(), master) {
        (DType::F32, None) => {
            let f = launch::plain_kernel(&dev, "adamw_f32")?;
            launch(&dev, &f, (blocks(n, BLOCK), BLOCK, 0), |b| {
                b.ptr(clip_ptr);
                ps.push(b);
                gs.push(b);
                ms.push(b);
                vs.push(b);
                consts(b);
            })
        }
        (DType::BF16, Some(master)) => {
            let mst = Slice::in_place(master)?;
            let f = launch::plain_kernel(&dev, "adamw_bf16")?;
            launch(&dev, &f, (blocks(n, BLOCK), BLOCK, 0), |b| {
                b.ptr(clip_ptr);
                mst.push(b);
                ps.push(b);
                gs.push(b);
                ms.push(b);
                vs.push(b);
                consts(b);
            })
        }
        (dtype, _) => candle_core::bail!(
            "adamw: a {dtype:?} parameter {} an f32 master copy",
            if master.is_some() { "with" } else { "without" }
        ),
    }
}

/// The GPUs this process sees (those `CUDA_VISIBLE_DEVICES` leaves it).
pub fn device_count() -> Result<usize> {
    use candle_core::cuda_backend::cudarc::driver::result;
    let failed = |e| candle_core::Error::Msg(format!("the CUDA driver: {e}"));
    result::init().map_err(failed)?;
    Ok(result::device::get_count().map_err(failed)? as usize)
}

/// Keeps memory that the step frees in the device's pool instead of handing it back to the driver
/// at each synchronisation (the pool's release threshold, 0 by default, raised to its maximum),
/// so a step's allocations reuse it. Called once, when the device opens.
pub fn keep_freed_memory(dev: &Dev) -> Result<()> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let ctx = dev.cuda_stream().context().clone();
    ctx.bind_to_thread()
        .map_err(|e| candle_core::Error::Msg(format!("binding the CUDA context: {e}")))?;
    let mut pool = std::ptr::null_mut();
    let mut threshold = u64::MAX;
    // SAFETY: `pool` receives the default pool of the context's device; the attribute is a u64.
    let status = unsafe {
        let got = sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device());
        if got != sys::CUresult::CUDA_SUCCESS {
            got
        } else {
            sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                &mut threshold as *mut u64 as *mut std::ffi::c_void,
            )
        }
    };
    if status != sys::CUresult::CUDA_SUCCESS {
        candle_core::bail!("raising the memory pool's release threshold: {status:?}");
    }
    Ok(())
}

/// Memory in use on the GPU (by every process), MiB.
pub fn memory_used_mib(dev: &Dev) -> Result<f64> {
    let (free, total) = dev
        .cuda_stream()
        .context()
        .mem_get_info()
        .map_err(|e| candle_core::Error::Msg(format!("reading GPU memory: {e}")))?;
    Ok((total - free) as f64 / (1024.0 * 1024.0))
}

/// The device address of `t`'s elements, for a collective that sums into it in place: `t` must
/// be contiguous, and stay alive until the stream has run what reads the address.
pub fn device_address(t: &Tensor) -> Result<u64> {
    Ok(Slice::in_place(t)?.ptr())
}

/// A GPU's UUID (a MIG slice's own, for a slice), folded into one number: two processes that get
/// the same one share the GPU.
pub fn device_uuid(dev: &Dev) -> Result<u64> {
    use candle_core::cuda_backend::cudarc::driver::result;
    let ctx = dev.cuda_stream().context().clone();
    let uuid = result::device::get_uuid(ctx.cu_device())
        .map_err(|e| candle_core::Error::Msg(format!("reading the GPU's UUID: {e}")))?;
    let byte = |i: usize| u64::from(uuid.bytes[i] as u8);
    Ok((0..8).fold(0, |h, i| h << 8 | (byte(i) ^ byte(i + 8))))
}

/// Whether `x` is a tensor the kernels take: on a CUDA device, in f32 or bf16. Others (a CPU
/// tensor, an f16 one) take the CPU twin's tensor code.
pub fn runs_on(x: &Tensor) -> bool {
    x.device().is_cuda() && arg_dtype(x.dtype()).is_some()
}

#[cfg(test)]
mod tests {
    /// NVRTC compiles the kernels for Ampere and Hopper (no GPU needed), and every kernel the
    /// wrappers launch is in the result.
    #[test]
    fn the_kernels_compile_with_nvrtc_and_export_every_entry_point() {
        for arch in ["compute_80", "compute_90"] {
            let ptx = super::launch::compile(arch).unwrap();
            let mut names = vec![
                "col_sum_f32",
                "adamw_f32",
                "adamw_bf16",
                "clip_finish",
                "pick_rows",
            ];
            let typed = [
                "rms_norm_fwd",
                "rms_norm_bwd",
                "rms_norm_dw_partial",
                "rope",
                "swiglu_fwd",
                "swiglu_bwd",
                "attn_softmax",
                "attn_softmax_bwd",
                "attn_copy_rows",
                "attn_delta",
                "cross_entropy",
                "write_rows",
                "sq_sum",
                "dropout_mask",
                "cache_write",
                "cache_attention",
            ];
            let typed: Vec<String> = typed
                .iter()
                .flat_map(|n| [format!("{n}_f32"), format!("{n}_bf16")])
                .collect();
            names.extend(typed.iter().map(String::as_str));
            for name in names {
                assert!(
                    ptx.contains(&format!(".entry {name}(")),
                    "{arch}: no kernel {name}"
                );
            }
        }
    }
}
