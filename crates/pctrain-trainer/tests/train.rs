//! The training loop on the tiny preset and the shipped examples: the loss falls, and two runs
//! with the same seed are bit-identical on CPU.

use std::path::PathBuf;

use pctrain_data::{LoaderConfig, Mixer, PcJoin, Pipeline, TemplateChoice, TextTokenizer};
use pctrain_model::{StepOptions, TrainMode};
use pctrain_trainer::{
    checkpoints, load_checkpoint, save_checkpoint, tiny_model, train, AdamWConfig, Decay, Device,
    Schedule, Shard, TrainConfig, World,
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
        zero_stage: 0,
        step: StepOptions {
            mode: TrainMode::Full,
            recompute: true,
            loss_chunk: 64,
            dropout_seed: 0,
        },
    }
}

fn bits(m: &pctrain_model::Model) -> Vec<(String, Vec<u32>)> {
    m.trainable(TrainMode::Full)
        .into_iter()
        .map(|(n, t)| {
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            (n, v.into_iter().map(f32::to_bits).collect())
        })
        .collect()
}

#[test]
fn the_tiny_preset_learns_and_a_resumed_run_ends_bit_identical() {
    let (samples, pad) = samples();
    assert_eq!(
        bits(&tiny_model(7, &Device::Cpu).unwrap()),
        bits(&tiny_model(7, &Device::Cpu).unwrap()),
        "the preset's weights are a function of the seed"
    );
    let out = tempfile::tempdir().unwrap();

    // Uninterrupted, saving a checkpoint at every step but keeping the last two.
    let mut straight = tiny_model(7, &Device::Cpu).unwrap();
    let reports = train::<Box<dyn std::error::Error>>(
        &mut straight,
        &samples,
        pad,
        &config(),
        None,
        &World::solo(),
        |_, p| {
            save_checkpoint(
                out.path(),
                p.model,
                TrainMode::Full,
                p.optimizer,
                p.position,
                "{}",
                2,
                &World::solo(),
            )?;
            Ok(())
        },
    )
    .unwrap()
    .reports;
    assert_eq!(reports.len(), 6);
    let losses: Vec<f64> = reports.iter().map(|r| r.loss).collect();
    assert!(
        losses[0] > 6.0,
        "a random model starts near ln(2048): {losses:?}"
    );
    assert!(losses[5] < losses[0] - 0.5, "the loss falls: {losses:?}");
    let kept = checkpoints(out.path()).unwrap();
    let names: Vec<String> = kept
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into())
        .collect();
    assert_eq!(names, ["checkpoint-000005", "checkpoint-000006"]);

    // Stopped after step 5, resumed from its checkpoint in a fresh model.
    let mut resumed = tiny_model(99, &Device::Cpu).unwrap();
    let (optimizer, position) = load_checkpoint(
        &kept[0],
        &mut resumed,
        TrainMode::Full,
        &World::solo(),
        false,
    )
    .unwrap();
    assert_eq!(optimizer.step, 5);
    let rest = train::<Box<dyn std::error::Error>>(
        &mut resumed,
        &samples,
        pad,
        &config(),
        Some((optimizer, position)),
        &World::solo(),
        |_, _| Ok(()),
    )
    .unwrap()
    .reports;
    assert_eq!(
        rest,
        reports[5..],
        "the resumed step reports what the uninterrupted one did"
    );
    assert_eq!(bits(&resumed), bits(&straight), "bit-identical weights");

    // A checkpoint of another model is refused by name or shape.
    let mut other =
        pctrain_model::Model::new(straight.config.clone(), straight.weights.clone(), None);
    other.weights.layers.pop();
    let err = load_checkpoint(&kept[1], &mut other, TrainMode::Full, &World::solo(), false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("belongs to no trainable tensor"), "{err}");
    let err = load_checkpoint(
        &kept[1],
        &mut tiny_model(1, &Device::Cpu).unwrap(),
        TrainMode::Lora,
        &World::solo(),
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("a full checkpoint cannot resume a lora run"),
        "{err}"
    );
}

/// A checkpoint of a sharded optimizer holds its moments in one file per rank: with one rank it
/// resumes as that rank's span (1-D moments) or whole (every shard read and laid end to end,
/// equal to the moments before sharding), and a missing shard file is an error naming it.
#[test]
fn a_sharded_checkpoint_loads_as_its_span_or_whole() {
    let (samples, pad) = samples();
    let mut model = tiny_model(7, &Device::Cpu).unwrap();
    let cfg = TrainConfig {
        max_steps: 2,
        ..config()
    };
    let end = train::<Box<dyn std::error::Error>>(
        &mut model,
        &samples,
        pad,
        &cfg,
        None,
        &World::solo(),
        |_, _| Ok(()),
    )
    .unwrap();
    let whole = end.optimizer;
    let sizes: Vec<usize> = whole.m.iter().map(|m| m.elem_count()).collect();
    let mut sharded = whole.clone();
    sharded.keep_shard(Shard::of(&sizes, 0, 1)).unwrap();
    let out = tempfile::tempdir().unwrap();
    let position = pctrain_data::Position::default();
    let dir = save_checkpoint(
        out.path(),
        &model,
        TrainMode::Full,
        &sharded,
        position,
        "{}",
        0,
        &World::solo(),
    )
    .unwrap();
    assert!(dir.join("optimizer-00000-of-00001.safetensors").is_file());
    let values = |ts: &[pctrain_trainer::Tensor]| -> Vec<Vec<f32>> {
        ts.iter()
            .map(|t| t.flatten_all().unwrap().to_vec1().unwrap())
            .collect()
    };
    let mut fresh = tiny_model(1, &Device::Cpu).unwrap();
    let (loaded, _) =
        load_checkpoint(&dir, &mut fresh, TrainMode::Full, &World::solo(), false).unwrap();
    assert!(loaded.shard.is_none());
    assert_eq!(values(&loaded.m), values(&whole.m));
    assert_eq!(values(&loaded.v), values(&whole.v));
    assert_eq!(
        loaded
            .m
            .iter()
            .map(|m| m.dims().to_vec())
            .collect::<Vec<_>>(),
        whole
            .m
            .iter()
            .map(|m| m.dims().to_vec())
            .collect::<Vec<_>>(),
        "whole moments take their tensors' shapes"
    );
    assert_eq!(bits(&fresh), bits(&model));
    let (span, _) =
        load_checkpoint(&dir, &mut fresh, TrainMode::Full, &World::solo(), true).unwrap();
    assert_eq!(span.shard, sharded.shard);
    assert_eq!(values(&span.v), values(&sharded.v));
    assert!(
        span.m.iter().all(|m| m.rank() == 1),
        "a span's moments are 1-D"
    );

    std::fs::remove_file(dir.join("optimizer-00000-of-00001.safetensors")).unwrap();
    let err = load_checkpoint(&dir, &mut fresh, TrainMode::Full, &World::solo(), false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("optimizer-00000-of-00001.safetensors"),
        "{err}"
    );

    // A checkpoint of the same step takes the folder's place whole, and nothing is left aside.
    std::fs::write(dir.join("stale.txt"), "from an earlier run").unwrap();
    let again = save_checkpoint(
        out.path(),
        &model,
        TrainMode::Full,
        &whole,
        position,
        "{}",
        0,
        &World::solo(),
    )
    .unwrap();
    assert_eq!(again, dir);
    assert!(!dir.join("stale.txt").exists(), "the old folder was kept");
    assert!(dir.join("trainable.safetensors").is_file());
    let hidden: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.file_name())
        .collect();
    assert!(hidden.is_empty(), "left aside: {hidden:?}");
}

/// With bf16 weights the f32 master copies are sharded with the moments: a sharded checkpoint
/// holds them in its shard files (the weights' file then holds the bf16 values), and loads them
/// back whole, equal, or as the span.
#[test]
fn a_sharded_checkpoint_carries_the_master_copies_of_bf16_weights() {
    let config = pctrain_model::ModelConfig::from_json(
        pctrain_trainer::preset::TINY_CONFIG,
        std::path::Path::new("tiny"),
    )
    .unwrap();
    let bf16 = || {
        let weights = pctrain_trainer::preset::random_weights(
            &config,
            pctrain_trainer::DType::BF16,
            &Device::Cpu,
        )
        .unwrap();
        pctrain_model::Model::new(config.clone(), weights, None)
    };
    let model = bf16();
    let params = model.trainable(TrainMode::Full);
    let refs: Vec<_> = params.iter().map(|(_, t)| t).collect();
    let whole = pctrain_trainer::AdamW::new(AdamWConfig::default(), &refs).unwrap();
    assert!(whole.master.iter().all(Option::is_some));
    let sizes: Vec<usize> = refs.iter().map(|t| t.elem_count()).collect();
    let mut sharded = whole.clone();
    sharded.keep_shard(Shard::of(&sizes, 0, 1)).unwrap();
    let out = tempfile::tempdir().unwrap();
    let dir = save_checkpoint(
        out.path(),
        &model,
        TrainMode::Full,
        &sharded,
        pctrain_data::Position::default(),
        "{}",
        0,
        &World::solo(),
    )
    .unwrap();
    let values = |ts: &[Option<pctrain_trainer::Tensor>]| -> Vec<Vec<f32>> {
        ts.iter()
            .map(|t| {
                t.as_ref()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            })
            .collect()
    };
    let mut fresh = bf16();
    let (loaded, _) =
        load_checkpoint(&dir, &mut fresh, TrainMode::Full, &World::solo(), false).unwrap();
    assert_eq!(values(&loaded.master), values(&whole.master));
    let (span, _) =
        load_checkpoint(&dir, &mut fresh, TrainMode::Full, &World::solo(), true).unwrap();
    assert_eq!(values(&span.master), values(&sharded.master));
    assert!(span.master.iter().flatten().all(|m| m.rank() == 1));
}
