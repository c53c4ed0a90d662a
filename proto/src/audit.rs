//! The audit chain's rows and the outcome of verifying it, as the admin API serves them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One row of the audit chain (`/api/v1/audit`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: i64,
    /// Unix milliseconds.
    pub ts: i64,
    pub actor: String,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// What the action was about; its shape depends on the action.
    pub detail: Value,
    pub prev_hash: String,
    pub hash: String,
}

/// The outcome of `hive audit verify` (`/api/v1/audit/verify`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    pub rows: u64,
    /// The first row whose hash or link does not match; `None` when the chain is whole.
    pub first_broken: Option<i64>,
    /// What is wrong at `first_broken`, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The row `audit.head` names (the chain is checked against it).
    pub anchored: Option<i64>,
}
