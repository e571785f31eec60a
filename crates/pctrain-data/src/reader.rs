//! Streaming readers for data files (JSONL, or Parquet with the same fields) in Tulu v2's,
//! Alpaca's and IFEval's shapes. Any shape may carry constraints (`instruction_id_list` and
//! `kwargs`, as IFEval's lines do); they belong to the last user turn.
//!
//! A JSONL file is read one line at a time and a Parquet file one row group at a time, so a file's
//! size does not matter. Each line (or row) becomes a [`Record`] or an error that names the file,
//! the line (the 1-based row for Parquet) and what is wrong.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use parquet::file::reader::SerializedFileReader;
use parquet::record::reader::RowIter;
use serde_json::{Map, Value};

use crate::constraints::read_constraints;
use crate::error::{DataError, Result};
use crate::record::{Message, Record, Role};

/// Reads records from a JSONL or Parquet file, chosen by its extension (`.parquet`).
pub enum RecordReader {
    Jsonl(JsonlReader),
    Parquet(ParquetReader),
}

impl RecordReader {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
        {
            Ok(RecordReader::Parquet(ParquetReader::open(path)?))
        } else {
            Ok(RecordReader::Jsonl(JsonlReader::open(path)?))
        }
    }

    /// The 1-based line (row, for Parquet) of the record read last.
    pub fn line(&self) -> u64 {
        match self {
            RecordReader::Jsonl(r) => r.line,
            RecordReader::Parquet(r) => r.row,
        }
    }
}

impl Iterator for RecordReader {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            RecordReader::Jsonl(r) => r.next(),
            RecordReader::Parquet(r) => r.next(),
        }
    }
}

/// Reads records from one Parquet file, row by row; columns as in JSONL (`messages` a list of
/// `{role, content}` structs, `instruction`/`input`/`output`, or `prompt`/`response`; optional
/// `id`, `pseudo_code`, `instruction_id_list` + `kwargs`).
pub struct ParquetReader {
    path: PathBuf,
    file_name: String,
    rows: RowIter<'static>,
    row: u64,
}

impl ParquetReader {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| DataError::io(&path, e))?;
        let reader = SerializedFileReader::new(file).map_err(|e| {
            DataError::io(
                &path,
                std::io::Error::other(format!("not a readable Parquet file: {e}")),
            )
        })?;
        Ok(ParquetReader {
            file_name: file_name(&path),
            path,
            rows: reader.into_iter(),
            row: 0,
        })
    }
}

impl Iterator for ParquetReader {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        let row = self.rows.next()?;
        self.row += 1;
        let error = |message: String| DataError::Record {
            path: self.path.clone(),
            line: self.row,
            message,
        };
        Some(match row {
            Ok(row) => parse_record(
                row.to_json_value(),
                format!("{}:{}", self.file_name, self.row),
            )
            .map_err(error),
            Err(e) => Err(error(format!("unreadable row: {e}"))),
        })
    }
}

/// The complete JSON lines an earlier run appended to `path`, with their 1-based line numbers
/// (none when there is no file); whatever follows the last newline (a line cut short by a stop)
/// is not read: [`cut_torn_tail`] removes it once the caller knows the file is its own. A
/// malformed complete line is an error that says it is `what`.
pub fn written_lines(path: &Path, what: &str) -> Result<Vec<(u64, Value)>> {
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut out = Vec::new();
    for (n, line) in bytes[..complete].split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let v: Value = serde_json::from_slice(line).map_err(|e| DataError::Record {
            path: path.to_path_buf(),
            line: n as u64 + 1,
            message: format!("{what}: {e}"),
        })?;
        out.push((n as u64 + 1, v));
    }
    Ok(out)
}

/// Removes whatever follows the last newline of `path` (a line cut short by a stop), so that
/// appending goes on from a whole line.
pub fn cut_torn_tail(path: &Path) -> Result<()> {
    if !path.is_file() {
        return Ok(());
    }
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if complete < bytes.len() {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| DataError::io(path, e))?;
        f.set_len(complete as u64)
            .map_err(|e| DataError::io(path, e))?;
    }
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Reads records from one JSONL file, line by line.
pub struct JsonlReader {
    path: PathBuf,
    /// Short name used in generated ids (`FILE:LINE`).
    file_name: String,
    reader: BufReader<File>,
    line: u64,
    buf: Vec<u8>,
}

impl JsonlReader {
    /// Opens `path`; a missing or unreadable file is an error that names it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| DataError::io(&path, e))?;
        if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
            return Err(DataError::io(
                &path,
                std::io::Error::other("is a directory, expected a JSONL file"),
            ));
        }
        let file_name = file_name(&path);
        Ok(JsonlReader {
            path,
            file_name,
            reader: BufReader::with_capacity(1 << 20, file),
            line: 0,
            buf: Vec::new(),
        })
    }

    fn error(&self, message: impl Into<String>) -> DataError {
        DataError::Record {
            path: self.path.clone(),
            line: self.line,
            message: message.into(),
        }
    }

    /// Reads the next non-blank line; `None` at the end of the file.
    fn next_line(&mut self) -> Option<Result<String>> {
        loop {
            self.buf.clear();
            match self.reader.read_until(b'\n', &mut self.buf) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => return Some(Err(DataError::io(&self.path, e))),
            }
            self.line += 1;
            let mut bytes: &[u8] = &self.buf;
            if self.line == 1 {
                bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
            }
            let text = match std::str::from_utf8(bytes) {
                Ok(t) => t,
                Err(e) => {
                    return Some(Err(self.error(format!(
                        "invalid UTF-8 at byte {} of the line",
                        e.valid_up_to()
                    ))))
                }
            };
            let text = text.trim_end_matches(['\n', '\r']);
            if !text.trim().is_empty() {
                return Some(Ok(text.to_string()));
            }
        }
    }
}

impl Iterator for JsonlReader {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        let line = match self.next_line()? {
            Ok(l) => l,
            Err(e) => return Some(Err(e)),
        };
        let value: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => return Some(Err(self.error(format!("malformed JSON: {e}")))),
        };
        let fallback_id = format!("{}:{}", self.file_name, self.line);
        Some(parse_record(value, fallback_id).map_err(|m| self.error(m)))
    }
}

/// Turns one JSON value into a record; the error is a message without file or line.
pub fn parse_record(value: Value, fallback_id: String) -> std::result::Result<Record, String> {
    let Value::Object(obj) = value else {
        return Err(format!("expected a JSON object, found {}", kind(&value)));
    };
    let id = record_id(&obj, fallback_id)?;
    let dataset = match obj.get("dataset") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            return Err(format!(
                "field `dataset`: expected a string, found {}",
                kind(other)
            ))
        }
    };
    let messages = if let Some(messages) = obj.get("messages") {
        tulu_messages(messages)?
    } else if obj.contains_key("instruction") {
        alpaca_messages(&obj)?
    } else if obj.contains_key("prompt") && obj.contains_key("instruction_id_list") {
        ifeval_messages(&obj)?
    } else {
        return Err(
            "record has neither `messages` (Tulu), `instruction` (Alpaca) nor `prompt` \
                    with `instruction_id_list` (IFEval)"
                .into(),
        );
    };
    let user_turns = messages.iter().filter(|m| m.role == Role::User).count();
    let pseudo_code = pseudo_code(obj.get("pseudo_code"), user_turns)?;
    let constraints = read_constraints(&obj)?;
    if !constraints.is_empty() && user_turns == 0 {
        return Err("the record has constraints but no user turn they apply to".into());
    }
    Ok(Record {
        id,
        dataset,
        messages,
        pseudo_code,
        constraints,
    })
}

/// The record's id: `id`, else IFEval's `key`, else `fallback`.
fn record_id(obj: &Map<String, Value>, fallback: String) -> std::result::Result<String, String> {
    let (field, value) = match (obj.get("id"), obj.get("key")) {
        (Some(v), _) if !v.is_null() => ("id", v),
        (_, Some(v)) if !v.is_null() => ("key", v),
        _ => return Ok(fallback),
    };
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(format!(
            "field `{field}`: expected a string, found {}",
            kind(other)
        )),
    }
}

fn tulu_messages(value: &Value) -> std::result::Result<Vec<Message>, String> {
    let Value::Array(items) = value else {
        return Err(format!(
            "field `messages`: expected an array, found {}",
            kind(value)
        ));
    };
    if items.is_empty() {
        return Err("field `messages` is empty".into());
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let Value::Object(m) = item else {
                return Err(format!(
                    "messages[{i}]: expected an object, found {}",
                    kind(item)
                ));
            };
            let role = match m.get("role") {
                Some(Value::String(r)) => Role::parse(r).ok_or_else(|| {
                    format!("messages[{i}].role: unknown role {r:?} (expected system, user or assistant)")
                })?,
                Some(other) => {
                    return Err(format!(
                        "messages[{i}].role: expected a string, found {}",
                        kind(other)
                    ))
                }
                None => return Err(format!("messages[{i}]: missing field `role`")),
            };
            let content = string_field(m, "content", &format!("messages[{i}]"))?;
            Ok(Message::new(role, content))
        })
        .collect()
}

fn alpaca_messages(obj: &Map<String, Value>) -> std::result::Result<Vec<Message>, String> {
    let instruction = string_field(obj, "instruction", "record")?;
    let input = match obj.get("input") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(format!(
                "field `input`: expected a string, found {}",
                kind(other)
            ))
        }
    };
    let output = string_field(obj, "output", "record")?;
    let user = if input.trim().is_empty() {
        instruction
    } else {
        format!("{instruction}\n\n{input}")
    };
    Ok(vec![
        Message::new(Role::User, user),
        Message::new(Role::Assistant, output),
    ])
}

/// IFEval's shape (`key`, `prompt`, `instruction_id_list`, `kwargs`): the user's `prompt`, and
/// the answer's `response` when there is one.
fn ifeval_messages(obj: &Map<String, Value>) -> std::result::Result<Vec<Message>, String> {
    let prompt = string_field(obj, "prompt", "record")?;
    if prompt.trim().is_empty() {
        return Err("field `prompt` is empty".into());
    }
    let mut messages = vec![Message::new(Role::User, prompt)];
    match obj.get("response") {
        None | Some(Value::Null) => {}
        Some(_) => messages.push(Message::new(
            Role::Assistant,
            string_field(obj, "response", "record")?,
        )),
    }
    Ok(messages)
}

fn string_field(
    obj: &Map<String, Value>,
    field: &str,
    owner: &str,
) -> std::result::Result<String, String> {
    match obj.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!(
            "{owner}.{field}: expected a string, found {}",
            kind(other)
        )),
        None => Err(format!("{owner}: missing field `{field}`")),
    }
}

/// Reads `pseudo_code`: absent or null, a string (for the first user turn), or a list with one
/// entry (string or null) per user turn. Blank strings count as absent.
fn pseudo_code(
    value: Option<&Value>,
    user_turns: usize,
) -> std::result::Result<Vec<Option<String>>, String> {
    let non_blank = |s: &str| (!s.trim().is_empty()).then(|| s.to_string());
    let mut out = vec![None; user_turns];
    match value {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            if user_turns == 0 {
                return Err("field `pseudo_code` is given but the record has no user turn".into());
            }
            out[0] = non_blank(s);
        }
        Some(Value::Array(items)) => {
            if items.len() != user_turns {
                return Err(format!(
                    "field `pseudo_code` has {} entries but the record has {user_turns} user turns",
                    items.len()
                ));
            }
            for (i, item) in items.iter().enumerate() {
                out[i] = match item {
                    Value::Null => None,
                    Value::String(s) => non_blank(s),
                    other => {
                        return Err(format!(
                            "pseudo_code[{i}]: expected a string or null, found {}",
                            kind(other)
                        ))
                    }
                };
            }
        }
        Some(other) => {
            return Err(format!(
                "field `pseudo_code`: expected a string, a list or null, found {}",
                kind(other)
            ))
        }
    }
    Ok(out)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
