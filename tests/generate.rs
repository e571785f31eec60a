//! `pctrain generate` and `pctrain eval --task ifeval` end to end, on the tiny Llama fixture.

mod common;

use std::path::Path;

use common::{fails, files_under, llama_fixture, pctrain, pctrain_in, root, stderr, stdout};
use serde_json::{json, Value};

const RECORDS: &str = "crates/pctrain-model/tests/fixtures/eval-records.jsonl";

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `generate --data RECORDS` with extra arguments; the lines written.
fn generate_file(out: &Path, extra: &[&str]) -> Vec<Value> {
    let llama = llama_fixture();
    let mut args = vec![
        "generate",
        "--base",
        llama.to_str().unwrap(),
        "--data",
        RECORDS,
        "--output",
        out.to_str().unwrap(),
        "--max-new-tokens",
        "12",
    ];
    args.extend_from_slice(extra);
    let o = pctrain(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    read_lines(out)
}

#[test]
fn generate_answers_every_record_in_order_whatever_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let one = generate_file(&dir.path().join("one.jsonl"), &["--batch-size", "1"]);
    let four = generate_file(&dir.path().join("four.jsonl"), &["--batch-size", "4"]);
    assert_eq!(one, four, "batching changed the greedy answers");
    let records: Vec<Value> = read_lines(&llama_fixture().join("../eval-records.jsonl"));
    assert_eq!(one.len(), records.len());
    for (line, record) in one.iter().zip(&records) {
        assert_eq!(line["id"], record["id"]);
        // The prompt is the last user turn; the record's own answer is not part of it.
        let user = record["messages"]
            .as_array()
            .unwrap()
            .iter()
            .rfind(|m| m["role"] == "user")
            .unwrap();
        assert_eq!(line["prompt"], user["content"]);
        let n = line["new_tokens"].as_u64().unwrap();
        assert!((1..=12).contains(&n), "{line}");
        assert_eq!(line["response"], line["response_raw"], "nothing to strip");
    }
}

#[test]
fn samples_are_seeded_whatever_the_batch_and_greedy_refuses_them() {
    let dir = tempfile::tempdir().unwrap();
    let sampled = [
        "--samples",
        "3",
        "--temperature",
        "0.9",
        "--top-k",
        "40",
        "--seed",
        "5",
    ];
    let one = generate_file(
        &dir.path().join("one.jsonl"),
        &[&sampled[..], &["--batch-size", "1"]].concat(),
    );
    let five = generate_file(
        &dir.path().join("five.jsonl"),
        &[&sampled[..], &["--batch-size", "5"]].concat(),
    );
    assert_eq!(one, five, "the batch size changed the sampled answers");
    let records = read_lines(&llama_fixture().join("../eval-records.jsonl"));
    assert_eq!(one.len(), 3 * records.len());
    for (i, line) in one.iter().enumerate() {
        assert_eq!(line["id"], records[i / 3]["id"]);
        assert_eq!(line["sample"], i % 3);
    }
    let distinct: std::collections::HashSet<String> = one[..3]
        .iter()
        .map(|l| l["response_raw"].to_string())
        .collect();
    assert!(
        distinct.len() > 1,
        "three samples, one answer: {distinct:?}"
    );
    let llama = llama_fixture();
    let err = fails(&[
        "generate",
        "--base",
        llama.to_str().unwrap(),
        "--prompt",
        "hi",
        "--samples",
        "2",
    ]);
    assert!(err.contains("--temperature"), "{err}");
}

#[test]
fn every_writing_command_takes_a_bare_file_name() {
    // Run from a fresh working folder, as a user's first try: `--output answers.jsonl`.
    let dir = tempfile::tempdir().unwrap();
    let here = dir.path();
    let llama = llama_fixture();
    let records = root().join(RECORDS);
    let o = pctrain_in(
        here,
        &[
            "generate",
            "--base",
            llama.to_str().unwrap(),
            "--data",
            records.to_str().unwrap(),
            "--output",
            "answers.jsonl",
            "--max-new-tokens",
            "4",
        ],
        &[],
    );
    assert!(o.status.success(), "generate: {}", stderr(&o));
    assert_eq!(read_lines(&here.join("answers.jsonl")).len(), 6);
    let task = task_file(here);
    let o = pctrain_in(
        here,
        &[
            "eval",
            "--task",
            "ifeval",
            "--base",
            llama.to_str().unwrap(),
            "--task-data",
            "task.jsonl",
            "--report",
            "report.jsonl",
            "--max-new-tokens",
            "4",
        ],
        &[],
    );
    assert!(o.status.success(), "eval --base: {}", stderr(&o));
    assert_eq!(read_lines(&here.join("report.jsonl")).len(), 2);
    assert_eq!(read_lines(&here.join("report.responses.jsonl")).len(), 2);
    let o = pctrain_in(
        here,
        &[
            "eval",
            "--task",
            "ifeval",
            "--responses",
            "report.responses.jsonl",
            "--task-data",
            task.to_str().unwrap(),
            "--report",
            "again.jsonl",
        ],
        &[],
    );
    assert!(o.status.success(), "eval --responses: {}", stderr(&o));
    assert_eq!(read_lines(&here.join("again.jsonl")).len(), 2);
    // Nothing but the outputs: no temporary file left behind.
    let mut names: Vec<String> = files_under(here)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "again.jsonl",
            "answers.generate.json",
            "answers.jsonl",
            "report.jsonl",
            "report.responses.jsonl",
            "task.jsonl"
        ]
    );
}

#[test]
fn a_prompt_is_streamed_to_stdout_and_matches_the_file_answer() {
    let dir = tempfile::tempdir().unwrap();
    let records = read_lines(&llama_fixture().join("../eval-records.jsonl"));
    let prompt = records[1]["messages"][0]["content"].as_str().unwrap();
    let llama = llama_fixture();
    let o = pctrain(&[
        "generate",
        "--base",
        llama.to_str().unwrap(),
        "--prompt",
        prompt,
        "--max-new-tokens",
        "12",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let file = generate_file(&dir.path().join("all.jsonl"), &[]);
    assert_eq!(
        stdout(&o),
        format!("{}\n", file[1]["response_raw"].as_str().unwrap())
    );
}

#[test]
fn generate_refuses_bad_requests_clearly() {
    let llama = llama_fixture();
    let base = llama.to_str().unwrap();
    let err = fails(&[
        "generate",
        "--base",
        base,
        "--prompt",
        "hi",
        "--temperature",
        "0",
    ]);
    assert!(err.contains("temperature must be above 0"), "{err}");
    let err = fails(&["generate", "--base", base, "--prompt", "hi", "--top-k", "5"]);
    assert!(err.contains("give --temperature"), "{err}");
    // Room for an answer no memory holds, or for none: an error that says so, not a crash.
    for (budget, expected) in [
        ("100000000000000", "cannot allocate"),
        ("0", "--max-new-tokens must be at least 1"),
    ] {
        let err = fails(&[
            "generate",
            "--base",
            base,
            "--prompt",
            "hi",
            "--max-new-tokens",
            budget,
        ]);
        assert!(err.contains(expected), "{err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    // `generate --data` of one record (`line`) into `out`, with `extra`: the error.
    let generate_one = |name: &str, line: &str, extra: &[&str]| {
        let data = dir.path().join(name);
        std::fs::write(&data, format!("{line}\n")).unwrap();
        let mut args = vec!["generate", "--base", base, "--data", data.to_str().unwrap()];
        args.extend(["--output", out.to_str().unwrap()]);
        args.extend_from_slice(extra);
        fails(&args)
    };
    let err = generate_one(
        "bad.jsonl",
        "{\"messages\": [{\"role\": \"assistant\", \"content\": \"x\"}]}",
        &[],
    );
    assert!(
        err.contains("bad.jsonl:1") && err.contains("no user turn"),
        "{err}"
    );
    assert!(!out.exists(), "a failed run wrote its output");
    // Decoding that fails before its first answer leaves no output and no settings behind.
    let err = generate_one(
        "good.jsonl",
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}",
        &["--max-new-tokens", "100000000000000"],
    );
    assert!(err.contains("cannot allocate"), "{err}");
    assert!(!out.exists() && !dir.path().join("out.generate.json").exists());
}

/// A two-prompt IFEval task file.
fn task_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("task.jsonl");
    let lines = [
        json!({"key": 1, "prompt": "Write a short note. Do not use any commas.",
               "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}),
        json!({"key": 2, "prompt": "Wrap your whole answer in double quotes. End it with the phrase Is there anything else?",
               "instruction_id_list": ["startend:quotation", "startend:end_checker"],
               "kwargs": [{}, {"end_phrase": "Is there anything else?"}]}),
    ];
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// `eval --task ifeval --responses RESPONSES --task-data TASK` and `extra`.
fn ifeval_args<'a>(responses: &'a Path, task: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "eval",
        "--task",
        "ifeval",
        "--responses",
        responses.to_str().unwrap(),
        "--task-data",
        task.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn ifeval_scores_given_responses_and_reports_each_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let task = task_file(dir.path());
    let responses = dir.path().join("responses.jsonl");
    std::fs::write(
        &responses,
        format!(
            "{}\n{}\n",
            json!({"prompt": "Write a short note. Do not use any commas.", "response": "A note, with a comma."}),
            json!({"prompt": "Wrap your whole answer in double quotes. End it with the phrase Is there anything else?",
                   "response": "\"Done. Is there anything else?\""}),
        ),
    )
    .unwrap();
    let report = dir.path().join("report.jsonl");
    let o = pctrain(&ifeval_args(
        &responses,
        &task,
        &["--report", report.to_str().unwrap()],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    let last: Value = serde_json::from_str(stdout(&o).lines().last().unwrap()).unwrap();
    assert_eq!(
        last,
        json!({"prompts": 2, "prompt_strict": 0.5, "inst_strict": 2.0 / 3.0,
               "prompt_loose": 0.5, "inst_loose": 2.0 / 3.0})
    );
    assert!(
        stderr(&o).contains("punctuation:no_comma"),
        "the table by type"
    );
    let lines = read_lines(&report);
    assert_eq!(lines[0]["key"], 1);
    assert_eq!(lines[0]["strict"], json!([false]));
    assert_eq!(
        lines[1]["instruction_id_list"],
        json!(["startend:quotation", "startend:end_checker"])
    );
    assert_eq!(lines[1]["loose"], json!([true, true]));
}

#[test]
fn ifeval_with_a_model_writes_its_answers_beside_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let task = task_file(dir.path());
    let report = dir.path().join("scores.jsonl");
    let llama = llama_fixture();
    let o = pctrain(&[
        "eval",
        "--task",
        "ifeval",
        "--base",
        llama.to_str().unwrap(),
        "--task-data",
        task.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
        "--limit",
        "1",
        "--max-new-tokens",
        "8",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let last: Value = serde_json::from_str(stdout(&o).lines().last().unwrap()).unwrap();
    assert_eq!(last["prompts"], 1);
    let answers = read_lines(&dir.path().join("scores.responses.jsonl"));
    assert_eq!(answers.len(), 1);
    assert_eq!(
        answers[0]["prompt"],
        "Write a short note. Do not use any commas."
    );
    // The saved answers score as the model's did.
    let answers = dir.path().join("scores.responses.jsonl");
    let again = pctrain(&ifeval_args(&answers, &task, &[]));
    assert_eq!(stdout(&again).lines().last(), stdout(&o).lines().last());
}

#[test]
fn ifeval_scores_several_samples_a_prompt_with_pass_at_k() {
    let dir = tempfile::tempdir().unwrap();
    let task = task_file(dir.path());
    let responses = dir.path().join("responses.jsonl");
    let note = "Write a short note. Do not use any commas.";
    let lines: String = [
        json!({"prompt": note, "sample": 0, "response": "A note, with a comma."}),
        json!({"prompt": note, "sample": 1, "response": "A clean note."}),
    ]
    .iter()
    .map(|l| format!("{l}\n"))
    .collect();
    std::fs::write(&responses, lines).unwrap();
    let report = dir.path().join("report.jsonl");
    let o = pctrain(&ifeval_args(
        &responses,
        &task,
        &["--report", report.to_str().unwrap()],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    let last: Value = serde_json::from_str(stdout(&o).lines().last().unwrap()).unwrap();
    // The first sample fails; one of the two passes.
    assert_eq!(last["prompts"], 1);
    assert_eq!(last["prompt_strict"], 0.0);
    assert_eq!(last["samples"], 2);
    assert_eq!(last["prompt_strict_pass_at_1"], 0.5);
    assert_eq!(last["prompt_strict_pass_at_k"], 1.0);
    let lines = read_lines(&report);
    assert_eq!(lines.len(), 2);
    assert_eq!(
        (lines[0]["sample"].clone(), lines[1]["sample"].clone()),
        (json!(0), json!(1))
    );
    assert_eq!(lines[1]["strict"], json!([true]));
}

#[test]
fn ifeval_names_the_file_and_line_of_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let task = task_file(dir.path());
    let responses = dir.path().join("responses.jsonl");
    std::fs::write(
        &responses,
        format!(
            "{}\n",
            json!({"prompt": "Not in the task.", "response": "x"})
        ),
    )
    .unwrap();
    let err = fails(&ifeval_args(&responses, &task, &[]));
    assert!(
        err.contains("responses.jsonl:1") && err.contains("not one of the task's prompts"),
        "{err}"
    );
    let bad_task = dir.path().join("bad-task.jsonl");
    std::fs::write(
        &bad_task,
        format!("{}\n", json!({"key": 1, "prompt": "p", "instruction_id_list": ["keywords:frequency"], "kwargs": [{"keyword": "a"}]})),
    )
    .unwrap();
    let err = fails(&ifeval_args(&responses, &bad_task, &[]));
    assert!(
        err.contains("bad-task.jsonl:1") && err.contains("needs the argument `frequency`"),
        "{err}"
    );
}

#[test]
fn training_answers_ifeval_at_each_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let task = task_file(dir.path());
    let run = dir.path().join("run");
    let mut args = common::tiny_run(&run, "2");
    args.extend(
        [
            "--eval-task",
            "ifeval",
            "--eval-task-data",
            task.to_str().unwrap(),
            "--eval-limit",
            "1",
            "--eval-max-new-tokens",
            "6",
            "--eval-every",
            "1",
        ]
        .map(String::from),
    );
    let o = pctrain(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    let metrics = read_lines(&run.join("metrics.jsonl"));
    assert_eq!(metrics.len(), 2);
    for m in &metrics {
        assert_eq!(m["ifeval_prompts"], 1, "{m}");
        for key in [
            "ifeval_prompt_strict",
            "ifeval_inst_strict",
            "ifeval_prompt_loose",
            "ifeval_inst_loose",
        ] {
            let v = m[key].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{key} {v}");
        }
    }
    let svg = std::fs::read_to_string(run.join("loss.svg")).unwrap();
    assert!(
        svg.contains("ifeval prompt strict"),
        "the accuracy is drawn"
    );
}

#[test]
fn generate_resumes_where_a_stop_left_off_and_keeps_each_records_constraints() {
    let dir = tempfile::tempdir().unwrap();
    let task = task_file(dir.path());
    let llama = llama_fixture();
    let out = dir.path().join("answers.jsonl");
    let run_at = |temperature: &str| {
        pctrain(&[
            "generate",
            "--base",
            llama.to_str().unwrap(),
            "--data",
            task.to_str().unwrap(),
            "--samples",
            "3",
            "--temperature",
            temperature,
            "--max-new-tokens",
            "12",
            "--output",
            out.to_str().unwrap(),
        ])
    };
    let run = || run_at("0.9");
    let o = run();
    assert!(o.status.success(), "{}", stderr(&o));
    let whole = std::fs::read_to_string(&out).unwrap();
    let lines = read_lines(&out);
    assert_eq!(lines.len(), 6);
    // IFEval's line shape is read as a record: its key is the id, its constraints go along.
    assert_eq!(lines[0]["id"], "1");
    assert_eq!(
        lines[0]["instruction_id_list"],
        json!(["punctuation:no_comma"])
    );
    assert_eq!(
        lines[5]["kwargs"],
        json!([{}, {"end_phrase": "Is there anything else?"}])
    );
    // A stop leaves some answers, in the order they ended, and a line cut short.
    let kept: Vec<&str> = whole.lines().collect();
    let partial = format!("{}\n{}\n{}", kept[4], kept[1], &kept[2][..20]);
    std::fs::write(&out, partial).unwrap();
    let o = run();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("(2 from an earlier run"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        whole,
        "resumed != whole"
    );
    // The answers score as they are.
    let o = pctrain(&ifeval_args(&out, &task, &[]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("\"samples\":3"), "{}", stdout(&o));
    // Answers of other settings, records or prompts are not taken for this one's.
    let o = run_at("0.7");
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("other settings (temperature differ"), "{err}");
    for (line, expected) in [
        (
            json!({"id": "77", "sample": 0, "prompt": "x", "response": "y"}),
            "not one of this run's",
        ),
        (
            json!({"id": "1", "sample": 0, "prompt": "x", "response": "y"}),
            "answers another prompt",
        ),
    ] {
        std::fs::write(&out, format!("{line}\n")).unwrap();
        let o = run();
        assert!(!o.status.success());
        let err = stderr(&o);
        assert!(
            err.contains("answers.jsonl:1") && err.contains(expected),
            "{err}"
        );
    }
    std::fs::remove_file(dir.path().join("answers.generate.json")).unwrap();
    let o = run();
    assert!(
        stderr(&o).contains("answers.generate.json with the settings"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn generate_refuses_repeated_ids_before_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("twice.jsonl");
    let line = json!({"key": 5, "prompt": "Hi.", "instruction_id_list": [], "kwargs": []});
    std::fs::write(&data, format!("{line}\n{line}\n")).unwrap();
    let llama = llama_fixture();
    let out = dir.path().join("a.jsonl");
    let err = fails(&[
        "generate",
        "--base",
        llama.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(
        err.contains("twice.jsonl:2") && err.contains("twice.jsonl:1") && err.contains("\"5\""),
        "{err}"
    );
    assert!(!out.exists());
}
