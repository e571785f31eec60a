//! What trains, in one fixed order: LoRA `A`, `B` per layer and target (PEFT's names), or every
//! weight of the model (transformers' names). A step's gradients of those tensors are
//! [`Gradients`], added to micro-batch after micro-batch in place.

use candle_core::{DType, Result, Tensor};
use rayon::prelude::*;

use crate::backward::{Grads, TrainMode};
use crate::lora::Target;
use crate::model::Model;
use crate::params::{trainable_params, Finished, Param, Placed};

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
    pub(crate) fn on_cpu_kernels(&self) -> bool {
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

    /// The CPU kernels' buffers, when the gradients are kept in memory.
    pub(crate) fn host_mut(&mut self) -> Option<&mut [Vec<f32>]> {
        match &mut self.store {
            Store::Host { data, .. } => Some(data),
            Store::Device(_) => None,
        }
    }

    /// Runs `f` over every gradient's values as f32, in [`Model::trainable`]'s order: the
    /// buffers themselves in memory; on a GPU, host copies written back afterwards.
    pub fn with_host_values(&mut self, f: impl FnOnce(&mut [&mut [f32]])) -> Result<()> {
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

    /// The global L2 norm: each tensor's sum of squares in a fixed order, added in f64.
    pub fn norm(&self) -> Result<f64> {
        let total: f64 = match &self.store {
            Store::Host { data, .. } => data.iter().map(|g| sum_of_squares(g)).sum(),
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
        };
        Ok(total.sqrt())
    }

    /// The squares of the elements in `ranges` (one per gradient, in order) summed in f64: a
    /// rank's part of the squared norm of gradients that are sharded across ranks. On the CPU.
    pub fn sum_of_squares_in(&self, ranges: &[std::ops::Range<usize>]) -> Result<f64> {
        let Store::Host { data, .. } = &self.store else {
            candle_core::bail!("sharded gradients are kept in memory, on the CPU");
        };
        Ok(data
            .iter()
            .zip(ranges)
            .map(|(g, r)| sum_of_squares(&g[r.clone()]))
            .sum())
    }

    /// Multiplies the elements in `ranges` (one per gradient, in order) by `coef`. On the CPU.
    pub fn scale_in(&mut self, coef: f64, ranges: &[std::ops::Range<usize>]) -> Result<()> {
        let Store::Host { data, .. } = &mut self.store else {
            candle_core::bail!("sharded gradients are kept in memory, on the CPU");
        };
        let c = coef as f32;
        data.par_iter_mut()
            .zip(ranges)
            .for_each(|(g, r)| g[r.clone()].iter_mut().for_each(|v| *v *= c));
        Ok(())
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
            Store::Host { data, shapes } => data
                .iter()
                .zip(shapes)
                .map(|(d, s)| Tensor::from_slice(d, s.as_slice(), &candle_core::Device::Cpu))
                .collect(),
        }
    }
}

/// Receives gradient buffers a pass has finished with, by part: each buffer with where it starts
/// among every trainable tensor's laid end to end (in [`Model::trainable`]'s order).
pub type HandOut<'a, 'g> = &'a mut dyn FnMut(Finished, Vec<(usize, &'g mut [f32])>);

/// Where each trainable tensor's gradient starts among them all laid end to end.
pub(crate) struct FlatStarts(std::collections::HashMap<Param, usize>);

impl FlatStarts {
    /// For `params` (the table's order) of `lens` elements each.
    pub fn of(params: &[Param], lens: impl IntoIterator<Item = usize>) -> Self {
        let mut at = 0;
        let starts = params.iter().zip(lens).map(|(&p, n)| {
            let start = at;
            at += n;
            (p, start)
        });
        FlatStarts(starts.collect())
    }

    /// `part`'s buffers taken out of `slots` and handed to `hand_out`, each with where it starts.
    pub fn hand_out<'g>(
        &self,
        part: Finished,
        slots: &mut Placed<&'g mut [f32]>,
        hand_out: HandOut<'_, 'g>,
    ) {
        let pieces = slots.take_part(part).into_iter();
        hand_out(part, pieces.map(|(p, g)| (self.0[&p], g)).collect());
    }
}

impl Model {
    /// Hands `grads`' buffers ([`Model::trainable`]'s for `mode`, kept in memory) to `hand_out`
    /// as they are, part by part in [`Finished::order`], as a pass would as it finished them:
    /// what a rank with no rows of a step gives to the sums a pass starts on another.
    pub fn hand_out_gradients<'g>(
        &self,
        mode: TrainMode,
        grads: &'g mut Gradients,
        hand_out: HandOut<'_, 'g>,
    ) -> Result<()> {
        let Some(host) = grads.host_mut() else {
            candle_core::bail!("gradients handed out part by part are kept in memory");
        };
        let params = self.trainable_params(mode);
        let starts = FlatStarts::of(&params, host.iter().map(Vec::len));
        let mut slots = crate::params::place(
            self.config.num_layers,
            &params,
            host.iter_mut().map(Vec::as_mut_slice),
        );
        for part in Finished::order(self.config.num_layers) {
            starts.hand_out(part, &mut slots, hand_out);
        }
        Ok(())
    }
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
