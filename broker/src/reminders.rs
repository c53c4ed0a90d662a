//! Reminders (`remind`): a message from `system` to the agent that asked, delivered when due.
//! Stored before acknowledged, so they survive a restart; fired by [`crate::due`].

use rusqlite::{Connection, params};
use serde::Serialize;

use crate::due::DueJobs;
use crate::error::{Error, Result};
use crate::mailbox::{Message, insert_messages};
use crate::names::AgentName;
use crate::store::{Store, unix_millis};

/// The furthest ahead a reminder may be set.
pub const MAX_DELAY_SECONDS: u64 = 30 * 24 * 60 * 60;
/// How many reminders one agent may have pending.
pub const MAX_PENDING: i64 = 100;

#[derive(Debug, Clone, Serialize)]
pub struct Reminder {
    pub id: i64,
    pub agent: String,
    pub due_at: i64,
}

/// The reminders service: stores reminders and wakes the due task; [`crate::due`] fires them.
pub struct Reminders {
    store: Store,
    due: DueJobs,
    max_body_bytes: usize,
}

impl Reminders {
    pub(crate) fn new(store: Store, due: DueJobs, max_body_bytes: usize) -> Self {
        Self {
            store,
            due,
            max_body_bytes,
        }
    }

    /// Sets a reminder for `agent` in `in_seconds` (1 s to 30 days), at most [`MAX_PENDING`] pending.
    pub async fn set(&self, agent: &AgentName, in_seconds: u64, body: String) -> Result<Reminder> {
        if in_seconds == 0 || in_seconds > MAX_DELAY_SECONDS {
            return Err(Error::invalid(
                "in_seconds",
                format!("{in_seconds} is out of range; use 1 to {MAX_DELAY_SECONDS} (30 days)"),
            ));
        }
        if body.trim().is_empty() {
            return Err(Error::invalid("body", "a reminder needs a body"));
        }
        let max = self.max_body_bytes;
        if body.len() > max {
            return Err(Error::BodyTooLarge {
                len: body.len(),
                max,
            });
        }
        let name = agent.to_string();
        let reminder = self
            .store
            .write(move |c| {
                let pending: i64 = c.query_row(
                    "SELECT count(*) FROM reminders WHERE status = 'pending'
                     AND incarnation = (SELECT incarnation FROM agents WHERE name = ?1)",
                    [&name],
                    |r| r.get(0),
                )?;
                if pending >= MAX_PENDING {
                    return Err(Error::TooManyReminders { max: MAX_PENDING });
                }
                let now = unix_millis();
                let due_at = now + (in_seconds as i64) * 1000;
                c.execute(
                    "INSERT INTO reminders (agent, body, created_at, due_at, incarnation)
                     VALUES (?1, ?2, ?3, ?4, (SELECT incarnation FROM agents WHERE name = ?1))",
                    params![name, body, now, due_at],
                )?;
                Ok(Reminder {
                    id: c.last_insert_rowid(),
                    agent: name,
                    due_at,
                })
            })
            .await?;
        self.due.reschedule();
        Ok(reminder)
    }
}

/// Delivers every reminder that is due, inside the caller's transaction. Only reminders of live
/// incarnations fire: those a destroyed agent set wait with it for a restore.
pub(crate) fn fire_due(c: &Connection, now: i64) -> Result<Vec<Message>> {
    let due: Vec<(i64, String, String)> = c
        .prepare_cached(
            "SELECT id, agent, body FROM reminders
             WHERE status = 'pending' AND due_at <= ?1
               AND incarnation IN (SELECT incarnation FROM agents)
             ORDER BY due_at, id LIMIT 256",
        )?
        .query_map([now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let mut sent = Vec::with_capacity(due.len());
    for (id, agent, body) in due {
        let message = insert_messages(c, "system", &[agent], &body, None)?.remove(0);
        c.prepare_cached(
            "UPDATE reminders SET status = 'delivered', message_id = ?1 WHERE id = ?2",
        )?
        .execute(params![message.id, id])?;
        sent.push(message);
    }
    Ok(sent)
}

pub(crate) fn next_due(c: &Connection) -> Result<Option<i64>> {
    Ok(c.query_row(
        "SELECT min(due_at) FROM reminders WHERE status = 'pending'
         AND incarnation IN (SELECT incarnation FROM agents)",
        [],
        |r| r.get(0),
    )?)
}
