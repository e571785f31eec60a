//! `pctrain data pseudo-code`: writes the pseudo-code of each instruction with a teacher LLM,
//! checks and repairs it, and appends the records to `--output` (resumable); or with
//! `--from-constraints`, writes it from each record's verifiable constraints, without a teacher.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use pctrain_pseudo::{ApiKey, OnFailure, Prompts, RunConfig, Teacher, TeacherConfig};

#[derive(Args)]
pub struct PseudoCodeArgs {
    /// Input records: JSONL or Parquet, Tulu, Alpaca or IFEval shape.
    #[arg(long, num_args = 1.., required = true)]
    data: Vec<PathBuf>,
    /// Write the pseudo-code of each record from its constraints (`instruction_id_list` and
    /// `kwargs`, IFEval's instruction types), without a teacher; records without constraints are
    /// written unchanged, and --output is written whole (replaced), at once.
    #[arg(long, conflicts_with_all = [
        "teacher", "model", "prompts", "api_key_env", "max_repairs", "on_failure", "concurrency",
        "max_requests", "timeout", "max_retries", "retry_base_ms", "temperature", "max_tokens",
    ])]
    from_constraints: bool,
    /// The JSONL file records are appended to (Tulu shape, `pseudo_code` per user turn); a rerun
    /// skips the ids it already holds (with --from-constraints: the file written whole).
    #[arg(long)]
    output: PathBuf,
    /// An OpenAI-compatible server: its base URL (http://localhost:8000/v1) or its
    /// /chat/completions endpoint.
    #[arg(long, required_unless_present = "from_constraints")]
    teacher: Option<String>,
    /// The model name the server knows the teacher by.
    #[arg(long, required_unless_present = "from_constraints")]
    model: Option<String>,
    /// The environment variable that holds the server's API key (none: no key is sent).
    #[arg(long, value_name = "VAR")]
    api_key_env: Option<String>,
    /// A folder with generate.toml, judge.toml and repair.toml replacing the built-in prompts
    /// (configs/prompts/).
    #[arg(long, value_name = "DIR")]
    prompts: Option<PathBuf>,
    /// Repair rounds after a failed check, before giving up on a turn.
    #[arg(long, default_value_t = 2)]
    max_repairs: usize,
    /// keep: write the record without pseudo-code for the failed turns; drop: write it to
    /// OUTPUT.rejected.jsonl instead.
    #[arg(long, default_value = "keep")]
    on_failure: String,
    /// Records processed at once (each has at most one request in flight).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Requests the run may send, retries included; what is left over waits for a rerun.
    #[arg(long)]
    max_requests: Option<u64>,
    /// Seconds before a request times out.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
    /// Retries of a request after 429, 5xx, a timeout or a malformed answer.
    #[arg(long, default_value_t = 5)]
    max_retries: u32,
    /// The first retry's delay in milliseconds (doubling, with jitter).
    #[arg(long, default_value_t = 500)]
    retry_base_ms: u64,
    #[arg(long, default_value_t = 0.2)]
    temperature: f64,
    /// Completion tokens per request.
    #[arg(long, default_value_t = 1024)]
    max_tokens: u32,
}

pub fn run(args: PseudoCodeArgs) -> Result<()> {
    if args.from_constraints {
        let s = pctrain_pseudo::write_from_constraints(&args.data, &args.output)?;
        eprintln!(
            "{} records: pseudo-code written from the constraints of {}, {} had it already, {} \
             have no constraints; wrote {}",
            s.records,
            s.written,
            s.already_had_pseudo_code,
            s.without_constraints,
            args.output.display()
        );
        return Ok(());
    }
    let (Some(url), Some(model)) = (&args.teacher, &args.model) else {
        bail!("--teacher and --model name the teacher (or give --from-constraints)");
    };
    let on_failure = match args.on_failure.as_str() {
        "keep" => OnFailure::Keep,
        "drop" => OnFailure::Drop,
        other => bail!("--on-failure: {other:?} is neither keep nor drop"),
    };
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let timeout = Duration::try_from_secs_f64(args.timeout)
        .ok()
        .filter(|t| !t.is_zero())
        .context("--timeout must be a positive number of seconds")?;
    let api_key = match &args.api_key_env {
        None => None,
        Some(var) => Some(ApiKey::new(std::env::var(var).with_context(|| {
            format!("--api-key-env {var}: the variable is not set")
        })?)),
    };
    let prompts = match &args.prompts {
        Some(dir) => Prompts::load(dir)?,
        None => Prompts::built_in()?,
    };
    let teacher = Teacher::new(TeacherConfig {
        url: url.clone(),
        model: model.clone(),
        api_key,
        temperature: args.temperature,
        max_tokens: args.max_tokens,
        timeout,
        max_retries: args.max_retries,
        retry_base: Duration::from_millis(args.retry_base_ms),
        max_requests: args.max_requests,
    })?;
    let cfg = RunConfig {
        max_repairs: args.max_repairs,
        on_failure,
        concurrency: args.concurrency,
    };
    let bar = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} {pos} records {msg} [{elapsed}]")
            .expect("valid template"),
    );
    let summary = pctrain_pseudo::run(&args.data, &args.output, &teacher, &prompts, &cfg, |s| {
        bar.set_position(s.records);
        bar.set_message(format!(
            "passed {} repaired {} failed {} requests {}",
            s.passed_first_time, s.repaired, s.failed, s.requests
        ));
    })?;
    bar.finish_and_clear();
    eprintln!(
        "{} records ({} done before, {} already had pseudo-code): {} turns generated, {} passed \
         first time, {} repaired, {} failed ({} records kept without, {} dropped); {} requests \
         ({} retries)",
        summary.records,
        summary.already_done,
        summary.already_had_pseudo_code,
        summary.generated,
        summary.passed_first_time,
        summary.repaired,
        summary.failed,
        summary.kept_without,
        summary.dropped,
        summary.requests,
        summary.retries
    );
    if summary.unfinished > 0 {
        eprintln!(
            "the teacher failed on {} records, which wait for a rerun; the last failure: {}",
            summary.unfinished,
            summary.last_teacher_error.as_deref().unwrap_or("unknown")
        );
    }
    if summary.budget_exhausted {
        eprintln!(
            "the request budget ran out: {} records wait for a rerun",
            summary.deferred
        );
    }
    eprintln!(
        "summary: {}",
        pctrain_pseudo::summary_path(&args.output).display()
    );
    Ok(())
}
