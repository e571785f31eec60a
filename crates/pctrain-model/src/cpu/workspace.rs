//! The buffers of a CPU pass, kept by the model and reused from step to step: they grow to the
//! largest batch seen and are never freed between steps. The activations are the composition's
//! ([`Acts`], sized by the one list of [`LayerActs::with_lengths`]); the rest is the CPU
//! backend's own.

use crate::layer::{LayerActs, Sizes};
use crate::layers::loss::LossScratch;
use crate::pass::Acts;

use super::backend::Tables;

/// An adapter's `dy B`, `[N, r]`, and its dropped-out input or that input's gradient, `[N, in]`.
#[derive(Default)]
pub(crate) struct LoraScratch {
    pub dy: Vec<f32>,
    pub x: Vec<f32>,
}

/// Everything a CPU pass writes.
#[derive(Default)]
pub(crate) struct Workspace {
    pub acts: Acts<Vec<f32>>,
    pub tables: Tables,
    pub lora: LoraScratch,
    pub loss: LossScratch,
}

impl Workspace {
    /// Sizes the buffers for a pass over `layers` layers of `s`, keeping all layers'
    /// activations or one set, with a backward or not (buffers beyond what this pass needs are
    /// kept for the next one).
    pub fn fit(&mut self, s: &Sizes, layers: usize, keep_all: bool, backward: bool) {
        let acts = &mut self.acts;
        let inputs = if backward { layers + 1 } else { 2 };
        if acts.inputs.len() < inputs {
            acts.inputs.resize_with(inputs, Vec::new);
        }
        for x in &mut acts.inputs[..inputs] {
            fit(x, s.n * s.h);
        }
        let sets = if keep_all { layers } else { 1 };
        if acts.layers.len() < sets {
            acts.layers.resize_with(sets, LayerActs::default);
        }
        for a in &mut acts.layers[..sets] {
            for (v, _, len) in a.with_lengths(s) {
                fit(v, len);
            }
        }
        fit(&mut acts.final_h, s.n * s.h);
        fit(&mut acts.final_rstd, s.n);
        for (v, len) in acts.scratch.with_lengths(s, backward) {
            fit(v, len);
        }
    }
}

/// `v` with `len` elements (growing its allocation only when it has to; new elements are 0).
fn fit(v: &mut Vec<f32>, len: usize) {
    v.resize(len, 0.0);
}

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let floats: usize = self.acts.inputs.iter().map(Vec::capacity).sum();
        write!(
            f,
            "Workspace {{ {} layers, {floats} input floats }}",
            self.acts.layers.len()
        )
    }
}
