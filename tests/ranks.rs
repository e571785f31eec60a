//! Runs of several processes under `mpirun` (the binary built with `--features mpi`; OpenMPI's
//! `mpirun` on the PATH): two ranks of one thread each on this machine's cores train as one
//! process with the doubled batch, the same on every rerun; a rank killed mid-run ends the run
//! within seconds, and the run resumes to the result of one that never stopped. Without the
//! feature these tests are not built, and show as not run.
#![cfg(feature = "mpi")]

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{llama_fixture, read_f32, root, stderr};

/// `mpirun -np RANKS pctrain ARGS`, each rank on one thread.
fn mpirun(ranks: usize) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args([
        "--allow-run-as-root",
        "--oversubscribe",
        "-np",
        &ranks.to_string(),
    ])
    .args(["-x", "RAYON_NUM_THREADS=1", env!("CARGO_BIN_EXE_pctrain")])
    .current_dir(root())
    .env("NO_COLOR", "1");
    cmd
}

fn run(mut cmd: Command, args: &[String]) -> Output {
    let o = cmd
        .args(args)
        .output()
        .expect("run mpirun (OpenMPI installed?)");
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    o
}

/// A short run into `out`, `batch` rows per rank, as `method`: full fine-tuning of the tiny
/// preset, or LoRA on the Llama fixture.
fn tiny(out: &Path, method: &str, batch: usize, steps: usize) -> Vec<String> {
    let llama = llama_fixture();
    let base = match method {
        "full" => ["--base", "tiny"],
        _ => ["--base", llama.to_str().unwrap()],
    };
    let template = match method {
        "full" => "chatml",
        _ => "tulu",
    };
    let args = [
        "--template",
        template,
        "--method",
        method,
        "--lora-dropout",
        "0",
        "--lr",
        "1e-3",
        "--mix",
        "nl-pc",
        "--data",
        "examples/alpaca-pc.jsonl",
        "--seq-len",
        "128",
        "--batch-size",
        &batch.to_string(),
        "--max-steps",
        &steps.to_string(),
        "--save-every",
        "1",
        "--keep-last",
        "0",
        "--output",
        out.to_str().unwrap(),
    ];
    base.iter().chain(&args).map(|s| s.to_string()).collect()
}

/// The trained tensors of a run's checkpoint of `step`.
fn trained(out: &Path, step: usize) -> std::collections::HashMap<String, Vec<f32>> {
    let dir = out.join(format!("checkpoint-{step:06}"));
    read_f32(&dir.join("trainable.safetensors"))
}

fn bytes_of(out: &Path, step: usize) -> Vec<u8> {
    let dir = out.join(format!("checkpoint-{step:06}"));
    std::fs::read(dir.join("trainable.safetensors")).unwrap()
}

/// The learning rate of the runs: differences of weights are measured in its units.
const LR: f32 = 1e-3;

/// The largest difference between two runs' trained weights (not their optimizer moments).
fn max_weight_difference(
    a: &std::collections::HashMap<String, Vec<f32>>,
    b: &std::collections::HashMap<String, Vec<f32>>,
) -> f32 {
    assert_eq!(a.len(), b.len());
    let mut worst = 0f32;
    for (name, x) in a.iter().filter(|(n, _)| n.starts_with("param.")) {
        let y = &b[name];
        worst = x
            .iter()
            .zip(y)
            .fold(worst, |m, (p, q)| m.max((p - q).abs()));
    }
    worst
}

/// The `key` of every line of a run's metrics.
fn logged(out: &Path, key: &str) -> Vec<f64> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()[key]
                .as_f64()
                .unwrap()
        })
        .collect()
}

/// Two ranks with `--batch-size 2` and one process with `--batch-size 4` train on the same rows
/// and log the same tokens and (to 1e-6) losses; their weights after 4 steps agree within a
/// hundredth of one step's size (the learning rate). Not bit for bit: a weight's gradient is a
/// sum over the step's tokens, which one process adds in one order and two ranks add as two
/// partial sums and then MPI's sum of those, and AdamW divides each gradient by its own running
/// size, so an element whose gradient is near zero moves by a share of a step that those last
/// bits decide. Two runs of two ranks agree bit for bit.
#[test]
fn two_ranks_train_as_one_process_with_the_doubled_batch() {
    for method in ["lora", "full"] {
        let dir = tempfile::tempdir().unwrap();
        let (two, again, one) = (
            dir.path().join("two"),
            dir.path().join("again"),
            dir.path().join("one"),
        );
        run(mpirun(2), &tiny(&two, method, 2, 4));
        run(mpirun(2), &tiny(&again, method, 2, 4));
        let o = Command::new(env!("CARGO_BIN_EXE_pctrain"))
            .args(tiny(&one, method, 4, 4))
            .current_dir(root())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(logged(&two, "tokens"), logged(&one, "tokens"), "{method}");
        for (a, b) in logged(&two, "loss").iter().zip(logged(&one, "loss")) {
            assert!((a - b).abs() < 1e-6 * b, "{method}: losses {a} and {b}");
        }
        let diff = max_weight_difference(&trained(&two, 4), &trained(&one, 4));
        assert!(
            diff < 0.01 * LR,
            "{method}: two ranks and one process differ by {diff}"
        );
        assert!(
            bytes_of(&two, 4) == bytes_of(&again, 4),
            "{method}: two runs of two ranks differ"
        );
        // One metrics line a step (two writers would leave more, or a torn file), and the export.
        let export = if method == "lora" { "adapter" } else { "model" };
        assert!(two.join(export).is_dir());
    }
}

/// The processes whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so read after its closing paren.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let ppid: Option<u32> = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if ppid == Some(pid) {
            if let Ok(child) = entry.file_name().to_string_lossy().parse() {
                out.push(child);
            }
        }
    }
    out.sort();
    out
}

/// A rank killed mid-run ends the whole run within seconds, with mpirun naming the rank; the
/// checkpoints already written stay, and resuming from the last one ends where a run that never
/// stopped ends, bit for bit. A checkpoint of two ranks does not resume in one process.
#[test]
fn a_killed_rank_ends_the_run_and_it_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (straight, stopped) = (dir.path().join("straight"), dir.path().join("stopped"));
    let steps = 40;
    run(mpirun(2), &tiny(&straight, "full", 2, steps));

    let mut cmd = mpirun(2);
    let child = cmd
        .args(tiny(&stopped, "full", 2, steps))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !stopped.join("checkpoint-000003").is_dir() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint 3"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let ranks = children(child.id());
    assert!(!ranks.is_empty(), "mpirun started no ranks");
    let victim = *ranks.last().unwrap();
    let killed = Instant::now();
    Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert!(!o.status.success(), "the run went on without a rank: {err}");
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "{:?} to end",
        killed.elapsed()
    );
    assert!(err.contains("rank") && err.contains("signal 9"), "{err}");
    let last = pctrain_trainer::checkpoints(&stopped).unwrap();
    let at = last.last().expect("the checkpoints written stay");
    assert!(at.join("trainable.safetensors").is_file());
    let step: usize = at.file_name().unwrap().to_string_lossy()["checkpoint-".len()..]
        .parse()
        .unwrap();
    assert!(step < steps, "the run had ended before the kill");

    // One process refuses the checkpoint of two.
    let o = Command::new(env!("CARGO_BIN_EXE_pctrain"))
        .args(tiny(&stopped, "full", 2, steps))
        .arg("--resume")
        .current_dir(root())
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("mpirun -np 2"), "{err}");

    let mut args = tiny(&stopped, "full", 2, steps);
    args.push("--resume".into());
    run(mpirun(2), &args);
    assert!(
        bytes_of(&stopped, steps) == bytes_of(&straight, steps),
        "the resumed run ends elsewhere"
    );
}

/// Several ranks take the GPU of their local rank: a device index is refused, on every rank,
/// and the run ends with the rank named.
#[test]
fn a_device_index_with_several_ranks_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = tiny(&dir.path().join("run"), "full", 1, 1);
    args.extend(["--device".into(), "cuda:1".into()]);
    let o = mpirun(2).args(&args).output().unwrap();
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("--device cuda:1") && err.contains("error on rank"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// The moments of a checkpoint, whole, flattened: from `trainable.safetensors`, or from its
/// shard files laid end to end in rank order.
fn moments(dir: &Path) -> std::collections::HashMap<String, Vec<f32>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("optimizer-")
        })
        .collect();
    files.sort();
    if files.is_empty() {
        files.push(dir.join("trainable.safetensors"));
    }
    let mut all: std::collections::HashMap<String, Vec<f32>> = Default::default();
    for file in files {
        for (name, values) in read_f32(&file) {
            if name.starts_with("adam_") {
                all.entry(name).or_default().extend(values);
            }
        }
    }
    all
}

/// Rank 0's floats given to all-reduces, reduce-scatters and all-gathers, and those of its sums
/// started while the backward ran, by the end of a run.
fn floats_sent(out: &Path) -> [f64; 4] {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let sent = &last["floats_sent"];
    ["all_reduce", "reduce_scatter", "all_gather", "overlapped"].map(|k| sent[k].as_f64().unwrap())
}

/// A final memory figure of a run's metrics (`optimizer_state_bytes`, `gradient_bytes`).
fn memory(out: &Path, key: &str) -> f64 {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    last["memory"][key].as_f64().unwrap()
}

/// The final memory figure of AdamW's state in a run's metrics, in bytes.
fn optimizer_state(out: &Path) -> f64 {
    memory(out, "optimizer_state_bytes")
}

/// With `--zero-stage 1` each of two ranks keeps half of AdamW's moments (the memory figure of its
/// metrics, within 5% of half of one process's), updates its half of the elements and writes its
/// half into the checkpoint (`optimizer-0000R-of-00002.safetensors`; `trainable.safetensors`
/// then holds the weights alone); the run ends bit for bit where two ranks with whole state end,
/// moments included. `--zero-stage 2` also keeps and sums each rank's half of the gradients
/// alone (reduce-scatter; its gradient memory figure within 5% of half of one process's): it ends
/// within a hundredth of a step of the whole state's weights, with two passes a step as well
/// (the last step's second pass on one rank alone). Bit
/// equality is not promised there: its clipping norm adds each rank's sum of squares over its
/// half, an order of addition of its own, which moves the norm in its last bits (the 13th digit
/// on this run) and so may move the f32 clipping factor. Each resumes from its step-2 shards to
/// where it ended, and a sharded checkpoint resumes with whole state (`--zero-stage 0`, every
/// rank reading every shard) to where the whole state ends.
#[test]
fn zero_stages_shard_the_optimizer_state_and_train_alike() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole");
    run(mpirun(2), &tiny(&whole, "full", 2, 4));
    let one = dir.path().join("one");
    let o = Command::new(env!("CARGO_BIN_EXE_pctrain"))
        .args(tiny(&one, "full", 4, 4))
        .current_dir(root())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(optimizer_state(&whole), optimizer_state(&one));
    let sent = floats_sent(&whole);
    assert!(
        sent[0] > 0.0 && sent[1] == 0.0 && sent[2] == 0.0,
        "{sent:?}"
    );
    // The layers' gradients are summed while the backward goes on, the embeddings' after it.
    assert!(sent[3] > 0.0 && sent[3] < sent[0], "{sent:?}");
    let at = |out: &Path, step: usize| out.join(format!("checkpoint-{step:06}"));
    let params = |out: &Path| {
        let mut p = trained(out, 4);
        p.retain(|n, _| n.starts_with("param."));
        p
    };
    for stage in ["1", "2"] {
        let sharded = dir.path().join(format!("zero{stage}"));
        let mut args = tiny(&sharded, "full", 2, 4);
        args.extend(["--zero-stage".into(), stage.into()]);
        run(mpirun(2), &args);
        let ratio = optimizer_state(&sharded) / optimizer_state(&one);
        assert!(
            (ratio - 0.5).abs() <= 0.025,
            "stage {stage}: rank 0 keeps {ratio} of the state"
        );
        // Stage 2 keeps its span of the gradients alone from step to step.
        let grads = memory(&sharded, "gradient_bytes") / memory(&one, "gradient_bytes");
        let want = if stage == "2" { 0.5 } else { 1.0 };
        assert!(
            (grads - want).abs() <= 0.025,
            "stage {stage}: rank 0 keeps {grads} of the gradients"
        );
        for r in 0..2 {
            let file = at(&sharded, 4).join(format!("optimizer-0000{r}-of-00002.safetensors"));
            assert!(file.is_file(), "stage {stage}: no {}", file.display());
        }
        assert!(
            trained(&sharded, 4).keys().all(|n| n.starts_with("param.")),
            "stage {stage}: the weights' file holds moments"
        );
        // Which collectives carried the step: stage 2 sums no gradient on every rank.
        let sent = floats_sent(&sharded);
        assert!(sent[2] > 0.0, "stage {stage}: no weights shared: {sent:?}");
        if stage == "1" {
            assert!(sent[0] > 0.0 && sent[1] == 0.0, "stage 1: {sent:?}");
            assert!(
                params(&sharded) == params(&whole),
                "stage 1 trains differently"
            );
            assert!(
                moments(&at(&sharded, 4)) == moments(&at(&whole, 4)),
                "stage 1 ends with other moments"
            );
        } else {
            assert!(sent[0] == 0.0 && sent[1] > 0.0, "stage 2: {sent:?}");
            assert!(sent[3] > 0.0 && sent[3] < sent[1], "stage 2: {sent:?}");
            let diff = max_weight_difference(&params(&sharded), &params(&whole));
            assert!(diff < 0.01 * LR, "stage 2 and whole state differ by {diff}");
            for (a, b) in logged(&sharded, "loss").iter().zip(logged(&whole, "loss")) {
                assert!((a - b).abs() < 1e-6 * b, "stage 2: losses {a} and {b}");
            }
        }

        // Resumed from its step-2 shards, it ends as it did.
        let (end, end_moments) = (params(&sharded), moments(&at(&sharded, 4)));
        let mut resumed = args.clone();
        resumed.extend(["--resume".into(), at(&sharded, 2).display().to_string()]);
        run(mpirun(2), &resumed);
        assert!(params(&sharded) == end, "stage {stage}: resumed elsewhere");
        assert!(
            moments(&at(&sharded, 4)) == end_moments,
            "stage {stage}: resumed to other moments"
        );
    }

    // Two passes a step, the last step's second on one rank alone: stage 2 reduce-scatters each
    // pass, the rank without rows giving its gradients as they are, and trains as stage 0 does.
    let accumulated = |stage: &str| {
        let out = dir.path().join(format!("accumulated{stage}"));
        let mut args = tiny(&out, "full", 1, 4);
        let four = args.iter().position(|a| a == "--max-steps").unwrap();
        args.drain(four..four + 2);
        args.extend(
            ["--grad-accum", "2", "--epochs", "1", "--zero-stage", stage].map(String::from),
        );
        run(mpirun(2), &args);
        out
    };
    let (stage0, stage2) = (accumulated("0"), accumulated("2"));
    let tokens = logged(&stage0, "tokens");
    assert_eq!(logged(&stage2, "tokens"), tokens);
    // The example's 11 rows, 4 a step: the third step's second micro-batch is 1 row, rank 0's.
    assert_eq!(tokens.len(), 3, "{tokens:?}");
    let (sent, once) = (floats_sent(&stage2), floats_sent(&stage0));
    assert_eq!(
        sent[1],
        2.0 * once[0],
        "two passes a step: {sent:?} against {once:?}"
    );
    let weights = |out: &Path| {
        let mut p = trained(out, tokens.len());
        p.retain(|n, _| n.starts_with("param."));
        p
    };
    let diff = max_weight_difference(&weights(&stage2), &weights(&stage0));
    assert!(
        diff < 0.01 * LR,
        "accumulated stage 2 and stage 0 differ by {diff}"
    );

    // A stage-1 checkpoint resumed with whole state ends where the whole state ends.
    let sharded = dir.path().join("zero1");
    let mut args = tiny(&sharded, "full", 2, 4);
    args.extend(["--resume".into(), at(&sharded, 2).display().to_string()]);
    run(mpirun(2), &args);
    assert!(
        bytes_of(&sharded, 4) == bytes_of(&whole, 4),
        "a sharded checkpoint resumed whole ends elsewhere"
    );
}

/// On two GPUs of one machine (built with `cuda` and `mpi`): each rank takes the GPU of its local
/// rank, their gradients are summed by NCCL, and two ranks with `--batch-size 2` train the rows of
/// one process with `--batch-size 4` and log its losses within 1% (bf16 weights, whose steps round
/// apart once the partial sums are added in another order), as two ranks with their optimizer
/// state sharded (`--zero-stage 1`) do. No machine here has two GPUs.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs two CUDA devices and mpirun: run with --include-ignored on such a machine"]
fn two_ranks_on_two_gpus_sum_through_nccl() {
    let dir = tempfile::tempdir().unwrap();
    let (two, one) = (dir.path().join("two"), dir.path().join("one"));
    let on_gpus = |out: &Path, batch: usize| {
        let mut args = tiny(out, "lora", batch, 4);
        args.extend(["--device".into(), "cuda".into()]);
        args
    };
    let o = run(mpirun(2), &on_gpus(&two, 2));
    assert!(stderr(&o).contains("NCCL"), "{}", stderr(&o));
    // The moments and master weights sharded (ZeRO stage 1, NCCL broadcasts of the spans).
    let sharded = dir.path().join("sharded");
    let mut args = on_gpus(&sharded, 2);
    args.extend(["--zero-stage".into(), "1".into()]);
    run(mpirun(2), &args);
    for (a, b) in logged(&sharded, "loss").iter().zip(logged(&two, "loss")) {
        assert!((a - b).abs() < 1e-2 * b, "sharded: losses {a} and {b}");
    }
    let o = Command::new(env!("CARGO_BIN_EXE_pctrain"))
        .args(on_gpus(&one, 4))
        .current_dir(root())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(logged(&two, "tokens"), logged(&one, "tokens"));
    for (a, b) in logged(&two, "loss").iter().zip(logged(&one, "loss")) {
        assert!((a - b).abs() < 1e-2 * b, "losses {a} and {b}");
    }
}
