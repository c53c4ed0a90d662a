//! Each MCP tool's arguments and result (DESIGN §10). The doc comments on the fields are the
//! schema descriptions a model reads: say what to give and in what range.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Usage;

/// The longest a `recv` or `next_turn` may wait, in seconds.
pub const MAX_WAIT_SECONDS: u64 = 180;
/// The most messages one `recv` returns.
pub const MAX_RECV: usize = 32;
/// The most messages one turn (`next_turn`) leases.
pub const MAX_TURN_MESSAGES: usize = 16;
/// The most bytes of message bodies one turn leases (a single larger message is still leased
/// alone).
pub const MAX_TURN_BYTES: usize = 64 * 1024;
/// The most events one `turn_events` call may carry.
pub const MAX_EVENTS_PER_CALL: usize = 256;

// ---- arguments ----

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendArgs {
    /// Who gets it: an agent's name (see `whoami` for whom you may write to), `operator` for the
    /// human running the hive, or `*` for every other agent.
    pub to: String,
    /// The message text (UTF-8, at most 64 KiB unless the hive is configured otherwise).
    pub body: String,
    /// The id of the message you are answering, if any.
    #[serde(default)]
    pub in_reply_to: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecvArgs {
    /// How long to wait for a message when none is queued, 0 to 180 seconds (default 0: return at
    /// once).
    #[serde(default)]
    pub wait_seconds: u64,
    /// The most messages to return, 1 to 32 (default 32).
    #[serde(default)]
    pub max: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AskArgs {
    /// The question, as the operator should read it.
    pub question: String,
    /// Choices the operator picks from; leave out for a free-text answer.
    #[serde(default)]
    pub options: Vec<String>,
    /// With options: whether the operator may pick more than one.
    #[serde(default)]
    pub multi: bool,
    /// How long the question stays open, in seconds (default 86400, at most 604800). When it
    /// expires you get a message saying so.
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemindArgs {
    /// In how many seconds to be reminded (1 to 2592000, i.e. 30 days).
    pub in_seconds: u64,
    /// The text you will receive, as a message from `system`.
    pub body: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestSpawnArgs {
    /// The new agent's name: 1–32 of a-z, 0-9 and '-', starting with a letter.
    pub name: String,
    /// The commit (7–40 hex) in /agents/<name>/config to create the agent from. Leave out to get
    /// a draft repo to edit first.
    #[serde(default)]
    pub commit: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestApplyArgs {
    /// The agent whose config changes.
    pub agent: String,
    /// The commit (7–40 hex) in /agents/<agent>/config to apply.
    pub commit: String,
    /// What the change does and why, for the operator who decides.
    pub description: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsArgs {
    /// Only approvals in this status: pending, approved, building, deployed, failed or denied.
    #[serde(default)]
    pub status: Option<String>,
}

/// `start`, `kill`, `restart`, `update`: the agent acted on.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentArgs {
    /// The agent's name (see `agents`).
    pub agent: String,
}

/// The most lines `logs` returns.
pub const MAX_LOG_LINES: u64 = 10_000;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogsArgs {
    /// The agent whose container log to read.
    pub agent: String,
    /// How many of the last lines (default 100; more than 10000 gives 10000).
    #[serde(default)]
    pub lines: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NextTurnArgs {
    /// How long to wait for a message, 0 to 180 seconds.
    #[serde(default)]
    pub wait_seconds: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TurnEventsArgs {
    /// The turn id from `next_turn`.
    pub turn: i64,
    /// Events of the turn in order (e.g. the model's stream-json events), at most 256 per call.
    pub events: Vec<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FinishTurnArgs {
    /// The turn id from `next_turn`.
    pub turn: i64,
    /// How the turn ended, e.g. `ok`, `error`, `cancelled`.
    pub outcome: String,
    /// Token and cost accounting of the turn: input_tokens, output_tokens, cache_read_tokens,
    /// cost_usd, duration_ms, tool_calls (each optional).
    #[serde(default)]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportStateArgs {
    /// idle, thinking, compacting, needs_login or paused.
    pub state: TurnState,
}

/// The operator command that stops a running turn; `next_cancel` takes it while one runs.
pub const CANCEL_COMMAND: &str = "/cancel";

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NextCancelArgs {
    /// The running turn's id from `next_turn`.
    pub turn: i64,
    /// How long to wait for a `/cancel` from the operator, 0 to 180 seconds.
    #[serde(default)]
    pub wait_seconds: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitLoginArgs {
    /// How long to wait for the login, 0 to 180 seconds.
    #[serde(default)]
    pub wait_seconds: u64,
}

/// `wait_login`: whether the login came before the wait ran out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LoginWaited {
    pub logged_in: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandReplyArgs {
    /// The id of the operator's command message (leased to an open turn of this agent).
    pub command: i64,
    /// What the command did, as the operator should read it (e.g. `model set to X`).
    pub body: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseTurnArgs {
    /// The turn id from `next_turn`.
    pub turn: i64,
}

// ---- results ----

/// `send`: the ids of the stored messages (one per recipient of a broadcast).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Sent {
    pub sent: Vec<i64>,
}

/// `whoami`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Whoami {
    pub name: String,
    /// `agent` or `manager`.
    pub role: String,
    /// Every name `send` accepts from this agent (`operator` included).
    pub may_write_to: Vec<String>,
}

/// `ask_operator`: the question's id; the answer comes later as a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Asked {
    pub question: i64,
    /// Unix milliseconds.
    pub expires_at: i64,
    pub note: String,
}

/// `remind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Reminded {
    pub reminder: i64,
    /// Unix milliseconds.
    pub due_at: i64,
}

/// `turn_events`: how many events were stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Recorded {
    pub recorded: usize,
}

/// `finish_turn`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Finished {
    pub finished: i64,
}

/// `release_turn`: how many messages went back to the queue (0 if the turn was not open).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Released {
    pub released: usize,
}

/// `report_state`: the state kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Reported {
    pub state: TurnState,
}

/// What a harness reports about its model, shown to the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TurnState {
    /// Waiting for a message.
    Idle,
    /// A turn is running.
    Thinking,
    /// The model is compacting its context.
    Compacting,
    /// The model refuses to run until someone logs in (`claude /login`) or sets a key.
    NeedsLogin,
    /// Turns are paused.
    Paused,
}

impl TurnState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Thinking => "thinking",
            Self::Compacting => "compacting",
            Self::NeedsLogin => "needs_login",
            Self::Paused => "paused",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_refuse_unknown_fields_and_round_trip() {
        let err =
            serde_json::from_str::<SendArgs>(r#"{"to":"a","body":"b","cc":"c"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `cc`"), "{err}");
        let args = FinishTurnArgs {
            turn: 4,
            outcome: "ok".into(),
            usage: Some(Usage {
                output_tokens: Some(9),
                ..Usage::default()
            }),
        };
        let back: FinishTurnArgs =
            serde_json::from_str(&serde_json::to_string(&args).unwrap()).unwrap();
        assert_eq!(back.usage, args.usage);
        assert_eq!(back.turn, 4);
    }
}
