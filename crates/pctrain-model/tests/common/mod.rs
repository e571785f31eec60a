//! Fixture access shared by the model crate's tests (fixtures: scripts/make_fixtures.py).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use pctrain_model::{Batch, LoraAdapter, Model, ModelConfig, ModelWeights};

pub const MODELS: [&str; 3] = ["llama", "mistral", "granite"];

/// A fixture folder; `PCTRAIN_FIXTURES` moves them (test executables run on another machine, as
/// scripts/gpu-check.sh runs them, do not find the build machine's paths).
pub fn fixture(name: &str) -> PathBuf {
    std::env::var_os("PCTRAIN_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"))
        .join(name)
}

/// The reference tensors transformers and PEFT recorded for a fixture model.
pub fn reference(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name).join("reference.safetensors"), &Device::Cpu)
        .unwrap()
}

/// The fixture batch: two packed samples in one row, one padded row.
pub fn batch(r: &HashMap<String, Tensor>) -> Batch {
    let ids = |k: &str| -> Vec<i64> { r[k].flatten_all().unwrap().to_vec1().unwrap() };
    let (rows, seq_len) = r["input_ids"].dims2().unwrap();
    let u32s = |k: &str| ids(k).into_iter().map(|v| v as u32).collect();
    Batch {
        rows,
        seq_len,
        input_ids: u32s("input_ids"),
        position_ids: u32s("position_ids"),
        segment_ids: u32s("segment_ids"),
        labels: ids("labels"),
    }
}

/// A fixture model in f32 on the CPU, with its PEFT adapter when asked.
pub fn model(name: &str, with_lora: bool) -> Model {
    let dir = fixture(name);
    let config = ModelConfig::load(&dir).unwrap();
    let weights = ModelWeights::load(&dir, &config, DType::F32, &Device::Cpu).unwrap();
    let lora = with_lora.then(|| {
        LoraAdapter::load(&dir.join("adapter"), &config, DType::F32, &Device::Cpu).unwrap()
    });
    Model::new(config, weights, lora)
}

/// The batched decoding fixture of a model (scripts/make_fixtures.py): its prompts, and
/// transformers' greedy tokens for each.
pub fn generate_batch(name: &str) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    let r = candle_core::safetensors::load(
        fixture(name).join("generate-batch.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let ints = |k: &str| -> Vec<u32> {
        let v: Vec<i64> = r[k].flatten_all().unwrap().to_vec1().unwrap();
        v.into_iter().map(|x| x as u32).collect()
    };
    let (lens, padded, greedy) = (ints("prompt_lengths"), ints("prompts"), ints("greedy"));
    let width = padded.len() / lens.len();
    let prompts: Vec<Vec<u32>> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| padded[i * width + width - n as usize..(i + 1) * width].to_vec())
        .collect();
    let new = greedy.len() / prompts.len();
    let greedy = greedy.chunks(new).map(<[u32]>::to_vec).collect();
    (prompts, greedy)
}
