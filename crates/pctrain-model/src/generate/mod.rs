//! Inference: answers to many prompts by continuous batching over a key/value cache allocated
//! once. A fixed number of slots decode together; when a sequence ends, the next prompt is fed
//! into its slot (a long prompt in chunks, beside the other slots' decoding), so the batch stays
//! full to the end. On the CPU every step runs on kernels whose result for a token depends on
//! that token's sequence alone, so an answer is the same whatever the batch size or the slot it
//! ran in, and a sampled sequence draws from its own generator, so a seed gives the same answers
//! at any batch size. (On a GPU the products are cuBLAS's, which picks its algorithm by the number
//! of rows: the last bits, and so a near tie, may move with the batch.)

mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
mod sample;
mod schedule;

pub use sample::{argmax, pick, Sampling};

use crate::error::{ModelError, Result};
use crate::model::Model;

/// A prompt to answer, and the stream of its draws (with [`Sampling::Sample`], two requests with
/// the same stream and prompt get the same answer).
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub prompt: &'a [u32],
    pub stream: u64,
}

/// How a set of requests is decoded.
#[derive(Debug, Clone, Copy)]
pub struct DecodeOptions {
    /// Most tokens an answer may have (its end token included).
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Sequences decoded together.
    pub slots: usize,
}

/// What decoding reports as it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// `token` was chosen as the next token of request `request`.
    Token { request: usize, token: u32 },
    /// Request `request` has its whole answer.
    Finished { request: usize },
}

/// Prompt tokens a step feeds at most, beside one token per decoding slot.
pub(crate) const PREFILL_TOKENS: usize = 256;

/// One step of decoding: tokens placed in the cache, and the rows whose next token is chosen.
#[derive(Debug, Default)]
pub(crate) struct Step {
    /// `[N]` each: the token, its slot and its position.
    pub ids: Vec<u32>,
    pub slots: Vec<u32>,
    pub positions: Vec<u32>,
    /// The tokens (indices into `ids`) after which a next token is chosen, with their draws.
    pub picks: Vec<usize>,
    pub draws: Vec<f32>,
}

/// Where a step runs: it writes the keys and values of the step's tokens into its cache and
/// returns the chosen token of each pick.
pub(crate) trait Backend {
    fn step(&mut self, step: &Step) -> Result<Vec<u32>>;
}

impl Model {
    /// Generates up to `max_new` tokens after `prompt`, stopping after any of `stop`.
    pub fn generate(
        &self,
        prompt: &[u32],
        max_new: usize,
        sampling: Sampling,
        stop: &[u32],
    ) -> Result<Vec<u32>> {
        let request = Request { prompt, stream: 0 };
        let opts = DecodeOptions {
            max_new_tokens: max_new,
            sampling,
            slots: 1,
        };
        let mut out = self.generate_all(&[request], &opts, stop, |_| {})?;
        Ok(out.pop().unwrap_or_default())
    }

    /// Generates each request's answer: up to `opts.max_new_tokens` tokens, ending after any of
    /// `stop`, in the order of `requests`. `on_event` sees every token as it is chosen and every
    /// answer as it ends.
    pub fn generate_all(
        &self,
        requests: &[Request],
        opts: &DecodeOptions,
        stop: &[u32],
        mut on_event: impl FnMut(Event),
    ) -> Result<Vec<Vec<u32>>> {
        let vocab = self.config.vocab_size;
        for (i, r) in requests.iter().enumerate() {
            if r.prompt.is_empty() {
                return Err(ModelError::Input(format!("prompt {i} has no tokens")));
            }
            if let Some(id) = r.prompt.iter().find(|&&t| t as usize >= vocab) {
                return Err(ModelError::Input(format!(
                    "prompt {i}: token id {id} is outside the vocabulary of {vocab}"
                )));
            }
        }
        if requests.is_empty() || opts.max_new_tokens == 0 {
            // Every answer is whole at once: empty.
            (0..requests.len()).for_each(|request| on_event(Event::Finished { request }));
            return Ok(vec![Vec::new(); requests.len()]);
        }
        let slots = opts.slots.clamp(1, requests.len());
        // The last token chosen is never fed back, so it needs no room.
        let positions = requests
            .iter()
            .map(|r| (r.prompt.len() - 1).saturating_add(opts.max_new_tokens))
            .max()
            .unwrap_or(1);
        let room = schedule::Room {
            slots,
            positions,
            tokens: slots + PREFILL_TOKENS,
        };
        let mut backend = self.backend(room, opts.sampling)?;
        schedule::run(&mut *backend, room, requests, opts, stop, on_event)
    }

    /// The backend the model's weights live on.
    fn backend(&self, room: schedule::Room, sampling: Sampling) -> Result<Box<dyn Backend + '_>> {
        #[cfg(feature = "cuda")]
        if self.device().is_cuda() {
            return Ok(Box::new(cuda::CudaDecoder::new(self, room, sampling)?));
        }
        if !self.on_cpu_kernels() {
            return Err(ModelError::Input(
                "decoding on the CPU needs f32 weights and adapters (load the model in f32)".into(),
            ));
        }
        Ok(Box::new(cpu::CpuDecoder::new(self, room, sampling)?))
    }
}
