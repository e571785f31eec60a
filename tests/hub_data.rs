//! Dataset repositories of the hub as data: IFEval's prompts and training data, fetched from a
//! loopback hub into the cache, then read offline from it; missing and gated repositories.

mod common;

use std::collections::HashMap;

use common::{pctrain_env, stderr, stdout, tiny_run};
use pctrain_testkit::hub::{LoopbackHub, COMMIT};
use serde_json::{json, Value};

const PROMPT: &str = "Write a short note. Do not use any commas.";

fn ifeval_files() -> HashMap<String, Vec<u8>> {
    let task = json!({"key": 1, "prompt": PROMPT,
                      "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]});
    HashMap::from([
        (
            "ifeval_input_data.jsonl".to_string(),
            format!("{task}\n").into_bytes(),
        ),
        ("README.md".to_string(), b"# IFEval\n".to_vec()),
    ])
}

fn sft_files() -> HashMap<String, Vec<u8>> {
    let records = std::fs::read(common::root().join("examples/alpaca-pc.jsonl")).unwrap();
    let half = records.len() / 2;
    let cut = half + records[half..].iter().position(|&b| b == b'\n').unwrap() + 1;
    HashMap::from([
        ("data/train-0.jsonl".to_string(), records[..cut].to_vec()),
        ("data/train-1.jsonl".to_string(), records[cut..].to_vec()),
        ("README.md".to_string(), b"# SFT\n".to_vec()),
    ])
}

fn stats_records(o: &std::process::Output) -> u64 {
    assert!(o.status.success(), "{}", stderr(o));
    let v: Value = serde_json::from_str(stdout(o).lines().last().unwrap()).unwrap();
    v["records"].as_u64().unwrap()
}

#[test]
fn dataset_repos_download_into_the_cache_and_read_offline() {
    let hub = LoopbackHub::start(
        HashMap::from([
            ("datasets/google/IFEval".to_string(), ifeval_files()),
            ("datasets/pctrain-test/sft".to_string(), sft_files()),
        ]),
        &["datasets/pctrain-test/gated"],
        400,
    )
    .unwrap();
    let home = tempfile::tempdir().unwrap();
    let home_s = home.path().to_str().unwrap();
    let online = [("HF_ENDPOINT", hub.endpoint.as_str()), ("HF_HOME", home_s)];
    let offline = [
        ("HF_ENDPOINT", hub.endpoint.as_str()),
        ("HF_HOME", home_s),
        ("HF_HUB_OFFLINE", "1"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let responses = dir.path().join("responses.jsonl");
    std::fs::write(
        &responses,
        format!("{}\n", json!({"prompt": PROMPT, "response": "No commas."})),
    )
    .unwrap();
    let ifeval = [
        "eval",
        "--task",
        "ifeval",
        "--responses",
        responses.to_str().unwrap(),
    ];

    // IFEval's prompts come from google/IFEval by default.
    let o = pctrain_env(&ifeval, &online);
    assert!(o.status.success(), "{}", stderr(&o));
    let last: Value = serde_json::from_str(stdout(&o).lines().last().unwrap()).unwrap();
    assert_eq!(
        (last["prompts"].clone(), last["prompt_strict"].clone()),
        (json!(1), json!(1.0))
    );
    let cached = home
        .path()
        .join("hub/datasets--google--IFEval/snapshots")
        .join(COMMIT);
    assert!(cached.join("ifeval_input_data.jsonl").is_file());
    assert!(
        !cached.join("README.md").exists(),
        "only the file asked for is downloaded"
    );

    // Training data: every JSONL file of the repository, or those a glob names.
    let stats = |spec: &str, env: &[(&str, &str)]| {
        pctrain_env(&["data", "stats", "--json", "--data", spec], env)
    };
    let all = stats_records(&stats("pctrain-test/sft", &online));
    let first = stats_records(&stats("pctrain-test/sft:data/train-0.jsonl", &online));
    assert!(first > 0 && all > first, "{first} of {all}");
    let run = dir.path().join("run");
    let mut args = tiny_run(&run, "1");
    let at = args
        .iter()
        .position(|a| a == "examples/alpaca-pc.jsonl")
        .unwrap();
    args[at] = "pctrain-test/sft@main:data/*.jsonl".into();
    let o = pctrain_env(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &online,
    );
    assert!(o.status.success(), "{}", stderr(&o));

    // Offline, the cache answers and the server is not asked again.
    let asked = hub.requests().len();
    assert_eq!(stats_records(&stats("pctrain-test/sft", &offline)), all);
    let o = pctrain_env(&ifeval, &offline);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(hub.requests().len(), asked, "offline runs made requests");

    // A cache laid out as `huggingface-cli download --repo-type dataset` leaves it.
    let other = tempfile::tempdir().unwrap();
    let repo = other.path().join("hub/datasets--someone--notes");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
    let snapshot = repo.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::write(
        snapshot.join("notes.jsonl"),
        &sft_files()["data/train-0.jsonl"],
    )
    .unwrap();
    let cli_cache = [
        ("HF_HOME", other.path().to_str().unwrap()),
        ("HF_HUB_OFFLINE", "1"),
    ];
    assert_eq!(stats_records(&stats("someone/notes", &cli_cache)), first);

    // Clear errors for what cannot be had.
    let err = |spec: &str, env: &[(&str, &str)]| {
        let o = stats(spec, env);
        assert_eq!(o.status.code(), Some(1), "{spec}");
        let e = stderr(&o);
        assert!(!e.contains("panicked"), "{e}");
        e
    };
    let e = err("pctrain-test/missing", &online);
    assert!(
        e.contains("pctrain-test/missing") && e.contains("No such repository"),
        "{e}"
    );
    let e = err("pctrain-test/gated", &online);
    assert!(e.contains("gated"), "{e}");
    let e = err("pctrain-test/sft:data/*.parquet", &online);
    assert!(e.contains("no JSONL or Parquet file matching"), "{e}");
    let e = err("pctrain-test/never-fetched", &offline);
    assert!(e.contains("HF_HUB_OFFLINE"), "{e}");
    let e = err("no-such-file.jsonl", &online);
    assert!(e.contains("no such file"), "{e}");
}
