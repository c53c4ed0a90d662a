//! Operator commands to a harness (`/cancel`, `/model`, …): the mailbox side. A command is an
//! ordinary message from `operator`; the harness reads and runs it. Two things need the broker:
//! `/cancel` must reach a harness while a turn runs (it is not in `next_turn` then), and the
//! harness answers the operator as `system`. This module leases a queued `/cancel` into the
//! running turn (so it is delivered with the turn, or given back with it) and stores the answer;
//! it never interprets any other command and never lets a harness write as `system` except in
//! reply to a command leased to one of its own open turns.

use std::time::Duration;

use rusqlite::{OptionalExtension, params};
use tokio::time::Instant;

use super::{
    LEASE_MESSAGE, LIVE_INBOX, MESSAGE_COLUMNS, Mailbox, Message, MessageState, insert_messages,
};
use crate::error::{Error, Result};
use crate::names::AgentName;

pub use proto::tools::CANCEL_COMMAND;

impl Mailbox {
    /// Waits up to `wait` for a queued `/cancel` from the operator to `agent` and leases it into
    /// `agent`'s open `turn`. `None` when none came or the turn ended meanwhile; an error when
    /// `turn` is not an open turn of `agent`.
    pub async fn take_cancel(
        &self,
        agent: &AgentName,
        turn: i64,
        wait: Duration,
    ) -> Result<Option<Message>> {
        let key = agent.to_string();
        let mut woken = self.notifiers.subscribe(&key);
        let deadline = Instant::now() + wait;
        let mut first = true;
        loop {
            let k = key.clone();
            let taken = self
                .store
                .write(move |c| {
                    let open = c
                        .prepare_cached(
                            "SELECT 1 FROM turns WHERE id = ?1 AND agent = ?2 AND finished_at IS NULL",
                        )?
                        .exists(params![turn, k])?;
                    if !open {
                        return Ok(Err(()));
                    }
                    let found = c
                        .prepare_cached(&format!(
                            "SELECT {MESSAGE_COLUMNS} FROM messages
                             WHERE recipient = ?1 AND state = 'queued' AND sender = 'operator'
                             AND trim(body) = ?2 AND {LIVE_INBOX} ORDER BY id LIMIT 1"
                        ))?
                        .query_row(params![k, CANCEL_COMMAND], super::message_from_row)
                        .optional()?;
                    let Some(mut m) = found else {
                        return Ok(Ok(None));
                    };
                    let now = crate::store::unix_millis();
                    c.prepare_cached(LEASE_MESSAGE)?
                        .execute(params![turn, m.id, now])?;
                    m.state = MessageState::Leased;
                    m.leased_at = Some(now);
                    m.turn = Some(turn);
                    Ok(Ok(Some(m)))
                })
                .await?;
            match taken {
                Ok(Some(m)) => return Ok(Some(m)),
                Err(()) if first => {
                    return Err(Error::NotFound {
                        what: format!("open turn {turn}"),
                    });
                }
                Err(()) => return Ok(None),
                Ok(None) => {}
            }
            first = false;
            tokio::select! {
                changed = woken.changed() => {
                    if changed.is_err() {
                        return Ok(None); // shutting down
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return Ok(None),
            }
        }
    }

    /// Stores the harness's answer to operator command `command` in the operator's inbox, from
    /// `system`, prefixed with the agent's name and replying to the command. Refused unless
    /// `command` is a message from the operator to `agent` leased to one of its open turns.
    pub async fn reply_to_command(
        &self,
        agent: &AgentName,
        command: i64,
        body: String,
    ) -> Result<i64> {
        if body.is_empty() {
            return Err(Error::invalid("body", "a reply needs a body"));
        }
        if body.len() > self.max_body_bytes {
            return Err(Error::BodyTooLarge {
                len: body.len(),
                max: self.max_body_bytes,
            });
        }
        let key = agent.to_string();
        let rows = self
            .store
            .write(move |c| {
                let leased = c
                    .prepare_cached(
                        "SELECT 1 FROM messages m JOIN turns t ON t.id = m.lease_turn
                         WHERE m.id = ?1 AND m.recipient = ?2 AND m.sender = 'operator'
                         AND m.state = 'leased' AND t.agent = ?2 AND t.finished_at IS NULL",
                    )?
                    .exists(params![command, key])?;
                if !leased {
                    return Err(Error::NotFound {
                        what: format!("operator command {command} in an open turn of {key}"),
                    });
                }
                insert_messages(
                    c,
                    "system",
                    &["operator".to_owned()],
                    &format!("{key}: {body}"),
                    Some(command),
                )
            })
            .await?;
        let id = rows[0].id;
        self.announce(rows);
        Ok(id)
    }
}
