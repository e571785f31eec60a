//! Decoding gives transformers' greedy tokens; each step picks what a full recomputation of the
//! sequence picks (sliding window, adapters, prompts longer than a step); an answer is the same
//! bits whatever the batch size, the slot it ran in and the prompts beside it; sampling is seeded
//! per stream.

mod common;

use common::{fixture, model, MODELS};

use candle_core::{Device, Tensor};
use pctrain_model::{Batch, DecodeOptions, Event, Model, Request, Sampling};

fn ids(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|v| v as u32)
        .collect()
}

fn greedy(slots: usize, max_new: usize) -> DecodeOptions {
    DecodeOptions {
        max_new_tokens: max_new,
        sampling: Sampling::Greedy,
        slots,
    }
}

/// Answers to `prompts` (stream = index) with `opts`.
fn answers(m: &Model, prompts: &[Vec<u32>], opts: &DecodeOptions, stop: &[u32]) -> Vec<Vec<u32>> {
    let requests: Vec<Request> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| Request {
            prompt: p,
            stream: i as u64,
        })
        .collect();
    m.generate_all(&requests, opts, stop, |_| {}).unwrap()
}

/// Prompts of varied lengths (1 to 40 tokens) from a vocabulary of `vocab`.
fn prompts(n: usize, vocab: u32) -> Vec<Vec<u32>> {
    (0..n)
        .map(|i| {
            let len = 1 + (i * 13) % 40;
            (0..len)
                .map(|j| ((i * 131 + j * 71 + 7) as u32) % vocab)
                .collect()
        })
        .collect()
}

#[test]
fn greedy_generation_matches_transformers() {
    for name in MODELS {
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
fn greedy_batches_match_transformers_left_padded_batches() {
    // scripts/make_fixtures.py: 32 prompts of 1 to 40 tokens, decoded by transformers at batch
    // sizes 1, 16 and 32 (left-padded), which agreed.
    for name in MODELS {
        let (prompts, want) = common::generate_batch(name);
        let new = want[0].len();
        let m = model(name, false);
        for slots in [1, 16, 32] {
            let got = answers(&m, &prompts, &greedy(slots, new), &[]);
            assert_eq!(got, want, "{name}, {slots} slots");
        }
    }
}

/// The next token a full recomputation of `seq` picks, if it wins by a clear margin.
fn recomputed_pick(m: &Model, seq: &[u32]) -> Option<u32> {
    let n = seq.len();
    let logits = m
        .logits(&Batch {
            rows: 1,
            seq_len: n,
            input_ids: seq.to_vec(),
            position_ids: (0..n as u32).collect(),
            segment_ids: vec![1; n],
            labels: vec![-100; n],
        })
        .unwrap();
    let last: Vec<f32> = logits
        .get(0)
        .unwrap()
        .get(n - 1)
        .unwrap()
        .to_vec1()
        .unwrap();
    let mut sorted = last.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    (sorted[0] - sorted[1] > 1e-3).then(|| pctrain_model::generate::argmax(&last))
}

#[test]
fn each_step_picks_what_a_full_recomputation_picks() {
    // Mistral's window (6) is shorter than the sequences; the Llama adapter covers LoRA; a
    // prompt longer than a step's prefill (256 tokens) is read over several steps.
    let long: Vec<u32> = (0..300u32).map(|i| (i * 37 + 5) % 256).collect();
    let cases = [
        ("mistral", false, vec![5u32, 17, 200, 3, 99, 42, 7, 7, 130]),
        ("llama", true, vec![64, 2, 250, 11, 12, 13]),
        ("granite", false, vec![1, 2, 3]),
        ("llama", false, long),
    ];
    for (name, lora, prompt) in cases {
        let m = model(name, lora);
        let out = m.generate(&prompt, 12, Sampling::Greedy, &[]).unwrap();
        let mut seq = prompt.clone();
        let mut checked = 0;
        for &t in &out {
            if let Some(want) = recomputed_pick(&m, &seq) {
                assert_eq!(t, want, "{name} (lora {lora}) after {} tokens", seq.len());
                checked += 1;
            }
            seq.push(t);
        }
        assert!(
            checked >= 8,
            "{name}: only {checked} steps had a clear winner"
        );
    }
}

#[test]
fn an_answer_is_the_same_bits_whatever_the_batch_slot_and_neighbours() {
    for name in ["llama", "mistral"] {
        let m = model(name, name == "llama");
        let vocab = m.config.vocab_size as u32;
        let ps = prompts(9, vocab);
        let alone: Vec<Vec<u32>> = ps
            .iter()
            .map(|p| m.generate(p, 10, Sampling::Greedy, &[]).unwrap())
            .collect();
        // A stop token ends some answers early, so their slots take the next prompts.
        let stop = [alone[1][2]];
        let cut = |a: &Vec<u32>| {
            let end = a
                .iter()
                .position(|t| *t == stop[0])
                .map_or(a.len(), |i| i + 1);
            a[..end].to_vec()
        };
        let want: Vec<Vec<u32>> = alone.iter().map(cut).collect();
        for slots in [1, 2, 4, 9] {
            assert_eq!(
                answers(&m, &ps, &greedy(slots, 10), &stop),
                want,
                "{name}, {slots}"
            );
        }
        // The same prompts in reverse order land in other slots beside other prompts.
        let reversed: Vec<Vec<u32>> = ps.iter().rev().cloned().collect();
        let mut got = answers(&m, &reversed, &greedy(4, 10), &stop);
        got.reverse();
        assert_eq!(got, want, "{name}, reversed");
    }
}

#[test]
fn events_report_every_token_and_each_end_once() {
    let m = model("llama", false);
    let ps = prompts(5, 2048);
    let requests: Vec<Request> = ps
        .iter()
        .map(|p| Request {
            prompt: p,
            stream: 0,
        })
        .collect();
    let mut seen = vec![Vec::new(); ps.len()];
    let mut ended = vec![0; ps.len()];
    let out = m
        .generate_all(&requests, &greedy(2, 7), &[], |e| match e {
            Event::Token { request, token } => {
                assert_eq!(ended[request], 0, "a token after the end");
                seen[request].push(token);
            }
            Event::Finished { request } => ended[request] += 1,
        })
        .unwrap();
    assert_eq!(out, seen);
    assert_eq!(ended, vec![1; ps.len()]);
    assert!(out.iter().all(|a| a.len() == 7));
    // With no room for a token, every answer ends at once, empty.
    let mut ended = vec![0; ps.len()];
    let out = m
        .generate_all(&requests, &greedy(2, 0), &[], |e| match e {
            Event::Token { .. } => panic!("a token with no room for one"),
            Event::Finished { request } => ended[request] += 1,
        })
        .unwrap();
    assert_eq!(ended, vec![1; ps.len()]);
    assert!(out.iter().all(Vec::is_empty));
}

#[test]
fn sampling_is_seeded_by_stream_at_any_batch_size_and_stops_at_a_stop_token() {
    let m = model("llama", false);
    let s = |seed| DecodeOptions {
        max_new_tokens: 12,
        sampling: Sampling::Sample {
            temperature: 1.0,
            top_p: 0.95,
            top_k: 50,
            seed,
        },
        slots: 3,
    };
    let ps = prompts(6, 2048);
    let a = answers(&m, &ps, &s(1), &[]);
    let one_slot = DecodeOptions { slots: 1, ..s(1) };
    assert_eq!(
        a,
        answers(&m, &ps, &one_slot, &[]),
        "batch size changed the draws"
    );
    assert_ne!(a, answers(&m, &ps, &s(2), &[]), "the seed changed nothing");
    // The same prompt on two streams: two different answers.
    let twice = [ps[0].clone(), ps[0].clone()];
    let two = answers(&m, &twice, &s(1), &[]);
    assert_ne!(two[0], two[1]);
    let stopped = answers(&m, &ps[..1], &s(1), &[a[0][3]]);
    assert_eq!(
        stopped[0],
        a[0][..=a[0].iter().position(|&t| t == a[0][3]).unwrap()]
    );
}

#[test]
fn bad_prompts_are_refused() {
    let m = model("mistral", false);
    let e = m.generate(&[], 4, Sampling::Greedy, &[]).unwrap_err();
    assert!(e.to_string().contains("no tokens"), "{e}");
    let e = m.generate(&[5, 256], 4, Sampling::Greedy, &[]).unwrap_err();
    assert!(e.to_string().contains("token id 256 is outside"), "{e}");
}
