//! Collectives of long buffers in rounds of `share` floats per rank ([`crate::BUCKET`] over the
//! ranks, so that no MPI count or offset passes 32 bits), written over one collective call per
//! round so that the rounds' arithmetic is tested without MPI.

/// Where each of `counts` starts when they are laid end to end.
pub fn offsets<T: Copy + Default + std::ops::Add<Output = T>>(counts: &[T]) -> Vec<T> {
    counts
        .iter()
        .scan(T::default(), |at, &c| {
            let start = *at;
            *at = *at + c;
            Some(start)
        })
        .collect()
}

/// Rounds that move `counts` floats per rank, `share` of each in a round.
fn rounds(counts: &[usize], share: usize) -> usize {
    counts.iter().max().map_or(0, |m| m.div_ceil(share))
}

/// Of `c` floats, how many go in round `k`.
fn part(c: usize, k: usize, share: usize) -> usize {
    c.saturating_sub(k * share).min(share)
}

/// Every rank's `mine`, laid end to end in rank order (`counts[r]` floats from rank `r`), handed
/// round by round to `put(at, floats)`, `at` their place in the whole. `gather(send, sizes, recv)`
/// is one all-gather: rank `r`'s `send` of `sizes[r]` floats into every rank's `recv`, laid end
/// to end.
pub fn all_gather(
    mine: &[f32],
    counts: &[usize],
    share: usize,
    mut gather: impl FnMut(&[f32], &[usize], &mut [f32]),
    mut put: impl FnMut(usize, &[f32]),
) {
    let starts = offsets(counts);
    let mut round = Vec::new();
    for k in 0..rounds(counts, share) {
        let sizes: Vec<usize> = counts.iter().map(|&c| part(c, k, share)).collect();
        round.resize(sizes.iter().sum(), 0f32);
        let lo = (k * share).min(mine.len());
        gather(
            &mine[lo..lo + part(mine.len(), k, share)],
            &sizes,
            &mut round,
        );
        let displs = offsets(&sizes);
        for r in (0..counts.len()).filter(|&r| sizes[r] > 0) {
            put(
                starts[r] + k * share,
                &round[displs[r]..displs[r] + sizes[r]],
            );
        }
    }
}

/// Into `mine` (rank `r`'s `counts[r]` floats), the sum over the ranks of their `values` (pieces
/// laid end to end) at `counts[..r].sum() ..`. `reduce(send, recv)` is one reduce-scatter of
/// equal blocks: `recv` gets the sum over the ranks of their `send`'s block `r`. Each block is a
/// rank's floats of the round, padded with zeros to `share`.
pub fn reduce_scatter(
    values: &[&[f32]],
    counts: &[usize],
    mine: &mut [f32],
    share: usize,
    mut reduce: impl FnMut(&[f32], &mut [f32]),
) {
    let starts = offsets(counts);
    let mut send = vec![0f32; share * counts.len()];
    let mut recv = vec![0f32; share];
    for k in 0..rounds(counts, share) {
        for (r, (&c, &start)) in counts.iter().zip(&starts).enumerate() {
            let n = part(c, k, share);
            let block = &mut send[r * share..(r + 1) * share];
            crate::copy_flat(values, start + k * share, &mut block[..n]);
            block[n..].fill(0.0);
        }
        reduce(&send, &mut recv);
        let n = part(mine.len(), k, share);
        if n > 0 {
            mine[k * share..k * share + n].copy_from_slice(&recv[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Barrier, Mutex};

    use super::*;

    /// `ranks` threads, each running `f(rank, collective)` where `collective(send)` hands every
    /// rank's `send` of this round to each, in rank order, as one collective call does.
    fn simulate<T: Send>(
        ranks: usize,
        f: impl Fn(usize, &dyn Fn(&[f32]) -> Vec<Vec<f32>>) -> T + Sync,
    ) -> Vec<T> {
        let slots = Mutex::new(vec![Vec::new(); ranks]);
        let barrier = Barrier::new(ranks);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..ranks)
                .map(|rank| {
                    let (slots, barrier, f) = (&slots, &barrier, &f);
                    s.spawn(move || {
                        let collective = |send: &[f32]| {
                            slots.lock().unwrap()[rank] = send.to_vec();
                            barrier.wait();
                            let all = slots.lock().unwrap().clone();
                            barrier.wait();
                            all
                        };
                        f(rank, &collective)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    /// Counts per rank and floats per rank a round: uneven counts over several rounds, ranks with
    /// none (first, last, all), a share larger than every count.
    const CASES: [(&[usize], usize); 5] = [
        (&[5, 4, 4], 2),
        (&[0, 3, 1], 2),
        (&[3, 0], 2),
        (&[0, 0], 2),
        (&[2, 2], 7),
    ];

    /// Rank `r`'s values: pieces of uneven lengths, `total` floats in all.
    fn values(r: usize, total: usize) -> Vec<Vec<f32>> {
        let flat: Vec<f32> = (0..total).map(|i| (100 * r + i) as f32).collect();
        let cuts = [0, 1.min(total), 4.min(total), total];
        cuts.windows(2).map(|w| flat[w[0]..w[1]].to_vec()).collect()
    }

    #[test]
    fn a_reduce_scatter_in_rounds_sums_each_ranks_span() {
        for (counts, share) in CASES.map(|(c, s)| (c.to_vec(), s)) {
            let total: usize = counts.iter().sum();
            let ranks = counts.len();
            let got = simulate(ranks, |rank, collective| {
                let pieces = values(rank, total);
                let refs: Vec<&[f32]> = pieces.iter().map(Vec::as_slice).collect();
                let mut mine = vec![f32::NAN; counts[rank]];
                reduce_scatter(&refs, &counts, &mut mine, share, |send, recv| {
                    let all = collective(send);
                    for (i, out) in recv.iter_mut().enumerate() {
                        *out = all.iter().map(|s| s[rank * share + i]).sum();
                    }
                });
                mine
            });
            let starts = offsets(&counts);
            for (rank, mine) in got.iter().enumerate() {
                let want: Vec<f32> = (starts[rank]..starts[rank] + counts[rank])
                    .map(|i| (0..ranks).map(|q| (100 * q + i) as f32).sum())
                    .collect();
                assert_eq!(mine, &want, "{counts:?} by {share}: rank {rank}");
            }
        }
    }

    #[test]
    fn an_all_gather_in_rounds_lays_every_rank_end_to_end() {
        for (counts, share) in CASES.map(|(c, s)| (c.to_vec(), s)) {
            let total: usize = counts.iter().sum();
            let got = simulate(counts.len(), |rank, collective| {
                let mine: Vec<f32> = (0..counts[rank]).map(|i| (100 * rank + i) as f32).collect();
                let mut all = vec![f32::NAN; total];
                // Checked after the collective: a panic inside it would leave the others waiting.
                let mut sizes_agree = true;
                let gather = |send: &[f32], sizes: &[usize], recv: &mut [f32]| {
                    let every = collective(send);
                    sizes_agree &= every.iter().map(Vec::len).eq(sizes.iter().copied());
                    recv.copy_from_slice(&every.concat());
                };
                let put = |at: usize, floats: &[f32]| {
                    all[at..at + floats.len()].copy_from_slice(floats);
                };
                all_gather(&mine, &counts, share, gather, put);
                assert!(
                    sizes_agree,
                    "{counts:?} by {share}: a rank sent other than its size"
                );
                all
            });
            let want: Vec<f32> = counts
                .iter()
                .enumerate()
                .flat_map(|(r, &c)| (0..c).map(move |i| (100 * r + i) as f32))
                .collect();
            for all in got {
                assert_eq!(all, want, "{counts:?} by {share}");
            }
        }
    }
}
