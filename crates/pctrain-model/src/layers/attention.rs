//! Grouped-query attention with a causal mask, an optional sliding window, and segment ids so that
//! packed samples never see each other.

use candle_core::{DType, Device, Result, Tensor, D};

/// Additive mask `[B, 1, T, T]`: 0 where query `q` may attend key `k` (same segment, `k <= q`,
/// and `q - k < window`), minus infinity elsewhere. Padding (segment 0) attends within itself.
pub fn attention_mask(
    segment_ids: &[u32],
    batch: usize,
    window: Option<usize>,
    device: &Device,
) -> Result<Tensor> {
    let t = segment_ids.len() / batch;
    let mut mask = vec![f32::NEG_INFINITY; batch * t * t];
    for b in 0..batch {
        let seg = &segment_ids[b * t..(b + 1) * t];
        for q in 0..t {
            for k in 0..=q {
                let in_window = window.is_none_or(|w| q - k < w);
                if seg[q] == seg[k] && in_window {
                    mask[(b * t + q) * t + k] = 0.0;
                }
            }
        }
    }
    Tensor::from_vec(mask, (batch, 1, t, t), device)
}

/// `q`: `[B, heads, T, d]`, `k`, `v`: `[B, kv_heads, S, d]`, `mask`: `[B, 1, T, S]` ->
/// `[B, heads, T, d]`. Scores are computed and normalised in f32.
pub fn attention_forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    let p = attention_probs(q, k, mask, scale)?;
    attention_output(&p, v)?.to_dtype(q.dtype())
}

/// `p`: `[B, heads, T, S]` probabilities, `v`: `[B, kv_heads, S, d]` -> `p v`: `[B, heads, T, d]`
/// in f32.
pub fn attention_output(p: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (b, heads, t, _) = p.dims4()?;
    let (kv_heads, d) = (v.dim(1)?, v.dim(3)?);
    let out = grouped(p, kv_heads)?.matmul(&v.to_dtype(DType::F32)?)?;
    out.reshape((b, heads, t, d))
}

/// Softmax of the masked, scaled scores: `[B, heads, T, S]` in f32 for `S` keys (`S = T` in
/// training; the cached length when decoding).
pub fn attention_probs(q: &Tensor, k: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, heads, t, _) = q.dims4()?;
    let (kv_heads, s) = (k.dim(1)?, k.dim(2)?);
    let q = grouped(&q.to_dtype(DType::F32)?, kv_heads)?;
    let k = k.to_dtype(DType::F32)?;
    let scores = (q.matmul(&k.t()?)? * scale)?.reshape((b, heads, t, s))?;
    let scores = scores.broadcast_add(mask)?;
    let max = scores.max_keepdim(D::Minus1)?;
    let e = scores.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Additive mask `[1, 1, n, start + n]` for `n` new tokens at positions `start..start + n`
/// attending to every cached position and to each other, causally, within the window.
pub fn decode_mask(
    start: usize,
    n: usize,
    window: Option<usize>,
    device: &Device,
) -> Result<Tensor> {
    let total = start + n;
    let mut mask = vec![f32::NEG_INFINITY; n * total];
    for i in 0..n {
        let q = start + i;
        for k in 0..=q {
            if window.is_none_or(|w| q - k < w) {
                mask[i * total + k] = 0.0;
            }
        }
    }
    Tensor::from_vec(mask, (1, 1, n, total), device)
}

/// `[B, heads, T, X]` -> `[B, kv_heads, group*T, X]`: each group of query heads shares one
/// key/value head (head `h` uses key/value head `h / group`, as transformers' `repeat_kv`).
fn grouped(x: &Tensor, kv_heads: usize) -> Result<Tensor> {
    let (b, heads, t, d) = x.dims4()?;
    x.contiguous()?
        .reshape((b, kv_heads, heads / kv_heads * t, d))
}

/// Gradients of [`attention_forward`] given the probabilities it used: (`dq`, `dk`, `dv`).
/// `dV = P^T dO`, `dP = dO V^T`, `dS = P * (dP - rowsum(dP * P))`, `dQ = scale dS K`,
/// `dK = scale dS^T Q`; key/value gradients sum over the heads that share them.
pub fn attention_backward(
    dout: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    p: &Tensor,
    scale: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dtype = q.dtype();
    let (b, heads, t, d) = q.dims4()?;
    let kv_heads = k.dim(1)?;
    let f32 = |x: &Tensor| x.to_dtype(DType::F32);
    let (q, k, v, dout) = (f32(q)?, f32(k)?, f32(v)?, f32(dout)?);
    let pg = grouped(p, kv_heads)?;
    let dog = grouped(&dout, kv_heads)?;
    let dv = pg.t()?.matmul(&dog)?;
    let dp = dog.matmul(&v.t()?)?.reshape((b, heads, t, t))?;
    let row = (&dp * p)?.sum_keepdim(D::Minus1)?;
    let ds = (p * dp.broadcast_sub(&row)?)?;
    let dsg = grouped(&ds, kv_heads)?;
    let dq = (dsg.matmul(&k)? * scale)?.reshape((b, heads, t, d))?;
    let dk = (dsg.t()?.matmul(&grouped(&q, kv_heads)?)? * scale)?;
    Ok((
        dq.to_dtype(dtype)?,
        dk.to_dtype(dtype)?,
        dv.to_dtype(dtype)?,
    ))
}
