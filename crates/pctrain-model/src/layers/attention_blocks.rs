//! Attention as blocks of query rows through batched matrix products: the GPU's form, whose
//! products run on cuBLAS's tensor-core GEMMs (bf16 in, f32 accumulated) with our own fused masked
//! softmax between them. For each block of query positions, the scores of every query head of a
//! key/value group against the keys the block can reach are one product per (batch row, key/value
//! head): the group's heads are stacked into `group * rows` rows, so `dK` and `dV` come out summed
//! over the group by the product itself and accumulate per key/value head. Keys before the first
//! one any query of the block may see (its segment start, its window) and after its last query
//! are skipped; those inside the range that a query may not see are masked.
//!
//! The plan is data ([`Gemm`]s and row kernels over named [`Buf`]s) run by an [`Exec`]: the GPU's
//! (`cuda::attention`) and, in the tests below, a CPU one that checks the plan against
//! [`super::attention::attention_cpu_forward`] and its backward.

/// Keys are taken in runs aligned to this many (16-byte rows of bf16 scores).
const KEY_ALIGN: usize = 8;
/// The largest block of query rows: smaller blocks skip more masked keys, larger ones make
/// fewer, bigger products.
const MAX_BLOCK_ROWS: usize = 256;

/// The buffers a plan reads and writes. Head-major: `[B, heads, T, d]` for q, out, dout, dq;
/// `[B, kv_heads, T, d]` for k, v and the f32 accumulators dk, dv; `[B, heads, T]` f32 for lse and
/// delta. Per block: `QBlock`, `DOutBlock`, `OutBlock` `[B, heads, rows, d]`; `Scores` and
/// `DProbs` f32 and `Probs` and `DScores` (the activations' dtype) `[B, heads, rows, ld]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Buf {
    Q,
    K,
    V,
    Out,
    Lse,
    DOut,
    Delta,
    Dq,
    Dk,
    Dv,
    QBlock,
    DOutBlock,
    OutBlock,
    Scores,
    DProbs,
    Probs,
    DScores,
}

/// One operand of a batched product: a row-major matrix at `offset` elements into `buf` with
/// leading dimension `ld`, the next batch entry `stride` elements further, used transposed with
/// `trans`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operand {
    pub buf: Buf,
    pub offset: usize,
    pub ld: usize,
    pub stride: usize,
    pub trans: bool,
}

impl Operand {
    fn new(buf: Buf, offset: usize, ld: usize, stride: usize) -> Self {
        Operand {
            buf,
            offset,
            ld,
            stride,
            trans: false,
        }
    }

    fn t(self) -> Self {
        Operand {
            trans: true,
            ..self
        }
    }
}

/// `C = alpha op(A) op(B) + beta C` for each of `batch` entries, row-major: `op(A)` `[m, k]`,
/// `op(B)` `[k, n]`, `C` `[m, n]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub batch: usize,
    pub a: Operand,
    pub b: Operand,
    pub c: Operand,
    pub alpha: f32,
    pub beta: f32,
}

/// One block of query rows `q0..q0 + rows` and the keys `k0..k0 + keys` it can reach; score rows
/// are `ld` (keys rounded up to [`KEY_ALIGN`]) apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub q0: usize,
    pub rows: usize,
    pub k0: usize,
    pub keys: usize,
    pub ld: usize,
}

/// The shapes of one attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub batch: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub t: usize,
    pub d: usize,
}

impl Dims {
    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }
}

/// What runs a plan. Row kernels see a block's score rows `[B * heads * rows]`: row `r` is query
/// position `q0 + r % rows` of head `(r / rows) % heads` of batch row `r / (rows * heads)`.
pub trait Exec {
    type Error;
    /// Runs one batched product.
    fn gemm(&mut self, g: &Gemm) -> Result<(), Self::Error>;
    /// `Probs` = the masked softmax of `Scores` (already scaled), each row's log-sum-exp into
    /// `Lse`.
    fn softmax(&mut self, b: &Block) -> Result<(), Self::Error>;
    /// From `Scores` recomputed, `DProbs` = dO V^T, `Lse` and `Delta`: `Probs` = P and
    /// `DScores` = P (dP - delta), both 0 where masked.
    fn softmax_backward(&mut self, b: &Block) -> Result<(), Self::Error>;
    /// Rows `q0..q0 + rows` of every head of `src` (`[B, heads, T, d]`) into `dst`
    /// (`[B, heads, rows, d]`), or back with `to_block` false.
    fn copy_rows(
        &mut self,
        src: Buf,
        dst: Buf,
        b: &Block,
        to_block: bool,
    ) -> Result<(), Self::Error>;
    /// `Delta` = rowsum(dO * O).
    fn delta(&mut self) -> Result<(), Self::Error>;
    /// Zeroes the f32 accumulators `Dk` and `Dv`.
    fn zero_accumulators(&mut self) -> Result<(), Self::Error>;
}

/// The blocks of one attention call and the products that run them.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub dims: Dims,
    pub blocks: Vec<Block>,
}

impl Plan {
    /// Blocks of `block_rows` query rows (the last may be shorter); `reach` (`[B * T]`, see
    /// [`super::attention::attention_reach`]) gives each block's first key: the earliest any of
    /// its queries in any batch row may see.
    pub fn new(dims: Dims, reach: &[u32], block_rows: usize) -> Plan {
        let (t, rows) = (dims.t, block_rows.clamp(1, dims.t.max(1)));
        let blocks = (0..t)
            .step_by(rows)
            .map(|q0| {
                let n = rows.min(t - q0);
                let first = (0..dims.batch)
                    .flat_map(|b| reach[b * t + q0..b * t + q0 + n].iter())
                    .min()
                    .map_or(0, |&r| r as usize);
                let k0 = first - first % KEY_ALIGN;
                let keys = q0 + n - k0;
                Block {
                    q0,
                    rows: n,
                    k0,
                    keys,
                    ld: keys.next_multiple_of(KEY_ALIGN),
                }
            })
            .collect();
        Plan { dims, blocks }
    }

    /// The most query rows a block may have so that a block's score buffers (two f32 and two of
    /// `elem_bytes`, see [`Buf`]) stay within `budget` bytes: a multiple of 16, at least 16, at
    /// most [`MAX_BLOCK_ROWS`] (all of `T` when that is shorter).
    pub fn block_rows(dims: Dims, elem_bytes: usize, budget: usize) -> usize {
        let per_row =
            dims.batch * dims.heads * dims.t.next_multiple_of(KEY_ALIGN) * (8 + 2 * elem_bytes);
        let fit = (budget / per_row.max(1)) / 16 * 16;
        fit.clamp(16, MAX_BLOCK_ROWS).min(dims.t.max(1))
    }

    /// The largest score block, elements (`B * heads * rows * ld`).
    pub fn score_elems(&self) -> usize {
        let Dims { batch, heads, .. } = self.dims;
        self.blocks
            .iter()
            .map(|b| batch * heads * b.rows * b.ld)
            .max()
            .unwrap_or(0)
    }

    /// The largest row block, elements (`B * heads * rows * d`).
    pub fn row_elems(&self) -> usize {
        let Dims {
            batch, heads, d, ..
        } = self.dims;
        self.blocks
            .iter()
            .map(|b| batch * heads * b.rows * d)
            .max()
            .unwrap_or(0)
    }

    /// Whether one block covers every query, so the row buffers are used as they are.
    fn single(&self) -> bool {
        self.blocks.len() == 1
    }

    /// A block's rows of `whole` as a stacked `[B, kv_heads, group * rows, d]` operand: `whole`
    /// itself for a single block, else its rows copied into `block`.
    fn rows_of<E: Exec>(
        &self,
        e: &mut E,
        whole: Buf,
        block: Buf,
        b: &Block,
    ) -> Result<Buf, E::Error> {
        if self.single() {
            return Ok(whole);
        }
        e.copy_rows(whole, block, b, true)?;
        Ok(block)
    }

    /// The stacked rows of one block, per (batch row, key/value head).
    fn stacked(&self, buf: Buf, b: &Block) -> Operand {
        let rows = self.dims.group() * b.rows;
        Operand::new(buf, 0, self.dims.d, rows * self.dims.d)
    }

    /// The block's keys (or values) of each (batch row, key/value head).
    fn keys(&self, buf: Buf, b: &Block) -> Operand {
        let Dims { t, d, .. } = self.dims;
        Operand::new(buf, b.k0 * d, d, t * d)
    }

    /// The block's scores (or probabilities) of each (batch row, key/value head).
    fn scores(&self, buf: Buf, b: &Block) -> Operand {
        Operand::new(buf, 0, b.ld, self.dims.group() * b.rows * b.ld)
    }

    fn products(&self, b: &Block) -> (usize, usize) {
        (
            self.dims.group() * b.rows,
            self.dims.batch * self.dims.kv_heads,
        )
    }

    /// `Scores = scale Q K^T` for block `b`, `q` its stacked query rows.
    fn score_gemm<E: Exec>(
        &self,
        e: &mut E,
        q: Buf,
        b: &Block,
        scale: f32,
    ) -> Result<(), E::Error> {
        let (m, batch) = self.products(b);
        e.gemm(&Gemm {
            m,
            n: b.keys,
            k: self.dims.d,
            batch,
            a: self.stacked(q, b),
            b: self.keys(Buf::K, b).t(),
            c: self.scores(Buf::Scores, b),
            alpha: scale,
            beta: 0.0,
        })
    }

    /// The forward: `Out` and `Lse` from `Q`, `K`, `V`.
    pub fn forward<E: Exec>(&self, e: &mut E, scale: f32) -> Result<(), E::Error> {
        for b in &self.blocks {
            let q = self.rows_of(e, Buf::Q, Buf::QBlock, b)?;
            self.score_gemm(e, q, b, scale)?;
            e.softmax(b)?;
            let out = if self.single() {
                Buf::Out
            } else {
                Buf::OutBlock
            };
            let (m, batch) = self.products(b);
            e.gemm(&Gemm {
                m,
                n: self.dims.d,
                k: b.keys,
                batch,
                a: self.scores(Buf::Probs, b),
                b: self.keys(Buf::V, b),
                c: self.stacked(out, b),
                alpha: 1.0,
                beta: 0.0,
            })?;
            if !self.single() {
                e.copy_rows(Buf::OutBlock, Buf::Out, b, false)?;
            }
        }
        Ok(())
    }

    /// The backward: `Dq` and the f32 accumulators `Dk`, `Dv` from `DOut` and what the forward
    /// kept (`Out`, `Lse`), recomputing the probabilities.
    pub fn backward<E: Exec>(&self, e: &mut E, scale: f32) -> Result<(), E::Error> {
        e.delta()?;
        e.zero_accumulators()?;
        let d = self.dims.d;
        for b in &self.blocks {
            let q = self.rows_of(e, Buf::Q, Buf::QBlock, b)?;
            let dout = self.rows_of(e, Buf::DOut, Buf::DOutBlock, b)?;
            let (m, batch) = self.products(b);
            self.score_gemm(e, q, b, scale)?;
            // dP = dO V^T
            e.gemm(&Gemm {
                m,
                n: b.keys,
                k: d,
                batch,
                a: self.stacked(dout, b),
                b: self.keys(Buf::V, b).t(),
                c: self.scores(Buf::DProbs, b),
                alpha: 1.0,
                beta: 0.0,
            })?;
            e.softmax_backward(b)?;
            // dV += P^T dO and dK += scale dS^T Q, summed over the group's stacked rows.
            for (p, rows, acc, alpha) in [
                (Buf::Probs, dout, Buf::Dv, 1.0),
                (Buf::DScores, q, Buf::Dk, scale),
            ] {
                e.gemm(&Gemm {
                    m: b.keys,
                    n: d,
                    k: m,
                    batch,
                    a: self.scores(p, b).t(),
                    b: self.stacked(rows, b),
                    c: self.keys(acc, b),
                    alpha,
                    beta: 1.0,
                })?;
            }
            // dQ = scale dS K
            let dq = if self.single() {
                Buf::Dq
            } else {
                Buf::OutBlock
            };
            e.gemm(&Gemm {
                m,
                n: d,
                k: b.keys,
                batch,
                a: self.scores(Buf::DScores, b),
                b: self.keys(Buf::K, b),
                c: self.stacked(dq, b),
                alpha: scale,
                beta: 0.0,
            })?;
            if !self.single() {
                e.copy_rows(Buf::OutBlock, Buf::Dq, b, false)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::layers::attention::{
        attention_cpu_backward, attention_cpu_forward, attention_reach, AttnInputs, AttnShape,
    };

    /// Whether query `i` may see key `j` of its batch row (`seg` that row's segment ids): the
    /// rule of every attention kernel.
    fn visible(seg: &[u32], i: usize, j: usize, window: usize) -> bool {
        j <= i && seg[i] == seg[j] && (window == 0 || i - j < window)
    }

    /// The plan run in f32 on the CPU: buffers by name, products as plain loops, and the row
    /// kernels' twins (what `cuda::attention`'s kernels compute).
    struct CpuExec {
        dims: Dims,
        seg: Vec<u32>,
        window: usize,
        bufs: HashMap<Buf, Vec<f32>>,
    }

    impl CpuExec {
        fn buf(&mut self, b: Buf) -> &mut Vec<f32> {
            self.bufs.entry(b).or_default()
        }

        fn sized(&mut self, b: Buf, n: usize) -> &mut Vec<f32> {
            let v = self.buf(b);
            if v.len() < n {
                v.resize(n, f32::NAN);
            }
            v
        }

        /// `(seg row, query position, lse index)` of score row `r` of block `b`.
        fn row(&self, b: &Block, r: usize) -> (usize, usize, usize) {
            let bh = r / b.rows;
            let i = b.q0 + r % b.rows;
            (bh / self.dims.heads, i, bh * self.dims.t + i)
        }
    }

    impl Exec for CpuExec {
        type Error = String;

        fn gemm(&mut self, g: &Gemm) -> Result<(), String> {
            let a = self.bufs[&g.a.buf].clone();
            let bm = self.bufs[&g.b.buf].clone();
            let need = g.c.offset + (g.batch - 1) * g.c.stride + (g.m - 1) * g.c.ld + g.n;
            let c = self.sized(g.c.buf, need);
            let at = |o: &Operand, src: &[f32], e: usize, i: usize, j: usize| {
                let idx = if o.trans { j * o.ld + i } else { i * o.ld + j };
                src[o.offset + e * o.stride + idx]
            };
            for e in 0..g.batch {
                for i in 0..g.m {
                    for j in 0..g.n {
                        let mut s = 0f64;
                        for p in 0..g.k {
                            s += f64::from(at(&g.a, &a, e, i, p) * at(&g.b, &bm, e, p, j));
                        }
                        let ci = g.c.offset + e * g.c.stride + i * g.c.ld + j;
                        let old = if g.beta == 0.0 { 0.0 } else { g.beta * c[ci] };
                        c[ci] = g.alpha * s as f32 + old;
                    }
                }
            }
            Ok(())
        }

        fn softmax(&mut self, b: &Block) -> Result<(), String> {
            let rows = self.dims.batch * self.dims.heads * b.rows;
            let scores = self.bufs[&Buf::Scores].clone();
            let mut probs = vec![f32::NAN; rows * b.ld];
            for r in 0..rows {
                let (row, i, li) = self.row(b, r);
                let seg = &self.seg[row * self.dims.t..(row + 1) * self.dims.t];
                let s = &scores[r * b.ld..r * b.ld + b.keys];
                let vis = |c: usize| visible(seg, i, b.k0 + c, self.window);
                let m = (0..b.keys)
                    .filter(|&c| vis(c))
                    .map(|c| s[c])
                    .fold(f32::NEG_INFINITY, f32::max);
                let sum: f32 = (0..b.keys)
                    .filter(|&c| vis(c))
                    .map(|c| (s[c] - m).exp())
                    .sum();
                let lse = m + sum.ln();
                for c in 0..b.keys {
                    probs[r * b.ld + c] = if vis(c) { (s[c] - lse).exp() } else { 0.0 };
                }
                self.sized(Buf::Lse, li + 1)[li] = lse;
            }
            *self.buf(Buf::Probs) = probs;
            Ok(())
        }

        fn softmax_backward(&mut self, b: &Block) -> Result<(), String> {
            let rows = self.dims.batch * self.dims.heads * b.rows;
            let (scores, dprobs) = (
                self.bufs[&Buf::Scores].clone(),
                self.bufs[&Buf::DProbs].clone(),
            );
            let (lse, delta) = (self.bufs[&Buf::Lse].clone(), self.bufs[&Buf::Delta].clone());
            let mut probs = vec![f32::NAN; rows * b.ld];
            let mut ds = vec![f32::NAN; rows * b.ld];
            for r in 0..rows {
                let (row, i, li) = self.row(b, r);
                let seg = &self.seg[row * self.dims.t..(row + 1) * self.dims.t];
                for c in 0..b.keys {
                    let x = r * b.ld + c;
                    let (p, g) = if visible(seg, i, b.k0 + c, self.window) {
                        let p = (scores[x] - lse[li]).exp();
                        (p, p * (dprobs[x] - delta[li]))
                    } else {
                        (0.0, 0.0)
                    };
                    probs[x] = p;
                    ds[x] = g;
                }
            }
            *self.buf(Buf::Probs) = probs;
            *self.buf(Buf::DScores) = ds;
            Ok(())
        }

        fn copy_rows(
            &mut self,
            src: Buf,
            dst: Buf,
            b: &Block,
            to_block: bool,
        ) -> Result<(), String> {
            let Dims {
                batch, heads, t, d, ..
            } = self.dims;
            let from = self.bufs[&src].clone();
            let to = self.sized(
                dst,
                if to_block {
                    batch * heads * b.rows * d
                } else {
                    batch * heads * t * d
                },
            );
            for bh in 0..batch * heads {
                for i in 0..b.rows {
                    let whole = (bh * t + b.q0 + i) * d;
                    let part = (bh * b.rows + i) * d;
                    let (s, o) = if to_block {
                        (whole, part)
                    } else {
                        (part, whole)
                    };
                    to[o..o + d].copy_from_slice(&from[s..s + d]);
                }
            }
            Ok(())
        }

        fn delta(&mut self) -> Result<(), String> {
            let d = self.dims.d;
            let (o, dout) = (&self.bufs[&Buf::Out], &self.bufs[&Buf::DOut]);
            let delta = o
                .chunks(d)
                .zip(dout.chunks(d))
                .map(|(o, g)| o.iter().zip(g).map(|(a, b)| a * b).sum())
                .collect();
            *self.buf(Buf::Delta) = delta;
            Ok(())
        }

        fn zero_accumulators(&mut self) -> Result<(), String> {
            let n = self.bufs[&Buf::K].len();
            *self.buf(Buf::Dk) = vec![0.0; n];
            *self.buf(Buf::Dv) = vec![0.0; n];
            Ok(())
        }
    }

    fn random(n: usize, seed: u64) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = crate::rng::mix64(seed ^ (i as u64).wrapping_mul(crate::rng::GOLDEN));
                (h >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    fn close(what: &str, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        let (mut err, mut norm) = (0f64, 0f64);
        for (g, w) in got.iter().zip(want) {
            assert!(g.is_finite(), "{what}: {g} where {w} was expected");
            err += f64::from(g - w).powi(2);
            norm += f64::from(*w).powi(2);
        }
        let rel = (err / norm.max(1e-30)).sqrt();
        assert!(rel < 1e-5, "{what}: relative error {rel}");
    }

    /// The plan, in blocks of several sizes, gives the flash kernels' output, log-sum-exps and
    /// gradients: packed rows of uneven segments, a window, 2 query heads per key/value head,
    /// and a length that no block size divides.
    #[test]
    fn blocked_attention_matches_the_flash_kernels() {
        let dims = Dims {
            batch: 2,
            heads: 4,
            kv_heads: 2,
            t: 37,
            d: 8,
        };
        let Dims {
            batch,
            heads,
            kv_heads,
            t,
            d,
        } = dims;
        let mut seg = Vec::new();
        for (b, cuts) in [[0usize, 11, 30], [0, 3, 20]].iter().enumerate() {
            for i in 0..t {
                seg.push(1 + cuts.iter().filter(|&&c| i >= c).count() as u32 + 10 * b as u32);
            }
        }
        let q = random(batch * heads * t * d, 1);
        let k = random(batch * kv_heads * t * d, 2);
        let v = random(batch * kv_heads * t * d, 3);
        let dout = random(batch * heads * t * d, 4);
        let scale = 0.35f32;
        for window in [0usize, 6] {
            let reach = attention_reach(&seg, batch, window);
            let shape = AttnShape {
                batch,
                heads,
                kv_heads,
                t,
                d,
                token_major: false,
            };
            let mut out = vec![0f32; q.len()];
            let mut lse = vec![0f32; batch * heads * t];
            attention_cpu_forward(&shape, &q, &k, &v, &seg, &reach, scale, &mut out, &mut lse);
            let (mut dq, mut dk, mut dv) = (
                vec![0f32; q.len()],
                vec![0f32; k.len()],
                vec![0f32; v.len()],
            );
            let inputs = AttnInputs {
                q: &q,
                k: &k,
                v: &v,
                out: &out,
                lse: &lse,
                dout: &dout,
                seg: &seg,
                reach: &reach,
            };
            attention_cpu_backward(&shape, inputs, scale, &mut dq, &mut dk, &mut dv);
            for rows in [8, 16, 37] {
                let plan = Plan::new(dims, &reach, rows);
                assert_eq!(plan.blocks.len(), t.div_ceil(rows));
                let mut e = CpuExec {
                    dims,
                    seg: seg.clone(),
                    window,
                    bufs: HashMap::from([
                        (Buf::Q, q.clone()),
                        (Buf::K, k.clone()),
                        (Buf::V, v.clone()),
                        (Buf::Out, vec![f32::NAN; q.len()]),
                        (Buf::Lse, vec![f32::NAN; lse.len()]),
                    ]),
                };
                plan.forward(&mut e, scale).unwrap();
                let what = format!("window {window}, blocks of {rows}");
                close(&format!("out, {what}"), &e.bufs[&Buf::Out], &out);
                close(&format!("lse, {what}"), &e.bufs[&Buf::Lse], &lse);
                e.bufs.insert(Buf::DOut, dout.clone());
                e.bufs.insert(Buf::Dq, vec![f32::NAN; q.len()]);
                plan.backward(&mut e, scale).unwrap();
                close(&format!("dq, {what}"), &e.bufs[&Buf::Dq], &dq);
                close(&format!("dk, {what}"), &e.bufs[&Buf::Dk], &dk);
                close(&format!("dv, {what}"), &e.bufs[&Buf::Dv], &dv);
            }
        }
    }

    /// Blocks skip the keys no query of theirs may see: with a window of 8, a block of 16 rows at
    /// 48 starts its keys at 40, and a packed sample starting at 20 bounds a block after it.
    #[test]
    fn blocks_start_at_the_first_key_they_may_see() {
        let dims = Dims {
            batch: 1,
            heads: 2,
            kv_heads: 1,
            t: 64,
            d: 4,
        };
        let seg: Vec<u32> = (0..64).map(|i| if i < 20 { 1 } else { 2 }).collect();
        let windowed = Plan::new(dims, &attention_reach(&seg, 1, 8), 16);
        let b = windowed.blocks[3];
        assert_eq!((b.q0, b.rows, b.k0, b.keys, b.ld), (48, 16, 40, 24, 24));
        let packed = Plan::new(dims, &attention_reach(&seg, 1, 0), 16);
        assert_eq!(
            packed.blocks[2].k0, 16,
            "the block at 32 starts at sample 2's first key, 20, aligned down"
        );
        assert_eq!(packed.blocks[0].k0, 0);
        assert_eq!(
            packed.blocks[0].keys, 16,
            "no key after the block's last query"
        );
    }

    /// The block size bounds the score buffers and stays a multiple of 16 within 16..=256.
    #[test]
    fn block_rows_fit_the_budget() {
        let dims = Dims {
            batch: 4,
            heads: 32,
            kv_heads: 8,
            t: 2048,
            d: 128,
        };
        let rows = Plan::block_rows(dims, 2, 1 << 30);
        assert_eq!(rows % 16, 0);
        assert!(4 * 32 * rows * 2048 * 12 <= 1 << 30);
        assert_eq!(Plan::block_rows(dims, 2, 1 << 40), 256);
        assert_eq!(Plan::block_rows(dims, 2, 1), 16);
        let long = Dims {
            batch: 1,
            t: 32768,
            ..dims
        };
        let rows = Plan::block_rows(long, 2, 1 << 30);
        assert!(rows >= 16 && 32 * rows * 32768 * 12 <= 1 << 30, "{rows}");
        let short = Dims { t: 40, ..dims };
        assert_eq!(Plan::block_rows(short, 2, 1 << 30), 40);
    }
}
