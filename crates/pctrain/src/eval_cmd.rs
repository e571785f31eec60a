//! `pctrain eval`: the mean cross-entropy of a model on the trained tokens of a data set
//! (`--task loss`), or its IFEval scores (`--task ifeval`), from a model or from given answers.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use pctrain_data::TextTokenizer;
use pctrain_trainer::evaluate;

use crate::data_cmd::DataArgs;
use crate::generate_cmd::{write_jsonl, Answerer, DecodeArgs, ModelArgs};
use crate::ifeval_cmd;

/// What `eval` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EvalTask {
    /// Mean cross-entropy on the trained tokens of --data.
    Loss,
    /// IFEval's instruction-following accuracies.
    Ifeval,
}

#[derive(Args)]
pub struct EvalArgs {
    /// What to measure.
    #[arg(long, value_enum, default_value = "loss")]
    task: EvalTask,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    decode: DecodeArgs,
    /// Rows scored (loss) or prompts decoded (ifeval) together; default 4 and 16.
    #[arg(long)]
    batch_size: Option<usize>,
    /// IFEval: score these answers (`{"prompt", "response"}` lines) instead of a model's.
    #[arg(long, conflicts_with = "base")]
    responses: Option<PathBuf>,
    /// IFEval: the prompts (`key`, `prompt`, `instruction_id_list`, `kwargs` lines); default
    /// google/IFEval from the hub.
    #[arg(long)]
    task_data: Option<PathBuf>,
    /// IFEval: write each prompt's results here (`key`, `prompt`, `instruction_id_list`, `strict`,
    /// `loose`); a model's answers go beside it, as `NAME.responses.jsonl`.
    #[arg(long)]
    report: Option<PathBuf>,
    /// IFEval with a model: answer only the first N prompts.
    #[arg(long)]
    limit: Option<usize>,
}

impl EvalArgs {
    /// The model these arguments name, with the data arguments' template.
    fn answerer(&self) -> Result<Answerer> {
        Answerer::load(
            &self.model,
            &self.decode,
            &self.data.template,
            &self.data.pc_template,
        )
    }
}

pub fn run(args: EvalArgs) -> Result<()> {
    match args.task {
        EvalTask::Loss => loss(args),
        EvalTask::Ifeval => ifeval(args),
    }
}

fn loss(args: EvalArgs) -> Result<()> {
    let answerer = args.answerer()?;
    let base = answerer.base;
    let tokenizer = match args.data.tokenizer.as_deref() {
        Some(spec) => TextTokenizer::load(spec)?,
        None => base.tokenizer,
    };
    let pipeline = args.data.pipeline_with(tokenizer)?;
    let (samples, stats) = pipeline.encode_all(&args.data.data)?;
    if stats.invalid_skipped > 0 {
        eprintln!("skipped {} invalid records", stats.invalid_skipped);
    }
    if samples.is_empty() {
        bail!("no sample with a trained token in the data: nothing to evaluate");
    }
    let result = evaluate(
        &base.model,
        &samples,
        args.data.seq_len,
        pipeline.tokenizer.pad_id,
        args.batch_size.unwrap_or(4),
    )?;
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

fn ifeval(args: EvalArgs) -> Result<()> {
    let task = ifeval_cmd::load_task(args.task_data.as_deref())?;
    let scored = match &args.responses {
        Some(file) => ifeval_cmd::score_file(&task, file)?,
        None => {
            if args.model.base.is_none() {
                bail!("--task ifeval needs --responses FILE (answers to score) or --base MODEL");
            }
            let opts = args
                .decode
                .options(args.batch_size.unwrap_or(16), args.data.seed)?;
            let answerer = args.answerer()?;
            let started = std::time::Instant::now();
            let answers =
                ifeval_cmd::answer_task(&answerer.generator(), &task, args.limit, &opts, true)?;
            eprintln!(
                "{} answers in {:.1} s",
                answers.len(),
                started.elapsed().as_secs_f64()
            );
            let report = args
                .report
                .clone()
                .unwrap_or_else(|| PathBuf::from("ifeval-report.jsonl"));
            let responses = ifeval_cmd::responses_beside(&report);
            let lines: Vec<serde_json::Value> = answers
                .iter()
                .map(|a| {
                    serde_json::json!({"prompt": a.prompt, "sample": a.sample, "response": a.response})
                })
                .collect();
            write_jsonl(&responses, &lines)?;
            eprintln!("answers in {}", responses.display());
            let scored = ifeval_cmd::score_answers(&task, &answers);
            ifeval_cmd::report(&scored, Some(&report))?;
            return Ok(());
        }
    };
    ifeval_cmd::report(&scored, args.report.as_ref())?;
    Ok(())
}
