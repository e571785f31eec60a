//! The teacher: any OpenAI-compatible chat-completions endpoint (vLLM, TGI, llama.cpp's server, a
//! hosted API). Requests that meet 429, a 5xx, a timeout, a dropped connection or an answer that
//! is not a chat completion are retried with exponential backoff and jitter (honouring
//! `Retry-After`); a request budget caps the whole run. The API key is sent as a bearer token and
//! never printed, logged or written.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{json, Value};

use super::prompts::ChatMessage;
use crate::error::{PseudoError, Result};

/// An API key; its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: String) -> Self {
        ApiKey(key)
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(hidden)")
    }
}

/// How to reach and use the teacher.
#[derive(Debug, Clone)]
pub struct TeacherConfig {
    /// The server's base URL (`http://host:8000/v1`) or its `/chat/completions` endpoint.
    pub url: String,
    pub model: String,
    pub api_key: Option<ApiKey>,
    pub temperature: f64,
    pub max_tokens: u32,
    /// Per request.
    pub timeout: Duration,
    /// Retries of one request after the first try.
    pub max_retries: u32,
    /// The first retry's delay; each further one doubles it (at most 30 s), times a jitter in
    /// [0.5, 1.5).
    pub retry_base: Duration,
    /// Requests the whole run may send (retries included); `None`: no limit.
    pub max_requests: Option<u64>,
}

/// A chat completion's text, and whether the server cut it off (`finish_reason: "length"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub text: String,
    pub truncated: bool,
}

/// Why a request gave no reply. None of these is the record's fault: it is left unwritten, for a
/// later run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TeacherError {
    /// The request budget is spent.
    Budget,
    /// Retries exhausted (the server is down, overloaded, or answers nonsense).
    Failed(String),
    /// The server refuses the run itself (401, 403, 404: a wrong key, URL or model name); the run
    /// stops.
    Fatal(String),
    /// The server refuses this request (400, 413, 422: e.g. a record longer than the teacher's
    /// context) after it has answered others; the turn fails, the run goes on.
    Refused(String),
}

/// Counts over a run.
#[derive(Debug, Default)]
pub struct Usage {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    /// Requests answered with a chat completion.
    pub answered: AtomicU64,
    /// Whether the server reported token counts at least once.
    pub tokens_reported: AtomicBool,
}

/// A teacher client, shared by the pipeline's workers.
pub struct Teacher {
    client: reqwest::blocking::Client,
    endpoint: String,
    /// `endpoint` without user info or query, for messages.
    shown: String,
    config: TeacherConfig,
    pub usage: Usage,
}

/// The outcome of one HTTP exchange.
enum Attempt {
    Done(Reply),
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// An answer no retry changes: its HTTP status and what it said.
    Fail {
        status: u16,
        reason: String,
    },
}

impl Teacher {
    pub fn new(config: TeacherConfig) -> Result<Self> {
        let url = config.url.trim_end_matches('/');
        let endpoint = if url.ends_with("/chat/completions") {
            url.to_string()
        } else {
            format!("{url}/chat/completions")
        };
        // Messages show the URL without user info or query, where credentials may hide.
        let shown = endpoint
            .split(['?', '#'])
            .next()
            .map(|u| match u.split_once("://") {
                Some((scheme, rest)) => match rest.split_once('@') {
                    Some((_, host)) => format!("{scheme}://{host}"),
                    None => u.to_string(),
                },
                None => u.to_string(),
            })
            .unwrap_or_default();
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(PseudoError::Teacher {
                url: shown,
                message: "not an http(s) URL".into(),
            });
        }
        let client = reqwest::blocking::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| PseudoError::Teacher {
                url: shown.clone(),
                message: e.to_string(),
            })?;
        Ok(Teacher {
            client,
            endpoint,
            shown,
            config,
            usage: Usage::default(),
        })
    }

    pub fn model(&self) -> &str {
        &self.config.model
    }

    /// The chat-completions URL requests go to, without credentials.
    pub fn shown_url(&self) -> &str {
        &self.shown
    }

    /// Sends `messages`, retrying as the module says; `salt` varies the jitter between callers.
    pub fn chat(
        &self,
        messages: &[ChatMessage],
        salt: u64,
    ) -> std::result::Result<Reply, TeacherError> {
        let body = json!({
            "model": self.config.model,
            "messages": messages,
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
        });
        let mut last = String::new();
        for attempt in 0..=self.config.max_retries {
            let sent = self.usage.requests.fetch_add(1, Ordering::Relaxed);
            if self.config.max_requests.is_some_and(|max| sent >= max) {
                self.usage.requests.fetch_sub(1, Ordering::Relaxed);
                return Err(TeacherError::Budget);
            }
            if attempt > 0 {
                self.usage.retries.fetch_add(1, Ordering::Relaxed);
            }
            match self.attempt(&body) {
                Attempt::Done(reply) => {
                    self.usage.answered.fetch_add(1, Ordering::Relaxed);
                    return Ok(reply);
                }
                // Refusals before any answer are the run's settings', not a record's.
                Attempt::Fail {
                    status: 400 | 413 | 422,
                    reason,
                } if self.usage.answered.load(Ordering::Relaxed) == 0 => {
                    return Err(TeacherError::Fatal(format!(
                        "{reason} (the teacher has refused every request so far: --model or \
                         --max-tokens may be what it refuses)"
                    )))
                }
                Attempt::Fail {
                    status: 400 | 413 | 422,
                    reason,
                } => return Err(TeacherError::Refused(reason)),
                Attempt::Fail { status, reason } if (400..410).contains(&status) => {
                    return Err(TeacherError::Fatal(reason))
                }
                Attempt::Fail { reason, .. } => return Err(TeacherError::Failed(reason)),
                Attempt::Retry { reason, after } => {
                    last = reason;
                    if attempt < self.config.max_retries {
                        std::thread::sleep(after.unwrap_or_else(|| self.backoff(attempt, salt)));
                    }
                }
            }
        }
        Err(TeacherError::Failed(format!(
            "{last} (after {} retries)",
            self.config.max_retries
        )))
    }

    fn attempt(&self, body: &Value) -> Attempt {
        let mut request = self.client.post(&self.endpoint).json(body);
        if let Some(key) = &self.config.api_key {
            request = request.bearer_auth(&key.0);
        }
        let response = match request.send() {
            Ok(r) => r,
            Err(e) => {
                // The error names the URL, never the headers.
                let what = if e.is_timeout() {
                    "timed out"
                } else {
                    "failed"
                };
                return Attempt::Retry {
                    reason: format!("the request {what}: {}", without_url(&e)),
                    after: None,
                };
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()?.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite())
            .map(|s| Duration::from_secs_f64(s.clamp(0.0, 60.0)));
        let text = match response.text() {
            Ok(t) => t,
            Err(e) => {
                return Attempt::Retry {
                    reason: format!("reading the answer failed: {}", without_url(&e)),
                    after: None,
                }
            }
        };
        if status.as_u16() == 429 || status.as_u16() == 408 || status.is_server_error() {
            return Attempt::Retry {
                reason: format!("HTTP {status}: {}", self.excerpt(&text)),
                after: retry_after,
            };
        }
        if !status.is_success() {
            return Attempt::Fail {
                status: status.as_u16(),
                reason: format!("HTTP {status}: {}", self.excerpt(&text)),
            };
        }
        match self.parse(&text) {
            Some(reply) => Attempt::Done(reply),
            None => Attempt::Retry {
                reason: format!(
                    "the answer is not a chat completion: {}",
                    self.excerpt(&text)
                ),
                after: None,
            },
        }
    }

    /// The start of a body, on one line, for messages, with the API key blanked should a server
    /// echo it.
    fn excerpt(&self, text: &str) -> String {
        let mut one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if let Some(key) = self.config.api_key.as_ref().filter(|k| !k.0.is_empty()) {
            one_line = one_line.replace(&key.0, "[key]");
        }
        match one_line.char_indices().nth(200) {
            Some((i, _)) => format!("{}...", &one_line[..i]),
            None => one_line,
        }
    }

    /// The first choice's text of a chat-completion JSON; counts the tokens it reports.
    fn parse(&self, text: &str) -> Option<Reply> {
        let v: Value = serde_json::from_str(text).ok()?;
        let choice = v.get("choices")?.get(0)?;
        let content = choice.get("message")?.get("content")?.as_str()?;
        if let Some(usage) = v.get("usage") {
            let count = |k: &str| usage.get(k).and_then(Value::as_u64);
            if let (Some(p), Some(c)) = (count("prompt_tokens"), count("completion_tokens")) {
                self.usage.prompt_tokens.fetch_add(p, Ordering::Relaxed);
                self.usage.completion_tokens.fetch_add(c, Ordering::Relaxed);
                self.usage.tokens_reported.store(true, Ordering::Relaxed);
            }
        }
        Some(Reply {
            text: content.to_string(),
            truncated: choice.get("finish_reason").and_then(Value::as_str) == Some("length"),
        })
    }

    /// `retry_base * 2^attempt`, at most 30 s, times a jitter in [0.5, 1.5).
    fn backoff(&self, attempt: u32, salt: u64) -> Duration {
        let base = self.config.retry_base.as_secs_f64() * 2f64.powi(attempt as i32);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let h = pctrain_core::hash::stable_hash(salt ^ u64::from(attempt), &nanos.to_le_bytes());
        let jitter = 0.5 + pctrain_core::hash::unit_interval(h);
        Duration::from_secs_f64(base.min(30.0) * jitter)
    }
}

/// A reqwest error's message without the URL it carries.
fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(url) = e.url() {
        s = s.replace(url.as_str(), "the teacher");
    }
    s
}
