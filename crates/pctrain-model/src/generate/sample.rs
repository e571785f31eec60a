//! Choosing the next token from a row of logits: the most likely (greedy), or a draw from the
//! softmax at a temperature, cut to the `top_k` most likely tokens and then to the nucleus of
//! mass `top_p`. The draw is a number in `[0, 1)` the caller gives (from the sequence's own
//! generator), so a choice depends on its row and its draw alone. `cuda::decode`'s `pick` kernel
//! is the twin.

use crate::cpu::simd::{exp, max, sum};
use crate::simd_fn;

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token (the lowest id among equals).
    Greedy,
    /// A draw from `softmax(logits / temperature)`, restricted to the `top_k` most likely tokens
    /// (0: all; tokens equal to the k-th stay) and then to the nucleus: the most likely tokens
    /// whose mass first reaches `top_p` of the rest (with every token equal to the last one
    /// taken). Each sequence draws from its own generator, seeded by `seed` and its stream.
    Sample {
        temperature: f64,
        top_p: f64,
        top_k: usize,
        seed: u64,
    },
}

/// The token chosen from `logits` (`[V]`, used as scratch) with `draw` in `[0, 1)`; `order` is
/// scratch of `V` ids.
pub fn pick(logits: &mut [f32], order: &mut [u32], sampling: &Sampling, draw: f32) -> u32 {
    let Sampling::Sample {
        temperature,
        top_p,
        top_k,
        ..
    } = *sampling
    else {
        return argmax(logits);
    };
    let m = max(logits);
    if !m.is_finite() {
        return argmax(logits);
    }
    let v = logits.len();
    let floor = if top_k > 0 && top_k < v {
        kth_largest(logits, order, top_k)
    } else {
        f32::NEG_INFINITY
    };
    weights(logits, m, 1.0 / temperature as f32, floor);
    if top_p < 1.0 {
        let cut = nucleus_floor(logits, order, top_p as f32 * sum(logits));
        for e in logits.iter_mut() {
            if *e < cut {
                *e = 0.0;
            }
        }
    }
    walk(logits, draw)
}

/// The first index of the largest element (NaN never wins; 0 when all are NaN).
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] || x[best].is_nan() && !v.is_nan() {
            best = i;
        }
    }
    best as u32
}

/// The `k`-th largest value of `x` (`0 < k < x.len()`).
fn kth_largest(x: &[f32], order: &mut [u32], k: usize) -> f32 {
    for (i, o) in order.iter_mut().enumerate() {
        *o = i as u32;
    }
    order.select_nth_unstable_by(k - 1, |&a, &b| x[b as usize].total_cmp(&x[a as usize]));
    x[order[k - 1] as usize]
}

simd_fn! {
    /// `x[i] = exp((x[i] - m) * inv_t)` where `x[i] >= floor`, else 0.
    fn weights(x: &mut [f32], m: f32, inv_t: f32, floor: f32) {
        for v in x.iter_mut() {
            let e = exp((*v - m) * inv_t);
            *v = if *v >= floor { e } else { 0.0 };
        }
    }
}

/// The weight of the nucleus's last token: with the positive weights of `e` in falling order
/// (ties by id), the first whose running sum reaches `target`. Sorted in growing blocks, so
/// that a small nucleus costs little.
fn nucleus_floor(e: &[f32], order: &mut [u32], target: f32) -> f32 {
    let mut n = 0;
    for (i, &w) in e.iter().enumerate() {
        if w > 0.0 {
            order[n] = i as u32;
            n += 1;
        }
    }
    let falling = |a: &u32, b: &u32| e[*b as usize].total_cmp(&e[*a as usize]).then(a.cmp(b));
    let (mut start, mut block, mut acc) = (0, 64, 0f32);
    while start < n {
        let end = (start + block).min(n);
        if end < n {
            order[start..n].select_nth_unstable_by(end - start - 1, falling);
        }
        order[start..end].sort_unstable_by(falling);
        for &i in &order[start..end] {
            acc += e[i as usize];
            if acc >= target {
                return e[i as usize];
            }
        }
        start = end;
        block *= 2;
    }
    // Rounding kept the sum under the target: the whole distribution.
    0.0
}

/// The index where the running sum of `e`, in id order and in f64, first passes `draw` times
/// its total. In f64 every weight moves the sum (in f32 a long tail of small weights would not),
/// and the total is summed in the same order, so the walk always ends at a token.
fn walk(e: &[f32], draw: f32) -> u32 {
    let total: f64 = e.iter().map(|&w| f64::from(w)).sum();
    let target = f64::from(draw) * total;
    let mut acc = 0f64;
    let mut last = 0;
    for (i, &w) in e.iter().enumerate() {
        if w > 0.0 {
            acc += f64::from(w);
            last = i;
            if target < acc {
                return i as u32;
            }
        }
    }
    last as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(temperature: f64, top_p: f64, top_k: usize) -> Sampling {
        Sampling::Sample {
            temperature,
            top_p,
            top_k,
            seed: 0,
        }
    }

    fn frequencies(logits: &[f32], s: Sampling, draws: usize) -> Vec<f64> {
        let mut counts = vec![0usize; logits.len()];
        let mut order = vec![0u32; logits.len()];
        for i in 0..draws {
            let mut row = logits.to_vec();
            let u = (i as f32 + 0.5) / draws as f32;
            counts[pick(&mut row, &mut order, &s, u) as usize] += 1;
        }
        counts.iter().map(|&c| c as f64 / draws as f64).collect()
    }

    #[test]
    fn greedy_takes_the_first_largest_and_skips_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 2.0, 5.0]), 2);
        let mut row = vec![0.5, 9.0, 1.0];
        assert_eq!(pick(&mut row, &mut [0; 3], &Sampling::Greedy, 0.99), 1);
    }

    #[test]
    fn draws_follow_the_softmax_cut_by_top_k_and_top_p() {
        let logits = [2.0f32, 1.0, 0.0, -1.0, 0.5];
        let e: Vec<f64> = logits.iter().map(|&l| f64::from(l / 0.5).exp()).collect();
        let total: f64 = e.iter().sum();
        // Temperature 0.5, no cut: each token at its probability.
        let f = frequencies(&logits, sample(0.5, 1.0, 0), 20_000);
        for (got, w) in f.iter().zip(&e) {
            assert!((got - w / total).abs() < 1e-3, "{got} vs {}", w / total);
        }
        // top_k 2: tokens 0 and 1 only, renormalised.
        let f = frequencies(&logits, sample(0.5, 1.0, 2), 20_000);
        let two = e[0] + e[1];
        assert!((f[0] - e[0] / two).abs() < 1e-3 && (f[1] - e[1] / two).abs() < 1e-3);
        assert_eq!(f[2] + f[3] + f[4], 0.0);
        // top_p just above token 0's share: the nucleus is tokens 0 and 1 (the next most
        // likely), renormalised.
        let p0 = e[0] / total;
        let f = frequencies(&logits, sample(0.5, p0 + 0.01, 0), 20_000);
        assert!((f[0] - e[0] / two).abs() < 1e-3, "{:?}", f);
        assert_eq!(f[2] + f[3] + f[4], 0.0);
        // top_p below it: token 0 alone.
        let f = frequencies(&logits, sample(0.5, p0 - 0.01, 0), 1000);
        assert_eq!(f[0], 1.0);
    }

    #[test]
    fn a_long_tail_of_small_weights_keeps_its_share() {
        // One token of weight 1 and 100000 of 5e-8: in f32 none of the small ones would move a
        // running sum past 1, yet together they hold 0.5% of the mass.
        let mut logits = vec![(5e-8f32).ln(); 100_001];
        logits[0] = 0.0;
        let mut order = vec![0u32; logits.len()];
        let s = sample(1.0, 1.0, 0);
        assert_eq!(pick(&mut logits.clone(), &mut order, &s, 0.99), 0);
        // A draw in the tail's share lands on a tail token near its place: 0.9999 of the mass is
        // at about 98% of the tail.
        let t = pick(&mut logits.clone(), &mut order, &s, 0.9999) as usize;
        assert!((97_000..99_500).contains(&t), "{t}");
    }

    #[test]
    fn a_large_nucleus_is_found_across_sorted_blocks() {
        // 1000 tokens of falling weight: the nucleus of 0.9 needs more than the first block.
        let logits: Vec<f32> = (0..1000).map(|i| -(i as f32) / 300.0).collect();
        let e: Vec<f64> = logits.iter().map(|&l| f64::from(l).exp()).collect();
        let total: f64 = e.iter().sum();
        let mut acc = 0.0;
        let size = e.iter().take_while(|&&w| {
            let before = acc;
            acc += w;
            before < 0.9 * total
        });
        let size = size.count();
        assert!(size > 64);
        let mut order = vec![0u32; 1000];
        let s = sample(1.0, 0.9, 0);
        let top = pick(&mut logits.clone(), &mut order, &s, 0.999_999);
        assert_eq!(top as usize, size - 1);
        assert_eq!(pick(&mut logits.clone(), &mut order, &s, 0.0), 0);
    }
}
