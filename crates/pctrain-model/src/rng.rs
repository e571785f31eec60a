//! A small seeded generator (xorshift64*) for initialisation and sampling: the same numbers for a
//! seed on every platform and version.

pub use pctrain_core::hash::{mix64, unit_interval, GOLDEN};

#[derive(Debug, Clone)]
pub struct Rng64(u64);

impl Rng64 {
    pub fn new(seed: u64) -> Self {
        // SplitMix64 spreads every bit of the seed; a zero state would stay zero.
        let z = mix64(seed.wrapping_add(GOLDEN));
        Rng64(if z == 0 { GOLDEN } else { z })
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        unit_interval(self.next_u64())
    }
}

#[cfg(test)]
mod tests {
    use super::Rng64;

    #[test]
    fn neighbouring_seeds_give_different_streams() {
        let first = |seed| Rng64::new(seed).next_u64();
        assert_ne!(first(0), first(1));
        assert_ne!(first(2), first(3));
        assert_eq!(first(7), first(7));
    }
}
