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

/// Everything a training run is made of. Field names are the config file's keys and, with `-`
/// for `_`, the command line's flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The preset the run started from, if any (set by resolution, not by hand).
    pub preset: Option<String>,
    /// `tiny` (built in), a model folder, or a hub id (`owner/name[@revision]`).
    pub base: String,
    /// Training data: JSONL or Parquet files.
    pub data: Vec<PathBuf>,
    /// Held-out data scored every `eval_every` steps and at the end (none: no evaluation).
    pub eval_data: Vec<PathBuf>,
    /// Optimizer steps between evaluations; 0 evaluates only at the end.
    pub eval_every: u64,
    /// A benchmark the model answers at each evaluation: `ifeval` (none: no benchmark).
    pub eval_task: Option<EvalTaskName>,
    /// The benchmark's prompts answered at each evaluation, from its first (0: all).
    pub eval_limit: usize,
    /// The benchmark's prompts from this file instead of the hub (IFEval's JSONL shape).
    pub eval_task_data: Option<PathBuf>,
    /// Most tokens of each benchmark answer.
    pub eval_max_new_tokens: usize,
    pub mix: String,
    pub template: String,
    pub pc_template: String,
    /// Default: the base model's tokenizer.
    pub tokenizer: Option<String>,
    pub require_pc: bool,
    pub skip_invalid: bool,
    pub seq_len: usize,
    pub packing: bool,
    pub shuffle: bool,
    /// Rows per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    pub epochs: u64,
    /// Optimizer steps (default: what the epochs give).
    pub max_steps: Option<u64>,
    /// Peak learning rate (default by method: 3e-3 for `tiny`, 2e-4 LoRA, 2e-5 full).
    pub lr: Option<f64>,
    pub warmup_steps: u64,
    pub schedule: Decay,
    pub weight_decay: f64,
    /// Global gradient norm bound; 0 turns clipping off.
    pub clip_norm: f64,
    /// `lora` or `full` (default: full for `tiny`, whose weights are random; else lora).
    pub method: Option<Method>,
    pub lora: LoraSettings,
    /// A PEFT adapter to start from; its rank, alpha, dropout and targets replace `lora`'s.
    pub init_adapter: Option<PathBuf>,
    /// Storage and compute type of the base weights: `f32` (CPU), `bf16` (CUDA).
    pub dtype: String,
    /// `cpu` or `cuda:N`.
    pub device: String,
    pub seed: u64,
    /// Recompute each layer's activations in backward (less memory, more compute).
    pub recompute: bool,
    pub save_every: u64,
    /// Checkpoints kept (0 keeps all).
    pub keep_last: usize,
    /// The run folder (default: runs/BASE-MIX).
    pub output: Option<PathBuf>,
}

/// What trains.
/// A benchmark a run can answer while it trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EvalTaskName {
    Ifeval,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Lora,
    Full,
}

/// The adapter of a LoRA run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraSettings {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// `all`, or some of q, k, v, o, gate, up, down.
    pub targets: Vec<String>,
    /// Scale by alpha / sqrt(r) instead of alpha / r.
    pub rslora: bool,
}

impl Default for LoraSettings {
    fn default() -> Self {
        LoraSettings {
            r: 16,
            alpha: 32.0,
            dropout: 0.05,
            targets: vec!["all".into()],
            rslora: false,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            preset: None,
            base: "tiny".into(),
            data: vec![PathBuf::from("examples/tulu-pc.jsonl")],
            eval_data: Vec::new(),
            eval_every: 0,
            eval_task: None,
            eval_limit: 0,
            eval_task_data: None,
            eval_max_new_tokens: 256,
            mix: "nl-pc".into(),
            template: "auto".into(),
            pc_template: PcJoin::DEFAULT.into(),
            tokenizer: None,
            require_pc: false,
            skip_invalid: false,
            seq_len: 2048,
            packing: true,
            shuffle: true,
            batch_size: 1,
            grad_accum: 1,
            epochs: 1,
            max_steps: None,
            lr: None,
            warmup_steps: 0,
            schedule: Decay::Cosine,
            weight_decay: 0.0,
            clip_norm: 1.0,
            method: None,
            lora: LoraSettings::default(),
            init_adapter: None,
            dtype: "f32".into(),
            device: "cpu".into(),
            seed: 42,
            recompute: false,
            save_every: 100,
            keep_last: 2,
            output: None,
        }
    }
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
        if self.eval_task.is_some() && self.eval_max_new_tokens == 0 {
            bail!("eval_max_new_tokens must be at least 1");
        }
        if self.data.is_empty() {
            bail!("data: no training file given");
        }
        let is_hub_id = pctrain_data::hub::HubRepo::parse(&self.base).is_some();
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
