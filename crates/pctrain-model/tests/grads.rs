//! Model gradients match PEFT's (LoRA A and B of every target, and the input embeddings) on the
//! fixture batch; frozen weights hold no gradient; every trainable tensor gets a non-zero one.

mod common;

use common::{batch, model, reference};

use candle_core::{Device, Tensor};
use pctrain_model::{
    Batch, Gradients, Grads, Model, ModelWeights, Part, StepOptions, Target, TrainMode,
};

fn rel_diff(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims());
    let g: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
    let w: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
    let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
    g.iter()
        .zip(&w)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

fn trained_targets(b: &Batch) -> f64 {
    let t = b.seq_len;
    (0..b.labels.len())
        .filter(|&i| {
            i % t + 1 < t && b.segment_ids[i + 1] == b.segment_ids[i] && b.labels[i + 1] != -100
        })
        .count() as f64
}

/// The tests' pass: loss chunks of 5 tokens, no dropout.
fn options(mode: TrainMode, recompute: bool) -> StepOptions {
    StepOptions {
        mode,
        recompute,
        loss_chunk: 5,
        dropout_seed: 0,
    }
}

fn step(m: &Model, b: &Batch, mode: TrainMode, recompute: bool) -> Grads {
    let opts = options(mode, recompute);
    m.forward_backward(b, trained_targets(b), opts).unwrap().1
}

#[test]
fn lora_and_embedding_gradients_match_peft() {
    for name in ["llama", "mistral", "granite"] {
        let r = reference(name);
        let b = batch(&r);
        let m = model(name, true);
        let (loss, grads) = m
            .forward_backward(
                &b,
                trained_targets(&b),
                StepOptions {
                    mode: TrainMode::Lora,
                    recompute: false,
                    loss_chunk: 5,
                    dropout_seed: 0,
                },
            )
            .unwrap();
        let want: f32 = r["lora.loss"].to_scalar().unwrap();
        assert!(
            ((loss.sum().unwrap() / loss.count as f64) as f32 - want).abs() < 1e-5 * want.abs(),
            "{name} loss"
        );
        let d = rel_diff(&grads.inputs_embeds, &r["grad.inputs_embeds"]);
        assert!(
            d < 1e-4,
            "{name}: input embedding gradient differs by {d:e}"
        );
        for (l, layer) in grads.layers.iter().enumerate() {
            for t in Target::ALL {
                let (da, db) = layer.lora[t as usize]
                    .as_ref()
                    .expect("every target trains");
                let block = if matches!(t, Target::Q | Target::K | Target::V | Target::O) {
                    "self_attn"
                } else {
                    "mlp"
                };
                for (which, got) in [("A", da), ("B", db)] {
                    let key = format!("grad.base_model.model.model.layers.{l}.{block}.{}.lora_{which}.default.weight", t.module());
                    let d = rel_diff(got, &r[&key]);
                    assert!(d < 1e-4, "{name}: {key} differs by {d:e}");
                }
            }
        }
    }
}

#[test]
fn recomputation_gives_the_same_gradients() {
    let r = reference("mistral");
    let b = batch(&r);
    let m = model("mistral", true);
    let saved = step(&m, &b, TrainMode::Lora, false);
    let recomputed = step(&m, &b, TrainMode::Lora, true);
    assert_eq!(
        rel_diff(&recomputed.inputs_embeds, &saved.inputs_embeds),
        0.0
    );
    for (x, y) in saved.layers.iter().zip(&recomputed.layers) {
        for t in Target::ALL {
            let (a, b) = (
                x.lora[t as usize].as_ref().unwrap(),
                y.lora[t as usize].as_ref().unwrap(),
            );
            assert_eq!(rel_diff(&a.0, &b.0), 0.0);
            assert_eq!(rel_diff(&a.1, &b.1), 0.0);
        }
    }
}

fn nonzero(t: &Tensor) -> bool {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        > 0.0
}

#[test]
fn frozen_weights_get_no_gradient_and_trainable_ones_get_nonzero_ones() {
    for name in ["llama", "granite"] {
        let r = reference(name);
        let b = batch(&r);

        // LoRA: adapters only.
        let g = step(&model(name, true), &b, TrainMode::Lora, false);
        assert!(g.embed_tokens.is_none() && g.norm.is_none() && g.lm_head.is_none());
        for layer in &g.layers {
            assert!(
                layer.weights.is_none(),
                "{name}: a frozen weight got a gradient"
            );
            for pair in &layer.lora {
                let (a, b) = pair.as_ref().unwrap();
                assert!(nonzero(a) && nonzero(b), "{name}: zero LoRA gradient");
            }
        }

        // Full: every weight, no adapters.
        let m = model(name, false);
        let g = step(&m, &b, TrainMode::Full, false);
        assert!(nonzero(g.embed_tokens.as_ref().unwrap()));
        assert!(nonzero(g.norm.as_ref().unwrap()));
        assert_eq!(g.lm_head.is_some(), !m.config.tie_word_embeddings);
        if let Some(h) = &g.lm_head {
            assert!(nonzero(h));
        }
        for layer in &g.layers {
            assert!(layer.lora.iter().all(Option::is_none));
            let w = layer.weights.as_ref().unwrap();
            for (weight, t) in w.named() {
                assert!(nonzero(t), "{name}: {weight} got a zero gradient");
            }
        }
    }
}

#[test]
fn lora_dropout_is_seeded_and_recomputed_identically() {
    let r = reference("llama");
    let b = batch(&r);
    let mut m = model("llama", true);
    let clean = step(&m, &b, TrainMode::Lora, false);
    m.lora.as_mut().unwrap().config.dropout = 0.3;
    let opts = |seed, recompute| StepOptions {
        mode: TrainMode::Lora,
        recompute,
        loss_chunk: 5,
        dropout_seed: seed,
    };
    let n = trained_targets(&b);
    let (l1, g1) = m.forward_backward(&b, n, opts(7, false)).unwrap();
    let (l2, g2) = m.forward_backward(&b, n, opts(7, true)).unwrap();
    let (l3, _) = m.forward_backward(&b, n, opts(8, false)).unwrap();
    let v = |l: &pctrain_model::layers::loss::LossSum| (l.sum().unwrap(), l.count);
    assert_eq!(
        v(&l1),
        v(&l2),
        "same seed, same masks, with or without recomputation"
    );
    assert_ne!(v(&l1), v(&l3), "another seed, other masks");
    let q = |g: &Grads| g.layers[0].lora[Target::Q as usize].clone().unwrap().0;
    assert_eq!(rel_diff(&q(&g1), &q(&g2)), 0.0);
    assert!(
        rel_diff(&q(&g1), &q(&clean)) > 1e-3,
        "dropout changes the gradient"
    );
}

/// Picks one weight tensor out of a model's weights.
type Pick = dyn Fn(&mut ModelWeights) -> &mut Tensor;

/// The loss with one weight coordinate moved, for finite differences (f64 on the summed loss).
fn loss_with(m: &Model, b: &Batch, pick: &Pick, i: usize, d: f32) -> f64 {
    let mut m = m.clone();
    let t = pick(&mut m.weights);
    let mut v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    v[i] += d;
    *t = Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap();
    let l = m.loss_sum(b, 5).unwrap();
    l.sum().unwrap() / trained_targets(b)
}

#[test]
fn full_fine_tuning_gradients_match_finite_differences() {
    // Granite: tied embeddings and every multiplier in play.
    let r = reference("granite");
    let b = batch(&r);
    let m = model("granite", false);
    let g = step(&m, &b, TrainMode::Full, false);
    let l = &g.layers[1];
    let weights = l.weights.as_ref().unwrap();
    let cases: Vec<(&str, &Pick, &Tensor)> = vec![
        (
            "embed_tokens (tied)",
            &|w| &mut w.embed_tokens,
            g.embed_tokens.as_ref().unwrap(),
        ),
        ("norm", &|w| &mut w.norm, g.norm.as_ref().unwrap()),
        (
            "layers.1.q_proj",
            &|w| &mut w.layers[1].q_proj,
            &weights.q_proj,
        ),
        (
            "layers.1.input_norm",
            &|w| &mut w.layers[1].input_norm,
            &weights.input_norm,
        ),
        (
            "layers.1.down_proj",
            &|w| &mut w.layers[1].down_proj,
            &weights.down_proj,
        ),
    ];
    for (name, pick, grad) in cases {
        let gv: Vec<f32> = grad.flatten_all().unwrap().to_vec1().unwrap();
        // The coordinates with the largest gradients, where the difference is well above noise.
        let mut order: Vec<usize> = (0..gv.len()).collect();
        order.sort_by(|&a, &b| gv[b].abs().total_cmp(&gv[a].abs()));
        for &i in &order[..3] {
            let eps = 2e-3;
            let fd = (loss_with(&m, &b, pick, i, eps) - loss_with(&m, &b, pick, i, -eps))
                / (2.0 * f64::from(eps));
            let want = f64::from(gv[i]);
            assert!(
                (fd - want).abs() < 1e-2 * want.abs() + 1e-4,
                "{name}[{i}]: finite difference {fd} vs backward {want}"
            );
        }
    }
}

#[test]
fn malformed_batches_are_errors_not_panics() {
    let m = model("llama", true);
    let r = reference("llama");
    let opts = StepOptions {
        mode: TrainMode::Lora,
        recompute: false,
        loss_chunk: 5,
        dropout_seed: 0,
    };
    let mut b = batch(&r);
    b.labels[3] = 5000;
    let e = m.forward_backward(&b, 1.0, opts).unwrap_err().to_string();
    assert!(e.contains("label 5000"), "{e}");
    let mut b = batch(&r);
    b.labels.pop();
    assert!(m.forward_backward(&b, 1.0, opts).is_err());
    let empty = Batch {
        rows: 0,
        seq_len: 16,
        input_ids: vec![],
        position_ids: vec![],
        segment_ids: vec![],
        labels: vec![],
    };
    assert!(m.forward_backward(&empty, 1.0, opts).is_err());
    assert!(m.logits(&empty).is_err());
}

/// A bf16 base under an f32 adapter (how a GPU trains): the step runs, the adapter's gradients
/// stay f32, and they are the f32 model's within what bf16 rounding explains
/// ([`pctrain_testkit::bf16`]: the loss within `u = 2^-8`, each gradient within `u * (4 + 12 L)`
/// in relative L2 norm for `L` layers), the bound the GPU's bf16 step is held to.
#[test]
fn a_bf16_base_with_an_f32_adapter_gives_the_f32_gradients_within_bf16_rounding() {
    let r = reference("llama");
    let b = batch(&r);
    let f32_model = model("llama", true);
    let dir = common::fixture("llama");
    let config = pctrain_model::ModelConfig::load(&dir).unwrap();
    let weights =
        ModelWeights::load(&dir, &config, candle_core::DType::BF16, &Device::Cpu).unwrap();
    let lora = f32_model.lora.clone();
    let bf16_model = Model::new(config, weights, lora);
    let opts = StepOptions {
        mode: TrainMode::Lora,
        recompute: false,
        loss_chunk: 16,
        dropout_seed: 0,
    };
    let n = trained_targets(&b);
    let tol = pctrain_testkit::bf16::bf16_step(f32_model.config.num_layers);
    let (l32, g32) = f32_model.forward_backward(&b, n, opts).unwrap();
    let (l16, g16) = bf16_model.forward_backward(&b, n, opts).unwrap();
    let (l32, l16) = (l32.sum().unwrap(), l16.sum().unwrap());
    assert!((l32 - l16).abs() < tol.loss * l32.abs(), "{l32} vs {l16}");
    let norm = |t: &Tensor| {
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt()
    };
    let rel_l2 = |got: &Tensor, want: &Tensor| norm(&(got - want).unwrap()) / norm(want);
    let mut compared = 0;
    for (l, (a, c)) in g32.layers.iter().zip(&g16.layers).enumerate() {
        for (t, (x, y)) in a.lora.iter().zip(&c.lora).enumerate() {
            match (x, y) {
                (Some((xa, xb)), Some((ya, yb))) => {
                    assert_eq!(ya.dtype(), candle_core::DType::F32);
                    for (got, want) in [(ya, xa), (yb, xb)] {
                        let d = rel_l2(got, want);
                        assert!(d < tol.gradient, "layer {l} target {t}: {d}");
                    }
                    compared += 1;
                }
                (None, None) => {}
                _ => panic!("layer {l} target {t}: an adapter gradient on one side only"),
            }
        }
    }
    assert!(compared > 0, "no adapter gradient was compared");
}

/// What a pass hands out: each part's buffers, each with where it starts, copied as handed out.
type HandedOut = Vec<(Part, Vec<(usize, Vec<f32>)>)>;

/// A pass that hands its gradients out part by part hands out each part once it is final (as
/// handed out, the values are those the whole pass ends with), in the backward's order (the head,
/// the layers from the last, the embeddings), and every trainable tensor's buffer exactly once,
/// at its place among them all; it adds the gradients a pass without hand-out adds. Without a
/// pass, the buffers are handed out in the same order and places.
#[test]
fn gradients_are_handed_out_final_in_the_backwards_order() {
    for (name, mode) in [
        ("llama", TrainMode::Full),
        ("granite", TrainMode::Full),
        ("llama", TrainMode::Lora),
    ] {
        let r = reference(name);
        let b = batch(&r);
        let m = model(name, mode == TrainMode::Lora);
        let opts = options(mode, false);
        let n = trained_targets(&b);
        let mut grads = Gradients::zeros(&m, mode).unwrap();
        let mut seen: HandedOut = Vec::new();
        let mut record = |part, pieces: Vec<(usize, &mut Vec<f32>)>| {
            let copies = pieces.into_iter().map(|(at, g)| (at, g.to_vec()));
            seen.push((part, copies.collect()));
        };
        m.accumulate_gradients_handing_out(&b, n, opts, &mut grads, &mut record)
            .unwrap();
        let mut plain = Gradients::zeros(&m, mode).unwrap();
        m.accumulate_gradients(&b, n, opts, &mut plain).unwrap();
        let host = grads.host().unwrap();
        assert!(host == plain.host().unwrap(), "{name}: other gradients");

        let parts: Vec<Part> = seen.iter().map(|(p, _)| *p).collect();
        let order: Vec<Part> = Part::order(m.config.num_layers).collect();
        assert_eq!(parts, order, "{name}");
        let starts: Vec<usize> = host
            .iter()
            .scan(0, |at, g| {
                *at += g.len();
                Some(*at - g.len())
            })
            .collect();
        let mut handed: Vec<(usize, &Vec<f32>)> = seen
            .iter()
            .flat_map(|(_, pieces)| pieces.iter().map(|(at, g)| (*at, g)))
            .collect();
        handed.sort_by_key(|(at, _)| *at);
        assert_eq!(handed.len(), host.len(), "{name}: each buffer once");
        for ((at, copy), (start, g)) in handed.iter().zip(starts.iter().zip(host)) {
            assert_eq!(at, start, "{name}");
            assert!(
                *copy == g,
                "{name}: the buffer at {at} changed after it was handed out"
            );
        }
        // The layers' parts carry the layers' tensors; in LoRA the head and embeddings none.
        if mode == TrainMode::Lora {
            assert!(seen[0].1.is_empty() && seen.last().unwrap().1.is_empty());
        }

        let mut again: HandedOut = Vec::new();
        let mut record = |part, pieces: Vec<(usize, &mut Vec<f32>)>| {
            let copies = pieces.into_iter().map(|(at, g)| (at, g.to_vec()));
            again.push((part, copies.collect()));
        };
        m.hand_out_gradients(mode, &mut grads, &mut record).unwrap();
        assert!(again == seen, "{name}: handed out otherwise without a pass");
    }
}

/// Gradients kept by span are made whole just before a pass adds into them, each span keeping
/// its values and the rest starting at zero: two passes over the same batch, each buffer cut back
/// to its span once handed out, hand out the pass's gradients and then, within the spans, twice
/// them.
#[test]
fn gradients_kept_by_span_are_made_whole_with_their_spans_values() {
    let r = reference("llama");
    let b = batch(&r);
    let m = model("llama", false);
    let mode = TrainMode::Full;
    let opts = options(mode, true);
    let n = trained_targets(&b);
    let mut plain = Gradients::zeros(&m, mode).unwrap();
    m.accumulate_gradients(&b, n, opts, &mut plain).unwrap();
    let plain = plain.host().unwrap().to_vec();
    // Each tensor's middle third.
    let spans: Vec<_> = plain.iter().map(|g| g.len() / 3..2 * g.len() / 3).collect();
    let starts: Vec<usize> = plain
        .iter()
        .scan(0, |at, g| {
            *at += g.len();
            Some(*at - g.len())
        })
        .collect();
    let mut grads = Gradients::zeros_in_spans(&m, mode, spans.clone()).unwrap();
    assert!(m.accumulate_gradients(&b, n, opts, &mut grads).is_err());
    for times in [1.0f32, 2.0] {
        let mut seen = vec![Vec::new(); plain.len()];
        let mut cut = |_, pieces: Vec<(usize, &mut Vec<f32>)>| {
            for (at, g) in pieces {
                let i = starts.iter().position(|&s| s == at).unwrap();
                seen[i] = g.clone();
                *g = g[spans[i].clone()].to_vec();
            }
        };
        m.accumulate_gradients_handing_out(&b, n, opts, &mut grads, &mut cut)
            .unwrap();
        for (i, (got, want)) in seen.iter().zip(&plain).enumerate() {
            assert_eq!(got.len(), want.len(), "tensor {i} handed out whole");
            for (j, (g, w)) in got.iter().zip(want).enumerate() {
                let w = if spans[i].contains(&j) { times * w } else { *w };
                assert!(
                    (g - w).abs() <= 1e-6 * w.abs().max(1e-3),
                    "tensor {i}[{j}]: {g} for {w}"
                );
            }
        }
        assert_eq!(grads.spans(), Some(&spans[..]));
    }
    assert!(grads.to_tensors().is_err(), "spans are not whole tensors");
}
