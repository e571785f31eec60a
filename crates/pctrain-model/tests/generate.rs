//! Generation with a key/value cache gives transformers' greedy tokens, and the cache changes
//! nothing compared with recomputing the whole sequence.

mod common;

use common::{fixture, model};

use candle_core::{Device, Tensor, D};
use pctrain_model::{Batch, KvCache, Sampling};

fn ids(t: &Tensor) -> Vec<u32> {
    t.to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|v| v as u32)
        .collect()
}

#[test]
fn greedy_generation_matches_transformers() {
    for name in ["llama", "mistral", "granite"] {
        let r = candle_core::safetensors::load(
            fixture(name).join("reference.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        let prompt = ids(&r["generate.prompt"]);
        let want = ids(&r["generate.greedy"]);
        let got = model(name, false)
            .generate(&prompt, 20, Sampling::Greedy, &[])
            .unwrap();
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn cached_decoding_equals_full_recomputation() {
    // Mistral: the sliding window (6) is shorter than the sequence, so the cache must apply it.
    let m = model("mistral", false);
    let seq: Vec<u32> = vec![5, 17, 200, 3, 99, 42, 7, 7, 130, 64, 2, 250];
    let mut cache = KvCache::default();
    let mut step_logits = vec![m.decode_step(&seq[..4], &mut cache).unwrap()];
    for &id in &seq[4..] {
        step_logits.push(m.decode_step(&[id], &mut cache).unwrap());
    }
    assert_eq!(cache.len(), seq.len());
    let n = seq.len();
    let full = m
        .logits(&Batch {
            rows: 1,
            seq_len: n,
            input_ids: seq.clone(),
            position_ids: (0..n as u32).collect(),
            segment_ids: vec![1; n],
            labels: vec![-100; n],
        })
        .unwrap();
    for (i, step) in step_logits.iter().enumerate() {
        let pos = 3 + i;
        let want = full.get(0).unwrap().get(pos).unwrap();
        let diff: f32 = (step - &want)
            .unwrap()
            .abs()
            .unwrap()
            .max(D::Minus1)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(diff < 1e-4, "position {pos}: {diff}");
    }
}

#[test]
fn sampling_is_seeded_and_stops_at_a_stop_token() {
    let m = model("llama", false);
    let prompt = [0u32, 10, 20, 30];
    let s = |seed| Sampling::Sample {
        temperature: 1.0,
        top_p: 0.95,
        seed,
    };
    let a = m.generate(&prompt, 12, s(1), &[]).unwrap();
    assert_eq!(a, m.generate(&prompt, 12, s(1), &[]).unwrap());
    assert_ne!(a, m.generate(&prompt, 12, s(2), &[]).unwrap());
    let stopped = m.generate(&prompt, 12, s(1), &[a[3]]).unwrap();
    assert_eq!(stopped, a[..stopped.len()].to_vec());
    assert_eq!(*stopped.last().unwrap(), a[3]);
}

#[test]
fn a_batch_of_uneven_prompts_decodes_as_each_alone() {
    // Mistral's window (6) is shorter than the longest row, so padding and window meet.
    for name in ["llama", "mistral"] {
        let m = model(name, false);
        let prompts: Vec<Vec<u32>> = vec![
            vec![5, 17, 200, 3, 99, 42, 7, 7, 130],
            vec![64, 2],
            vec![250, 11, 12, 13],
        ];
        let alone: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| m.generate(p, 10, Sampling::Greedy, &[]).unwrap())
            .collect();
        // A stop token that ends the second row early makes it leave the batch.
        let stop = [alone[1][2]];
        let mut seen = vec![Vec::new(); prompts.len()];
        let batch = m
            .generate_batch(&prompts, 10, Sampling::Greedy, &stop, |i, t| {
                seen[i].push(t)
            })
            .unwrap();
        assert_eq!(batch, seen, "{name}: the callback saw every token");
        for (row, want) in batch.iter().zip(&alone) {
            let end = want
                .iter()
                .position(|t| *t == stop[0])
                .map_or(want.len(), |i| i + 1);
            assert_eq!(row, &want[..end].to_vec(), "{name}");
        }
        assert!(batch[1].len() < 10, "{name}: the stopped row left early");
    }
}
