//! Dead letters: messages queued too long for an agent that cannot take them.

use serde::{Deserialize, Serialize};

use crate::message::Message;

/// A message its agent cannot take, and why (`/api/v1/dead-letters`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    #[serde(flatten)]
    pub message: Message,
    /// `crash loop`, `paused` or `not running`.
    pub why: String,
    pub waited_seconds: u64,
}

/// The answer to dropping a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    /// The message dropped.
    pub dropped: i64,
}
