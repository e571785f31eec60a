//! Decoding's key/value cache and attention over it. Each (layer, slot, key/value head) has room
//! for `cap` positions: keys in tiles of [`TILE`] positions stored transposed (`[d, TILE]`, so that
//! a query's scores over a tile are one vector per feature), values `[cap, d]`. A token written at
//! (slot, position) is seen by the later tokens of its slot; a query at `pos` attends positions
//! `lo..=pos` of its slot, `lo` set by the sliding window. The CPU kernels here and
//! `cuda::decode`'s are twins: every element of a token's output depends on that token's own
//! query and its slot's cache alone, never on the other tokens of the step.

use rayon::prelude::*;

use crate::cpu::lanes::Lanes;
use crate::cpu::par::Out;
use crate::cpu::simd::{exp, max, sum, LANES};
use crate::on_lanes;
use crate::simd_fn;

/// Positions per key tile.
pub const TILE: usize = 16;

/// The cache's dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheShape {
    pub layers: usize,
    pub slots: usize,
    pub kv_heads: usize,
    /// Positions a slot holds, a multiple of [`TILE`].
    pub cap: usize,
    pub d: usize,
}

impl CacheShape {
    /// Room for `positions` positions in each of `slots` slots.
    pub fn new(layers: usize, slots: usize, kv_heads: usize, positions: usize, d: usize) -> Self {
        CacheShape {
            layers,
            slots,
            kv_heads,
            cap: positions.clamp(1, usize::MAX / 2).next_multiple_of(TILE),
            d,
        }
    }

    /// Room for `positions` positions in each of `slots` slots of `config`'s model.
    pub fn of(config: &crate::config::ModelConfig, slots: usize, positions: usize) -> Self {
        let c = config;
        Self::new(c.num_layers, slots, c.num_kv_heads, positions, c.head_dim)
    }

    /// Floats of the keys (and as many of the values); `usize::MAX` past what can be counted
    /// (which no allocation gets).
    pub fn len(&self) -> usize {
        [self.slots, self.kv_heads, self.cap, self.d]
            .iter()
            .fold(self.layers, |n, &f| n.saturating_mul(f))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first float of the keys (or values) of `(layer, slot, head)`.
    #[inline(always)]
    pub fn base(&self, layer: usize, slot: usize, head: usize) -> usize {
        ((layer * self.slots + slot) * self.kv_heads + head) * self.cap * self.d
    }

    /// Where feature `c` of the key at `pos` lies after its head's base.
    #[inline(always)]
    pub fn key(&self, pos: usize, c: usize) -> usize {
        pos / TILE * TILE * self.d + c * TILE + pos % TILE
    }
}

/// Each token's slot and position, `[N]` each.
#[derive(Debug, Clone, Copy)]
pub struct Places<'a> {
    pub slots: &'a [u32],
    pub positions: &'a [u32],
}

/// Writes the keys and values (`[N, kv_heads * d]` each, token-major) of the step's tokens into
/// layer `layer` of the cache.
pub fn cache_write_cpu(
    shape: &CacheShape,
    layer: usize,
    places: Places,
    k: &[f32],
    v: &[f32],
    keys: &mut [f32],
    values: &mut [f32],
) {
    let (kvh, d) = (shape.kv_heads, shape.d);
    for (t, (&slot, &pos)) in places.slots.iter().zip(places.positions).enumerate() {
        let (slot, pos) = (slot as usize, pos as usize);
        assert!(
            slot < shape.slots && pos < shape.cap,
            "a token at slot {slot}, position {pos} does not fit the cache"
        );
        for g in 0..kvh {
            let base = shape.base(layer, slot, g);
            let row = (t * kvh + g) * d;
            for c in 0..d {
                keys[base + shape.key(pos, c)] = k[row + c];
            }
            values[base + pos * d..base + (pos + 1) * d].copy_from_slice(&v[row..row + d]);
        }
    }
}

/// How the queries attend: `heads` query heads (a multiple of the cache's key/value heads), the
/// sliding window (0: none) and the score scale.
#[derive(Debug, Clone, Copy)]
pub struct CacheAttention {
    pub heads: usize,
    pub window: usize,
    pub scale: f32,
}

impl CacheAttention {
    /// The first position a query at `pos` sees.
    #[inline(always)]
    pub fn first(&self, pos: usize) -> usize {
        if self.window > 0 {
            (pos + 1).saturating_sub(self.window)
        } else {
            0
        }
    }
}

/// Each token's queries (`[N, heads * d]`) attend the cached positions `lo..=pos` of its slot in
/// layer `layer`: `softmax(scale * q k^T) v` into `out` (`[N, heads * d]`). One task a (token,
/// key/value head), whose query heads read each key and value once; the scores are computed
/// exactly, then normalised.
#[allow(clippy::too_many_arguments)]
pub fn cache_attention_cpu(
    shape: &CacheShape,
    layer: usize,
    attn: &CacheAttention,
    places: Places,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    out: &mut [f32],
) {
    let (heads, kvh, d) = (attn.heads, shape.kv_heads, shape.d);
    let n = places.slots.len();
    assert!(
        q.len() == n * heads * d && out.len() == q.len() && heads % kvh == 0,
        "cache attention: {n} tokens of {heads} heads of {d} do not fit"
    );
    let group = heads / kvh;
    let o = Out::new(out);
    (0..n * kvh).into_par_iter().for_each(|task| {
        let (t, g) = (task / kvh, task % kvh);
        let slot = places.slots[t] as usize;
        let pos = places.positions[t] as usize;
        assert!(
            slot < shape.slots && pos < shape.cap,
            "a query at slot {slot}, position {pos} is outside the cache"
        );
        let base = shape.base(layer, slot, g);
        // The group's query heads are consecutive: rows `task * group ..`.
        let rows = task * group * d..(task + 1) * group * d;
        // SAFETY: this task alone writes its group's rows.
        let oi = unsafe { o.slice(rows.start, rows.len()) };
        SCORES.with(|s| {
            let mut s = s.borrow_mut();
            attend(
                shape, attn, base, pos, group, &q[rows], keys, values, &mut s, oi,
            );
        });
    });
}

thread_local! {
    /// Each thread's scores, kept from call to call.
    static SCORES: std::cell::RefCell<Vec<f32>> = std::cell::RefCell::default();
}

simd_fn! {
    fn attend(
        shape: &CacheShape,
        attn: &CacheAttention,
        base: usize,
        pos: usize,
        group: usize,
        q: &[f32],
        keys: &[f32],
        values: &[f32],
        scores: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        let at = AttendAt { shape, attn, base, pos, keys, values };
        // The groups of the models pctrain knows (Llama 3 and Mistral 4, SmolLM2 and Llama
        // 3.2 3B 3), with their accumulators in registers; any other size a head at a time.
        match group {
            1 => attend_group::<1>(&at, q, scores, out),
            2 => attend_group::<2>(&at, q, scores, out),
            3 => attend_group::<3>(&at, q, scores, out),
            4 => attend_group::<4>(&at, q, scores, out),
            8 => attend_group::<8>(&at, q, scores, out),
            _ => {
                let d = shape.d;
                for (q, out) in q.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
                    attend_group::<1>(&at, q, scores, out);
                }
            }
        }
    }
}

/// What one key/value head's attention reads: its cache (from `base`) and the query position.
struct AttendAt<'a> {
    shape: &'a CacheShape,
    attn: &'a CacheAttention,
    base: usize,
    pos: usize,
    keys: &'a [f32],
    values: &'a [f32],
}

/// `G` query heads (`q`, `out`: `[G, d]`) over the positions `lo..=pos` of one key/value head:
/// each key tile and value row read once for the group. Scores in `scores`: `[G, len]`, then
/// each head's `1 / sum`. Every score is a sum over the features in order, every output a sum
/// over the positions in order; the loops keep several of them going at once, as a product's
/// latency needs.
#[inline(always)]
fn attend_group<const G: usize>(at: &AttendAt, q: &[f32], scores: &mut Vec<f32>, out: &mut [f32]) {
    let (d, pos) = (at.shape.d, at.pos);
    let lo = at.attn.first(pos);
    let len = pos + 1 - lo;
    scores.clear();
    scores.resize(G * (len + 1), 0.0);
    let (scores, inv) = scores.split_at_mut(G * len);
    let last_tile = pos / TILE;
    let mut tile = lo / TILE;
    while tile <= last_tile {
        if last_tile + 1 - tile >= 4 {
            tile_scores::<G, 4>(at, q, tile, lo, len, scores);
            tile += 4;
        } else {
            tile_scores::<G, 1>(at, q, tile, lo, len, scores);
            tile += 1;
        }
    }
    for (s, inv) in scores.chunks_exact_mut(len).zip(inv.iter_mut()) {
        let m = max(s);
        for x in s.iter_mut() {
            *x = exp(*x - m);
        }
        *inv = 1.0 / sum(s);
    }
    let values = &at.values[at.base + lo * d..at.base + (pos + 1) * d];
    let mut c0 = 0;
    while c0 < d {
        let left = d - c0;
        if left >= 4 * LANES && G <= 4 {
            weighted_values::<G, 4>(values, d, c0, scores, len, inv, out);
            c0 += 4 * LANES;
        } else if left >= 2 * LANES {
            weighted_values::<G, 2>(values, d, c0, scores, len, inv, out);
            c0 += 2 * LANES;
        } else {
            // The last features (fewer than 32): a lane each, the rest of the lanes idle.
            for c in c0..d {
                for h in 0..G {
                    let mut a = 0f32;
                    for (j, v) in values.chunks_exact(d).enumerate() {
                        a = scores[h * len + j].mul_add(v[c], a);
                    }
                    out[h * d + c] = a * inv[h];
                }
            }
            c0 = d;
        }
    }
}

/// The scores of `T` key tiles from `tile`: `scale * q k` for every position of them in
/// `lo..lo + len`, each a sum over the features in order.
#[inline(always)]
fn tile_scores<const G: usize, const T: usize>(
    at: &AttendAt,
    q: &[f32],
    tile: usize,
    lo: usize,
    len: usize,
    scores: &mut [f32],
) {
    let d = at.shape.d;
    let keys = &at.keys[at.base + tile * TILE * d..at.base + (tile + T) * TILE * d];
    assert!(q.len() >= G * d);
    // SAFETY: the loads read `TILE` keys of feature `c < d` of tile `t < T` inside `keys`, and
    // the set is the active one.
    let acc: [[[f32; TILE]; T]; G] = on_lanes!(V => unsafe {
        let mut acc = [[V::zero(); T]; G];
        for c in 0..d {
            let mut kv = [V::zero(); T];
            for (t, kv) in kv.iter_mut().enumerate() {
                *kv = V::load(keys.as_ptr().add((t * d + c) * TILE));
            }
            for (h, acc) in acc.iter_mut().enumerate() {
                let qc = V::splat(*q.get_unchecked(h * d + c));
                for (a, kv) in acc.iter_mut().zip(&kv) {
                    *a = V::fma(qc, *kv, *a);
                }
            }
        }
        let mut out = [[[0f32; TILE]; T]; G];
        for (o, a) in out.iter_mut().zip(&acc) {
            for (o, a) in o.iter_mut().zip(a) {
                *o = a.lanes();
            }
        }
        out
    });
    for (h, acc) in acc.iter().enumerate() {
        for (t, acc) in acc.iter().enumerate() {
            for (l, a) in acc.iter().enumerate() {
                let j = (tile + t) * TILE + l;
                if j >= lo && j < lo + len {
                    scores[h * len + j - lo] = a * at.attn.scale;
                }
            }
        }
    }
}

/// Features `c0..c0 + C * LANES` of each head's output: the positions' values (`[len, d]`)
/// weighted by the scores, summed over the positions in order, times the head's `1 / sum`.
#[inline(always)]
fn weighted_values<const G: usize, const C: usize>(
    values: &[f32],
    d: usize,
    c0: usize,
    scores: &[f32],
    len: usize,
    inv: &[f32],
    out: &mut [f32],
) {
    assert!(values.len() >= len * d && c0 + C * LANES <= d && scores.len() >= G * len);
    // SAFETY: the loads read features `c0..c0 + C * LANES` of the `len` rows of `values`, the
    // scores' indices are under `G * len`, and the set is the active one.
    let acc: [[[f32; LANES]; C]; G] = on_lanes!(V => unsafe {
        let mut acc = [[V::zero(); C]; G];
        for j in 0..len {
            let row = values.as_ptr().add(j * d + c0);
            let mut vv = [V::zero(); C];
            for (c, vv) in vv.iter_mut().enumerate() {
                *vv = V::load(row.add(c * LANES));
            }
            for (h, acc) in acc.iter_mut().enumerate() {
                let p = V::splat(*scores.get_unchecked(h * len + j));
                for (a, vv) in acc.iter_mut().zip(&vv) {
                    *a = V::fma(p, *vv, *a);
                }
            }
        }
        let mut out = [[[0f32; LANES]; C]; G];
        for (o, a) in out.iter_mut().zip(&acc) {
            for (o, a) in o.iter_mut().zip(a) {
                *o = a.lanes();
            }
        }
        out
    });
    for (h, acc) in acc.iter().enumerate() {
        for (c, acc) in acc.iter().enumerate() {
            let o = &mut out[h * d + c0 + c * LANES..h * d + c0 + (c + 1) * LANES];
            for (o, a) in o.iter_mut().zip(acc) {
                *o = a * inv[h];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention written out plainly, in f64, over keys and values `[positions, kv_heads * d]`.
    #[allow(clippy::too_many_arguments)]
    fn plain(
        q: &[f32],
        k: &[Vec<f32>],
        v: &[Vec<f32>],
        heads: usize,
        kv_heads: usize,
        d: usize,
        lo: usize,
        scale: f32,
    ) -> Vec<f32> {
        let mut out = vec![0f32; heads * d];
        for h in 0..heads {
            let g = h / (heads / kv_heads);
            let s: Vec<f64> = k[lo..]
                .iter()
                .map(|kj| {
                    let dot: f64 = (0..d)
                        .map(|c| f64::from(q[h * d + c]) * f64::from(kj[g * d + c]))
                        .sum();
                    dot * f64::from(scale)
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let total: f64 = e.iter().sum();
            for c in 0..d {
                let o: f64 = e
                    .iter()
                    .zip(&v[lo..])
                    .map(|(p, vj)| p * f64::from(vj[g * d + c]))
                    .sum();
                out[h * d + c] = (o / total) as f32;
            }
        }
        out
    }

    #[test]
    fn cached_attention_matches_attention_written_out_for_each_slot_and_window() {
        // (query heads, key/value heads, head size, positions written per step): groups of 2, 3
        // and 8 take their own code, 5 the head-at-a-time one; sizes of 20, 40, 64 and 128 take
        // the one-lane, two-vector and four-vector value sums; 100 positions take the four-tile
        // score blocks.
        for (heads, kv_heads, d, steps) in [
            (4, 2, 20, [20usize, 16, 1]),
            (6, 2, 64, [60, 39, 1]),
            (8, 1, 40, [64, 5, 1]),
            (5, 1, 32, [33, 3, 1]),
            (16, 2, 128, [17, 2, 1]),
        ] {
            check_case(heads, kv_heads, d, steps);
        }
    }

    /// Slot 1 of layer 1 of a 2-layer, 3-slot cache gets `steps` tokens a step, with slot 0's
    /// tokens mixed in (NaN elsewhere shows any read past what was written); queries at the last
    /// position, the middle one and 0 of slot 1, and one of slot 0, in one call, for windows 0,
    /// 5 and 17, against attention written out in f64.
    fn check_case(heads: usize, kv_heads: usize, d: usize, steps: [usize; 3]) {
        let total: usize = steps.iter().sum();
        let shape = CacheShape::new(2, 3, kv_heads, total + 3, d);
        assert_eq!(shape.cap % TILE, 0);
        let mut keys = vec![f32::NAN; shape.len()];
        let mut values = vec![f32::NAN; shape.len()];
        let val = |i: usize| ((i * 7919 % 1009) as f32 - 504.0) / 300.0;
        let (mut hist_k, mut hist_v) = (Vec::new(), Vec::new());
        let mut written = 0;
        for step in steps {
            let mut places_s = Vec::new();
            let mut places_p = Vec::new();
            for i in 0..step {
                places_s.extend([1u32, 0]);
                places_p.extend([(written + i) as u32, i as u32]);
            }
            let n = places_s.len();
            let k: Vec<f32> = (0..n * kv_heads * d)
                .map(|i| val(i + 31 * written))
                .collect();
            let v: Vec<f32> = (0..n * kv_heads * d)
                .map(|i| val(i + 57 * written + 3))
                .collect();
            for i in 0..step {
                let row = 2 * i * kv_heads * d..(2 * i + 1) * kv_heads * d;
                hist_k.push(k[row.clone()].to_vec());
                hist_v.push(v[row].to_vec());
            }
            let places = Places {
                slots: &places_s,
                positions: &places_p,
            };
            cache_write_cpu(&shape, 1, places, &k, &v, &mut keys, &mut values);
            written += step;
        }
        let scale = 2.0 / d as f32;
        let positions = [total as u32 - 1, total as u32 / 2, 0];
        let case = format!("{heads}/{kv_heads} heads of {d}");
        for window in [0, 5, 17] {
            let attn = CacheAttention {
                heads,
                window,
                scale,
            };
            let q: Vec<f32> = (0..4 * heads * d).map(|i| val(i + 11)).collect();
            let mut out = vec![0f32; q.len()];
            let all = [positions[0], positions[1], positions[2], 0];
            let places = Places {
                slots: &[1, 1, 1, 0],
                positions: &all,
            };
            cache_attention_cpu(&shape, 1, &attn, places, &q, &keys, &values, &mut out);
            for (t, &p) in positions.iter().enumerate() {
                let p = p as usize;
                let want = plain(
                    &q[t * heads * d..(t + 1) * heads * d],
                    &hist_k[..=p],
                    &hist_v[..=p],
                    heads,
                    kv_heads,
                    d,
                    attn.first(p),
                    scale,
                );
                let got = &out[t * heads * d..(t + 1) * heads * d];
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() < 2e-5,
                        "{case}, window {window}, position {p}: {g} vs {w}"
                    );
                }
            }
            // One token alone gives the same bits as within the step.
            let mut alone = vec![0f32; heads * d];
            let one = Places {
                slots: &[1],
                positions: &all[1..2],
            };
            let q1 = &q[heads * d..2 * heads * d];
            cache_attention_cpu(&shape, 1, &attn, one, q1, &keys, &values, &mut alone);
            assert_eq!(alone, out[heads * d..2 * heads * d], "{case}");
        }
    }
}
