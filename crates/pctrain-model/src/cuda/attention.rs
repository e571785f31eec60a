//! Training attention on a GPU: [`crate::layers::attention_blocks`]'s plan, its products on
//! cuBLAS's tensor cores ([`super::gemm`]) and its row kernels in `attention.cu`
//! (`attn_softmax`, `attn_softmax_bwd`, `attn_copy_rows`, `attn_delta`). The CPU twins are the
//! flash kernels of [`crate::layers::attention`]; the plan itself is checked on the CPU.

use std::collections::HashMap;

use candle_core::{DType, Result, Tensor};

use super::gemm::{gemm, Operand, Product};
use super::launch::{self, alloc, alloc_zeros, device_of, kernel, Dev, Out, Slice};
use crate::layers::attention::{AttentionSaved, AttnShape, SegmentMask};
use crate::layers::attention_blocks::{self as plan, Block, Buf, Dims, Exec, Gemm, Plan};

/// Bytes one block's score buffers may take.
const SCORE_BUDGET: usize = 1 << 30;
/// Threads per score row.
const ROW_THREADS: u32 = 256;
/// Rows per block of `attn_delta`; must match `ROWS` in `attention.cu`.
const DELTA_ROWS: u32 = 8;

/// A buffer the plan names: where it is and its element type.
#[derive(Clone, Copy)]
struct Mem {
    ptr: u64,
    dtype: DType,
}

/// Runs a plan on candle's device and stream.
struct CudaExec {
    dev: Dev,
    dims: Dims,
    /// The activations' type: q, k, v, their gradients, the probabilities.
    dtype: DType,
    window: i32,
    seg: Slice,
    mem: HashMap<Buf, Mem>,
    /// Buffers made here (outputs and scratch), kept until the plan has run.
    owned: HashMap<Buf, Out>,
    /// Inputs kept alive (and contiguous) while the plan runs.
    inputs: Vec<Slice>,
}

impl CudaExec {
    fn new(q: &Tensor, k: &Tensor, v: &Tensor, mask: &SegmentMask) -> Result<Self> {
        let dims = dims_of(q, k, v, mask)?;
        let dtype = q.dtype();
        let mut e = CudaExec {
            dev: device_of(q)?,
            dims,
            dtype,
            window: mask.window.min(dims.t) as i32,
            seg: Slice::new(&mask.ids)?,
            mem: HashMap::new(),
            owned: HashMap::new(),
            inputs: Vec::new(),
        };
        e.input(Buf::Q, q)?;
        e.input(Buf::K, &k.to_dtype(dtype)?)?;
        e.input(Buf::V, &v.to_dtype(dtype)?)?;
        Ok(e)
    }

    fn input(&mut self, buf: Buf, t: &Tensor) -> Result<()> {
        let s = Slice::new(t)?;
        self.mem.insert(
            buf,
            Mem {
                ptr: s.ptr(),
                dtype: t.dtype(),
            },
        );
        self.inputs.push(s);
        Ok(())
    }

    fn own(&mut self, buf: Buf, out: Out, dtype: DType) {
        self.mem.insert(
            buf,
            Mem {
                ptr: out.ptr(),
                dtype,
            },
        );
        self.owned.insert(buf, out);
    }

    fn output(&mut self, buf: Buf, dtype: DType, n: usize) -> Result<()> {
        let out = alloc(&self.dev, dtype, n)?;
        self.own(buf, out, dtype);
        Ok(())
    }

    /// The score buffers of the largest block, and row buffers when there are several blocks.
    fn scratch(&mut self, plan: &Plan, backward: bool) -> Result<()> {
        let (scores, rows) = (plan.score_elems(), plan.row_elems());
        self.output(Buf::Scores, DType::F32, scores)?;
        self.output(Buf::Probs, self.dtype, scores)?;
        if backward {
            self.output(Buf::DProbs, DType::F32, scores)?;
            self.output(Buf::DScores, self.dtype, scores)?;
        }
        if plan.blocks.len() > 1 {
            self.output(Buf::QBlock, self.dtype, rows)?;
            self.output(Buf::OutBlock, self.dtype, rows)?;
            if backward {
                self.output(Buf::DOutBlock, self.dtype, rows)?;
            }
        }
        Ok(())
    }

    fn mem(&self, buf: Buf) -> Result<Mem> {
        self.mem
            .get(&buf)
            .copied()
            .ok_or_else(|| candle_core::Error::Msg(format!("attention: no buffer {buf:?}")))
    }

    fn operand(&self, o: &plan::Operand) -> Result<Operand> {
        let m = self.mem(o.buf)?;
        Ok(Operand {
            ptr: m.ptr + (o.offset * m.dtype.size_in_bytes()) as u64,
            dtype: m.dtype,
            ld: o.ld,
            stride: o.stride,
            trans: o.trans,
        })
    }

    fn take(&mut self, buf: Buf, shape: impl Into<candle_core::Shape>) -> Result<Tensor> {
        let out = self
            .owned
            .remove(&buf)
            .ok_or_else(|| candle_core::Error::Msg(format!("attention: {buf:?} was not made")))?;
        out.into_tensor(&self.dev, shape)
    }

    /// The arguments every row kernel of a block takes after its pointers.
    fn block_args(&self, b: &Block, a: &mut launch::Args) {
        a.i32(self.dims.heads as i32);
        a.i32(self.dims.t as i32);
        a.i32(b.q0 as i32);
        a.i32(b.rows as i32);
        a.i32(b.k0 as i32);
        a.i32(b.keys as i32);
        a.i32(b.ld as i32);
        a.i32(self.window);
    }

    fn score_rows(&self, b: &Block) -> u32 {
        (self.dims.batch * self.dims.heads * b.rows) as u32
    }
}

impl Exec for CudaExec {
    type Error = candle_core::Error;

    fn gemm(&mut self, g: &Gemm) -> Result<()> {
        let p = Product {
            m: g.m,
            n: g.n,
            k: g.k,
            batch: g.batch,
            alpha: g.alpha,
            beta: g.beta,
        };
        gemm(
            &self.dev,
            p,
            self.operand(&g.a)?,
            self.operand(&g.b)?,
            self.operand(&g.c)?,
        )
    }

    fn softmax(&mut self, b: &Block) -> Result<()> {
        let f = kernel(&self.dev, "attn_softmax", self.dtype)?;
        let (s, p, lse) = (
            self.mem(Buf::Scores)?,
            self.mem(Buf::Probs)?,
            self.mem(Buf::Lse)?,
        );
        launch::launch(&self.dev, &f, (self.score_rows(b), ROW_THREADS, 0), |a| {
            a.ptr(s.ptr);
            self.seg.push(a);
            a.ptr(p.ptr);
            a.ptr(lse.ptr);
            self.block_args(b, a);
        })
    }

    fn softmax_backward(&mut self, b: &Block) -> Result<()> {
        let f = kernel(&self.dev, "attn_softmax_bwd", self.dtype)?;
        let bufs = [
            Buf::Scores,
            Buf::DProbs,
            Buf::Lse,
            Buf::Delta,
            Buf::Probs,
            Buf::DScores,
        ]
        .map(|b| self.mem(b));
        let [s, dp, lse, delta, p, ds] = bufs;
        let (s, dp, lse, delta, p, ds) = (s?, dp?, lse?, delta?, p?, ds?);
        launch::launch(&self.dev, &f, (self.score_rows(b), ROW_THREADS, 0), |a| {
            a.ptr(s.ptr);
            a.ptr(dp.ptr);
            a.ptr(lse.ptr);
            a.ptr(delta.ptr);
            self.seg.push(a);
            a.ptr(p.ptr);
            a.ptr(ds.ptr);
            self.block_args(b, a);
        })
    }

    fn copy_rows(&mut self, src: Buf, dst: Buf, b: &Block, to_block: bool) -> Result<()> {
        let f = kernel(&self.dev, "attn_copy_rows", self.dtype)?;
        let (s, d) = (self.mem(src)?, self.mem(dst)?);
        let n = self.dims.batch * self.dims.heads * b.rows * self.dims.d;
        launch::launch(&self.dev, &f, (n.div_ceil(256) as u32, 256, 0), |a| {
            a.ptr(s.ptr);
            a.ptr(d.ptr);
            a.i64(n as i64);
            a.i32(self.dims.t as i32);
            a.i32(b.q0 as i32);
            a.i32(b.rows as i32);
            a.i32(self.dims.d as i32);
            a.i32(to_block as i32);
        })
    }

    fn delta(&mut self) -> Result<()> {
        let rows = self.dims.batch * self.dims.heads * self.dims.t;
        self.output(Buf::Delta, DType::F32, rows)?;
        let f = kernel(&self.dev, "attn_delta", self.dtype)?;
        let (o, dout, delta) = (
            self.mem(Buf::Out)?,
            self.mem(Buf::DOut)?,
            self.mem(Buf::Delta)?,
        );
        let grid = (rows as u32).div_ceil(DELTA_ROWS);
        launch::launch(&self.dev, &f, (grid, DELTA_ROWS * 32, 0), |a| {
            a.ptr(o.ptr);
            a.ptr(dout.ptr);
            a.ptr(delta.ptr);
            a.i64(rows as i64);
            a.i32(self.dims.d as i32);
        })
    }

    fn zero_accumulators(&mut self) -> Result<()> {
        let n = self.dims.batch * self.dims.kv_heads * self.dims.t * self.dims.d;
        for buf in [Buf::Dk, Buf::Dv] {
            let out = alloc_zeros(&self.dev, n)?;
            self.own(buf, out, DType::F32);
        }
        Ok(())
    }
}

/// The shapes of one attention call, checked.
fn dims_of(q: &Tensor, k: &Tensor, v: &Tensor, mask: &SegmentMask) -> Result<Dims> {
    let s = AttnShape::of(q, k, v, mask)?;
    Ok(Dims {
        batch: s.batch,
        heads: s.heads,
        kv_heads: s.kv_heads,
        t: s.t,
        d: s.d,
    })
}

fn plan_for(q: &Tensor, k: &Tensor, v: &Tensor, mask: &SegmentMask) -> Result<Plan> {
    let dims = dims_of(q, k, v, mask)?;
    let rows = Plan::block_rows(dims, q.dtype().size_in_bytes(), SCORE_BUDGET);
    Ok(Plan::new(dims, &mask.reach, rows))
}

/// [`crate::layers::attention::flash_attention_forward`] on a GPU: the output `[B, heads, T, d]`
/// and the row log-sum-exps `[B, heads, T]` f32.
pub fn attention_forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &SegmentMask,
    scale: f64,
) -> Result<AttentionSaved> {
    let plan = plan_for(q, k, v, mask)?;
    let Dims {
        batch, heads, t, ..
    } = plan.dims;
    let mut e = CudaExec::new(q, k, v, mask)?;
    e.output(Buf::Out, e.dtype, q.elem_count())?;
    e.output(Buf::Lse, DType::F32, batch * heads * t)?;
    e.scratch(&plan, false)?;
    plan.forward(&mut e, scale as f32)?;
    Ok(AttentionSaved {
        out: e.take(Buf::Out, q.shape())?,
        lse: e.take(Buf::Lse, (batch, heads, t))?,
    })
}

/// [`crate::layers::attention::flash_attention_backward`] on a GPU: (`dq`, `dk`, `dv`), the
/// key/value gradients accumulated per key/value head in f32.
pub fn attention_backward(
    dout: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    saved: &AttentionSaved,
    mask: &SegmentMask,
    scale: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let plan = plan_for(q, k, v, mask)?;
    let mut e = CudaExec::new(q, k, v, mask)?;
    let dtype = e.dtype;
    e.input(Buf::DOut, &dout.to_dtype(dtype)?)?;
    e.input(Buf::Out, &saved.out.to_dtype(dtype)?)?;
    e.input(Buf::Lse, &saved.lse)?;
    e.output(Buf::Dq, dtype, q.elem_count())?;
    e.scratch(&plan, true)?;
    plan.backward(&mut e, scale as f32)?;
    Ok((
        e.take(Buf::Dq, q.shape())?,
        e.take(Buf::Dk, k.shape())?.to_dtype(dtype)?,
        e.take(Buf::Dv, v.shape())?.to_dtype(dtype)?,
    ))
}
