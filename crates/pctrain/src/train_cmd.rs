//! Training, the default command: `pctrain --base BASE --mix MIX [--data FILE...]`. Writes the
//! resolved settings, `metrics.jsonl`, checkpoints, and at the end an export, into `--output`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use pctrain_data::loader::epoch_rows;
use pctrain_data::tokenizer::{TINY_CONFIG, TINY_TOKENIZER};
use pctrain_data::{LoaderConfig, TextTokenizer};
use pctrain_model::save::{write_atomic, write_safetensors};
use pctrain_model::{LoraAdapter, LoraConfig, StepOptions, Target, TrainMode};
use pctrain_trainer::preset::TINY_CONFIG as TINY_MODEL_CONFIG;
use pctrain_trainer::{
    checkpoints, load_base, load_checkpoint, save_checkpoint, tiny_model, train, trainable,
    AdamWConfig, DType, Decay, Device, Schedule, TrainConfig,
};
use serde_json::json;

use crate::data_cmd::DataArgs;

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// `tiny` (built in: a small Llama initialised from --seed, for CPU), a model folder, or a hub
    /// id.
    #[arg(long, default_value = "tiny")]
    base: String,
    #[command(flatten)]
    data: DataArgs,
    /// The run folder (default: runs/BASE-MIX).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Passes over the data.
    #[arg(long, default_value_t = 1)]
    epochs: u64,
    /// Optimizer steps (default: what the epochs give).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Packed rows per micro-batch.
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Peak learning rate (default: 3e-3 for tiny, 2e-4 with LoRA, 2e-5 full).
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long, default_value_t = 0)]
    warmup_steps: u64,
    /// cosine, linear or constant after warmup.
    #[arg(long, default_value = "cosine")]
    schedule: String,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Global gradient norm bound; 0 turns clipping off.
    #[arg(long, default_value_t = 1.0)]
    clip_norm: f64,
    /// Train every weight (the default for `tiny`, whose weights are random); else LoRA.
    #[arg(long)]
    full: bool,
    #[arg(long, default_value_t = 16)]
    lora_r: usize,
    #[arg(long, default_value_t = 32.0)]
    lora_alpha: f64,
    #[arg(long, default_value_t = 0.05)]
    lora_dropout: f64,
    /// `all`, or a comma list of q, k, v, o, gate, up, down.
    #[arg(long, default_value = "all")]
    lora_targets: String,
    /// Scale LoRA by alpha / sqrt(r).
    #[arg(long)]
    rslora: bool,
    /// Recompute each layer's activations in backward (less memory, more compute).
    #[arg(long)]
    recompute: bool,
    #[arg(long)]
    no_shuffle: bool,
    /// One sample a row instead of packing.
    #[arg(long)]
    no_packing: bool,
    /// Save a checkpoint every N optimizer steps (and at the end).
    #[arg(long, default_value_t = 100)]
    save_every: u64,
    /// Checkpoints kept (0 keeps all).
    #[arg(long, default_value_t = 2)]
    keep_last: usize,
    /// Continue from the newest checkpoint in --output, or from the one given.
    #[arg(long, num_args = 0..=1, default_missing_value = "")]
    resume: Option<String>,
    /// Where to run: `cpu`.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// Ctrl-C stopped the run after this optimizer step (its checkpoint is saved).
#[derive(Debug)]
struct Interrupted(u64);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted after step {}", self.0)
    }
}

impl std::error::Error for Interrupted {}

fn targets(spec: &str) -> Result<Vec<Target>> {
    if spec == "all" {
        return Ok(Target::ALL.to_vec());
    }
    let mut out = Vec::new();
    for name in spec.split(',').map(str::trim) {
        let module = if name.ends_with("_proj") {
            name.to_string()
        } else {
            format!("{name}_proj")
        };
        match Target::from_module(&module) {
            Some(t) if !out.contains(&t) => out.push(t),
            Some(_) => {}
            None => bail!("--lora-targets: unknown target {name:?} (q, k, v, o, gate, up, down)"),
        }
    }
    out.sort();
    Ok(out)
}

pub fn run(args: TrainArgs) -> Result<()> {
    let device = match args.device.as_str() {
        "cpu" => Device::Cpu,
        other => bail!("device {other:?} is not available in this build (use cpu)"),
    };
    let tiny = args.base == "tiny";
    let mode = if args.full || tiny {
        TrainMode::Full
    } else {
        TrainMode::Lora
    };
    let (mut model, tokenizer, base_dir) = if tiny {
        (
            tiny_model(args.data.seed, &device)?,
            TextTokenizer::tiny()?,
            None,
        )
    } else {
        let base = load_base(&args.base, DType::F32, &device)
            .with_context(|| format!("loading {}", args.base))?;
        (base.model, base.tokenizer, Some(base.dir))
    };
    let lora_config = LoraConfig {
        r: args.lora_r,
        alpha: args.lora_alpha,
        dropout: args.lora_dropout,
        rslora: args.rslora,
        targets: targets(&args.lora_targets)?,
    };
    if mode == TrainMode::Lora {
        if !(0.0..1.0).contains(&args.lora_dropout) || args.lora_r == 0 {
            bail!("--lora-r must be at least 1 and --lora-dropout in [0, 1)");
        }
        model.lora = Some(LoraAdapter::init(
            &model.config,
            lora_config.clone(),
            args.data.seed,
            DType::F32,
            &device,
        )?);
    }
    let pipeline = args.data.pipeline_with(tokenizer)?;
    let (samples, stats) = pipeline.encode_all(&args.data.data)?;
    if samples.is_empty() {
        bail!("no sample with a trained token in the data: nothing to train on");
    }
    let loader = LoaderConfig {
        seq_len: args.data.seq_len,
        packing: !args.no_packing,
        shuffle: !args.no_shuffle,
        seed: args.data.seed,
        epochs: args.epochs.max(1),
        ..LoaderConfig::default()
    };
    let rows_per_step = (args.batch_size.max(1) * args.grad_accum.max(1)) as u64;
    let rows = epoch_rows(&samples, &loader, 0).len() as u64;
    let max_steps = args
        .max_steps
        .unwrap_or_else(|| (rows * loader.epochs).div_ceil(rows_per_step));
    let lr = args.lr.unwrap_or(match (tiny, mode) {
        (true, _) => 3e-3,
        (false, TrainMode::Lora) => 2e-4,
        (false, TrainMode::Full) => 2e-5,
    });
    let decay: Decay = args.schedule.parse().map_err(anyhow::Error::msg)?;
    let cfg = TrainConfig {
        loader,
        batch_size: args.batch_size.max(1),
        grad_accum: args.grad_accum.max(1),
        max_steps,
        schedule: Schedule {
            peak_lr: lr,
            warmup_steps: args.warmup_steps,
            total_steps: max_steps,
            decay,
        },
        adamw: AdamWConfig {
            weight_decay: args.weight_decay,
            ..AdamWConfig::default()
        },
        clip_norm: args.clip_norm,
        step: StepOptions {
            mode,
            recompute: args.recompute,
            loss_chunk: 1024,
            dropout_seed: args.data.seed,
        },
    };

    let output = args.output.clone().unwrap_or_else(|| {
        let base: String = args
            .base
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        PathBuf::from("runs").join(format!(
            "{base}-{}",
            args.data.mix.replace([':', ',', '+'], "_")
        ))
    });
    std::fs::create_dir_all(&output).with_context(|| format!("creating {}", output.display()))?;
    let resume = match args.resume.as_deref() {
        None => None,
        Some(dir) => {
            let dir = if dir.is_empty() {
                checkpoints(&output)?
                    .pop()
                    .with_context(|| format!("--resume: no checkpoint in {}", output.display()))?
            } else {
                PathBuf::from(dir)
            };
            let (optimizer, position) = load_checkpoint(&dir, &mut model, mode)?;
            eprintln!("resuming from {} (step {})", dir.display(), optimizer.step);
            Some((optimizer, position))
        }
    };
    let settings = json!({
        "base": args.base, "mix": args.data.mix, "data": args.data.data, "template": args.data.template,
        "seq_len": args.data.seq_len, "seed": args.data.seed, "mode": format!("{mode:?}").to_lowercase(),
        "epochs": cfg.loader.epochs, "max_steps": max_steps, "batch_size": cfg.batch_size,
        "grad_accum": cfg.grad_accum, "lr": lr, "warmup_steps": args.warmup_steps,
        "schedule": args.schedule, "weight_decay": args.weight_decay, "clip_norm": args.clip_norm,
        "lora": (mode == TrainMode::Lora).then(|| json!({"r": args.lora_r, "alpha": args.lora_alpha,
            "dropout": args.lora_dropout, "targets": lora_config.targets.iter().map(|t| t.module()).collect::<Vec<_>>(),
            "rslora": args.rslora})),
        "packing": cfg.loader.packing, "shuffle": cfg.loader.shuffle, "recompute": args.recompute,
        "samples": samples.len(), "trained_tokens": stats.trained_tokens,
    });
    write_atomic(
        &output.join("settings.json"),
        (serde_json::to_string_pretty(&settings)? + "\n").as_bytes(),
    )?;

    let metrics_path = output.join("metrics.jsonl");
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .with_context(|| format!("opening {}", metrics_path.display()))?;
    let start_step = resume.as_ref().map_or(0, |(o, _)| o.step);
    let bar = ProgressBar::new(max_steps).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps {msg} [{elapsed} < {eta}]")
            .expect("valid template"),
    );
    bar.set_position(start_step);
    let started = std::time::Instant::now();
    let mut last = started;
    let pad_id = pipeline.tokenizer.pad_id;
    // Ctrl-C finishes the step in progress, saves a checkpoint and stops.
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("installing the Ctrl-C handler")?;
    let outcome = train::<anyhow::Error>(
        &mut model,
        &samples,
        pad_id,
        &cfg,
        resume,
        |report, progress| {
            let step = progress.optimizer.step;
            if !report.loss.is_finite() {
                bail!(
                    "the loss is {} at step {step}; the last good checkpoint stays in {}",
                    report.loss,
                    output.display()
                );
            }
            let now = std::time::Instant::now();
            let tokens_per_s =
                report.tokens as f64 / now.duration_since(last).as_secs_f64().max(1e-9);
            last = now;
            let line = json!({"step": step, "loss": report.loss, "lr": report.lr, "grad_norm": report.grad_norm,
            "tokens": report.tokens, "tokens_per_s": tokens_per_s, "epoch": progress.position.epoch});
            writeln!(metrics, "{line}")?;
            metrics.flush()?;
            bar.set_position(step);
            bar.set_message(format!(
                "loss {:.4} lr {:.2e} {:.0} tok/s",
                report.loss, report.lr, tokens_per_s
            ));
            let stop = interrupted.load(Ordering::SeqCst);
            if stop || step % args.save_every.max(1) == 0 || step == max_steps {
                save_checkpoint(
                    &output,
                    progress.model,
                    mode,
                    progress.optimizer,
                    progress.position,
                    args.keep_last,
                )?;
            }
            if stop {
                return Err(Interrupted(step).into());
            }
            Ok(())
        },
    );
    bar.finish();
    if let Err(e) = outcome {
        return match e.downcast::<Interrupted>() {
            Ok(Interrupted(step)) => {
                eprintln!(
                    "interrupted: the checkpoint of step {step} is saved in {}; continue with --resume",
                    output.display()
                );
                Ok(())
            }
            Err(e) => Err(e),
        };
    }
    let exported = export(&output, &model, mode, tiny, base_dir.as_deref(), &args.base)?;
    eprintln!("exported {}", exported.display());
    Ok(())
}

/// Writes the result into the run folder: a PEFT adapter (`adapter/`) or the whole model in the
/// Hugging Face layout (`model/`).
fn export(
    output: &Path,
    model: &pctrain_model::Model,
    mode: TrainMode,
    tiny: bool,
    base_dir: Option<&Path>,
    base: &str,
) -> Result<PathBuf> {
    match mode {
        TrainMode::Lora => {
            let dir = output.join("adapter");
            model
                .lora
                .as_ref()
                .context("a LoRA run has an adapter")?
                .save(&dir, Some(base))?;
            Ok(dir)
        }
        TrainMode::Full => {
            let dir = output.join("model");
            write_safetensors(
                &dir.join("model.safetensors"),
                &trainable(model, TrainMode::Full),
            )?;
            if tiny {
                write_atomic(&dir.join("config.json"), TINY_MODEL_CONFIG.as_bytes())?;
                write_atomic(&dir.join("tokenizer.json"), TINY_TOKENIZER)?;
                write_atomic(&dir.join("tokenizer_config.json"), TINY_CONFIG.as_bytes())?;
            } else if let Some(src) = base_dir {
                for f in [
                    "config.json",
                    "generation_config.json",
                    "tokenizer.json",
                    "tokenizer_config.json",
                    "chat_template.jinja",
                ] {
                    let from = src.join(f);
                    if from.is_file() {
                        let bytes = std::fs::read(&from)
                            .with_context(|| format!("reading {}", from.display()))?;
                        write_atomic(&dir.join(f), &bytes)?;
                    }
                }
            }
            Ok(dir)
        }
    }
}
