//! Training, the default command: `pctrain --base BASE --mix MIX [--data FILE...]`. Writes the
//! resolved settings, `metrics.jsonl`, `loss.svg`, checkpoints, and at the end an export, into the
//! run folder.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use pctrain_data::loader::epoch_rows;
use pctrain_data::LoaderConfig;
use pctrain_model::save::write_atomic;
use pctrain_model::StepOptions;
use pctrain_trainer::{
    checkpoints, evaluate, load_checkpoint, remove_unfinished, save_checkpoint, train, AdamWConfig,
    Schedule, TrainConfig,
};
use serde::Serialize;
use serde_json::json;

use crate::export_cmd::export_model;
use crate::metrics::{memory, MetricsLog};
use crate::settings::Settings;
use crate::setup;

/// Flags of the training command. Each one left out keeps the value of `--config`, of the
/// preset, or the built-in default, in that order.
#[derive(Args, Debug, Default)]
pub struct TrainArgs {
    /// A preset (`pctrain presets` lists them; `tiny` is built in and needs no download), a model
    /// folder, or a hub id (owner/name[@revision]). Default: tiny.
    #[arg(long)]
    base: Option<String>,
    /// A TOML file of settings (keys as these flags, with `_`); flags override it.
    #[arg(long, value_name = "FILE.toml")]
    config: Option<PathBuf>,
    /// Training data: JSONL or Parquet, Tulu or Alpaca shape. Default: examples/tulu-pc.jsonl.
    #[arg(long, num_args = 1..)]
    data: Option<Vec<PathBuf>>,
    /// nl | pc | nl-pc, a blend (nl:0.5,nl-pc:0.5) or both renditions (nl+nl-pc). Default: nl-pc.
    #[arg(long)]
    mix: Option<String>,
    /// auto (the model's chat template, else tulu), tulu, llama3, mistral, granite, chatml, or a
    /// .jinja file.
    #[arg(long)]
    template: Option<String>,
    /// How pseudo-code and response are joined in nl-pc answers.
    #[arg(long)]
    pc_template: Option<String>,
    /// A tokenizer other than the base's (tokenizer.json, folder, hub id, or tiny).
    #[arg(long)]
    tokenizer: Option<String>,
    /// Drop samples whose format needs pseudo-code the record lacks (default: fall back to nl).
    #[arg(long)]
    require_pc: bool,
    /// Skip malformed records (they are counted) instead of stopping at the first.
    #[arg(long)]
    skip_invalid: bool,
    /// Tokens per packed row (longer samples are cut).
    #[arg(long)]
    seq_len: Option<usize>,
    /// One sample a row instead of packing.
    #[arg(long)]
    no_packing: bool,
    #[arg(long)]
    no_shuffle: bool,
    /// Rows per micro-batch.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Micro-batches per optimizer step.
    #[arg(long)]
    grad_accum: Option<usize>,
    /// Passes over the data.
    #[arg(long)]
    epochs: Option<u64>,
    /// Optimizer steps (default: what the epochs give).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Peak learning rate (default: 3e-3 for tiny, 2e-4 with LoRA, 2e-5 full).
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    warmup_steps: Option<u64>,
    /// cosine, linear or constant after warmup.
    #[arg(long)]
    schedule: Option<String>,
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Global gradient norm bound; 0 turns clipping off.
    #[arg(long)]
    clip_norm: Option<f64>,
    /// Train every weight instead of a LoRA adapter.
    #[arg(long)]
    full: bool,
    #[arg(long)]
    lora_r: Option<usize>,
    #[arg(long)]
    lora_alpha: Option<f64>,
    #[arg(long)]
    lora_dropout: Option<f64>,
    /// `all`, or a comma list of q, k, v, o, gate, up, down.
    #[arg(long, value_delimiter = ',')]
    lora_targets: Option<Vec<String>>,
    /// Scale LoRA by alpha / sqrt(r).
    #[arg(long)]
    rslora: bool,
    /// Start from a PEFT adapter folder; its r, alpha, dropout and targets are used.
    #[arg(long, value_name = "DIR")]
    init_adapter: Option<PathBuf>,
    /// f32 (CPU), bf16 or f16 (CUDA): the base weights' type.
    #[arg(long)]
    dtype: Option<String>,
    /// cpu or cuda:N.
    #[arg(long)]
    device: Option<String>,
    /// Seed of initialisation, data order, blends and dropout.
    #[arg(long)]
    seed: Option<u64>,
    /// Recompute each layer's activations in backward (less memory, more compute).
    #[arg(long)]
    recompute: bool,
    /// Held-out data, scored every --eval-every steps and at the end.
    #[arg(long, num_args = 1..)]
    eval_data: Option<Vec<PathBuf>>,
    /// Steps between evaluations (0: only at the end).
    #[arg(long)]
    eval_every: Option<u64>,
    /// Save a checkpoint every N optimizer steps (and at the end).
    #[arg(long)]
    save_every: Option<u64>,
    /// Checkpoints kept (0 keeps all).
    #[arg(long)]
    keep_last: Option<usize>,
    /// The run folder (default: runs/BASE-MIX).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Continue from the newest checkpoint in the run folder, or from the one given.
    #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "CHECKPOINT")]
    resume: Option<String>,
    /// Start afresh in a run folder that has checkpoints, removing them.
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
}

impl TrainArgs {
    /// The flags given, as a settings layer.
    fn overrides(&self) -> Result<toml::Table> {
        fn put<T: Serialize>(t: &mut toml::Table, key: &str, v: &Option<T>) -> Result<()> {
            if let Some(v) = v {
                t.insert(key.into(), toml::Value::try_from(v)?);
            }
            Ok(())
        }
        let mut t = toml::Table::new();
        put(&mut t, "base", &self.base)?;
        put(&mut t, "data", &self.data)?;
        put(&mut t, "mix", &self.mix)?;
        put(&mut t, "template", &self.template)?;
        put(&mut t, "pc_template", &self.pc_template)?;
        put(&mut t, "tokenizer", &self.tokenizer)?;
        put(&mut t, "seq_len", &self.seq_len)?;
        put(&mut t, "batch_size", &self.batch_size)?;
        put(&mut t, "grad_accum", &self.grad_accum)?;
        put(&mut t, "epochs", &self.epochs)?;
        put(&mut t, "max_steps", &self.max_steps)?;
        put(&mut t, "lr", &self.lr)?;
        put(&mut t, "warmup_steps", &self.warmup_steps)?;
        put(&mut t, "schedule", &self.schedule)?;
        put(&mut t, "weight_decay", &self.weight_decay)?;
        put(&mut t, "clip_norm", &self.clip_norm)?;
        put(&mut t, "init_adapter", &self.init_adapter)?;
        put(&mut t, "dtype", &self.dtype)?;
        put(&mut t, "device", &self.device)?;
        put(&mut t, "seed", &self.seed)?;
        put(&mut t, "eval_data", &self.eval_data)?;
        put(&mut t, "eval_every", &self.eval_every)?;
        put(&mut t, "save_every", &self.save_every)?;
        put(&mut t, "keep_last", &self.keep_last)?;
        put(&mut t, "output", &self.output)?;
        for (flag, key, value) in [
            (self.require_pc, "require_pc", true),
            (self.skip_invalid, "skip_invalid", true),
            (self.no_packing, "packing", false),
            (self.no_shuffle, "shuffle", false),
            (self.recompute, "recompute", true),
        ] {
            if flag {
                t.insert(key.into(), value.into());
            }
        }
        if self.full {
            t.insert("method".into(), "full".into());
        }
        let mut lora = toml::Table::new();
        put(&mut lora, "r", &self.lora_r)?;
        put(&mut lora, "alpha", &self.lora_alpha)?;
        put(&mut lora, "dropout", &self.lora_dropout)?;
        put(&mut lora, "targets", &self.lora_targets)?;
        if self.rslora {
            lora.insert("rslora".into(), true.into());
        }
        if !lora.is_empty() {
            t.insert("lora".into(), lora.into());
        }
        Ok(t)
    }
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

pub fn run(args: TrainArgs) -> Result<()> {
    let mut settings = Settings::resolve(args.config.as_deref(), args.overrides()?)?;
    let output = settings.output();
    let resume_from = match args.resume.as_deref() {
        None => None,
        Some("") => Some(
            checkpoints(&output)?
                .pop()
                .with_context(|| format!("--resume: no checkpoint in {}", output.display()))?,
        ),
        Some(dir) => Some(PathBuf::from(dir)),
    };
    match &resume_from {
        Some(dir) => adopt_checkpoint_settings(dir, &mut settings)?,
        None => setup::adopt_init_adapter(&mut settings)?,
    }
    let device = setup::device(&settings.device)?;
    let dtype = setup::dtype(&settings.dtype, &device)?;
    std::fs::create_dir_all(&output).with_context(|| format!("creating {}", output.display()))?;
    remove_unfinished(&output)?;

    let mut run = setup::build(&settings, &device, dtype)?;
    let (samples, stats) = run.pipeline.encode_all(&settings.data)?;
    if samples.is_empty() {
        anyhow::bail!("no sample with a trained token in the data: nothing to train on");
    }
    let eval_samples = if settings.eval_data.is_empty() {
        Vec::new()
    } else {
        let (s, _) = run
            .pipeline
            .encode_all(&settings.eval_data)
            .context("reading the eval data")?;
        s
    };
    let loader = LoaderConfig {
        seq_len: settings.seq_len,
        packing: settings.packing,
        shuffle: settings.shuffle,
        seed: settings.seed,
        epochs: settings.epochs,
        ..LoaderConfig::default()
    };
    let rows_per_step = (settings.batch_size * settings.grad_accum) as u64;
    let rows = epoch_rows(&samples, &loader, 0).len() as u64;
    let max_steps = settings
        .max_steps
        .unwrap_or_else(|| (rows * loader.epochs).div_ceil(rows_per_step));
    let cfg = TrainConfig {
        loader,
        batch_size: settings.batch_size,
        grad_accum: settings.grad_accum,
        max_steps,
        schedule: Schedule {
            peak_lr: settings.lr(),
            warmup_steps: settings.warmup_steps,
            total_steps: max_steps,
            decay: settings.schedule,
        },
        adamw: AdamWConfig {
            weight_decay: settings.weight_decay,
            ..AdamWConfig::default()
        },
        clip_norm: settings.clip_norm,
        step: StepOptions {
            mode: run.mode,
            recompute: settings.recompute,
            loss_chunk: 1024,
            dropout_seed: settings.seed,
        },
    };
    let mut resolved = settings.clone();
    resolved.lr = Some(settings.lr());
    resolved.method = Some(settings.method());
    resolved.max_steps = Some(max_steps);
    resolved.output = Some(output.clone());
    let settings_json = serde_json::to_string_pretty(&resolved)? + "\n";

    let earlier = checkpoints(&output)?;
    if args.resume.is_none() && !earlier.is_empty() {
        if !args.overwrite {
            anyhow::bail!(
                "{} has checkpoints of an earlier run: continue it with --resume, start afresh with \
                 --overwrite (which removes them), or choose another --output",
                output.display()
            );
        }
        for dir in &earlier {
            std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
    }
    let resume = match &resume_from {
        None => None,
        Some(dir) => {
            let (optimizer, position) = load_checkpoint(dir, &mut run.model, run.mode)?;
            eprintln!("resuming from {} (step {})", dir.display(), optimizer.step);
            // Later checkpoints of this folder belong to the abandoned continuation.
            for later in checkpoints(&output)? {
                if later.file_name() > dir.file_name() && later.parent() == dir.parent() {
                    std::fs::remove_dir_all(&later)
                        .with_context(|| format!("removing {}", later.display()))?;
                    eprintln!("removed {}, which came after it", later.display());
                }
            }
            Some((optimizer, position))
        }
    };
    write_atomic(&output.join("settings.json"), settings_json.as_bytes())?;
    let start_step = resume.as_ref().map_or(0, |(o, _)| o.step);
    let mut metrics = MetricsLog::open(&output, start_step)?;
    eprintln!(
        "training {} ({:?}) on {} samples ({} trained tokens), {max_steps} steps, into {}",
        settings.base,
        run.mode,
        samples.len(),
        stats.trained_tokens,
        output.display()
    );

    let bar = ProgressBar::new(max_steps).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps {msg} [{elapsed} < {eta}]")
            .expect("valid template"),
    );
    bar.set_position(start_step);
    let mut last = std::time::Instant::now();
    let pad_id = run.pipeline.tokenizer.pad_id;
    // Ctrl-C finishes the step in progress, saves a checkpoint and stops.
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("installing the Ctrl-C handler")?;
    let mut saved_step = start_step;
    let outcome = train::<anyhow::Error>(
        &mut run.model,
        &samples,
        pad_id,
        &cfg,
        resume,
        |report, progress| {
            let step = progress.optimizer.step;
            let now = std::time::Instant::now();
            let tokens_per_s =
                report.tokens as f64 / now.duration_since(last).as_secs_f64().max(1e-9);
            let mut line = json!({"step": step, "loss": report.loss, "lr": report.lr,
                "grad_norm": report.grad_norm, "tokens": report.tokens, "tokens_per_s": tokens_per_s,
                "epoch": progress.position.epoch});
            let last_step = step == max_steps;
            let eval_now = settings.eval_every > 0 && step % settings.eval_every == 0;
            if !eval_samples.is_empty() && (eval_now || last_step) {
                let e = evaluate(progress.model, &eval_samples, settings.seq_len, pad_id, 4)?;
                line["eval_loss"] = e.loss.into();
                line["eval_tokens"] = e.tokens.into();
                bar.println(format!("step {step}: eval loss {:.4}", e.loss));
            }
            line["memory"] = memory(&device);
            metrics.append(&line)?;
            bar.set_position(step);
            bar.set_message(format!(
                "loss {:.4} lr {:.2e} {:.0} tok/s",
                report.loss, report.lr, tokens_per_s
            ));
            let stop = interrupted.load(Ordering::SeqCst);
            if stop || step % settings.save_every == 0 || last_step {
                save_checkpoint(
                    &output,
                    progress.model,
                    run.mode,
                    progress.optimizer,
                    progress.position,
                    &settings_json,
                    settings.keep_last,
                )?;
                saved_step = step;
                metrics.plot()?;
            }
            if stop {
                return Err(Interrupted(step).into());
            }
            last = std::time::Instant::now();
            Ok(())
        },
    );
    bar.finish();
    match outcome {
        Ok(_) => {}
        Err(e) => {
            return match e.downcast::<Interrupted>() {
                Ok(Interrupted(step)) => {
                    eprintln!(
                        "interrupted: the checkpoint of step {step} is saved in {}; continue with --resume",
                        output.display()
                    );
                    Ok(())
                }
                Err(e) => Err(e.context(format!(
                    "training stopped; the last checkpoint (step {saved_step}) is in {}",
                    output.display()
                ))),
            };
        }
    }
    let exported = output.join(export_name(&resolved));
    export_model(&resolved, &run, &exported, false, None)?;
    eprintln!("exported {}", exported.display());
    Ok(())
}

/// The export folder a finished run writes: `adapter` (LoRA) or `model` (full).
fn export_name(settings: &Settings) -> &'static str {
    match settings.method() {
        crate::settings::Method::Lora => "adapter",
        crate::settings::Method::Full => "model",
    }
}

/// A resumed run continues the run of its checkpoint: the adapter's shape (method, rank, alpha,
/// dropout, targets) is the checkpoint's, and what decides the data order must not have changed,
/// or the saved data position would point elsewhere.
fn adopt_checkpoint_settings(checkpoint: &Path, settings: &mut Settings) -> Result<()> {
    let path = checkpoint.join("settings.json");
    if !checkpoint.join("state.json").is_file() {
        anyhow::bail!("--resume {}: not a checkpoint folder", checkpoint.display());
    }
    let Ok(text) = std::fs::read_to_string(&path) else {
        // Checkpoints are checked tensor by tensor in any case.
        return Ok(());
    };
    let saved: Settings =
        serde_json::from_str(&text).with_context(|| format!("{}: malformed", path.display()))?;
    if saved.base != settings.base {
        anyhow::bail!(
            "{}: a checkpoint of another run (base {}); this run is base {}",
            checkpoint.display(),
            saved.base,
            settings.base
        );
    }
    let json = |s: &Settings| serde_json::to_value(s).expect("settings serialise");
    let (was, now) = (json(&saved), json(settings));
    let changed: Vec<String> = [
        "data",
        "mix",
        "template",
        "pc_template",
        "tokenizer",
        "require_pc",
        "skip_invalid",
        "seq_len",
        "packing",
        "shuffle",
        "seed",
        "batch_size",
        "grad_accum",
    ]
    .iter()
    .filter(|k| was[**k] != now[**k])
    .map(|k| format!("{k} (checkpoint {}, now {})", was[*k], now[*k]))
    .collect();
    if !changed.is_empty() {
        anyhow::bail!(
            "{}: resuming needs the data settings the run had; changed: {}",
            checkpoint.display(),
            changed.join(", ")
        );
    }
    settings.method = Some(saved.method());
    settings.lora = saved.lora;
    settings.init_adapter = None;
    Ok(())
}
