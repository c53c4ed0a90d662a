//! Paused agents (DESIGN §10: no turns, inbox kept). It owns the `paused` table and the set of
//! paused incarnations the harness surface waits on; it never touches the mailbox (a paused
//! agent's mail queues as usual) nor the container (a paused agent keeps running, idle). The
//! mailbox asks [`paused_in`] inside each lease's transaction, so once a pause has committed no
//! turn is leased — whatever a waiting harness has yet to notice.

use std::collections::HashSet;

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::watch;

use crate::audit;
use crate::error::Result;
use crate::store::{Store, unix_millis};

/// The paused incarnations, kept in the store and watched in memory.
pub struct Pauses {
    store: Store,
    paused: watch::Sender<HashSet<i64>>,
}

impl Pauses {
    pub(crate) async fn load(store: Store) -> Result<Self> {
        let paused: HashSet<i64> = store
            .read(|c| {
                Ok(c.prepare("SELECT incarnation FROM paused")?
                    .query_map([], |r| r.get(0))?
                    .collect::<std::result::Result<_, _>>()?)
            })
            .await?;
        Ok(Self {
            store,
            paused: watch::Sender::new(paused),
        })
    }

    pub fn is_paused(&self, incarnation: i64) -> bool {
        self.paused.borrow().contains(&incarnation)
    }

    /// Every change of the set, for a waiter to look again.
    pub fn watch(&self) -> watch::Receiver<HashSet<i64>> {
        self.paused.subscribe()
    }

    /// Pauses or resumes `incarnation` of `agent` (audited as `by`); false when it already was.
    pub(crate) async fn set(
        &self,
        agent: &str,
        incarnation: i64,
        pause: bool,
        by: &'static str,
    ) -> Result<bool> {
        let key = agent.to_owned();
        let changed = self
            .store
            .write(move |c| {
                let changed = if pause {
                    c.prepare_cached(
                        "INSERT INTO paused (incarnation, paused_at, by) VALUES (?1, ?2, ?3)
                         ON CONFLICT (incarnation) DO NOTHING",
                    )?
                    .execute(params![incarnation, unix_millis(), by])?
                } else {
                    c.prepare_cached("DELETE FROM paused WHERE incarnation = ?1")?
                        .execute([incarnation])?
                };
                if changed > 0 {
                    let action = if pause { "pause" } else { "resume" };
                    audit::append(c, by, action, Some(&key), serde_json::json!({}))?;
                }
                Ok(changed > 0)
            })
            .await?;
        self.paused.send_modify(|set| {
            if pause {
                set.insert(incarnation);
            } else {
                set.remove(&incarnation);
            }
        });
        Ok(changed)
    }
}

/// Whether the current incarnation of `agent` is paused, read inside the caller's transaction.
pub(crate) fn paused_in(c: &Connection, agent: &str) -> Result<bool> {
    Ok(c.prepare_cached(
        "SELECT 1 FROM paused
             WHERE incarnation = (SELECT incarnation FROM agents WHERE name = ?1)",
    )?
    .query_row([agent], |_| Ok(()))
    .optional()?
    .is_some())
}

/// Who paused `incarnation` (`operator` or `manager`), if it is paused.
pub(crate) fn paused_by(c: &Connection, incarnation: i64) -> Result<Option<String>> {
    Ok(
        c.prepare_cached("SELECT by FROM paused WHERE incarnation = ?1")?
            .query_row([incarnation], |r| r.get(0))
            .optional()?,
    )
}
