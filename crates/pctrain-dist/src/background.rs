//! Sums over the ranks started while the caller still computes: a backward hands over each
//! layer's gradients as soon as it has finished them, each goes out at once as MPI's non-blocking
//! all-reduce (or reduce-scatter, ZeRO stage 2), and all are waited for at the end. MPI moves
//! them whenever the process is in MPI, so each hand-over also lets the earlier ones go on.

use std::ops::Range;

use crate::{World, BUCKET};

/// Where a sum in the background leaves its result.
#[derive(Debug, Clone, Copy)]
pub enum Summed<'c> {
    /// In every rank's buffers, whole (an all-reduce).
    Everywhere,
    /// In each rank's span alone: rank `r` owns `counts[r]` elements, the spans laid end to end
    /// in rank order over the whole (a reduce-scatter; ZeRO stage 2's gradients). Each buffer is
    /// cut down to its elements in this rank's span as soon as its sum has started, and they
    /// receive the sum.
    Spans(&'c [usize]),
}

/// Up to [`BUCKET`] consecutive floats of the whole, summed by one collective: MPI's send buffer
/// (a copy of them), this rank's share of the sum, and the buffers it lands in.
struct Window<'g> {
    /// Where its first float starts in the whole.
    at: usize,
    /// Its buffers, laid end to end from `at`, when the sum lands in them whole ([`Summed::Everywhere`]).
    pieces: Vec<&'g mut [f32]>,
    send: Vec<f32>,
    /// This rank's share of the sum, in the whole: the window, or its part of this rank's span.
    mine: Range<usize>,
    /// Where `mine` lands first, to be copied into its buffers; empty when it lands in its one
    /// buffer directly.
    staging: Vec<f32>,
    /// Each rank's share of the window, for a reduce-scatter (MPI reads it until the end).
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    counts: Vec<i32>,
}

impl<'g> Window<'g> {
    /// The window of the floats of `run` from `at`, this rank's share of the sum `mine` (its
    /// part of the whole) landing in a staging buffer.
    fn copied(at: usize, run: &[&mut [f32]], mine: Range<usize>, counts: Vec<i32>) -> Self {
        let len: usize = run.iter().map(|p| p.len()).sum();
        let mut send = Vec::with_capacity(len);
        run.iter().for_each(|p| send.extend_from_slice(p));
        Window {
            at,
            pieces: Vec::new(),
            send,
            staging: vec![0f32; mine.len()],
            mine,
            counts,
        }
    }

    /// The window of `run` from `at`, whose sum lands in `run` itself: directly when it is one
    /// buffer.
    fn kept(at: usize, run: Vec<&'g mut [f32]>, mine: Range<usize>, counts: Vec<i32>) -> Self {
        let mut w = Window::copied(at, &run, mine, counts);
        if run.len() == 1 {
            w.staging = Vec::new();
        }
        w.pieces = run;
        w
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
}

/// A buffer cut down to this rank's span: where its elements lie in the whole, and the buffer.
type SpanBuffer<'g> = (Range<usize>, &'g mut Vec<f32>);

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
    /// The buffers cut down to this rank's span, with [`Summed::Spans`].
    targets: Vec<SpanBuffer<'g>>,
    /// Floats of copies the windows not landed hold.
    held: usize,
    /// One per window (null once completed).
    #[cfg(feature = "mpi")]
    requests: Vec<mpi::ffi::MPI_Request>,
}

/// Floats of copies (send buffers, staged sums) held at once (4 MB): past this a new window
/// waits for the oldest to land, so the copies never grow with the model. On llama-10m, 2 ranks,
/// this bound rather than 8M floats takes 20 MiB off the peak RSS at no cost in speed.
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
    /// [`Summed::Spans`] each buffer is cut down to this rank's span now. Alone, the buffers
    /// already hold the sum. `overlapped`: the caller computes more before
    /// [`BackgroundSums::finish`] (counted in [`crate::Traffic::overlapped`]).
    pub fn start(&mut self, mut pieces: Vec<(usize, &'g mut Vec<f32>)>, overlapped: bool) {
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
        let Some(spans) = self.spans.clone() else {
            let slices = pieces.into_iter().map(|(at, p)| (at, p.as_mut_slice()));
            self.start_kept(slices.collect());
            return;
        };
        let views = pieces.iter_mut().map(|(at, p)| (*at, p.as_mut_slice()));
        self.start_copied(views.collect());
        let span = &spans[self.world.rank()];
        for (at, buffer) in pieces {
            let kept = meet(&(at..at + buffer.len()), span);
            buffer.truncate(kept.end - at);
            buffer.drain(..kept.start - at);
            buffer.shrink_to_fit();
            self.targets.push((kept, buffer));
        }
    }

    /// Starts the windows of `pieces`, whose sums land in them.
    fn start_kept(&mut self, pieces: Vec<(usize, &'g mut [f32])>) {
        for (at, run) in windows(pieces) {
            let (len, (mine, counts)) = self.share(at, &run);
            let staged = if run.len() == 1 { 0 } else { mine.len() };
            self.make_room(len + staged);
            self.launch(Window::kept(at, run, mine, counts));
        }
    }

    /// Starts the windows of `pieces`, whose sums land in the buffers of spans.
    fn start_copied(&mut self, pieces: Vec<(usize, &mut [f32])>) {
        for (at, run) in windows(pieces) {
            let (len, (mine, counts)) = self.share(at, &run);
            self.make_room(len + mine.len());
            self.launch(Window::copied(at, &run, mine, counts));
        }
    }

    /// The floats of the window of `run` from `at`, this rank's share of its sum (in the whole)
    /// and, for a reduce-scatter, every rank's count.
    fn share(&self, at: usize, run: &[&mut [f32]]) -> (usize, (Range<usize>, Vec<i32>)) {
        let len: usize = run.iter().map(|p| p.len()).sum();
        let whole = at..at + len;
        let share = match &self.spans {
            None => (whole, Vec::new()),
            Some(spans) => (
                meet(&whole, &spans[self.world.rank()]),
                spans.iter().map(|s| meet(&whole, s).len() as i32).collect(),
            ),
        };
        (len, share)
    }

    /// Starts `w`'s sum, and lands those MPI has finished.
    fn launch(&mut self, #[allow(unused_mut)] mut w: Window<'g>) {
        #[cfg(feature = "mpi")]
        if let Some(m) = &self.world.mpi {
            self.requests.push(m.start_sum(&mut w));
        }
        self.held += w.held();
        self.windows.push(w);
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

    /// Window `i`, summed: its staged share copied into its buffers, and its copies freed.
    fn land(&mut self, i: usize) {
        let w = &mut self.windows[i];
        self.held -= w.held();
        if !w.staging.is_empty() {
            let mut at = w.at;
            let kept = w.pieces.iter_mut().map(|p| {
                at += p.len();
                (at - p.len()..at, &mut **p)
            });
            let spans = self
                .targets
                .iter_mut()
                .map(|(r, b)| (r.clone(), b.as_mut_slice()));
            for (range, buffer) in kept.chain(spans) {
                let here = meet(&range, &w.mine);
                if !here.is_empty() {
                    let from = here.start - w.mine.start;
                    let sum = &w.staging[from..from + here.len()];
                    buffer[here.start - range.start..here.end - range.start].copy_from_slice(sum);
                }
            }
        }
        w.pieces = Vec::new();
        w.send = Vec::new();
        w.staging = Vec::new();
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
        sums.start(vec![(0, &mut a)], true);
        sums.start(vec![(2, &mut b)], false);
        sums.finish();
        assert_eq!((a, b), (vec![1.0, 2.0], vec![3.0]));
        let t = world.traffic();
        assert_eq!((t.all_reduce, t.overlapped), (3, 2));
    }
}
