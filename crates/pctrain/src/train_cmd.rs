//! Training, the default command: `pctrain --base BASE --mix MIX [--data FILE...]`. Writes the
//! resolved settings, `metrics.jsonl`, `loss.svg`, checkpoints, and at the end an export, into the
//! run folder.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use pctrain_data::loader::epoch_rows;
use pctrain_data::{Encoded, LoaderConfig, Position};
use pctrain_model::save::write_atomic;
use pctrain_model::{Model, StepOptions};
use pctrain_trainer::{
    checkpoint_ranks, checkpoints, load_checkpoint, remove_unfinished, save_checkpoint, train,
    AdamW, AdamWConfig, Device, Schedule, TrainConfig, World,
};
use serde_json::json;

use crate::export_cmd::export_model;
use crate::metrics::{memory, MetricsLog};
use crate::settings::Settings;
use crate::setup::{self, Setup};
use crate::train_args::TrainArgs;
use crate::train_eval::Evaluations;

/// Ctrl-C stopped the run after this optimizer step (its checkpoint is saved).
#[derive(Debug)]
struct Interrupted(u64);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted after step {}", self.0)
    }
}

impl std::error::Error for Interrupted {}

/// A training run, as the steps it goes through: set up, prepare the run folder, train
/// (logging, evaluating and checkpointing as it goes), export. Under `mpirun` or `srun` (built
/// with the `mpi` feature) every rank runs it; rank 0 alone writes the run's files, and an error
/// on any rank ends them all.
pub fn run(args: TrainArgs, matches: &clap::ArgMatches) -> Result<()> {
    setup::in_world(|world| run_in(world, args, matches))
}

fn run_in(world: &World, args: TrainArgs, matches: &clap::ArgMatches) -> Result<()> {
    let mut recipe = Recipe::set_up(&args, matches, world)?;
    let resume = recipe.prepare_output(&args, world)?;
    let evaluations = Evaluations::set_up(&recipe.settings, &recipe.run)?;
    match recipe.train(resume, &evaluations, world)? {
        Ended::Finished if world.is_first() => recipe.export(),
        Ended::Finished => Ok(()),
        Ended::Interrupted(_) if !world.is_first() => Ok(()),
        Ended::Interrupted(step) => {
            eprintln!(
                "interrupted: the checkpoint of step {step} is saved in {}; continue with --resume",
                recipe.output.display()
            );
            Ok(())
        }
    }
}

/// How the training loop ended.
enum Ended {
    Finished,
    Interrupted(u64),
}

/// Everything a run needs once it is set up.
struct Recipe {
    settings: Settings,
    /// The settings with what was derived filled in, as `settings.json` holds them.
    resolved: Settings,
    output: PathBuf,
    device: Device,
    run: Setup,
    samples: Vec<Encoded>,
    trained_tokens: u64,
    cfg: TrainConfig,
    resume_from: Option<PathBuf>,
}

impl Recipe {
    /// Resolves the settings (a resumed run adopts its checkpoint's), opens the device, builds
    /// the model and the data pipeline, reads the data and plans the steps.
    fn set_up(args: &TrainArgs, matches: &clap::ArgMatches, world: &World) -> Result<Recipe> {
        let mut settings = Settings::resolve(args.config.as_deref(), args.overrides(matches)?)?;
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
            Some(dir) => {
                adopt_checkpoint_settings(dir, &mut settings)?;
                let ranks = checkpoint_ranks(dir)?;
                if ranks != world.size() {
                    anyhow::bail!(
                        "{}: written by a run of {ranks} process(es), resumed with {}: resume it \
                         with as many (`mpirun -np {ranks}`), since the rows of each step and \
                         each rank's share of them depend on it",
                        dir.display(),
                        world.size()
                    );
                }
            }
            None => setup::adopt_init_adapter(&mut settings)?,
        }
        let device = setup::rank_device(&settings.device, world)?;
        let dtype = setup::dtype(&settings.dtype, &device)?;
        let run = setup::build(&settings, &device, dtype)?;
        let (samples, stats) = run.pipeline.encode_all(&settings.data)?;
        if samples.is_empty() {
            anyhow::bail!("no sample with a trained token in the data: nothing to train on");
        }
        let cfg = plan(&settings, &samples, &run, world.size())?;
        let mut resolved = settings.clone();
        resolved.lr = Some(settings.lr());
        resolved.method = Some(settings.method());
        resolved.max_steps = Some(cfg.max_steps);
        resolved.output = Some(output.clone());
        Ok(Recipe {
            settings,
            resolved,
            output,
            device,
            run,
            samples,
            trained_tokens: stats.trained_tokens,
            cfg,
            resume_from,
        })
    }

    /// Makes the run folder ready: unfinished checkpoints removed, an earlier run's refused
    /// (or removed with --overwrite), the checkpoint to resume loaded, `settings.json` written.
    /// Every rank loads the checkpoint; rank 0 alone changes the folder.
    fn prepare_output(
        &mut self,
        args: &TrainArgs,
        world: &World,
    ) -> Result<Option<(AdamW, Position)>> {
        let output = &self.output;
        let writes = world.is_first();
        if writes {
            std::fs::create_dir_all(output)
                .with_context(|| format!("creating {}", output.display()))?;
            remove_unfinished(output)?;
        }
        let earlier = checkpoints(output)?;
        if args.resume.is_none() && !earlier.is_empty() {
            if !args.overwrite {
                anyhow::bail!(
                    "{} has checkpoints of an earlier run: continue it with --resume, start afresh \
                     with --overwrite (which removes them), or choose another --output",
                    output.display()
                );
            }
            for dir in earlier.iter().filter(|_| writes) {
                std::fs::remove_dir_all(dir)
                    .with_context(|| format!("removing {}", dir.display()))?;
            }
        }
        let resume = match &self.resume_from {
            None => None,
            Some(dir) => {
                let sharded = self.settings.zero_stage >= 1;
                let (optimizer, position) =
                    load_checkpoint(dir, &mut self.run.model, self.run.mode, world, sharded)?;
                if !writes {
                    return Ok(Some((optimizer, position)));
                }
                eprintln!("resuming from {} (step {})", dir.display(), optimizer.step);
                // Later checkpoints of this folder belong to the abandoned continuation.
                for later in checkpoints(output)? {
                    if later.file_name() > dir.file_name() && later.parent() == dir.parent() {
                        std::fs::remove_dir_all(&later)
                            .with_context(|| format!("removing {}", later.display()))?;
                        eprintln!("removed {}, which came after it", later.display());
                    }
                }
                Some((optimizer, position))
            }
        };
        if writes {
            write_atomic(
                &output.join("settings.json"),
                self.settings_json()?.as_bytes(),
            )?;
        }
        Ok(resume)
    }

    fn settings_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(&self.resolved)? + "\n")
    }

    /// The training loop: after each optimizer step a metrics line, the evaluations when due,
    /// and a checkpoint every `save_every` steps, at the last step, and on Ctrl-C (on any rank;
    /// rank 0 writes them).
    fn train(
        &mut self,
        resume: Option<(AdamW, Position)>,
        evaluations: &Evaluations,
        world: &World,
    ) -> Result<Ended> {
        let (settings, output, max_steps) = (&self.settings, &self.output, self.cfg.max_steps);
        let settings_json = self.settings_json()?;
        let start_step = resume.as_ref().map_or(0, |(o, _)| o.step);
        let writes = world.is_first();
        let mut metrics = writes
            .then(|| MetricsLog::open(output, start_step))
            .transpose()?;
        if writes {
            let ranks = match world.size() {
                1 => String::new(),
                n if world.sums_on_gpu() => format!(" on {n} ranks (gradients summed by NCCL)"),
                n => format!(" on {n} ranks"),
            };
            eprintln!(
                "training {} ({:?}) on {} samples ({} trained tokens), {max_steps} steps{ranks}, \
                 into {}",
                settings.base,
                self.run.mode,
                self.samples.len(),
                self.trained_tokens,
                output.display()
            );
        }
        let bar = match writes {
            true => ProgressBar::new(max_steps),
            false => ProgressBar::hidden(),
        }
        .with_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} steps {msg} [{elapsed} < {eta}]")
                .expect("valid template"),
        );
        bar.set_position(start_step);
        // Ctrl-C finishes the step in progress, saves a checkpoint and stops.
        let interrupted = Arc::new(AtomicBool::new(false));
        let flag = interrupted.clone();
        ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C handler")?;
        let (mode, pipeline, device) = (self.run.mode, &self.run.pipeline, &self.device);
        let checkpoint = |model: &Model, optimizer: &AdamW, position: Position| -> Result<()> {
            // Every rank writes its shard of a sharded optimizer state; rank 0 the rest.
            save_checkpoint(
                output,
                model,
                mode,
                optimizer,
                position,
                &settings_json,
                settings.keep_last,
                world,
            )?;
            Ok(())
        };
        let mut last = std::time::Instant::now();
        let mut saved_step = start_step;
        let outcome = train::<anyhow::Error>(
            &mut self.run.model,
            &self.samples,
            pipeline.tokenizer.pad_id,
            &self.cfg,
            resume,
            world,
            |report, progress| {
                let step = progress.optimizer.step;
                let seconds = last.elapsed().as_secs_f64().max(1e-9);
                let tokens_per_s = report.tokens as f64 / seconds;
                let mut line = json!({"step": step, "loss": report.loss, "lr": report.lr,
                    "grad_norm": report.grad_norm, "tokens": report.tokens,
                    "tokens_per_s": tokens_per_s, "epoch": progress.position.epoch});
                let last_step = step == max_steps;
                if writes && evaluations.due(step, last_step) {
                    let said = evaluations.measure(progress.model, pipeline, &mut line)?;
                    bar.println(format!("step {step}: {said}"));
                }
                line["memory"] = memory(device);
                line["memory"]["optimizer_state_bytes"] = progress.optimizer.state_bytes().into();
                line["memory"]["gradient_bytes"] = progress.gradient_bytes.into();
                if world.size() > 1 {
                    let t = world.traffic();
                    line["floats_sent"] = json!({"all_reduce": t.all_reduce,
                        "reduce_scatter": t.reduce_scatter, "all_gather": t.all_gather,
                        "overlapped": t.overlapped});
                }
                if let Some(m) = metrics.as_mut() {
                    m.append(&line)?;
                }
                bar.set_position(step);
                bar.set_message(format!(
                    "loss {:.4} lr {:.2e} {tokens_per_s:.0} tok/s",
                    report.loss, report.lr
                ));
                // Every rank stops after the same step.
                let stop = world.any(interrupted.load(Ordering::SeqCst));
                if stop || step % settings.save_every == 0 || last_step {
                    checkpoint(progress.model, progress.optimizer, progress.position)?;
                    saved_step = step;
                    metrics.as_ref().map(MetricsLog::plot).transpose()?;
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
            Ok(done) => {
                // The data may run out before the last planned step: its checkpoint is saved
                // too, so that the run can be exported, or continued with a larger --max-steps.
                if saved_step < done.optimizer.step {
                    checkpoint(&self.run.model, &done.optimizer, done.position)?;
                    metrics.as_ref().map(MetricsLog::plot).transpose()?;
                }
                Ok(Ended::Finished)
            }
            Err(e) => match e.downcast::<Interrupted>() {
                Ok(Interrupted(step)) => Ok(Ended::Interrupted(step)),
                Err(e) => Err(e.context(format!(
                    "training stopped; the last checkpoint (step {saved_step}) is in {}",
                    output.display()
                ))),
            },
        }
    }

    /// Writes the finished run's export into the run folder.
    fn export(&self) -> Result<()> {
        let exported = self.output.join(export_name(&self.resolved));
        export_model(&self.resolved, &self.run, &exported, false, None)?;
        eprintln!("exported {}", exported.display());
        Ok(())
    }
}

/// The optimisation plan: rows and steps (as in transformers, --max-steps overrides the epochs:
/// the data repeats, each epoch shuffled anew, until the run has taken that many steps), the
/// schedule over them, the optimizer and step options.
/// `ranks` processes each train on `--batch-size` rows of every micro-batch.
fn plan(
    settings: &Settings,
    samples: &[Encoded],
    run: &Setup,
    ranks: usize,
) -> Result<TrainConfig> {
    let loader = LoaderConfig {
        seq_len: settings.seq_len,
        packing: settings.packing,
        shuffle: settings.shuffle,
        seed: settings.seed,
        epochs: if settings.max_steps.is_some() {
            u64::MAX
        } else {
            settings.epochs
        },
        ..LoaderConfig::default()
    };
    let rows_per_step = (settings.batch_size * settings.grad_accum * ranks) as u64;
    let rows = epoch_rows(samples, &loader, 0).len() as u64;
    let max_steps = match settings.max_steps {
        Some(steps) => steps,
        None => rows
            .checked_mul(settings.epochs)
            .map(|all| all.div_ceil(rows_per_step))
            .with_context(|| {
                format!(
                    "--epochs {}: {} epochs of {rows} rows are more steps than a run can count",
                    settings.epochs, settings.epochs
                )
            })?,
    };
    Ok(TrainConfig {
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
        zero_stage: settings.zero_stage,
        step: StepOptions {
            mode: run.mode,
            recompute: settings.recompute,
            loss_chunk: 1024,
            dropout_seed: settings.seed,
        },
    })
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
    // Without them the data order the checkpoint's position points into cannot be checked.
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{}: the checkpoint's settings are unreadable, so a resume cannot check that the data \
             order is the one it saved its position in",
            path.display()
        )
    })?;
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
    let changed: Vec<String> = Settings::DATA_ORDER
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
