//! Learning-rate schedules: linear warmup, then cosine or linear decay to zero, or constant, as
//! transformers' `get_{cosine,linear,constant}_schedule_with_warmup` compute them.

use serde::{Deserialize, Serialize};

/// The shape of the learning rate after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    Cosine,
    Linear,
    Constant,
}

impl std::str::FromStr for Decay {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cosine" => Ok(Decay::Cosine),
            "linear" => Ok(Decay::Linear),
            "constant" => Ok(Decay::Constant),
            other => Err(format!(
                "unknown schedule {other:?} (expected cosine, linear or constant)"
            )),
        }
    }
}

/// A learning-rate schedule over `total_steps` optimizer steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub peak_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub decay: Decay,
}

impl Schedule {
    /// The learning rate of optimizer step `step` (0-based: the first update uses step 0).
    pub fn lr(&self, step: u64) -> f64 {
        let (s, w, n) = (
            step as f64,
            self.warmup_steps as f64,
            self.total_steps as f64,
        );
        let factor = if step < self.warmup_steps {
            s / w.max(1.0)
        } else {
            let progress = (s - w) / (n - w).max(1.0);
            match self.decay {
                Decay::Constant => 1.0,
                Decay::Linear => ((n - s) / (n - w).max(1.0)).max(0.0),
                Decay::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
            }
        };
        self.peak_lr * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(decay: Decay) -> Schedule {
        Schedule {
            peak_lr: 1e-3,
            warmup_steps: 10,
            total_steps: 110,
            decay,
        }
    }

    #[test]
    fn warmup_rises_linearly_from_zero() {
        for decay in [Decay::Cosine, Decay::Linear, Decay::Constant] {
            let s = schedule(decay);
            assert_eq!(s.lr(0), 0.0);
            assert!((s.lr(5) - 5e-4).abs() < 1e-12);
            assert!((s.lr(10) - 1e-3).abs() < 1e-12);
        }
    }

    #[test]
    fn decays_reach_their_ends() {
        let c = schedule(Decay::Cosine);
        assert!((c.lr(60) - 5e-4).abs() < 1e-12, "half way: half the peak");
        assert!(c.lr(110).abs() < 1e-12);
        let l = schedule(Decay::Linear);
        assert!((l.lr(35) - 7.5e-4).abs() < 1e-12);
        assert_eq!(l.lr(200), 0.0);
        assert_eq!(schedule(Decay::Constant).lr(100), 1e-3);
        assert!("cosine".parse::<Decay>().is_ok());
        assert!("step".parse::<Decay>().unwrap_err().contains("step"));
    }
}
