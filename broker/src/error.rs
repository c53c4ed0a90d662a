//! The broker's one error type. Each variant has a stable [`Error::code`] that the admin API and the
//! MCP layer show to clients; the `Display` text says what to do about it. Internal failures
//! (sqlite, io) keep their detail for the log and show clients only "internal error".

use crate::names::NameError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    InvalidName(#[from] NameError),
    #[error("unknown agent '{name}'; you may write to: {}", allowed.join(", "))]
    UnknownAgent { name: String, allowed: Vec<String> },
    /// An action on an agent that is not there (not a send: nothing about recipients).
    #[error("unknown agent '{name}'; the agents are: {}", agents.join(", "))]
    NoSuchAgent { name: String, agents: Vec<String> },
    #[error("'{name}' is not in your allowed recipients; you may write to: {}", allowed.join(", "))]
    NotAllowed { name: String, allowed: Vec<String> },
    #[error("you cannot send a message to yourself; to be woken later, use `remind`")]
    SendToSelf,
    #[error("message body is {len} bytes; the limit is {max} bytes")]
    BodyTooLarge { len: usize, max: usize },
    #[error(
        "the inbox of '{inbox}' already holds {max} unread messages, its quota; wait until it reads some (the quota is mailbox.max_queued_per_inbox in hive.toml)"
    )]
    InboxFull { inbox: String, max: u64 },
    #[error(
        "you already have {max} open questions, the quota; wait for answers (the quota is mailbox.max_open_questions_per_agent in hive.toml)"
    )]
    TooManyQuestions { max: u64 },
    #[error("you have {max} reminders pending, the most allowed; wait for some to fire")]
    TooManyReminders { max: i64 },
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{0}")]
    Conflict(String),
    /// A request carries more than the configured caps allow.
    #[error("{0}")]
    TooLarge(String),
    /// An approval was asked against an applied config that has moved since.
    #[error("stale: {0}")]
    Stale(String),
    #[error("refused to touch {0}")]
    UnsafePath(String),
    /// Approving a change that widens an agent's isolation without the second confirmation.
    #[error("{0}")]
    WidensIsolation(String),
    /// Approving a change whose check build failed without the explicit override.
    #[error("{0}")]
    CheckFailed(String),
    /// What was asked needs a part this hive does not have (no runtime, no nix).
    #[error("{0}")]
    Unavailable(String),
    /// Starting, stopping or entering an agent's container failed; the text says why.
    #[error("{0}")]
    Runtime(String),
    #[error("the hive is shutting down; try again when it is back")]
    ShuttingDown,
    /// Building an agent's image failed: nix's message (or why the build could not run).
    #[error("the build failed: {0}")]
    BuildFailed(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// A git operation on a config repo failed; the git error is kept as the source.
    #[error("{context}: {}", source.message())]
    Git {
        context: String,
        #[source]
        source: git2::Error,
    },
    /// Stored data that this hive cannot read (a row it never wrote that way).
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    /// The database was written by a newer hyperhive.
    #[error(
        "the database is at schema version {found}, newer than this hive knows ({known}); run a newer hyperhive"
    )]
    SchemaTooNew { found: usize, known: usize },
    #[error("database error: {0}")]
    Store(#[from] rusqlite::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A stable, machine-readable code for API and MCP clients.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidName(_) => "invalid_name",
            Self::UnknownAgent { .. } | Self::NoSuchAgent { .. } => "unknown_agent",
            Self::NotAllowed { .. } => "recipient_not_allowed",
            Self::SendToSelf => "send_to_self",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::InboxFull { .. } => "inbox_full",
            Self::TooManyQuestions { .. } => "too_many_questions",
            Self::TooManyReminders { .. } => "too_many_reminders",
            Self::InvalidArgument { .. } => "invalid_argument",
            Self::NotFound { .. } => "not_found",
            Self::Conflict(_) => "conflict",
            Self::UnsafePath(_) => "unsafe_path",
            Self::TooLarge(_) => "too_large",
            Self::Stale(_) => "stale",
            Self::WidensIsolation(_) => "widens_isolation",
            Self::CheckFailed(_) => "build_check_failed",
            Self::ShuttingDown => "shutting_down",
            Self::Unavailable(_) => "unavailable",
            Self::Runtime(_) => "runtime",
            Self::SchemaTooNew { .. } => "schema_too_new",
            Self::BuildFailed(_) => "build_failed",
            Self::Internal(_)
            | Self::Git { .. }
            | Self::Corrupt(_)
            | Self::Store(_)
            | Self::Io { .. } => "internal",
        }
    }

    /// True when the fault is the hive's, not the caller's: the detail goes to the log only.
    pub fn is_internal(&self) -> bool {
        self.code() == "internal"
    }

    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }

    pub fn git(context: impl Into<String>, source: git2::Error) -> Self {
        Self::Git {
            context: context.into(),
            source,
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn a_git_error_keeps_its_source_and_shows_clients_nothing_of_it() {
        let cause = git2::Error::from_str("object not found");
        let e = Error::git("cannot read the pinned commit", cause);
        assert_eq!(e.code(), "internal");
        assert!(e.is_internal());
        let source = e.source().expect("the git error is the source");
        assert!(source.to_string().contains("object not found"), "{source}");
        assert!(
            e.to_string().starts_with("cannot read the pinned commit: "),
            "{e}"
        );
    }

    #[test]
    fn quotas_and_stored_data_are_not_conflicts() {
        assert_eq!(
            Error::TooManyReminders { max: 100 }.code(),
            "too_many_reminders"
        );
        assert_eq!(Error::Corrupt("x".into()).code(), "internal");
        let newer = Error::SchemaTooNew { found: 9, known: 6 };
        assert_eq!(newer.code(), "schema_too_new");
        assert!(
            newer.to_string().contains("run a newer hyperhive"),
            "{newer}"
        );
    }
}
