//! Each layer's kernels against candle's tape autograd: the forward against a reference built
//! here from candle's differentiable ops, the explicit backward against the tape's gradients of
//! that reference, and both against central finite differences.

use candle_core::Result;
use candle_core::{DType, Device, Tensor, Var, D};
use pctrain_model::layers::attention::{
    flash_attention_backward, flash_attention_forward, SegmentMask,
};
use pctrain_model::layers::linear::{
    dropout_mask, linear_backward, linear_forward, linear_forward_train, Lora,
};
use pctrain_model::layers::loss::{cross_entropy_backward, cross_entropy_forward};
use pctrain_model::layers::mlp::{swiglu_backward, swiglu_forward};
use pctrain_model::layers::norm::{rms_norm_backward, rms_norm_forward};
use pctrain_model::layers::rope::{rope_backward, rope_forward, rope_tables};

// Attention with its scores stored, from candle's differentiable ops: the reference of the fused
// kernels.

/// Additive mask `[B, 1, T, T]`: 0 where query `q` may attend key `k` (same segment, `k <= q`,
/// and `q - k < window`), minus infinity elsewhere: the mask the fused kernels apply, written out.
fn attention_mask(
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

/// `p`: `[B, heads, T, S]` probabilities, `v`: `[B, kv_heads, S, d]` -> `p v`: `[B, heads, T, d]`
/// in f32.
fn attention_output(p: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (b, heads, t, _) = p.dims4()?;
    let (kv_heads, d) = (v.dim(1)?, v.dim(3)?);
    let out = grouped(p, kv_heads)?.matmul(&v.to_dtype(DType::F32)?)?;
    out.reshape((b, heads, t, d))
}

/// Softmax of the masked, scaled scores: `[B, heads, T, S]` in f32 for `S` keys.
fn attention_probs(q: &Tensor, k: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
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

/// `[B, heads, T, X]` -> `[B, kv_heads, group*T, X]`: each group of query heads shares one
/// key/value head (head `h` uses key/value head `h / group`, as transformers' `repeat_kv`).
fn grouped(x: &Tensor, kv_heads: usize) -> Result<Tensor> {
    let (b, heads, t, d) = x.dims4()?;
    x.contiguous()?
        .reshape((b, kv_heads, heads / kv_heads * t, d))
}

/// Deterministic values in [-1, 1).
fn rand(seed: u64, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// Asserts `got` equals `want` to `tol`, relative to `want`'s largest magnitude.
fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f32) {
    assert_eq!(got.dims(), want.dims(), "{what}: shapes");
    let (g, w) = (values(got), values(want));
    let scale = w.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let diff = g
        .iter()
        .zip(&w)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        diff / scale < tol,
        "{what}: max difference {diff:e} at scale {scale:e}"
    );
    assert!(
        w.iter().any(|&v| v != 0.0),
        "{what}: reference gradient is all zero"
    );
}

/// Central finite differences of `f` (a scalar function of `x`) at a few coordinates of `x`,
/// compared with `grad`.
fn check_fd(what: &str, x: &Tensor, grad: &Tensor, f: impl Fn(&Tensor) -> f32) {
    let base = values(x);
    let g = values(grad);
    let eps = 1e-2f32;
    let scale = g.iter().fold(0f32, |m, v| m.max(v.abs()));
    for i in (0..base.len()).step_by((base.len() / 7).max(1)) {
        let shifted = |d: f32| {
            let mut v = base.clone();
            v[i] += d;
            f(&Tensor::from_vec(v, x.dims(), &Device::Cpu).unwrap())
        };
        let fd = (shifted(eps) - shifted(-eps)) / (2.0 * eps);
        assert!(
            (fd - g[i]).abs() <= 2e-2 * scale.max(1e-3),
            "{what}[{i}]: finite difference {fd} vs backward {}",
            g[i]
        );
    }
}

/// `sum(y * r)`: a scalar whose gradient with respect to `y` is `r`.
fn dot(y: &Tensor, r: &Tensor) -> f32 {
    (y * r).unwrap().sum_all().unwrap().to_scalar().unwrap()
}

/// RMS norm as transformers writes it.
fn rms_norm_reference(x: &Tensor, w: &Tensor, eps: f64) -> Tensor {
    let rstd = (x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap() + eps)
        .unwrap()
        .sqrt()
        .unwrap()
        .recip()
        .unwrap();
    x.broadcast_mul(&rstd).unwrap().broadcast_mul(w).unwrap()
}

#[test]
fn rms_norm_backward_matches_autograd_and_finite_differences() {
    // 40 features: more than one 16-lane sum, and a remainder.
    let x = Var::from_tensor(&rand(1, &[2, 3, 40])).unwrap();
    let w = Var::from_tensor(&(rand(2, &[40]) + 1.5).unwrap()).unwrap();
    let r = rand(3, &[2, 3, 40]);
    let y = rms_norm_reference(&x, &w, 1e-5);
    assert_close("y", &rms_norm_forward(&x, &w, 1e-5).unwrap(), &y, 1e-6);
    let tape = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let (dx, dw) = rms_norm_backward(&r, &x, &w, 1e-5, true).unwrap();
    let dw = dw.unwrap();
    let (dx_frozen, no_dw) = rms_norm_backward(&r, &x, &w, 1e-5, false).unwrap();
    assert!(no_dw.is_none(), "a frozen weight gets no gradient");
    assert_close("dx, frozen weight", &dx_frozen, &dx, 1e-7);
    assert_close("dx", &dx, tape.get(&x).unwrap(), 1e-5);
    assert_close("dw", &dw, tape.get(&w).unwrap(), 1e-5);
    check_fd("x", &x, &dx, |x| {
        dot(&rms_norm_forward(x, &w, 1e-5).unwrap(), &r)
    });
    check_fd("w", &w, &dw, |w| {
        dot(&rms_norm_forward(&x, w, 1e-5).unwrap(), &r)
    });
}

#[test]
fn linear_with_lora_backward_matches_autograd_and_finite_differences() {
    let x = Var::from_tensor(&rand(4, &[5, 6])).unwrap();
    let w = Var::from_tensor(&rand(5, &[7, 6])).unwrap();
    let a = Var::from_tensor(&rand(6, &[3, 6])).unwrap();
    let b = Var::from_tensor(&rand(7, &[7, 3])).unwrap();
    let r = rand(8, &[5, 7]);
    let lora = |a: &Tensor, b: &Tensor| Lora {
        a: a.clone(),
        b: b.clone(),
        scale: 1.7,
    };
    let l = lora(&a, &b);
    let (y, xa) = linear_forward_train(&x, &w, Some(&l), None).unwrap();
    let xa = xa.expect("the adapter keeps x A^T");
    assert_close("y", &y, &linear_forward(&x, &w, Some(&l)).unwrap(), 1e-7);
    let tape = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let g = linear_backward(&r, &x, &w, Some((&l, &xa)), None, true).unwrap();
    let (da, db) = g.dlora.clone().unwrap();
    assert_close("dx", &g.dx, tape.get(&x).unwrap(), 1e-5);
    assert_close("dw", g.dw.as_ref().unwrap(), tape.get(&w).unwrap(), 1e-5);
    assert_close("dA", &da, tape.get(&a).unwrap(), 1e-5);
    assert_close("dB", &db, tape.get(&b).unwrap(), 1e-5);
    check_fd("A", &a, &da, |a| {
        dot(&linear_forward(&x, &w, Some(&lora(a, &b))).unwrap(), &r)
    });
    check_fd("B", &b, &db, |b| {
        dot(&linear_forward(&x, &w, Some(&lora(&a, b))).unwrap(), &r)
    });
    check_fd("x", &x, &g.dx, |x| {
        dot(&linear_forward(x, &w, Some(&lora(&a, &b))).unwrap(), &r)
    });
    // A frozen weight gets no gradient.
    let frozen = linear_backward(&r, &x, &w, Some((&l, &xa)), None, false).unwrap();
    assert!(frozen.dw.is_none());

    // With LoRA dropout: the mask applies to the adapter's input only.
    let mask = dropout_mask(0.4, 9, &[5, 6], DType::F32, &Device::Cpu).unwrap();
    let kept = values(&mask).iter().filter(|&&m| m > 0.0).count();
    assert!(kept > 5 && kept < 30, "{kept} of 30 kept at p = 0.4");
    assert!(values(&mask)
        .iter()
        .all(|&m| m == 0.0 || (m - 1.0 / 0.6).abs() < 1e-6));
    let (y, xa) = linear_forward_train(&x, &w, Some(&l), Some(&mask)).unwrap();
    let xa = xa.expect("the adapter keeps dropout(x) A^T");
    let tape = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let g = linear_backward(&r, &x, &w, Some((&l, &xa)), Some(&mask), false).unwrap();
    let (da, db) = g.dlora.clone().unwrap();
    assert_close("dx, dropout", &g.dx, tape.get(&x).unwrap(), 1e-5);
    assert_close("dA, dropout", &da, tape.get(&a).unwrap(), 1e-5);
    assert_close("dB, dropout", &db, tape.get(&b).unwrap(), 1e-5);
}

#[test]
fn swiglu_backward_matches_autograd_and_finite_differences() {
    let g = Var::from_tensor(&(rand(9, &[4, 10]) * 3.0).unwrap()).unwrap();
    let u = Var::from_tensor(&rand(10, &[4, 10])).unwrap();
    let r = rand(11, &[4, 10]);
    let z = (g.silu().unwrap() * u.as_tensor()).unwrap();
    assert_close("z", &swiglu_forward(&g, &u).unwrap(), &z, 1e-6);
    let tape = (&z * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let (dg, du) = swiglu_backward(&r, &g, &u).unwrap();
    assert_close("dgate", &dg, tape.get(&g).unwrap(), 1e-5);
    assert_close("dup", &du, tape.get(&u).unwrap(), 1e-5);
    check_fd("gate", &g, &dg, |g| {
        dot(&swiglu_forward(g, &u).unwrap(), &r)
    });
}

#[test]
fn rope_backward_matches_autograd_and_finite_differences() {
    let inv_freq = [1.0f32, 0.1, 0.01];
    let positions: Vec<u32> = vec![0, 1, 2, 3, 0, 1, 5, 9];
    let (cos, sin) = rope_tables(&inv_freq, &positions, 2, &Device::Cpu).unwrap();
    let x = Var::from_tensor(&rand(12, &[2, 3, 4, 6])).unwrap();
    let r = rand(13, &[2, 3, 4, 6]);
    // x cos + rotate_half(x) sin, rotate_half([x1, x2]) = [-x2, x1].
    let (c4, s4) = (cos.unsqueeze(1).unwrap(), sin.unsqueeze(1).unwrap());
    let x1 = x.narrow(3, 0, 3).unwrap();
    let x2 = x.narrow(3, 3, 3).unwrap();
    let rotated = Tensor::cat(&[&x2.neg().unwrap(), &x1], 3).unwrap();
    let y = (x.broadcast_mul(&c4).unwrap() + rotated.broadcast_mul(&s4).unwrap()).unwrap();
    assert_close("y", &rope_forward(&x, &cos, &sin).unwrap(), &y, 1e-6);
    let tape = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let dx = rope_backward(&r, &cos, &sin).unwrap();
    assert_close("dx", &dx, tape.get(&x).unwrap(), 1e-5);
    check_fd("x", &x, &dx, |x| {
        dot(&rope_forward(x, &cos, &sin).unwrap(), &r)
    });
}

/// The fused kernels' attention and its gradients against the dense softmax of candle's ops, on
/// `rows` of `segments` (`[rows * t]`), `heads` query heads over `kv` key/value heads of `d`.
fn attention_case(
    segments: &[u32],
    rows: usize,
    heads: usize,
    kv: usize,
    d: usize,
    window: usize,
    fd: bool,
) {
    let t = segments.len() / rows;
    let w = (window > 0).then_some(window);
    let mask = attention_mask(segments, rows, w, &Device::Cpu).unwrap();
    let segs = SegmentMask::new(segments, rows, window, &Device::Cpu).unwrap();
    let q = Var::from_tensor(&rand(14, &[rows, heads, t, d])).unwrap();
    let k = Var::from_tensor(&rand(15, &[rows, kv, t, d])).unwrap();
    let v = Var::from_tensor(&rand(16, &[rows, kv, t, d])).unwrap();
    let r = rand(17, &[rows, heads, t, d]);
    let scale = 0.5;
    let dense = |q: &Tensor, k: &Tensor, v: &Tensor| {
        attention_output(&attention_probs(q, k, &mask, scale).unwrap(), v).unwrap()
    };
    let out = dense(&q, &k, &v);
    let tape = (&out * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let saved = flash_attention_forward(&q, &k, &v, &segs, scale).unwrap();
    assert_close("out", &saved.out, &out, 1e-5);
    let (dq, dk, dv) = flash_attention_backward(&r, &q, &k, &v, &saved, &segs, scale).unwrap();
    assert_close("dq", &dq, tape.get(&q).unwrap(), 1e-5);
    assert_close("dk", &dk, tape.get(&k).unwrap(), 1e-5);
    assert_close("dv", &dv, tape.get(&v).unwrap(), 1e-5);
    if fd {
        let f = |q: &Tensor, k: &Tensor, v: &Tensor| {
            let s = flash_attention_forward(q, k, v, &segs, scale).unwrap();
            dot(&s.out, &r)
        };
        check_fd("q", &q, &dq, |q| f(q, &k, &v));
        check_fd("k", &k, &dk, |k| f(&q, k, &v));
        check_fd("v", &v, &dv, |v| f(&q, &k, v));
    }
}

#[test]
fn attention_backward_matches_autograd_and_finite_differences() {
    // Two rows: two packed samples, and one sample then padding; grouped-query (4 heads, 2 kv
    // heads); a sliding window of 3.
    let segments = [1, 1, 1, 1, 2, 2, 2, 1, 1, 1, 1, 1, 0, 0];
    attention_case(&segments, 2, 4, 2, 4, 3, true);
}

#[test]
fn attention_over_several_tiles_matches_the_dense_softmax() {
    // 150 positions: several key tiles and query blocks; samples that cross tile edges, padding,
    // a segment id that comes back after another (keys of the other segment in between are
    // masked one by one), groups of 3 query heads.
    let mut row1: Vec<u32> = [(1, 40), (2, 70), (3, 25), (0, 15)]
        .iter()
        .flat_map(|&(s, n)| std::iter::repeat_n(s, n))
        .collect();
    let row2: Vec<u32> = [(1, 60), (2, 30), (1, 60)]
        .iter()
        .flat_map(|&(s, n)| std::iter::repeat_n(s, n))
        .collect();
    row1.extend(row2);
    attention_case(&row1, 2, 6, 2, 20, 0, false);
    attention_case(&row1, 2, 6, 2, 20, 45, false);
}

#[test]
fn cross_entropy_backward_matches_autograd_and_finite_differences() {
    let h = Var::from_tensor(&rand(18, &[9, 5])).unwrap();
    let w = Var::from_tensor(&(rand(19, &[11, 5]) * 2.0).unwrap()).unwrap();
    let targets: Vec<i64> = vec![3, -100, 0, 10, 7, -100, 2, 2, 5];
    let (scaling, grad_scale) = (2.5, 1.0 / 7.0);
    // The tape's version: the loss as a tensor, from the unchunked logits.
    let logits = (h.matmul(&w.t().unwrap()).unwrap() / scaling).unwrap();
    let lse = logits.log_sum_exp(1).unwrap();
    let valid: Vec<u32> = (0..9)
        .filter(|&i| targets[i] != -100)
        .map(|i| i as u32)
        .collect();
    let idx = Tensor::new(valid.as_slice(), &Device::Cpu).unwrap();
    let tgt: Vec<u32> = valid.iter().map(|&i| targets[i as usize] as u32).collect();
    let tgt = Tensor::from_vec(tgt, (valid.len(), 1), &Device::Cpu).unwrap();
    let picked = logits
        .index_select(&idx, 0)
        .unwrap()
        .gather(&tgt, 1)
        .unwrap()
        .squeeze(1)
        .unwrap();
    let loss = ((lse.index_select(&idx, 0).unwrap() - picked)
        .unwrap()
        .sum_all()
        .unwrap()
        * grad_scale)
        .unwrap();
    let tape = loss.backward().unwrap();
    for chunk in [1, 4, 100] {
        let g = cross_entropy_backward(&h, &w, scaling, &targets, chunk, grad_scale, true).unwrap();
        assert_eq!(g.loss.count, 7);
        let fwd = cross_entropy_forward(&h, &w, scaling, &targets, chunk).unwrap();
        assert!((g.loss.sum().unwrap() - fwd.sum().unwrap()).abs() < 1e-5);
        assert!(
            (g.loss.sum().unwrap() * grad_scale - f64::from(loss.to_scalar::<f32>().unwrap()))
                .abs()
                < 1e-5
        );
        assert_close("dhidden", &g.dhidden, tape.get(&h).unwrap(), 1e-5);
        assert_close(
            "doutput",
            g.doutput.as_ref().unwrap(),
            tape.get(&w).unwrap(),
            1e-5,
        );
    }
    let g = cross_entropy_backward(&h, &w, scaling, &targets, 3, grad_scale, false).unwrap();
    assert!(
        g.doutput.is_none(),
        "a frozen output projection gets no gradient"
    );
    let f = |h: &Tensor| {
        (cross_entropy_forward(h, &w, scaling, &targets, 3)
            .unwrap()
            .sum()
            .unwrap()
            * grad_scale) as f32
    };
    check_fd("h", &h, &g.dhidden, f);
}
