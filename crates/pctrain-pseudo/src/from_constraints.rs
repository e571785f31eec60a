//! Pseudo-code written from a prompt's verifiable constraints, without a teacher
//! (`pctrain data pseudo-code --from-constraints`): an entry function named after the task, a
//! docstring stating the goal with each constraint as a parameter, one commented step per
//! constraint, and the call with its values.

use std::path::{Path, PathBuf};

use super::check::check_structure;
use super::run::write_file_atomically;
use super::steps::{self, py_str, step_of, Names};
use crate::error::{PseudoError, Result};
use pctrain_data::constraints::{check_constraints, Constraint};
use pctrain_data::reader::RecordReader;
use pctrain_data::record::Role;
use pctrain_data::DataError;

/// Longest goal, in characters, the docstring and the call carry.
const GOAL_CHARS: usize = 160;

/// Words left out of the entry function's name.
const STOP_WORDS: [&str; 40] = [
    "a", "an", "the", "of", "about", "for", "to", "and", "or", "in", "on", "at", "with", "by",
    "from", "your", "you", "that", "this", "these", "is", "are", "be", "it", "its", "please", "me",
    "i", "my", "we", "our", "can", "could", "would", "should", "some", "as", "into", "so", "than",
];

/// Python's keywords, which a one-word entry name must not be.
const KEYWORDS: [&str; 35] = [
    "false", "none", "true", "and", "as", "assert", "async", "await", "break", "class", "continue",
    "def", "del", "elif", "else", "except", "finally", "for", "from", "global", "if", "import",
    "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return", "try", "while",
    "with", "yield",
];

/// The task a prompt states: its first sentence (of its first line, control characters made
/// spaces), cut to [`GOAL_CHARS`] at a word boundary.
pub fn goal_of(prompt: &str) -> String {
    let first = prompt.trim().lines().next().unwrap_or("");
    let line: String = first
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let line = line.trim();
    let mut end = line.len();
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let ends_sentence = matches!(b, b'.' | b'!' | b'?')
            && bytes.get(i + 1).is_none_or(|c| c.is_ascii_whitespace());
        if ends_sentence {
            end = i + 1;
            break;
        }
    }
    let sentence = &line[..end];
    if sentence.chars().count() <= GOAL_CHARS {
        return sentence.to_string();
    }
    let cut: String = sentence.chars().take(GOAL_CHARS).collect();
    let cut = match cut.rfind(' ') {
        Some(i) if i > 0 => &cut[..i],
        _ => cut.as_str(),
    };
    format!("{}...", cut.trim_end_matches([',', ';', ':']))
}

/// A Python name for the task: up to four of the goal's words, small words left out (`_task`
/// added to a name the code uses for something else).
pub fn entry_name(goal: &str) -> String {
    let words: Vec<String> = goal
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .filter(|w| !STOP_WORDS.contains(&w.as_str()))
        .take(4)
        .collect();
    let mut name = words.join("_");
    if name.is_empty() {
        return "answer_request".into();
    }
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        name = format!("task_{name}");
    }
    if KEYWORDS.contains(&name.as_str()) || steps::is_used_name(&name) {
        name.push_str("_task");
    }
    name
}

/// The pseudo-code of `prompt` under `constraints`, in the style of the teacher pipeline's
/// (it passes the same structure check). `Err` names the constraint that cannot be read.
pub fn pseudo_code_from_constraints(
    prompt: &str,
    constraints: &[Constraint],
) -> std::result::Result<String, String> {
    let goal = goal_of(prompt);
    let entry = entry_name(&goal);
    let mut names = Names::default();
    names.take("request");
    let mut steps: Vec<_> = check_constraints(constraints)?
        .iter()
        .map(|i| step_of(i, &mut names))
        .collect();
    steps.sort_by_key(|s| s.order);
    let params: Vec<_> = steps.iter().flat_map(|s| &s.params).collect();

    let mut signature: Vec<String> = vec!["request: str".into()];
    signature.extend(params.iter().map(|p| format!("{}: {}", p.name, p.ty)));
    let one_line = format!("def {entry}({}) -> str:", signature.join(", "));
    let mut out = if one_line.len() <= 88 {
        one_line
    } else {
        let lines: String = signature.iter().map(|s| format!("    {s},\n")).collect();
        format!("def {entry}(\n{lines}) -> str:")
    };
    // In the docstring: no closing quotes, no escapes.
    let doc_goal = goal.replace('\\', "/").replace('"', "'");
    out += &format!("\n    \"\"\"{doc_goal}\n\n    Parameters:\n");
    out += "        request (str): what the user asks for\n";
    for p in &params {
        out += &format!("        {} ({}): {}\n", p.name, p.ty, p.doc);
    }
    out += "    Returns:\n        str: the response, meeting every constraint above\n    \"\"\"\n";
    out += "    # draft a response to the request\n    response = draft_response(request)\n";
    for s in &steps {
        out += &format!("    # {}\n", s.comment);
        for line in &s.code {
            out += &format!("    {line}\n");
        }
    }
    out += "    return response\n\n";
    let mut args = vec![format!("request={}", py_str(&goal))];
    args.extend(params.iter().map(|p| format!("{}={}", p.name, p.value)));
    out += &format!(">>> {entry}({})", args.join(", "));
    Ok(out)
}

/// What `--from-constraints` did over its records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConstraintSummary {
    pub records: u64,
    /// Records given pseudo-code from their constraints.
    pub written: u64,
    /// Records with constraints whose last user turn had pseudo-code already (kept).
    pub already_had_pseudo_code: u64,
    /// Records without constraints, written unchanged.
    pub without_constraints: u64,
}

/// Reads `inputs` and writes each record to `output` (Tulu shape, atomically), the last user
/// turn of each record with constraints given their pseudo-code when it has none.
pub fn write_from_constraints(inputs: &[PathBuf], output: &Path) -> Result<ConstraintSummary> {
    let mut summary = ConstraintSummary::default();
    let mut text = String::new();
    for path in pctrain_hub::data_files(inputs)? {
        let mut reader = RecordReader::open(&path)?;
        while let Some(record) = reader.next() {
            let mut record = record?;
            summary.records += 1;
            let last = record.user_turns().saturating_sub(1);
            if record.constraints.is_empty() {
                summary.without_constraints += 1;
            } else if record.pseudo_code[last].is_some() {
                summary.already_had_pseudo_code += 1;
            } else {
                let error = |message: String| {
                    PseudoError::from(DataError::Record {
                        path: path.clone(),
                        line: reader.line(),
                        message,
                    })
                };
                let prompt = record
                    .messages
                    .iter()
                    .rev()
                    .find(|m| m.role == Role::User)
                    .map_or("", |m| m.content.as_str());
                let code =
                    pseudo_code_from_constraints(prompt, &record.constraints).map_err(error)?;
                let checked = check_structure(&code).map_err(|e| {
                    error(format!(
                        "the pseudo-code made from its constraints fails the check: {e}"
                    ))
                })?;
                record.pseudo_code[last] = Some(checked.text);
                summary.written += 1;
            }
            text += &record.to_json().to_string();
            text.push('\n');
        }
    }
    write_file_atomically(output, text.as_bytes())?;
    Ok(summary)
}
