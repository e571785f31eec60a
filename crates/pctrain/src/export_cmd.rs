//! `pctrain export RUN_OR_CHECKPOINT --out DIR [--merged] [--push-to-hub OWNER/NAME]`: a PEFT
//! adapter, or a whole model in the Hugging Face layout, from a checkpoint; optionally uploaded.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use pctrain_export::{export_adapter, export_merged, MAX_SHARD_BYTES};
use pctrain_model::TrainMode;
use pctrain_trainer::{checkpoints, load_checkpoint, Device, World};

use crate::settings::Settings;
use crate::setup::{self, Setup};

#[derive(Args)]
pub struct ExportArgs {
    /// A run folder (its newest checkpoint is exported) or a checkpoint folder.
    run: PathBuf,
    /// The folder to write (replaced as a whole once the export is complete).
    #[arg(long)]
    out: PathBuf,
    /// Merge the adapter into the base and write the whole model (a full run always does).
    #[arg(long)]
    merged: bool,
    /// Largest safetensors shard of a model export, in bytes (transformers' 5 GB by default).
    #[arg(long, default_value_t = MAX_SHARD_BYTES)]
    max_shard_size: u64,
    /// Upload the export to this hub model repository (created if needed), with the token of
    /// HF_TOKEN or `hf auth login`.
    #[arg(long, value_name = "OWNER/NAME")]
    push_to_hub: Option<String>,
    /// Create the hub repository as private.
    #[arg(long, requires = "push_to_hub")]
    private: bool,
}

pub fn run(args: ExportArgs) -> Result<()> {
    if args.max_shard_size == 0 {
        bail!("--max-shard-size must be at least 1 byte");
    }
    let out = export_run(&args.run, &args.out, args.merged, Some(args.max_shard_size))?;
    eprintln!("exported {}", out.display());
    if let Some(repo) = &args.push_to_hub {
        let url = pctrain_hub::upload_folder(repo, &out, args.private, "Upload with pctrain")
            .with_context(|| format!("uploading {} to {repo}", out.display()))?;
        eprintln!("uploaded to {url}");
    }
    Ok(())
}

/// The checkpoint `path` names: itself, or the newest one of a run folder.
fn find_checkpoint(path: &Path) -> Result<PathBuf> {
    if path.join("state.json").is_file() {
        return Ok(path.to_path_buf());
    }
    if !path.is_dir() {
        bail!("{}: no such run or checkpoint folder", path.display());
    }
    checkpoints(path)?
        .pop()
        .with_context(|| format!("{}: no checkpoint in this folder", path.display()))
}

/// `path` made absolute, resolved where it exists, for comparing folders.
fn absolute(path: &Path) -> PathBuf {
    path.canonicalize()
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

/// Rebuilds the model of a checkpoint (on the CPU) and exports it into `out`.
pub fn export_run(
    run: &Path,
    out: &Path,
    merged: bool,
    max_shard_size: Option<u64>,
) -> Result<PathBuf> {
    let checkpoint = find_checkpoint(run)?;
    // Replacing a folder that holds the checkpoint would delete the run.
    let (abs_out, abs_ckpt) = (absolute(out), absolute(&checkpoint));
    if abs_ckpt.starts_with(&abs_out) {
        bail!(
            "--out {} holds the checkpoint {}; export into another folder",
            out.display(),
            checkpoint.display()
        );
    }
    let path = checkpoint.join("settings.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{}: no settings (not a pctrain checkpoint?)",
            path.display()
        )
    })?;
    let mut settings: Settings =
        serde_json::from_str(&text).with_context(|| format!("{}: malformed", path.display()))?;
    // The adapter's values come from the checkpoint; its starting point is not needed.
    settings.init_adapter = None;
    let dtype = setup::parse_dtype(&settings.dtype)?;
    let mut run = setup::build(&settings, &Device::Cpu, dtype)?;
    load_checkpoint(&checkpoint, &mut run.model, run.mode, &World::solo(), false)?;
    export_model(&settings, &run, out, merged, max_shard_size)?;
    Ok(out.to_path_buf())
}

/// Exports a run's model: a PEFT adapter for LoRA (unless `merged`), else the whole model.
pub fn export_model(
    settings: &Settings,
    run: &Setup,
    out: &Path,
    merged: bool,
    max_shard_size: Option<u64>,
) -> Result<()> {
    let meta = setup::export_meta(settings, run)?;
    if run.mode == TrainMode::Lora && !merged {
        export_adapter(&run.model, &meta, out)?;
    } else {
        let dtype = setup::parse_dtype(&settings.dtype)?;
        export_merged(
            &run.model,
            &meta,
            out,
            dtype,
            max_shard_size.unwrap_or(MAX_SHARD_BYTES),
        )?;
    }
    Ok(())
}
