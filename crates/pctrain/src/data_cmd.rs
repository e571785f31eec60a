//! `pctrain data inspect`, `pctrain data stats` and `pctrain data pseudo-code`.

use std::io::{IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use pctrain_data::loader::{epoch_rows, packing_efficiency};
use pctrain_data::{
    LoaderConfig, Mix, Mixer, PcJoin, Pipeline, Prepared, Stats, TemplateChoice, TextTokenizer,
};

#[derive(Subcommand)]
pub enum DataCommand {
    /// Print samples as the trainer sees them, trained parts marked (or JSON lines with --json).
    Inspect(InspectArgs),
    /// Count records, samples per format, fallbacks, drops, tokens and packing efficiency.
    Stats(StatsArgs),
    /// Write each instruction's pseudo-code with a teacher LLM: generate, check, repair.
    PseudoCode(crate::pseudo_cmd::PseudoCodeArgs),
}

/// What turns data files into samples; shared by every command that reads data.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// JSONL or Parquet files in Tulu (`messages`), Alpaca (`instruction`) or IFEval (`prompt` with
    /// `instruction_id_list`) shape; repeat or list several.
    #[arg(long = "data", num_args = 1.., default_value = "examples/tulu-pc.jsonl")]
    pub data: Vec<PathBuf>,
    /// nl | pc | nl-pc, a blend such as nl:0.5,nl-pc:0.5, or both renditions with nl+nl-pc.
    #[arg(long, default_value = "nl-pc")]
    pub mix: String,
    /// tokenizer.json, a model folder, a hub id (owner/name[@revision]), or `tiny` (built in).
    /// Default: `tiny`, or the base model's tokenizer for `eval`.
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// auto (the model's chat template, else tulu), hf, tulu, llama3, mistral, granite, chatml, or
    /// a .jinja file.
    #[arg(long, default_value = "auto")]
    pub template: String,
    /// Tokens per sample (longer samples are cut) and per packed row.
    #[arg(long, default_value_t = 2048)]
    pub seq_len: usize,
    /// Seed of the blend's per-record choice and of shuffling.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Drop samples whose format needs pseudo-code the record lacks (default: fall back to nl).
    #[arg(long)]
    pub require_pc: bool,
    /// Skip malformed records (they are counted) instead of stopping at the first.
    #[arg(long)]
    pub skip_invalid: bool,
    /// How pseudo-code and response are joined in nl-pc answers.
    #[arg(long, default_value = PcJoin::DEFAULT)]
    pub pc_template: String,
}

impl DataArgs {
    /// Builds the pipeline these arguments describe, with `--tokenizer` (default `tiny`).
    pub fn pipeline(&self) -> Result<Pipeline> {
        let tokenizer = match self.tokenizer.as_deref() {
            None | Some("tiny") => TextTokenizer::tiny()?,
            Some(spec) => TextTokenizer::load(spec)?,
        };
        self.pipeline_with(tokenizer)
    }

    /// Builds the pipeline these arguments describe around `tokenizer`.
    pub fn pipeline_with(&self, tokenizer: TextTokenizer) -> Result<Pipeline> {
        let mix: Mix = self.mix.parse()?;
        let join = PcJoin::parse(&self.pc_template)?;
        let choice = TemplateChoice::parse(&self.template)?;
        let template = choice.load(tokenizer.chat_template.as_deref())?;
        let mixer = Mixer {
            mix,
            seed: self.seed,
            require_pc: self.require_pc,
            join,
        };
        Ok(Pipeline::new(
            mixer,
            template,
            tokenizer,
            self.seq_len,
            self.skip_invalid,
        )?)
    }
}

#[derive(Args)]
pub struct InspectArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Show at most this many samples.
    #[arg(long)]
    limit: Option<usize>,
    /// One JSON object a line: {"id", "format", "text", "input_ids", "labels"}.
    #[arg(long)]
    json: bool,
    /// Show samples in the shuffled order of the first epoch (by --seed) instead of file order.
    #[arg(long)]
    shuffle: bool,
}

#[derive(Args)]
pub struct StatsArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Measure packing with one sample a row instead.
    #[arg(long)]
    no_packing: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Inspect(args) => inspect(args),
        DataCommand::Stats(args) => stats(args),
        DataCommand::PseudoCode(args) => crate::pseudo_cmd::run(args),
    }
}

fn inspect(args: InspectArgs) -> Result<()> {
    let pipeline = args.data.pipeline()?;
    let limit = args.limit.unwrap_or(usize::MAX);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let show = |n: usize, p: &Prepared, out: &mut dyn Write| -> std::io::Result<()> {
        if args.json {
            write_json(p, out)
        } else {
            write_plain(n, p, color, out)
        }
    };
    let mut written: std::io::Result<()> = Ok(());
    let stats = if args.shuffle {
        // Shuffling needs every sample first.
        let mut all = Vec::new();
        let stats = pipeline.run(&args.data.data, |p| {
            all.push(p);
            ControlFlow::Continue(())
        })?;
        let encoded: Vec<_> = all.iter().map(|p| p.encoded.clone()).collect();
        let cfg = LoaderConfig {
            seq_len: args.data.seq_len,
            packing: false,
            shuffle: true,
            seed: args.data.seed,
            ..LoaderConfig::default()
        };
        for (n, row) in epoch_rows(&encoded, &cfg, 0).iter().take(limit).enumerate() {
            written = show(n + 1, &all[row.samples[0]], &mut out);
            if written.is_err() {
                break;
            }
        }
        stats
    } else {
        let mut n = 0;
        pipeline.run(&args.data.data, |p| {
            if n >= limit {
                return ControlFlow::Break(());
            }
            n += 1;
            written = show(n, &p, &mut out);
            if written.is_err() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?
    };
    match written.and_then(|()| out.flush()) {
        // A reader that stopped early (`| head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
        other => other?,
    }
    if stats.invalid_skipped > 0 {
        eprintln!("skipped {} invalid records", stats.invalid_skipped);
    }
    Ok(())
}

/// The text of the kept tokens (a truncated sample ends where its last token ends).
fn kept_text(p: &Prepared) -> &str {
    let end = p.offsets.iter().map(|o| o.1).max().unwrap_or(0);
    &p.text[..end.min(p.text.len())]
}

fn write_json(p: &Prepared, out: &mut dyn Write) -> std::io::Result<()> {
    let line = serde_json::json!({
        "id": p.encoded.id,
        "format": p.encoded.format,
        "text": kept_text(p),
        "input_ids": p.encoded.input_ids,
        "labels": p.encoded.labels(),
    });
    writeln!(out, "{line}")
}

/// The sample's text with trained bytes marked: green on a terminal, `⟦...⟧` otherwise.
fn write_plain(n: usize, p: &Prepared, color: bool, out: &mut dyn Write) -> std::io::Result<()> {
    let e = &p.encoded;
    writeln!(
        out,
        "── sample {n} · id {} · {} · {} tokens, {} trained{}",
        e.id,
        e.format,
        e.len(),
        e.trained_tokens(),
        if e.truncated { " · truncated" } else { "" }
    )?;
    let text = kept_text(p);
    let (open, close) = if color {
        ("\x1b[32m", "\x1b[0m")
    } else {
        ("⟦", "⟧")
    };
    // Trained byte ranges: union of the trained tokens' offsets.
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for (&(s, t), &trained) in p.offsets.iter().zip(&e.trained) {
        if !trained || s == t {
            continue;
        }
        match ranges.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(t),
            _ => ranges.push((s, t)),
        }
    }
    let mut pos = 0;
    for (s, t) in ranges {
        let (s, t) = (s.max(pos), t.min(text.len()));
        if s >= t {
            continue;
        }
        write!(out, "{}{open}{}{close}", &text[pos..s], &text[s..t])?;
        pos = t;
    }
    writeln!(out, "{}\n", &text[pos..])
}

fn stats(args: StatsArgs) -> Result<()> {
    let pipeline = args.data.pipeline()?;
    // A spinner on stderr for long files; hidden when stderr is not a terminal.
    let progress = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} {pos} samples ({per_sec}) {elapsed}")
            .expect("valid template"),
    );
    let mut encoded = Vec::new();
    let stats = pipeline
        .run(&args.data.data, |p| {
            encoded.push(p.encoded);
            progress.inc(1);
            ControlFlow::Continue(())
        })
        .context("reading the data")?;
    progress.finish_and_clear();
    let cfg = LoaderConfig {
        seq_len: args.data.seq_len,
        packing: !args.no_packing,
        shuffle: true,
        seed: args.data.seed,
        ..LoaderConfig::default()
    };
    let rows = epoch_rows(&encoded, &cfg, 0);
    let efficiency = packing_efficiency(&rows, cfg.seq_len);
    if args.json {
        let mut v = serde_json::to_value(&stats)?;
        v["rows"] = rows.len().into();
        v["seq_len"] = cfg.seq_len.into();
        v["packing"] = cfg.packing.into();
        v["packing_efficiency"] = efficiency.into();
        println!("{v}");
    } else {
        print_table(&stats, rows.len(), cfg.seq_len, cfg.packing, efficiency);
    }
    Ok(())
}

fn print_table(s: &Stats, rows: usize, seq_len: usize, packing: bool, efficiency: f64) {
    let per_format = s
        .samples
        .iter()
        .map(|(f, n)| format!("{f} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let pct = |a: u64, b: u64| {
        if b == 0 {
            0.0
        } else {
            100.0 * a as f64 / b as f64
        }
    };
    println!("records                      {}", s.records);
    println!("invalid records skipped      {}", s.invalid_skipped);
    println!(
        "samples                      {} ({per_format})",
        s.sample_count()
    );
    println!("fallbacks to nl (no pc)      {}", s.mix.fallbacks_to_nl);
    println!("dropped, no pc (--require-pc) {}", s.mix.dropped_without_pc);
    println!("dropped, no trained tokens   {}", s.dropped_untrained);
    println!("truncated to {seq_len:<6}          {}", s.truncated);
    println!("tokens                       {}", s.tokens);
    println!(
        "trained tokens               {} ({:.1}%)",
        s.trained_tokens,
        pct(s.trained_tokens, s.tokens)
    );
    println!(
        "rows of {seq_len:<6}               {rows} ({})",
        if packing {
            "packed, best fit"
        } else {
            "one sample a row"
        }
    );
    println!("packing efficiency           {:.1}%", 100.0 * efficiency);
}
