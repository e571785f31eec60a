//! Decoding's kernels (`decode.cu`): the twins of [`crate::layers::kv_cache`]'s cache writes and
//! attention, and of [`crate::generate::pick`] over rows of logits.

use candle_core::{DType, Result, Tensor};

use super::launch::{alloc, device_of, kernel, launch_3d, plain_kernel, Slice};
use crate::generate::Sampling;
use crate::layers::kv_cache::{CacheAttention, CacheShape};

/// Threads of a picking block.
const PICK_THREADS: u32 = 1024;

/// [`crate::layers::kv_cache::cache_write_cpu`]: `k`, `v` `[N, kv_heads * d]` into layer
/// `layer` of `keys` and `values` (`[shape.len()]` each, the weights' type), at each token's
/// slot and position (`slots`, `positions`: `[N]` u32).
#[allow(clippy::too_many_arguments)]
pub fn cache_write(
    shape: &CacheShape,
    layer: usize,
    slots: &Tensor,
    positions: &Tensor,
    k: &Tensor,
    v: &Tensor,
    keys: &Tensor,
    values: &Tensor,
) -> Result<()> {
    let dev = device_of(k)?;
    let n = slots.elem_count();
    let (ks, vs) = (Slice::new(k)?, Slice::new(v)?);
    let (ss, ps) = (Slice::new(slots)?, Slice::new(positions)?);
    let (keys, values) = (Slice::in_place(keys)?, Slice::in_place(values)?);
    let f = kernel(&dev, "cache_write", k.dtype())?;
    let grid = (n as u32, shape.kv_heads as u32, 1);
    let threads = (shape.d as u32).next_multiple_of(32).min(1024);
    launch_3d(&dev, &f, grid, threads, 0, |b| {
        ks.push(b);
        vs.push(b);
        ss.push(b);
        ps.push(b);
        keys.push(b);
        values.push(b);
        b.i32(layer as i32);
        b.i32(shape.slots as i32);
        b.i32(shape.kv_heads as i32);
        b.i32(shape.cap as i32);
        b.i32(shape.d as i32);
    })
}

/// [`crate::layers::kv_cache::cache_attention_cpu`]: each token's queries `q` `[N, heads * d]`
/// over its slot's cached positions in layer `layer`; the output is shaped as `q`.
#[allow(clippy::too_many_arguments)]
pub fn cache_attention(
    shape: &CacheShape,
    layer: usize,
    attn: &CacheAttention,
    slots: &Tensor,
    positions: &Tensor,
    q: &Tensor,
    keys: &Tensor,
    values: &Tensor,
) -> Result<Tensor> {
    if shape.d > 256 {
        candle_core::bail!("decoding on the GPU takes heads of at most 256 features");
    }
    let dev = device_of(q)?;
    let n = slots.elem_count();
    let (qs, ks, vs) = (Slice::new(q)?, Slice::new(keys)?, Slice::new(values)?);
    let (ss, ps) = (Slice::new(slots)?, Slice::new(positions)?);
    let out = alloc(&dev, q.dtype(), q.elem_count())?;
    let f = kernel(&dev, "cache_attention", q.dtype())?;
    let grid = (n as u32, attn.heads as u32, 1);
    let threads = (shape.d as u32).next_multiple_of(32).max(128);
    launch_3d(&dev, &f, grid, threads, 0, |b| {
        qs.push(b);
        ks.push(b);
        vs.push(b);
        ss.push(b);
        ps.push(b);
        out.push(b);
        b.i32(layer as i32);
        b.i32(shape.slots as i32);
        b.i32(attn.heads as i32);
        b.i32(shape.kv_heads as i32);
        b.i32(shape.cap as i32);
        b.i32(shape.d as i32);
        b.i32(attn.window as i32);
        b.f32(attn.scale);
    })?;
    out.into_tensor(&dev, q.shape())
}

/// [`crate::generate::pick`] for each row of `logits` (`[M, V]` f32) with its draw (`draws`:
/// `[M]` f32), using `scratch` (at least `M * V` f32); the chosen ids, `[M]` u32.
pub fn pick_rows(
    logits: &Tensor,
    draws: &Tensor,
    scratch: &Tensor,
    sampling: &Sampling,
) -> Result<Tensor> {
    let dev = device_of(logits)?;
    let (m, v) = logits.dims2()?;
    if scratch.elem_count() < m * v || logits.dtype() != DType::F32 {
        candle_core::bail!("picking needs f32 logits and scratch for every row");
    }
    let (top_k, inv_t, top_p) = match *sampling {
        Sampling::Greedy => (-1, 1.0, 1.0),
        Sampling::Sample {
            temperature,
            top_p,
            top_k,
            ..
        } => (
            top_k.min(v) as i32,
            // In f32, as the CPU twin divides.
            1.0 / temperature as f32,
            top_p as f32,
        ),
    };
    let out = Tensor::zeros(m, DType::U32, logits.device())?;
    let (ls, ds) = (Slice::new(logits)?, Slice::new(draws)?);
    let (sc, os) = (Slice::in_place(scratch)?, Slice::in_place(&out)?);
    let f = plain_kernel(&dev, "pick_rows")?;
    launch_3d(&dev, &f, (m as u32, 1, 1), PICK_THREADS, 0, |b| {
        ls.push(b);
        ds.push(b);
        sc.push(b);
        os.push(b);
        b.i32(v as i32);
        b.i32(top_k);
        b.f32(inv_t);
        b.f32(top_p);
    })?;
    Ok(out)
}
