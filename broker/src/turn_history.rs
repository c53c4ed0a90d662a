//! Finished turns read back for charts: when each ended and what its harness reported it used.
//! Read-only; the mailbox owns writing turns.

use rusqlite::params;
use serde::Serialize;

use crate::Result;
use crate::hive::Hive;
use crate::names::AgentName;

/// One finished turn of an agent's current incarnation.
#[derive(Debug, Clone, Serialize)]
pub struct FinishedTurn {
    pub id: i64,
    /// Unix milliseconds.
    pub started_at: i64,
    pub finished_at: i64,
    pub outcome: Option<String>,
    /// What the harness reported (absent when it reported nothing or something unreadable).
    pub usage: Option<proto::Usage>,
}

impl Hive {
    /// The newest `limit` finished turns of `agent`'s current incarnation, oldest first.
    pub async fn finished_turns(
        &self,
        agent: &AgentName,
        limit: usize,
    ) -> Result<Vec<FinishedTurn>> {
        let Some(record) = self.agent(agent) else {
            return Err(crate::Error::UnknownAgent {
                name: agent.to_string(),
                allowed: vec![],
            });
        };
        let key = agent.to_string();
        let incarnation = record.incarnation;
        self.store
            .read(move |c| {
                let mut rows = c
                    .prepare_cached(
                        "SELECT id, started_at, finished_at, outcome, usage FROM turns
                         WHERE agent = ?1 AND incarnation = ?2 AND finished_at IS NOT NULL
                         ORDER BY id DESC LIMIT ?3",
                    )?
                    .query_map(params![key, incarnation, limit as i64], |r| {
                        let usage: Option<String> = r.get(4)?;
                        Ok(FinishedTurn {
                            id: r.get(0)?,
                            started_at: r.get(1)?,
                            finished_at: r.get(2)?,
                            outcome: r.get(3)?,
                            usage: usage.and_then(|u| serde_json::from_str(&u).ok()),
                        })
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                rows.reverse();
                Ok(rows)
            })
            .await
    }
}
