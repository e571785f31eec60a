//! The model's weights and adapters as f32 views, held for one pass or one decoding run, and one
//! layer's share of them, as the CPU kernels read them.

use crate::error::Result;
use crate::layers::linear::{dropout_seed, Dropout, LoraView};
use crate::lora::Target;
use crate::model::Model;
use crate::params::{LayerParam, Param};

use super::view::{view, View};

/// One layer's weights (`[out, in]` projections, `[H]` norms) and adapters, as f32 slices.
pub(crate) struct LayerParams<'a> {
    /// By [`LayerParam`].
    pub w: [&'a [f32]; 9],
    pub lora: [Option<LoraView<'a>>; 7],
}

impl LayerParams<'_> {
    pub fn weight(&self, w: LayerParam) -> &[f32] {
        self.w[w as usize]
    }
}

/// An adapter's `A` and `B` views, rank and scale.
type AdapterViews<'a> = (View<'a>, View<'a>, usize, f32);

/// Every weight and adapter of the model as f32 views, held for one pass (or one decoding run).
pub(crate) struct Views<'a> {
    pub embed: View<'a>,
    pub norm: View<'a>,
    lm_head: Option<View<'a>>,
    layers: Vec<Vec<View<'a>>>,
    /// Per layer and target.
    lora: Vec<Vec<Option<AdapterViews<'a>>>>,
}

impl Views<'_> {
    /// Layer `l`'s parameters, with the pass's dropout (probability and step seed) if any.
    pub fn layer(&self, l: usize, dropout: Option<(f64, u64)>) -> LayerParams<'_> {
        let w = &self.layers[l];
        let lora = std::array::from_fn(|t| {
            self.lora[l][t].as_ref().map(|(a, b, r, scale)| LoraView {
                a,
                b,
                r: *r,
                scale: *scale,
                dropout: dropout.map(|(p, seed)| Dropout {
                    p,
                    seed: dropout_seed(seed, l, Target::ALL[t]),
                }),
            })
        });
        LayerParams {
            w: std::array::from_fn(|i| &*w[i]),
            lora,
        }
    }

    pub fn output(&self) -> &[f32] {
        self.lm_head.as_deref().unwrap_or(&self.embed)
    }

    /// `x` = the embeddings of `ids` times `mult`, `[ids, H]` (the first rows of `x`).
    pub fn embed_rows(&self, ids: &[u32], mult: f32, x: &mut [f32]) {
        let h = self.norm.len();
        for (x, &id) in x.chunks_exact_mut(h).zip(ids) {
            let row = &self.embed[id as usize * h..(id as usize + 1) * h];
            for (x, e) in x.iter_mut().zip(row) {
                *x = e * mult;
            }
        }
    }

    /// The values of base weight `p` (an adapter's are read through [`Views::layer`]).
    pub fn weight(&self, p: Param) -> &[f32] {
        match p {
            Param::Embed => &self.embed,
            Param::Layer(l, w) => &self.layers[l][w as usize],
            Param::Norm => &self.norm,
            Param::LmHead => self.output(),
            Param::LoraA(..) | Param::LoraB(..) => {
                unreachable!("adapters are read by layer: Views::layer")
            }
        }
    }
}

impl Model {
    pub(crate) fn views(&self) -> Result<Views<'_>> {
        let w = &self.weights;
        let layers = w
            .layers
            .iter()
            .map(|l| l.named().iter().map(|(_, t)| view(t)).collect())
            .collect::<candle_core::Result<_>>()?;
        let lora = (0..w.layers.len())
            .map(|l| {
                (0..7)
                    .map(|t| {
                        let Some(a) = self.lora.as_ref().and_then(|a| a.layers[l][t].as_ref())
                        else {
                            return Ok(None);
                        };
                        Ok(Some((
                            view(&a.a)?,
                            view(&a.b)?,
                            a.a.dim(0)?,
                            a.scale as f32,
                        )))
                    })
                    .collect::<candle_core::Result<_>>()
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Views {
            embed: view(&w.embed_tokens)?,
            norm: view(&w.norm)?,
            lm_head: w.lm_head.as_ref().map(view).transpose()?,
            layers,
            lora,
        })
    }
}
