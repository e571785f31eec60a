//! A pass on the CPU kernels: embeddings, the layers' forward into the model's
//! [`Workspace`](super::workspace::Workspace), the chunked loss, and the backward walking the
//! layers in reverse, adding each gradient in place into the step's buffers. The same pass as
//! [`crate::backward`]'s tensor path (which a GPU runs), with no tensor made per op: every buffer
//! is reused from step to step.

use crate::backward::{StepOptions, TrainMode};
use crate::error::Result;
use crate::layers::attention::{attention_reach, AttnShape};
use crate::layers::linear::{dropout_seed, Dropout, LoraView};
use crate::layers::loss::{cross_entropy_cpu, shift_targets, LossGrads, LossSum};
use crate::layers::norm::{rms_norm_cpu_backward, rms_norm_cpu_forward};
use crate::layers::rope::rope_table_values;
use crate::lora::Target;
use crate::model::{Batch, Model};
use crate::params::{place, Placed};

use super::layer::{LayerParams, Pass};
use super::view::{view, View};
use super::workspace::{Sizes, Workspace};

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

    /// The sizes of a pass's buffers for a batch of `rows x seq_len`.
    pub(crate) fn sizes(&self, rows: usize, seq_len: usize) -> Sizes {
        let c = &self.config;
        let n = rows * seq_len;
        let mut ranks = [0; 7];
        if let Some(a) = &self.lora {
            for t in &a.config.targets {
                ranks[*t as usize] = a.config.r;
            }
        }
        Sizes {
            n,
            h: c.hidden_size,
            q: c.num_heads * c.head_dim,
            kv: c.num_kv_heads * c.head_dim,
            inter: c.intermediate_size,
            lse: n * c.num_heads,
            ranks,
        }
    }

    /// The gradient buffers of `mode` (in [`Model::trainable_params`]' order), placed by what
    /// they hold.
    fn slots<'a>(&self, mode: TrainMode, host: &'a mut [Vec<f32>]) -> Placed<&'a mut [f32]> {
        let params = self.trainable_params(mode);
        place(
            self.config.num_layers,
            &params,
            host.iter_mut().map(Vec::as_mut_slice),
        )
    }

    /// The rope tables, attention reach and shape of `batch`, written into `ws`.
    fn prepare(&self, ws: &mut Workspace, batch: &Batch) -> AttnShape {
        let c = &self.config;
        let (cos, sin) = rope_table_values(self.inv_freq(), &batch.position_ids);
        ws.cos = cos;
        ws.sin = sin;
        ws.reach = attention_reach(
            &batch.segment_ids,
            batch.rows,
            c.sliding_window.unwrap_or(0),
        );
        AttnShape {
            batch: batch.rows,
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            t: batch.seq_len,
            d: c.head_dim,
            token_major: true,
        }
    }

    /// Embeddings, then every layer: keeping all layers' activations (`keep_all`) or reusing one
    /// set, and every layer's input (`backward`) or two in turn; then the final norm.
    #[allow(clippy::too_many_arguments)]
    fn cpu_forward(
        &self,
        ws: &mut Workspace,
        v: &Views,
        batch: &Batch,
        attn: AttnShape,
        dropout: Option<(f64, u64)>,
        keep_all: bool,
        backward: bool,
    ) {
        let c = &self.config;
        let h = c.hidden_size;
        let n = batch.rows * batch.seq_len;
        ws.fit(
            &self.sizes(batch.rows, batch.seq_len),
            c.num_layers,
            keep_all,
            backward,
        );
        let Workspace {
            inputs,
            layers,
            final_h,
            final_rstd,
            cos,
            sin,
            reach,
            scratch,
            ..
        } = ws;
        let mult = c.embedding_multiplier as f32;
        for (x, &id) in inputs[0].chunks_exact_mut(h).zip(&batch.input_ids) {
            let row = &v.embed[id as usize * h..(id as usize + 1) * h];
            for (x, e) in x.iter_mut().zip(row) {
                *x = e * mult;
            }
        }
        let pass = Pass {
            config: c,
            n,
            attn,
            cos,
            sin,
            seg: &batch.segment_ids,
            reach,
        };
        let slot = |l: usize| if backward { l } else { l % 2 };
        for l in 0..c.num_layers {
            let (x, out) = pair(inputs, slot(l), slot(l + 1));
            let acts = &mut layers[if keep_all { l } else { 0 }];
            pass.layer_forward(&v.layer(l, dropout), x, acts, scratch, out);
        }
        let last = &inputs[slot(c.num_layers)];
        rms_norm_cpu_forward(last, &v.norm, c.rms_norm_eps as f32, final_h, final_rstd);
    }

    /// The summed next-token loss of `batch`, forward only.
    pub(crate) fn cpu_loss(&self, batch: &Batch, chunk: usize) -> Result<LossSum> {
        let v = self.views()?;
        let mut ws = self.workspace.lock().expect("a pass panicked");
        let attn = self.prepare(&mut ws, batch);
        self.cpu_forward(&mut ws, &v, batch, attn, None, false, false);
        let targets = shift_targets(&batch.labels, &batch.segment_ids, batch.rows);
        let c = &self.config;
        let Workspace { final_h, loss, .. } = &mut *ws;
        Ok(cross_entropy_cpu(
            final_h,
            v.output(),
            c.logits_scaling as f32,
            &targets,
            chunk,
            None,
            loss,
        ))
    }

    /// Forward and backward of `batch`, adding the gradients of its summed loss times `1 /
    /// normalizer` to `grads` ([`Model::trainable`]'s buffers). Returns the loss sum and, with
    /// `want_input_grad`, the gradient of the embedding lookup's output, `[N, H]`.
    pub(crate) fn cpu_forward_backward(
        &self,
        batch: &Batch,
        normalizer: f64,
        opts: StepOptions,
        grads: &mut [Vec<f32>],
        want_input_grad: bool,
    ) -> Result<(LossSum, Option<Vec<f32>>)> {
        let c = &self.config;
        let h = c.hidden_size;
        let v = self.views()?;
        let mut slots = self.slots(opts.mode, grads);
        let dropout = self
            .lora
            .as_ref()
            .map(|a| a.config.dropout)
            .filter(|&p| p > 0.0)
            .map(|p| (p, opts.dropout_seed));
        let mut ws = self.workspace.lock().expect("a pass panicked");
        let attn = self.prepare(&mut ws, batch);
        let keep_all = !opts.recompute;
        self.cpu_forward(&mut ws, &v, batch, attn, dropout, keep_all, true);
        let Workspace {
            inputs,
            layers,
            final_h,
            final_rstd,
            cos,
            sin,
            reach,
            scratch,
            loss,
        } = &mut *ws;

        // The loss, and its gradient with respect to the final hidden states (in `dh`).
        let full = opts.mode == TrainMode::Full;
        let targets = shift_targets(&batch.labels, &batch.segment_ids, batch.rows);
        let doutput = if !full {
            None
        } else if slots.lm_head.is_some() {
            slots.lm_head.as_deref_mut()
        } else {
            slots.embed.as_deref_mut()
        };
        let loss_sum = cross_entropy_cpu(
            final_h,
            v.output(),
            c.logits_scaling as f32,
            &targets,
            opts.loss_chunk,
            Some(LossGrads {
                scale: (1.0 / normalizer) as f32,
                dhidden: &mut scratch.dh,
                doutput,
            }),
            loss,
        );
        let last = &inputs[c.num_layers];
        rms_norm_cpu_backward(
            &scratch.dh,
            last,
            final_rstd,
            &v.norm,
            &mut scratch.grad,
            false,
            slots.norm.as_deref_mut(),
        );

        // Layers in reverse.
        let pass = Pass {
            config: c,
            n: batch.rows * batch.seq_len,
            attn,
            cos,
            sin,
            seg: &batch.segment_ids,
            reach,
        };
        for l in (0..c.num_layers).rev() {
            let p = v.layer(l, dropout);
            let acts = if keep_all {
                &mut layers[l]
            } else {
                let (x, out) = pair(inputs, l, l + 1);
                pass.layer_forward(&p, x, &mut layers[0], scratch, out);
                &mut layers[0]
            };
            let mut grad = std::mem::take(&mut scratch.grad);
            pass.layer_backward(
                &p,
                &inputs[l],
                acts,
                scratch,
                &mut grad,
                &mut slots.layers[l],
            );
            scratch.grad = grad;
        }

        // The embedding lookup: its output's gradient times Granite's multiplier.
        let mult = c.embedding_multiplier as f32;
        if let Some(de) = slots.embed.as_deref_mut() {
            for (g, &id) in scratch.grad.chunks_exact(h).zip(&batch.input_ids) {
                let row = &mut de[id as usize * h..(id as usize + 1) * h];
                for (d, g) in row.iter_mut().zip(g) {
                    *d = g.mul_add(mult, *d);
                }
            }
        }
        let input_grad = want_input_grad.then(|| scratch.grad.iter().map(|g| g * mult).collect());
        Ok((loss_sum, input_grad))
    }
}

/// `v[i]` to read and `v[j]` to write (`i != j`).
fn pair(v: &mut [Vec<f32>], i: usize, j: usize) -> (&[f32], &mut [f32]) {
    assert_ne!(i, j, "a layer's input and output are different buffers");
    if i < j {
        let (a, b) = v.split_at_mut(j);
        (&a[i], &mut b[0])
    } else {
        let (a, b) = v.split_at_mut(i);
        (&b[0], &mut a[j])
    }
}
