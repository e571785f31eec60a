//! `pctrain data pseudo-code` end to end, against a loopback OpenAI-compatible server written
//! here and scripted by markers in each instruction: good answers, unparseable code, unfaithful
//! code, non-JSON verdicts, cut-off answers, 429s and 500s.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{files_under, pctrain_env, stderr};
use pctrain_testkit::http::{self, Response};
use serde_json::{json, Value};

const KEY: &str = "sk-loopback-teacher-secret-42";

/// Good pseudo-code for an instruction.
fn good() -> String {
    "def do_task(text: str) -> str:\n    \"\"\"Do what the instruction asks.\n    Parameters:\n        text (str): the input\n    Returns:\n        str: the result\n    \"\"\"\n    # do it\n    return perform(text)\n\n>>> do_task(text=\"input\")".to_string()
}

/// The teacher's scripted answer: (status, body).
fn answer(stage: &str, instruction: &str, nth: usize, delay: Duration) -> (u16, String) {
    std::thread::sleep(delay);
    let chat = |text: &str, finish: &str| {
        json!({"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": finish}],
               "usage": {"prompt_tokens": 10, "completion_tokens": 5}})
        .to_string()
    };
    let marker = |m: &str| instruction.contains(m);
    match stage {
        "generate" if marker("[429]") && nth == 0 => (429, r#"{"error":"rate limited"}"#.into()),
        "generate" if marker("[500]") && nth == 0 => (500, "upstream error".into()),
        "generate" if marker("[html]") && nth == 0 => {
            (200, "<html><body>Bad gateway</body></html>".into())
        }
        "generate" if marker("[toolong]") => (
            400,
            r#"{"error": {"message": "This model's maximum context length is 4096 tokens"}}"#
                .into(),
        ),
        "generate" if marker("[garbage]") || marker("[never]") => {
            (200, chat("def broken(:\n    pass", "stop"))
        }
        "generate" if marker("[truncated]") => (
            200,
            chat("def do_task(text: str) -> str:\n    \"\"\"Do", "length"),
        ),
        "generate" => (200, chat(&good(), "stop")),
        "repair" if marker("[never]") => (200, chat("still not python ((", "stop")),
        "repair" => (200, chat(&format!("```python\n{}\n```", good()), "stop")),
        "judge" if marker("[nonjson]") => (200, chat("Looks fine to me!", "stop")),
        "judge" if marker("[unfaithful]") && nth == 0 => (
            200,
            chat(
                r#"{"verdict": "unfaithful", "reason": "the word limit is missing"}"#,
                "stop",
            ),
        ),
        "judge" => (
            200,
            chat(
                r#"{"verdict": "faithful", "reason": "all constraints kept"}"#,
                "stop",
            ),
        ),
        _ => (400, "unknown prompt".into()),
    }
}

/// A loopback chat-completions server; returns its base URL and the count of requests.
fn teacher(delay: Duration) -> (String, Arc<Mutex<usize>>) {
    let seen: Mutex<HashMap<(String, String), usize>> = Mutex::default();
    let total: Arc<Mutex<usize>> = Arc::default();
    let count = total.clone();
    let url = http::serve(usize::MAX, move |r: http::Request| {
        *total.lock().unwrap() += 1;
        let (status, reply) = reply(&r, &seen, delay);
        let response = Response::new(status, reply).header("Content-Type", "application/json");
        if status == 429 {
            response.header("Retry-After", "0")
        } else {
            response
        }
    })
    .unwrap();
    (format!("{url}/v1"), count)
}

/// The teacher's answer to one request: the scripted one for its stage and instruction.
fn reply(
    r: &http::Request,
    seen: &Mutex<HashMap<(String, String), usize>>,
    delay: Duration,
) -> (u16, String) {
    if r.method != "POST" || r.path != "/v1/chat/completions" {
        return (404, "not found".to_string());
    }
    if r.header("authorization") != Some(&format!("Bearer {KEY}")) {
        return (401, r#"{"error":"bad key"}"#.to_string());
    }
    let request: Value = serde_json::from_slice(&r.body).unwrap();
    let messages = request["messages"].as_array().unwrap();
    let system = messages[0]["content"].as_str().unwrap();
    let stage = if system.starts_with("You rewrite") {
        "generate"
    } else if system.starts_with("You judge") {
        "judge"
    } else {
        "repair"
    };
    let user = messages.last().unwrap()["content"]
        .as_str()
        .unwrap()
        .to_string();
    let nth = {
        let mut seen = seen.lock().unwrap();
        let n = seen.entry((stage.to_string(), user.clone())).or_insert(0);
        *n += 1;
        *n - 1
    };
    answer(stage, &user, nth, delay)
}

/// Eleven records: one per scripted behaviour, one that has pseudo-code already, one with two turns.
fn write_records(path: &Path) {
    let mut lines = Vec::new();
    for (i, marker) in [
        "[good]",
        "[garbage]",
        "[unfaithful]",
        "[never]",
        "[nonjson]",
        "[429]",
        "[500]",
        "[truncated]",
        "[html]",
    ]
    .iter()
    .enumerate()
    {
        lines.push(json!({"id": format!("r{i}"), "messages": [
            {"role": "user", "content": format!("Summarise the text in ten words {marker}.")},
            {"role": "assistant", "content": "A summary."}]}));
    }
    lines.push(json!({"id": "given", "messages": [
        {"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello."}],
        "pseudo_code": good()}));
    lines.push(json!({"id": "two-turns", "messages": [
        {"role": "user", "content": "Name a colour [good]."}, {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Name another [good]."}, {"role": "assistant", "content": "Green."}]}));
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(path, text).unwrap();
}

fn args<'a>(data: &'a str, out: &'a str, url: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "data",
        "pseudo-code",
        "--data",
        data,
        "--output",
        out,
        "--teacher",
        url,
        "--model",
        "loopback-teacher",
        "--api-key-env",
        "TEACHER_KEY",
        "--max-repairs",
        "2",
        "--retry-base-ms",
        "1",
        "--timeout",
        "20",
    ];
    a.extend_from_slice(extra);
    a
}

/// The complete lines of a JSONL file (a line still being written is left out).
fn read_jsonl(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |i| &text[..i]);
    complete
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn by_id(records: &[Value]) -> HashMap<String, Value> {
    records
        .iter()
        .map(|r| (r["id"].as_str().unwrap().to_string(), r.clone()))
        .collect()
}

#[test]
fn the_pipeline_generates_checks_repairs_and_gives_up_as_scripted() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("in.jsonl");
    write_records(&data);
    let out = dir.path().join("out.jsonl");
    let (url, requests) = teacher(Duration::ZERO);
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    let env = [("TEACHER_KEY", KEY)];
    let run = pctrain_env(&args(d, o, &url, &["--concurrency", "3"]), &env);
    let err = stderr(&run);
    assert!(run.status.success(), "{err}");
    let records = read_jsonl(&out);
    assert_eq!(records.len(), 11);
    let r = by_id(&records);
    let turn = |id: &str, i: usize| r[id]["pseudo_code_meta"]["turns"][i].clone();
    assert_eq!(r["r0"]["pseudo_code"][0], good());
    assert_eq!(turn("r0", 0)["rounds"], 1);
    assert_eq!(turn("r0", 0)["verdict"], "faithful");
    // Unparseable code is repaired, with the parser's reason kept.
    assert_eq!(turn("r1", 0)["rounds"], 2);
    assert!(turn("r1", 0)["reasons"][0]
        .as_str()
        .unwrap()
        .contains("not valid Python"));
    assert_eq!(
        r["r1"]["pseudo_code"][0],
        good(),
        "the repaired code, unfenced"
    );
    // An unfaithful verdict is repaired with the judge's reason.
    assert_eq!(turn("r2", 0)["rounds"], 2);
    assert!(turn("r2", 0)["reasons"][0]
        .as_str()
        .unwrap()
        .contains("word limit"));
    // Never fixed: given up after 1 + 2 rounds, kept without pseudo-code.
    assert_eq!(turn("r3", 0)["rounds"], 3);
    assert_eq!(turn("r3", 0)["verdict"], "failed");
    assert!(r["r3"]["pseudo_code"][0].is_null());
    // A judge that never answers JSON fails the turn, with its reason.
    assert!(r["r4"]["pseudo_code"][0].is_null());
    let reasons = turn("r4", 0)["reasons"].to_string();
    assert!(reasons.contains("no verdict"), "{reasons}");
    // 429, 500 and an answer that is not a chat completion are retried; a cut-off answer is
    // repaired.
    for id in ["r5", "r6", "r8"] {
        assert_eq!(r[id]["pseudo_code"][0], good(), "{id}");
        assert_eq!(turn(id, 0)["rounds"], 1, "{id}");
    }
    assert_eq!(turn("r7", 0)["rounds"], 2);
    assert!(turn("r7", 0)["reasons"][0]
        .as_str()
        .unwrap()
        .contains("cut off"));
    // Given pseudo-code is kept as it was; both turns of a conversation get theirs.
    assert_eq!(r["given"]["pseudo_code"][0], good());
    assert!(r["given"].get("pseudo_code_meta").is_none());
    assert_eq!(r["two-turns"]["pseudo_code"].as_array().unwrap().len(), 2);
    assert_eq!(turn("two-turns", 1)["verdict"], "faithful");
    assert_eq!(r["r0"]["pseudo_code_meta"]["teacher"], "loopback-teacher");

    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("out.summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["records"], 11);
    assert_eq!(summary["generated"], 11);
    assert_eq!(summary["passed_first_time"], 6);
    assert_eq!(summary["repaired"], 3);
    assert_eq!(summary["failed"], 2);
    assert_eq!(summary["kept_without"], 2);
    assert_eq!(summary["already_had_pseudo_code"], 1);
    assert_eq!(summary["retries"], 3);
    assert_eq!(summary["requests"], *requests.lock().unwrap() as u64);
    assert_eq!(
        summary["prompt_tokens"],
        10 * summary["requests"].as_u64().unwrap() - 30
    );

    // The output trains: nl-pc samples come from the pseudo-code written.
    let stats = common::pctrain(&["data", "stats", "--data", o, "--mix", "nl-pc", "--json"]);
    assert!(stats.status.success(), "{}", stderr(&stats));
    let s: Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(s["records"], 11);

    // A rerun finds everything done and sends nothing.
    let before = *requests.lock().unwrap();
    let again = pctrain_env(&args(d, o, &url, &[]), &env);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(*requests.lock().unwrap(), before);
    assert_eq!(read_jsonl(&out).len(), 11);

    // Dropping instead: the failed records go to the rejects file with their reasons.
    let out2 = dir.path().join("dropped.jsonl");
    let run = pctrain_env(
        &args(d, out2.to_str().unwrap(), &url, &["--on-failure", "drop"]),
        &env,
    );
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(read_jsonl(&out2).len(), 9);
    let rejected = by_id(&read_jsonl(&dir.path().join("dropped.rejected.jsonl")));
    assert_eq!(rejected.keys().count(), 2);
    assert!(rejected.contains_key("r3") && rejected.contains_key("r4"));

    // The key is in no output and no file.
    for text in [err, stderr(&again), stderr(&run)] {
        assert!(!text.contains(KEY));
    }
    for file in files_under(dir.path()) {
        assert!(
            !std::fs::read_to_string(&file)
                .unwrap_or_default()
                .contains(KEY),
            "{}",
            file.display()
        );
    }
}

#[test]
fn a_budget_defers_records_and_a_killed_run_resumes_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("in.jsonl");
    write_records(&data);
    let out = dir.path().join("out.jsonl");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    let env = [("TEACHER_KEY", KEY)];
    // A budget of 4 requests: r0 (2 requests) and r1's first rounds, then the rest waits.
    let (url, _) = teacher(Duration::ZERO);
    let run = pctrain_env(
        &args(d, o, &url, &["--concurrency", "1", "--max-requests", "4"]),
        &env,
    );
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(stderr(&run).contains("budget ran out"), "{}", stderr(&run));
    let first = read_jsonl(&out).len();
    assert!((1..11).contains(&first), "{first}");

    // A slow teacher, killed mid-way with SIGKILL, then resumed.
    let (slow, _) = teacher(Duration::from_millis(150));
    let mut child = common::spawn(
        &args(d, o, &slow, &["--concurrency", "1"]),
        &[("TEACHER_KEY", KEY)],
    );
    common::wait_for_lines(&mut child, &out, first + 2);
    child.kill().unwrap();
    child.wait().unwrap();
    let run = pctrain_env(&args(d, o, &url, &["--concurrency", "4"]), &env);
    assert!(run.status.success(), "{}", stderr(&run));
    let records = read_jsonl(&out);
    assert_eq!(records.len(), 11, "every record exactly once");
    assert_eq!(by_id(&records).len(), 11);
}

#[test]
fn bad_teacher_settings_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("in.jsonl");
    write_records(&data);
    let (d, o) = (data.to_str().unwrap(), dir.path().join("o.jsonl"));
    let o = o.to_str().unwrap();
    let err = common::fails(&args(d, o, "ftp://nowhere", &[]));
    assert!(err.contains("TEACHER_KEY"), "{err}");
    let run = pctrain_env(&args(d, o, "ftp://nowhere", &[]), &[("TEACHER_KEY", KEY)]);
    assert!(!run.status.success());
    assert!(
        stderr(&run).contains("not an http(s) URL"),
        "{}",
        stderr(&run)
    );
    // A teacher that is not there: the run completes, counts the records it could not do and
    // writes none of them, so that a rerun does them.
    let run = pctrain_env(
        &args(d, o, "http://127.0.0.1:9/v1", &["--max-retries", "1"]),
        &[("TEACHER_KEY", KEY)],
    );
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(
        stderr(&run).contains("wait for a rerun"),
        "{}",
        stderr(&run)
    );
    let records = by_id(&read_jsonl(Path::new(o)));
    assert_eq!(records.keys().collect::<Vec<_>>(), ["given"]);
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("o.summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["unfinished"], 10);
    let (url, _) = teacher(Duration::ZERO);
    let run = pctrain_env(&args(d, o, &url, &[]), &[("TEACHER_KEY", KEY)]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(read_jsonl(Path::new(o)).len(), 11);
    // A refused key stops the run with an error that says what to check.
    let other = dir.path().join("refused.jsonl");
    let run = pctrain_env(
        &args(d, other.to_str().unwrap(), &url, &[]),
        &[("TEACHER_KEY", "wrong")],
    );
    assert_eq!(run.status.code(), Some(1));
    let err = stderr(&run);
    assert!(err.contains("401") && err.contains("API key"), "{err}");
    assert!(
        read_jsonl(&other).len() <= 1,
        "only records that needed no teacher"
    );
}

#[test]
fn the_output_may_be_a_bare_file_name() {
    // From a fresh working folder, as a user's first try: `--output out.jsonl`.
    let dir = tempfile::tempdir().unwrap();
    write_records(&dir.path().join("in.jsonl"));
    let (url, _) = teacher(Duration::ZERO);
    let run = common::pctrain_in(
        dir.path(),
        &args("in.jsonl", "out.jsonl", &url, &[]),
        &[("TEACHER_KEY", KEY)],
    );
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(read_jsonl(&dir.path().join("out.jsonl")).len(), 11);
    assert!(dir.path().join("out.summary.json").is_file());
}

#[test]
fn from_constraints_needs_no_teacher_and_names_bad_constraints_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ifeval.jsonl");
    let good = json!({"key": 3, "prompt": "Write a limerick about tea. Use no commas.",
                      "instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"],
                      "kwargs": [{}, {"num_words": 40, "relation": "less than"}]});
    std::fs::write(&data, format!("{good}\n")).unwrap();
    let run = |out: &str| {
        common::pctrain_in(
            dir.path(),
            &[
                "data",
                "pseudo-code",
                "--from-constraints",
                "--data",
                data.to_str().unwrap(),
                "--output",
                out,
            ],
            &[],
        )
    };
    let o = run("pc.jsonl");
    assert!(o.status.success(), "{}", stderr(&o));
    let lines = read_jsonl(&dir.path().join("pc.jsonl"));
    let pc = lines[0]["pseudo_code"][0].as_str().unwrap();
    assert!(pc.starts_with("def write_limerick_tea("), "{pc}");
    assert!(
        pc.contains("words_below=40") && pc.contains("no_commas=True"),
        "{pc}"
    );
    assert_eq!(lines[0]["kwargs"], good["kwargs"]);
    let bad = json!({"key": 4, "prompt": "Write.", "instruction_id_list": ["detectable_format:title"],
                     "kwargs": [{"title": "x"}]});
    std::fs::write(&data, format!("{good}\n{bad}\n")).unwrap();
    let o = run("pc.jsonl");
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("ifeval.jsonl:2") && err.contains("takes no argument `title`"),
        "{err}"
    );
    assert_eq!(
        read_jsonl(&dir.path().join("pc.jsonl")).len(),
        1,
        "the output was kept"
    );
    let o = common::pctrain(&[
        "data",
        "pseudo-code",
        "--data",
        "x.jsonl",
        "--output",
        "y.jsonl",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--teacher"), "{}", stderr(&o));
}

#[test]
fn a_request_the_teacher_refuses_fails_its_record_and_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("in.jsonl");
    let lines = [
        json!({"id": "ok", "messages": [{"role": "user", "content": "Sum up [good]."},
                                        {"role": "assistant", "content": "Done."}]}),
        json!({"id": "long", "messages": [{"role": "user", "content": "A very long text [toolong]."},
                                          {"role": "assistant", "content": "Short."}]}),
    ];
    std::fs::write(
        &data,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
    let out = dir.path().join("out.jsonl");
    let (url, _) = teacher(Duration::ZERO);
    let run = pctrain_env(
        &args(
            data.to_str().unwrap(),
            out.to_str().unwrap(),
            &url,
            &["--concurrency", "1"],
        ),
        &[("TEACHER_KEY", KEY)],
    );
    assert!(run.status.success(), "{}", stderr(&run));
    let r = by_id(&read_jsonl(&out));
    assert_eq!(r["ok"]["pseudo_code"][0], good());
    assert!(r["long"]["pseudo_code"][0].is_null());
    let reasons = r["long"]["pseudo_code_meta"]["turns"][0]["reasons"].to_string();
    assert!(
        reasons.contains("refused") && reasons.contains("maximum context length"),
        "{reasons}"
    );
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("out.summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (summary["failed"].as_u64(), summary["refused"].as_u64()),
        (Some(1), Some(1))
    );
}
