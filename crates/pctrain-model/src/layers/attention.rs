//! Grouped-query attention with a causal mask, an optional sliding window, and segment ids so that
//! packed samples never see each other. Training runs it in the flash-attention manner: the scores
//! are never stored; the forward keeps each row's log-sum-exp and the backward recomputes the
//! probabilities from it, one tile of keys at a time. The CPU kernels here and
//! `cuda::attention_*` are twins (tests/layer_grads.rs checks them against attention written with
//! its scores stored). Decoding attends over its cache in `layers::kv_cache`.

use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;

use crate::cpu::par::Out;
use crate::cpu::simd::{dot, exp, max, sum};
use crate::cpu::view::view;
use crate::layers::norm::f32_contiguous;
use crate::simd_fn;

/// Keys per tile of the CPU kernels.
const TILE: usize = 32;
/// Query rows per forward task.
const QUERY_BLOCK: usize = 64;

/// What the attention backward needs from the forward besides q, k and v: the output
/// `[B, heads, T, d]` and the log-sum-exp of every score row, `[B, heads, T]` f32.
#[derive(Debug, Clone)]
pub struct AttentionSaved {
    pub out: Tensor,
    pub lse: Tensor,
}

/// The mask of a training pass: segment ids `[B, T]` u32 on the pass's device, and on the host
/// the same ids and each position's first visible key ([`attention_reach`]), so that the GPU plans
/// its blocks of keys without reading anything back; `window` is the sliding window (0: none).
#[derive(Debug, Clone)]
pub struct SegmentMask {
    pub(crate) ids: Tensor,
    pub(crate) host_ids: Vec<u32>,
    pub(crate) reach: Vec<u32>,
    /// The GPU's kernels mask by it; the CPU's by `reach`, which holds it.
    #[cfg(feature = "cuda")]
    pub(crate) window: usize,
}

impl SegmentMask {
    /// The mask of `batch` rows of packed `segment_ids` (row-major `[B * T]`).
    pub fn new(segment_ids: &[u32], batch: usize, window: usize, device: &Device) -> Result<Self> {
        if batch == 0 || !segment_ids.len().is_multiple_of(batch) {
            candle_core::bail!(
                "attention: {} segment ids do not make {batch} rows",
                segment_ids.len()
            );
        }
        let t = segment_ids.len() / batch;
        Ok(SegmentMask {
            ids: Tensor::from_slice(segment_ids, (batch, t), device)?,
            host_ids: segment_ids.to_vec(),
            reach: attention_reach(segment_ids, batch, window),
            #[cfg(feature = "cuda")]
            window,
        })
    }
}

/// Attention masked by `mask` without storing the scores: `q` `[B, heads, T, d]`, `k`, `v`
/// `[B, kv_heads, T, d]` -> the output `[B, heads, T, d]` and the row log-sum-exps.
pub fn flash_attention_forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &SegmentMask,
    scale: f64,
) -> Result<AttentionSaved> {
    let _span = crate::profile::span("flash_attention_forward", q.device());
    #[cfg(feature = "cuda")]
    if crate::cuda::runs_on(q) {
        return crate::cuda::attention_forward(q, k, v, mask, scale);
    }
    let shape = AttnShape::of(q, k, v, mask)?;
    let (seg, reach) = (&mask.host_ids, &mask.reach);
    let (q32, k32, v32) = (f32_contiguous(q)?, f32_contiguous(k)?, f32_contiguous(v)?);
    let mut out = vec![0f32; q.elem_count()];
    let mut lse = vec![0f32; shape.batch * shape.heads * shape.t];
    attention_cpu_forward(
        &shape,
        &view(&q32)?,
        &view(&k32)?,
        &view(&v32)?,
        seg,
        reach,
        scale as f32,
        &mut out,
        &mut lse,
    );
    Ok(AttentionSaved {
        out: Tensor::from_vec(out, q.shape(), &Device::Cpu)?.to_dtype(q.dtype())?,
        lse: Tensor::from_vec(lse, (shape.batch, shape.heads, shape.t), &Device::Cpu)?,
    })
}

/// Gradients of [`flash_attention_forward`], recomputing the probabilities: (`dq`, `dk`, `dv`),
/// the key/value gradients summed over the query heads that share them.
/// `dV = P^T dO`, `dP = dO V^T`, `dS = P * (dP - rowsum(dO * O))`, `dQ = scale dS K`,
/// `dK = scale dS^T Q`.
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_backward(
    dout: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    saved: &AttentionSaved,
    mask: &SegmentMask,
    scale: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let _span = crate::profile::span("flash_attention_backward", q.device());
    #[cfg(feature = "cuda")]
    if crate::cuda::runs_on(q) {
        return crate::cuda::attention_backward(dout, q, k, v, saved, mask, scale);
    }
    let shape = AttnShape::of(q, k, v, mask)?;
    let (seg, reach) = (&mask.host_ids, &mask.reach);
    let f = f32_contiguous;
    let (q32, k32, v32, do32) = (f(q)?, f(k)?, f(v)?, f(dout)?);
    let (o32, lse) = (f(&saved.out)?, f(&saved.lse)?);
    let mut dq = vec![0f32; q.elem_count()];
    let mut dk = vec![0f32; k.elem_count()];
    let mut dv = vec![0f32; v.elem_count()];
    attention_cpu_backward(
        &shape,
        AttnInputs {
            q: &view(&q32)?,
            k: &view(&k32)?,
            v: &view(&v32)?,
            out: &view(&o32)?,
            lse: &view(&lse)?,
            dout: &view(&do32)?,
            seg,
            reach,
        },
        scale as f32,
        &mut dq,
        &mut dk,
        &mut dv,
    );
    let t = |v: Vec<f32>, like: &Tensor| {
        Tensor::from_vec(v, like.shape(), &Device::Cpu)?.to_dtype(like.dtype())
    };
    Ok((t(dq, q)?, t(dk, k)?, t(dv, v)?))
}

/// The shapes of one attention call and where its rows lie: head-major `[B, heads, T, d]` (the
/// tensor path and the GPU kernels) or token-major `[B, T, heads, d]` (the projections' output
/// as it is). q, the output and their gradients have `heads` heads; k, v and theirs `kv_heads`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnShape {
    pub batch: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub t: usize,
    pub d: usize,
    pub token_major: bool,
}

impl AttnShape {
    /// The shape of head-major tensors, checked.
    pub(crate) fn of(q: &Tensor, k: &Tensor, v: &Tensor, mask: &SegmentMask) -> Result<Self> {
        let segment_ids = &mask.ids;
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
        if segment_ids.dims() != [batch, t] || segment_ids.dtype() != DType::U32 {
            candle_core::bail!("attention: segment ids must be u32 [{batch}, {t}]");
        }
        Ok(AttnShape {
            batch,
            heads,
            kv_heads,
            t,
            d,
            token_major: false,
        })
    }

    /// Offset of the row of head `h` (of `n` heads) at position `i` of batch row `b`.
    #[inline(always)]
    fn row(&self, b: usize, h: usize, n: usize, i: usize) -> usize {
        if self.token_major {
            ((b * self.t + i) * n + h) * self.d
        } else {
            ((b * n + h) * self.t + i) * self.d
        }
    }

    /// Index of `(b, h, i)` in the `[B, heads, T]` log-sum-exps.
    #[inline(always)]
    fn lse(&self, b: usize, h: usize, i: usize) -> usize {
        (b * self.heads + h) * self.t + i
    }
}

/// The first key each position may attend, `[B * T]`: the later of `i + 1 - window` (with a
/// window) and the first position of the row in `i`'s segment. Every key a query sees lies in
/// `reach[i]..=i` (keys there of another segment are masked one by one), so tiles before it are
/// skipped.
pub fn attention_reach(segment_ids: &[u32], batch: usize, window: usize) -> Vec<u32> {
    let t = segment_ids.len() / batch.max(1);
    let mut reach = Vec::with_capacity(segment_ids.len());
    let mut first = std::collections::HashMap::new();
    for row in segment_ids.chunks(t.max(1)) {
        first.clear();
        for (i, s) in row.iter().enumerate() {
            let start = *first.entry(*s).or_insert(i);
            let windowed = if window > 0 {
                (i + 1).saturating_sub(window)
            } else {
                0
            };
            reach.push(start.max(windowed) as u32);
        }
    }
    reach
}

/// Forward on f32 slices laid out as `shape` says: `out` (as q) and `lse` (`[B, heads, T]`).
/// Tasks of one head and [`QUERY_BLOCK`] query rows; each walks its tiles of keys in order with
/// an online softmax.
#[allow(clippy::too_many_arguments)]
pub fn attention_cpu_forward(
    shape: &AttnShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seg: &[u32],
    reach: &[u32],
    scale: f32,
    out: &mut [f32],
    lse: &mut [f32],
) {
    let blocks = shape.t.div_ceil(QUERY_BLOCK);
    let (o, l) = (Out::new(out), Out::new(lse));
    (0..shape.batch * shape.heads * blocks)
        .into_par_iter()
        .for_each(|task| {
            let (bh, block) = (task / blocks, task % blocks);
            let (b, h) = (bh / shape.heads, bh % shape.heads);
            with_tiles(|t| {
                attn_forward_block(shape, q, k, v, seg, reach, scale, b, h, block, o, l, t)
            });
        });
}

thread_local! {
    /// Each thread's [`Tiles`], kept from call to call.
    static TILES: std::cell::RefCell<Tiles> = std::cell::RefCell::default();
}

/// Runs `f` with this thread's [`Tiles`] (fresh ones if they are in use).
fn with_tiles(f: impl FnOnce(&mut Tiles)) {
    TILES.with(|t| match t.try_borrow_mut() {
        Ok(mut tiles) => f(&mut tiles),
        Err(_) => f(&mut Tiles::default()),
    });
}

/// Buffers a task reuses: a key tile transposed `[d, TILE]`, key and value tiles `[TILE, d]`,
/// and per query row the running maximum and sum, an accumulator `[rows, d]`, and copies of rows
/// `[rows, d]`.
#[derive(Default)]
struct Tiles {
    kt: Vec<f32>,
    vt: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    m: Vec<f32>,
    l: Vec<f32>,
    acc: Vec<f32>,
    q: Vec<f32>,
    dout: Vec<f32>,
}

simd_fn! {
    fn attn_forward_block(
        shape: &AttnShape,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        seg: &[u32],
        reach: &[u32],
        scale: f32,
        b: usize,
        h: usize,
        block: usize,
        out: Out,
        lse: Out,
        s: &mut Tiles,
    ) {
        let (t, d) = (shape.t, shape.d);
        let kvh = h / (shape.heads / shape.kv_heads);
        let (first, last) = (block * QUERY_BLOCK, ((block + 1) * QUERY_BLOCK).min(t));
        let rows = last - first;
        let (seg, reach) = (&seg[b * t..(b + 1) * t], &reach[b * t..(b + 1) * t]);
        s.kt.resize(d * TILE, 0.0);
        s.v.resize(TILE * d, 0.0);
        s.m.clear();
        s.m.resize(rows, f32::NEG_INFINITY);
        s.l.clear();
        s.l.resize(rows, 0.0);
        s.acc.clear();
        s.acc.resize(rows * d, 0.0);
        let lowest = reach[first..last].iter().min().copied().unwrap_or(0) as usize;
        for j0 in (lowest - lowest % TILE..last).step_by(TILE) {
            let jn = TILE.min(t - j0);
            load_tile(k, shape, b, kvh, j0, jn, None, Some(&mut s.kt));
            load_tile(v, shape, b, kvh, j0, jn, Some(&mut s.v), None);
            let tile_seg = tile_segments(seg, j0, jn);
            for r in 0..rows {
                let i = first + r;
                let lo = reach[i] as usize;
                if j0 > i || j0 + jn <= lo {
                    continue;
                }
                let qi = &q[shape.row(b, h, shape.heads, i)..][..d];
                let mut sc = scores(qi, &s.kt);
                let visible = visibility(&tile_seg, j0, lo, i, seg[i]);
                for (x, v) in sc.iter_mut().zip(visible) {
                    *x = if v { *x * scale } else { f32::NEG_INFINITY };
                }
                let tile_max = max(&sc);
                if tile_max == f32::NEG_INFINITY {
                    continue;
                }
                let m_old = s.m[r];
                let m_new = m_old.max(tile_max);
                let corr = if m_old == f32::NEG_INFINITY { 0.0 } else { exp(m_old - m_new) };
                for x in sc.iter_mut() {
                    *x = exp(*x - m_new);
                }
                s.l[r] = s.l[r] * corr + sum(&sc);
                let acc = &mut s.acc[r * d..(r + 1) * d];
                for a in acc.iter_mut() {
                    *a *= corr;
                }
                add_weighted_rows(acc, &sc[..jn], &s.v, d);
                s.m[r] = m_new;
            }
        }
        for r in 0..rows {
            let i = first + r;
            // SAFETY: this task alone writes head h's rows first..last.
            let o = unsafe { out.slice(shape.row(b, h, shape.heads, i), d) };
            let l = s.l[r];
            for (o, a) in o.iter_mut().zip(&s.acc[r * d..(r + 1) * d]) {
                *o = a / l;
            }
            // SAFETY: as above.
            let row_lse = unsafe { lse.slice(shape.lse(b, h, i), 1) };
            row_lse[0] = s.m[r] + l.ln();
        }
    }
}

/// The segment ids of keys `j0..j0 + jn`, then `u32::MAX` (which no query's segment equals) to
/// fill the tile.
#[inline(always)]
fn tile_segments(seg: &[u32], j0: usize, jn: usize) -> [u32; TILE] {
    let mut out = [u32::MAX; TILE];
    out[..jn].copy_from_slice(&seg[j0..j0 + jn]);
    out
}

/// Which keys of the tile starting at `j0` query `i` (of segment `seg_i`, first key `lo`) sees:
/// `lo <= j <= i` in its segment. Written without branches, so that it vectorizes.
#[inline(always)]
fn visibility(tile_seg: &[u32; TILE], j0: usize, lo: usize, i: usize, seg_i: u32) -> [bool; TILE] {
    // A loop, not `array::from_fn`, which would not be compiled with the kernel.
    let mut out = [false; TILE];
    for (jj, v) in out.iter_mut().enumerate() {
        let j = j0 + jj;
        *v = (j >= lo) & (j <= i) & (tile_seg[jj] == seg_i);
    }
    out
}

/// Rows `j0..j0 + jn` of key/value head `kvh` of `x`, copied as they are into `rows`
/// (`[TILE, d]`) and transposed into `cols` (`[d, TILE]`); zero past `jn`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn load_tile(
    x: &[f32],
    shape: &AttnShape,
    b: usize,
    kvh: usize,
    j0: usize,
    jn: usize,
    rows: Option<&mut Vec<f32>>,
    cols: Option<&mut Vec<f32>>,
) {
    let d = shape.d;
    if let Some(rows) = rows {
        rows.resize(TILE * d, 0.0);
        for jj in 0..TILE {
            let dst = &mut rows[jj * d..(jj + 1) * d];
            if jj < jn {
                dst.copy_from_slice(&x[shape.row(b, kvh, shape.kv_heads, j0 + jj)..][..d]);
            } else {
                dst.fill(0.0);
            }
        }
    }
    if let Some(cols) = cols {
        cols.resize(d * TILE, 0.0);
        for jj in 0..TILE {
            if jj < jn {
                let row = &x[shape.row(b, kvh, shape.kv_heads, j0 + jj)..][..d];
                for (c, v) in row.iter().enumerate() {
                    cols[c * TILE + jj] = *v;
                }
            } else {
                for c in 0..d {
                    cols[c * TILE + jj] = 0.0;
                }
            }
        }
    }
}

/// `x . y_j` for the `TILE` columns `j` of a transposed tile `[d, TILE]`, summed over `d` in
/// order.
#[inline(always)]
fn scores(x: &[f32], tile_t: &[f32]) -> [f32; TILE] {
    let mut s = [0f32; TILE];
    for (c, col) in x.iter().zip(tile_t.chunks_exact(TILE)) {
        for (s, y) in s.iter_mut().zip(col) {
            *s = c.mul_add(*y, *s);
        }
    }
    s
}

/// `acc += sum_j w[j] * rows[j]` over the `w.len()` rows of `d` in `rows`, rows in order: each
/// 32-wide (then 8-wide) slice of `acc` stays in registers while the rows go by.
#[inline(always)]
fn add_weighted_rows(acc: &mut [f32], w: &[f32], rows: &[f32], d: usize) {
    let mut c0 = 0;
    while c0 + 32 <= d {
        add_weighted_chunk::<32>(&mut acc[c0..c0 + 32], w, rows, d, c0);
        c0 += 32;
    }
    while c0 + 8 <= d {
        add_weighted_chunk::<8>(&mut acc[c0..c0 + 8], w, rows, d, c0);
        c0 += 8;
    }
    for c in c0..d {
        let mut a = acc[c];
        for (j, wj) in w.iter().enumerate() {
            a = wj.mul_add(rows[j * d + c], a);
        }
        acc[c] = a;
    }
}

#[inline(always)]
fn add_weighted_chunk<const W: usize>(
    acc: &mut [f32],
    w: &[f32],
    rows: &[f32],
    d: usize,
    c0: usize,
) {
    let mut a: [f32; W] = acc.try_into().expect("a chunk of W");
    for (j, wj) in w.iter().enumerate() {
        let r = &rows[j * d + c0..j * d + c0 + W];
        for l in 0..W {
            a[l] = wj.mul_add(r[l], a[l]);
        }
    }
    acc.copy_from_slice(&a);
}

/// The inputs of the attention backward, laid out as its [`AttnShape`] says.
#[derive(Clone, Copy)]
pub struct AttnInputs<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    /// The forward's output, as q.
    pub out: &'a [f32],
    /// `[B, heads, T]`.
    pub lse: &'a [f32],
    /// The output's gradient, as q.
    pub dout: &'a [f32],
    /// `[B * T]` segment ids and [`attention_reach`].
    pub seg: &'a [u32],
    pub reach: &'a [u32],
}

/// Query rows per block of the backward.
const BACKWARD_BLOCK: usize = 16;

/// Backward on f32 slices: writes `dq` (as q), `dk` and `dv` (as k). One task per batch row and
/// key/value head, which owns the gradients of that head and of its group of query heads; it
/// walks tiles of keys in order, and for each the blocks of query rows that see them, as small
/// products: `S = Q K^T`, `dP = dO V^T`, `dV += P^T dO`, `dK += dS^T Q`, `dQ += dS K`.
pub fn attention_cpu_backward(
    shape: &AttnShape,
    inputs: AttnInputs<'_>,
    scale: f32,
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let (dq, dk, dv) = (Out::new(dq), Out::new(dk), Out::new(dv));
    (0..shape.batch * shape.kv_heads)
        .into_par_iter()
        .for_each(|task| {
            let (b, kvh) = (task / shape.kv_heads, task % shape.kv_heads);
            with_tiles(|t| attn_backward_head(shape, &inputs, scale, b, kvh, dq, dk, dv, t));
        });
}

simd_fn! {
    fn attn_backward_head(
        shape: &AttnShape,
        x: &AttnInputs<'_>,
        scale: f32,
        b: usize,
        kvh: usize,
        dq: Out,
        dk: Out,
        dv: Out,
        s: &mut Tiles,
    ) {
        let (t, d) = (shape.t, shape.d);
        let group = shape.heads / shape.kv_heads;
        let (seg, reach) = (&x.seg[b * t..(b + 1) * t], &x.reach[b * t..(b + 1) * t]);
        let qrow = |h: usize, i: usize| shape.row(b, h, shape.heads, i);
        let kvrow = |j: usize| shape.row(b, kvh, shape.kv_heads, j);
        // rowsum(dO * O) of each query row of the group, kept in `s.m`.
        s.m.clear();
        s.m.resize(group * t, 0.0);
        for g in 0..group {
            let h = kvh * group + g;
            for i in 0..t {
                let at = qrow(h, i);
                s.m[g * t + i] = dot(&x.dout[at..at + d], &x.out[at..at + d]);
                // SAFETY: this task alone writes the rows of its group's query heads.
                unsafe { dq.slice(at, d) }.fill(0.0);
            }
        }
        s.q.resize(BACKWARD_BLOCK * d, 0.0);
        s.dout.resize(BACKWARD_BLOCK * d, 0.0);
        // dK and dV of the tile, `[TILE, d]` each, in `s.acc` and `s.l`.
        s.acc.resize(TILE * d, 0.0);
        s.l.resize(TILE * d, 0.0);
        for j0 in (0..t).step_by(TILE) {
            let jn = TILE.min(t - j0);
            load_tile(x.k, shape, b, kvh, j0, jn, Some(&mut s.k), Some(&mut s.kt));
            load_tile(x.v, shape, b, kvh, j0, jn, None, Some(&mut s.vt));
            let tile_seg = tile_segments(seg, j0, jn);
            s.acc.fill(0.0);
            s.l.fill(0.0);
            for g in 0..group {
                let h = kvh * group + g;
                for i0 in (j0..t).step_by(BACKWARD_BLOCK) {
                    let rows = BACKWARD_BLOCK.min(t - i0);
                    // Rows that see a key of this tile.
                    if (i0..i0 + rows).all(|i| reach[i] as usize >= j0 + jn) {
                        continue;
                    }
                    let mut p = [[0f32; TILE]; BACKWARD_BLOCK];
                    let mut ds = [[0f32; TILE]; BACKWARD_BLOCK];
                    for r in 0..rows {
                        let i = i0 + r;
                        let at = qrow(h, i);
                        s.q[r * d..(r + 1) * d].copy_from_slice(&x.q[at..at + d]);
                        s.dout[r * d..(r + 1) * d].copy_from_slice(&x.dout[at..at + d]);
                        let lo = reach[i] as usize;
                        if j0 + jn <= lo {
                            continue;
                        }
                        let sc = scores(&s.q[r * d..(r + 1) * d], &s.kt);
                        let dp = scores(&s.dout[r * d..(r + 1) * d], &s.vt);
                        let (row_lse, row_delta) = (x.lse[shape.lse(b, h, i)], s.m[g * t + i]);
                        let visible = visibility(&tile_seg, j0, lo, i, seg[i]);
                        for jj in 0..TILE {
                            let e = exp(sc[jj] * scale - row_lse);
                            p[r][jj] = if visible[jj] { e } else { 0.0 };
                            ds[r][jj] = p[r][jj] * (dp[jj] - row_delta);
                        }
                    }
                    for r in rows..BACKWARD_BLOCK {
                        s.q[r * d..(r + 1) * d].fill(0.0);
                        s.dout[r * d..(r + 1) * d].fill(0.0);
                    }
                    // dV += P^T dO and dK += dS^T Q, a key row at a time.
                    for jj in 0..jn {
                        let (mut pcol, mut dscol) = ([0f32; BACKWARD_BLOCK], [0f32; BACKWARD_BLOCK]);
                        for r in 0..BACKWARD_BLOCK {
                            pcol[r] = p[r][jj];
                            dscol[r] = ds[r][jj];
                        }
                        add_weighted_rows(&mut s.l[jj * d..(jj + 1) * d], &pcol, &s.dout, d);
                        add_weighted_rows(&mut s.acc[jj * d..(jj + 1) * d], &dscol, &s.q, d);
                    }
                    // dQ += dS K, a query row at a time.
                    for (r, dsr) in ds.iter().enumerate().take(rows) {
                        // SAFETY: as above; one live slice of dq at a time.
                        let dqi = unsafe { dq.slice(qrow(h, i0 + r), d) };
                        add_weighted_rows(dqi, &dsr[..jn], &s.k, d);
                    }
                }
            }
            for jj in 0..jn {
                // SAFETY: this task alone writes key/value head kvh's rows.
                let dkj = unsafe { dk.slice(kvrow(j0 + jj), d) };
                for (o, a) in dkj.iter_mut().zip(&s.acc[jj * d..(jj + 1) * d]) {
                    *o = a * scale;
                }
                let dvj = unsafe { dv.slice(kvrow(j0 + jj), d) };
                dvj.copy_from_slice(&s.l[jj * d..(jj + 1) * d]);
            }
        }
        for g in 0..group {
            for i in 0..t {
                // SAFETY: as above.
                for a in unsafe { dq.slice(qrow(kvh * group + g, i), d) } {
                    *a *= scale;
                }
            }
        }
    }
}
