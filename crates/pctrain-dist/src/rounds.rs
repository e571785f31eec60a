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
