//! The decoder matches transformers and PEFT on the fixture models (scripts/make_fixtures.py):
//! logits and loss of the base model and with a LoRA adapter, on a batch with two packed samples
//! in one row and a padded row.

mod common;

use common::{batch, model, reference, MODELS};

use candle_core::Tensor;

/// Largest relative difference over non-padding positions, relative to the largest magnitude.
fn max_rel_diff(got: &Tensor, want: &Tensor, segments: &[u32]) -> f32 {
    let got: Vec<Vec<Vec<f32>>> = got.to_vec3().unwrap();
    let want: Vec<Vec<Vec<f32>>> = want.to_vec3().unwrap();
    let t = got[0].len();
    let mut scale = 0f32;
    let mut diff = 0f32;
    for b in 0..got.len() {
        for p in 0..t {
            if segments[b * t + p] == 0 {
                continue;
            }
            for (g, w) in got[b][p].iter().zip(&want[b][p]) {
                scale = scale.max(w.abs());
                diff = diff.max((g - w).abs());
            }
        }
    }
    diff / scale
}

#[test]
fn logits_and_loss_match_transformers() {
    for name in MODELS {
        let r = reference(name);
        let batch = batch(&r);
        for (with_lora, key) in [(false, "base"), (true, "lora")] {
            let m = model(name, with_lora);
            let logits = m.logits(&batch).unwrap();
            let want = &r[&format!("{key}.logits")];
            let diff = max_rel_diff(&logits, want, &batch.segment_ids);
            assert!(
                diff < 1e-5,
                "{name} {key}: logits differ by {diff:e} (relative)"
            );

            let loss = m.loss_sum(&batch, 5).unwrap();
            let got = loss.sum().unwrap() / loss.count as f64;
            let want: f32 = r[&format!("{key}.loss")].to_scalar().unwrap();
            let rel = ((got - f64::from(want)) / f64::from(want)).abs();
            assert!(rel < 1e-5, "{name} {key}: loss {got} vs {want}");
        }
    }
}

#[test]
fn chunking_does_not_change_the_loss() {
    let r = reference("llama");
    let batch = batch(&r);
    let m = model("llama", true);
    let whole = m.loss_sum(&batch, 1 << 20).unwrap();
    for chunk in [1, 3, 7, 32] {
        let part = m.loss_sum(&batch, chunk).unwrap();
        assert_eq!(part.count, whole.count);
        assert!(
            (part.sum().unwrap() - whole.sum().unwrap()).abs() < 1e-6 * whole.sum().unwrap().abs(),
            "chunk {chunk}: {} vs {}",
            part.sum().unwrap(),
            whole.sum().unwrap()
        );
    }
}
