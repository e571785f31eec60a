//! Optimizer steps on the llama fixture: gradient accumulation normalises over the whole
//! accumulated batch (four micro-batches of one sample equal one batch of four), updates go
//! downhill, and LoRA training leaves the base weights untouched.

use std::path::PathBuf;

use pctrain_model::{
    Batch, Gradients, LoraAdapter, Model, ModelConfig, ModelWeights, StepOptions, TrainMode,
};
use pctrain_trainer::{optimizer_step, AdamW, AdamWConfig, DType, Decay, Device, Schedule, World};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../pctrain-model/tests/fixtures/llama")
}

fn model() -> Model {
    let dir = fixture();
    let config = ModelConfig::load(&dir).unwrap();
    let weights = ModelWeights::load(&dir, &config, DType::F32, &Device::Cpu).unwrap();
    let lora = LoraAdapter::load(&dir.join("adapter"), &config, DType::F32, &Device::Cpu).unwrap();
    Model::new(config, weights, Some(lora))
}

/// Rows of the fixture's evaluation samples (64 tokens each), as one batch.
fn rows(range: std::ops::Range<usize>) -> Batch {
    let text = std::fs::read_to_string(fixture().join("eval-samples.jsonl")).unwrap();
    let samples: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut b = Batch {
        rows: 0,
        seq_len: 64,
        input_ids: Vec::new(),
        position_ids: Vec::new(),
        segment_ids: Vec::new(),
        labels: Vec::new(),
    };
    for s in &samples[range] {
        let ids: Vec<u32> = s["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(ids.len(), 64);
        b.rows += 1;
        b.input_ids.extend(&ids);
        b.position_ids.extend(0..64u32);
        b.segment_ids.extend([1u32; 64]);
        b.labels.extend(
            s["labels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap()),
        );
    }
    b
}

fn opts() -> StepOptions {
    StepOptions {
        mode: TrainMode::Lora,
        recompute: false,
        loss_chunk: 64,
        dropout_seed: 0,
    }
}

fn schedule() -> Schedule {
    Schedule {
        peak_lr: 1e-2,
        warmup_steps: 0,
        total_steps: 100,
        decay: Decay::Constant,
    }
}

fn new_optimizer(m: &Model) -> AdamW {
    let params = m.trainable(TrainMode::Lora);
    let refs: Vec<_> = params.iter().map(|(_, t)| t).collect();
    AdamW::new(
        AdamWConfig {
            weight_decay: 0.01,
            ..AdamWConfig::default()
        },
        &refs,
    )
    .unwrap()
}

fn grads(m: &Model) -> Gradients {
    Gradients::zeros(m, TrainMode::Lora).unwrap()
}

fn max_rel_diff(a: &Model, b: &Model) -> f32 {
    let (ta, tb) = (a.trainable(TrainMode::Lora), b.trainable(TrainMode::Lora));
    let mut diff = 0f32;
    let mut scale = 0f32;
    for ((_, x), (_, y)) in ta.iter().zip(&tb) {
        diff = diff.max(
            (x - y)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap(),
        );
        scale = scale.max(x.abs().unwrap().max_all().unwrap().to_scalar().unwrap());
    }
    diff / scale
}

#[test]
fn four_micro_batches_of_one_equal_one_batch_of_four() {
    let mut whole = model();
    let mut opt_whole = new_optimizer(&whole);
    let mut g = grads(&whole);
    let r1 = optimizer_step(
        &mut whole,
        &[rows(0..4)],
        opts(),
        &mut opt_whole,
        &mut g,
        &schedule(),
        1.0,
        &World::solo(),
    )
    .unwrap();

    let mut parts = model();
    let mut opt_parts = new_optimizer(&parts);
    let micro: Vec<Batch> = (0..4).map(|i| rows(i..i + 1)).collect();
    let mut g = grads(&parts);
    let r4 = optimizer_step(
        &mut parts,
        &micro,
        opts(),
        &mut opt_parts,
        &mut g,
        &schedule(),
        1.0,
        &World::solo(),
    )
    .unwrap();

    assert_eq!(r1.tokens, r4.tokens);
    assert!(
        (r1.loss - r4.loss).abs() < 1e-6 * r1.loss,
        "{} vs {}",
        r1.loss,
        r4.loss
    );
    assert!((r1.grad_norm - r4.grad_norm).abs() < 1e-5 * r1.grad_norm);
    let d = max_rel_diff(&whole, &parts);
    assert!(d < 1e-5, "adapters differ by {d:e}");
    assert!(
        max_rel_diff(&whole, &model()) > 1e-4,
        "the step changed the adapter"
    );
}

#[test]
fn steps_go_downhill_and_leave_the_base_weights_alone() {
    let mut m = model();
    // A copy of the values: updates happen in place.
    let before = m.weights.layers[0].q_proj.copy().unwrap();
    let mut opt = new_optimizer(&m);
    let mut g = grads(&m);
    let batch = rows(0..2);
    let losses: Vec<f64> = (0..5)
        .map(|_| {
            optimizer_step(
                &mut m,
                std::slice::from_ref(&batch),
                opts(),
                &mut opt,
                &mut g,
                &schedule(),
                1.0,
                &World::solo(),
            )
            .unwrap()
            .loss
        })
        .collect();
    assert!(losses[4] < losses[0], "loss {losses:?}");
    let diff: f32 = (&before - &m.weights.layers[0].q_proj)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert_eq!(diff, 0.0);
    assert_eq!(opt.step, 5);
}
