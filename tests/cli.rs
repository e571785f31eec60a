//! End-to-end tests of the `pctrain` binary: data commands, eval, training, resume.

mod common;

use std::path::Path;
use std::process::Command;

use common::{fails, pctrain, root, spawn, stderr, stdout, tiny_run, wait_for_lines};

#[test]
fn inspect_json_gives_one_sample_a_line_with_aligned_labels() {
    let o = pctrain(&[
        "data",
        "inspect",
        "--data",
        "examples/tulu-pc.jsonl",
        "--mix",
        "nl-pc",
        "--json",
        "--limit",
        "5",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    for v in &lines {
        let ids = v["input_ids"].as_array().unwrap();
        let labels = v["labels"].as_array().unwrap();
        assert_eq!(ids.len(), labels.len());
        assert!(labels.iter().any(|l| l.as_i64() != Some(-100)));
        for (i, l) in ids.iter().zip(labels) {
            assert!(l.as_i64() == Some(-100) || l == i);
        }
        assert!(v["text"].as_str().unwrap().contains("<|assistant|>"));
        assert!(["nl", "nl-pc"].contains(&v["format"].as_str().unwrap()));
    }
    // File order: the first sample is the first record.
    assert_eq!(lines[0]["id"], "pctrain-ex-0001");
}

#[test]
fn inspect_marks_the_trained_part() {
    let o = pctrain(&[
        "data",
        "inspect",
        "--data",
        "examples/alpaca-pc.jsonl",
        "--mix",
        "nl",
        "--limit",
        "1",
        "--template",
        "chatml",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with("── sample 1 · id alpaca-pc.jsonl:1 · nl"),
        "{out}"
    );
    let marked = &out[out.find('⟦').unwrap()..out.find('⟧').unwrap()];
    assert!(marked.ends_with("<|im_end|>"), "{out}");
    assert!(!marked.contains("<|im_start|>user"), "{out}");
}

#[test]
fn inspect_shuffle_is_seeded() {
    let run = |seed: &str| {
        stdout(&pctrain(&[
            "data",
            "inspect",
            "--data",
            "examples/tulu-pc.jsonl",
            "--json",
            "--shuffle",
            "--seed",
            seed,
            "--limit",
            "5",
        ]))
    };
    assert_eq!(run("1"), run("1"));
    assert_ne!(run("1"), run("2"));
}

#[test]
fn stats_counts_formats_fallbacks_and_packing() {
    let o = pctrain(&[
        "data",
        "stats",
        "--data",
        "examples/tulu-pc.jsonl",
        "examples/alpaca-pc.jsonl",
        "--mix",
        "nl-pc",
        "--seq-len",
        "1024",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let records = v["records"].as_u64().unwrap();
    let fallbacks = v["fallbacks_to_nl"].as_u64().unwrap();
    assert_eq!(records, 126);
    assert_eq!(v["samples"]["nl"].as_u64().unwrap(), fallbacks);
    assert_eq!(v["samples"]["nl-pc"].as_u64().unwrap(), records - fallbacks);
    assert!(fallbacks >= 8, "records without pseudo-code fall back");
    assert!(v["trained_tokens"].as_u64() < v["tokens"].as_u64());
    let eff = v["packing_efficiency"].as_f64().unwrap();
    assert!(eff > 0.9 && eff <= 1.0, "{eff}");

    let o = pctrain(&[
        "data",
        "stats",
        "--data",
        "examples/tulu-pc.jsonl",
        "--mix",
        "nl-pc",
        "--require-pc",
    ]);
    let out = stdout(&o);
    assert!(
        out.contains("samples                      106 (nl-pc 106)"),
        "{out}"
    );
    assert!(out.contains("dropped, no pc (--require-pc) 8"), "{out}");
}

#[test]
fn bad_input_fails_with_file_line_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"instruction\": \"a\", \"output\": \"b\"}\n{\"messages\": [{\"role\": \"bot\", \"content\": \"x\"}]}\n",
    )
    .unwrap();
    let bad = bad.to_str().unwrap();
    let err = fails(&["data", "stats", "--data", bad]);
    assert!(err.contains(&format!("{bad}:2: messages[0].role")), "{err}");

    let o = pctrain(&["data", "stats", "--data", bad, "--skip-invalid", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["invalid_skipped"], 1);
    assert_eq!(v["records"], 1);
    let o = pctrain(&["data", "inspect", "--data", bad, "--skip-invalid"]);
    assert!(
        stderr(&o).contains("skipped 1 invalid records"),
        "{}",
        stderr(&o)
    );

    let err = fails(&["data", "inspect", "--data", "examples/nope.jsonl"]);
    assert!(err.contains("examples/nope.jsonl"), "{err}");
    let err = fails(&[
        "data",
        "inspect",
        "--data",
        "examples/tulu-pc.jsonl",
        "--mix",
        "nl-pcx",
    ]);
    assert!(err.contains("nl-pcx"), "{err}");
    let err = fails(&[
        "data",
        "inspect",
        "--data",
        "examples/tulu-pc.jsonl",
        "--template",
        "zephyr",
    ]);
    assert!(err.contains("zephyr"), "{err}");
    let err = fails(&[
        "data",
        "inspect",
        "--data",
        "examples/tulu-pc.jsonl",
        "--tokenizer",
        "no/such/dir/",
    ]);
    assert!(err.contains("no/such/dir"), "{err}");
    let err = fails(&[
        "data",
        "inspect",
        "--data",
        "examples/tulu-pc.jsonl",
        "--pc-template",
        "{response}",
    ]);
    assert!(err.contains("{pseudo_code}"), "{err}");
}

#[test]
fn a_model_folder_tokenizer_with_its_own_template() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(root().join("assets/tiny").join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(
        dir.path().join("chat_template.jinja"),
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}",
    )
    .unwrap();
    let o = pctrain(&[
        "data",
        "inspect",
        "--data",
        "examples/tulu-pc.jsonl",
        "--limit",
        "1",
        "--json",
        "--tokenizer",
        dir.path().to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).lines().next().unwrap()).unwrap();
    assert!(
        v["text"]
            .as_str()
            .unwrap()
            .starts_with("<|im_start|>system\n"),
        "{v}"
    );
}

const LLAMA: &str = "crates/pctrain-model/tests/fixtures/llama";
const EVAL_RECORDS: &str = "crates/pctrain-model/tests/fixtures/eval-records.jsonl";

#[test]
fn samples_match_an_independent_python_tokenisation() {
    // eval-samples.jsonl was written by scripts/make_fixtures.py with the `tokenizers` library.
    let o = pctrain(&[
        "data",
        "inspect",
        "--data",
        EVAL_RECORDS,
        "--mix",
        "nl",
        "--seq-len",
        "64",
        "--json",
        "--tokenizer",
        LLAMA,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ours: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let theirs: Vec<serde_json::Value> =
        std::fs::read_to_string(root().join(LLAMA).join("eval-samples.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    assert_eq!(ours.len(), theirs.len());
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!(a["id"], b["id"]);
        assert_eq!(a["input_ids"], b["input_ids"], "{}", a["id"]);
        assert_eq!(a["labels"], b["labels"], "{}", a["id"]);
    }
}

#[test]
fn eval_gives_the_loss_transformers_gives() {
    let o = pctrain(&[
        "eval",
        "--base",
        LLAMA,
        "--data",
        EVAL_RECORDS,
        "--mix",
        "nl",
        "--seq-len",
        "64",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let got: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let want: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join(LLAMA).join("eval-reference.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(got["tokens"], want["tokens"]);
    let (g, w) = (
        got["loss"].as_f64().unwrap(),
        want["loss"].as_f64().unwrap(),
    );
    assert!(((g - w) / w).abs() < 1e-5, "loss {g} vs transformers {w}");

    let err = fails(&[
        "eval",
        "--base",
        "no/such/model/dir/",
        "--data",
        EVAL_RECORDS,
    ]);
    assert!(err.contains("no/such/model/dir/"), "{err}");
}

#[test]
fn training_is_the_default_command_and_exports_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = tiny_run(dir.path(), "4");
    args.extend(
        [
            "--eval-data",
            "examples/alpaca-pc.jsonl",
            "--eval-every",
            "3",
        ]
        .map(String::from),
    );
    let o = pctrain(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    let metrics: Vec<serde_json::Value> = std::fs::read_to_string(dir.path().join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(metrics.len(), 4);
    for key in ["step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s"] {
        assert!(metrics[0].get(key).is_some(), "metrics lack {key}");
    }
    assert!(metrics[0]["memory"]["peak_rss_mib"].as_f64().unwrap() > 0.0);
    // Evaluated every third step and at the end.
    let evaluated: Vec<u64> = metrics
        .iter()
        .filter(|m| m.get("eval_loss").is_some())
        .map(|m| m["step"].as_u64().unwrap())
        .collect();
    assert_eq!(evaluated, [3, 4]);
    let svg = std::fs::read_to_string(dir.path().join("loss.svg")).unwrap();
    assert!(svg.contains("<polyline"), "{svg}");
    assert!(metrics[3]["loss"].as_f64() < metrics[0]["loss"].as_f64());
    let settings: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("settings.json")).unwrap())
            .unwrap();
    assert_eq!(settings["method"], "full");
    assert_eq!(settings["max_steps"], 4);
    assert_eq!(settings["preset"], "tiny");
    for f in [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "README.md",
    ] {
        assert!(
            dir.path().join("model").join(f).is_file(),
            "export lacks {f}"
        );
    }
    // The export is a model folder pctrain itself evaluates.
    let o = pctrain(&[
        "eval",
        "--base",
        dir.path().join("model").to_str().unwrap(),
        "--data",
        "examples/alpaca-pc.jsonl",
        "--seq-len",
        "128",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // ... and scores as the run's last evaluation did.
    let last: serde_json::Value = serde_json::from_str(stdout(&o).lines().last().unwrap()).unwrap();
    let (a, b) = (
        last["loss"].as_f64().unwrap(),
        metrics[3]["eval_loss"].as_f64().unwrap(),
    );
    assert!((a - b).abs() < 1e-9 * a, "eval {a} vs the run's {b}");
    assert_eq!(last["tokens"], metrics[3]["eval_tokens"]);
}

/// Runs `args(dir)` straight through, and again killed with SIGKILL once `metrics.jsonl` has
/// three lines, then resumed; the exported `file`s and the metrics must be identical.
fn killed_and_resumed_equals_straight(args: impl Fn(&Path) -> Vec<String>, file: &str) {
    let straight = tempfile::tempdir().unwrap();
    let o = pctrain(
        &args(straight.path())
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(o.status.success(), "{}", stderr(&o));

    let killed = tempfile::tempdir().unwrap();
    let killed_args = args(killed.path());
    let mut child = spawn(
        &killed_args.iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
    );
    wait_for_lines(&mut child, &killed.path().join("metrics.jsonl"), 3);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!killed.path().join(file).exists());

    let mut resume = args(killed.path());
    resume.push("--resume".into());
    let o = pctrain(&resume.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("resuming from"), "{}", stderr(&o));
    let a = std::fs::read(straight.path().join(file)).unwrap();
    let b = std::fs::read(killed.path().join(file)).unwrap();
    assert!(
        a == b,
        "the resumed run's {file} differs from the uninterrupted run's"
    );
    // Each step is in the metrics once, with the same loss.
    let steps = |dir: &Path| -> Vec<(u64, f64, f64)> {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let f = |k: &str| v[k].as_f64().unwrap();
                (v["step"].as_u64().unwrap(), f("loss"), f("grad_norm"))
            })
            .collect()
    };
    assert_eq!(steps(straight.path()), steps(killed.path()));
}

#[test]
fn a_run_killed_mid_way_and_resumed_ends_bit_identical() {
    killed_and_resumed_equals_straight(|dir| tiny_run(dir, "6"), "model/model.safetensors");
}

#[test]
fn a_lora_run_with_dropout_killed_and_resumed_exports_the_same_adapter() {
    let llama = root().join("crates/pctrain-model/tests/fixtures/llama");
    let args = |dir: &Path| -> Vec<String> {
        [
            "--base",
            llama.to_str().unwrap(),
            "--data",
            "examples/tulu-pc.jsonl",
            "--seq-len",
            "256",
            "--grad-accum",
            "2",
            "--lora-r",
            "4",
            "--lora-dropout",
            "0.1",
            "--max-steps",
            "6",
            "--save-every",
            "1",
            "--output",
            dir.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };
    killed_and_resumed_equals_straight(args, "adapter/adapter_model.safetensors");
}

#[test]
fn ctrl_c_saves_a_checkpoint_and_exits_cleanly() {
    let out = tempfile::tempdir().unwrap();
    // Checkpoints only every 100 steps: any checkpoint is Ctrl-C's.
    let args: Vec<String> = tiny_run(out.path(), "50")
        .into_iter()
        .map(|a| if a == "1" { "100".to_string() } else { a })
        .collect();
    let mut child = spawn(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    wait_for_lines(&mut child, &out.path().join("metrics.jsonl"), 1);
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(o.status.success(), "{err}");
    assert!(err.contains("interrupted: the checkpoint of step"), "{err}");
    let saved = std::fs::read_dir(out.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().starts_with("checkpoint-"));
    assert!(
        saved,
        "no checkpoint after Ctrl-C (--save-every 100 would not have saved one)"
    );
    assert!(
        !out.path().join("model").exists(),
        "an interrupted run does not export"
    );
}

/// The metrics of a run folder, a line each.
fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn max_steps_repeats_the_data_and_a_finished_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    // The twelve short records pack into fewer rows than a batch: an epoch is one step.
    let run = |extra: &[&str]| {
        let mut args = vec![
            "--base",
            "tiny",
            "--mix",
            "nl",
            "--data",
            "examples/alpaca-pc.jsonl",
            "--seq-len",
            "1024",
            "--batch-size",
            "8",
            "--save-every",
            "100",
            "--output",
            out,
        ];
        args.extend(extra);
        pctrain(&args)
    };
    // --max-steps overrides the epochs: the data repeats until the run has taken them all.
    let o = run(&["--max-steps", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains(", 3 steps, into"), "{}", stderr(&o));
    let m = metrics(dir.path());
    assert_eq!(m.len(), 3);
    assert!(m[2]["epoch"].as_u64().unwrap() >= 2, "{:?}", m[2]);
    assert!(dir.path().join("checkpoint-000003").is_dir());

    // A finished run saved its last step: it exports, and a larger --max-steps continues it.
    let o = run(&["--max-steps", "5", "--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let steps: Vec<u64> = metrics(dir.path())
        .iter()
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [1, 2, 3, 4, 5]);
    assert!(dir.path().join("checkpoint-000005").is_dir());
    let exported = dir.path().join("exported");
    let o = pctrain(&["export", out, "--out", exported.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(exported.join("model.safetensors").is_file());
}

#[test]
fn a_run_whose_epochs_end_saves_its_last_step_and_goes_on_with_more_steps() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let base = [
        "--base",
        "tiny",
        "--mix",
        "nl",
        "--data",
        "examples/alpaca-pc.jsonl",
        "--seq-len",
        "256",
        "--save-every",
        "100",
        "--epochs",
        "1",
        "--output",
        out,
    ];
    let o = pctrain(&base);
    assert!(o.status.success(), "{}", stderr(&o));
    let settings: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("settings.json")).unwrap())
            .unwrap();
    let planned = settings["max_steps"].as_u64().unwrap();
    assert!(planned >= 2, "{planned} steps an epoch");
    assert_eq!(metrics(dir.path()).len() as u64, planned);
    assert!(dir.path().join(format!("checkpoint-{planned:06}")).is_dir());
    let more = (planned + 2).to_string();
    let mut args = base.to_vec();
    args.extend(["--resume", "--max-steps", &more]);
    let o = pctrain(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        metrics(dir.path()).len() as u64,
        planned + 2,
        "{}",
        stderr(&o)
    );
    assert!(dir.path().join(format!("checkpoint-{more:0>6}")).is_dir());
}

#[test]
fn f16_is_refused_at_the_flag_for_what_it_is() {
    for args in [
        &["--dtype", "f16", "--max-steps", "1"][..],
        &["--dtype", "float16", "--max-steps", "1"][..],
    ] {
        let err = fails(args);
        assert!(
            err.contains("not supported") && err.contains("bf16"),
            "{err}"
        );
    }
    let help = stdout(&pctrain(&["--help"]));
    assert!(!help.contains("f16 (CUDA)"), "{help}");
}
