//! The optimizer step on a GPU against the CPU's (`--features cuda`): the fused AdamW kernel,
//! clipping as a device-side scale, a whole LoRA step of a 2-layer model with Llama-3-8B's
//! layer shape (hidden 4096, 32 query and 8 key/value heads of 128, MLP 14336), and a whole
//! full fine-tuning step of 2 layers of Llama-3.2-1B's shape. Each test needs
//! a GPU, so it is ignored unless asked for (`--include-ignored`, as scripts/gpu-check.sh does);
//! asked for without a GPU, it fails.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Tensor};
use pctrain_model::layers::loss::LossSum;
use pctrain_model::rng::Rng64;
use pctrain_model::{
    Batch, Gradients, LoraAdapter, LoraConfig, Model, ModelConfig, StepOptions, Target, TrainMode,
};
use pctrain_testkit::bf16::{bf16_step, Tolerance};
use pctrain_trainer::preset::random_weights;
use pctrain_trainer::{
    clip_grad_norm, optimizer_step, AdamW, AdamWConfig, Clip, Decay, Schedule, World,
};

/// The first GPU; a test that runs without one fails.
fn gpu() -> Device {
    Device::new_cuda(0).unwrap_or_else(|e| panic!("no CUDA device ({e}): this test needs a GPU"))
}

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng64::new(seed);
    (0..n).map(|_| rng.unit() as f32 - 0.5).collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a = a
        .to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let b = b
        .to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Three updates of f32 and bf16 parameters, unclipped and clipped to half their norm (the GPU
/// scaling inside the kernel, the CPU scaling the gradients first); a refused clip changes
/// nothing.
#[test]
#[ignore = "needs a CUDA device: scripts/gpu-check.sh runs it with --include-ignored"]
fn fused_adamw_matches_the_cpu_update() {
    let gpu = gpu();
    let config = AdamWConfig {
        weight_decay: 0.1,
        ..AdamWConfig::default()
    };
    let loss = LossSum::host(1.0, 1);
    for dtype in [DType::F32, DType::BF16] {
        for max_norm in [0.0, 2.0] {
            // Values as `dtype` holds them; the CPU updates them in f32, as the GPU updates a
            // bf16 parameter's f32 master copy.
            let rounded = |seed: u64| {
                Tensor::from_vec(values(1000, seed), (10, 100), &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap()
            };
            let run = |device: &Device, stored: DType| -> Tensor {
                let p = rounded(1)
                    .to_dtype(stored)
                    .unwrap()
                    .to_device(device)
                    .unwrap();
                let mut opt = AdamW::new(config, &[&p]).unwrap();
                for step in 0..3 {
                    let g = rounded(10 + step).to_dtype(stored).unwrap();
                    let g = g.to_device(device).unwrap();
                    let mut g = Gradients::from_tensors(vec![g]).unwrap();
                    let clip = clip_grad_norm(&mut g, max_norm, &loss).unwrap();
                    assert_eq!(device.is_cuda(), matches!(clip, Clip::Device(_)));
                    opt.update(&[&p], &g, 1e-2, &clip).unwrap();
                }
                match &opt.master[0] {
                    Some(master) => master.to_device(&Device::Cpu).unwrap(),
                    None => p.to_device(&Device::Cpu).unwrap(),
                }
            };
            let (a, b) = (run(&Device::Cpu, DType::F32), run(&gpu, dtype));
            let diff = max_diff(&a, &b);
            assert!(diff < 1e-6, "{dtype:?}, clip {max_norm}: {diff}");
        }
        // A NaN loss: the kernels leave the parameter and moments as they were.
        let p = Tensor::from_vec(values(1000, 1), 1000, &gpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let before = p.to_device(&Device::Cpu).unwrap();
        let mut opt = AdamW::new(config, &[&p]).unwrap();
        let g = Tensor::from_vec(values(1000, 2), 1000, &gpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let mut g = Gradients::from_tensors(vec![g]).unwrap();
        let nan = LossSum::host(f64::NAN, 1);
        let clip = clip_grad_norm(&mut g, 1.0, &nan).unwrap();
        opt.update(&[&p], &g, 1e-2, &clip).unwrap();
        let (_, applied, _) = clip.read(&nan).unwrap();
        assert!(!applied);
        assert_eq!(max_diff(&p, &before), 0.0, "{dtype:?}: the parameter moved");
        assert_eq!(max_diff(&opt.m[0], &opt.m[0].zeros_like().unwrap()), 0.0);
    }
}

/// Two decoder layers of Llama-3-8B's shape (vocabulary cut to 2048), f32 weights drawn on the
/// GPU and copied to the CPU.
fn llama3_8b_layers(gpu: &Device) -> (ModelConfig, pctrain_model::ModelWeights) {
    let config = ModelConfig::from_json(
        r#"{"architectures": ["LlamaForCausalLM"], "vocab_size": 2048, "hidden_size": 4096,
        "intermediate_size": 14336, "num_hidden_layers": 2, "num_attention_heads": 32,
        "num_key_value_heads": 8, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "max_position_embeddings": 8192, "tie_word_embeddings": false}"#,
        std::path::Path::new("llama-3-8b layers"),
    )
    .unwrap();
    let weights = random_weights(&config, DType::F32, gpu).unwrap();
    (config, weights)
}

fn weights_on(
    w: &pctrain_model::ModelWeights,
    d: &Device,
    dtype: DType,
) -> pctrain_model::ModelWeights {
    let mut w = w.clone();
    // Storage of its own: full fine-tuning on the CPU updates the weights in place.
    let move_ = |t: &mut Tensor| {
        *t = t
            .to_device(d)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
            .copy()
            .unwrap()
    };
    move_(&mut w.embed_tokens);
    move_(&mut w.norm);
    if let Some(h) = w.lm_head.as_mut() {
        move_(h);
    }
    for l in &mut w.layers {
        for p in pctrain_model::LayerParam::ALL {
            move_(l.get_mut(p));
        }
    }
    w
}

/// A copy of the adapter on `d` with storage of its own (a clone would share it, and the CPU's
/// AdamW updates in place).
fn adapter_on(a: &LoraAdapter, d: &Device) -> LoraAdapter {
    let mut a = a.clone();
    for l in a.layers.iter_mut().flatten().flatten() {
        l.a = l.a.to_device(d).unwrap().copy().unwrap();
        l.b = l.b.to_device(d).unwrap().copy().unwrap();
    }
    a
}

/// Two rows of 160 tokens: two packed samples and padding, then one sample; prompts untrained.
fn batch(vocab: u32) -> Batch {
    let (rows, t) = (2, 160);
    let mut rng = Rng64::new(40);
    let mut b = Batch {
        rows,
        seq_len: t,
        input_ids: Vec::new(),
        position_ids: Vec::new(),
        segment_ids: Vec::new(),
        labels: Vec::new(),
    };
    for r in 0..rows {
        for p in 0..t {
            let (seg, start) = match (r, p) {
                (0, p) if p < 70 => (1, 0),
                (0, p) if p < 150 => (2, 70),
                (0, _) => (0, 150),
                _ => (1, 0),
            };
            let id = (rng.next_u64() % u64::from(vocab)) as u32;
            b.input_ids.push(id);
            b.position_ids.push((p - start) as u32);
            b.segment_ids.push(seg);
            let trained = seg != 0 && p - start >= 10;
            b.labels.push(if trained { i64::from(id) } else { -100 });
        }
    }
    b
}

/// One optimizer step of `mode` (clipped to half the gradient norm, AdamW with eps 1 so that
/// the update follows the gradient smoothly: with a tiny eps a first step is the gradient's
/// sign, which rounding flips where the gradient is near 0) on `device` with the base in
/// `dtype`: its report, and how far each trainable tensor moved from `initial` (in f32: the
/// master copy where the tensor is narrower).
fn one_step(
    config: &ModelConfig,
    weights: &pctrain_model::ModelWeights,
    adapter: Option<&LoraAdapter>,
    mode: TrainMode,
    device: &Device,
    dtype: DType,
    initial: &[Tensor],
) -> (pctrain_trainer::StepReport, Vec<Tensor>) {
    let mut model = Model::new(
        config.clone(),
        weights_on(weights, device, dtype),
        adapter.map(|a| adapter_on(a, device)),
    );
    let params: Vec<Tensor> = model.trainable(mode).into_iter().map(|(_, t)| t).collect();
    let refs: Vec<&Tensor> = params.iter().collect();
    let adamw = AdamWConfig {
        eps: 1.0,
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::new(adamw, &refs).unwrap();
    let mut grads = Gradients::zeros(&model, mode).unwrap();
    let opts = StepOptions {
        mode,
        recompute: true,
        loss_chunk: 128,
        dropout_seed: 0,
    };
    let schedule = Schedule {
        peak_lr: 1.0,
        warmup_steps: 0,
        total_steps: 10,
        decay: Decay::Constant,
    };
    let batch = batch(config.vocab_size as u32);
    let report = optimizer_step(
        &mut model,
        std::slice::from_ref(&batch),
        opts,
        &mut opt,
        &mut grads,
        &schedule,
        0.5,
        &World::solo(),
    )
    .unwrap();
    let moved = model
        .trainable(mode)
        .into_iter()
        .zip(&opt.master)
        .zip(initial)
        .map(|(((_, t), master), p)| {
            let now = master.as_ref().unwrap_or(&t);
            let now = now.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32);
            (now.unwrap() - p).unwrap()
        })
        .collect();
    (report, moved)
}

/// The GPU's step against the CPU's: loss, gradient norm and each trainable tensor's update
/// within `tol` (relative), the same tokens.
fn assert_steps_match(
    what: &str,
    want: &(pctrain_trainer::StepReport, Vec<Tensor>),
    got: &(pctrain_trainer::StepReport, Vec<Tensor>),
    tol: Tolerance,
) {
    let ((want, want_moved), (got, got_moved)) = (want, got);
    let rel = |a: f64, b: f64| ((a - b) / b).abs();
    assert!(
        rel(got.loss, want.loss) < tol.loss,
        "{what}: loss {} vs {}",
        got.loss,
        want.loss
    );
    assert!(
        rel(got.grad_norm, want.grad_norm) < tol.grad_norm,
        "{what}: grad norm {} vs {}",
        got.grad_norm,
        want.grad_norm
    );
    assert_eq!(got.tokens, want.tokens, "{what}: tokens");
    assert_eq!(got_moved.len(), want_moved.len(), "{what}: tensors");
    let norm = |t: &Tensor| {
        f64::from(
            t.sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
        )
        .sqrt()
    };
    for (i, (g, w)) in got_moved.iter().zip(want_moved).enumerate() {
        let d = norm(&(g - w).unwrap()) / norm(w).max(1e-30);
        assert!(
            d < tol.gradient,
            "{what}: the update of trainable tensor {i} differs by {d}"
        );
    }
}

/// The step on the GPU, with the base in f32 and in bf16, against the step on the CPU: in f32
/// within 1e-4 (loss) and 1e-3; in bf16 within what its rounding explains
/// ([`pctrain_testkit::bf16`]: the loss and the norm within `u = 2^-8`, each update within
/// `u * (4 + 12 L)` for `L` layers; AdamW's `eps` of 1 keeps a first update proportional to the
/// gradient).
fn steps_match(
    config: &ModelConfig,
    weights: &pctrain_model::ModelWeights,
    adapter: Option<&LoraAdapter>,
    mode: TrainMode,
    initial: &[Tensor],
) {
    let gpu = gpu();
    let step =
        |device: &Device, dtype| one_step(config, weights, adapter, mode, device, dtype, initial);
    let want = step(&Device::Cpu, DType::F32);
    let f32_tol = Tolerance {
        loss: 1e-4,
        grad_norm: 1e-3,
        gradient: 1e-3,
    };
    let bf16_tol = bf16_step(config.num_layers);
    for (dtype, tol) in [(DType::F32, f32_tol), (DType::BF16, bf16_tol)] {
        let what = format!("{mode:?} {dtype:?}");
        assert_steps_match(&what, &want, &step(&gpu, dtype), tol);
    }
}

/// One optimizer step of a LoRA r=16 on all seven targets (B drawn too, so every gradient
/// flows), with clipping: the GPU's loss, gradient norm and update of the adapter are the CPU's,
/// with the base in f32 and, within bf16's rounding, in bf16.
#[test]
#[ignore = "needs a CUDA device: scripts/gpu-check.sh runs it with --include-ignored"]
fn a_llama3_8b_shaped_lora_step_on_the_gpu_matches_the_cpu() {
    let gpu = gpu();
    let (config, weights) = llama3_8b_layers(&gpu);
    let lora_config = LoraConfig {
        r: 16,
        alpha: 32.0,
        dropout: 0.0,
        rslora: false,
        targets: Target::ALL.to_vec(),
    };
    let mut adapter = LoraAdapter::init(&config, lora_config, 7, DType::F32, &Device::Cpu).unwrap();
    for (seed, l) in (50..).zip(adapter.layers.iter_mut().flatten().flatten()) {
        let n = l.b.elem_count();
        l.b = Tensor::from_vec(values(n, seed), l.b.dims(), &Device::Cpu)
            .unwrap()
            .affine(0.02, 0.0)
            .unwrap();
    }
    let initial: Vec<Tensor> = adapter
        .layers
        .iter()
        .flatten()
        .flatten()
        .flat_map(|l| [l.a.copy().unwrap(), l.b.copy().unwrap()])
        .collect();
    steps_match(&config, &weights, Some(&adapter), TrainMode::Lora, &initial);
}

/// One optimizer step of full fine-tuning (every weight, embeddings and output included) of two
/// layers of Llama-3.2-1B's shape (hidden 2048, 32 query and 8 key/value heads of 64, MLP
/// 8192; vocabulary cut to 2048): the GPU's loss, gradient norm and every weight's update are
/// the CPU's, in f32 and, through the f32 master copies, with bf16 weights.
#[test]
#[ignore = "needs a CUDA device: scripts/gpu-check.sh runs it with --include-ignored"]
fn a_full_fine_tuning_step_on_the_gpu_matches_the_cpu() {
    let config = ModelConfig::from_json(
        r#"{"architectures": ["LlamaForCausalLM"], "vocab_size": 2048, "hidden_size": 2048,
        "intermediate_size": 8192, "num_hidden_layers": 2, "num_attention_heads": 32,
        "num_key_value_heads": 8, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "max_position_embeddings": 8192, "tie_word_embeddings": false}"#,
        std::path::Path::new("llama-3.2-1b layers"),
    )
    .unwrap();
    let weights = random_weights(&config, DType::F32, &Device::Cpu).unwrap();
    let initial: Vec<Tensor> = Model::new(config.clone(), weights.clone(), None)
        .trainable(TrainMode::Full)
        .into_iter()
        .map(|(_, t)| t.copy().unwrap())
        .collect();
    steps_match(&config, &weights, None, TrainMode::Full, &initial);
}
