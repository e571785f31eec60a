//! Continuous batching: which tokens each step feeds, and what becomes of the tokens it picks.
//! Slots are filled in request order; a step feeds one token of every decoding slot, then prompt
//! tokens of the slots still reading theirs, while the step has room.

use super::{Backend, DecodeOptions, Event, Request, Sampling, Step};
use crate::error::Result;
use crate::rng::{mix64, Rng64};

/// What a backend is sized for: `slots` sequences of up to `positions` positions each, and up to
/// `tokens` tokens a step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Room {
    pub slots: usize,
    pub positions: usize,
    pub tokens: usize,
}

/// A sequence in a slot: its request, how many prompt tokens it has fed, its answer so far, and
/// its generator.
struct Active {
    request: usize,
    fed: usize,
    out: Vec<u32>,
    rng: Rng64,
}

impl Active {
    /// The next draw in `[0, 1)` (24 bits, exact in f32); none is used when decoding greedily.
    fn draw(&mut self, sampling: &Sampling) -> f32 {
        match sampling {
            Sampling::Greedy => 0.0,
            Sampling::Sample { .. } => (self.rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32,
        }
    }
}

impl Step {
    fn clear(&mut self) {
        self.ids.clear();
        self.slots.clear();
        self.positions.clear();
        self.picks.clear();
        self.draws.clear();
    }

    fn feed(&mut self, id: u32, slot: usize, position: usize) {
        self.ids.push(id);
        self.slots.push(slot as u32);
        self.positions.push(position as u32);
    }

    /// A next token is chosen after the last token fed.
    fn pick_last(&mut self, draw: f32) {
        self.picks.push(self.ids.len() - 1);
        self.draws.push(draw);
    }
}

/// Decodes every request on `backend` (sized by `room`): the answers in request order.
pub(crate) fn run(
    backend: &mut dyn Backend,
    room: Room,
    requests: &[Request],
    opts: &DecodeOptions,
    stop: &[u32],
    mut on_event: impl FnMut(Event),
) -> Result<Vec<Vec<u32>>> {
    let seed = match opts.sampling {
        Sampling::Sample { seed, .. } => seed,
        Sampling::Greedy => 0,
    };
    let mut out = vec![Vec::new(); requests.len()];
    let mut slots: Vec<Option<Active>> = (0..room.slots).map(|_| None).collect();
    let mut next = 0;
    let mut step = Step::default();
    // The slot each pick of the step belongs to.
    let mut owners: Vec<usize> = Vec::with_capacity(room.slots);
    loop {
        for slot in slots.iter_mut().filter(|s| s.is_none()) {
            let Some(r) = requests.get(next) else {
                break;
            };
            *slot = Some(Active {
                request: next,
                fed: 0,
                out: Vec::with_capacity(opts.max_new_tokens.min(1 << 12)),
                rng: Rng64::new(mix64(seed ^ mix64(r.stream))),
            });
            next += 1;
        }
        if slots.iter().all(Option::is_none) {
            return Ok(out);
        }
        step.clear();
        owners.clear();
        for (i, a) in slots.iter_mut().enumerate() {
            let Some(a) = a else { continue };
            let prompt = requests[a.request].prompt;
            if let Some(&last) = a.out.last() {
                step.feed(last, i, prompt.len() + a.out.len() - 1);
                step.pick_last(a.draw(&opts.sampling));
                owners.push(i);
            }
        }
        let mut budget = room.tokens - step.ids.len();
        for (i, a) in slots.iter_mut().enumerate() {
            let Some(a) = a else { continue };
            let prompt = requests[a.request].prompt;
            if a.fed == prompt.len() || budget == 0 {
                continue;
            }
            let n = (prompt.len() - a.fed).min(budget);
            for (j, &id) in prompt.iter().enumerate().skip(a.fed).take(n) {
                step.feed(id, i, j);
            }
            a.fed += n;
            budget -= n;
            if a.fed == prompt.len() {
                step.pick_last(a.draw(&opts.sampling));
                owners.push(i);
            }
        }
        let picked = backend.step(&step)?;
        for (&slot, &token) in owners.iter().zip(&picked) {
            let a = slots[slot].as_mut().expect("a pick's slot is active");
            a.out.push(token);
            on_event(Event::Token {
                request: a.request,
                token,
            });
            if stop.contains(&token) || a.out.len() == opts.max_new_tokens {
                let a = slots[slot].take().expect("active");
                on_event(Event::Finished { request: a.request });
                out[a.request] = a.out;
            }
        }
    }
}
