//! The mailbox's records as the API serves them: a stored [`Message`] and a harness [`Turn`].

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a message is: waiting, taken by an open turn, or delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageState {
    Queued,
    Leased,
    Delivered,
}

impl MessageState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Leased => "leased",
            Self::Delivered => "delivered",
        }
    }

    /// A state by its name; anything else is `None` (a row this side does not understand must
    /// not be taken for a queued one).
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "queued" => Some(Self::Queued),
            "leased" => Some(Self::Leased),
            "delivered" => Some(Self::Delivered),
            _ => None,
        }
    }
}

impl fmt::Display for MessageState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One stored message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub id: i64,
    /// An agent's name, `operator` or `system`.
    pub from: String,
    /// An agent's name or `operator`.
    pub to: String,
    pub body: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_reply_to: Option<i64>,
    /// Unix milliseconds.
    pub sent_at: i64,
    pub state: MessageState,
    /// Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<i64>,
    /// When a harness turn leased it (Unix milliseconds): absent for a message a `recv` took
    /// (delivered at once) and while it is queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leased_at: Option<i64>,
    /// The turn that leased it, kept after the turn finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn: Option<i64>,
    /// True when an earlier take of this message was abandoned: its turn never finished, or its
    /// receiver left before the take reached it.
    pub redelivered: bool,
}

/// The answer to the operator's send (`POST /api/v1/messages`): the stored messages' ids, one per
/// recipient of a broadcast.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posted {
    pub ids: Vec<i64>,
}

/// The messages leased to a harness turn: every queued message of the agent at the lease, oldest
/// first, up to [`crate::tools::MAX_TURN_MESSAGES`] and [`crate::tools::MAX_TURN_BYTES`] of
/// bodies (always at least one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    pub turn: i64,
    /// The first (oldest) of `messages`: the one the turn's row names. Kept on the wire for
    /// callers that read one message.
    pub message: Message,
    pub messages: Vec<Message>,
}

/// How long deliveries took over the last hour (DESIGN §6: delivery receipts), from the mailbox's
/// in-memory window; nothing is read from the history.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeliveryLatency {
    /// The window the figures cover, in seconds (the last hour).
    pub window_seconds: u64,
    /// Sent → first taken by its receiver: leased to a turn, or delivered to a `recv`.
    pub picked_up: LatencySummary,
    /// Sent → delivered (for a turn: when the turn finished).
    pub delivered: LatencySummary,
}

/// The percentiles of one latency; both `None` when nothing was measured in the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: Option<i64>,
    pub p99_ms: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_reads_back_as_it_was_written() {
        let m = Message {
            id: 3,
            from: "operator".into(),
            to: "manager".into(),
            body: "hi".into(),
            in_reply_to: None,
            sent_at: 1,
            state: MessageState::Delivered,
            delivered_at: Some(2),
            leased_at: None,
            turn: None,
            redelivered: false,
        };
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(
            text,
            r#"{"id":3,"from":"operator","to":"manager","body":"hi","sent_at":1,"state":"delivered","delivered_at":2,"redelivered":false}"#
        );
        assert_eq!(serde_json::from_str::<Message>(&text).unwrap(), m);
        for s in [
            MessageState::Queued,
            MessageState::Leased,
            MessageState::Delivered,
        ] {
            assert_eq!(MessageState::parse(s.as_str()), Some(s));
        }
        assert_eq!(MessageState::parse("lost"), None);
    }
}
