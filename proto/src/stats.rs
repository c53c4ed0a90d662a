//! Per-turn stats as `hive stats AGENT` reads them: each finished turn's tokens, cost, time, tool
//! calls and sends, and their totals over a window.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Messages sent by one turn, by kind of recipient.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    pub agent: u64,
    pub operator: u64,
    /// `*` sends, each counted once however many agents it reached.
    pub broadcast: u64,
}

/// One finished turn's stats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnStats {
    pub turn: i64,
    /// Unix milliseconds.
    pub started_at: i64,
    pub finished_at: i64,
    pub duration_ms: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    /// Calls by tool name (names the model wrote: hostile text).
    pub tool_calls: BTreeMap<String, u64>,
    pub sent: Sent,
    pub outcome: String,
}

/// The sums over a window of turns.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub turns: u64,
    pub duration_ms: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    pub tool_calls: BTreeMap<String, u64>,
    pub sent: Sent,
}

/// An agent's stats: its current incarnation's finished turns since a point in time
/// (`/api/v1/agents/{name}/stats`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStats {
    pub agent: String,
    pub incarnation: i64,
    /// Messages queued for it now.
    pub inbox_depth: u64,
    /// When its newest turn finished (Unix milliseconds), whatever the window.
    pub last_turn_at: Option<i64>,
    /// Milliseconds since then.
    pub since_last_turn_ms: Option<i64>,
    /// The window's start (Unix milliseconds), if any.
    pub since: Option<i64>,
    /// The newest turns of the window (at most 1000), oldest first.
    pub turns: Vec<TurnStats>,
    pub totals: Totals,
}
