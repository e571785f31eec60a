//! End-to-end tests of LoRA training from a PEFT adapter, exports and hub transfers.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::{files_under, llama_fixture, pctrain, pctrain_env, read_f32, stderr, tiny_run};
use pctrain_testkit::hub::LoopbackHub;
use serde_json::Value;

/// Three LoRA steps from the fixture adapter on the first three evaluation samples, as
/// `scripts/make_fixtures.py` ran them with PEFT.
fn peft_steps_run(out: &Path) -> std::process::Output {
    let llama = llama_fixture();
    pctrain(&[
        "--base",
        llama.to_str().unwrap(),
        "--data",
        "crates/pctrain-model/tests/fixtures/eval-records.jsonl",
        "--mix",
        "nl",
        "--template",
        "tulu",
        "--seq-len",
        "64",
        "--init-adapter",
        llama.join("adapter").to_str().unwrap(),
        "--max-steps",
        "3",
        "--no-shuffle",
        "--no-packing",
        "--batch-size",
        "1",
        "--lr",
        "1e-3",
        "--output",
        out.to_str().unwrap(),
    ])
}

#[test]
fn init_adapter_training_reproduces_three_peft_adamw_steps() {
    let dir = tempfile::tempdir().unwrap();
    let o = peft_steps_run(dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let reference = llama_fixture().join("peft-steps");
    let steps: Value =
        serde_json::from_str(&std::fs::read_to_string(reference.join("steps.json")).unwrap())
            .unwrap();
    let metrics: Vec<Value> = std::fs::read_to_string(dir.path().join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(metrics.len(), 3);
    for (ours, theirs) in metrics.iter().zip(steps["steps"].as_array().unwrap()) {
        for key in ["loss", "grad_norm", "lr"] {
            let (a, b) = (ours[key].as_f64().unwrap(), theirs[key].as_f64().unwrap());
            assert!(
                (a - b).abs() <= 1e-5 * b.abs(),
                "step {}: {key} {a} vs PEFT {b}",
                theirs["step"]
            );
        }
        assert_eq!(ours["tokens"], theirs["tokens"]);
    }
    // The settings say what trained: the adapter's own rank, alpha and targets.
    let settings: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("settings.json")).unwrap())
            .unwrap();
    assert_eq!(settings["lora"]["r"], 4);
    assert_eq!(settings["lora"]["alpha"], 8.0);
    let ours = read_f32(&dir.path().join("adapter/adapter_model.safetensors"));
    let peft = read_f32(&reference.join("adapter_model.safetensors"));
    let start = read_f32(&llama_fixture().join("adapter/adapter_model.safetensors"));
    assert_eq!(ours.len(), peft.len());
    for (name, want) in &peft {
        let got = ours
            .get(name)
            .unwrap_or_else(|| panic!("export lacks {name}"));
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        let moved = want
            .iter()
            .zip(&start[name])
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        let err = got
            .iter()
            .zip(want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(err <= 1e-5 * scale, "{name}: off by {err} (scale {scale})");
        assert!(
            moved > 100.0 * err,
            "{name}: moved {moved}, not measurably more than {err}"
        );
    }
}

#[test]
fn a_lora_run_exports_an_adapter_and_a_merged_model_in_shards() {
    let dir = tempfile::tempdir().unwrap();
    let o = peft_steps_run(dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let adapter = dir.path().join("adapter");
    for f in [
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "README.md",
    ] {
        assert!(adapter.join(f).is_file(), "the adapter export lacks {f}");
    }
    let card = std::fs::read_to_string(adapter.join("README.md")).unwrap();
    assert!(
        card.starts_with("---\n") && card.contains("library_name: peft"),
        "{card}"
    );
    // The card names the base folder and the data file as a user would publish them, never
    // by their paths here.
    let root = common::root().canonicalize().unwrap();
    assert!(
        card.contains("`llama`") && card.contains("eval-records.jsonl"),
        "{card}"
    );
    for local in [
        root.to_str().unwrap(),
        "crates/pctrain-model",
        "/tmp",
        "fixtures/",
    ] {
        assert!(
            !card.contains(local),
            "the card shows the local path {local}: {card}"
        );
    }
    // How it trained, for `generate` to strip pseudo-code by.
    let trained: Value =
        serde_json::from_str(&std::fs::read_to_string(adapter.join("pctrain.json")).unwrap())
            .unwrap();
    assert_eq!(trained["mix"], "nl");
    assert_eq!(trained["pc_template"], pctrain_data::PcJoin::DEFAULT);
    // The chat template is the one trained with (tulu), in both places transformers looks.
    let jinja = std::fs::read_to_string(adapter.join("chat_template.jinja")).unwrap();
    assert!(jinja.contains("<|assistant|>"), "{jinja}");
    let tc: Value = serde_json::from_str(
        &std::fs::read_to_string(adapter.join("tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(tc["chat_template"], jinja.as_str());

    // Merged, in shards small enough that the fixture needs several.
    let merged = dir.path().join("merged");
    let o = pctrain(&[
        "export",
        dir.path().to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
        "--merged",
        "--max-shard-size",
        "100000",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let index: Value = serde_json::from_str(
        &std::fs::read_to_string(merged.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let weight_map = index["weight_map"].as_object().unwrap();
    let shards: std::collections::BTreeSet<&str> =
        weight_map.values().map(|v| v.as_str().unwrap()).collect();
    assert!(shards.len() > 1, "{shards:?}");
    let mut total = 0u64;
    let mut tensors = HashMap::new();
    for shard in &shards {
        let path = merged.join(shard);
        let part = read_f32(&path);
        // Shards stay under the limit (plus their header) unless one tensor alone exceeds it.
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(
            part.len() == 1 || size < 100_000 + 10_000,
            "{shard}: {size} bytes"
        );
        for (name, values) in part {
            assert_eq!(
                weight_map[&name], *shard,
                "{name} is not where the index says"
            );
            total += 4 * values.len() as u64;
            tensors.insert(name, values);
        }
    }
    assert_eq!(index["metadata"]["total_size"], total);
    // The merged weights are base + scale * B A: the model pctrain evaluates with the adapter.
    let base = read_f32(&llama_fixture().join("model.safetensors"));
    assert_eq!(tensors.len(), base.len());
    for f in [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "chat_template.jinja",
    ] {
        assert!(merged.join(f).is_file(), "the merged export lacks {f}");
    }
    let eval = |extra: &[&str]| -> f64 {
        let mut args = vec![
            "eval",
            "--data",
            "crates/pctrain-model/tests/fixtures/eval-records.jsonl",
            "--mix",
            "nl",
            "--template",
            "tulu",
            "--seq-len",
            "64",
        ];
        args.extend_from_slice(extra);
        let o = pctrain(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let out = String::from_utf8(o.stdout).unwrap();
        let last: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        last["loss"].as_f64().unwrap()
    };
    let llama = llama_fixture();
    let with_adapter = eval(&[
        "--base",
        llama.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
    ]);
    let from_merged = eval(&["--base", merged.to_str().unwrap()]);
    let base_only = eval(&["--base", llama.to_str().unwrap()]);
    assert!(
        (with_adapter - from_merged).abs() < 1e-5,
        "{with_adapter} vs {from_merged}"
    );
    assert!(
        (with_adapter - base_only).abs() > 1e-4,
        "the adapter changed nothing"
    );
}

#[test]
fn push_to_hub_uploads_the_export_and_the_token_appears_nowhere() {
    const TOKEN: &str = "hf_pctrainLoopbackSecret0123456789";
    let dir = tempfile::tempdir().unwrap();
    let args = tiny_run(&dir.path().join("run"), "2");
    let o = pctrain(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    let hub = LoopbackHub::start(HashMap::new(), &[], 50).unwrap();
    let home = dir.path().join("hf-home");
    let out = dir.path().join("export");
    let o = pctrain_env(
        &[
            "export",
            dir.path().join("run").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--push-to-hub",
            "alice/tiny-pc",
            "--private",
        ],
        &[
            ("HF_ENDPOINT", &hub.endpoint),
            ("HF_TOKEN", TOKEN),
            ("HF_HOME", home.to_str().unwrap()),
            ("NO_PROXY", "127.0.0.1,localhost"),
            ("PCTRAIN_LOG", "debug"),
        ],
    );
    let (out_text, err_text) = (String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(o.status.success(), "{err_text}");
    assert!(err_text.contains("alice/tiny-pc"), "{err_text}");
    let uploads = hub.uploads();
    let (private, files) = &uploads["alice/tiny-pc"];
    assert!(*private);
    let exported = files_under(&out);
    assert_eq!(files.len(), exported.len(), "{:?}", files.keys());
    for path in &exported {
        let name = path.strip_prefix(&out).unwrap().to_str().unwrap();
        assert_eq!(
            files.get(name).map(Vec::len),
            Some(std::fs::read(path).unwrap().len()),
            "{name}"
        );
        assert_eq!(files[name], std::fs::read(path).unwrap(), "{name}");
    }
    // The token went where it belongs (the Authorization header) ...
    let requests = hub.requests();
    assert!(requests.iter().any(|r| r.method == "POST"));
    for r in &requests {
        assert_eq!(
            r.authorization.as_deref(),
            Some(format!("Bearer {TOKEN}").as_str())
        );
    }
    // ... and nowhere else: not in the output, logs, run folder, export, uploads or cache.
    assert!(!out_text.contains(TOKEN) && !err_text.contains(TOKEN));
    for file in files_under(dir.path()) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
            "the token is in {}",
            file.display()
        );
    }
    for (name, bytes) in files {
        assert!(
            !bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
            "{name}"
        );
    }
}

#[test]
fn a_preset_downloads_its_base_from_the_hub_and_trains_lora() {
    let llama = llama_fixture();
    let mut files = HashMap::new();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        files.insert(f.to_string(), std::fs::read(llama.join(f)).unwrap());
    }
    let repos = HashMap::from([("meta-llama/Meta-Llama-3-8B".to_string(), files)]);
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("hf-home");
    let run = dir.path().join("run");
    let args = [
        "--base",
        "llama3-8b",
        "--device",
        "cpu",
        "--dtype",
        "f32",
        "--data",
        "crates/pctrain-model/tests/fixtures/eval-records.jsonl",
        "--seq-len",
        "64",
        "--batch-size",
        "1",
        "--grad-accum",
        "1",
        "--max-steps",
        "2",
        "--output",
        run.to_str().unwrap(),
    ];
    // Gated without a token: an error that says how to log in.
    let gated = LoopbackHub::start(repos.clone(), &["meta-llama/Meta-Llama-3-8B"], 20).unwrap();
    let env = |endpoint: &str| {
        vec![
            ("HF_ENDPOINT", endpoint.to_string()),
            ("HF_HOME", home.to_str().unwrap().to_string()),
            ("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1".to_string()),
            ("NO_PROXY", "127.0.0.1,localhost".to_string()),
        ]
    };
    let e = env(&gated.endpoint);
    let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let o = pctrain_env(&args, &e);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("hf auth login") && err.contains("HF_TOKEN"),
        "{err}"
    );

    let hub = LoopbackHub::start(repos, &[], 50).unwrap();
    let e = env(&hub.endpoint);
    let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let o = pctrain_env(&args, &e);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(home
        .join("hub/models--meta-llama--Meta-Llama-3-8B")
        .is_dir());
    let settings: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("settings.json")).unwrap()).unwrap();
    assert_eq!(settings["preset"], "llama3-8b");
    assert_eq!(settings["base"], "meta-llama/Meta-Llama-3-8B");
    assert_eq!(settings["method"], "lora");
    assert_eq!(settings["lora"]["r"], 16, "the preset's rank");
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        config["base_model_name_or_path"],
        "meta-llama/Meta-Llama-3-8B"
    );
    // Offline, the cache is enough.
    let mut offline = e.clone();
    offline.push(("HF_HUB_OFFLINE", "1"));
    offline[0].1 = "http://127.0.0.1:9";
    let again = dir.path().join("offline-run");
    let mut args = args.to_vec();
    let last = args.len() - 1;
    args[last] = again.to_str().unwrap();
    let o = pctrain_env(&args, &offline);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(again.join("adapter/adapter_model.safetensors").is_file());
}

#[test]
fn a_run_and_its_export_take_bare_folder_names() {
    // From a fresh working folder, as a user's first try: `--output run`, `--out model`.
    let dir = tempfile::tempdir().unwrap();
    let examples = common::root().join("examples/alpaca-pc.jsonl");
    let o = common::pctrain_in(
        dir.path(),
        &[
            "--base",
            "tiny",
            "--data",
            examples.to_str().unwrap(),
            "--seq-len",
            "64",
            "--max-steps",
            "1",
            "--output",
            "run",
        ],
        &[],
    );
    assert!(o.status.success(), "training: {}", stderr(&o));
    assert!(dir.path().join("run/metrics.jsonl").is_file());
    let o = common::pctrain_in(dir.path(), &["export", "run", "--out", "model"], &[]);
    assert!(o.status.success(), "export: {}", stderr(&o));
    assert!(dir.path().join("model/config.json").is_file());
}
