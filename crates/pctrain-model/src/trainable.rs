//! What trains, in one fixed order: LoRA `A`, `B` per layer and target (PEFT's names), or every
//! weight of the model (transformers' names). A step's gradients of those tensors are
//! [`Gradients`], added to micro-batch after micro-batch in place.

use std::collections::HashMap;
use std::ops::Range;

use candle_core::{DType, Result, Tensor};
use rayon::prelude::*;

use crate::backward::{Grads, TrainMode};
use crate::lora::Target;
use crate::model::Model;
use crate::params::{trainable_params, Param, Part, Placed};
use crate::pass::PartHooks;

impl Model {
    /// The parameters that train in `mode`, in the one order ([`trainable_params`]).
    pub fn trainable_params(&self, mode: TrainMode) -> Vec<Param> {
        let adapted = |l: usize, t: Target| {
            self.lora
                .as_ref()
                .and_then(|a| a.layers.get(l))
                .is_some_and(|layer| layer[t as usize].is_some())
        };
        // The layers the model holds (its config's count once loaded).
        trainable_params(
            self.weights.layers.len(),
            mode,
            self.weights.lm_head.is_some(),
            adapted,
        )
    }

    /// The tensor of `p`; `None` when the model has no such tensor (an output projection tied to
    /// the embeddings, an adapter it lacks, a layer past its last).
    pub fn param(&self, p: Param) -> Option<&Tensor> {
        let w = &self.weights;
        let adapter = |l: usize, t: Target| {
            self.lora
                .as_ref()
                .and_then(|a| a.layers.get(l)?[t as usize].as_ref())
        };
        match p {
            Param::Embed => Some(&w.embed_tokens),
            Param::Layer(l, lw) => w.layers.get(l).map(|layer| layer.get(lw)),
            Param::Norm => Some(&w.norm),
            Param::LmHead => w.lm_head.as_ref(),
            Param::LoraA(l, t) => adapter(l, t).map(|a| &a.a),
            Param::LoraB(l, t) => adapter(l, t).map(|a| &a.b),
        }
    }

    fn param_mut(&mut self, p: Param) -> &mut Tensor {
        let w = &mut self.weights;
        match p {
            Param::Embed => &mut w.embed_tokens,
            Param::Layer(l, lw) => w.layers[l].get_mut(lw),
            Param::Norm => &mut w.norm,
            Param::LmHead => w.lm_head.as_mut().expect("an untied output projection"),
            Param::LoraA(l, t) | Param::LoraB(l, t) => {
                let lora = self
                    .lora
                    .as_mut()
                    .and_then(|a| a.layers[l][t as usize].as_mut())
                    .expect("an adapter of the table");
                if matches!(p, Param::LoraA(..)) {
                    &mut lora.a
                } else {
                    &mut lora.b
                }
            }
        }
    }

    /// The tensors that train in `mode`, with their names, in the one order.
    pub fn trainable(&self, mode: TrainMode) -> Vec<(String, Tensor)> {
        self.trainable_params(mode)
            .into_iter()
            .map(|p| {
                let t = self.param(p).expect("the table lists what the model holds");
                (p.name(), t.clone())
            })
            .collect()
    }

    /// Puts new tensors in place of [`Model::trainable`]'s, in its order.
    pub fn set_trainable(&mut self, mode: TrainMode, values: impl IntoIterator<Item = Tensor>) {
        let mut values = values.into_iter();
        for p in self.trainable_params(mode) {
            *self.param_mut(p) = values.next().expect("one value per trainable tensor");
        }
    }

    /// Whether training passes run on the CPU kernels over reused buffers: every weight f32 on
    /// the CPU. Elsewhere (a GPU, or a narrower dtype) they run on tensors.
    pub fn on_cpu_kernels(&self) -> bool {
        let f32_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
        f32_cpu(&self.weights.embed_tokens)
            && self
                .weights
                .layers
                .iter()
                .all(|l| l.named().iter().all(|(_, t)| f32_cpu(t)))
            && self.weights.lm_head.as_ref().is_none_or(f32_cpu)
            && self.lora.as_ref().is_none_or(|a| {
                a.layers
                    .iter()
                    .flatten()
                    .flatten()
                    .all(|l| f32_cpu(&l.a) && f32_cpu(&l.b))
            })
    }
}

/// The gradients of a step, one per [`Model::trainable`] tensor in its order, summed over the
/// step's micro-batches: f32 buffers the CPU kernels write in place, or tensors on a GPU.
#[derive(Debug)]
pub struct Gradients {
    store: Store,
}

#[derive(Debug)]
enum Store {
    Host {
        data: Vec<Vec<f32>>,
        shapes: Vec<Vec<usize>>,
        /// With spans, each buffer holds only its gradient's elements in its span (a rank's
        /// share of sharded gradients) between passes; a pass makes it whole part by part and
        /// hands it out.
        spans: Option<Vec<Range<usize>>>,
    },
    Device(Vec<Tensor>),
}

impl Gradients {
    /// Zero gradients for `mode`'s tensors of `model`.
    pub fn zeros(model: &Model, mode: TrainMode) -> Result<Self> {
        let params = model.trainable(mode);
        let store = if model.on_cpu_kernels() {
            Store::Host {
                data: params
                    .iter()
                    .map(|(_, t)| vec![0f32; t.elem_count()])
                    .collect(),
                shapes: params.iter().map(|(_, t)| t.dims().to_vec()).collect(),
                spans: None,
            }
        } else {
            Store::Device(
                params
                    .iter()
                    .map(|(_, t)| Tensor::zeros(t.shape(), t.dtype(), t.device()))
                    .collect::<Result<_>>()?,
            )
        };
        Ok(Gradients { store })
    }

    /// Gradients with these values: kept in memory when every tensor is f32 on the CPU, else as
    /// tensors.
    pub fn from_tensors(tensors: Vec<Tensor>) -> Result<Self> {
        let host = tensors
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::F32);
        let store = if host {
            Store::Host {
                spans: None,
                shapes: tensors.iter().map(|t| t.dims().to_vec()).collect(),
                data: tensors
                    .iter()
                    .map(|t| t.flatten_all()?.to_vec1::<f32>())
                    .collect::<Result<_>>()?,
            }
        } else {
            Store::Device(tensors)
        };
        Ok(Gradients { store })
    }

    /// Zero gradients for `mode`'s tensors of `model` (on the CPU kernels) of which this rank
    /// keeps `spans` alone (one range of elements per tensor, in [`Model::trainable`]'s order):
    /// sharded gradients, which passes hand out part by part
    /// ([`Model::accumulate_gradients_handing_out`]).
    pub fn zeros_in_spans(
        model: &Model,
        mode: TrainMode,
        spans: Vec<Range<usize>>,
    ) -> Result<Self> {
        if !model.on_cpu_kernels() {
            candle_core::bail!("gradients kept by span are built for f32 weights on the CPU");
        }
        let params = model.trainable(mode);
        let fits = |(r, (_, t)): (&Range<usize>, &(String, Tensor))| r.end <= t.elem_count();
        if spans.len() != params.len() || !spans.iter().zip(&params).all(fits) {
            candle_core::bail!(
                "{} spans for {} trainable tensors: one span within each is needed",
                spans.len(),
                params.len()
            );
        }
        Ok(Gradients {
            store: Store::Host {
                data: spans.iter().map(|r| vec![0f32; r.len()]).collect(),
                shapes: params.iter().map(|(_, t)| t.dims().to_vec()).collect(),
                spans: Some(spans),
            },
        })
    }

    /// The span of each gradient this rank keeps, when it keeps spans alone.
    pub fn spans(&self) -> Option<&[Range<usize>]> {
        match &self.store {
            Store::Host { spans, .. } => spans.as_deref(),
            Store::Device(_) => None,
        }
    }

    /// Bytes of the buffers kept from step to step (each rank's spans alone, when it keeps
    /// spans).
    pub fn held_bytes(&self) -> usize {
        match &self.store {
            Store::Host { data, .. } => data.iter().map(|g| g.capacity() * 4).sum(),
            Store::Device(tensors) => tensors.iter().map(crate::memory::stored_bytes).sum(),
        }
    }

    /// Sets every gradient to zero, for the next step.
    pub fn zero(&mut self) -> Result<()> {
        match &mut self.store {
            Store::Host { data, .. } => data.par_iter_mut().for_each(|g| g.fill(0.0)),
            Store::Device(tensors) => {
                for t in tensors.iter_mut() {
                    *t = t.zeros_like()?;
                }
            }
        }
        Ok(())
    }

    /// The CPU kernels' buffers, when the gradients are kept in memory, with the hooks a pass
    /// over them needs: to make spans whole, and to hand parts out (`hand_out`).
    pub(crate) fn host_mut<'a, 'g>(
        &'g mut self,
        params: &[Param],
        hand_out: Option<HandOut<'a, 'g>>,
    ) -> Option<(&'g mut [Vec<f32>], HostHooks<'a, 'g>)> {
        match &mut self.store {
            Store::Host {
                data,
                shapes,
                spans,
            } => {
                let lens = shapes.iter().map(|s| s.iter().product::<usize>());
                let hooks = HostHooks {
                    index: params.iter().enumerate().map(|(i, &p)| (p, i)).collect(),
                    starts: offsets(lens.clone()),
                    lens: lens.collect(),
                    spans: spans.as_deref(),
                    hand_out,
                };
                Some((data, hooks))
            }
            Store::Device(_) => None,
        }
    }

    /// Runs `f` over every gradient's values as f32, in [`Model::trainable`]'s order: the
    /// buffers themselves in memory; on a GPU, host copies written back afterwards.
    pub fn with_host_values(&mut self, f: impl FnOnce(&mut [&mut [f32]])) -> Result<()> {
        if self.spans().is_some() {
            candle_core::bail!("gradients kept by span are not whole gradients");
        }
        match &mut self.store {
            Store::Host { data, .. } => {
                let mut bufs: Vec<&mut [f32]> = data.iter_mut().map(Vec::as_mut_slice).collect();
                f(&mut bufs);
            }
            Store::Device(tensors) => {
                let mut copies = tensors
                    .iter()
                    .map(|t| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>())
                    .collect::<Result<Vec<_>>>()?;
                let mut bufs: Vec<&mut [f32]> = copies.iter_mut().map(Vec::as_mut_slice).collect();
                f(&mut bufs);
                for (t, v) in tensors.iter_mut().zip(copies) {
                    *t = Tensor::from_vec(v, t.shape(), t.device())?.to_dtype(t.dtype())?;
                }
            }
        }
        Ok(())
    }

    /// The gradients as f32 slices, when they are kept in memory (the CPU).
    pub fn host(&self) -> Option<&[Vec<f32>]> {
        match &self.store {
            Store::Host { data, .. } => Some(data),
            Store::Device(_) => None,
        }
    }

    /// The gradients as tensors, when they are kept on a GPU.
    pub fn device(&self) -> Option<&[Tensor]> {
        match &self.store {
            Store::Device(t) => Some(t),
            Store::Host { .. } => None,
        }
    }

    /// Adds one tensor pass's gradients, in [`Model::trainable`]'s order (the CPU kernels add
    /// theirs in place instead).
    pub(crate) fn add(&mut self, grads: Vec<Tensor>) -> Result<()> {
        let Store::Device(acc) = &mut self.store else {
            candle_core::bail!("gradients kept in memory take the CPU kernels' passes");
        };
        for (a, g) in acc.iter_mut().zip(grads) {
            *a = (&*a + g)?;
        }
        Ok(())
    }

    /// The L2 norm of the elements held (a rank's spans alone, when it keeps spans): each
    /// tensor's sum of squares in a fixed order, added in f64.
    pub fn norm(&self) -> Result<f64> {
        Ok(self.sum_of_squares()?.sqrt())
    }

    /// The squares of the elements held (a rank's spans alone, when it keeps spans) summed in
    /// f64, each tensor's in a fixed order.
    pub fn sum_of_squares(&self) -> Result<f64> {
        Ok(match &self.store {
            Store::Host { data, .. } => data.iter().map(|g| sum_of_squares(g)).sum::<f64>(),
            Store::Device(tensors) => {
                let mut total = 0f64;
                for g in tensors {
                    total += f64::from(
                        g.to_dtype(DType::F32)?
                            .sqr()?
                            .sum_all()?
                            .to_scalar::<f32>()?,
                    );
                }
                total
            }
        })
    }

    /// Multiplies every gradient by `coef`.
    pub fn scale(&mut self, coef: f64) -> Result<()> {
        match &mut self.store {
            Store::Host { data, .. } => {
                let c = coef as f32;
                data.par_iter_mut()
                    .for_each(|g| g.iter_mut().for_each(|v| *v *= c));
            }
            Store::Device(tensors) => {
                for t in tensors.iter_mut() {
                    *t = (&*t * coef)?;
                }
            }
        }
        Ok(())
    }

    /// The gradients as tensors on their devices (copies of the CPU buffers).
    pub fn to_tensors(&self) -> Result<Vec<Tensor>> {
        match &self.store {
            Store::Device(t) => Ok(t.clone()),
            Store::Host { spans: Some(_), .. } => {
                candle_core::bail!("gradients kept by span are not whole tensors")
            }
            Store::Host { data, shapes, .. } => data
                .iter()
                .zip(shapes)
                .map(|(d, s)| Tensor::from_slice(d, s.as_slice(), &candle_core::Device::Cpu))
                .collect(),
        }
    }
}

/// Receives gradient buffers a pass has finished with, by part: each whole buffer with where it
/// starts among every trainable tensor's laid end to end (in [`Model::trainable`]'s order).
pub type HandOut<'a, 'g> = &'a mut dyn FnMut(Part, Vec<(usize, &'g mut Vec<f32>)>);

/// What a pass over gradients kept in memory does part by part: makes each part's buffers whole
/// before it adds into them (when they hold spans), and hands them out once it is done.
pub(crate) struct HostHooks<'a, 'g> {
    /// Each trainable tensor's place in the table's order.
    index: HashMap<Param, usize>,
    /// Where each starts among them all laid end to end, and its elements.
    starts: Vec<usize>,
    lens: Vec<usize>,
    spans: Option<&'a [Range<usize>]>,
    hand_out: Option<HandOut<'a, 'g>>,
}

impl<'g> PartHooks<&'g mut Vec<f32>> for HostHooks<'_, 'g> {
    fn starting(&mut self, part: Part, g: &mut Placed<&'g mut Vec<f32>>) -> crate::Result<()> {
        let Some(spans) = self.spans else {
            return Ok(());
        };
        for (p, buffer) in g.part_mut(part) {
            let i = self.index[&p];
            if buffer.len() != self.lens[i] {
                // This rank's span keeps its values; the rest starts at zero.
                let mut whole = vec![0f32; self.lens[i]];
                whole[spans[i].clone()].copy_from_slice(buffer);
                **buffer = whole;
            }
        }
        Ok(())
    }

    fn finished(&mut self, part: Part, g: &mut Placed<&'g mut Vec<f32>>) -> crate::Result<()> {
        if let Some(hand_out) = self.hand_out.as_deref_mut() {
            let pieces = g.take_part(part).into_iter();
            hand_out(
                part,
                pieces
                    .map(|(p, b)| (self.starts[self.index[&p]], b))
                    .collect(),
            );
        }
        Ok(())
    }
}

impl Model {
    /// Hands `grads`' buffers ([`Model::trainable`]'s for `mode`, kept in memory) to `hand_out`
    /// part by part in [`Part::order`] (whole, as a pass would), as they are, with nothing
    /// added: what a rank with no rows of a step gives to the sums a pass starts on another.
    pub fn hand_out_gradients<'g>(
        &self,
        mode: TrainMode,
        grads: &'g mut Gradients,
        hand_out: HandOut<'_, 'g>,
    ) -> crate::Result<()> {
        let params = self.trainable_params(mode);
        let Some((host, mut hooks)) = grads.host_mut(&params, Some(hand_out)) else {
            return Err(crate::ModelError::Input(
                "gradients handed out part by part are kept in memory".into(),
            ));
        };
        let mut slots = crate::params::place(self.config.num_layers, &params, host.iter_mut());
        for part in Part::order(self.config.num_layers) {
            hooks.starting(part, &mut slots)?;
            hooks.finished(part, &mut slots)?;
        }
        Ok(())
    }
}

/// Where each of `lens` starts when they are laid end to end.
fn offsets(lens: impl Iterator<Item = usize>) -> Vec<usize> {
    lens.scan(0, |at, n| {
        *at += n;
        Some(*at - n)
    })
    .collect()
}

/// `sum(g^2)` in f64, over chunks of a fixed size summed in order.
fn sum_of_squares(g: &[f32]) -> f64 {
    const CHUNK: usize = 1 << 14;
    let parts: Vec<f64> = g
        .par_chunks(CHUNK)
        .map(|c| f64::from(crate::cpu::simd::sum_of_squares(c)))
        .collect();
    parts.iter().sum()
}

impl Grads {
    /// The gradients of `params` ([`Model::trainable_params`]), in their order.
    pub fn into_trainable(self, params: &[Param]) -> Vec<Tensor> {
        params
            .iter()
            .map(|&p| {
                self.get(p)
                    .expect("a gradient per trainable tensor")
                    .clone()
            })
            .collect()
    }
}
