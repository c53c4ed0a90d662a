//! The questions agents ask the operator (`ask_operator`), as the admin API lists and answers them.

use serde::{Deserialize, Serialize};

/// One question to the operator (`/api/v1/questions`, and the answer to
/// `/api/v1/questions/{id}/answer`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Question {
    pub id: i64,
    /// The agent that asked.
    pub asker: String,
    pub question: String,
    /// The choices offered; empty for a free-text question.
    pub options: Vec<String>,
    /// More than one option may be chosen.
    pub multi: bool,
    /// The message that carried the question to the operator's inbox.
    pub message_id: i64,
    /// Unix milliseconds.
    pub asked_at: i64,
    /// Unix milliseconds.
    pub expires_at: i64,
    /// `open`, `answered` or `expired`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
}
