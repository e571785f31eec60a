//! Records: one conversation read from a data file, with optional pseudo-code per user turn and
//! the verifiable constraints its last user turn states.

use serde::Serialize;
use serde_json::{json, Value};

use crate::constraints::{constraint_fields, Constraint};

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

/// One record of a data file, whatever its shape on disk (Tulu, Alpaca or IFEval).
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The record's `id`, or `FILE:LINE` when it has none.
    pub id: String,
    /// The record's `dataset` field, when present.
    pub dataset: Option<String>,
    pub messages: Vec<Message>,
    /// Pseudo-code for each user turn, in order: exactly one entry per user message.
    pub pseudo_code: Vec<Option<String>>,
    /// The constraints the last user turn states (IFEval's `instruction_id_list` + `kwargs`).
    pub constraints: Vec<Constraint>,
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

    /// The record as a Tulu line: `id`, `dataset` when known, `messages`, `pseudo_code` (one
    /// entry a user turn), and its constraints when it has any.
    pub fn to_json(&self) -> Value {
        let mut line = json!({
            "id": self.id,
            "messages": self.messages,
            "pseudo_code": self.pseudo_code,
        });
        if let Some(d) = &self.dataset {
            line["dataset"] = d.as_str().into();
        }
        if !self.constraints.is_empty() {
            let (ids, kwargs) = constraint_fields(&self.constraints);
            line["instruction_id_list"] = ids;
            line["kwargs"] = kwargs;
        }
        line
    }
}
