//! The wire types every side of hyperhive shares (DESIGN §2): the broker serves them, the CLI and
//! the harness (inside a container) speak them. One definition of each tool's arguments and
//! result, of the records the admin API lists (messages, approvals, deploys), so a field renamed
//! on one side is a compile error on the other.
//!
//! Nothing here does I/O or knows about sqlite, git or sockets.

pub mod agent_config;
pub mod approval;
pub mod message;
pub mod tools;
pub mod usage;

pub use agent_config::AgentConfig;
pub use approval::{
    Approval, ApprovalStatus, ChangedFile, Check, CheckStatus, Deploy, DeployStatus, RiskFlag,
    RiskKind,
};
pub use message::{Message, MessageState, Turn};
pub use usage::Usage;

/// Words the model gateway's 429 for a spent daily token budget always holds: the harness does
/// not retry a turn that failed on it (no retry helps before the day ends).
pub const BUDGET_SPENT: &str = "daily token budget is spent";
