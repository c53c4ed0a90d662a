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
