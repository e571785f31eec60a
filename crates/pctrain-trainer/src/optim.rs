//! AdamW with decoupled weight decay and bias correction, as `torch.optim.AdamW` computes it, with
//! f32 moments whatever the parameters' dtype; clipping by global norm as
//! `torch.nn.utils.clip_grad_norm_` does.

use candle_core::{DType, Result, Tensor};
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
        })
    }

    /// One update at learning rate `lr`; returns the new parameters (in their own dtype).
    /// `p <- p (1 - lr wd)`, `m <- b1 m + (1 - b1) g`, `v <- b2 v + (1 - b2) g^2`,
    /// `p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`.
    pub fn update(
        &mut self,
        params: &[&Tensor],
        grads: &[&Tensor],
        lr: f64,
    ) -> Result<Vec<Tensor>> {
        assert_eq!(params.len(), grads.len(), "one gradient per parameter");
        assert_eq!(
            params.len(),
            self.m.len(),
            "the optimizer was built for these parameters"
        );
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let step_size = lr / (1.0 - c.beta1.powi(t));
        let bc2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        let mut out = Vec::with_capacity(params.len());
        for (i, (p, g)) in params.iter().zip(grads).enumerate() {
            #[cfg(feature = "cuda")]
            if pctrain_model::cuda::runs_on(p) {
                // One fused kernel, in place on the parameter (and its master copy).
                let step = pctrain_model::cuda::AdamWStep {
                    wd_factor: 1.0 - lr * c.weight_decay,
                    beta1: c.beta1,
                    beta2: c.beta2,
                    step_size,
                    bc2_sqrt,
                    eps: c.eps,
                };
                let master = self.master[i].as_ref();
                pctrain_model::cuda::adamw(p, master, g, &self.m[i], &self.v[i], step)?;
                out.push((*p).clone());
                continue;
            }
            let dtype = p.dtype();
            let p32 = match &self.master[i] {
                Some(master) => master.clone(),
                None => p.to_dtype(DType::F32)?,
            };
            let g = g.to_dtype(DType::F32)?;
            let p32 = if c.weight_decay != 0.0 {
                (p32 * (1.0 - lr * c.weight_decay))?
            } else {
                p32
            };
            self.m[i] = ((&self.m[i] * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            self.v[i] = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let denom = ((self.v[i].sqrt()? / bc2_sqrt)? + c.eps)?;
            let p32 = (p32 - ((&self.m[i] / denom)? * step_size)?)?;
            out.push(p32.to_dtype(dtype)?);
            if self.master[i].is_some() {
                self.master[i] = Some(p32);
            }
        }
        Ok(out)
    }
}

/// Scales `grads` so that their global L2 norm is at most `max_norm` (no change when it is
/// already, or when `max_norm` is 0); returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let mut total = 0f64;
    for g in grads.iter() {
        total += f64::from(
            g.to_dtype(DType::F32)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f32>()?,
        );
    }
    let norm = total.sqrt();
    if max_norm > 0.0 {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            for g in grads.iter_mut() {
                *g = (&*g * coef)?;
            }
        }
    }
    Ok(norm)
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
        let mut p = scalar_tensor(&[2.0, -1.0]);
        let mut opt = AdamW::new(c, &[&p]).unwrap();
        for g in grads {
            let grad = scalar_tensor(&[g as f32, -g as f32]);
            p = opt.update(&[&p], &[&grad], 1e-2).unwrap().remove(0);
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
    fn moments_stay_f32_for_bf16_parameters() {
        let p = scalar_tensor(&[1.0, 2.0]).to_dtype(DType::BF16).unwrap();
        let g = scalar_tensor(&[0.1, 0.2]).to_dtype(DType::BF16).unwrap();
        let mut opt = AdamW::new(AdamWConfig::default(), &[&p]).unwrap();
        let out = opt.update(&[&p], &[&g], 1e-3).unwrap();
        assert_eq!(out[0].dtype(), DType::BF16);
        assert_eq!(opt.m[0].dtype(), DType::F32);
        assert_eq!(opt.v[0].dtype(), DType::F32);
    }

    #[test]
    fn clipping_scales_to_the_global_norm() {
        let mut grads = vec![scalar_tensor(&[3.0]), scalar_tensor(&[4.0])];
        let norm = clip_grad_norm(&mut grads, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        let a: Vec<f32> = grads[0].to_vec1().unwrap();
        let b: Vec<f32> = grads[1].to_vec1().unwrap();
        assert!((a[0] - 0.6).abs() < 1e-5 && (b[0] - 0.8).abs() < 1e-5);
        let mut small = vec![scalar_tensor(&[0.3])];
        clip_grad_norm(&mut small, 1.0).unwrap();
        assert_eq!(small[0].to_vec1::<f32>().unwrap(), vec![0.3]);
        let mut off = vec![scalar_tensor(&[30.0])];
        assert!((clip_grad_norm(&mut off, 0.0).unwrap() - 30.0).abs() < 1e-4);
        assert_eq!(
            off[0].to_vec1::<f32>().unwrap(),
            vec![30.0],
            "0 turns clipping off"
        );
    }
}
