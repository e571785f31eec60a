//! AdamW with decoupled weight decay and bias correction, as `torch.optim.AdamW` computes it, with
//! f32 moments whatever the parameters' dtype; clipping by global norm as
//! `torch.nn.utils.clip_grad_norm_` does.

use std::ops::Range;

use candle_core::{DType, Result, Tensor};
use pctrain_model::cpu::view::with_mut;
use pctrain_model::layers::loss::LossSum;
use pctrain_model::Gradients;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// AdamW hyper-parameters (the learning rate comes from the schedule at each step).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// The optimizer's state: the step count and the two moments of every parameter, in f32.
#[derive(Debug, Clone)]
pub struct AdamW {
    pub config: AdamWConfig,
    /// Steps taken so far.
    pub step: u64,
    /// First moments, one per parameter, f32.
    pub m: Vec<Tensor>,
    /// Second moments, one per parameter, f32.
    pub v: Vec<Tensor>,
    /// f32 master copies of parameters stored in a narrower type (bf16 on a GPU), which the
    /// updates accumulate in; `None` for f32 parameters.
    pub master: Vec<Option<Tensor>>,
    /// With ZeRO stage 1 or 2, the elements this rank keeps moments of and updates; the moments
    /// and master copies are then those elements' alone (1-D).
    pub shard: Option<Shard>,
}

/// Elements `r` of `t`, flattened, in storage of their own (an empty span on the CPU: a GPU
/// allocation of nothing fails).
pub fn span(t: &Tensor, r: &Range<usize>) -> Result<Tensor> {
    if r.is_empty() {
        return empty_span();
    }
    t.flatten_all()?
        .narrow(0, r.start, r.len())?
        .force_contiguous()
}

/// The state of an empty span: no elements, on the CPU.
pub fn empty_span() -> Result<Tensor> {
    Tensor::zeros(0, DType::F32, &candle_core::Device::Cpu)
}

/// A rank's share of the optimizer's work (ZeRO 1 and 2): the parameters' elements laid end to
/// end in their order, split into one contiguous span per rank, of sizes differing by one at most.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// Per parameter, the range of its elements in this rank's span (possibly empty).
    pub ranges: Vec<Range<usize>>,
    /// Each rank's element count.
    pub counts: Vec<usize>,
    /// Whether the gradients are sharded too (ZeRO stage 2): summed by a reduce-scatter that
    /// leaves each rank the sum of its span alone, which is all its update reads.
    pub gradients: bool,
}

impl Shard {
    /// Rank `rank`'s share among `ranks` of parameters of `sizes` elements.
    pub fn of(sizes: &[usize], rank: usize, ranks: usize) -> Shard {
        let total: usize = sizes.iter().sum();
        let bound = |r: usize| (total as u128 * r as u128 / ranks as u128) as usize;
        let (lo, hi) = (bound(rank), bound(rank + 1));
        let mut at = 0;
        let ranges = sizes
            .iter()
            .map(|&n| {
                let (start, end) = (at, at + n);
                at = end;
                lo.clamp(start, end) - start..hi.clamp(start, end) - start
            })
            .collect();
        Shard {
            ranges,
            counts: (0..ranks).map(|r| bound(r + 1) - bound(r)).collect(),
            gradients: false,
        }
    }
}

impl AdamW {
    /// Zero moments shaped as `params`.
    pub fn new(config: AdamWConfig, params: &[&Tensor]) -> Result<Self> {
        let zeros = |p: &&Tensor| Tensor::zeros(p.shape(), DType::F32, p.device());
        Ok(AdamW {
            config,
            step: 0,
            m: params.iter().map(zeros).collect::<Result<_>>()?,
            v: params.iter().map(zeros).collect::<Result<_>>()?,
            master: params
                .iter()
                .map(|p| {
                    (p.dtype() != DType::F32)
                        .then(|| p.to_dtype(DType::F32))
                        .transpose()
                })
                .collect::<Result<_>>()?,
            shard: None,
        })
    }

    /// Zero moments, and f32 master copies where `params` are narrower, of `shard`'s elements
    /// of `params` alone (ZeRO 1 and 2): the whole state is never held.
    pub fn new_sharded(config: AdamWConfig, params: &[&Tensor], shard: Shard) -> Result<Self> {
        let zeros = |p: &&Tensor, r: &Range<usize>| match r.is_empty() {
            true => empty_span(),
            false => Tensor::zeros(r.len(), DType::F32, p.device()),
        };
        let ranges = &shard.ranges;
        Ok(AdamW {
            config,
            step: 0,
            m: params
                .iter()
                .zip(ranges)
                .map(|(p, r)| zeros(p, r))
                .collect::<Result<_>>()?,
            v: params
                .iter()
                .zip(ranges)
                .map(|(p, r)| zeros(p, r))
                .collect::<Result<_>>()?,
            master: params
                .iter()
                .zip(ranges)
                .map(|(p, r)| {
                    (p.dtype() != DType::F32)
                        .then(|| span(p, r)?.to_dtype(DType::F32))
                        .transpose()
                })
                .collect::<Result<_>>()?,
            shard: Some(shard),
        })
    }

    /// Keeps the moments and master copies of `shard`'s elements only (ZeRO 1 and 2), dropping
    /// the rest, each a 1-D span of its parameter's elements in storage of its own.
    pub fn keep_shard(&mut self, shard: Shard) -> Result<()> {
        for (i, r) in shard.ranges.iter().enumerate() {
            self.m[i] = span(&self.m[i], r)?;
            self.v[i] = span(&self.v[i], r)?;
            if let Some(master) = &mut self.master[i] {
                *master = span(master, r)?;
            }
        }
        self.shard = Some(shard);
        Ok(())
    }

    /// Bytes of the moments and master copies this process holds (their storage's, whole).
    pub fn state_bytes(&self) -> usize {
        let bytes = pctrain_model::memory::stored_bytes;
        let moments: usize = self.m.iter().chain(&self.v).map(bytes).sum();
        moments + self.master.iter().flatten().map(bytes).sum::<usize>()
    }

    /// One update at learning rate `lr`, in place on the parameters (and their master copies)
    /// and moments: `p <- p (1 - lr wd)`, `m <- b1 m + (1 - b1) g`, `v <- b2 v + (1 - b2) g^2`,
    /// `p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`. A [`Clip::Device`]
    /// scales the gradients inside the kernels, which change nothing when it says the step is
    /// not to be applied (the caller then takes the step back with [`AdamW::undo_step`]).
    pub fn update(
        &mut self,
        params: &[&Tensor],
        grads: &Gradients,
        lr: f64,
        clip: &Clip,
    ) -> Result<()> {
        assert_eq!(
            params.len(),
            self.m.len(),
            "the optimizer was built for these parameters"
        );
        if clip.refused() {
            candle_core::bail!("AdamW: a step whose loss or gradient is not finite is not applied");
        }
        self.step += 1;
        let c = self.config;
        // Past 2^31 steps beta^t is 0 in f64 already: clamping keeps it so rather than wrapping.
        let t = self.step.min(i32::MAX as u64) as i32;
        let step = Step {
            wd_factor: (1.0 - lr * c.weight_decay) as f32,
            beta1: c.beta1 as f32,
            beta2: c.beta2 as f32,
            step_size: (lr / (1.0 - c.beta1.powi(t))) as f32,
            bc2_sqrt: (1.0 - c.beta2.powi(t)).sqrt() as f32,
            eps: c.eps as f32,
        };
        if grads.spans().is_some() && self.shard.is_none() {
            candle_core::bail!("AdamW: gradients kept by span need an optimizer of that shard");
        }
        if let Some(host) = grads.host() {
            assert_eq!(host.len(), params.len(), "one gradient per parameter");
            for (i, (p, g)) in params.iter().zip(host).enumerate() {
                if self.master[i].is_some() {
                    candle_core::bail!("the CPU trains f32 parameters, which need no master copy");
                }
                let r = match &self.shard {
                    Some(s) => s.ranges[i].clone(),
                    None => 0..g.len(),
                };
                // Gradients kept by span hold the span's elements alone.
                let g = if grads.spans().is_some() {
                    &g[..]
                } else {
                    &g[r.clone()]
                };
                with_mut(p, |p| {
                    with_mut(&self.m[i], |m| {
                        with_mut(&self.v[i], |v| step.apply(&mut p[r], g, m, v))
                    })
                })???;
            }
            return Ok(());
        }
        let device = grads
            .device()
            .expect("gradients are on the host or on a device");
        assert_eq!(device.len(), params.len(), "one gradient per parameter");
        let clip = match clip {
            Clip::Device(t) => Some(t),
            Clip::Host { .. } => None,
        };
        for (i, (p, g)) in params.iter().zip(device).enumerate() {
            match self.shard.as_ref().map(|s| s.ranges[i].clone()) {
                None => self.device_update(i, p, g, step, clip)?,
                Some(r) if r.is_empty() => {}
                // The span's elements of the parameter and its gradient, as views.
                Some(r) => {
                    if !p.is_contiguous() {
                        candle_core::bail!("AdamW: a sharded update needs contiguous parameters");
                    }
                    let view = |t: &Tensor| t.flatten_all()?.narrow(0, r.start, r.len());
                    self.device_update(i, &view(p)?, &view(g)?, step, clip)?
                }
            }
        }
        Ok(())
    }

    /// Takes back the step count of an update whose kernels were told not to apply it.
    pub fn undo_step(&mut self) {
        self.step = self.step.saturating_sub(1);
    }

    /// One parameter's update on a GPU: the fused kernel, in place.
    #[cfg(feature = "cuda")]
    fn device_update(
        &mut self,
        i: usize,
        p: &Tensor,
        g: &Tensor,
        s: Step,
        clip: Option<&Tensor>,
    ) -> Result<()> {
        let step = pctrain_model::cuda::AdamWStep {
            wd_factor: f64::from(s.wd_factor),
            beta1: f64::from(s.beta1),
            beta2: f64::from(s.beta2),
            step_size: f64::from(s.step_size),
            bc2_sqrt: f64::from(s.bc2_sqrt),
            eps: f64::from(s.eps),
        };
        let master = self.master[i].as_ref();
        pctrain_model::cuda::adamw(p, master, g, &self.m[i], &self.v[i], step, clip)
    }

    #[cfg(not(feature = "cuda"))]
    fn device_update(
        &mut self,
        _: usize,
        p: &Tensor,
        _: &Tensor,
        _: Step,
        _: Option<&Tensor>,
    ) -> Result<()> {
        candle_core::bail!(
            "AdamW: a {:?} parameter on {:?} has no kernel in this build",
            p.dtype(),
            p.device().location()
        )
    }
}

/// The scalars of one update.
#[derive(Debug, Clone, Copy)]
struct Step {
    wd_factor: f32,
    beta1: f32,
    beta2: f32,
    step_size: f32,
    bc2_sqrt: f32,
    eps: f32,
}

impl Step {
    /// The update of f32 parameters `p` with gradients `g` and moments `m`, `v`, in chunks of a
    /// fixed size in parallel (each element's update depends on that element alone).
    fn apply(self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        const CHUNK: usize = 1 << 14;
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| adamw_elems(self, p, g, m, v));
    }
}

pctrain_model::simd_fn! {
    /// `cuda::adamw`'s CPU twin, element by element.
    fn adamw_elems(s: Step, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        let (omb1, omb2) = (1.0 - s.beta1, 1.0 - s.beta2);
        for (((p, g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            let mi = *m * s.beta1 + g * omb1;
            let vi = *v * s.beta2 + g * g * omb2;
            *m = mi;
            *v = vi;
            *p = *p * s.wd_factor - mi / (vi.sqrt() / s.bc2_sqrt + s.eps) * s.step_size;
        }
    }
}

/// What clipping found before the update.
#[derive(Debug, Clone)]
pub enum Clip {
    /// On the host: the global norm before clipping, and whether the step may be applied (the
    /// loss and the norm are finite); the gradients are scaled already.
    Host { norm: f64, ok: bool },
    /// On a GPU: `[norm, coef, ok]` f32 on the device, which the AdamW kernels apply (scaling by
    /// `coef`, changing nothing when `ok` is 0) and [`Clip::read`] reads back with the loss. The
    /// gradients themselves stay unscaled.
    Device(Tensor),
}

impl Clip {
    /// Whether the step is known, already, not to be applied.
    pub fn refused(&self) -> bool {
        matches!(self, Clip::Host { ok: false, .. })
    }

    /// The norm before clipping, whether the step was applied, and the loss sum: on a GPU the
    /// one read back of a step.
    pub fn read(&self, loss: &LossSum) -> Result<(f64, bool, f64)> {
        match self {
            Clip::Host { norm, ok } => Ok((*norm, *ok, loss.sum()?)),
            Clip::Device(t) => {
                let sum = loss.on(t.device())?.reshape(1)?;
                let v = Tensor::cat(&[t, &sum], 0)?.to_vec1::<f32>()?;
                Ok((f64::from(v[0]), v[2] != 0.0, f64::from(v[3])))
            }
        }
    }
}

/// Clips the gradients to a global L2 norm of `max_norm` (no change when they are within it, or
/// when `max_norm` is 0), as `torch.nn.utils.clip_grad_norm_` does, and checks that the step may
/// be applied (`loss`, the step's summed loss, and the norm finite). On a GPU this is one device
/// reduction whose scale the AdamW kernels apply, so nothing is read back before the update.
pub fn clip_grad_norm(grads: &mut Gradients, max_norm: f64, loss: &LossSum) -> Result<Clip> {
    #[cfg(feature = "cuda")]
    if let Some(tensors) = grads.device() {
        if tensors.first().is_some_and(pctrain_model::cuda::runs_on) {
            let loss = loss.on(tensors[0].device())?;
            return Ok(Clip::Device(pctrain_model::cuda::grad_norm_clip(
                tensors, max_norm, &loss,
            )?));
        }
    }
    let norm = grads.norm()?;
    let ok = norm.is_finite() && loss.sum()?.is_finite();
    if let Some(coef) = clip_coefficient(norm, ok, max_norm) {
        grads.scale(coef)?;
    }
    Ok(Clip::Host { norm, ok })
}

/// [`clip_grad_norm`] of gradients sharded across the ranks of `world` (ZeRO stage 2), each
/// rank holding the summed gradient of `shard`'s span alone: the norm is the square root of every
/// rank's sum of squares over its span, summed, and each rank scales its span.
pub fn clip_sharded_grad_norm(
    grads: &mut Gradients,
    max_norm: f64,
    loss: &LossSum,
    shard: &Shard,
    world: &pctrain_dist::World,
) -> Result<Clip> {
    if grads.spans() != Some(&shard.ranges[..]) {
        candle_core::bail!("sharded clipping needs the gradients of this rank's span alone");
    }
    let mut squares = [grads.sum_of_squares()?];
    world.sum_f64(&mut squares);
    let norm = squares[0].sqrt();
    let ok = norm.is_finite() && loss.sum()?.is_finite();
    if let Some(coef) = clip_coefficient(norm, ok, max_norm) {
        grads.scale(coef)?;
    }
    Ok(Clip::Host { norm, ok })
}

/// The factor that brings gradients of global norm `norm` to `max_norm` (torch's, with its
/// 1e-6), when they are to be applied (`ok`), clipping is on, and they are past it.
fn clip_coefficient(norm: f64, ok: bool, max_norm: f64) -> Option<f64> {
    let coef = max_norm / (norm + 1e-6);
    (ok && max_norm > 0.0 && coef < 1.0).then_some(coef)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn scalar_tensor(v: &[f32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    /// The update written out in f64 for one scalar, step by step, as torch's reference
    /// implementation computes it.
    fn reference(mut p: f64, grads: &[f64], lr: f64, c: AdamWConfig) -> f64 {
        let (mut m, mut v) = (0.0, 0.0);
        for (t, g) in grads.iter().enumerate() {
            let t = t as i32 + 1;
            p *= 1.0 - lr * c.weight_decay;
            m = c.beta1 * m + (1.0 - c.beta1) * g;
            v = c.beta2 * v + (1.0 - c.beta2) * g * g;
            let denom = v.sqrt() / (1.0 - c.beta2.powi(t)).sqrt() + c.eps;
            p -= lr / (1.0 - c.beta1.powi(t)) * m / denom;
        }
        p
    }

    #[test]
    fn adamw_matches_the_written_out_update() {
        let c = AdamWConfig {
            weight_decay: 0.1,
            ..AdamWConfig::default()
        };
        let grads = [0.5, -0.25, 1.5, 0.01];
        let p = scalar_tensor(&[2.0, -1.0]);
        let mut opt = AdamW::new(c, &[&p]).unwrap();
        for g in grads {
            let grad =
                Gradients::from_tensors(vec![scalar_tensor(&[g as f32, -g as f32])]).unwrap();
            opt.update(
                &[&p],
                &grad,
                1e-2,
                &Clip::Host {
                    norm: 0.0,
                    ok: true,
                },
            )
            .unwrap();
        }
        let got: Vec<f32> = p.to_vec1().unwrap();
        let neg: Vec<f64> = grads.iter().map(|g| -g).collect();
        let want = [
            reference(2.0, &grads, 1e-2, c),
            reference(-1.0, &neg, 1e-2, c),
        ];
        for (g, w) in got.iter().zip(want) {
            assert!((f64::from(*g) - w).abs() < 1e-6, "{g} vs {w}");
        }
        assert_eq!(opt.step, 4);
    }

    #[test]
    fn a_step_count_past_two_to_the_31_updates_as_a_late_step_does() {
        let update = |step: u64| {
            let p = scalar_tensor(&[1.0]);
            let mut opt = AdamW::new(AdamWConfig::default(), &[&p]).unwrap();
            opt.step = step;
            let grad = Gradients::from_tensors(vec![scalar_tensor(&[0.5])]).unwrap();
            let clip = Clip::Host {
                norm: 0.0,
                ok: true,
            };
            opt.update(&[&p], &grad, 1e-2, &clip).unwrap();
            p.to_vec1::<f32>().unwrap()[0]
        };
        let late = update(1 << 20);
        assert!(late.is_finite() && late < 1.0, "{late}");
        assert_eq!(update(i32::MAX as u64), late);
        assert_eq!(update(u64::MAX - 1), late);
    }

    #[test]
    fn bf16_parameters_get_f32_moments_and_an_f32_master_copy() {
        let p = scalar_tensor(&[1.0, 2.0]).to_dtype(DType::BF16).unwrap();
        let opt = AdamW::new(AdamWConfig::default(), &[&p]).unwrap();
        assert_eq!(opt.m[0].dtype(), DType::F32);
        assert_eq!(opt.v[0].dtype(), DType::F32);
        let master = opt.master[0].as_ref().unwrap();
        assert_eq!(master.dtype(), DType::F32);
        assert_eq!(master.to_vec1::<f32>().unwrap(), vec![1.0, 2.0]);
    }

    fn host(g: &Gradients) -> Vec<Vec<f32>> {
        g.host().unwrap().to_vec()
    }

    #[test]
    fn clipping_scales_to_the_global_norm() {
        let loss = LossSum::host(2.0, 1);
        let norm_of = |c: Clip| match c {
            Clip::Host { norm, ok } => {
                assert!(ok);
                norm
            }
            Clip::Device(_) => panic!("host gradients clip on the host"),
        };
        let t = |v: &[f32]| Gradients::from_tensors(vec![scalar_tensor(v)]).unwrap();
        let mut grads =
            Gradients::from_tensors(vec![scalar_tensor(&[3.0]), scalar_tensor(&[4.0])]).unwrap();
        let norm = norm_of(clip_grad_norm(&mut grads, 1.0, &loss).unwrap());
        assert!((norm - 5.0).abs() < 1e-6);
        let g = host(&grads);
        assert!((g[0][0] - 0.6).abs() < 1e-5 && (g[1][0] - 0.8).abs() < 1e-5);
        let mut small = t(&[0.3]);
        clip_grad_norm(&mut small, 1.0, &loss).unwrap();
        assert_eq!(host(&small), vec![vec![0.3]]);
        let mut off = t(&[30.0]);
        assert!((norm_of(clip_grad_norm(&mut off, 0.0, &loss).unwrap()) - 30.0).abs() < 1e-4);
        assert_eq!(host(&off), vec![vec![30.0]], "0 turns clipping off");
    }

    /// A non-finite loss or norm refuses the step and leaves the gradients as they were.
    #[test]
    fn a_non_finite_loss_or_norm_refuses_the_step() {
        let mut grads = Gradients::from_tensors(vec![scalar_tensor(&[3.0, 4.0])]).unwrap();
        let clip = clip_grad_norm(&mut grads, 1.0, &LossSum::host(f64::NAN, 1)).unwrap();
        assert!(clip.refused());
        assert_eq!(host(&grads), vec![vec![3.0, 4.0]]);
        let mut inf = Gradients::from_tensors(vec![scalar_tensor(&[f32::INFINITY])]).unwrap();
        let clip = clip_grad_norm(&mut inf, 1.0, &LossSum::host(1.0, 1)).unwrap();
        assert!(clip.refused());
        let (norm, ok, loss) = clip.read(&LossSum::host(1.0, 1)).unwrap();
        assert!(!ok && norm.is_infinite() && loss == 1.0);
    }
}
