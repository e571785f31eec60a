//! The pipeline over a data set: for each user turn without pseudo-code, generate, check the
//! structure, let the judge check faithfulness, repair what fails (up to `max_repairs` rounds),
//! then keep the record (without pseudo-code where a turn failed) or drop it. Records are
//! processed by `concurrency` workers and appended to the output as each finishes, so a rerun
//! after any stop skips the ids already written (to the output, or to the rejects file beside it).

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};

use serde::Serialize;
use serde_json::{json, Value};

use super::check::check_structure;
use super::prompts::{Prompts, Stage};
use super::teacher::{Teacher, TeacherError};
use crate::error::{PseudoError, Result};
use pctrain_data::reader::{cut_torn_tail, written_lines, RecordReader};
use pctrain_data::record::{Record, Role};

/// What happens to a record whose pseudo-code failed every round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Written without pseudo-code for the failed turns.
    Keep,
    /// Written to the rejects file instead of the output.
    Drop,
}

/// How the pipeline runs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub max_repairs: usize,
    pub on_failure: OnFailure,
    pub concurrency: usize,
}

/// What a run did (also written as JSON beside the output).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Records read (those done by an earlier run included).
    pub records: u64,
    /// Records an earlier run had written, skipped.
    pub already_done: u64,
    /// Records whose every user turn already had pseudo-code, written unchanged.
    pub already_had_pseudo_code: u64,
    /// User turns sent to the teacher.
    pub generated: u64,
    /// Turns whose first pseudo-code passed both checks.
    pub passed_first_time: u64,
    /// Turns that passed after one or more repairs.
    pub repaired: u64,
    /// Turns that failed every round (or whose requests failed).
    pub failed: u64,
    /// Of those, turns whose request the teacher refused (400, 413, 422: e.g. too long).
    pub refused: u64,
    /// Records written with a failed turn left without pseudo-code.
    pub kept_without: u64,
    /// Records written to the rejects file.
    pub dropped: u64,
    /// Records left for a later run because the request budget ran out.
    pub deferred: u64,
    /// Records left for a later run because the teacher failed (down, overloaded, nonsense) after
    /// its retries.
    pub unfinished: u64,
    /// The last such failure.
    pub last_teacher_error: Option<String>,
    pub requests: u64,
    pub retries: u64,
    /// Token counts, when the server reports them.
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub budget_exhausted: bool,
    pub teacher: String,
}

/// One turn's result.
struct TurnResult {
    pseudo_code: Option<String>,
    rounds: usize,
    reasons: Vec<String>,
    /// The teacher refused the turn's request (it failed for that).
    refused: bool,
}

/// What became of one record.
enum Outcome {
    /// A line for the output, and the turns' results for the counts.
    Write {
        line: Value,
        turns: Vec<TurnResult>,
        dropped: bool,
    },
    /// Not written: the teacher could not be used (the budget, a failure, a refusal).
    Unfinished(TeacherError),
}

/// The rejects file beside `output`: `NAME.rejected.jsonl`.
pub fn rejects_path(output: &Path) -> PathBuf {
    sibling(output, "rejected.jsonl")
}

/// The summary file beside `output`: `NAME.summary.json`.
pub fn summary_path(output: &Path) -> PathBuf {
    sibling(output, "summary.json")
}

fn sibling(output: &Path, suffix: &str) -> PathBuf {
    let stem = output
        .file_stem()
        .map_or_else(|| "output".into(), |s| s.to_string_lossy().into_owned());
    output.with_file_name(format!("{stem}.{suffix}"))
}

/// The ids in a JSONL file written by an earlier run (see [`written_lines`]); a line a stop cut
/// short is removed.
fn done_ids(path: &Path, ids: &mut HashSet<String>) -> Result<()> {
    for (_, v) in written_lines(path, "not a record this pipeline wrote")? {
        if let Some(id) = v.get("id").and_then(Value::as_str) {
            ids.insert(id.to_string());
        }
    }
    Ok(cut_torn_tail(path)?)
}

/// Runs the pipeline over `inputs` into `output`, calling `progress` after each record.
pub fn run(
    inputs: &[PathBuf],
    output: &Path,
    teacher: &Teacher,
    prompts: &Prompts,
    cfg: &RunConfig,
    mut progress: impl FnMut(&Summary),
) -> Result<Summary> {
    let inputs = pctrain_hub::data_files(inputs)?;
    let rejects = rejects_path(output);
    let mut done = HashSet::new();
    done_ids(output, &mut done)?;
    done_ids(&rejects, &mut done)?;
    let open = |p: &Path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| PseudoError::io(p, e))
    };
    let (mut out, mut rej) = (open(output)?, open(&rejects)?);
    let mut summary = Summary {
        teacher: teacher.model().to_string(),
        ..Summary::default()
    };
    let source = Mutex::new(inputs.iter().flat_map(|p| match RecordReader::open(p) {
        Ok(r) => Box::new(r.map(|r| r.map_err(PseudoError::from)))
            as Box<dyn Iterator<Item = Result<Record>> + Send>,
        Err(e) => Box::new(std::iter::once(Err(e.into()))),
    }));
    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel::<Result<(Record, Option<Outcome>)>>();
    let result = std::thread::scope(|scope| -> Result<()> {
        for w in 0..cfg.concurrency.max(1) {
            let tx = tx.clone();
            let (source, stop, done) = (&source, &stop, &done);
            scope.spawn(move || loop {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let next = source.lock().map(|mut s| s.next()).unwrap_or(None);
                let message = match next {
                    None => return,
                    Some(Err(e)) => Err(e),
                    Some(Ok(record)) if done.contains(&record.id) => Ok((record, None)),
                    Some(Ok(record)) => {
                        let outcome = process(&record, teacher, prompts, cfg, w as u64);
                        Ok((record, Some(outcome)))
                    }
                };
                if tx.send(message).is_err() {
                    return;
                }
            });
        }
        drop(tx);
        // After an error, records still in flight are written as they finish; then it is
        // returned.
        let mut failure: Option<PseudoError> = None;
        for message in rx {
            let (record, outcome) = match message {
                Ok(m) => m,
                Err(e) => {
                    stop.store(true, Ordering::SeqCst);
                    failure.get_or_insert(e);
                    continue;
                }
            };
            summary.records += 1;
            match outcome {
                None => summary.already_done += 1,
                Some(Outcome::Unfinished(TeacherError::Budget)) => {
                    summary.deferred += 1;
                    summary.budget_exhausted = true;
                    stop.store(true, Ordering::SeqCst);
                }
                // A refusal fails its turn in `pseudo_code_for`; none arrives here.
                Some(Outcome::Unfinished(
                    TeacherError::Failed(reason) | TeacherError::Refused(reason),
                )) => {
                    summary.unfinished += 1;
                    summary.last_teacher_error = Some(reason);
                }
                Some(Outcome::Unfinished(TeacherError::Fatal(reason))) => {
                    summary.unfinished += 1;
                    stop.store(true, Ordering::SeqCst);
                    failure.get_or_insert(PseudoError::Teacher {
                        url: teacher.shown_url().to_string(),
                        message: format!("{reason}; check --teacher, --model and the API key"),
                    });
                }
                Some(Outcome::Write {
                    line,
                    turns,
                    dropped,
                }) => {
                    if turns.is_empty() {
                        summary.already_had_pseudo_code += 1;
                    }
                    for t in &turns {
                        summary.generated += 1;
                        match (&t.pseudo_code, t.rounds) {
                            (Some(_), 1) => summary.passed_first_time += 1,
                            (Some(_), _) => summary.repaired += 1,
                            (None, _) => summary.failed += 1,
                        }
                        summary.refused += u64::from(t.refused);
                    }
                    let failed = turns.iter().any(|t| t.pseudo_code.is_none());
                    let (file, path) = if dropped {
                        summary.dropped += 1;
                        (&mut rej, rejects.as_path())
                    } else {
                        summary.kept_without += u64::from(failed);
                        (&mut out, output)
                    };
                    // One write a record, so that a stop leaves at most one partial last line.
                    let text = line.to_string() + "\n";
                    if let Err(e) = file.write_all(text.as_bytes()).and_then(|_| file.flush()) {
                        stop.store(true, Ordering::SeqCst);
                        failure.get_or_insert(PseudoError::io(path, e));
                    }
                }
            }
            let _ = record;
            fill_usage(&mut summary, teacher);
            progress(&summary);
        }
        failure.map_or(Ok(()), Err)
    });
    fill_usage(&mut summary, teacher);
    let text = serde_json::to_string_pretty(&summary).expect("a summary serialises") + "\n";
    let path = summary_path(output);
    write_file_atomically(&path, text.as_bytes())?;
    result?;
    Ok(summary)
}

fn fill_usage(summary: &mut Summary, teacher: &Teacher) {
    let u = &teacher.usage;
    summary.requests = u.requests.load(Ordering::Relaxed);
    summary.retries = u.retries.load(Ordering::Relaxed);
    if u.tokens_reported.load(Ordering::Relaxed) {
        summary.prompt_tokens = Some(u.prompt_tokens.load(Ordering::Relaxed));
        summary.completion_tokens = Some(u.completion_tokens.load(Ordering::Relaxed));
    }
}

pub(crate) fn write_file_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    pctrain_core::fs::write_atomic(path, bytes).map_err(|e| PseudoError::io(path, e))
}

/// Pseudo-code for every user turn of `record` that lacks it.
fn process(
    record: &Record,
    teacher: &Teacher,
    prompts: &Prompts,
    cfg: &RunConfig,
    worker: u64,
) -> Outcome {
    let users: Vec<&str> = record
        .messages
        .iter()
        .filter(|m| m.role == Role::User)
        .map(|m| m.content.as_str())
        .collect();
    let mut pseudo_code = record.pseudo_code.clone();
    let mut turns = Vec::new();
    let mut meta = Vec::new();
    for (i, instruction) in users.iter().enumerate() {
        if pseudo_code[i].is_some() {
            continue;
        }
        let salt = pctrain_core::hash::stable_hash(worker, record.id.as_bytes()) ^ i as u64;
        let result = match pseudo_code_for(instruction, teacher, prompts, cfg.max_repairs, salt) {
            Ok(r) => r,
            Err(e) => return Outcome::Unfinished(e),
        };
        meta.push(json!({
            "turn": i,
            "rounds": result.rounds,
            "verdict": if result.pseudo_code.is_some() { "faithful" } else { "failed" },
            "reasons": result.reasons,
        }));
        pseudo_code[i] = result.pseudo_code.clone();
        turns.push(result);
    }
    let failed = turns.iter().any(|t| t.pseudo_code.is_none());
    let mut line = Record {
        pseudo_code,
        ..record.clone()
    }
    .to_json();
    if !turns.is_empty() {
        line["pseudo_code_meta"] = json!({"teacher": teacher.model(), "turns": meta});
    }
    Outcome::Write {
        line,
        turns,
        dropped: failed && cfg.on_failure == OnFailure::Drop,
    }
}

/// Generate, check, judge and repair one instruction's pseudo-code. A turn fails on its
/// pseudo-code (structure, faithfulness, a judge without a verdict) or when the teacher refuses
/// its request; `Err` when the teacher could not be used.
fn pseudo_code_for(
    instruction: &str,
    teacher: &Teacher,
    prompts: &Prompts,
    max_repairs: usize,
    salt: u64,
) -> std::result::Result<TurnResult, TeacherError> {
    let mut reasons: Vec<String> = Vec::new();
    match rounds(
        instruction,
        teacher,
        prompts,
        max_repairs,
        salt,
        &mut reasons,
    ) {
        Err(TeacherError::Refused(why)) => {
            reasons.push(format!("the teacher refused the request: {why}"));
            Ok(TurnResult {
                pseudo_code: None,
                rounds: reasons.len(),
                reasons,
                refused: true,
            })
        }
        other => other,
    }
}

/// The rounds of [`pseudo_code_for`], each failed round's reason pushed to `reasons`.
fn rounds(
    instruction: &str,
    teacher: &Teacher,
    prompts: &Prompts,
    max_repairs: usize,
    salt: u64,
    reasons: &mut Vec<String>,
) -> std::result::Result<TurnResult, TeacherError> {
    let mut previous = String::new();
    for round in 1..=max_repairs + 1 {
        let (stage, code, why) = match reasons.last() {
            None => (Stage::Generate, "", ""),
            Some(r) => (Stage::Repair, previous.as_str(), r.as_str()),
        };
        let messages = prompts
            .messages(stage, instruction, code, why)
            .map_err(|e| TeacherError::Fatal(e.to_string()))?;
        let reply = teacher.chat(&messages, salt)?;
        previous = reply.text.clone();
        if reply.truncated {
            reasons
                .push("the answer was cut off (finish_reason \"length\"); write it shorter".into());
            continue;
        }
        let checked = match check_structure(&reply.text) {
            Ok(c) => c,
            Err(e) => {
                reasons.push(e);
                continue;
            }
        };
        match judge(instruction, &checked.text, teacher, prompts, salt)? {
            Verdict::Faithful => {
                return Ok(TurnResult {
                    pseudo_code: Some(checked.text),
                    rounds: round,
                    reasons: std::mem::take(reasons),
                    refused: false,
                })
            }
            Verdict::Unfaithful(why) => {
                reasons.push(format!("the judge found it unfaithful: {why}"))
            }
            Verdict::None(why) => {
                reasons.push(why);
                return Ok(TurnResult {
                    pseudo_code: None,
                    rounds: round,
                    reasons: std::mem::take(reasons),
                    refused: false,
                });
            }
        }
    }
    Ok(TurnResult {
        pseudo_code: None,
        rounds: max_repairs + 1,
        reasons: std::mem::take(reasons),
        refused: false,
    })
}

/// What the judge said.
enum Verdict {
    Faithful,
    Unfaithful(String),
    /// No verdict in its tries; why.
    None(String),
}

/// Tries of the judge for one pseudo-code when it answers something other than a verdict.
const JUDGE_TRIES: usize = 2;

fn judge(
    instruction: &str,
    pseudo_code: &str,
    teacher: &Teacher,
    prompts: &Prompts,
    salt: u64,
) -> std::result::Result<Verdict, TeacherError> {
    let messages = prompts
        .messages(Stage::Judge, instruction, pseudo_code, "")
        .map_err(|e| TeacherError::Fatal(e.to_string()))?;
    let mut last = String::new();
    for _ in 0..JUDGE_TRIES {
        let reply = teacher.chat(&messages, salt)?;
        match parse_verdict(&reply.text) {
            Ok(None) => return Ok(Verdict::Faithful),
            Ok(Some(why)) => return Ok(Verdict::Unfaithful(why)),
            Err(e) => last = e,
        }
    }
    Ok(Verdict::None(format!(
        "the judge gave no verdict in {JUDGE_TRIES} tries: {last}"
    )))
}

/// Reads `{"verdict": "faithful" | "unfaithful", "reason": "..."}` from a judge's answer (the
/// object may be fenced or surrounded by text): `Ok(None)` for faithful, `Ok(Some(reason))` for
/// unfaithful.
pub fn parse_verdict(answer: &str) -> std::result::Result<Option<String>, String> {
    let (Some(start), Some(end)) = (answer.find('{'), answer.rfind('}')) else {
        return Err(format!(
            "the answer is not JSON: {:?}",
            answer.chars().take(120).collect::<String>()
        ));
    };
    let v: Value = serde_json::from_str(answer.get(start..=end).unwrap_or(""))
        .map_err(|e| format!("the answer is not valid JSON: {e}"))?;
    let reason = v
        .get("reason")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    match v
        .get("verdict")
        .and_then(Value::as_str)
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("faithful") => Ok(None),
        Some("unfaithful") => Ok(Some(if reason.is_empty() {
            "no reason given".into()
        } else {
            reason
        })),
        _ => Err("the JSON has no verdict \"faithful\" or \"unfaithful\"".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_are_read_from_json_in_any_wrapping() {
        assert_eq!(
            parse_verdict(r#"{"verdict": "faithful", "reason": "ok"}"#),
            Ok(None)
        );
        assert_eq!(
            parse_verdict(
                "```json\n{\"verdict\": \"Unfaithful\", \"reason\": \"adds a limit\"}\n```"
            ),
            Ok(Some("adds a limit".into()))
        );
        assert!(parse_verdict("Looks good to me!")
            .unwrap_err()
            .contains("not JSON"));
        assert!(parse_verdict(r#"{"verdict": "maybe"}"#).is_err());
    }

    #[test]
    fn a_torn_last_line_is_cut_and_its_id_not_counted_done() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, "{\"id\": \"a\"}\n{\"id\": \"b\"}\n{\"id\": \"c\"}").unwrap();
        let mut ids = HashSet::new();
        done_ids(&path, &mut ids).unwrap();
        assert_eq!(ids, HashSet::from(["a".to_string(), "b".to_string()]));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"id\": \"a\"}\n{\"id\": \"b\"}\n"
        );
        assert_eq!(rejects_path(&path), dir.path().join("out.rejected.jsonl"));
        // A bad line in the middle is not a torn end: an error, and nothing is cut.
        std::fs::write(&path, "{\"id\": \"a\"}\nnot json\n{\"id\": \"b\"}\n").unwrap();
        let e = done_ids(&path, &mut HashSet::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains(":2:"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 3);
    }
}
