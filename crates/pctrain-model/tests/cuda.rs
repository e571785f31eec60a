//! Each CUDA kernel against its CPU twin, on a GPU (`--features cuda`), at sizes where every
//! strided loop runs more than once: RMS norm over 4096 features, cross-entropy over Llama 3's
//! 128256-token vocabulary, attention with 8 query and 2 key/value heads over 300 packed
//! positions (two blocks of query rows). Every test needs a GPU, so each is ignored unless asked
//! for (`--include-ignored`, as scripts/gpu-check.sh does); asked for without a GPU, it fails.
#![cfg(feature = "cuda")]

mod common;

use candle_core::{DType, Device, Tensor};
use pctrain_model::layers::attention::{
    flash_attention_backward, flash_attention_forward, SegmentMask,
};
use pctrain_model::layers::linear::dropout_mask;
use pctrain_model::layers::loss::{cross_entropy_backward, cross_entropy_forward};
use pctrain_model::layers::mlp::{swiglu_backward, swiglu_forward};
use pctrain_model::layers::norm::{rms_norm_backward, rms_norm_forward};
use pctrain_model::layers::rope::{rope_backward, rope_forward, rope_tables};
use pctrain_model::rng::Rng64;
use pctrain_model::{cuda, StepOptions, TrainMode};

/// The first GPU; a test that runs without one fails.
fn gpu() -> Device {
    Device::new_cuda(0).unwrap_or_else(|e| panic!("no CUDA device ({e}): this test needs a GPU"))
}

/// A CPU tensor of normal(0, std) values.
fn randn(shape: &[usize], std: f32, seed: u64) -> Tensor {
    let mut rng = Rng64::new(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            let (u1, u2) = (rng.unit().max(1e-12), rng.unit());
            std * ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// The largest difference between `gpu` (any device) and `cpu`, relative to `cpu`'s largest
/// magnitude.
fn rel_err(gpu: &Tensor, cpu: &Tensor) -> f32 {
    let g = gpu
        .to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let c = cpu.to_dtype(DType::F32).unwrap();
    assert_eq!(g.dims(), c.dims());
    let scale = c
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .max(1e-12);
    let diff = (g - c)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    diff / scale
}

/// Tolerance for a storage type: f32 agrees to rounding; bf16 rounds each stored value to 8 bits.
fn tol(dtype: DType) -> f32 {
    if dtype == DType::F32 {
        2e-5
    } else {
        2e-2
    }
}

fn on(t: &Tensor, dev: &Device, dtype: DType) -> Tensor {
    t.to_dtype(dtype).unwrap().to_device(dev).unwrap()
}

/// The CPU twin's inputs in the storage type, back in f32 on the CPU, so both sides start from
/// the same rounded values.
fn cpu(t: &Tensor, dtype: DType) -> Tensor {
    t.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap()
}

/// 70 rows of 4096 features: 16 strides of a 256-thread block per row, and the weight
/// gradient's two stages over two chunks of rows.
#[test]
#[ignore = "needs a CUDA device: scripts/gpu-check.sh runs it with --include-ignored"]
fn rms_norm_matches_its_cpu_twin() {
    let dev = gpu();
    let h = 4096;
    for dtype in [DType::F32, DType::BF16] {
        let (x, w, dy) = (
            randn(&[2, 35, h], 1.0, 1),
            randn(&[h], 0.5, 2),
            randn(&[2, 35, h], 1.0, 3),
        );
        let y_gpu = rms_norm_forward(&on(&x, &dev, dtype), &on(&w, &dev, dtype), 1e-5).unwrap();
        let y_cpu = rms_norm_forward(&cpu(&x, dtype), &cpu(&w, dtype), 1e-5).unwrap();
        assert!(rel_err(&y_gpu, &y_cpu) < tol(dtype), "{dtype:?} forward");
        let (dyg, xg, wg) = (
            on(&dy, &dev, dtype),
            on(&x, &dev, dtype),
            on(&w, &dev, dtype),
        );
        let (dx_g, dw_g) = rms_norm_backward(&dyg, &xg, &wg, 1e-5, true).unwrap();
        let (dx_c, dw_c) = rms_norm_backward(
            &cpu(&dy, dtype),
            &cpu(&x, dtype),
            &cpu(&w, dtype),
            1e-5,
            true,
        )
        .unwrap();
        assert!(rel_err(&dx_g, &dx_c) < tol(dtype), "{dtype:?} dx");
        assert!(
            rel_err(&dw_g.unwrap(), &dw_c.unwrap()) < tol(dtype),
            "{dtype:?} dw"
        );
        let (dx_frozen, none) = rms_norm_backward(&dyg, &xg, &wg, 1e-5, false).unwrap();
        assert!(
            none.is_none(),
            "{dtype:?}: a frozen weight gets no gradient"
        );
        assert_eq!(
            rel_err(&dx_frozen, &dx_g),
            0.0,
            "{dtype:?} dx, frozen weight"
        );
    }
}

/// The kernel, and the cosine and sine tables the GPU makes from the positions.
#[test]
#[ignore = "needs a CUDA device: scripts/gpu-check.sh runs it with --include-ignored"]
fn rope_matches_its_cpu_twin() {
    let dev = gpu();
    let inv_freq: Vec<f32> = (0..16)
        .map(|i| 1.0 / 10000f32.powf(i as f32 / 16.0))
        .collect();
    let positions: Vec<u32> = (0..2 * 9).map(|i| (i * 7 % 13) as u32).collect();
    let (cos, sin) = rope_tables(&inv_freq, &positions, 2, &Device::Cpu).unwrap();
    let (cos_g, sin_g) = rope_tables(&inv_freq, &positions, 2, &dev).unwrap();
    assert!(rel_err(&cos_g, &cos) < 1e-6, "cos tables made on the GPU");
    assert!(rel_err(&sin_g, &sin) < 1e-6, "sin tables made on the GPU");
    for dtype in [DType::F32, DType::BF16] {
        let x = randn(&[2, 3, 9, 32], 1.0, 4);
        let y_g = rope_forward(&on(&x, &dev, dtype), &cos_g, &sin_g).unwrap();
        let y_c = rope_forward(&cpu(&x, dtype), &cos, &sin).unwrap();
        assert!(rel_err(&y_g, &y_c) < tol(dtype), "{dtype:?} forward");
        let d_g = rope_backward(&on(&x, &dev, dtype), &cos_g, &sin_g).unwrap();
        let d_c = rope_backward(&cpu(&x, dtype), &cos, &sin).unwrap();
        assert!(rel_err(&d_g, &d_c) < tol(dtype), "{dtype:?} backward");
    }
}

#[test]
#[ignore = "needs a CUDA device: scripts/gpu-check.sh runs it with --include-ignored"]
fn swiglu_matches_its_cpu_twin() {
    let dev = gpu();
    for dtype in [DType::F32, DType::BF16] {
        let (g, u, dz) = (
            randn(&[4, 77], 2.0, 5),
            randn(&[4, 77], 1.0, 6),
            randn(&[4, 77], 1.0, 7),
        );
        let z_g = swiglu_forward(&on(&g, &dev, dtype), &on(&u, &dev, dtype)).unwrap();
        let z_c = swiglu_forward(&cpu(&g, dtype), &cpu(&u, dtype)).unwrap();
        assert!(rel_err(&z_g, &z_c) < tol(dtype), "{dtype:?} forward");
        let (dg_g, du_g) = swiglu_backward(
            &on(&dz, &dev, dtype),
            &on(&g, &dev, dtype),
            &on(&u, &dev, dtype),
        )
        .unwrap();
        let (dg_c, du_c) =
            swiglu_backward(&cpu(&dz, dtype), &cpu(&g, dtype), &cpu(&u, dtype)).unwrap();
        assert!(rel_err(&dg_g, &dg_c) < tol(dtype), "{dtype:?} dgate");
        assert!(rel_err(&du_g, &du_c) < tol(dtype), "{dtype:?} dup");
    }
}

/// Grouped-query attention against the CPU's flash kernels: 8 query heads over 2 key/value heads
/// at 300 positions (two blocks of query rows, the second shorter) with packed samples and
/// padding in one row and one sample in the other, with and without a sliding window; then
/// plain heads over fewer positions than one block.
#[test]
#[ignore = "needs a CUDA device: scripts/gpu-check.sh runs it with --include-ignored"]
fn blocked_attention_matches_its_cpu_twin() {
    let dev = gpu();
    for (b, heads, kv, t, dims) in [(2, 8, 2, 300, &[64, 128][..]), (1, 3, 3, 7, &[40][..])] {
        for &d in dims {
            attention_case(&dev, b, heads, kv, t, d);
        }
    }
}

fn attention_case(dev: &Device, b: usize, heads: usize, kv: usize, t: usize, d: usize) {
    let dev = dev.clone();
    let mut segments = vec![0u32; b * t];
    for (i, s) in segments.iter_mut().enumerate() {
        let (row, p) = (i / t, i % t);
        *s = match (row, p) {
            (0, p) if p < 130 => 1,
            (0, p) if p < 261 => 2,
            (0, _) => 0,
            _ => 1,
        };
    }
    for window in [0, 5, 1000] {
        let mask_g = SegmentMask::new(&segments, b, window, &dev).unwrap();
        let mask_c = SegmentMask::new(&segments, b, window, &Device::Cpu).unwrap();
        for dtype in [DType::F32, DType::BF16] {
            let scale = 1.0 / (d as f64).sqrt();
            let q = randn(&[b, heads, t, d], 1.0, 8);
            let k = randn(&[b, kv, t, d], 1.0, 9);
            let v = randn(&[b, kv, t, d], 1.0, 10);
            let dout = randn(&[b, heads, t, d], 1.0, 11);
            let (qc, kc, vc) = (cpu(&q, dtype), cpu(&k, dtype), cpu(&v, dtype));
            let saved_c = flash_attention_forward(&qc, &kc, &vc, &mask_c, scale).unwrap();
            let (dq_c, dk_c, dv_c) = flash_attention_backward(
                &cpu(&dout, dtype),
                &qc,
                &kc,
                &vc,
                &saved_c,
                &mask_c,
                scale,
            )
            .unwrap();
            let (qg, kg, vg) = (
                on(&q, &dev, dtype),
                on(&k, &dev, dtype),
                on(&v, &dev, dtype),
            );
            let saved = cuda::attention_forward(&qg, &kg, &vg, &mask_g, scale).unwrap();
            let what =
                format!("b {b}, heads {heads}/{kv}, t {t}, d {d}, window {window}, {dtype:?}");
            assert!(
                rel_err(&saved.out, &saved_c.out) < tol(dtype),
                "{what}: output"
            );
            assert!(
                rel_err(&saved.lse, &saved_c.lse) < tol(dtype),
                "{what}: lse"
            );
            let (dq, dk, dv) = cuda::attention_backward(
                &on(&dout, &dev, dtype),
                &qg,
                &kg,
                &vg,
                &saved,
                &mask_g,
                scale,
            )
            .unwrap();
            assert!(rel_err(&dq, &dq_c) < tol(dtype), "{what}: dq");
            assert!(rel_err(&dk, &dk_c) < tol(dtype), "{what}: dk");
            assert!(rel_err(&dv, &dv_c) < tol(dtype), "{what}: dv");
        }
    }
}

#[test]
#[ignore = "needs a CUDA device: scripts/gpu-check.sh runs it with --include-ignored"]
fn fused_cross_entropy_matches_its_cpu_twin() {
    let dev = gpu();
    // A few rows over Llama 3's vocabulary: 126 strides of a 1024-thread block per row.
    let (n, h, vocab) = (7, 64, 128256);
    let mut rng = Rng64::new(12);
    let targets: Vec<i64> = (0..n)
        .map(|i| {
            if i % 5 == 0 {
                -100
            } else {
                (rng.next_u64() % vocab as u64) as i64
            }
        })
        .collect();
    for dtype in [DType::F32, DType::BF16] {
        let (hid, out) = (randn(&[n, h], 1.0, 13), randn(&[vocab, h], 0.3, 14));
        for chunk in [2, 64] {
            let g = cross_entropy_backward(
                &on(&hid, &dev, dtype),
                &on(&out, &dev, dtype),
                1.7,
                &targets,
                chunk,
                0.01,
                true,
            )
            .unwrap();
            let c = cross_entropy_backward(
                &cpu(&hid, dtype),
                &cpu(&out, dtype),
                1.7,
                &targets,
                chunk,
                0.01,
                true,
            )
            .unwrap();
            assert_eq!(g.loss.count, c.loss.count);
            let loss_tol = if dtype == DType::F32 { 1e-5 } else { 1e-2 };
            assert!(
                (g.loss.sum().unwrap() - c.loss.sum().unwrap()).abs()
                    < loss_tol * c.loss.sum().unwrap().abs(),
                "{dtype:?} loss"
            );
            assert!(
                rel_err(&g.dhidden, &c.dhidden) < tol(dtype),
                "{dtype:?} dhidden"
            );
            let (gd, cd) = (g.doutput.unwrap(), c.doutput.unwrap());
            assert!(rel_err(&gd, &cd) < tol(dtype), "{dtype:?} doutput");
            let fwd = cross_entropy_forward(
                &on(&hid, &dev, dtype),
                &on(&out, &dev, dtype),
                1.7,
                &targets,
                chunk,
            )
            .unwrap();
            assert!(
                (fwd.sum().unwrap() - g.loss.sum().unwrap()).abs()
                    < 1e-6 * g.loss.sum().unwrap().abs(),
                "{dtype:?} forward only"
            );
        }
    }
}

/// The global norm in one device reduction: tensors of one element, of one partial block, and of
/// more elements than 256 blocks of 1024 cover; the clipping coefficient; a NaN loss refuses.
#[test]
#[ignore = "needs a CUDA device: scripts/gpu-check.sh runs it with --include-ignored"]
fn the_device_grad_norm_matches_the_host_norm() {
    let dev = gpu();
    for dtype in [DType::F32, DType::BF16] {
        let host: Vec<Tensor> = [1usize, 1000, 300_000, 4096 * 70]
            .iter()
            .enumerate()
            .map(|(i, &n)| cpu(&randn(&[n], 0.01, 20 + i as u64), dtype))
            .collect();
        let want: f64 = host
            .iter()
            .map(|t| {
                f64::from(
                    t.sqr()
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap(),
                )
            })
            .sum::<f64>()
            .sqrt();
        let grads: Vec<Tensor> = host.iter().map(|t| on(t, &dev, dtype)).collect();
        let loss = Tensor::new(3.5f32, &dev).unwrap();
        let got: Vec<f32> = cuda::grad_norm_clip(&grads, 1.0, &loss)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(
            ((f64::from(got[0]) - want) / want).abs() < 1e-4,
            "{dtype:?}: {got:?} vs {want}"
        );
        let coef = (1.0 / (want + 1e-6)).min(1.0);
        assert!(
            (f64::from(got[1]) - coef).abs() < 1e-4 * coef,
            "{dtype:?} coef"
        );
        assert_eq!(got[2], 1.0, "{dtype:?}: finite");
        let off: Vec<f32> = cuda::grad_norm_clip(&grads, 0.0, &loss)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(off[1], 1.0, "0 turns clipping off");
        let nan = Tensor::new(f32::NAN, &dev).unwrap();
        let refused: Vec<f32> = cuda::grad_norm_clip(&grads, 1.0, &nan)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(refused[2], 0.0, "a NaN loss refuses the step");
    }
}

/// Rows written in place at their indices; the others keep their values.
#[test]
#[ignore = "needs a CUDA device: scripts/gpu-check.sh runs it with --include-ignored"]
fn rows_are_written_in_place_at_their_indices() {
    let dev = gpu();
    for dtype in [DType::F32, DType::BF16] {
        let dst = on(&randn(&[9, 300], 1.0, 30), &dev, dtype);
        let before = dst
            .to_device(&Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let src = randn(&[3, 300], 1.0, 31);
        let index = Tensor::new(&[7u32, 0, 4], &dev).unwrap();
        cuda::write_rows(&dst, &index, &on(&src, &dev, dtype)).unwrap();
        let after = dst
            .to_device(&Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        for row in 0..9 {
            let want = match row {
                7 => cpu(&src.get(0).unwrap(), dtype),
                0 => cpu(&src.get(1).unwrap(), dtype),
                4 => cpu(&src.get(2).unwrap(), dtype),
                r => before.get(r).unwrap(),
            };
            assert_eq!(
                rel_err(&after.get(row).unwrap(), &want),
                0.0,
                "{dtype:?} row {row}"
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA device: scripts/gpu-check.sh runs it with --include-ignored"]
fn gpu_dropout_masks_equal_the_cpu_masks() {
    let dev = gpu();
    for dtype in [DType::F32, DType::BF16] {
        let g = dropout_mask(0.1, 99, &[5, 301], dtype, &dev).unwrap();
        let c = dropout_mask(0.1, 99, &[5, 301], dtype, &Device::Cpu).unwrap();
        assert_eq!(rel_err(&g, &c), 0.0, "{dtype:?}");
    }
}

/// The llama fixture with its adapter (f32) over base weights in `dtype` on `device`.
fn llama(dtype: DType, device: &Device) -> pctrain_model::Model {
    let dir = common::fixture("llama");
    let config = pctrain_model::ModelConfig::load(&dir).unwrap();
    let weights = pctrain_model::ModelWeights::load(&dir, &config, dtype, device).unwrap();
    let lora = pctrain_model::LoraAdapter::load(&dir.join("adapter"), &config, DType::F32, device)
        .unwrap();
    pctrain_model::Model::new(config, weights, Some(lora))
}

/// A whole LoRA step of the llama fixture, with the base in bf16 as training on a GPU runs it:
/// the GPU's loss and adapter gradients are the CPU's.
#[test]
#[ignore = "needs a CUDA device: scripts/gpu-check.sh runs it with --include-ignored"]
fn a_bf16_lora_step_on_the_gpu_matches_the_cpu() {
    let dev = gpu();
    let batch = common::batch(&common::reference("llama"));
    let opts = StepOptions {
        mode: TrainMode::Lora,
        recompute: false,
        loss_chunk: 16,
        dropout_seed: 3,
    };
    let n = batch.target_count() as f64;
    let (lc, gc) = llama(DType::BF16, &Device::Cpu)
        .forward_backward(&batch, n, opts)
        .unwrap();
    let (lg, gg) = llama(DType::BF16, &dev)
        .forward_backward(&batch, n, opts)
        .unwrap();
    let (lc, lg) = (lc.sum().unwrap(), lg.sum().unwrap());
    assert!((lc - lg).abs() < 1e-2 * lc.abs(), "{lc} vs {lg}");
    let compared = compare_adapter_grads(&gc, &gg, |l, t, (xa, xb), (ya, yb)| {
        assert!(
            rel_err(ya, xa) < 5e-2 && rel_err(yb, xb) < 5e-2,
            "layer {l} target {t}"
        );
    });
    assert!(compared > 0, "no adapter gradient was compared");
}

/// A whole LoRA step of the llama fixture: the GPU's loss and adapter gradients are the CPU's.
#[test]
#[ignore = "needs a CUDA device: scripts/gpu-check.sh runs it with --include-ignored"]
fn a_lora_step_on_the_gpu_matches_the_cpu() {
    let dev = gpu();
    let reference = common::reference("llama");
    let batch = common::batch(&reference);
    let cpu_model = common::model("llama", true);
    let gpu_model = llama(DType::F32, &dev);
    let opts = StepOptions {
        mode: TrainMode::Lora,
        recompute: false,
        loss_chunk: 16,
        dropout_seed: 3,
    };
    let n = batch.target_count() as f64;
    let (lc, gc) = cpu_model.forward_backward(&batch, n, opts).unwrap();
    let (lg, gg) = gpu_model.forward_backward(&batch, n, opts).unwrap();
    let (lc, lg) = (lc.sum().unwrap(), lg.sum().unwrap());
    assert!((lc - lg).abs() < 1e-5 * lc.abs(), "{lc} vs {lg}");
    let compared = compare_adapter_grads(&gc, &gg, |l, t, (xa, xb), (ya, yb)| {
        assert!(rel_err(ya, xa) < 1e-4, "layer {l} target {t} dA");
        assert!(rel_err(yb, xb) < 1e-4, "layer {l} target {t} dB");
    });
    assert!(compared > 0, "no adapter gradient was compared");
}

/// Calls `check(layer, target, cpu (dA, dB), gpu (dA, dB))` for each adapter gradient of `cpu`
/// and `gpu`; one present on a side only fails. Returns how many were compared.
fn compare_adapter_grads(
    cpu: &pctrain_model::Grads,
    gpu: &pctrain_model::Grads,
    mut check: impl FnMut(usize, usize, (&Tensor, &Tensor), (&Tensor, &Tensor)),
) -> usize {
    assert_eq!(cpu.layers.len(), gpu.layers.len(), "layer counts differ");
    let mut compared = 0;
    for (l, (a, b)) in cpu.layers.iter().zip(&gpu.layers).enumerate() {
        for (t, (x, y)) in a.lora.iter().zip(&b.lora).enumerate() {
            match (x, y) {
                (Some((xa, xb)), Some((ya, yb))) => {
                    check(l, t, (xa, xb), (ya, yb));
                    compared += 1;
                }
                (None, None) => {}
                _ => panic!("layer {l} target {t}: an adapter gradient on one side only"),
            }
        }
    }
    compared
}

/// The cache written on the GPU holds what the CPU writes, and each token's attention over it
/// (8 query and 2 key/value heads, a slot of 1100 positions so that a block takes two chunks of
/// scores, windows 0 and 37) is the CPU twin's.
#[test]
#[ignore = "needs a CUDA device: scripts/gpu-check.sh runs it with --include-ignored"]
fn cache_attention_matches_its_cpu_twin() {
    use pctrain_model::layers::kv_cache::{
        cache_attention_cpu, cache_write_cpu, CacheAttention, CacheShape, Places,
    };
    let dev = gpu();
    for (dtype, d) in [(DType::F32, 64), (DType::BF16, 128)] {
        let (heads, kv) = (8, 2);
        let shape = CacheShape::new(2, 3, kv, 1100, d);
        let len = 1100;
        // Slot 2 of layer 1 fills positions 0..1100; slot 0 positions 0..5.
        let mut slots: Vec<u32> = vec![2; len];
        let mut positions: Vec<u32> = (0..len as u32).collect();
        slots.extend([0u32; 5]);
        positions.extend(0..5u32);
        let n = slots.len();
        let k = cpu(&randn(&[n, kv * d], 1.0, 11), dtype);
        let v = cpu(&randn(&[n, kv * d], 1.0, 12), dtype);
        let mut keys = vec![0f32; shape.len()];
        let mut values = vec![0f32; shape.len()];
        let host = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let places = Places {
            slots: &slots,
            positions: &positions,
        };
        cache_write_cpu(
            &shape,
            1,
            places,
            &host(&k),
            &host(&v),
            &mut keys,
            &mut values,
        );
        let u32s = |x: &[u32]| Tensor::from_slice(x, x.len(), &dev).unwrap();
        let (gs, gp) = (u32s(&slots), u32s(&positions));
        let gkeys = Tensor::zeros(shape.len(), dtype, &dev).unwrap();
        let gvalues = Tensor::zeros(shape.len(), dtype, &dev).unwrap();
        let (gk, gv) = (on(&k, &dev, dtype), on(&v, &dev, dtype));
        cuda::decode::cache_write(&shape, 1, &gs, &gp, &gk, &gv, &gkeys, &gvalues).unwrap();
        let back = |t: &Tensor| {
            host(
                &t.to_dtype(DType::F32)
                    .unwrap()
                    .to_device(&Device::Cpu)
                    .unwrap(),
            )
        };
        assert_eq!(back(&gkeys), keys, "{dtype:?}: keys");
        assert_eq!(back(&gvalues), values, "{dtype:?}: values");
        // Queries at positions 1099, 1024, 500 and 0 of slot 2, and 4 of slot 0.
        let (qs, qp) = (vec![2u32, 2, 2, 2, 0], vec![1099u32, 1024, 500, 0, 4]);
        let q = cpu(&randn(&[qs.len(), heads * d], 1.0, 13), dtype);
        for window in [0, 37] {
            let attn = CacheAttention {
                heads,
                window,
                scale: 1.0 / (d as f32).sqrt(),
            };
            let mut want = vec![0f32; q.elem_count()];
            let places = Places {
                slots: &qs,
                positions: &qp,
            };
            cache_attention_cpu(
                &shape,
                1,
                &attn,
                places,
                &host(&q),
                &keys,
                &values,
                &mut want,
            );
            let got = cuda::decode::cache_attention(
                &shape,
                1,
                &attn,
                &u32s(&qs),
                &u32s(&qp),
                &on(&q, &dev, dtype),
                &gkeys,
                &gvalues,
            )
            .unwrap();
            let want = Tensor::from_vec(want, q.shape(), &Device::Cpu).unwrap();
            let e = rel_err(&got, &want);
            assert!(e < tol(dtype), "{dtype:?}, window {window}: {e}");
        }
    }
}

/// The GPU's picks over Llama 3's vocabulary are the CPU twin's: greedy, and draws cut by top-k
/// and top-p.
#[test]
#[ignore = "needs a CUDA device: scripts/gpu-check.sh runs it with --include-ignored"]
fn picks_match_their_cpu_twin() {
    use pctrain_model::generate::{pick, Sampling};
    let dev = gpu();
    let (rows, v) = (16, 128_256);
    let logits = randn(&[rows, v], 3.0, 21);
    let mut rng = Rng64::new(22);
    let draws: Vec<f32> = (0..rows).map(|_| rng.unit() as f32).collect();
    let host: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
    let scratch = Tensor::zeros(rows * v, DType::F32, &dev).unwrap();
    let sample = |temperature, top_p, top_k| Sampling::Sample {
        temperature,
        top_p,
        top_k,
        seed: 0,
    };
    for sampling in [
        Sampling::Greedy,
        sample(1.0, 1.0, 0),
        sample(0.8, 0.9, 0),
        sample(0.7, 1.0, 50),
        sample(1.2, 0.5, 1000),
    ] {
        let mut order = vec![0u32; v];
        let want: Vec<u32> = host
            .chunks(v)
            .zip(&draws)
            .map(|(row, &u)| pick(&mut row.to_vec(), &mut order, &sampling, u))
            .collect();
        let got = cuda::decode::pick_rows(
            &logits.to_device(&dev).unwrap(),
            &Tensor::from_slice(&draws, rows, &dev).unwrap(),
            &scratch,
            &sampling,
        )
        .unwrap()
        .to_vec1::<u32>()
        .unwrap();
        assert_eq!(got, want, "{sampling:?}");
    }
}

/// Greedy decoding on the GPU (f32) gives transformers' tokens, as the CPU does, on the batched
/// decoding fixture (32 prompts whose every step has a clear winner; Mistral's sliding window),
/// at two batch sizes.
#[test]
#[ignore = "needs a CUDA device: scripts/gpu-check.sh runs it with --include-ignored"]
fn greedy_decoding_on_the_gpu_matches_the_cpu() {
    use pctrain_model::{DecodeOptions, Request, Sampling};
    let dev = gpu();
    for name in ["llama", "mistral", "granite"] {
        let (prompts, want) = common::generate_batch(name);
        let new = want[0].len();
        let requests: Vec<Request> = prompts
            .iter()
            .map(|p| Request {
                prompt: p,
                stream: 0,
            })
            .collect();
        let dir = common::fixture(name);
        let config = pctrain_model::ModelConfig::load(&dir).unwrap();
        let weights = pctrain_model::ModelWeights::load(&dir, &config, DType::F32, &dev).unwrap();
        let model = pctrain_model::Model::new(config, weights, None);
        for slots in [1, 16] {
            let opts = DecodeOptions {
                max_new_tokens: new,
                sampling: Sampling::Greedy,
                slots,
            };
            let got = model.generate_all(&requests, &opts, &[], |_| {}).unwrap();
            assert_eq!(got, want, "{name}, {slots} slots");
        }
        // A prompt longer than a step reads (256 tokens), alone: a step chooses nothing.
        let long: Vec<u32> = (0..600u32).map(|i| (i * 37 + 5) % 256).collect();
        let out = model.generate(&long, 5, Sampling::Greedy, &[]).unwrap();
        assert_eq!(out.len(), 5, "{name}");
    }
}
