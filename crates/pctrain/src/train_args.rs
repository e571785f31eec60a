//! The training command's flags: the settings' own (declared on [`Settings`]), and those that
//! say what to do with a run folder. Each settings flag given overrides the config file, the
//! preset and the defaults.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::settings::{given_on_command_line, Settings};

/// Flags of the training command. Each settings flag left out keeps the value of `--config`, of
/// the preset, or the built-in default, in that order.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// A TOML file of settings (keys as these flags, with `_`); flags override it.
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
    /// Train every weight instead of a LoRA adapter (as --method full).
    #[arg(long, conflicts_with = "method")]
    full: bool,
    /// Continue from the newest checkpoint in the run folder, or from the one given.
    #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "CHECKPOINT")]
    pub resume: Option<String>,
    /// Start afresh in a run folder that has checkpoints, removing them.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
}

impl TrainArgs {
    /// The settings flags given in `matches` (the command line these arguments came from), as a
    /// settings layer.
    pub fn overrides(&self, matches: &clap::ArgMatches) -> Result<toml::Table> {
        let mut layer = given_on_command_line(&self.settings, matches)?;
        if self.full {
            layer.insert("method".into(), "full".into());
        }
        Ok(layer)
    }
}

#[cfg(test)]
mod tests {
    use clap::{Args, FromArgMatches};

    use super::*;

    fn parse(argv: &[&str]) -> (TrainArgs, clap::ArgMatches) {
        let command = TrainArgs::augment_args(clap::Command::new("pctrain"));
        let matches = command
            .try_get_matches_from(std::iter::once("pctrain").chain(argv.iter().copied()))
            .unwrap();
        (TrainArgs::from_arg_matches(&matches).unwrap(), matches)
    }

    #[test]
    fn only_the_flags_given_make_the_layer() {
        let (args, matches) = parse(&[
            "--seq-len",
            "512",
            "--no-packing",
            "--lora-r",
            "8",
            "--lora-targets",
            "q,v",
            "--data",
            "a.jsonl",
            "b.jsonl",
            "--full",
        ]);
        let layer = args.overrides(&matches).unwrap();
        let expected: toml::Table = toml::from_str(
            "seq_len = 512\npacking = false\ndata = [\"a.jsonl\", \"b.jsonl\"]\n\
             method = \"full\"\n[lora]\nr = 8\ntargets = [\"q\", \"v\"]\n",
        )
        .unwrap();
        assert_eq!(layer, expected);
        let (args, matches) = parse(&[]);
        assert!(args.overrides(&matches).unwrap().is_empty());
    }

    #[test]
    fn every_settings_key_has_its_flag() {
        let command = TrainArgs::augment_args(clap::Command::new("pctrain"));
        let ids: Vec<String> = command
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .collect();
        let table = toml::Table::try_from(Settings::default()).unwrap();
        let mut keys = Vec::new();
        for (key, value) in table {
            match value {
                toml::Value::Table(t) => keys.extend(t.keys().map(|k| format!("{key}_{k}"))),
                _ => keys.push(key),
            }
        }
        // Keys whose default is none are absent from the table; they have flags too.
        keys.extend(["method", "lr", "max_steps", "output", "tokenizer"].map(String::from));
        for key in keys {
            assert!(ids.contains(&key), "no flag for the key {key}");
        }
    }

    #[test]
    fn full_conflicts_with_method() {
        let command = TrainArgs::augment_args(clap::Command::new("pctrain"));
        let err = command
            .try_get_matches_from(["pctrain", "--full", "--method", "lora"])
            .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }
}
