//! Each CUDA kernel against its CPU twin, on a GPU (`--features cuda`). Without a GPU every test
//! says it was skipped and passes: the CPU twins are tested against transformers elsewhere.
#![cfg(feature = "cuda")]

mod common;

use candle_core::{DType, Device, Tensor};
use pctrain_model::layers::attention::{flash_attention_backward, flash_attention_forward};
use pctrain_model::layers::linear::dropout_mask;
use pctrain_model::layers::loss::{cross_entropy_backward, cross_entropy_forward};
use pctrain_model::layers::mlp::{swiglu_backward, swiglu_forward};
use pctrain_model::layers::norm::{rms_norm_backward, rms_norm_forward};
use pctrain_model::layers::rope::{rope_backward, rope_forward, rope_tables};
use pctrain_model::rng::Rng64;
use pctrain_model::{cuda, StepOptions, TrainMode};

/// The first GPU, or `None` (after saying so) when there is none.
fn gpu(test: &str) -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("{test}: skipped, no CUDA device ({e})");
            None
        }
    }
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

#[test]
fn rms_norm_matches_its_cpu_twin() {
    let Some(dev) = gpu("rms_norm") else { return };
    for dtype in [DType::F32, DType::BF16] {
        let (x, w, dy) = (
            randn(&[3, 5, 96], 1.0, 1),
            randn(&[96], 0.5, 2),
            randn(&[3, 5, 96], 1.0, 3),
        );
        let y_gpu = rms_norm_forward(&on(&x, &dev, dtype), &on(&w, &dev, dtype), 1e-5).unwrap();
        let y_cpu = rms_norm_forward(&cpu(&x, dtype), &cpu(&w, dtype), 1e-5).unwrap();
        assert!(rel_err(&y_gpu, &y_cpu) < tol(dtype), "{dtype:?} forward");
        let (dx_g, dw_g) = rms_norm_backward(
            &on(&dy, &dev, dtype),
            &on(&x, &dev, dtype),
            &on(&w, &dev, dtype),
            1e-5,
        )
        .unwrap();
        let (dx_c, dw_c) =
            rms_norm_backward(&cpu(&dy, dtype), &cpu(&x, dtype), &cpu(&w, dtype), 1e-5).unwrap();
        assert!(rel_err(&dx_g, &dx_c) < tol(dtype), "{dtype:?} dx");
        assert!(rel_err(&dw_g, &dw_c) < tol(dtype), "{dtype:?} dw");
    }
}

#[test]
fn rope_matches_its_cpu_twin() {
    let Some(dev) = gpu("rope") else { return };
    let inv_freq: Vec<f32> = (0..16)
        .map(|i| 1.0 / 10000f32.powf(i as f32 / 16.0))
        .collect();
    let positions: Vec<u32> = (0..2 * 9).map(|i| (i * 7 % 13) as u32).collect();
    let (cos, sin) = rope_tables(&inv_freq, &positions, 2, &Device::Cpu).unwrap();
    let (cos_g, sin_g) = (cos.to_device(&dev).unwrap(), sin.to_device(&dev).unwrap());
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
fn swiglu_matches_its_cpu_twin() {
    let Some(dev) = gpu("swiglu") else { return };
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

/// Grouped-query attention with two packed samples and padding in one row, one sample in the
/// other, with and without a sliding window, head sizes below and at a multiple of 32, and a
/// length that is not a multiple of the kernels' tiles.
#[test]
fn fused_attention_matches_its_cpu_twin() {
    let Some(dev) = gpu("attention") else { return };
    // Grouped heads over 70 positions; then plain heads over fewer positions than a tile.
    for (b, heads, kv, t) in [(2, 4, 2, 70), (1, 3, 3, 7)] {
        attention_case(&dev, b, heads, kv, t);
    }
}

fn attention_case(dev: &Device, b: usize, heads: usize, kv: usize, t: usize) {
    let dev = dev.clone();
    let mut segments = vec![0u32; b * t];
    for (i, s) in segments.iter_mut().enumerate() {
        let (row, p) = (i / t, i % t);
        *s = match (row, p) {
            (0, p) if p < 30 => 1,
            (0, p) if p < 61 => 2,
            (0, _) => 0,
            _ => 1,
        };
    }
    let seg_g = Tensor::from_slice(&segments, (b, t), &dev).unwrap();
    let seg_c = Tensor::from_slice(&segments, (b, t), &Device::Cpu).unwrap();
    for d in [40, 64, 128] {
        for window in [None, Some(5), Some(1000)] {
            for dtype in [DType::F32, DType::BF16] {
                let scale = 1.0 / (d as f64).sqrt();
                let q = randn(&[b, heads, t, d], 1.0, 8);
                let k = randn(&[b, kv, t, d], 1.0, 9);
                let v = randn(&[b, kv, t, d], 1.0, 10);
                let dout = randn(&[b, heads, t, d], 1.0, 11);
                let w = window.unwrap_or(0);
                let (qc, kc, vc) = (cpu(&q, dtype), cpu(&k, dtype), cpu(&v, dtype));
                let saved_c = flash_attention_forward(&qc, &kc, &vc, &seg_c, w, scale).unwrap();
                let o_c = saved_c.out.clone();
                let (dq_c, dk_c, dv_c) = flash_attention_backward(
                    &cpu(&dout, dtype),
                    &qc,
                    &kc,
                    &vc,
                    &saved_c,
                    &seg_c,
                    w,
                    scale,
                )
                .unwrap();
                let (qg, kg, vg) = (
                    on(&q, &dev, dtype),
                    on(&k, &dev, dtype),
                    on(&v, &dev, dtype),
                );
                let saved = cuda::attention_forward(&qg, &kg, &vg, &seg_g, w, scale).unwrap();
                let what = format!(
                    "b {b}, heads {heads}/{kv}, t {t}, d {d}, window {window:?}, {dtype:?}"
                );
                assert!(rel_err(&saved.out, &o_c) < tol(dtype), "{what}: output");
                let (dq, dk, dv) = cuda::attention_backward(
                    &on(&dout, &dev, dtype),
                    &qg,
                    &kg,
                    &vg,
                    &saved,
                    &seg_g,
                    w,
                    scale,
                )
                .unwrap();
                assert!(rel_err(&dq, &dq_c) < tol(dtype), "{what}: dq");
                assert!(rel_err(&dk, &dk_c) < tol(dtype), "{what}: dk");
                assert!(rel_err(&dv, &dv_c) < tol(dtype), "{what}: dv");
            }
        }
    }
}

#[test]
fn fused_cross_entropy_matches_its_cpu_twin() {
    let Some(dev) = gpu("cross_entropy") else {
        return;
    };
    let (n, h, vocab) = (37, 48, 301);
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
        for chunk in [8, 64] {
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
                (g.loss.sum - c.loss.sum).abs() < loss_tol * c.loss.sum.abs(),
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
                (fwd.sum - g.loss.sum).abs() < 1e-6 * g.loss.sum.abs(),
                "{dtype:?} forward only"
            );
        }
    }
}

#[test]
fn gpu_dropout_masks_equal_the_cpu_masks() {
    let Some(dev) = gpu("dropout") else { return };
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
fn a_bf16_lora_step_on_the_gpu_matches_the_cpu() {
    let Some(dev) = gpu("bf16 lora step") else {
        return;
    };
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
    assert!(
        (lc.sum - lg.sum).abs() < 1e-2 * lc.sum.abs(),
        "{} vs {}",
        lc.sum,
        lg.sum
    );
    for (a, b) in gc.layers.iter().zip(&gg.layers) {
        for (x, y) in a.lora.iter().zip(&b.lora) {
            let (Some((xa, xb)), Some((ya, yb))) = (x, y) else {
                continue;
            };
            assert!(rel_err(ya, xa) < 5e-2 && rel_err(yb, xb) < 5e-2);
        }
    }
}

/// A whole LoRA step of the llama fixture: the GPU's loss and adapter gradients are the CPU's.
#[test]
fn a_lora_step_on_the_gpu_matches_the_cpu() {
    let Some(dev) = gpu("lora step") else { return };
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
    assert!(
        (lc.sum - lg.sum).abs() < 1e-5 * lc.sum.abs(),
        "{} vs {}",
        lc.sum,
        lg.sum
    );
    for (l, (a, b)) in gc.layers.iter().zip(&gg.layers).enumerate() {
        for (t, (x, y)) in a.lora.iter().zip(&b.lora).enumerate() {
            let (Some((xa, xb)), Some((ya, yb))) = (x, y) else {
                continue;
            };
            assert!(rel_err(ya, xa) < 1e-4, "layer {l} target {t} dA");
            assert!(rel_err(yb, xb) < 1e-4, "layer {l} target {t} dB");
        }
    }
}
