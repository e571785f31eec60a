//! Sums over the ranks started while the caller still computes: a backward hands over each
//! part of its gradients as soon as it has finished them, each goes out at once as MPI's
//! non-blocking all-reduce (or reduce-scatter, ZeRO stage 2), and those not done are waited for
//! at the end (or earlier, when the copies in flight reach their bound). MPI moves them whenever
//! the process is in MPI, so each hand-over also lets the earlier ones go on. MPI reads and
//! writes only copies the sums own (each window's send buffer and staged share), never the
//! caller's buffers, which get their share when a window lands.

use std::ops::Range;

use crate::{World, BUCKET};

/// Where a sum in the background leaves its result.
#[derive(Debug, Clone, Copy)]
pub enum Summed<'c> {
    /// In every rank's buffers, whole (an all-reduce).
    Everywhere,
    /// In each rank's span alone: rank `r` owns `counts[r]` elements, the spans laid end to end
    /// in rank order over the whole (a reduce-scatter; ZeRO stage 2's gradients). Each buffer is
    /// cut down to its elements in this rank's span when it is handed over, and they receive the
    /// sum.
    Spans(&'c [usize]),
}

/// Up to [`BUCKET`] consecutive floats of the whole, summed by one collective: MPI's send buffer
/// (a copy of them) and this rank's share of the sum.
struct Window {
    /// Where its first float starts in the whole.
    at: usize,
    send: Vec<f32>,
    /// This rank's share of the sum, in the whole: the window, or its part of this rank's span.
    mine: Range<usize>,
    /// Where MPI writes `mine`, to be copied into the buffers it belongs to.
    staging: Vec<f32>,
    /// Each rank's share of the window, for a reduce-scatter (MPI reads it until the end).
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    counts: Vec<i32>,
}

impl Window {
    /// Floats of copies it holds until it lands.
    fn held(&self) -> usize {
        self.send.len() + self.staging.len()
    }
}

/// A buffer handed over, where its elements lie in the whole (its span's alone, once cut).
type Target<'g> = (Range<usize>, &'g mut Vec<f32>);

/// Sums over the ranks of buffers handed over part by part (each with where it starts in the
/// whole), every part's started as soon as it is handed over and landed in its buffers once MPI
/// has summed it (the copies freed then); [`BackgroundSums::finish`] waits for the rest. Dropped
/// unfinished, it waits too, and lands nothing more: the buffers are left partly summed (and,
/// with [`Summed::Spans`], already cut to the span).
pub struct BackgroundSums<'w, 'g> {
    world: &'w World,
    /// Every rank's span of the whole, with [`Summed::Spans`].
    spans: Option<Vec<Range<usize>>>,
    /// Every window started; those landed hold nothing.
    windows: Vec<Window>,
    /// Every buffer handed over.
    targets: Vec<Target<'g>>,
    /// Floats of copies the windows not landed hold.
    held: usize,
    /// One per window (null once completed).
    #[cfg(feature = "mpi")]
    requests: Vec<mpi::ffi::MPI_Request>,
}

/// Floats of copies (send buffers, staged shares) held at once, 4 MB: before each window is made,
/// the oldest land (waiting for MPI) until it fits, so the copies do not grow with the model (a
/// window alone may pass it). On llama-10m, 2 ranks, this bound rather than 8M floats takes
/// 20 MiB off the peak RSS at no cost in speed.
#[cfg(feature = "mpi")]
const HELD: usize = BUCKET / 4;

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
            targets: Vec::new(),
            held: 0,
            #[cfg(feature = "mpi")]
            requests: Vec::new(),
        }
    }
}

impl<'g> BackgroundSums<'_, 'g> {
    /// Starts the sums of `pieces` (each with where it starts in the whole), the same on every
    /// rank in the same order, and lands those started before that MPI has finished. With
    /// [`Summed::Spans`] each buffer is cut down to this rank's span now. `overlapped`: the
    /// caller computes more before [`BackgroundSums::finish`] (counted in
    /// [`crate::Traffic::overlapped`]).
    pub fn start(&mut self, pieces: Vec<(usize, &'g mut Vec<f32>)>, overlapped: bool) {
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
        let runs = windows(pieces.iter().map(|(at, p)| (*at, p.len())));
        // The buffers become targets before any sum starts, so that no window lands before its
        // buffers are there. With spans, each keeps its span's values, and its whole values move
        // out to be copied from.
        let span = self.spans.as_ref().map(|s| s[self.world.rank()].clone());
        let first = self.targets.len();
        let mut wholes = Vec::new();
        for (at, buffer) in pieces {
            let whole = at..at + buffer.len();
            let kept = match &span {
                None => whole,
                Some(span) => {
                    let kept = meet(&whole, span);
                    let values = buffer[kept.start - at..kept.end - at].to_vec();
                    wholes.push((at, std::mem::replace(buffer, values)));
                    kept
                }
            };
            self.targets.push((kept, buffer));
        }
        for run in runs {
            let (mine, counts) = match &self.spans {
                None => (run.clone(), Vec::new()),
                Some(spans) => (
                    meet(&run, &spans[self.world.rank()]),
                    spans.iter().map(|s| meet(&run, s).len() as i32).collect(),
                ),
            };
            self.make_room(run.len() + mine.len());
            let send = match &span {
                None => copy_of(
                    &run,
                    self.targets[first..].iter().map(|(r, b)| (r.start, &b[..])),
                ),
                Some(_) => copy_of(&run, wholes.iter().map(|(at, b)| (*at, &b[..]))),
            };
            let w = Window {
                at: run.start,
                send,
                staging: vec![0f32; mine.len()],
                mine,
                counts,
            };
            self.held += w.held();
            self.launch(w);
        }
    }

    /// Starts `w`'s sum, and lands those MPI has finished. Without MPI (a world of one, or one
    /// simulated in tests), every rank gives this rank's values: the share is them times the
    /// ranks, landed at once.
    fn launch(&mut self, mut w: Window) {
        #[cfg(feature = "mpi")]
        if let Some(m) = &self.world.mpi {
            self.requests.push(m.start_sum(&mut w));
            self.windows.push(w);
            for i in m.completed(&mut self.requests) {
                self.land(i);
            }
            return;
        }
        let own = w.mine.start - w.at..w.mine.end - w.at;
        let ranks = self.world.size() as f32;
        for (s, v) in w.staging.iter_mut().zip(&w.send[own]) {
            *s = v * ranks;
        }
        self.windows.push(w);
        self.land(self.windows.len() - 1);
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

    /// Window `i`, summed: its share copied into the buffers it belongs to, and its copies freed.
    fn land(&mut self, i: usize) {
        let w = &mut self.windows[i];
        self.held -= w.held();
        for (range, buffer) in self.targets.iter_mut() {
            let here = meet(range, &w.mine);
            if !here.is_empty() {
                let from = here.start - w.mine.start;
                let sum = &w.staging[from..from + here.len()];
                buffer[here.start - range.start..here.end - range.start].copy_from_slice(sum);
            }
        }
        w.send = Vec::new();
        w.staging = Vec::new();
        w.mine = w.at..w.at;
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

/// The windows of at most [`BUCKET`] consecutive floats of the whole over `pieces` (where each
/// starts, and its floats): runs of pieces that follow each other, cut where a window ends.
fn windows(pieces: impl IntoIterator<Item = (usize, usize)>) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    for (mut at, len) in pieces {
        let end = at + len;
        while at < end {
            match out.last_mut() {
                Some(w) if w.end == at && w.len() < BUCKET => {
                    w.end = end.min(w.start + BUCKET);
                    at = w.end;
                }
                _ => {
                    out.push(at..end.min(at + BUCKET));
                    at = out.last().expect("just pushed").end;
                }
            }
        }
    }
    out
}

/// The floats of `range` of the whole, from `sources` (where each starts, and its floats).
fn copy_of<'a>(
    range: &Range<usize>,
    sources: impl Iterator<Item = (usize, &'a [f32])>,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(range.len());
    for (at, values) in sources {
        let here = meet(&(at..at + values.len()), range);
        out.extend_from_slice(&values[here.start - at..here.end - at]);
    }
    assert_eq!(out.len(), range.len(), "the sources cover the window");
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
        /// its staging buffer.
        pub(super) fn start_sum(&self, w: &mut Window) -> ffi::MPI_Request {
            let recv = w.staging.as_mut_ptr().cast();
            // SAFETY: `send`, `staging` and `counts` are heap buffers the window owns; they stay
            // allocated and unmoved, and nothing else reads or writes them, until the request is
            // completed (`BackgroundSums` lands a window only then, and waits when dropped; if
            // it is leaked, so are they).
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
        let pieces = [(10, 3), (13, 0), (13, BUCKET), (BUCKET + 100, 2)];
        assert_eq!(
            windows(pieces),
            vec![
                10..10 + BUCKET,
                10 + BUCKET..13 + BUCKET,
                // Not after the one before: a window of its own.
                BUCKET + 100..BUCKET + 102,
            ]
        );
    }

    #[test]
    fn a_window_is_copied_from_the_pieces_it_spans() {
        let (a, b) = ([1f32, 2.0, 3.0], [4f32, 5.0]);
        let sources = || [(10, &a[..]), (13, &b[..])].into_iter();
        assert_eq!(copy_of(&(11..14), sources()), [2.0, 3.0, 4.0]);
        assert_eq!(copy_of(&(13..15), sources()), [4.0, 5.0]);
    }

    #[test]
    fn meet_is_the_overlap_or_empty() {
        assert_eq!(meet(&(5..10), &(7..20)), 7..10);
        assert_eq!(meet(&(5..10), &(0..6)), 5..6);
        assert!(meet(&(5..10), &(12..20)).is_empty());
        assert!(meet(&(5..10), &(0..3)).is_empty());
    }

    /// Alone, the sums leave the buffers as they are and count what they send.
    #[test]
    fn sums_alone_keep_the_values() {
        let world = World::solo();
        let mut a = vec![1f32, 2.0];
        let mut b = vec![3f32];
        let mut sums = world.sums_in_background(Summed::Everywhere);
        sums.start(vec![(0, &mut a)], true);
        sums.start(vec![(2, &mut b)], false);
        sums.finish();
        assert_eq!((a, b), (vec![1.0, 2.0], vec![3.0]));
        let t = world.traffic();
        assert_eq!((t.all_reduce, t.overlapped), (3, 2));
    }

    /// Every rank gets the whole sum of each buffer, one of more than one window included.
    #[test]
    fn every_rank_gets_the_whole_sums() {
        let world = World::simulated(0, 2);
        let mut a: Vec<f32> = (0..BUCKET + 3).map(|i| i as f32).collect();
        let mut b = vec![1f32, 2.0];
        let mut sums = world.sums_in_background(Summed::Everywhere);
        sums.start(vec![(0, &mut a), (BUCKET + 3, &mut b)], true);
        sums.finish();
        assert!(a.iter().enumerate().all(|(i, &v)| v == 2.0 * i as f32));
        assert_eq!(b, [2.0, 4.0]);
    }

    /// Rank 1 of 2 (the other giving the same values) keeps its span alone of each buffer, with
    /// the span's sums, though its span starts inside a buffer of more than one window and the
    /// windows land as soon as they start.
    #[test]
    fn a_rank_keeps_its_span_of_each_buffer_with_its_sums() {
        let world = World::simulated(1, 2);
        let big = BUCKET + 10;
        let value = |i: usize| i as f32;
        let mut a: Vec<f32> = (0..big).map(value).collect();
        let mut b: Vec<f32> = (big..big + 5).map(value).collect();
        let mut c: Vec<f32> = (big + 5..big + 8).map(value).collect();
        // Rank 1's span: from the middle of `a` to the end.
        let counts = [big / 2, big + 8 - big / 2];
        let mut sums = world.sums_in_background(Summed::Spans(&counts));
        sums.start(vec![(0, &mut a), (big, &mut b)], true);
        sums.start(vec![(big + 5, &mut c)], false);
        sums.finish();
        let want = |r: Range<usize>| r.map(|i| 2.0 * value(i)).collect::<Vec<f32>>();
        assert_eq!(a, want(big / 2..big));
        assert_eq!(b, want(big..big + 5));
        assert_eq!(c, want(big + 5..big + 8));
        let t = world.traffic();
        assert_eq!(
            (t.reduce_scatter, t.overlapped),
            (big as u64 + 8, big as u64 + 5)
        );
    }
}
