//! `pctrain bench` (hidden): the speed of whole training steps (forward, backward, clipping, AdamW)
//! on a model shape with random weights or on a model folder, as one JSON line.
//! `scripts/bench_cpu.py` and `scripts/gpu-check.sh` run it beside the same steps in
//! transformers + PEFT (`scripts/bench_transformers.py`).

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use pctrain_model::rng::Rng64;
use pctrain_model::{
    Batch, LoraAdapter, LoraConfig, Model, ModelConfig, ModelWeights, StepOptions, Target,
    TrainMode,
};
use pctrain_trainer::preset::{random_weights, TINY_CONFIG};
use pctrain_trainer::ranks::{rank_gradients, rank_optimizer, rank_shard};
use pctrain_trainer::{optimizer_step, AdamWConfig, DType, Decay, Device, Schedule, Tensor, World};
use serde_json::json;

/// Llama 3 8B's `config.json` (the real shape).
const LLAMA3_8B: &str = r#"{"architectures": ["LlamaForCausalLM"], "vocab_size": 128256,
    "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0, "max_position_embeddings": 8192, "tie_word_embeddings": false}"#;

/// A Llama of about 10M parameters (GQA 6/2, head 64, a small vocabulary).
const LLAMA_10M: &str = r#"{"architectures": ["LlamaForCausalLM"], "vocab_size": 700,
    "hidden_size": 384, "intermediate_size": 1024, "num_hidden_layers": 6,
    "num_attention_heads": 6, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0, "max_position_embeddings": 8192, "tie_word_embeddings": false}"#;

/// Llama 3.2 1B's shape (1.24B parameters, tied embeddings).
const LLAMA_1B: &str = r#"{"architectures": ["LlamaForCausalLM"], "vocab_size": 128256,
    "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
    "num_attention_heads": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0, "max_position_embeddings": 8192, "tie_word_embeddings": true}"#;

#[derive(Args)]
pub struct BenchArgs {
    /// llama3-8b, llama-1b, llama-10m or tiny, with random weights.
    #[arg(long, default_value = "tiny", conflicts_with = "base")]
    shape: String,
    /// A model folder (config.json and safetensors) to bench instead of a shape.
    #[arg(long)]
    base: Option<std::path::PathBuf>,
    /// lora (r=16, alpha 32, all seven targets) or full.
    #[arg(long, default_value = "lora")]
    mode: String,
    #[arg(long, default_value_t = 2048)]
    seq_len: usize,
    /// Rows of `seq_len` tokens per step (each one sample, unless `--packed`).
    #[arg(long, default_value_t = 1)]
    rows: usize,
    /// Pack four samples into each row (3/8, 1/4, 1/8 and 1/4 of it), as
    /// `scripts/bench_transformers.py --packed` does.
    #[arg(long)]
    packed: bool,
    /// Timed steps (after two warm-up steps); the median is reported.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Recompute each layer's activations in backward.
    #[arg(long)]
    recompute: bool,
    /// Under mpirun: ZeRO stage 0, 1 or 2, as `pctrain --zero-stage`.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    zero_stage: u8,
    /// After the timed steps, one more step with CUDA events around each layer function: its
    /// device time by function (a GPU only).
    #[arg(long)]
    profile: bool,
}

pub fn run(args: BenchArgs) -> Result<()> {
    crate::setup::in_world(|world| bench(args, world))
}

/// Under mpirun every rank steps on its own batch of the same shape, and the sums make each
/// step one over all of them.
fn bench(args: BenchArgs, world: &World) -> Result<()> {
    if args.steps == 0 || args.rows == 0 || args.seq_len == 0 {
        bail!("--steps, --rows and --seq-len must be at least 1");
    }
    let device = crate::setup::rank_device(&args.device, world)?;
    let dtype = crate::setup::parse_dtype(&args.dtype)?;
    let mode = match args.mode.as_str() {
        "lora" => TrainMode::Lora,
        "full" => TrainMode::Full,
        other => bail!("unknown mode {other:?} (lora or full)"),
    };
    let (config, weights) = match &args.base {
        Some(dir) => {
            let config = ModelConfig::load(dir)?;
            let weights = ModelWeights::load(dir, &config, dtype, &device)?;
            (config, weights)
        }
        None => {
            let text = match args.shape.as_str() {
                "llama3-8b" => LLAMA3_8B,
                "llama-1b" => LLAMA_1B,
                "llama-10m" => LLAMA_10M,
                "tiny" => TINY_CONFIG,
                other => bail!("unknown shape {other:?} (llama3-8b, llama-1b, llama-10m, tiny)"),
            };
            let config = ModelConfig::from_json(text, Path::new(&args.shape))?;
            let weights = random_weights(&config, dtype, &device)?;
            (config, weights)
        }
    };
    let lora = (mode == TrainMode::Lora)
        .then(|| {
            let lora = LoraConfig {
                r: 16,
                alpha: 32.0,
                dropout: 0.0,
                rslora: false,
                targets: Target::ALL.to_vec(),
            };
            LoraAdapter::init(&config, lora, 1, DType::F32, &device)
        })
        .transpose()?;
    let mut model = Model::new(config.clone(), weights, lora);
    let (rows, seq_len) = (args.rows, args.seq_len);
    let n = rows * seq_len;
    let mut rng = Rng64::new(7);
    let vocab = config.vocab_size as u64;
    let lengths = if args.packed {
        sample_lengths(seq_len)
    } else {
        vec![seq_len]
    };
    let row_positions: Vec<u32> = lengths.iter().flat_map(|&l| 0..l as u32).collect();
    let row_segments: Vec<u32> = (1..)
        .zip(&lengths)
        .flat_map(|(s, &l)| std::iter::repeat_n(s, l))
        .collect();
    let batch = Batch {
        rows,
        seq_len,
        input_ids: (0..n).map(|_| (rng.next_u64() % vocab) as u32).collect(),
        position_ids: row_positions.repeat(rows),
        segment_ids: row_segments.repeat(rows),
        labels: (0..n).map(|_| (rng.next_u64() % vocab) as i64).collect(),
    };
    let params = model.trainable(mode);
    let refs: Vec<&Tensor> = params.iter().map(|(_, t)| t).collect();
    let shard = rank_shard(&model, mode, world, args.zero_stage)?;
    let mut optimizer = rank_optimizer(AdamWConfig::default(), &refs, None, shard)?;
    drop(params);
    let mut grads = rank_gradients(&model, mode, &optimizer)?;
    let schedule = Schedule {
        peak_lr: 1e-5,
        warmup_steps: 0,
        total_steps: 1000,
        decay: Decay::Constant,
    };
    let opts = StepOptions {
        mode,
        recompute: args.recompute,
        loss_chunk: 1024,
        dropout_seed: 0,
    };
    let mut step = || -> Result<f64> {
        device.synchronize()?;
        let start = Instant::now();
        let report = optimizer_step(
            &mut model,
            std::slice::from_ref(&batch),
            opts,
            &mut optimizer,
            &mut grads,
            &schedule,
            1.0,
            world,
        )?;
        device.synchronize()?;
        std::hint::black_box(report);
        Ok(start.elapsed().as_secs_f64())
    };
    let mut times = Vec::new();
    for i in 0..args.steps + 2 {
        let s = step()?;
        if i >= 2 {
            times.push(s);
        }
    }
    let profile = if args.profile {
        pctrain_model::profile::enable(true);
        let step_s = step();
        pctrain_model::profile::enable(false);
        Some(profile_json(step_s?)?)
    } else {
        None
    };
    times.sort_by(f64::total_cmp);
    let step_s = times[times.len() / 2];
    let account = model.memory_account(mode, rows, seq_len, args.recompute);
    let size = dtype.size_in_bytes();
    let frozen = (account.frozen_weight_bytes / size) as f64;
    let trained = (account.trainable_weight_bytes / 4) as f64;
    let (layers, width) = (
        config.num_layers as f64,
        (config.num_heads * config.head_dim) as f64,
    );
    // Causal attention: forward 2 T H d and backward 4 T H d FLOPs per token and layer.
    let attention = 6.0 * seq_len as f64 * width * layers;
    let flops_per_token = match mode {
        TrainMode::Lora => 4.0 * (frozen + trained) + attention,
        TrainMode::Full => 6.0 * trained + attention,
    };
    let tokens_per_s = (n * world.size()) as f64 / step_s;
    let matmul = matmul_tflops(&device, dtype)?;
    let line = json!({
        "tool": "pctrain",
        "shape": args.base.as_ref().map_or(args.shape.clone(), |b| b.display().to_string()),
        "packed": args.packed, "threads": pctrain_model::cpu::threads(), "mode": args.mode, "dtype": args.dtype,
        "device": args.device, "rows": rows, "seq_len": seq_len, "ranks": world.size(),
        "zero_stage": args.zero_stage, "optimizer_state_bytes": optimizer.state_bytes(),
        "gradient_bytes": grads.held_bytes(),
        "parameters": frozen + trained, "trainable_parameters": trained,
        "step_s": step_s, "tokens_per_s": tokens_per_s, "flops_per_token": flops_per_token,
        "matmul_tflops": matmul,
        "mfu": matmul.map(|m| tokens_per_s * flops_per_token / (m * 1e12)),
        "process_memory": crate::metrics::process_memory(),
        "profile": profile,
    });
    if world.is_first() {
        println!("{line}");
    }
    Ok(())
}

/// One profiled step: its wall time, each layer function's device time and calls, and the time
/// no span covered (residual adds, layout copies, casts, the embedding, launches).
fn profile_json(step_s: f64) -> Result<serde_json::Value> {
    let entries = pctrain_model::profile::report()?;
    let covered: f64 = entries.iter().map(|e| e.ms).sum();
    let step_ms = step_s * 1e3;
    let functions: Vec<_> = entries
        .iter()
        .map(|e| json!({"name": e.name, "calls": e.calls, "ms": e.ms, "share": e.ms / step_ms}))
        .collect();
    Ok(json!({"step_ms": step_ms, "functions": functions, "other_ms": step_ms - covered}))
}

/// The samples of one packed row: 3/8, 1/4, 1/8 and 1/4 of it (the last takes the rest).
fn sample_lengths(seq_len: usize) -> Vec<usize> {
    let parts = [seq_len * 3 / 8, seq_len / 4, seq_len / 8];
    let rest = seq_len - parts.iter().sum::<usize>();
    parts.into_iter().chain([rest]).filter(|&l| l > 0).collect()
}

/// The device's measured matmul rate in `dtype` (TFLOP/s): ten 8192-square products on a GPU.
/// `None` on the CPU, where the figure would only measure this machine.
fn matmul_tflops(device: &Device, dtype: DType) -> Result<Option<f64>> {
    if device.is_cpu() {
        return Ok(None);
    }
    let n = 8192;
    let a = Tensor::randn(0f32, 1.0, (n, n), device)?.to_dtype(dtype)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), device)?.to_dtype(dtype)?;
    std::hint::black_box(a.matmul(&b)?);
    device.synchronize()?;
    let start = Instant::now();
    for _ in 0..10 {
        std::hint::black_box(a.matmul(&b)?);
    }
    device.synchronize()?;
    let seconds = start.elapsed().as_secs_f64();
    Ok(Some(10.0 * 2.0 * (n as f64).powi(3) / seconds / 1e12))
}
