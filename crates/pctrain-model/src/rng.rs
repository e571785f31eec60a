//! A small seeded generator (xorshift64*) for initialisation and sampling: the same numbers for a
//! seed on every platform and version.

#[derive(Debug, Clone)]
pub struct Rng64(u64);

/// SplitMix64's finaliser: every bit of `z` affects every bit of the result.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A uniform number in `[0, 1)` from 53 bits of `h`.
pub fn unit_interval(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

impl Rng64 {
    pub fn new(seed: u64) -> Self {
        // SplitMix64 spreads every bit of the seed; a zero state would stay zero.
        let z = mix64(seed.wrapping_add(0x9e37_79b9_7f4a_7c15));
        Rng64(if z == 0 { 0x9e37_79b9_7f4a_7c15 } else { z })
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
