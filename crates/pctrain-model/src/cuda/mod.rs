//! pctrain's CUDA kernels (`kernels.cu`), compiled with NVRTC at first use for the compute
//! capability of the GPU present, so one binary runs on any NVIDIA GPU its driver supports; candle
//! provides the device, the allocations and cuBLAS. Each function here has a CPU twin in
//! `crate::layers` (named in its doc) that `tests/cuda.rs` compares it with on a GPU.

mod launch;

use candle_core::{DType, Result, Tensor};

use launch::{alloc, arg_dtype, device_of, kernel, launch, Dev, Out, Slice};

/// Threads per block of the row-wise kernels.
const BLOCK: u32 = 256;

/// Warps (query or key rows) per attention block; must match `ROWS` in `kernels.cu`.
const ATTN_ROWS: usize = 8;
/// Rows of a staged attention tile; must match `TILE` in `kernels.cu`.
const ATTN_TILE: usize = 32;
/// The largest head dimension the attention kernels hold in registers.
pub const MAX_HEAD_DIM: usize = 128;

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

/// [`crate::layers::norm::rms_norm_backward`]: (`dx` `[.., H]`, `dw` `[H]`).
pub fn rms_norm_backward(
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor)> {
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
    let g = alloc(&dev, DType::F32, x.elem_count())?;
    let f = kernel(&dev, "rms_norm_bwd", dtype)?;
    launch(&dev, &f, (rows as u32, BLOCK, 0), |b| {
        dys.push(b);
        xs.push(b);
        ws.push(b);
        dx.push(b);
        g.push(b);
        b.i32(h as i32);
        b.f32(eps as f32);
    })?;
    let dw = alloc(&dev, DType::F32, h)?;
    let sum = launch::plain_kernel(&dev, "col_sum_f32")?;
    launch(&dev, &sum, (blocks(h, BLOCK), BLOCK, 0), |b| {
        g.push(b);
        dw.push(b);
        b.i32(rows as i32);
        b.i32(h as i32);
    })?;
    Ok((
        dx.into_tensor(&dev, x.shape())?,
        dw.into_tensor(&dev, h)?.to_dtype(dtype)?,
    ))
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

pub use crate::layers::attention::AttentionSaved;

/// Shapes and mask of one attention call.
struct AttentionDims {
    batch: usize,
    heads: usize,
    kv_heads: usize,
    t: usize,
    d: usize,
}

fn attention_dims(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    segment_ids: &Tensor,
) -> Result<AttentionDims> {
    let (batch, heads, t, d) = q.dims4()?;
    let (kb, kv_heads, s, kd) = k.dims4()?;
    if kb != batch
        || s != t
        || kd != d
        || kv_heads == 0
        || heads % kv_heads != 0
        || v.dims() != k.dims()
    {
        candle_core::bail!(
            "attention: q {:?}, k {:?} and v {:?} do not fit (training attention needs S = T)",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    if t > i32::MAX as usize {
        candle_core::bail!("attention: {t} positions are more than the kernels index");
    }
    if d > MAX_HEAD_DIM {
        candle_core::bail!("attention: head dimension {d} is above the kernels' {MAX_HEAD_DIM}");
    }
    if segment_ids.dims() != [batch, t] || segment_ids.dtype() != DType::U32 {
        candle_core::bail!("attention: segment ids must be u32 [{batch}, {t}]");
    }
    Ok(AttentionDims {
        batch,
        heads,
        kv_heads,
        t,
        d,
    })
}

/// [`crate::layers::attention::flash_attention_forward`]: attention with the mask built from
/// `segment_ids` (`[B, T]` u32) and `window` (0: none), without storing the scores: `q`
/// `[B, heads, T, d]`, `k`, `v` `[B, kv_heads, T, d]` -> output `[B, heads, T, d]` and the row
/// log-sum-exps.
pub fn attention_forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    segment_ids: &Tensor,
    window: usize,
    scale: f64,
) -> Result<AttentionSaved> {
    let dev = device_of(q)?;
    let a = attention_dims(q, k, v, segment_ids)?;
    let dtype = q.dtype();
    let (qs, ks, vs, seg) = (
        Slice::new(q)?,
        Slice::new(&k.to_dtype(dtype)?)?,
        Slice::new(&v.to_dtype(dtype)?)?,
        Slice::new(segment_ids)?,
    );
    let o = alloc(&dev, dtype, q.elem_count())?;
    let lse = alloc(&dev, DType::F32, a.batch * a.heads * a.t)?;
    let smem = (2 * ATTN_TILE * (a.d + 1) + ATTN_ROWS * a.d) * 4;
    let f = kernel(&dev, "attn_fwd", dtype)?;
    let grid = (
        a.t.div_ceil(ATTN_ROWS) as u32,
        a.heads as u32,
        a.batch as u32,
    );
    launch::launch_3d(&dev, &f, grid, (ATTN_ROWS * 32) as u32, smem as u32, |b| {
        qs.push(b);
        ks.push(b);
        vs.push(b);
        seg.push(b);
        o.push(b);
        lse.push(b);
        b.i32(a.heads as i32);
        b.i32(a.kv_heads as i32);
        b.i32(a.t as i32);
        b.i32(a.d as i32);
        b.i32(window.min(a.t) as i32);
        b.f32(scale as f32);
    })?;
    Ok(AttentionSaved {
        out: o.into_tensor(&dev, q.shape())?,
        lse: lse.into_tensor(&dev, (a.batch, a.heads, a.t))?,
    })
}

/// [`crate::layers::attention::flash_attention_backward`]: gradients of [`attention_forward`],
/// recomputing the probabilities: (`dq`, `dk`, `dv`), the key/value gradients summed over the
/// query heads that share them.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dout: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    saved: &AttentionSaved,
    segment_ids: &Tensor,
    window: usize,
    scale: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dev = device_of(q)?;
    let a = attention_dims(q, k, v, segment_ids)?;
    let dtype = q.dtype();
    let dout = dout.to_dtype(dtype)?.contiguous()?;
    let (qs, ks, vs, seg) = (
        Slice::new(q)?,
        Slice::new(&k.to_dtype(dtype)?)?,
        Slice::new(&v.to_dtype(dtype)?)?,
        Slice::new(segment_ids)?,
    );
    let (dos, os, lses) = (
        Slice::new(&dout)?,
        Slice::new(&saved.out)?,
        Slice::new(&saved.lse)?,
    );
    let rows = a.batch * a.heads * a.t;
    let delta = alloc(&dev, DType::F32, rows)?;
    let f = kernel(&dev, "attn_delta", dtype)?;
    launch(
        &dev,
        &f,
        (blocks(rows, ATTN_ROWS as u32), (ATTN_ROWS * 32) as u32, 0),
        |b| {
            os.push(b);
            dos.push(b);
            delta.push(b);
            b.i64(rows as i64);
            b.i32(a.d as i32);
        },
    )?;
    let grid = (
        a.t.div_ceil(ATTN_ROWS) as u32,
        a.heads as u32,
        a.batch as u32,
    );
    let threads = (ATTN_ROWS * 32) as u32;
    let smem = ((2 * ATTN_TILE * (a.d + 1) + 2 * ATTN_ROWS * a.d) * 4) as u32;
    let common = |b: &mut launch::Args| {
        b.i32(a.heads as i32);
        b.i32(a.kv_heads as i32);
        b.i32(a.t as i32);
        b.i32(a.d as i32);
        b.i32(window.min(a.t) as i32);
        b.f32(scale as f32);
    };
    // Both backward kernels read the same inputs, then write their outputs.
    let inputs = |b: &mut launch::Args| {
        for s in [&qs, &ks, &vs, &seg, &dos, &lses] {
            s.push(b);
        }
        delta.push(b);
    };
    let dq = alloc(&dev, dtype, q.elem_count())?;
    let f = kernel(&dev, "attn_bwd_dq", dtype)?;
    launch::launch_3d(&dev, &f, grid, threads, smem, |b| {
        inputs(b);
        dq.push(b);
        common(b);
    })?;
    let dk_h = alloc(&dev, DType::F32, q.elem_count())?;
    let dv_h = alloc(&dev, DType::F32, q.elem_count())?;
    let f = kernel(&dev, "attn_bwd_dkdv", dtype)?;
    launch::launch_3d(&dev, &f, grid, threads, smem, |b| {
        inputs(b);
        dk_h.push(b);
        dv_h.push(b);
        common(b);
    })?;
    // Sum the query heads of each key/value head, in a fixed order.
    let group = a.heads / a.kv_heads;
    let per_kv = |t: Out| -> Result<Tensor> {
        t.into_tensor(&dev, (a.batch, a.kv_heads, group, a.t, a.d))?
            .sum(2)?
            .to_dtype(dtype)
    };
    Ok((
        dq.into_tensor(&dev, q.shape())?,
        per_kv(dk_h)?,
        per_kv(dv_h)?,
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

/// One fused AdamW update in place: `param` (f32, or bf16 with its f32 `master`), `m`, `v` f32.
pub fn adamw(
    param: &Tensor,
    master: Option<&Tensor>,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    c: AdamWStep,
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

/// Memory in use on the GPU (by every process), MiB.
pub fn memory_used_mib(dev: &Dev) -> Result<f64> {
    let (free, total) = dev
        .cuda_stream()
        .context()
        .mem_get_info()
        .map_err(|e| candle_core::Error::Msg(format!("reading GPU memory: {e}")))?;
    Ok((total - free) as f64 / (1024.0 * 1024.0))
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
            let mut names = vec!["col_sum_f32", "adamw_f32", "adamw_bf16"];
            let typed = [
                "rms_norm_fwd",
                "rms_norm_bwd",
                "rope",
                "swiglu_fwd",
                "swiglu_bwd",
                "attn_fwd",
                "attn_delta",
                "attn_bwd_dq",
                "attn_bwd_dkdv",
                "cross_entropy",
                "dropout_mask",
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
