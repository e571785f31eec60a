//! What the end-to-end tests of the `pctrain` binary share: running it, and reading its output.
#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn pctrain(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pctrain"))
        .args(args)
        .current_dir(root())
        .env("NO_COLOR", "1")
        .output()
        .expect("run pctrain")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// Runs a command that must fail cleanly; returns its stderr.
pub fn fails(args: &[&str]) -> String {
    let o = pctrain(args);
    let err = stderr(&o);
    assert!(!o.status.success(), "{args:?} succeeded");
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    assert!(err.lines().any(|l| l.starts_with("error: ")), "{err}");
    err
}

/// Runs a command whose arguments the command line itself refuses (a usage error, exit code 2);
/// returns its stderr.
pub fn refused(args: &[&str]) -> String {
    let o = pctrain(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    assert!(err.lines().any(|l| l.starts_with("error: ")), "{err}");
    err
}

/// The arguments of a short training run of the tiny preset into `out`.
pub fn tiny_run(out: &Path, steps: &str) -> Vec<String> {
    [
        "--base",
        "tiny",
        "--mix",
        "nl-pc",
        "--data",
        "examples/alpaca-pc.jsonl",
        "--seq-len",
        "128",
        "--max-steps",
        steps,
        "--save-every",
        "1",
        "--keep-last",
        "2",
        "--output",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([out.to_str().unwrap().to_string()])
    .collect()
}

/// Runs pctrain in the working folder `dir` (where bare file names land), with extra
/// environment variables.
pub fn pctrain_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pctrain"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .output()
        .expect("run pctrain")
}

/// Runs pctrain with extra environment variables.
pub fn pctrain_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pctrain"))
        .args(args)
        .current_dir(root())
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .output()
        .expect("run pctrain")
}

/// Every tensor of a safetensors file (f32 only), by name.
pub fn read_f32(path: &Path) -> std::collections::HashMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, values)
        })
        .collect()
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The llama fixture: a tiny Llama folder with tokenizer, a PEFT adapter and reference data.
pub fn llama_fixture() -> PathBuf {
    root().join("crates/pctrain-model/tests/fixtures/llama")
}

/// Starts pctrain in the background with extra environment; stdout is dropped, stderr kept.
pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_pctrain"))
        .args(args)
        .current_dir(root())
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start pctrain")
}

/// Waits until `path` holds `lines` complete lines while `child` still runs (panics if it ends
/// first, or after five minutes).
pub fn wait_for_lines(child: &mut std::process::Child, path: &Path, lines: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let complete = || std::fs::read(path).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count());
    while complete() < lines {
        assert!(
            std::time::Instant::now() < deadline,
            "the run made no progress"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended too early"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
