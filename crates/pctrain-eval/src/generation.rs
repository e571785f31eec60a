//! A model's answers to conversations: each prompt rendered by the chat template with its
//! generation prompt, decoded by continuous batching (one answer or several samples a prompt),
//! cut at the model's end tokens, and with the pseudo-code part stripped for models trained to
//! answer with it first.

use std::path::{Path, PathBuf};

use pctrain_data::{ChatTemplate, Message, PcJoin, Record, Role, TextTokenizer};
use pctrain_model::{DecodeOptions, Event, Model, Request, Sampling};
use serde::Serialize;

/// Errors while generating.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(transparent)]
    Data(#[from] pctrain_data::DataError),
    #[error(transparent)]
    Model(#[from] pctrain_model::ModelError),
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("record {id}: {message}")]
    Record { id: String, message: String },
}

/// How answers are decoded.
#[derive(Debug, Clone, Copy)]
pub struct GenerateOptions {
    /// Most tokens an answer may have.
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Answers decoded together.
    pub batch_size: usize,
    /// Answers a prompt (sampled: with greedy decoding they would all be the same).
    pub samples: usize,
}

impl GenerateOptions {
    /// The stream of sample `s` of prompt `i`: it decides the draws of that answer, whatever the
    /// batch size and the number of samples.
    pub fn stream(i: usize, s: usize) -> u64 {
        ((i as u64) << 32) | s as u64
    }

    /// What the model's decoding takes of these options.
    fn decode(&self) -> DecodeOptions {
        DecodeOptions {
            max_new_tokens: self.max_new_tokens,
            sampling: self.sampling,
            slots: self.batch_size.max(1),
        }
    }
}

/// One answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Answer {
    /// The answer, its pseudo-code stripped when the model answers with it.
    pub response: String,
    /// The answer as decoded.
    pub response_raw: String,
    /// Tokens generated, the end token included.
    pub new_tokens: usize,
}

/// A model with what turns its tokens into answers.
pub struct Generator<'a> {
    pub model: &'a Model,
    pub tokenizer: &'a TextTokenizer,
    pub template: &'a ChatTemplate,
    /// Token ids that end an answer.
    pub stop: Vec<u32>,
    /// Stripped from the start of answers.
    pub strip: Option<PcJoin>,
}

/// The ids that end an answer: every `eos_token_id` of `generation_config.json` in `model_dir`,
/// the tokenizer's EOS, and the token that closes the template's assistant turn.
pub fn stop_tokens(
    model_dir: Option<&Path>,
    tokenizer: &TextTokenizer,
    template: &ChatTemplate,
) -> Result<Vec<u32>, GenerateError> {
    let mut stop = Vec::new();
    if let Some(path) = model_dir
        .map(|d| d.join("generation_config.json"))
        .filter(|p| p.is_file())
    {
        let err = |message: String| GenerateError::File {
            path: path.clone(),
            message,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| err(format!("malformed JSON: {e}")))?;
        let ids = match &v["eos_token_id"] {
            serde_json::Value::Null => Vec::new(),
            serde_json::Value::Array(a) => a.clone(),
            one => vec![one.clone()],
        };
        for id in ids {
            let id = id
                .as_u64()
                .ok_or_else(|| err(format!("`eos_token_id`: {id} is not a token id")))?;
            stop.push(id as u32);
        }
    }
    let named = [
        tokenizer.special.eos.clone(),
        template.turn_end(&tokenizer.special),
    ];
    stop.extend(
        named
            .iter()
            .flatten()
            .filter_map(|t| tokenizer.token_to_id(t)),
    );
    stop.sort_unstable();
    stop.dedup();
    Ok(stop)
}

/// The prompt of a record: its conversation up to the last user turn (a final answer dropped),
/// after `system` when it has no system message of its own.
pub fn prompt_of(record: &Record, system: Option<&str>) -> Result<Vec<Message>, GenerateError> {
    let last_user = record
        .messages
        .iter()
        .rposition(|m| m.role == Role::User)
        .ok_or_else(|| GenerateError::Record {
            id: record.id.clone(),
            message: "has no user turn to answer".into(),
        })?;
    let mut messages = Vec::with_capacity(last_user + 2);
    if let Some(s) = system.filter(|_| record.messages[0].role != Role::System) {
        messages.push(Message::new(Role::System, s));
    }
    messages.extend_from_slice(&record.messages[..=last_user]);
    Ok(messages)
}

impl Generator<'_> {
    /// The prompt's tokens, as `apply_chat_template(add_generation_prompt=True)` gives them.
    pub fn prompt_ids(&self, messages: &[Message]) -> Result<Vec<u32>, GenerateError> {
        let text = self
            .template
            .render(messages, true, &self.tokenizer.special)?;
        Ok(self.tokenizer.encode(&text)?.ids)
    }

    /// The answer of generated `tokens`.
    fn answer(&self, tokens: &[u32]) -> Result<Answer, GenerateError> {
        let body = match tokens.last() {
            Some(t) if self.stop.contains(t) => &tokens[..tokens.len() - 1],
            _ => tokens,
        };
        let raw = self.tokenizer.decode_text(body)?;
        let response = match &self.strip {
            Some(join) => join.strip(&raw).to_string(),
            None => raw.clone(),
        };
        Ok(Answer {
            response,
            response_raw: raw,
            new_tokens: tokens.len(),
        })
    }

    /// Answers every prompt `opts.samples` times: per prompt, in their order, its samples in
    /// order. `done(n)` is told how many answers are finished as each one ends.
    pub fn answer_all(
        &self,
        prompts: &[Vec<Message>],
        opts: &GenerateOptions,
        mut done: impl FnMut(usize),
    ) -> Result<Vec<Vec<Answer>>, GenerateError> {
        let k = opts.samples.max(1);
        let jobs: Vec<(usize, usize)> = (0..prompts.len() * k).map(|j| (j / k, j % k)).collect();
        let mut answers: Vec<Option<Answer>> = vec![None; jobs.len()];
        let mut finished = 0;
        self.answer_jobs(prompts, &jobs, opts, |j, a| {
            answers[j] = Some(a);
            finished += 1;
            done(finished);
        })?;
        let answers: Vec<Answer> = answers
            .into_iter()
            .map(|a| a.expect("every job is answered"))
            .collect();
        Ok(answers.chunks(k).map(<[Answer]>::to_vec).collect())
    }

    /// Answers `jobs`, each `(prompt, sample)`: an index into `prompts` and which of its samples
    /// (its draws come from [`GenerateOptions::stream`], so an answer is the same whatever jobs
    /// are decoded beside it). `done(job, answer)` gets each answer as it ends.
    pub fn answer_jobs(
        &self,
        prompts: &[Vec<Message>],
        jobs: &[(usize, usize)],
        opts: &GenerateOptions,
        mut done: impl FnMut(usize, Answer),
    ) -> Result<(), GenerateError> {
        let mut ids: Vec<Option<Vec<u32>>> = vec![None; prompts.len()];
        for &(i, _) in jobs {
            if ids[i].is_none() {
                ids[i] = Some(self.prompt_ids(&prompts[i])?);
            }
        }
        let requests: Vec<Request> = jobs
            .iter()
            .map(|&(i, s)| Request {
                prompt: ids[i].as_deref().expect("tokenised above"),
                stream: GenerateOptions::stream(i, s),
            })
            .collect();
        let mut tokens: Vec<Vec<u32>> = vec![Vec::new(); jobs.len()];
        let mut failed = None;
        self.model
            .generate_all(&requests, &opts.decode(), &self.stop, |e| match e {
                Event::Token { request, token } => tokens[request].push(token),
                Event::Finished { request } => {
                    match self.answer(&std::mem::take(&mut tokens[request])) {
                        Ok(a) => done(request, a),
                        Err(e) => {
                            failed.get_or_insert(e);
                        }
                    }
                }
            })?;
        failed.map_or(Ok(()), Err)
    }

    /// Answers one prompt, handing `text` each piece of the raw answer as it is decoded.
    pub fn stream(
        &self,
        messages: &[Message],
        opts: &GenerateOptions,
        mut text: impl FnMut(&str),
    ) -> Result<Answer, GenerateError> {
        let ids = self.prompt_ids(messages)?;
        let mut tokens = Vec::new();
        let mut shown = 0;
        let mut failed = None;
        let request = Request {
            prompt: &ids,
            stream: GenerateOptions::stream(0, 0),
        };
        let all = self
            .model
            .generate_all(&[request], &opts.decode(), &self.stop, |e| {
                let Event::Token { token: t, .. } = e else {
                    return;
                };
                if failed.is_some() || self.stop.contains(&t) {
                    return;
                }
                tokens.push(t);
                match self.tokenizer.decode_text(&tokens) {
                    // A character split across tokens waits for its last byte.
                    Ok(s) if !s.ends_with('\u{fffd}') && s.len() > shown => {
                        if s.is_char_boundary(shown) {
                            text(&s[shown..]);
                        }
                        shown = s.len();
                    }
                    Ok(_) => {}
                    Err(e) => failed = Some(e),
                }
            })?;
        if let Some(e) = failed {
            return Err(e.into());
        }
        self.answer(&all[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_lose_their_end_token_and_their_pseudo_code() {
        let tokenizer = TextTokenizer::tiny().unwrap();
        let template =
            ChatTemplate::from_builtin(pctrain_data::template::builtin("tulu").unwrap()).unwrap();
        let model = pctrain_trainer::tiny_model(0, &candle_core::Device::Cpu).unwrap();
        let stop = stop_tokens(None, &tokenizer, &template).unwrap();
        let eos = tokenizer.token_to_id("<|end_of_text|>").unwrap();
        assert_eq!(stop, [eos]);
        let join = PcJoin::default();
        let text = join.join("def answer():\n    return greeting()", "Hello there.");
        let mut tokens = tokenizer.encode(&text).unwrap().ids;
        tokens.push(eos);
        let g = Generator {
            model: &model,
            tokenizer: &tokenizer,
            template: &template,
            stop,
            strip: Some(join),
        };
        let a = g.answer(&tokens).unwrap();
        assert_eq!(a.response, "Hello there.");
        assert_eq!(a.response_raw, text);
        assert_eq!(a.new_tokens, tokens.len());
    }

    #[test]
    fn a_prompt_is_the_conversation_up_to_its_last_user_turn() {
        let record = Record {
            id: "r".into(),
            dataset: None,
            messages: vec![
                Message::new(Role::User, "first"),
                Message::new(Role::Assistant, "reply"),
                Message::new(Role::User, "second"),
                Message::new(Role::Assistant, "the answer to drop"),
            ],
            pseudo_code: vec![None, None],
            constraints: Vec::new(),
        };
        let p = prompt_of(&record, Some("Be brief.")).unwrap();
        assert_eq!(p.len(), 4);
        assert_eq!(p[0], Message::new(Role::System, "Be brief."));
        assert_eq!(p[3], Message::new(Role::User, "second"));
    }
}
