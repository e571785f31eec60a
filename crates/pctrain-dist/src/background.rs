//! Sums over the ranks started while the caller still computes: a backward hands over each
//! layer's gradients as soon as it has finished them, each goes out at once as MPI's non-blocking
//! all-reduce (or reduce-scatter, ZeRO stage 2), and all are waited for at the end. MPI moves
//! them whenever the process is in MPI, so each hand-over also lets the earlier ones go on.

use std::ops::Range;

use crate::{World, BUCKET};

/// Where a sum in the background leaves its result.
#[derive(Debug, Clone, Copy)]
pub enum Summed<'c> {
    /// In every rank's buffers (an all-reduce).
    Everywhere,
    /// In each rank's span alone: rank `r` owns `counts[r]` elements, the spans laid end to end
    /// in rank order over the whole (a reduce-scatter; ZeRO stage 2's gradients). Elsewhere the
    /// buffers keep this rank's own values.
    Spans(&'c [usize]),
}

/// Up to [`BUCKET`] consecutive floats of the whole, summed by one collective: the buffers they
/// go back to, MPI's send buffer (a copy of them), and where the sum lands.
struct Window<'g> {
    /// Where its first float starts in the whole.
    at: usize,
    /// Its buffers, laid end to end from `at`.
    pieces: Vec<&'g mut [f32]>,
    send: Vec<f32>,
    /// This rank's share of the sum: the whole window, or its part of this rank's span.
    mine: Range<usize>,
    /// Where `mine` lands when it spans several buffers (copied into them once summed); empty
    /// when it lands in its one buffer directly.
    staging: Vec<f32>,
    /// Each rank's share of the window, for a reduce-scatter (MPI reads it until the end).
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    counts: Vec<i32>,
}

impl<'g> Window<'g> {
    /// The window of `pieces` from `at`, whose share for this rank is `mine`.
    fn new(at: usize, pieces: Vec<&'g mut [f32]>, mine: Range<usize>, counts: Vec<i32>) -> Self {
        let len: usize = pieces.iter().map(|p| p.len()).sum();
        let mut send = Vec::with_capacity(len);
        pieces.iter().for_each(|p| send.extend_from_slice(p));
        let staged = pieces.len() > 1 && !mine.is_empty();
        Window {
            at,
            pieces,
            send,
            staging: if staged {
                vec![0f32; mine.len()]
            } else {
                Vec::new()
            },
            mine,
            counts,
        }
    }

    /// Where MPI writes this rank's share of the sum (`mine.len()` floats).
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    fn landing(&mut self) -> *mut f32 {
        match self.pieces.as_mut_slice() {
            [one] if self.staging.is_empty() => one[self.mine.start - self.at..].as_mut_ptr(),
            _ => self.staging.as_mut_ptr(),
        }
    }

    /// Floats of copies it holds until it lands.
    fn held(&self) -> usize {
        self.send.len() + self.staging.len()
    }

    /// Once summed: the staged share copied into its buffers, and the copies freed.
    fn land(&mut self) {
        let mut at = self.at;
        for p in self.pieces.iter_mut().filter(|_| !self.staging.is_empty()) {
            let here = meet(&(at..at + p.len()), &self.mine);
            if !here.is_empty() {
                let from = here.start - self.mine.start;
                let sum = &self.staging[from..from + here.len()];
                p[here.start - at..here.end - at].copy_from_slice(sum);
            }
            at += p.len();
        }
        self.pieces = Vec::new();
        self.send = Vec::new();
        self.staging = Vec::new();
    }
}

/// Sums over the ranks of buffers handed over part by part (each with where it starts in the
/// whole), every one started at once and landed in its buffers once MPI has summed it (each
/// copy freed then); [`BackgroundSums::finish`] waits for the rest. Dropped unfinished, it waits
/// too (MPI writes into its buffers until then), and what the buffers then hold is undefined.
pub struct BackgroundSums<'w, 'g> {
    world: &'w World,
    /// Every rank's span of the whole, with [`Summed::Spans`].
    spans: Option<Vec<Range<usize>>>,
    /// Every window started; those landed hold nothing.
    windows: Vec<Window<'g>>,
    /// Floats of copies the windows not landed hold.
    held: usize,
    /// One per window (null once completed).
    #[cfg(feature = "mpi")]
    requests: Vec<mpi::ffi::MPI_Request>,
}

/// Floats of copies (send buffers, staged sums) held at once: past this a new window waits for
/// the oldest to land, so the copies never grow with the model.
#[cfg(feature = "mpi")]
const HELD: usize = 2 * BUCKET;

impl World {
    /// Sums of buffers to hand over as they are ready, into `summed`.
    pub fn sums_in_background<'g>(&self, summed: Summed<'_>) -> BackgroundSums<'_, 'g> {
        let spans = match summed {
            Summed::Everywhere => None,
            Summed::Spans(counts) => {
                assert_eq!(counts.len(), self.size, "a count per rank");
                let mut at = 0;
                let spans = counts.iter().map(|&c| {
                    at += c;
                    at - c..at
                });
                Some(spans.collect())
            }
        };
        BackgroundSums {
            world: self,
            spans,
            windows: Vec::new(),
            held: 0,
            #[cfg(feature = "mpi")]
            requests: Vec::new(),
        }
    }
}

impl<'g> BackgroundSums<'_, 'g> {
    /// Starts the sums of `pieces` (each with where it starts in the whole), the same on every
    /// rank in the same order, and lands those started before that MPI has finished. Alone,
    /// the buffers already hold the sum. `overlapped`: the caller computes more before
    /// [`BackgroundSums::finish`] (counted in [`crate::Traffic::overlapped`]).
    pub fn start(&mut self, pieces: Vec<(usize, &'g mut [f32])>, overlapped: bool) {
        let floats = pieces.iter().map(|(_, p)| p.len() as u64).sum::<u64>();
        self.world.count(|t| {
            match self.spans {
                None => t.all_reduce += floats,
                Some(_) => t.reduce_scatter += floats,
            }
            if overlapped {
                t.overlapped += floats;
            }
        });
        if self.world.size() == 1 {
            return;
        }
        for (at, run) in windows(pieces) {
            let len: usize = run.iter().map(|p| p.len()).sum();
            let whole = at..at + len;
            let (mine, counts) = match &self.spans {
                None => (whole, Vec::new()),
                Some(spans) => (
                    meet(&whole, &spans[self.world.rank()]),
                    spans.iter().map(|s| meet(&whole, s).len() as i32).collect(),
                ),
            };
            let staged = if run.len() > 1 { mine.len() } else { 0 };
            self.make_room(len + staged);
            #[cfg_attr(not(feature = "mpi"), allow(unused_mut))]
            let mut w = Window::new(at, run, mine, counts);
            #[cfg(feature = "mpi")]
            if let Some(m) = &self.world.mpi {
                self.requests.push(m.start_sum(&mut w));
            }
            self.held += w.held();
            self.windows.push(w);
        }
        #[cfg(feature = "mpi")]
        if let Some(m) = &self.world.mpi {
            for i in m.completed(&mut self.requests) {
                self.land(i);
            }
        }
    }

    /// Lands the oldest windows, waiting for them, until `floats` more fit within [`HELD`].
    fn make_room(&mut self, floats: usize) {
        #[cfg(feature = "mpi")]
        if let Some(m) = &self.world.mpi {
            let mut oldest = 0;
            while self.held + floats > HELD && oldest < self.windows.len() {
                if self.windows[oldest].held() > 0 {
                    m.wait(&mut self.requests[oldest..=oldest]);
                    self.land(oldest);
                }
                oldest += 1;
            }
        }
        let _ = floats;
    }

    fn land(&mut self, i: usize) {
        self.held -= self.windows[i].held();
        self.windows[i].land();
    }

    /// Waits for every sum started and lands each in its buffers.
    pub fn finish(mut self) {
        self.wait();
        (0..self.windows.len()).for_each(|i| self.land(i));
    }

    fn wait(&mut self) {
        #[cfg(feature = "mpi")]
        if let Some(m) = &self.world.mpi {
            m.wait(&mut self.requests);
        }
    }
}

impl Drop for BackgroundSums<'_, '_> {
    fn drop(&mut self) {
        self.wait();
    }
}

/// The part of `a` within `b` (empty, at `a`'s clamp, when they do not meet).
fn meet(a: &Range<usize>, b: &Range<usize>) -> Range<usize> {
    let start = a.start.max(b.start).min(a.end);
    start..a.end.min(b.end).max(start)
}

/// `pieces` cut into windows of at most [`BUCKET`] consecutive floats: runs of pieces that follow
/// each other in the whole, split where a window ends; empty pieces dropped.
fn windows(pieces: Vec<(usize, &mut [f32])>) -> Vec<(usize, Vec<&mut [f32]>)> {
    let mut out: Vec<(usize, Vec<&mut [f32]>)> = Vec::new();
    let mut open_len = 0;
    for (mut at, mut piece) in pieces {
        while !piece.is_empty() {
            let follows = out.last().is_some_and(|(start, _)| start + open_len == at);
            if !follows || open_len == BUCKET {
                out.push((at, Vec::new()));
                open_len = 0;
            }
            let n = piece.len().min(BUCKET - open_len);
            let (head, rest) = std::mem::take(&mut piece).split_at_mut(n);
            out.last_mut().expect("a window is open").1.push(head);
            open_len += n;
            at += n;
            piece = rest;
        }
    }
    out
}

#[cfg(feature = "mpi")]
mod mpi_calls {
    use mpi::ffi;
    use mpi::raw::AsRaw;

    use super::Window;
    use crate::mpi_world::MpiWorld;

    // MPI's default error handler ends the run on a failed call, so no call returns one.
    impl MpiWorld {
        /// Starts `w`'s sum: an all-reduce of the whole window, or a reduce-scatter of it, into
        /// where this rank's share lands.
        pub(super) fn start_sum(&self, w: &mut Window<'_>) -> ffi::MPI_Request {
            let recv = w.landing().cast();
            // SAFETY: `send`, the staging buffer or the buffer the share lands in, and `counts`
            // stay allocated and unmoved, and nothing else reads or writes them, until the
            // request is completed (`BackgroundSums` lands a window, or drops it, only then).
            unsafe {
                let mut request = ffi::RSMPI_REQUEST_NULL;
                let send = w.send.as_ptr().cast();
                if w.counts.is_empty() {
                    ffi::MPI_Iallreduce(
                        send,
                        recv,
                        w.send.len() as i32,
                        ffi::RSMPI_FLOAT,
                        ffi::RSMPI_SUM,
                        self.comm.as_raw(),
                        &mut request,
                    );
                } else {
                    ffi::MPI_Ireduce_scatter(
                        send,
                        recv,
                        w.counts.as_ptr(),
                        ffi::RSMPI_FLOAT,
                        ffi::RSMPI_SUM,
                        self.comm.as_raw(),
                        &mut request,
                    );
                }
                request
            }
        }

        /// Lets MPI move the requests along, without waiting: the indices of those it
        /// completed now (null afterwards).
        pub(super) fn completed(&self, requests: &mut [ffi::MPI_Request]) -> Vec<usize> {
            let mut indices = vec![0i32; requests.len()];
            let mut count = 0;
            // SAFETY: the requests are live or null; their statuses are not asked for.
            unsafe {
                ffi::MPI_Testsome(
                    requests.len() as i32,
                    requests.as_mut_ptr(),
                    &mut count,
                    indices.as_mut_ptr(),
                    ffi::RSMPI_STATUSES_IGNORE,
                );
            }
            // MPI_UNDEFINED (negative) when every request was null already.
            indices.truncate(count.max(0) as usize);
            indices.into_iter().map(|i| i as usize).collect()
        }

        /// Waits for every request (null afterwards).
        pub(super) fn wait(&self, requests: &mut [ffi::MPI_Request]) {
            // SAFETY: as `completed`.
            unsafe {
                ffi::MPI_Waitall(
                    requests.len() as i32,
                    requests.as_mut_ptr(),
                    ffi::RSMPI_STATUSES_IGNORE,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_join_pieces_that_follow_and_split_at_the_bucket() {
        let mut a = vec![1f32; 3];
        let mut b = vec![2f32; BUCKET];
        let mut c = vec![3f32; 2];
        let mut empty: Vec<f32> = Vec::new();
        let pieces = vec![
            (10, a.as_mut_slice()),
            (13, empty.as_mut_slice()),
            (13, b.as_mut_slice()),
            // Not after b: a window of its own.
            (BUCKET + 100, c.as_mut_slice()),
        ];
        let w = windows(pieces);
        let shape: Vec<(usize, Vec<usize>)> = w
            .iter()
            .map(|(at, ps)| (*at, ps.iter().map(|p| p.len()).collect()))
            .collect();
        assert_eq!(
            shape,
            vec![
                (10, vec![3, BUCKET - 3]),
                (10 + BUCKET, vec![3]),
                (BUCKET + 100, vec![2]),
            ]
        );
        assert_eq!(w[1].1[0], [2.0; 3]);
    }

    #[test]
    fn meet_is_the_overlap_or_empty() {
        assert_eq!(meet(&(5..10), &(7..20)), 7..10);
        assert_eq!(meet(&(5..10), &(0..6)), 5..6);
        assert!(meet(&(5..10), &(12..20)).is_empty());
        assert!(meet(&(5..10), &(0..3)).is_empty());
    }

    /// Alone, the sums leave the buffers as they are and count what they would send.
    #[test]
    fn sums_alone_keep_the_values() {
        let world = World::solo();
        let mut a = vec![1f32, 2.0];
        let mut b = vec![3f32];
        let mut sums = world.sums_in_background(Summed::Everywhere);
        sums.start(vec![(0, a.as_mut_slice())], true);
        sums.start(vec![(2, b.as_mut_slice())], false);
        sums.finish();
        assert_eq!((a, b), (vec![1.0, 2.0], vec![3.0]));
        let t = world.traffic();
        assert_eq!((t.all_reduce, t.overlapped), (3, 2));
    }
}
