//! The typed statuses of approvals and deploys, which moves between them are allowed, and the ONE
//! function that moves a row: [`transition`], a conditional UPDATE on the row's current status,
//! so of two concurrent movers exactly one wins. It never decides what a move means (messages,
//! audit, git): its callers do, inside the same transaction.

use std::fmt;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{Connection, OptionalExtension, params};

use crate::error::{Error, Result};
use crate::store::unix_millis;

pub use proto::approval::{ApprovalStatus, DeployStatus};

/// A status column with its allowed moves.
pub trait Lifecycle: Copy + Eq + fmt::Display + 'static {
    /// The table the status lives in.
    const TABLE: &'static str;
    /// What a row is called in messages.
    const WHAT: &'static str;
    /// Every status, in order.
    const ALL: &'static [Self];
    fn as_str(self) -> &'static str;
    fn may_move(self, to: Self) -> bool;
    /// The time column a move to `to` stamps, if any.
    fn stamps(self, to: Self) -> Option<&'static str>;

    /// Parses a status a client typed; the error lists the valid ones.
    fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = Self::ALL.iter().map(|v| v.as_str()).collect();
                Error::invalid(
                    "status",
                    format!("'{s}' is not a status: {}", all.join(", ")),
                )
            })
    }
}

impl Lifecycle for ApprovalStatus {
    const TABLE: &'static str = "approvals";
    const WHAT: &'static str = "approval";
    const ALL: &'static [Self] = ApprovalStatus::ALL;

    fn as_str(self) -> &'static str {
        ApprovalStatus::as_str(self)
    }

    fn may_move(self, to: Self) -> bool {
        use ApprovalStatus::*;
        matches!(
            (self, to),
            (Pending, Approved | Denied) | (Approved, Building) | (Building, Deployed | Failed)
        )
    }

    fn stamps(self, _to: Self) -> Option<&'static str> {
        (self == Self::Pending).then_some("resolved_at")
    }
}

impl Lifecycle for DeployStatus {
    const TABLE: &'static str = "deploys";
    const WHAT: &'static str = "deploy";
    const ALL: &'static [Self] = DeployStatus::ALL;

    fn as_str(self) -> &'static str {
        DeployStatus::as_str(self)
    }

    fn may_move(self, to: Self) -> bool {
        use DeployStatus::*;
        matches!(
            (self, to),
            (Applied, Building) | (Building, Deployed | Failed)
        )
    }

    fn stamps(self, to: Self) -> Option<&'static str> {
        matches!(to, Self::Deployed | Self::Failed).then_some("finished_at")
    }
}

/// Moves row `id` from `from` to `to` inside the caller's transaction, only if it is still in
/// `from`. A refused move changes nothing and says what the row is now.
pub fn transition<S: Lifecycle>(c: &Connection, id: i64, from: S, to: S) -> Result<()> {
    if !from.may_move(to) {
        return Err(Error::Internal(format!(
            "{} {id}: no move from {from} to {to}",
            S::WHAT
        )));
    }
    let changed = match from.stamps(to) {
        Some(col) => c.execute(
            &format!(
                "UPDATE {} SET status = ?1, {col} = ?4 WHERE id = ?2 AND status = ?3",
                S::TABLE
            ),
            params![Stored(to), id, Stored(from), unix_millis()],
        )?,
        None => c.execute(
            &format!(
                "UPDATE {} SET status = ?1 WHERE id = ?2 AND status = ?3",
                S::TABLE
            ),
            params![Stored(to), id, Stored(from)],
        )?,
    };
    if changed == 1 {
        return Ok(());
    }
    let now: Option<S> = c
        .query_row(
            &format!("SELECT status FROM {} WHERE id = ?1", S::TABLE),
            [id],
            |r| r.get::<_, Stored<S>>(0).map(|s| s.0),
        )
        .optional()?;
    Err(match now {
        None => Error::NotFound {
            what: format!("{} {id}", S::WHAT),
        },
        Some(now) => Error::Conflict(format!(
            "{} {id} is {now} already; nothing was changed",
            S::WHAT
        )),
    })
}

/// A status as sqlite stores it (its name): the wire types in `proto` cannot carry rusqlite's
/// traits. An unknown stored status is an error, never a guess.
pub struct Stored<S>(pub S);

impl<S: Lifecycle> ToSql for Stored<S> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.0.as_str()))
    }
}

impl<S: Lifecycle> FromSql for Stored<S> {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let s = value.as_str()?;
        S::parse(s)
            .map(Self)
            .map_err(|e| FromSqlError::Other(e.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_documented_moves_are_allowed() {
        use ApprovalStatus::*;
        assert!(Pending.may_move(Approved) && Pending.may_move(Denied));
        assert!(Building.may_move(Deployed) && Building.may_move(Failed));
        assert!(!Denied.may_move(Approved) && !Approved.may_move(Pending));
        assert!(DeployStatus::Building.may_move(DeployStatus::Failed));
        assert!(!DeployStatus::Deployed.may_move(DeployStatus::Applied));
        assert_eq!(
            ApprovalStatus::parse("nope").unwrap_err().code(),
            "invalid_argument"
        );
        assert_eq!(ApprovalStatus::parse("denied").unwrap(), Denied);
    }
}
