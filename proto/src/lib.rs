//! The wire types every side of hyperhive shares (DESIGN §2): the broker serves them, the CLI and
//! the harness (inside a container) speak them. One definition of each tool's arguments and
//! result, of the records and answers the admin API serves (status, agents, messages, questions,
//! dead letters, approvals, deploys, tombstones, audit rows, stats), of the live events its
//! streams carry and of the helper events' bodies, so a field renamed on one side is a compile
//! error on the other.
//!
//! Nothing here does I/O or knows about sqlite, git or sockets.

pub mod agent;
pub mod agent_config;
pub mod approval;
pub mod audit;
pub mod dashboard;
pub mod dead_letter;
pub mod event;
pub mod helper;
pub mod message;
pub mod question;
pub mod stats;
pub mod status;
pub mod tombstone;
pub mod tools;
pub mod usage;

pub use agent::{
    AgentDetail, AgentKind, AgentLog, AgentRecord, AgentRun, AgentView, Axes, Confinement,
    GcReport, Isolation, Liveness, Outcome, RuntimeKind,
};

pub use agent_config::AgentConfig;
pub use approval::{
    Approval, ApprovalStatus, ChangedFile, Check, CheckStatus, Deploy, DeployStatus, RiskFlag,
    RiskKind,
};
pub use audit::{AuditEntry, Verification};
pub use dead_letter::{DeadLetter, Dropped};
pub use event::{Event, Lagged, LogText, StreamEvent};
pub use helper::{HelperBody, HelperEvent};
pub use message::{Message, MessageState, Turn};
pub use question::Question;
pub use stats::AgentStats;
pub use status::{Fault, MessageCounts, Status};
pub use tombstone::{Destroyed, Purged, Restored, Tombstone};
pub use usage::Usage;

/// Words the model gateway's 429 for a spent daily token budget always holds: the harness does
/// not retry a turn that failed on it (no retry helps before the day ends).
pub const BUDGET_SPENT: &str = "daily token budget is spent";

/// Words before the seconds in the model gateway's 503 while an upstream's breaker is open
/// (`… it tries again in 30 s`): the harness waits that long before it takes the turn again.
pub const BREAKER_RETRY_IN: &str = "tries again in ";
