//! IFEval (Zhou et al., 2023): prompts with verifiable instructions, and the score of responses
//! to them, written here after the reference evaluation's behaviour. A response is checked
//! strictly (as it is) and loosely (it passes if any of eight variants does: as it is, without
//! `*`, without its first and/or last line); accuracy is the share of prompts whose every
//! instruction passes, and the share of instructions that pass. Responses may hold several
//! samples a prompt: each is scored, the accuracies are those of each prompt's first sample, and
//! pass@1 and pass@k say how often a sample, and any of k samples, passes.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use pctrain_data::constraints::{check_constraints, read_constraints};
pub use pctrain_data::constraints::{count_sentences, detect_language, Instruction, IDS};

/// Bad task data or responses, by file and line.
#[derive(Debug, thiserror::Error)]
pub enum IfEvalError {
    #[error("{}:{line}: {message}", path.display())]
    Input {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One IFEval prompt and its instructions.
#[derive(Debug, Clone)]
pub struct TaskPrompt {
    pub key: Value,
    pub prompt: String,
    pub instruction_ids: Vec<String>,
    pub instructions: Vec<Instruction>,
}

/// The prompts of the task, in the order of their file.
#[derive(Debug, Clone)]
pub struct Task {
    pub prompts: Vec<TaskPrompt>,
}

/// Each JSON object of a JSONL file, with its line number; blank lines skipped.
fn json_lines(path: &Path) -> Result<Vec<(usize, Value)>, IfEvalError> {
    let io = |source| IfEvalError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line).map_err(|e| IfEvalError::Input {
            path: path.to_path_buf(),
            line: i + 1,
            message: format!("not JSON: {e}"),
        })?;
        out.push((i + 1, v));
    }
    Ok(out)
}

impl Task {
    /// Reads task data in IFEval's shape: one `{"key", "prompt", "instruction_id_list",
    /// "kwargs"}` a line.
    pub fn read(path: &Path) -> Result<Task, IfEvalError> {
        let mut prompts = Vec::new();
        for (line, v) in json_lines(path)? {
            let err = |message: String| IfEvalError::Input {
                path: path.to_path_buf(),
                line,
                message,
            };
            let prompt = match v.get("prompt") {
                Some(Value::String(p)) if !p.trim().is_empty() => p.clone(),
                Some(Value::String(_)) => return Err(err("field `prompt` is empty".into())),
                _ => return Err(err("field `prompt`: expected a string".into())),
            };
            let obj = v
                .as_object()
                .ok_or_else(|| err("expected a JSON object".into()))?;
            if !matches!(obj.get("instruction_id_list"), Some(Value::Array(_))) {
                return Err(err("field `instruction_id_list`: expected a list".into()));
            }
            let constraints = read_constraints(obj).map_err(err)?;
            let instructions = check_constraints(&constraints).map_err(err)?;
            let ids = constraints.into_iter().map(|c| c.id).collect();
            prompts.push(TaskPrompt {
                key: v.get("key").cloned().unwrap_or(Value::Null),
                prompt,
                instruction_ids: ids,
                instructions,
            });
        }
        Ok(Task { prompts })
    }
}

/// A response to one of the task's prompts: sample `sample` of its answers.
#[derive(Debug, Clone)]
pub struct Response<'t> {
    pub prompt: &'t TaskPrompt,
    pub sample: usize,
    pub response: String,
}

/// Reads `{"prompt", "response"}` lines (with `"sample": N` when a prompt has several answers)
/// and pairs each with its task prompt: in task order, each prompt's samples in order (a later
/// line for the same prompt and sample wins, as in the reference).
pub fn read_responses<'t>(path: &Path, task: &'t Task) -> Result<Vec<Response<'t>>, IfEvalError> {
    let by_prompt: HashMap<&str, usize> = task
        .prompts
        .iter()
        .enumerate()
        .map(|(i, p)| (p.prompt.as_str(), i))
        .collect();
    let mut responses: BTreeMap<(usize, usize), String> = BTreeMap::new();
    for (line, v) in json_lines(path)? {
        let err = |message: String| IfEvalError::Input {
            path: path.to_path_buf(),
            line,
            message,
        };
        let Some(prompt) = v.get("prompt").and_then(Value::as_str) else {
            return Err(err("field `prompt`: expected a string".into()));
        };
        if prompt.trim().is_empty() {
            return Err(err("field `prompt` is empty".into()));
        }
        let Some(response) = v.get("response").and_then(Value::as_str) else {
            return Err(err("field `response`: expected a string".into()));
        };
        let sample = match v.get("sample") {
            None => 0,
            Some(s) => s
                .as_u64()
                .ok_or_else(|| err(format!("field `sample`: {s} is not a sample number")))?
                as usize,
        };
        let Some(&i) = by_prompt.get(prompt) else {
            let start: String = prompt.chars().take(60).collect();
            return Err(err(format!(
                "the prompt {start:?}... is not one of the task's prompts"
            )));
        };
        responses.insert((i, sample), response.to_string());
    }
    Ok(responses
        .into_iter()
        .map(|((i, sample), response)| Response {
            prompt: &task.prompts[i],
            sample,
            response,
        })
        .collect())
}

/// The checks of one response: an entry per instruction, strict and loose.
#[derive(Debug, Clone, Serialize)]
pub struct Scored {
    pub key: Value,
    pub prompt: String,
    /// Which of the prompt's samples this is (0 when it has one).
    pub sample: usize,
    pub instruction_id_list: Vec<String>,
    pub strict: Vec<bool>,
    pub loose: Vec<bool>,
}

/// The eight variants of a response the loose score tries.
fn loose_variants(response: &str) -> [String; 8] {
    let lines: Vec<&str> = response.split('\n').collect();
    let join = |l: &[&str]| l.join("\n").trim().to_string();
    let n = lines.len();
    let first = join(&lines[1.min(n)..]);
    let last = join(&lines[..n.saturating_sub(1)]);
    let both = if n >= 2 {
        join(&lines[1..n - 1])
    } else {
        String::new()
    };
    let unstar = |s: &str| s.replace('*', "");
    [
        response.to_string(),
        unstar(response),
        first.clone(),
        last.clone(),
        both.clone(),
        unstar(&first),
        unstar(&last),
        unstar(&both),
    ]
}

/// Checks `response`, sample `sample` of the answers to `p`, against each of `p`'s
/// instructions.
pub fn score(p: &TaskPrompt, sample: usize, response: &str) -> Scored {
    let passes = |r: &str, i: &Instruction| !r.trim().is_empty() && i.check(r);
    let variants = loose_variants(response);
    Scored {
        key: p.key.clone(),
        prompt: p.prompt.clone(),
        sample,
        instruction_id_list: p.instruction_ids.clone(),
        strict: p.instructions.iter().map(|i| passes(response, i)).collect(),
        loose: p
            .instructions
            .iter()
            .map(|i| variants.iter().any(|r| passes(r, i)))
            .collect(),
    }
}

/// The four accuracies (fractions) of each prompt's first sample, the count of prompts scored,
/// and with several samples a prompt, how often they pass.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub prompts: usize,
    pub prompt_strict: f64,
    pub inst_strict: f64,
    pub prompt_loose: f64,
    pub inst_loose: f64,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub passes: Option<Passes>,
}

/// How often samples pass (every instruction of their prompt), strictly and loosely: pass@1 is
/// the mean over all samples, pass@k the chance that any of `k` samples of a prompt passes (the
/// unbiased estimate of Chen et al., 2021, over each prompt's `n >= k` samples), `k` being the
/// fewest samples any prompt has.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Passes {
    #[serde(rename = "samples")]
    pub k: usize,
    pub prompt_strict_pass_at_1: f64,
    pub prompt_loose_pass_at_1: f64,
    pub prompt_strict_pass_at_k: f64,
    pub prompt_loose_pass_at_k: f64,
}

/// Strict and loose accuracy of one instruction type: `(passed strictly, passed loosely, of)`.
pub type TypeScore = (usize, usize, usize);

/// `1 - C(n - c, k) / C(n, k)`: the chance that `k` of `n` samples, `c` of which pass, hold one
/// that passes.
fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    if n - c < k {
        return 1.0;
    }
    1.0 - (n - c + 1..=n).fold(1.0, |p, i| p * (1.0 - k as f64 / i as f64))
}

/// The accuracies of `scored` (grouped by prompt as [`read_responses`] orders them: a prompt's
/// samples together, the first one first), and per instruction id the counts behind them.
pub fn summarize(scored: &[Scored]) -> (Summary, BTreeMap<String, TypeScore>) {
    let mut by_type: BTreeMap<String, TypeScore> = BTreeMap::new();
    let (mut ps, mut pl, mut is, mut il, mut total) = (0, 0, 0, 0, 0);
    let groups: Vec<&[Scored]> = scored
        .chunk_by(|a, b| a.prompt == b.prompt && b.sample > a.sample)
        .collect();
    for group in &groups {
        let s = &group[0];
        ps += usize::from(s.strict.iter().all(|&b| b));
        pl += usize::from(s.loose.iter().all(|&b| b));
        for ((id, &st), &lo) in s.instruction_id_list.iter().zip(&s.strict).zip(&s.loose) {
            let e = by_type.entry(id.clone()).or_default();
            e.0 += usize::from(st);
            e.1 += usize::from(lo);
            e.2 += 1;
            is += usize::from(st);
            il += usize::from(lo);
            total += 1;
        }
    }
    let frac = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let n = groups.len();
    let k = groups.iter().map(|g| g.len()).min().unwrap_or(0);
    let passes = (groups.iter().any(|g| g.len() > 1)).then(|| {
        let rate = |pass: fn(&Scored) -> bool, k: usize| {
            let sum: f64 = groups
                .iter()
                .map(|g| pass_at_k(g.len(), g.iter().filter(|s| pass(s)).count(), k))
                .sum();
            sum / n as f64
        };
        let strict = |s: &Scored| s.strict.iter().all(|&b| b);
        let loose = |s: &Scored| s.loose.iter().all(|&b| b);
        Passes {
            k,
            prompt_strict_pass_at_1: rate(strict, 1),
            prompt_loose_pass_at_1: rate(loose, 1),
            prompt_strict_pass_at_k: rate(strict, k),
            prompt_loose_pass_at_k: rate(loose, k),
        }
    });
    (
        Summary {
            prompts: n,
            prompt_strict: frac(ps, n),
            inst_strict: frac(is, total),
            prompt_loose: frac(pl, n),
            inst_loose: frac(il, total),
            passes,
        },
        by_type,
    )
}

/// The table of [`summarize`]'s counts: an instruction type a line, strict and loose accuracy.
pub fn table(by_type: &BTreeMap<String, TypeScore>) -> String {
    let mut out = format!(
        "{:46} {:>6} {:>7} {:>7}\n",
        "instruction", "count", "strict", "loose"
    );
    for (id, (s, l, n)) in by_type {
        let pct = |x: usize| 100.0 * x as f64 / *n as f64;
        out.push_str(&format!(
            "{id:46} {n:>6} {:>6.1}% {:>6.1}%\n",
            pct(*s),
            pct(*l)
        ));
    }
    out
}

#[cfg(test)]
mod tests;
