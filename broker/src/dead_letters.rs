//! Dead letters (DESIGN §9): a message queued longer than `[mailbox] dead_letter_after_seconds`
//! for an agent that cannot take it — no harness (stopped, crashed, kept stopped after a crash
//! loop) or paused — is shown to the operator (`hive dead-letters`, the API, the dashboard's inbox
//! page), who redirects it to another inbox or drops it, audited. Nothing moves by itself: until
//! the operator decides, the message stays queued and is taken as usual if its agent comes back.
//!
//! It owns the judgement and the two decisions; it never changes a message that is not queued,
//! and never redirects past the registry (an unknown name is refused). A service built in
//! `Hive::open` holding its own handles (store, mailbox, registry, and the containers', the
//! watcher's and the pauses' view of each agent, read only); `Hive` delegates to it.

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::{OptionalExtension, params};
use serde_json::json;

use crate::containers::Containers;
use crate::error::{Error, Result};
use crate::mailbox::{
    MESSAGE_COLUMNS, Mailbox, Message, MessageState, insert_messages, message_from_row,
};
use crate::names::{AgentName, Recipient};
use crate::pause::Pauses;
use crate::registry::Registry;
use crate::store::{Store, unix_millis};
use crate::watcher::Watcher;

/// The most dead letters listed at once (oldest first).
pub const MAX_LISTED: usize = 1000;

/// A message its agent cannot take, and why; served as [`proto::DeadLetter`].
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub message: Message,
    /// `crash loop`, `paused` or `not running`.
    pub why: &'static str,
    pub waited_seconds: u64,
}

/// A row of `messages` for its recipient's live incarnation: what a destroyed agent left queued
/// (kept for a restore) is not the dead mail of a new agent of the same name.
const OF_THE_LIVE_AGENT: &str =
    "incarnation IS (SELECT incarnation FROM agents WHERE name = messages.recipient)";

impl From<DeadLetter> for proto::DeadLetter {
    fn from(d: DeadLetter) -> Self {
        Self {
            message: d.message,
            why: d.why.to_owned(),
            waited_seconds: d.waited_seconds,
        }
    }
}

/// Marks queued message `id` delivered (a decision on a dead letter); a conflict when it was
/// taken meanwhile.
fn mark_delivered(c: &rusqlite::Connection, id: i64) -> Result<()> {
    let marked = c
        .prepare_cached(
            "UPDATE messages SET state = 'delivered', delivered_at = ?2
             WHERE id = ?1 AND state = 'queued'",
        )?
        .execute(params![id, unix_millis()])?;
    if marked == 0 {
        return Err(Error::Conflict(format!("message {id} was taken meanwhile")));
    }
    Ok(())
}

/// The dead-letters service: judges which queued messages are dead and carries out the
/// operator's decision on one.
pub struct DeadLetters {
    store: Store,
    mailbox: Mailbox,
    registry: Arc<Registry>,
    /// Read only: whether an agent's harness is up, or paused.
    containers: Arc<Containers>,
    /// Read only: whether an agent is held stopped after a crash loop.
    watcher: Arc<Watcher>,
    /// Read only: whether an agent is paused (by the operator or the manager), running or not.
    pauses: Arc<Pauses>,
    /// `[mailbox] dead_letter_after_seconds`, in milliseconds.
    after_ms: i64,
}

impl DeadLetters {
    pub(crate) fn new(
        store: Store,
        mailbox: Mailbox,
        registry: Arc<Registry>,
        containers: Arc<Containers>,
        watcher: Arc<Watcher>,
        pauses: Arc<Pauses>,
        after_seconds: u64,
    ) -> Self {
        Self {
            store,
            mailbox,
            registry,
            containers,
            watcher,
            pauses,
            after_ms: after_seconds as i64 * 1000,
        }
    }

    /// The latest `sent_at` (Unix milliseconds) of a message that is dead at `now`.
    fn sent_before(&self, now: i64) -> i64 {
        now - self.after_ms
    }

    /// Why `agent` cannot take its mail now, if it cannot.
    fn cannot_take(&self, agent: &AgentName) -> Option<&'static str> {
        if self.watcher.holds_stopped(agent) {
            return Some("crash loop");
        }
        let paused = self
            .registry
            .get(agent)
            .is_some_and(|a| self.pauses.is_paused(a.incarnation));
        let run = self.containers.run_of(agent);
        if paused || run.turn_state == Some(proto::tools::TurnState::Paused) {
            return Some("paused");
        }
        (!run.up).then_some("not running")
    }

    /// Why mail queued for `inbox` (an agent's name, as stored) is dead now, if it is: an agent
    /// of the hive that cannot take it.
    fn why_dead(&self, inbox: &str) -> Option<&'static str> {
        AgentName::parse(inbox)
            .ok()
            .filter(|a| self.registry.get(a).is_some())
            .and_then(|a| self.cannot_take(&a))
    }

    /// The dead letters now, oldest first (at most [`MAX_LISTED`]).
    pub async fn list(&self) -> Result<Vec<DeadLetter>> {
        let now = unix_millis();
        let before = self.sent_before(now);
        let rows: Vec<Message> = self
            .store
            .read(move |c| {
                let mut q = c.prepare_cached(&format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages
                     WHERE state = 'queued' AND recipient != 'operator' AND sent_at <= ?1
                       AND {OF_THE_LIVE_AGENT}
                     ORDER BY id LIMIT ?2"
                ))?;
                let rows = q
                    .query_map(params![before, (MAX_LISTED * 4) as i64], message_from_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(rows)
            })
            .await?;
        let mut why_of: HashMap<String, Option<&'static str>> = HashMap::new();
        let mut out = Vec::new();
        for message in rows {
            let why = *why_of
                .entry(message.to.clone())
                .or_insert_with(|| self.why_dead(&message.to));
            if let Some(why) = why {
                let waited = ((now - message.sent_at).max(0) / 1000) as u64;
                out.push(DeadLetter {
                    message,
                    why,
                    waited_seconds: waited,
                });
                if out.len() == MAX_LISTED {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Checks that message `id` is a dead letter now (judged alone, as [`DeadLetters::list`]
    /// judges each); the message.
    async fn require_dead_letter(&self, id: i64) -> Result<Message> {
        let message = self.mailbox.message(id).await?;
        let live = self
            .store
            .read(move |c| {
                let live = c
                    .prepare_cached(&format!(
                        "SELECT {OF_THE_LIVE_AGENT} FROM messages WHERE id = ?1"
                    ))?
                    .query_row([id], |r| r.get(0))
                    .optional()?;
                Ok(live.unwrap_or(false))
            })
            .await?;
        let before = self.sent_before(unix_millis());
        let dead = message.state == MessageState::Queued
            && message.to != "operator"
            && live
            && message.sent_at <= before
            && self.why_dead(&message.to).is_some();
        if !dead {
            return Err(Error::Conflict(format!(
                "message {id} is not a dead letter (it is {}, for {}): only a message queued \
                 longer than mailbox.dead_letter_after_seconds for an agent that cannot take it \
                 is one",
                message.state.as_str(),
                message.to
            )));
        }
        Ok(message)
    }

    /// The operator sends dead letter `id` to `to` instead (an agent or `operator`): a new
    /// message from its sender with its body; the dead letter counts as delivered. Audited.
    pub async fn redirect(&self, id: i64, to: &str) -> Result<Message> {
        let to = match Recipient::parse(to)? {
            Recipient::Agent(agent) => {
                self.registry.require(&agent)?;
                agent.to_string()
            }
            Recipient::Operator => "operator".to_owned(),
            Recipient::Broadcast => {
                return Err(Error::invalid(
                    "to",
                    "a dead letter goes to one inbox: name an agent or operator",
                ));
            }
        };
        let message = self.require_dead_letter(id).await?;
        if message.to == to {
            return Err(Error::invalid(
                "to",
                format!("message {id} is already for {to}"),
            ));
        }
        let sent = self
            .store
            .write(move |c| {
                mark_delivered(c, id)?;
                let new = insert_messages(
                    c,
                    &message.from,
                    std::slice::from_ref(&to),
                    &message.body,
                    None,
                )?
                .remove(0);
                crate::audit::append(
                    c,
                    "operator",
                    "dead_letter_redirected",
                    Some(&message.to),
                    json!({"message": id, "to": to, "new_message": new.id}),
                )?;
                Ok(new)
            })
            .await?;
        self.mailbox.announce(vec![sent.clone()]);
        Ok(sent)
    }

    /// The operator drops dead letter `id`: it counts as delivered, unread. Audited.
    pub async fn drop_letter(&self, id: i64) -> Result<()> {
        let message = self.require_dead_letter(id).await?;
        self.store
            .write(move |c| {
                mark_delivered(c, id)?;
                crate::audit::append(
                    c,
                    "operator",
                    "dead_letter_dropped",
                    Some(&message.to),
                    json!({"message": id, "from": message.from}),
                )?;
                Ok(())
            })
            .await
    }
}
