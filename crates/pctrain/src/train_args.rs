//! The training command's flags, and the settings layer they make (each flag given overrides the
//! config file, the preset and the defaults).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde::Serialize;

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
    pub config: Option<PathBuf>,
    /// Training data: JSONL or Parquet, Tulu, Alpaca or IFEval shape. Default:
    /// examples/tulu-pc.jsonl.
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
    /// f32, or bf16 on a GPU (CUDA): the base weights' type.
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
    /// Answer a benchmark at each evaluation (ifeval), its scores into metrics.jsonl.
    #[arg(long, value_enum)]
    eval_task: Option<crate::settings::EvalTaskName>,
    /// Prompts of --eval-task answered at each evaluation, from its first (0: all).
    #[arg(long)]
    eval_limit: Option<usize>,
    /// --eval-task's prompts from this file (IFEval's JSONL shape) instead of the hub.
    #[arg(long)]
    eval_task_data: Option<PathBuf>,
    /// Most tokens of each --eval-task answer.
    #[arg(long)]
    eval_max_new_tokens: Option<usize>,
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
    pub resume: Option<String>,
    /// Start afresh in a run folder that has checkpoints, removing them.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
}

impl TrainArgs {
    /// The flags given, as a settings layer.
    pub fn overrides(&self) -> Result<toml::Table> {
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
        put(&mut t, "eval_task", &self.eval_task)?;
        put(&mut t, "eval_limit", &self.eval_limit)?;
        put(&mut t, "eval_task_data", &self.eval_task_data)?;
        put(&mut t, "eval_max_new_tokens", &self.eval_max_new_tokens)?;
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
