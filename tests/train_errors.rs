//! How training fails: bad settings, a diverging loss, a checkpoint or adapter that does not fit,
//! and a disk that fills while saving. Each gives a clear error and a non-zero exit, and no
//! checkpoint already written is lost.

mod common;

use std::path::Path;
use std::process::Command;

use common::{fails, llama_fixture, pctrain, refused, root, stderr, tiny_run};

fn run_args(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn checkpoint_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.contains("checkpoint"))
        .collect();
    names.sort();
    names
}

#[test]
fn bad_settings_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("run.toml");
    std::fs::write(&config, "base = \"tiny\"\nlearning_rate = 1e-4\n").unwrap();
    let err = fails(&["--config", config.to_str().unwrap()]);
    assert!(
        err.contains("run.toml") && err.contains("learning_rate"),
        "{err}"
    );
    let err = fails(&["--base", "llama9-70b"]);
    assert!(
        err.contains("llama9-70b") && err.contains("llama3-8b"),
        "{err}"
    );
    // A value the flag's type refuses is a usage error, as every such flag's.
    let err = refused(&["--schedule", "step"]);
    assert!(err.contains("step") && err.contains("cosine"), "{err}");
    let err = fails(&["--dtype", "bf16"]);
    assert!(err.contains("bf16") && err.contains("CPU"), "{err}");
    let err = fails(&["--device", "cuda:0"]);
    assert!(err.contains("--features cuda"), "{err}");
    let err = fails(&["--base", "llama3-8b", "--lora-targets", "q,zz"]);
    assert!(err.contains("zz"), "{err}");
    // ZeRO has stages 0 to 2, from a flag or a config file.
    let err = refused(&["--zero-stage", "3"]);
    assert!(
        err.contains("--zero-stage") && err.contains("0..=2"),
        "{err}"
    );
    std::fs::write(&config, "base = \"tiny\"\nzero_stage = 3\n").unwrap();
    let err = fails(&["--config", config.to_str().unwrap()]);
    assert!(err.contains("zero_stage must be 0, 1 or 2"), "{err}");
}

#[test]
fn a_diverging_loss_stops_the_run_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = tiny_run(dir.path(), "6");
    args.extend(["--lr", "1e30", "--clip-norm", "0"].map(String::from));
    let err = fails(&run_args(&args));
    assert!(err.contains("not applied"), "{err}");
    assert!(err.contains("NaN") || err.contains("inf"), "{err}");
    let names = checkpoint_names(dir.path());
    assert!(
        !names.is_empty() && names.iter().all(|n| n.starts_with("checkpoint-")),
        "{names:?}"
    );
    // What is left resumes (and fails again the same way, not on a broken checkpoint).
    args.push("--resume".into());
    let err = fails(&run_args(&args));
    assert!(err.contains("not applied"), "{err}");
}

#[test]
fn a_checkpoint_or_adapter_of_another_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let args = tiny_run(dir.path(), "1");
    let o = pctrain(&run_args(&args));
    assert!(o.status.success(), "{}", stderr(&o));
    let checkpoint = dir.path().join("checkpoint-000001");
    let llama = llama_fixture();
    let other = tempfile::tempdir().unwrap();
    let err = fails(&[
        "--base",
        llama.to_str().unwrap(),
        "--data",
        "examples/alpaca-pc.jsonl",
        "--output",
        other.path().to_str().unwrap(),
        "--resume",
        checkpoint.to_str().unwrap(),
    ]);
    assert!(err.contains("checkpoint of another run"), "{err}");
    // An adapter whose tensors do not have the shapes its config and the model give.
    let adapter = other.path().join("adapter");
    std::fs::create_dir(&adapter).unwrap();
    std::fs::copy(
        llama.join("adapter/adapter_model.safetensors"),
        adapter.join("adapter_model.safetensors"),
    )
    .unwrap();
    let config = std::fs::read_to_string(llama.join("adapter/adapter_config.json")).unwrap();
    assert!(config.contains("\"r\": 4,"));
    std::fs::write(
        adapter.join("adapter_config.json"),
        config.replace("\"r\": 4,", "\"r\": 8,"),
    )
    .unwrap();
    let err = fails(&[
        "--base",
        llama.to_str().unwrap(),
        "--data",
        "examples/alpaca-pc.jsonl",
        "--init-adapter",
        adapter.to_str().unwrap(),
        "--output",
        other.path().to_str().unwrap(),
    ]);
    assert!(err.contains("shape"), "{err}");
    // A fresh run does not silently mix with an earlier run's checkpoints.
    let err = fails(&run_args(&args));
    assert!(
        err.contains("--resume") && err.contains("--overwrite"),
        "{err}"
    );
}

#[test]
fn epochs_past_what_a_step_count_holds_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = tiny_run(dir.path(), "2");
    let steps = args.iter().position(|a| a == "--max-steps").unwrap();
    args.drain(steps..steps + 2);
    args.extend(["--epochs".into(), "9223372036854775807".into()]);
    let err = fails(&run_args(&args));
    assert!(
        err.contains("--epochs 9223372036854775807") && err.contains("more steps"),
        "{err}"
    );
}

#[test]
fn a_full_disk_while_saving_loses_no_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let args = tiny_run(dir.path(), "2");
    let o = pctrain(&run_args(&args));
    assert!(o.status.success(), "{}", stderr(&o));
    let before = std::fs::read(dir.path().join("checkpoint-000002/trainable.safetensors")).unwrap();
    // A file size limit makes every large write fail as a full disk does (EFBIG instead of
    // ENOSPC); the signal it raises is ignored so that the write returns the error.
    let mut more = tiny_run(dir.path(), "4");
    more.push("--resume".into());
    let o = Command::new("bash")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 1024; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_pctrain"))
        .args(&more)
        .current_dir(root())
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("checkpoint") && !err.contains("panicked"),
        "{err}"
    );
    assert_eq!(
        checkpoint_names(dir.path()),
        ["checkpoint-000001", "checkpoint-000002"]
    );
    let after = std::fs::read(dir.path().join("checkpoint-000002/trainable.safetensors")).unwrap();
    assert_eq!(before, after);
    // With room again, the run continues from the checkpoint that was kept.
    let o = pctrain(&run_args(&more));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dir.path().join("checkpoint-000004").is_dir());
}

#[test]
fn resuming_needs_the_same_data_settings_and_replays_from_an_earlier_checkpoint() {
    let straight = tempfile::tempdir().unwrap();
    let o = pctrain(&run_args(&tiny_run(straight.path(), "4")));
    assert!(o.status.success(), "{}", stderr(&o));

    let dir = tempfile::tempdir().unwrap();
    let mut args = tiny_run(dir.path(), "4");
    let keep = args.iter().position(|a| a == "--keep-last").unwrap();
    args[keep + 1] = "0".into();
    let o = pctrain(&run_args(&args));
    assert!(o.status.success(), "{}", stderr(&o));
    // Another sequence length would put the saved data position elsewhere.
    let mut changed = args.clone();
    let seq = changed.iter().position(|a| a == "--seq-len").unwrap();
    changed[seq + 1] = "96".into();
    changed.push("--resume".into());
    let err = fails(&run_args(&changed));
    assert!(err.contains("seq_len"), "{err}");
    // A checkpoint whose settings are gone cannot be checked: refused, not trusted.
    let settings = dir.path().join("checkpoint-000004/settings.json");
    let saved = std::fs::read(&settings).unwrap();
    std::fs::remove_file(&settings).unwrap();
    let mut unchecked = args.clone();
    unchecked.push("--resume".into());
    let err = fails(&run_args(&unchecked));
    assert!(
        err.contains("settings.json") && err.contains("cannot check"),
        "{err}"
    );
    std::fs::write(&settings, saved).unwrap();
    // Resuming from step 2 replaces steps 3 and 4, and ends as the run that never stopped.
    let mut again = args.clone();
    again.push("--resume".into());
    again.push(
        dir.path()
            .join("checkpoint-000002")
            .to_str()
            .unwrap()
            .into(),
    );
    let o = pctrain(&run_args(&again));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("checkpoint-000003"), "{}", stderr(&o));
    let a = std::fs::read(straight.path().join("model/model.safetensors")).unwrap();
    let b = std::fs::read(dir.path().join("model/model.safetensors")).unwrap();
    assert!(a == b, "the replayed run differs from the straight one");
}

/// Started by an MPI launcher as one of several processes, a binary built without MPI refuses to
/// train alone into the folder the others write too.
#[cfg(not(feature = "mpi"))]
#[test]
fn several_processes_without_mpi_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let args = tiny_run(dir.path(), "1");
    let o = common::pctrain_env(&run_args(&args), &[("OMPI_COMM_WORLD_SIZE", "2")]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--features mpi") && err.contains("2 processes"),
        "{err}"
    );
    assert!(checkpoint_names(dir.path()).is_empty(), "it trained: {err}");
}
