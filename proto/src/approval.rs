//! Config changes as the API serves them: an [`Approval`] (the manager asks, the operator
//! decides), the files it changes, and the [`Deploy`] a decision or a rollback made. Which moves
//! between statuses are allowed is the broker's business, not the wire's.

use std::fmt;

use serde::{Deserialize, Serialize};

/// `pending → approved → building → deployed | failed`, `pending → denied`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Building,
    Deployed,
    Failed,
    Denied,
}

impl ApprovalStatus {
    /// Every status, in order.
    pub const ALL: &'static [Self] = &[
        Self::Pending,
        Self::Approved,
        Self::Building,
        Self::Deployed,
        Self::Failed,
        Self::Denied,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Building => "building",
            Self::Deployed => "deployed",
            Self::Failed => "failed",
            Self::Denied => "denied",
        }
    }
}

/// `applied → building → deployed | failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeployStatus {
    Applied,
    Building,
    Deployed,
    Failed,
}

impl DeployStatus {
    /// Every status, in order.
    pub const ALL: &'static [Self] = &[Self::Applied, Self::Building, Self::Deployed, Self::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Building => "building",
            Self::Deployed => "deployed",
            Self::Failed => "failed",
        }
    }
}

macro_rules! text {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        /// So that `status == "pending"` reads as it did when statuses were strings.
        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}

text!(ApprovalStatus);
text!(DeployStatus);
text!(CheckStatus);
text!(RiskKind);

/// One approval: a request to spawn an agent or to apply a commit to its config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    pub id: i64,
    /// `spawn` or `apply`.
    pub kind: String,
    pub agent: String,
    pub requester: String,
    pub commit: String,
    /// The applied HEAD the request was made against (`None` for a new agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    pub description: String,
    pub stat: String,
    pub status: ApprovalStatus,
    /// The operator's note on a denial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<i64>,
    /// The unified diff of every file (for a spawn, every file as added); only in
    /// single-approval views. For a pending approval, taken against the applied HEAD now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    /// Every file the commit changes, with modes, symlink targets and a binary flag; only in
    /// single-approval views.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<ChangedFile>>,
    /// The applied config moved since the request: `diff` is against `applied_head`, not
    /// `base`, and approving is refused until the manager asks again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
    /// The applied HEAD when the view was taken, when it is not `base`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_head: Option<String>,
    /// The deploy the approval made (its build's status and, if it failed, nix's message);
    /// only in single-approval views.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<Deploy>,
    /// What the change widens or raises, computed from the evaluated config of its check build
    /// against what runs; absent until the check built it (or when it could not be checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk: Option<Vec<RiskFlag>>,
    /// The check build of the requested commit (made before anyone decides); absent when none
    /// was started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<Check>,
}

impl Approval {
    /// True when one of its risk flags widens the agent's isolation: approving it needs an
    /// explicit second confirmation.
    pub fn widens_isolation(&self) -> bool {
        self.risk
            .as_deref()
            .is_some_and(|flags| flags.iter().any(|f| f.widening))
    }
}

/// One way a change widens or raises what an agent may do, read from its evaluated config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskKind {
    /// `network = "host"` now, not before.
    NetworkHost,
    /// New `egress` host:port pairs.
    EgressAdded,
    /// New (or redefined) `extraMcpServers`.
    McpServerAdded,
    /// New `allowedCommands`.
    CommandsWidened,
    /// One of `resources.memoryMB` / `pids` / `cpuWeight` up.
    ResourcesRaised,
    /// `budget.tokensPerDay` up or removed.
    BudgetRaised,
    /// `allowedRecipients` lets it message more agents.
    RecipientsWidened,
    /// The system prompt changed.
    PromptChanged,
}

impl RiskKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NetworkHost => "network_host",
            Self::EgressAdded => "egress_added",
            Self::McpServerAdded => "mcp_server_added",
            Self::CommandsWidened => "commands_widened",
            Self::ResourcesRaised => "resources_raised",
            Self::BudgetRaised => "budget_raised",
            Self::RecipientsWidened => "recipients_widened",
            Self::PromptChanged => "prompt_changed",
        }
    }

    /// Widens isolation (reach outside the container, new tools or commands, more recipients):
    /// approving needs the second confirmation.
    pub fn widens_isolation(self) -> bool {
        matches!(
            self,
            Self::NetworkHost
                | Self::EgressAdded
                | Self::McpServerAdded
                | Self::CommandsWidened
                | Self::RecipientsWidened
        )
    }
}

/// One risk flag with what it is about (the hosts added, `memoryMB 2048 → 4096`, …; written by
/// the agent's manager, so escape before printing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskFlag {
    pub flag: RiskKind,
    /// [`RiskKind::widens_isolation`], so clients need not know the list.
    pub widening: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
}

impl RiskFlag {
    pub fn new(flag: RiskKind, details: Vec<String>) -> Self {
        Self {
            flag,
            widening: flag.widens_isolation(),
            details,
        }
    }
}

/// `checking → ok | failed`, or `unavailable` when this hive cannot build (no nix, no runtime).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Checking,
    Ok,
    Failed,
    Unavailable,
}

impl CheckStatus {
    pub const ALL: &'static [Self] = &[Self::Checking, Self::Ok, Self::Failed, Self::Unavailable];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Checking => "checking",
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::Unavailable => "unavailable",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.as_str() == s)
    }
}

/// The check build of a requested commit: built as a deploy would be, nothing started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub status: CheckStatus,
    /// nix's message (failed) or why it was not checked (unavailable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The image's closure size in bytes (ok).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closure_bytes: Option<u64>,
    /// Unix milliseconds.
    pub started_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
}

/// One file an approval changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedFile {
    /// The path, with control characters escaped.
    pub path: String,
    /// added, deleted, modified, renamed, typechange, ...
    pub change: String,
    /// Octal git modes (100644, 100755, 120000 symlink, 160000 submodule); absent when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_mode: Option<String>,
    /// Where a symlink in the commit points (escaped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
    /// Holds NUL bytes or is not UTF-8: shown escaped in the diff, and flagged.
    pub binary: bool,
    /// Size of the new content in bytes (0 when deleted).
    pub size: u64,
}

/// One deploy of an agent's applied config: made by an approval, a spawn or a rollback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deploy {
    pub id: i64,
    pub agent: String,
    pub commit: String,
    /// The approval that made it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<i64>,
    /// `spawn`, `apply` or `rollback`.
    pub kind: String,
    pub status: DeployStatus,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Why it failed (a failed build: nix's message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_and_print_as_their_names() {
        for s in ApprovalStatus::ALL {
            let text = serde_json::to_string(s).unwrap();
            assert_eq!(text, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<ApprovalStatus>(&text).unwrap(), *s);
        }
        for s in DeployStatus::ALL {
            assert_eq!(serde_json::to_string(s).unwrap(), format!("\"{s}\""));
        }
        assert!(ApprovalStatus::Denied == "denied");
    }

    #[test]
    fn an_approval_from_a_list_reads_without_its_single_view_fields() {
        let a: Approval = serde_json::from_str(
            r#"{"id":1,"kind":"spawn","agent":"bob","requester":"manager","commit":"abc",
                "description":"","stat":"1 file changed","status":"pending","created_at":5}"#,
        )
        .unwrap();
        assert!(!a.stale && a.deploy.is_none() && a.files.is_none());
        let d = Deploy {
            id: 2,
            agent: "bob".into(),
            commit: "abc".into(),
            approval: Some(1),
            kind: "spawn".into(),
            status: DeployStatus::Failed,
            created_at: 6,
            message: Some("error: memoryMB".into()),
        };
        let back: Deploy = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(back, d);
    }
}
