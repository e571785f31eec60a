//! `pctrain`: fine-tune LLMs on instructions re-expressed as pseudo-code.

mod data_cmd;
mod eval_cmd;
mod train_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
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
    train: train_cmd::TrainArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Look at training samples: `data inspect`, `data stats`.
    #[command(subcommand)]
    Data(data_cmd::DataCommand),
    /// Mean cross-entropy of a model on the trained tokens of a data set; the last line is JSON
    /// {"loss", "tokens"}.
    Eval(eval_cmd::EvalArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("PCTRAIN_LOG").unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Data(cmd)) => data_cmd::run(cmd),
        Some(Command::Eval(args)) => eval_cmd::run(args),
        None => train_cmd::run(cli.train),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
