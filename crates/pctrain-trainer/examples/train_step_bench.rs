//! One training step of a Llama-shaped model of about 20M parameters on CPU: tokens per second
//! and peak resident memory.
//!
//! ```text
//! cargo run --release -p pctrain-trainer --example train_step_bench -- [lora|full] [SEQ_LEN] [ROWS]
//! ```
//! Weights are initialised from a seed as transformers initialises a Llama; LoRA is r=16 on all
//! seven targets. One warm-up step, then the
//! median of five.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device};
use pctrain_model::rng::Rng64;
use pctrain_model::{
    Batch, LoraAdapter, LoraConfig, Model, ModelConfig, StepOptions, Target, TrainMode,
};
use pctrain_trainer::preset::init_weights;

const CONFIG: &str = r#"{"architectures": ["LlamaForCausalLM"], "vocab_size": 2048,
    "hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 6,
    "num_attention_heads": 8, "num_key_value_heads": 4, "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0, "max_position_embeddings": 2048, "tie_word_embeddings": false}"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let mode = match args.get(1).map(String::as_str).unwrap_or("lora") {
        "full" => TrainMode::Full,
        _ => TrainMode::Lora,
    };
    let seq_len: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(512);
    let rows: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(1);
    let config = ModelConfig::from_json(CONFIG, Path::new("bench"))?;
    let v = config.vocab_size;
    let weights = init_weights(&config, 1, &Device::Cpu)?;
    let lora = match mode {
        TrainMode::Lora => Some(LoraAdapter::init(
            &config,
            LoraConfig {
                r: 16,
                alpha: 32.0,
                dropout: 0.0,
                rslora: false,
                targets: Target::ALL.to_vec(),
            },
            2,
            DType::F32,
            &Device::Cpu,
        )?),
        TrainMode::Full => None,
    };
    let model = Model::new(config, weights, lora);
    let mut rng = Rng64::new(2);
    let n = rows * seq_len;
    let batch = Batch {
        rows,
        seq_len,
        input_ids: (0..n).map(|_| (rng.next_u64() % v as u64) as u32).collect(),
        position_ids: (0..n).map(|p| (p % seq_len) as u32).collect(),
        segment_ids: vec![1; n],
        labels: (0..n).map(|_| (rng.next_u64() % v as u64) as i64).collect(),
    };
    let opts = StepOptions {
        mode,
        recompute: false,
        loss_chunk: 256,
        dropout_seed: 0,
    };
    let mut times = Vec::new();
    for step in 0..6 {
        let start = Instant::now();
        let (loss, grads) = model.forward_backward(&batch, n as f64, opts)?;
        let dt = start.elapsed().as_secs_f64();
        std::hint::black_box((loss, grads));
        if step > 0 {
            times.push(dt);
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let account = model.memory_account(mode, rows, seq_len, false);
    let million = |bytes: usize| bytes as f64 / 4.0 / 1e6;
    println!(
        "mode {mode:?}, {:.1}M frozen + {:.1}M trainable parameters, batch {rows}x{seq_len}: \
         step {:.3} s, {:.0} tokens/s, peak RSS {} MiB (saved activations {} MiB)",
        million(account.frozen_weight_bytes),
        million(account.trainable_weight_bytes),
        median,
        n as f64 / median,
        peak_rss_kib() / 1024,
        account.saved_activation_bytes >> 20
    );
    Ok(())
}

/// Peak resident set size of this process (VmHWM), KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
