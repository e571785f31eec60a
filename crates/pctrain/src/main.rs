//! `pctrain`: fine-tune LLMs on instructions re-expressed as pseudo-code.

mod bench_cmd;
mod data_cmd;
mod eval_cmd;
mod export_cmd;
mod generate_cmd;
mod ifeval_cmd;
mod metrics;
mod plot;
mod presets;
mod pseudo_cmd;
mod settings;
mod setup;
mod train_args;
mod train_cmd;
mod train_eval;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "pctrain",
    version,
    about,
    propagate_version = true,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Training (the default command).
    #[command(flatten)]
    train: train_args::TrainArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Look at training samples (`data inspect`, `data stats`); make pseudo-code
    /// (`data pseudo-code`).
    #[command(subcommand)]
    Data(data_cmd::DataCommand),
    /// A model's mean cross-entropy on the trained tokens of a data set (last line JSON {"loss",
    /// "tokens"}), or with --task ifeval its IFEval accuracies (last line JSON {"prompts",
    /// "prompt_strict", "inst_strict", "prompt_loose", "inst_loose"}).
    Eval(eval_cmd::EvalArgs),
    /// A model's answers: to --prompt, streamed to stdout, or to each record of --data, as JSON
    /// lines in --output.
    Generate(generate_cmd::GenerateArgs),
    /// Write a run's PEFT adapter, or with --merged the whole model, in the Hugging Face layout;
    /// optionally upload it to the hub.
    Export(export_cmd::ExportArgs),
    /// Time whole training steps on a model shape with random weights (one JSON line; under
    /// mpirun, steps of every rank together, printed by rank 0).
    #[command(hide = true)]
    Bench(bench_cmd::BenchArgs),
    /// List the presets (`--base NAME`), or print one's config.
    Presets {
        /// Print this preset's config file.
        name: Option<String>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("PCTRAIN_LOG").unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    // The matches stay: training tells the flags given from the defaults by them.
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = match cli.command {
        Some(Command::Data(cmd)) => data_cmd::run(cmd),
        Some(Command::Eval(args)) => eval_cmd::run(args),
        Some(Command::Export(args)) => export_cmd::run(args),
        Some(Command::Generate(args)) => generate_cmd::run(args),
        Some(Command::Bench(args)) => bench_cmd::run(args),
        Some(Command::Presets { name }) => presets::run(name.as_deref()),
        None => train_cmd::run(cli.train, &matches),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each said once: a cause whose text ends the message so far (an
/// error that prints its source, then that source) is not repeated.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if text.ends_with(&s) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&s);
    }
    text
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    #[test]
    fn an_error_says_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = Err::<(), _>(pctrain_model::ModelError::Io {
            path: "answers.jsonl".into(),
            source: io,
        })
        .context("writing answers.jsonl")
        .unwrap_err();
        assert_eq!(
            super::error_text(&e),
            "writing answers.jsonl: answers.jsonl: no such file"
        );
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(super::error_text(&e), "outer: inner");
    }
}
