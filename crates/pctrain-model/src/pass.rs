//! A pass, written once over a backend ([`Forward`], [`Backward`]): embeddings, the layers' forward
//! ([`crate::layer`]), the final norm and the chunked loss, then the explicit backward walking the
//! layers in reverse, adding each gradient into the step's slots. Frozen weights get no gradient
//! slot and cost no weight-gradient GEMM; with recomputation a layer keeps only its input and
//! recomputes the rest in backward.

use crate::backend::{Backward, Forward, LossBackward};
use crate::error::Result;
use crate::layer::{layer_backward, layer_forward, LayerActs, Scratch};
use crate::layers::loss::LossSum;
use crate::params::{Param, Part, Placed};

/// Everything a pass writes: each layer's input (the last one the final norm's), every layer's
/// activations or one set reused by each layer in turn, the final norm's output and `1 / rms`,
/// and the backward's scratch.
#[derive(Default)]
pub(crate) struct Acts<B> {
    /// `[N, H]` each: all `L + 1` in a training pass, two in turn in a forward alone (the loss,
    /// a decoding step).
    pub inputs: Vec<B>,
    pub layers: Vec<LayerActs<B>>,
    /// `[N, H]` and `[N]`.
    pub final_h: B,
    pub final_rstd: B,
    pub scratch: Scratch<B>,
}

impl<B> Acts<B> {
    /// Buffers of `empty()` for a pass over `layers` layers, keeping every layer's activations
    /// (`keep_all`) or one set, with a `backward` or not.
    pub fn new(layers: usize, keep_all: bool, backward: bool, empty: impl Fn() -> B) -> Self {
        let inputs = if backward { layers + 1 } else { 2 };
        let sets = if keep_all { layers } else { 1 };
        Acts {
            inputs: (0..inputs).map(|_| empty()).collect(),
            layers: (0..sets).map(|_| LayerActs::new(&empty)).collect(),
            final_h: empty(),
            final_rstd: empty(),
            scratch: Scratch::new(&empty),
        }
    }
}

/// Embeddings, then every layer, then the final norm into `acts.final_h`: keeping every layer's
/// activations (`keep_all`) or reusing one set, and every layer's input (`backward`) or two in
/// turn. `acts` holds as many of each as that takes ([`Acts::new`]).
pub(crate) fn forward<K: Forward>(
    k: &mut K,
    acts: &mut Acts<K::Buf>,
    keep_all: bool,
    backward: bool,
) -> Result<()> {
    let layers = k.config().num_layers;
    let Acts {
        inputs,
        layers: sets,
        final_h,
        final_rstd,
        scratch,
    } = acts;
    let slot = |l: usize| if backward { l } else { l % 2 };
    k.embed(&mut inputs[0])?;
    for l in 0..layers {
        let (x, out) = pair(inputs, slot(l), slot(l + 1));
        let set = if keep_all { l } else { 0 };
        layer_forward(k, l, x, &mut sets[set], scratch, out)?;
    }
    let last = &inputs[slot(layers)];
    k.rms_norm(Param::Norm, last, final_h, final_rstd)
}

/// The summed loss of a forward-only pass.
pub(crate) fn loss<K: Backward>(k: &mut K, acts: &mut Acts<K::Buf>) -> Result<LossSum> {
    forward(k, acts, false, false)?;
    k.loss(&acts.final_h, None)
}

/// Forward and backward: the summed loss, its gradients times `scale` added to `g`, and the
/// gradient with respect to the scaled embeddings (the first layer's input; Granite's multiplier
/// not yet applied to it) left in `acts.scratch.grad`. Without `keep_all`, each layer's activations
/// are recomputed from its input in backward. `hooks` hear of each part's gradients before the
/// pass first adds into them and once it has added its last, in [`Part::order`] (the embeddings
/// are final when the pass returns).
pub(crate) fn forward_backward<K: Backward>(
    k: &mut K,
    acts: &mut Acts<K::Buf>,
    keep_all: bool,
    scale: f64,
    g: &mut Placed<K::Grad>,
    hooks: &mut impl PartHooks<K::Grad>,
) -> Result<LossSum> {
    forward(k, acts, keep_all, true)?;
    let layers = k.config().num_layers;
    let Acts {
        inputs,
        layers: sets,
        final_h,
        final_rstd,
        scratch,
    } = acts;

    // The loss, and its gradient with respect to the final hidden states (in `dh`).
    hooks.starting(Part::Head, g)?;
    hooks.starting(Part::Embeddings, g)?;
    let lb = LossBackward {
        scale,
        dh: &mut scratch.dh,
        g,
    };
    let loss = k.loss(final_h, Some(lb))?;
    let dnorm = g.norm.as_mut();
    let (dh, grad) = (&scratch.dh, &mut scratch.grad);
    k.rms_norm_backward(
        Param::Norm,
        dh,
        &inputs[layers],
        final_rstd,
        grad,
        false,
        dnorm,
    )?;
    hooks.finished(Part::Head, g)?;

    // Layers in reverse.
    for l in (0..layers).rev() {
        let set = if keep_all {
            l
        } else {
            let (x, out) = pair(inputs, l, l + 1);
            layer_forward(k, l, x, &mut sets[0], scratch, out)?;
            0
        };
        hooks.starting(Part::Layer(l), g)?;
        layer_backward(k, l, &inputs[l], &sets[set], scratch, &mut g.layers[l])?;
        hooks.finished(Part::Layer(l), g)?;
    }
    k.embed_backward(&scratch.grad, g)?;
    Ok(loss)
}

/// What a pass tells its caller of each part of the gradients: the buffers to provide, the
/// buffers it is done with.
pub(crate) trait PartHooks<G> {
    /// Before the pass first adds into `part`'s gradients.
    fn starting(&mut self, part: Part, g: &mut Placed<G>) -> Result<()>;
    /// Once the pass has added its last into them.
    fn finished(&mut self, part: Part, g: &mut Placed<G>) -> Result<()>;
}

/// A pass whose caller has nothing to do as it goes.
pub(crate) struct NoHooks;

impl<G> PartHooks<G> for NoHooks {
    fn starting(&mut self, _: Part, _: &mut Placed<G>) -> Result<()> {
        Ok(())
    }

    fn finished(&mut self, _: Part, _: &mut Placed<G>) -> Result<()> {
        Ok(())
    }
}

/// `v[i]` to read and `v[j]` to write (`i != j`).
fn pair<B>(v: &mut [B], i: usize, j: usize) -> (&B, &mut B) {
    assert_ne!(i, j, "a layer's input and output are different buffers");
    if i < j {
        let (a, b) = v.split_at_mut(j);
        (&a[i], &mut b[0])
    } else {
        let (a, b) = v.split_at_mut(i);
        (&b[0], &mut a[j])
    }
}
