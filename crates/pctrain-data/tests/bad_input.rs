//! Bad input gives an error naming the file, the line and what is wrong; `--skip-invalid` skips and
//! counts.

mod common;

use std::io::Write;

use common::{jsonl, pipeline};
use pctrain_data::{DataError, JsonlReader, Mix, TemplateChoice};

const GOOD: &str = r#"{"id": "ok", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}"#;

/// The first error reading `line` (after a good line), as text.
fn error_on_line_2(line: &str) -> String {
    let (_d, path) = jsonl(&[GOOD, line]);
    let err = JsonlReader::open(&path)
        .unwrap()
        .find_map(Result::err)
        .expect("an error");
    assert!(matches!(err, DataError::Record { line: 2, .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("{}:2: ", path.display())),
        "{text}"
    );
    text
}

#[test]
fn malformed_json_names_file_and_line() {
    let e = error_on_line_2(r#"{"messages": [ "#);
    assert!(e.contains("malformed JSON"), "{e}");
}

#[test]
fn unknown_role_names_the_field() {
    let e = error_on_line_2(
        r#"{"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}]}"#,
    );
    assert!(
        e.contains("messages[1].role") && e.contains("\"tool\""),
        "{e}"
    );
}

#[test]
fn record_with_neither_messages_nor_instruction() {
    let e = error_on_line_2(r#"{"prompt": "a", "completion": "b"}"#);
    assert!(
        e.contains("neither `messages`") && e.contains("`instruction`"),
        "{e}"
    );
}

#[test]
fn mistyped_fields_are_named() {
    let e = error_on_line_2(r#"{"messages": [{"role": "user", "content": 3}]}"#);
    assert!(e.contains("messages[0].content: expected a string"), "{e}");
    let e = error_on_line_2(r#"{"instruction": "a"}"#);
    assert!(e.contains("missing field `output`"), "{e}");
    let e = error_on_line_2(
        r#"{"messages": [{"role": "user", "content": "a"}], "pseudo_code": ["x", "y"]}"#,
    );
    assert!(e.contains("2 entries") && e.contains("1 user turns"), "{e}");
    let e = error_on_line_2(r#"[1, 2]"#);
    assert!(e.contains("expected a JSON object"), "{e}");
}

#[test]
fn non_utf8_bytes_are_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latin1.jsonl");
    let mut f = std::fs::File::create(&path).unwrap();
    writeln!(f, "{GOOD}").unwrap();
    f.write_all(b"{\"instruction\": \"caf\xe9\", \"output\": \"x\"}\n")
        .unwrap();
    drop(f);
    let err = JsonlReader::open(&path)
        .unwrap()
        .find_map(Result::err)
        .unwrap()
        .to_string();
    assert!(err.contains(":2: invalid UTF-8 at byte 20"), "{err}");
}

#[test]
fn missing_file_is_named() {
    let err = JsonlReader::open("no/such/file.jsonl").err().unwrap();
    assert!(matches!(err, DataError::Io { .. }));
    assert!(err.to_string().starts_with("no/such/file.jsonl: "), "{err}");
}

#[test]
fn unknown_mix_and_template_are_errors() {
    let e = "nl-cot".parse::<Mix>().unwrap_err().to_string();
    assert!(e.contains("nl-cot") && e.contains("nl-pc"), "{e}");
    let e = TemplateChoice::parse("alpaca").unwrap_err().to_string();
    assert!(e.contains("alpaca") && e.contains("chatml"), "{e}");
    let e = TemplateChoice::parse("missing.jinja")
        .unwrap()
        .load(None)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("missing.jinja: "), "{e}");
}

#[test]
fn pipeline_stops_at_the_first_bad_record_unless_skipping() {
    let bad = r#"{"messages": [{"role": "narrator", "content": "x"}]}"#;
    let (_d, path) = jsonl(&[GOOD, bad, "not json", GOOD]);
    let p = pipeline("nl", "tulu", 256);
    let err = p.encode_all(std::slice::from_ref(&path)).unwrap_err();
    assert!(err.to_string().contains(":2: messages[0].role"), "{err}");

    let mut p = pipeline("nl", "tulu", 256);
    p.skip_invalid = true;
    let (samples, stats) = p.encode_all(&[path]).unwrap();
    assert_eq!(samples.len(), 2);
    assert_eq!(stats.invalid_skipped, 2);
    assert_eq!(stats.records, 2);
}

#[test]
fn a_template_error_names_the_record_line() {
    let dir = tempfile::tempdir().unwrap();
    let tpl = dir.path().join("strict.jinja");
    std::fs::write(
        &tpl,
        "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('system messages are not supported') }}{% endif %}{{ m.content }}{% endfor %}",
    )
    .unwrap();
    let sys = r#"{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}"#;
    let (_d2, path) = jsonl(&[GOOD, sys]);
    let p = pipeline("nl", tpl.to_str().unwrap(), 256);
    let err = p.encode_all(&[path]).unwrap_err().to_string();
    assert!(
        err.contains(":2: ") && err.contains("system messages are not supported"),
        "{err}"
    );
}

#[test]
fn line_numbers_count_blank_lines_and_span_batches() {
    // 600 good records (more than one parallel batch), a blank line, then a bad record.
    let mut lines: Vec<&str> = vec![GOOD; 600];
    lines.push("");
    lines.push(r#"{"messages": [{"role": "user"}]}"#);
    let (_d, path) = jsonl(&lines);
    let p = pipeline("nl", "tulu", 256);
    let err = p.encode_all(&[path]).unwrap_err().to_string();
    assert!(
        err.contains(":602: messages[0]: missing field `content`"),
        "{err}"
    );
}

#[test]
fn ifeval_lines_are_records_that_keep_their_constraints() {
    let (_d, path) = jsonl(&[
        r#"{"key": 1000, "prompt": "Write a haiku.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}"#,
        r#"{"key": "k2", "prompt": "List two.", "response": "* a\n* b", "instruction_id_list": ["detectable_format:number_bullet_lists"], "kwargs": [{"num_bullets": 2}]}"#,
        r#"{"id": "t", "messages": [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "hi"}], "instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]}"#,
    ]);
    let records: Vec<_> = JsonlReader::open(&path)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(records[0].id, "1000");
    assert_eq!(records[0].messages.len(), 1);
    assert_eq!(records[0].constraints[0].id, "punctuation:no_comma");
    assert_eq!(records[1].messages[1].content, "* a\n* b");
    assert_eq!(records[1].constraints[0].kwargs["num_bullets"], 2);
    assert_eq!(
        records[2].constraints[0].id,
        "change_case:english_lowercase"
    );
    let line = records[1].to_json();
    assert_eq!(
        line["instruction_id_list"][0],
        "detectable_format:number_bullet_lists"
    );
    assert_eq!(line["kwargs"][0]["num_bullets"], 2);
}

#[test]
fn badly_shaped_constraints_name_the_line_and_what_is_wrong() {
    let e = error_on_line_2(
        r#"{"key": 1, "prompt": "W.", "instruction_id_list": ["startend:end_checker"]}"#,
    );
    assert!(e.contains("`kwargs` is missing"), "{e}");
    let e = error_on_line_2(
        r#"{"key": 1, "prompt": "W.", "instruction_id_list": ["detectable_format:number_bullet_lists"], "kwargs": ["two"]}"#,
    );
    assert!(e.contains("kwargs[0]: expected an object"), "{e}");
    let e = error_on_line_2(
        r#"{"key": 1, "prompt": "W.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": {}}"#,
    );
    assert!(e.contains("field `kwargs`: expected a list"), "{e}");
    let e =
        error_on_line_2(r#"{"key": 1, "prompt": " ", "instruction_id_list": [], "kwargs": []}"#);
    assert!(e.contains("`prompt` is empty"), "{e}");
    let e = error_on_line_2(r#"{"key": [1], "prompt": "W.", "instruction_id_list": []}"#);
    assert!(e.contains("field `key`: expected a string"), "{e}");
    // What an id means is checked where it is used (pseudo-code, IFEval), not to train.
    let (_d, path) = jsonl(&[
        r#"{"id": "x", "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "instruction_id_list": ["count:word_count_range"], "kwargs": [{"min": 1}]}"#,
    ]);
    let record = JsonlReader::open(&path).unwrap().next().unwrap().unwrap();
    assert_eq!(record.constraints[0].id, "count:word_count_range");
}
