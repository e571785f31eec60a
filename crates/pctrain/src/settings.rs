//! A run's settings: built-in defaults, then the preset's `configs/NAME.toml`, then `--config
//! FILE.toml`, then command-line flags, each layer overriding the one before. The resolved
//! settings are written into the run folder and into every checkpoint.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use pctrain_data::PcJoin;
use pctrain_model::Target;
use pctrain_trainer::Decay;
use serde::{Deserialize, Serialize};

use crate::presets;

/// Everything a training run is made of, declared once: field names are the config file's keys,
/// and (with `-` for `_`, `lora-` before the adapter's) the command line's flags; the `arg`
/// defaults are the built-in defaults ([`Settings::default`] parses an empty command line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The preset the run started from, if any (set by resolution, not by hand).
    #[arg(skip)]
    pub preset: Option<String>,
    /// A preset (`pctrain presets` lists them; `tiny` is built in and needs no download), a model
    /// folder, or a hub id (owner/name[@revision]).
    #[arg(long, default_value = "tiny")]
    pub base: String,
    /// Training data: JSONL or Parquet, Tulu, Alpaca or IFEval shape.
    #[arg(long, num_args = 1.., default_value = "examples/tulu-pc.jsonl")]
    pub data: Vec<PathBuf>,
    /// Held-out data, scored every --eval-every steps and at the end (none: no evaluation).
    #[arg(long, num_args = 1..)]
    pub eval_data: Vec<PathBuf>,
    /// Optimizer steps between evaluations; 0 evaluates only at the end.
    #[arg(long, default_value_t = 0)]
    pub eval_every: u64,
    /// A benchmark the model answers at each evaluation, its scores into metrics.jsonl (none: no
    /// benchmark).
    #[arg(long, value_enum)]
    pub eval_task: Option<EvalTaskName>,
    /// The benchmark's prompts answered at each evaluation, from its first (0: all).
    #[arg(long, default_value_t = 0)]
    pub eval_limit: usize,
    /// The benchmark's prompts from this file (IFEval's JSONL shape) instead of the hub.
    #[arg(long)]
    pub eval_task_data: Option<PathBuf>,
    /// Most tokens of each benchmark answer.
    #[arg(long, default_value_t = 256)]
    pub eval_max_new_tokens: usize,
    /// nl | pc | nl-pc, a blend (nl:0.5,nl-pc:0.5) or both renditions (nl+nl-pc).
    #[arg(long, default_value = "nl-pc")]
    pub mix: String,
    /// auto (the model's chat template, else tulu), tulu, llama3, mistral, granite, chatml, or a
    /// .jinja file.
    #[arg(long, default_value = "auto")]
    pub template: String,
    /// How pseudo-code and response are joined in nl-pc answers.
    #[arg(long, default_value = PcJoin::DEFAULT)]
    pub pc_template: String,
    /// A tokenizer other than the base's (tokenizer.json, folder, hub id, or tiny).
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// Drop samples whose format needs pseudo-code the record lacks (otherwise they fall back to
    /// nl).
    #[arg(long)]
    pub require_pc: bool,
    /// Skip malformed records (they are counted) instead of stopping at the first.
    #[arg(long)]
    pub skip_invalid: bool,
    /// Tokens per packed row (longer samples are cut).
    #[arg(long, default_value_t = 2048)]
    pub seq_len: usize,
    /// One sample a row instead of packing several (the key `packing = false`).
    #[arg(long = "no-packing", action = clap::ArgAction::SetFalse)]
    pub packing: bool,
    /// The samples in file order instead of shuffled each epoch (the key `shuffle = false`).
    #[arg(long = "no-shuffle", action = clap::ArgAction::SetFalse)]
    pub shuffle: bool,
    /// Rows per micro-batch.
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Passes over the data.
    #[arg(long, default_value_t = 1)]
    pub epochs: u64,
    /// Optimizer steps (default: what the epochs give).
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Peak learning rate (default by method: 3e-3 for `tiny`, 2e-4 LoRA, 2e-5 full).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Optimizer steps of linear warmup.
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: u64,
    /// cosine, linear or constant after warmup.
    #[arg(long, default_value = "cosine")]
    pub schedule: Decay,
    /// AdamW's decoupled weight decay.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Global gradient norm bound; 0 turns clipping off.
    #[arg(long, default_value_t = 1.0)]
    pub clip_norm: f64,
    /// Under mpirun: 1 shards AdamW's moments and f32 master weights across the ranks (ZeRO
    /// stage 1; CPUs, and GPUs with NCCL), 2 the summed gradients too (stage 2; CPUs), 0 keeps
    /// them whole on every rank. One process keeps them whole either way.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub zero_stage: u8,
    /// lora or full (default: full for `tiny`, whose weights are random; else lora).
    #[arg(long, value_enum)]
    pub method: Option<Method>,
    #[command(flatten)]
    pub lora: LoraSettings,
    /// Start from a PEFT adapter folder; its rank, alpha, dropout and targets replace `lora`'s.
    #[arg(long, value_name = "DIR")]
    pub init_adapter: Option<PathBuf>,
    /// Storage and compute type of the base weights: f32, or bf16 on a GPU (CUDA).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Seed of initialisation, data order, blends and dropout.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Recompute each layer's activations in backward (less memory, more compute).
    #[arg(long)]
    pub recompute: bool,
    /// Save a checkpoint every N optimizer steps (and at the end).
    #[arg(long, default_value_t = 100)]
    pub save_every: u64,
    /// Checkpoints kept (0 keeps all).
    #[arg(long, default_value_t = 2)]
    pub keep_last: usize,
    /// The run folder (default: runs/BASE-MIX).
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// A benchmark a run can answer while it trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EvalTaskName {
    Ifeval,
}

/// What trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Lora,
    Full,
}

/// The adapter of a LoRA run (the `[lora]` table; flags `--lora-KEY`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct LoraSettings {
    /// LoRA rank.
    #[arg(id = "lora_r", long = "lora-r", value_name = "R", default_value_t = 16)]
    pub r: usize,
    /// LoRA alpha (the update is scaled by alpha / r).
    #[arg(
        id = "lora_alpha",
        long = "lora-alpha",
        value_name = "ALPHA",
        default_value_t = 32.0
    )]
    pub alpha: f64,
    /// Dropout on the adapters' input.
    #[arg(
        id = "lora_dropout",
        long = "lora-dropout",
        value_name = "P",
        default_value_t = 0.05
    )]
    pub dropout: f64,
    /// `all`, or a comma list of q, k, v, o, gate, up, down.
    #[arg(
        id = "lora_targets",
        long = "lora-targets",
        value_name = "TARGETS",
        value_delimiter = ',',
        default_value = "all"
    )]
    pub targets: Vec<String>,
    /// Scale by alpha / sqrt(r) instead of alpha / r.
    #[arg(id = "lora_rslora", long = "rslora")]
    pub rslora: bool,
}

impl Default for LoraSettings {
    fn default() -> Self {
        declared_defaults()
    }
}

impl Default for Settings {
    fn default() -> Self {
        declared_defaults()
    }
}

/// What the `arg` attributes declare when no flag is given.
fn declared_defaults<T: clap::Args + clap::FromArgMatches>() -> T {
    let command = T::augment_args(clap::Command::new("defaults"));
    let matches = command
        .try_get_matches_from(["defaults"])
        .expect("the declared defaults parse");
    T::from_arg_matches(&matches).expect("the declared defaults parse")
}

/// The keys of `settings` whose flags were given on the command line (`matches`), as a settings
/// layer: a nested table's key `KEY` is the flag id `TABLE_KEY`.
pub fn given_on_command_line(
    settings: &Settings,
    matches: &clap::ArgMatches,
) -> Result<toml::Table> {
    fn keep(table: toml::Table, matches: &clap::ArgMatches, prefix: &str) -> toml::Table {
        table
            .into_iter()
            .filter_map(|(key, value)| {
                let id = format!("{prefix}{key}");
                match value {
                    toml::Value::Table(t) => {
                        let t = keep(t, matches, &format!("{id}_"));
                        (!t.is_empty()).then(|| (key, t.into()))
                    }
                    value => (matches.value_source(&id)
                        == Some(clap::parser::ValueSource::CommandLine))
                    .then_some((key, value)),
                }
            })
            .collect()
    }
    let all = toml::Table::try_from(settings).context("settings as TOML")?;
    Ok(keep(all, matches, ""))
}

/// Parses one layer (a TOML file's text), checking its keys and types against [`Settings`] so a
/// mistake is reported with its line.
pub fn parse_layer(text: &str, origin: &Path) -> Result<toml::Table> {
    let table: toml::Table =
        toml::from_str(text).with_context(|| format!("{}: not valid TOML", origin.display()))?;
    toml::from_str::<Settings>(text).with_context(|| format!("{}", origin.display()))?;
    if table.contains_key("preset") {
        bail!(
            "{}: `preset` is set by pctrain; name a preset with `base = \"NAME\"`",
            origin.display()
        );
    }
    Ok(table)
}

/// Merges `over` into `under`: tables key by key, anything else replaced.
fn merge(under: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (under.get_mut(&key), value) {
            (Some(toml::Value::Table(u)), toml::Value::Table(o)) => merge(u, o),
            (_, value) => {
                under.insert(key, value);
            }
        }
    }
}

impl Settings {
    /// The keys that decide which rows each step trains on: a resumed run must keep them, or the
    /// data position saved in its checkpoint would point elsewhere.
    pub const DATA_ORDER: [&str; 13] = [
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
    ];

    /// Resolves a run's settings from an optional config file and the command line's overrides:
    /// when the base they name is a preset, the preset's config goes underneath, and `base`
    /// becomes the preset's model.
    pub fn resolve(config: Option<&Path>, flags: toml::Table) -> Result<Settings> {
        let mut layer = toml::Table::new();
        if let Some(path) = config {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            layer = parse_layer(&text, path)?;
        }
        merge(&mut layer, flags);
        let named = layer
            .get("base")
            .and_then(|b| b.as_str())
            .unwrap_or("tiny")
            .to_string();
        let mut merged = toml::Table::new();
        let preset = presets::find(&named);
        if let Some(p) = preset {
            merged = parse_layer(p.text, Path::new(&format!("configs/{}.toml", p.name)))?;
            layer.remove("base");
        }
        merge(&mut merged, layer);
        let mut settings: Settings = merged
            .try_into()
            .context("the merged settings are not valid")?;
        settings.preset = preset.map(|p| p.name.to_string());
        settings.check()?;
        Ok(settings)
    }

    /// Whether the base is the built-in tiny model.
    pub fn tiny(&self) -> bool {
        self.base == "tiny"
    }

    /// The method, with its default.
    pub fn method(&self) -> Method {
        self.method.unwrap_or(if self.tiny() {
            Method::Full
        } else {
            Method::Lora
        })
    }

    /// The peak learning rate, with its default.
    pub fn lr(&self) -> f64 {
        self.lr.unwrap_or(match (self.tiny(), self.method()) {
            (true, _) => 3e-3,
            (false, Method::Lora) => 2e-4,
            (false, Method::Full) => 2e-5,
        })
    }

    /// The LoRA targets named by `lora.targets`.
    pub fn targets(&self) -> Result<Vec<Target>> {
        let mut out = Vec::new();
        for name in self.lora.targets.iter().map(|s| s.trim()) {
            if name == "all" {
                out.extend(Target::ALL);
                continue;
            }
            let module = if name.ends_with("_proj") {
                name.to_string()
            } else {
                format!("{name}_proj")
            };
            match Target::from_module(&module) {
                Some(t) => out.push(t),
                None => {
                    bail!("lora targets: unknown target {name:?} (all, q, k, v, o, gate, up, down)")
                }
            }
        }
        out.sort();
        out.dedup();
        if out.is_empty() {
            bail!("lora targets: none given");
        }
        Ok(out)
    }

    /// The run folder: `output`, or runs/BASE-MIX.
    pub fn output(&self) -> PathBuf {
        self.output.clone().unwrap_or_else(|| {
            let name = self.preset.as_deref().unwrap_or(&self.base);
            let base: String = name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            PathBuf::from("runs").join(format!("{base}-{}", self.mix.replace([':', ',', '+'], "_")))
        })
    }

    /// Values no run can use, named by their key.
    fn check(&self) -> Result<()> {
        let positive = [
            ("seq_len", self.seq_len),
            ("batch_size", self.batch_size),
            ("grad_accum", self.grad_accum),
            ("epochs", self.epochs as usize),
        ];
        for (key, value) in positive {
            if value == 0 {
                bail!("{key} must be at least 1");
            }
        }
        if self.method() == Method::Lora && self.init_adapter.is_none() {
            if self.lora.r == 0 {
                bail!("lora.r must be at least 1");
            }
            if !(0.0..1.0).contains(&self.lora.dropout) {
                bail!("lora.dropout must be in [0, 1), not {}", self.lora.dropout);
            }
            if !(self.lora.alpha.is_finite() && self.lora.alpha > 0.0) {
                bail!("lora.alpha must be positive, not {}", self.lora.alpha);
            }
        }
        if self.method() == Method::Full && self.init_adapter.is_some() {
            bail!("init_adapter starts a LoRA run; it cannot be combined with full fine-tuning");
        }
        if self.method() == Method::Lora && self.tiny() {
            bail!("the tiny preset's weights are random: train it with method = \"full\"");
        }
        if !(self.lr().is_finite() && self.lr() > 0.0) {
            bail!("lr must be positive, not {}", self.lr());
        }
        for (key, value) in [
            ("weight_decay", self.weight_decay),
            ("clip_norm", self.clip_norm),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                bail!("{key} must be zero or positive, not {value}");
            }
        }
        if self.save_every == 0 {
            bail!("save_every must be at least 1");
        }
        if self.zero_stage > 2 {
            bail!("zero_stage must be 0, 1 or 2, not {}", self.zero_stage);
        }
        if self.eval_task.is_some() && self.eval_max_new_tokens == 0 {
            bail!("eval_max_new_tokens must be at least 1");
        }
        if self.data.is_empty() {
            bail!("data: no training file given");
        }
        let is_hub_id = pctrain_hub::HubRepo::parse(&self.base).is_some();
        if !self.tiny() && !Path::new(&self.base).exists() && !is_hub_id {
            bail!(
                "base {:?}: not a preset ({}), a model folder, or a hub id (owner/name)",
                self.base,
                presets::PRESETS
                    .iter()
                    .map(|p| p.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        self.targets()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn flags_override_the_config_file_which_overrides_the_preset() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("run.toml");
        std::fs::write(
            &file,
            "base = \"llama3-8b\"\nlr = 1e-4\nseq_len = 1024\n[lora]\nr = 8\n",
        )
        .unwrap();
        let s = Settings::resolve(Some(&file), flags("seq_len = 512")).unwrap();
        assert_eq!(s.preset.as_deref(), Some("llama3-8b"));
        assert_eq!(s.base, "meta-llama/Meta-Llama-3-8B");
        assert_eq!(s.lr, Some(1e-4));
        assert_eq!(s.seq_len, 512);
        assert_eq!(s.lora.r, 8);
        // Untouched keys of a table keep the preset's values.
        let preset = Settings::resolve(None, flags("base = \"llama3-8b\"")).unwrap();
        assert_eq!(s.lora.alpha, preset.lora.alpha);
        assert_eq!(s.dtype, preset.dtype);
    }

    #[test]
    fn a_misspelt_key_is_reported_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "lr = 1e-4\nbatch_sise = 4\n").unwrap();
        let err = format!(
            "{:#}",
            Settings::resolve(Some(&file), flags("")).unwrap_err()
        );
        assert!(err.contains("bad.toml"), "{err}");
        assert!(err.contains("batch_sise"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("batch_size = 0", "batch_size"),
            ("lr = -1.0", "lr"),
            ("clip_norm = -1.0", "clip_norm"),
            ("schedule = \"step\"", "schedule"),
            ("base = \"x/y\"\n[lora]\ntargets = [\"qq\"]", "qq"),
            ("base = \"x/y\"\n[lora]\ndropout = 1.0", "lora.dropout"),
        ] {
            let err = format!("{:#}", Settings::resolve(None, flags(text)).unwrap_err());
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn the_defaults_are_those_the_flags_declare() {
        let d = Settings::default();
        assert_eq!(d.base, "tiny");
        assert_eq!(d.data, vec![PathBuf::from("examples/tulu-pc.jsonl")]);
        assert_eq!(
            (d.seq_len, d.batch_size, d.save_every, d.keep_last),
            (2048, 1, 100, 2)
        );
        assert!(d.packing && d.shuffle && !d.recompute && !d.require_pc);
        assert_eq!(d.schedule, Decay::Cosine);
        assert_eq!((d.lora.r, d.lora.alpha, d.lora.dropout), (16, 32.0, 0.05));
        assert_eq!(d.lora.targets, vec!["all".to_string()]);
        assert_eq!((d.lr, d.method, d.preset.as_deref()), (None, None, None));
        // An empty file is the defaults, and the defaults read back as themselves.
        assert_eq!(toml::from_str::<Settings>("").unwrap(), d);
        let text = toml::to_string(&d).unwrap();
        assert_eq!(toml::from_str::<Settings>(&text).unwrap(), d);
    }

    #[test]
    fn the_data_order_keys_are_settings() {
        let table = toml::Table::try_from(Settings {
            tokenizer: Some("t".into()),
            ..Settings::default()
        })
        .unwrap();
        for key in Settings::DATA_ORDER {
            assert!(table.contains_key(key), "{key}");
        }
    }

    #[test]
    fn tiny_defaults_to_full_training_and_hub_models_to_lora() {
        let tiny = Settings::resolve(None, flags("")).unwrap();
        assert_eq!(tiny.method(), Method::Full);
        assert_eq!(tiny.preset.as_deref(), Some("tiny"));
        let hub = Settings::resolve(None, flags("base = \"org/model\"")).unwrap();
        assert_eq!(hub.method(), Method::Lora);
        assert_eq!(hub.lr(), 2e-4);
        assert_eq!(hub.output(), PathBuf::from("runs/org-model-nl-pc"));
    }
}
