//! `pctrain eval --task ifeval`: IFEval's prompts answered by a model (or answers given in a
//! file), scored strictly and loosely.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use pctrain_data::{Message, Role};
use pctrain_eval::ifeval::{read_responses, score, summarize, table, Scored, Summary, Task};
use pctrain_eval::{GenerateOptions, Generator};
use pctrain_hub::{dataset_files, HubDataset};

use crate::generate_cmd::{answers_bar, write_jsonl};

/// The hub dataset IFEval's prompts come from, and its file.
pub const IFEVAL_DATASET: &str = "google/IFEval:ifeval_input_data.jsonl";

/// The task data: `--task-data`, else google/IFEval from the hub (or its cache).
pub fn load_task(task_data: Option<&Path>) -> Result<Task> {
    let path = match task_data {
        Some(p) => p.to_path_buf(),
        None => {
            let dataset = HubDataset::parse(IFEVAL_DATASET).expect("a valid dataset spec");
            dataset_files(&dataset)
                .context("fetching IFEval's prompts (or give them with --task-data FILE)")?
                .remove(0)
        }
    };
    Ok(Task::read(&path)?)
}

/// An answer to a task prompt: sample `sample` of the answers to `prompt`.
#[derive(Debug, Clone)]
pub struct Answered {
    pub prompt: String,
    pub sample: usize,
    pub response: String,
}

/// Answers the first `limit` prompts of `task` with `generator` (`opts.samples` answers each),
/// one user turn each: in task order, each prompt's samples in order.
pub fn answer_task(
    generator: &Generator,
    task: &Task,
    limit: Option<usize>,
    opts: &GenerateOptions,
    progress: bool,
) -> Result<Vec<Answered>> {
    let n = limit.unwrap_or(task.prompts.len()).min(task.prompts.len());
    let prompts: Vec<Vec<Message>> = task.prompts[..n]
        .iter()
        .map(|p| vec![Message::new(Role::User, p.prompt.as_str())])
        .collect();
    let bar = if progress {
        answers_bar(n * opts.samples.max(1))
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_message("ifeval");
    let answers = generator.answer_all(&prompts, opts, |k| bar.set_position(k as u64))?;
    bar.finish_and_clear();
    Ok(task.prompts[..n]
        .iter()
        .zip(answers)
        .flat_map(|(p, samples)| {
            samples.into_iter().enumerate().map(|(sample, a)| Answered {
                prompt: p.prompt.clone(),
                sample,
                response: a.response,
            })
        })
        .collect())
}

/// Scores answers against `task` (each prompt must be one of the task's).
pub fn score_answers(task: &Task, answers: &[Answered]) -> Vec<Scored> {
    let by_prompt: std::collections::HashMap<&str, usize> = task
        .prompts
        .iter()
        .enumerate()
        .map(|(i, p)| (p.prompt.as_str(), i))
        .collect();
    answers
        .iter()
        .filter_map(|a| {
            by_prompt
                .get(a.prompt.as_str())
                .map(|&i| score(&task.prompts[i], a.sample, &a.response))
        })
        .collect()
}

/// Scores the responses of `responses` (`{"prompt", "response"}` lines, with `"sample"` when a
/// prompt has several).
pub fn score_file(task: &Task, responses: &Path) -> Result<Vec<Scored>> {
    Ok(read_responses(responses, task)?
        .into_iter()
        .map(|r| score(r.prompt, r.sample, &r.response))
        .collect())
}

/// Prints the table by instruction type (stderr) and the summary as the last stdout line;
/// writes the per-prompt report when asked.
pub fn report(scored: &[Scored], report: Option<&PathBuf>) -> Result<Summary> {
    let (summary, by_type) = summarize(scored);
    eprint!("{}", table(&by_type));
    if let Some(path) = report {
        let lines: Vec<serde_json::Value> = scored
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<_, _>>()?;
        write_jsonl(path, &lines)?;
    }
    println!("{}", serde_json::to_string(&summary)?);
    Ok(summary)
}

/// `OUT.jsonl` -> `OUT.responses.jsonl`: where the answers scored in `OUT` are kept.
pub fn responses_beside(report: &Path) -> PathBuf {
    let stem = report
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "ifeval".into());
    report.with_file_name(format!("{stem}.responses.jsonl"))
}
