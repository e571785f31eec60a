//! The training loop on the tiny preset and the shipped examples: the loss falls, and two runs
//! with the same seed are bit-identical on CPU.

use std::path::PathBuf;

use pctrain_data::{LoaderConfig, Mixer, PcJoin, Pipeline, TemplateChoice, TextTokenizer};
use pctrain_model::{StepOptions, TrainMode};
use pctrain_trainer::{
    tiny_model, train, trainable, AdamWConfig, Decay, Device, Schedule, TrainConfig,
};

fn samples() -> (Vec<pctrain_data::Encoded>, u32) {
    let tokenizer = TextTokenizer::tiny().unwrap();
    let template = TemplateChoice::parse("auto").unwrap().load(None).unwrap();
    let mixer = Mixer {
        mix: "nl-pc".parse().unwrap(),
        seed: 1,
        require_pc: false,
        join: PcJoin::default(),
    };
    let pipeline = Pipeline::new(mixer, template, tokenizer, 128, false).unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let (samples, _) = pipeline
        .encode_all(&[root.join("examples/alpaca-pc.jsonl")])
        .unwrap();
    (samples, pipeline.tokenizer.pad_id)
}

fn config() -> TrainConfig {
    TrainConfig {
        loader: LoaderConfig {
            seq_len: 128,
            packing: true,
            shuffle: true,
            seed: 3,
            epochs: 10,
            pack_window: 64,
        },
        batch_size: 1,
        grad_accum: 2,
        max_steps: 6,
        schedule: Schedule {
            peak_lr: 3e-3,
            warmup_steps: 1,
            total_steps: 6,
            decay: Decay::Cosine,
        },
        adamw: AdamWConfig::default(),
        clip_norm: 1.0,
        step: StepOptions {
            mode: TrainMode::Full,
            recompute: true,
            loss_chunk: 64,
            dropout_seed: 0,
        },
    }
}

#[test]
fn the_tiny_preset_learns_and_runs_are_bit_identical() {
    let (samples, pad) = samples();
    let run = || {
        let mut m = tiny_model(7, &Device::Cpu).unwrap();
        let mut positions = Vec::new();
        let reports = train(&mut m, &samples, pad, &config(), |_, p| positions.push(p)).unwrap();
        (m, reports, positions)
    };
    let (m1, r1, p1) = run();
    assert_eq!(r1.len(), 6);
    assert!(
        r1[5].loss < r1[0].loss - 0.5,
        "losses {:?}",
        r1.iter().map(|r| r.loss).collect::<Vec<_>>()
    );
    assert!(r1[0].loss > 6.0, "a random model starts near ln(2048)");
    assert!(p1
        .windows(2)
        .all(|w| (w[0].epoch, w[0].index) < (w[1].epoch, w[1].index)));
    let (m2, r2, _) = run();
    assert_eq!(r1, r2, "same seed, same reports");
    for ((n, a), (_, b)) in trainable(&m1, TrainMode::Full)
        .iter()
        .zip(&trainable(&m2, TrainMode::Full))
    {
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{n} differs"
        );
    }
}
