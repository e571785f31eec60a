//! Records: one conversation read from a data file, with optional pseudo-code per user turn.

use serde::Serialize;

/// Who speaks a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    /// Parses the role names used by Tulu and chat templates.
    pub fn parse(name: &str) -> Option<Role> {
        match name {
            "system" => Some(Role::System),
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            _ => None,
        }
    }
}

/// One turn of a conversation, serialised as `{"role", "content"}` for chat templates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
        }
    }
}

/// One record of a data file, whatever its shape on disk (Tulu or Alpaca).
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The record's `id`, or `FILE:LINE` when it has none.
    pub id: String,
    /// The record's `dataset` field, when present.
    pub dataset: Option<String>,
    pub messages: Vec<Message>,
    /// Pseudo-code for each user turn, in order: exactly one entry per user message.
    pub pseudo_code: Vec<Option<String>>,
}

impl Record {
    /// Number of user turns.
    pub fn user_turns(&self) -> usize {
        self.messages
            .iter()
            .filter(|m| m.role == Role::User)
            .count()
    }

    /// Whether at least one user turn has pseudo-code.
    pub fn has_pseudo_code(&self) -> bool {
        self.pseudo_code.iter().any(Option::is_some)
    }
}
