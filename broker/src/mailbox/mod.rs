//! The mailbox (DESIGN §6): durable inboxes in the store, `send` / `recv`, harness leases and the
//! retention vacuum.
//!
//! A send returns its id only after its transaction committed. A waiting `recv` (or `next_turn`)
//! sleeps on its inbox's notifier — a `watch` channel bumped after each commit that adds to the
//! inbox — and never on a timer. A waiter whose caller went away takes nothing: the take runs in the
//! writer only while someone still waits for its answer, and what a caller that left while its
//! take committed was given goes back in the queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::watch;
use tokio::time::Instant;

mod commands;
mod handoff;
mod latency;

use handoff::{Handoff, Waiters, Want};
use latency::LatencyWindow;

use crate::bus::{Bus, Event};
use crate::config::MailboxConfig;
use crate::error::{Error, Result};
use crate::names::{AgentName, Inbox, Recipient, Sender};
use crate::registry::Registry;
use crate::store::{Store, message_counts, unix_millis};

pub use commands::CANCEL_COMMAND;
pub use proto::tools::{MAX_RECV, MAX_TURN_BYTES, MAX_TURN_MESSAGES, MAX_WAIT_SECONDS};

pub use proto::message::{DeliveryLatency, LatencySummary, Message, MessageState, Turn};

/// A message state as sqlite stores it (its name): the wire type cannot carry rusqlite's traits.
/// An unknown stored state is refused (a row this hive does not understand must not be taken for
/// a queued one and delivered again).
pub(crate) struct StoredState(pub MessageState);

impl rusqlite::types::FromSql for StoredState {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        let raw = value.as_str()?;
        MessageState::parse(raw).map(Self).ok_or_else(|| {
            rusqlite::types::FromSqlError::Other(
                format!("unknown stored message state '{raw}'; run a newer hyperhive").into(),
            )
        })
    }
}

/// The queued rows of inbox `?1` that its live incarnation may take: mail a destroyed
/// incarnation left waits with it (for a restore) and never reaches a new agent of the same name.
/// The operator's inbox has no incarnation (NULL IS NULL).
pub(crate) const LIVE_INBOX: &str =
    "incarnation IS (SELECT incarnation FROM agents WHERE name = ?1)";

/// A new turn of agent `?1` for message `?2` at `?3`, keyed by the message's incarnation; its
/// sends will be the messages after the newest one now (see [`crate::stats`]).
pub(crate) const INSERT_TURN: &str =
    "INSERT INTO turns (agent, message_id, started_at, incarnation, sent_after)
     VALUES (?1, ?2, ?3, (SELECT incarnation FROM messages WHERE id = ?2),
             (SELECT coalesce(max(id), 0) FROM messages))";

/// Leases message `?2` to turn `?1` at `?3`. `lease_turn` and `leased_at` stay after the turn
/// finished: they are the message's receipt (an open lease is `state = 'leased'` as well).
pub(crate) const LEASE_MESSAGE: &str =
    "UPDATE messages SET state = 'leased', lease_turn = ?1, leased_at = ?3 WHERE id = ?2";

/// What giving a lease back sets: the message queued again, flagged, its receipt cleared.
pub(crate) const UNLEASED: &str =
    "state = 'queued', lease_turn = NULL, leased_at = NULL, redelivered = 1";

pub(crate) const MESSAGE_COLUMNS: &str = "id, sender, recipient, body, in_reply_to, sent_at, state, \
     delivered_at, redelivered, leased_at, lease_turn";

pub(crate) fn message_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Message> {
    Ok(Message {
        id: r.get(0)?,
        from: r.get(1)?,
        to: r.get(2)?,
        body: r.get(3)?,
        in_reply_to: r.get(4)?,
        sent_at: r.get(5)?,
        state: r.get::<_, StoredState>(6)?.0,
        delivered_at: r.get(7)?,
        redelivered: r.get(8)?,
        leased_at: r.get(9)?,
        turn: r.get(10)?,
    })
}

/// A validated `recv` request: `wait` ≤ 180 s, `max` in 1…32.
#[derive(Debug, Clone, Copy)]
pub struct RecvLimits {
    pub wait: Duration,
    pub max: usize,
}

impl RecvLimits {
    pub fn new(wait_seconds: u64, max: u64) -> Result<Self> {
        if wait_seconds > MAX_WAIT_SECONDS {
            return Err(Error::invalid(
                "wait_seconds",
                format!("{wait_seconds} is too long; wait at most {MAX_WAIT_SECONDS} seconds"),
            ));
        }
        if max == 0 || max > MAX_RECV as u64 {
            return Err(Error::invalid(
                "max",
                format!("{max} is out of range; take 1 to {MAX_RECV} messages at a time"),
            ));
        }
        Ok(Self {
            wait: Duration::from_secs(wait_seconds),
            max: max as usize,
        })
    }
}

/// A turn of the given messages, oldest first (at least one).
pub(crate) fn turn_of(turn: i64, messages: Vec<Message>) -> Turn {
    Turn {
        turn,
        message: messages[0].clone(),
        messages,
    }
}

/// Per-inbox wake-ups: a counter bumped after every commit that adds to the inbox.
#[derive(Default)]
struct Notifiers {
    by_inbox: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Notifiers {
    /// A receiver that sees every bump from now on.
    fn subscribe(&self, inbox: &str) -> watch::Receiver<u64> {
        let mut map = self.by_inbox.lock().expect("notifiers");
        match map.get(inbox) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(0);
                map.insert(inbox.to_owned(), tx);
                rx
            }
        }
    }

    fn wake(&self, inbox: &str) {
        let map = self.by_inbox.lock().expect("notifiers");
        if let Some(tx) = map.get(inbox) {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

/// A cheap handle: clones share the wake-ups and the waiters, so services can hold their own.
#[derive(Clone)]
pub struct Mailbox {
    store: Store,
    registry: Arc<Registry>,
    bus: Bus,
    notifiers: Arc<Notifiers>,
    waiters: Arc<Waiters>,
    latency: Arc<LatencyWindow>,
    max_body_bytes: usize,
    max_queued_per_inbox: u64,
}

impl Mailbox {
    pub fn new(store: Store, registry: Arc<Registry>, bus: Bus, config: &MailboxConfig) -> Self {
        Self {
            store,
            registry,
            bus,
            notifiers: Arc::default(),
            waiters: Arc::default(),
            latency: Arc::default(),
            max_body_bytes: config.max_body_bytes,
            max_queued_per_inbox: config.max_queued_per_inbox,
        }
    }

    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// Stores a message and returns the ids of the rows it became (one, or one per agent for `*`),
    /// after they committed.
    pub async fn send(
        &self,
        from: &Sender,
        to: &Recipient,
        body: String,
        in_reply_to: Option<i64>,
    ) -> Result<Vec<i64>> {
        if body.is_empty() {
            return Err(Error::invalid("body", "a message needs a body"));
        }
        if body.len() > self.max_body_bytes {
            return Err(Error::BodyTooLarge {
                len: body.len(),
                max: self.max_body_bytes,
            });
        }
        if let Some(id) = in_reply_to
            && id <= 0
        {
            return Err(Error::invalid(
                "in_reply_to",
                format!("{id} is not a message id"),
            ));
        }
        let recipients = self.resolve(from, to)?;
        let sender = from.as_str().to_owned();
        let quota = self.max_queued_per_inbox;
        let broadcast = *to == Recipient::Broadcast;
        // A waiting receiver gets its message in this same transaction, handed over on the
        // committing thread the moment the commit is done; other receivers are woken there too.
        let (notifiers, waiters, store) = (
            self.notifiers.clone(),
            self.waiters.clone(),
            self.store.clone(),
        );
        let (rows, _) = self
            .store
            .write_then(
                move |c| {
                    check_queue_quota(c, &recipients, quota)?;
                    let mut rows = insert_messages(c, &sender, &recipients, &body, in_reply_to)?;
                    if broadcast {
                        // Marked so the sender's turn stats count one broadcast, not n sends.
                        let mut mark =
                            c.prepare_cached("UPDATE messages SET broadcast = ?1 WHERE id = ?2")?;
                        for m in &rows {
                            mark.execute([rows[0].id, m.id])?;
                        }
                    }
                    let claims = waiters.claim(c, &mut rows)?;
                    Ok((rows, claims))
                },
                move |(rows, claims)| {
                    for claim in claims.drain(..) {
                        if let Some(untaken) = claim.hand_over() {
                            put_back(&store, &notifiers, untaken);
                        }
                    }
                    for m in rows.iter().filter(|m| m.state == MessageState::Queued) {
                        notifiers.wake(&m.to);
                    }
                },
            )
            .await?;
        let ids = rows.iter().map(|m| m.id).collect();
        self.publish(rows);
        Ok(ids)
    }

    fn publish(&self, rows: Vec<Message>) {
        for message in rows {
            self.bus.publish(Event::MessageSent {
                message: Arc::new(message),
            });
        }
    }

    /// Wakes the inboxes of messages that have just COMMITTED and tells the bus. Every path that
    /// inserts messages (sends, reminders, answers, helper events) ends here.
    pub(crate) fn announce(&self, rows: Vec<Message>) {
        rows.iter().for_each(|m| self.notifiers.wake(&m.to));
        self.publish(rows);
    }

    /// The inboxes a send reaches, checked against the registry and the sender's allow-list.
    fn resolve(&self, from: &Sender, to: &Recipient) -> Result<Vec<String>> {
        let sender_record = match from {
            Sender::Agent(name) => {
                Some(self.registry.get(name).ok_or_else(|| Error::NotFound {
                    what: format!("sending agent '{name}'"),
                })?)
            }
            Sender::Operator | Sender::System => None,
        };
        let may_send =
            |name: &AgentName| sender_record.as_ref().is_none_or(|r| r.may_send_to(name));
        match to {
            Recipient::Operator => {
                if *from == Sender::Operator {
                    return Err(Error::SendToSelf);
                }
                Ok(vec!["operator".to_owned()])
            }
            Recipient::Agent(name) => {
                if matches!(from, Sender::Agent(me) if me == name) {
                    return Err(Error::SendToSelf);
                }
                if self.registry.get(name).is_none() {
                    return Err(Error::UnknownAgent {
                        name: name.to_string(),
                        allowed: self.allowed_for(from),
                    });
                }
                if !may_send(name) {
                    return Err(Error::NotAllowed {
                        name: name.to_string(),
                        allowed: self.allowed_for(from),
                    });
                }
                Ok(vec![name.to_string()])
            }
            Recipient::Broadcast => {
                let all: Vec<String> = self
                    .registry
                    .names()
                    .into_iter()
                    .filter(|n| !matches!(from, Sender::Agent(me) if me == n) && may_send(n))
                    .map(|n| n.to_string())
                    .collect();
                if all.is_empty() {
                    return Err(Error::invalid(
                        "to",
                        "'*' reaches nobody: there is no other agent",
                    ));
                }
                Ok(all)
            }
        }
    }

    /// Whom `from` may write to, for error messages.
    fn allowed_for(&self, from: &Sender) -> Vec<String> {
        let me = match from {
            Sender::Agent(name) => self.registry.get(name),
            _ => None,
        };
        let mut names: Vec<String> = self
            .registry
            .names()
            .into_iter()
            .filter(|n| me.as_ref().is_none_or(|r| &r.name != n && r.may_send_to(n)))
            .map(|n| n.to_string())
            .collect();
        if *from != Sender::Operator {
            names.push("operator".into());
        }
        names
    }

    /// Takes up to `limits.max` queued messages of `inbox`, oldest first, marking them delivered.
    /// With none queued, waits up to `limits.wait` for a send to wake it.
    /// How many receivers (`recv` or `next_turn`) wait on `inbox` right now. A harness waiting
    /// here is an agent at rest; tests wait for it instead of sleeping.
    pub fn waiting_receivers(&self, inbox: &Inbox) -> usize {
        self.waiters.count(inbox.as_str())
    }

    pub async fn recv(&self, inbox: &Inbox, limits: RecvLimits) -> Result<Vec<Message>> {
        let key = inbox.as_str().to_owned();
        let taken = self
            .wait_for(&key, limits.wait, Want::Messages, |id| {
                let (key, waiters) = (key.clone(), self.waiters.clone());
                self.store.write_or_give_back(
                    move |c| {
                        if !waiters.is_waiting(&key, id) {
                            return Ok(Vec::new()); // claimed by a send: the hand-over brings it
                        }
                        let taken = take_delivered(c, &key, limits.max)?;
                        if !taken.is_empty() {
                            waiters.withdraw(&key, id);
                        }
                        Ok(taken)
                    },
                    self.give_back(),
                )
            })
            .await?;
        if let Some(taken) = &taken {
            self.latency.record_taken(unix_millis(), taken);
            self.bus.publish(Event::MessageDelivered {
                ids: taken.iter().map(|m| m.id).collect(),
                to: key,
            });
        }
        Ok(taken.unwrap_or_default())
    }

    /// What a take whose caller left while it committed does with what it took: puts it back in
    /// the queue, flagged `redelivered`, in the writer's next batch.
    fn give_back<T: Taken>(&self) -> impl FnOnce(T) + Send + 'static {
        let put_back = self.put_back_hook();
        move |taken| {
            if let Some(untaken) = taken.into_handoff() {
                put_back(untaken);
            }
        }
    }

    /// Puts a hand-over nobody took back in the queue, flagged `redelivered`, in the writer's
    /// next batch.
    fn put_back_hook(&self) -> impl FnOnce(Handoff) + Send + 'static {
        let (store, notifiers) = (self.store.clone(), self.notifiers.clone());
        move |untaken| put_back(&store, &notifiers, untaken)
    }

    /// Takes with `take` until it finds something, a send hands something over, or `wait` passes.
    /// The wait is registered before each look, so a send that commits between the look and the
    /// wait hands its message over (or, for messages queued another way, wakes the notifier).
    /// `None` means nothing came.
    async fn wait_for<T, F, Fut>(
        &self,
        inbox: &str,
        wait: Duration,
        want: Want,
        take: F,
    ) -> Result<Option<T>>
    where
        T: Taken,
        F: Fn(u64) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut woken = self.notifiers.subscribe(inbox);
        let deadline = Instant::now() + wait;
        loop {
            let mut wait = self.waiters.register(inbox, want, self.put_back_hook());
            let got = take(wait.id).await?;
            if !got.is_nothing() {
                return Ok(Some(got));
            }
            tokio::select! {
                handed = &mut wait.rx => match handed {
                    Ok(handoff) => return Ok(Some(T::from_handoff(handoff))),
                    Err(_) => continue, // the send's commit failed: look again
                },
                changed = woken.changed() => {
                    if let Some(handoff) = wait.settle().await {
                        return Ok(Some(T::from_handoff(handoff)));
                    }
                    if changed.is_err() {
                        return Ok(None); // shutting down
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Ok(wait.settle().await.map(T::from_handoff));
                }
            }
        }
    }

    /// The harness's take: leases the queued messages of `agent` (oldest first, up to
    /// [`MAX_TURN_MESSAGES`] and [`MAX_TURN_BYTES`] of bodies) to one new turn. With none queued,
    /// waits up to `wait`.
    pub async fn next_turn(&self, agent: &AgentName, wait: Duration) -> Result<Option<Turn>> {
        if wait > Duration::from_secs(MAX_WAIT_SECONDS) {
            return Err(Error::invalid(
                "wait_seconds",
                format!("wait at most {MAX_WAIT_SECONDS} seconds"),
            ));
        }
        let key = agent.to_string();
        self.wait_for(&key, wait, Want::Turn, |id| {
            let (key, waiters) = (key.clone(), self.waiters.clone());
            self.store.write_or_give_back(
                move |c| {
                    if !waiters.is_waiting(&key, id) {
                        return Ok(None);
                    }
                    let turn = lease_queued(c, &key)?;
                    if turn.is_some() {
                        waiters.withdraw(&key, id);
                    }
                    Ok(turn)
                },
                self.give_back(),
            )
        })
        .await
        .map(Option::flatten)
        .inspect(|turn| {
            if let Some(t) = turn {
                self.latency.record_taken(unix_millis(), &t.messages);
            }
        })
    }

    /// The delivery latency of the last hour, from memory (see [`latency`]).
    pub fn delivery_latency(&self) -> proto::message::DeliveryLatency {
        self.latency.summary(unix_millis())
    }

    /// Ends a turn: its messages become delivered. `outcome` and `usage` are kept on the turn.
    pub async fn finish_turn(
        &self,
        agent: &AgentName,
        turn: i64,
        outcome: &str,
        usage: Option<proto::Usage>,
    ) -> Result<()> {
        let key = agent.to_string();
        let outcome = outcome.to_owned();
        let usage = usage
            .map(|u| serde_json::to_string(&u))
            .transpose()
            .map_err(|e| Error::Internal(format!("cannot encode usage: {e}")))?;
        let (now, delivered) = self
            .store
            .write(move |c| {
                let now = unix_millis();
                let open = c
                    .prepare_cached(
                        "UPDATE turns SET finished_at = ?1, outcome = ?2, usage = ?3
                         WHERE id = ?4 AND agent = ?5 AND finished_at IS NULL",
                    )?
                    .execute(params![now, outcome, usage, turn, key])?;
                if open == 0 {
                    return Err(Error::NotFound {
                        what: format!("open turn {turn}"),
                    });
                }
                crate::stats::record(c, turn)?;
                let delivered = c
                    .prepare_cached(
                        "UPDATE messages SET state = 'delivered', delivered_at = ?1
                         WHERE lease_turn = ?2 AND state = 'leased' RETURNING id, sent_at",
                    )?
                    .query_map(params![now, turn], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((now, delivered))
            })
            .await?;
        let (ids, sent_at): (Vec<i64>, Vec<i64>) = delivered.into_iter().unzip();
        self.latency.record_delivered(now, &sent_at);
        if !ids.is_empty() {
            self.bus.publish(Event::MessageDelivered {
                ids,
                to: agent.to_string(),
            });
        }
        Ok(())
    }

    /// Appends events to an open turn of `agent` and shows them on the bus. Returns how many.
    pub async fn record_turn_events(
        &self,
        agent: &AgentName,
        turn: i64,
        events: Vec<serde_json::Value>,
    ) -> Result<usize> {
        let size: usize = events.iter().map(|e| e.to_string().len()).sum();
        if size > self.max_body_bytes * 16 {
            return Err(Error::invalid(
                "events",
                format!(
                    "{size} bytes of events in one call; send at most {}",
                    self.max_body_bytes * 16
                ),
            ));
        }
        // A provider's error quoting a key must not be kept or shown (DESIGN §16).
        let events: Vec<serde_json::Value> = events
            .into_iter()
            .map(|e| {
                let text = e.to_string();
                match crate::redact::mask(&text) {
                    std::borrow::Cow::Borrowed(_) => e,
                    std::borrow::Cow::Owned(masked) => {
                        serde_json::from_str(&masked).unwrap_or(serde_json::Value::String(masked))
                    }
                }
            })
            .collect();
        let key = agent.to_string();
        let events = Arc::new(events);
        let stored = events.clone();
        let n = self
            .store
            .write(move |c| {
                let open = c
                    .prepare_cached("SELECT 1 FROM turns WHERE id = ?1 AND agent = ?2 AND finished_at IS NULL")?
                    .exists(params![turn, key])?;
                if !open {
                    return Err(Error::NotFound {
                        what: format!("open turn {turn}"),
                    });
                }
                let mut seq: i64 = c
                    .prepare_cached("SELECT coalesce(max(seq), 0) FROM turn_events WHERE turn = ?1")?
                    .query_row([turn], |r| r.get(0))?;
                let now = unix_millis();
                let mut insert = c.prepare_cached(
                    "INSERT INTO turn_events (turn, seq, at, kind, data) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for e in stored.iter() {
                    seq += 1;
                    let kind = e["type"].as_str().unwrap_or("event");
                    insert.execute(params![turn, seq, now, kind, e.to_string()])?;
                }
                Ok(stored.len())
            })
            .await?;
        self.bus.publish(Event::TurnEvents {
            agent: agent.to_string(),
            turn,
            events,
        });
        Ok(n)
    }

    /// Returns every message leased to `agent`'s unfinished turns to its queue, flagged
    /// `redelivered`: called when the agent stops or its harness goes away. Returns how many.
    pub async fn release_leases(&self, agent: &AgentName) -> Result<usize> {
        let key = agent.to_string();
        let released = self.store.write(move |c| release(c, Some(&key))).await?;
        if released > 0 {
            self.notifiers.wake(agent.as_str());
        }
        Ok(released)
    }

    /// Returns the messages of the given unfinished turns of `agent` to its queue, flagged
    /// `redelivered`: called when the harness connection that took them goes away.
    pub async fn release_turns(&self, agent: &AgentName, turns: Vec<i64>) -> Result<usize> {
        if turns.is_empty() {
            return Ok(0);
        }
        let key = agent.to_string();
        let released = self
            .store
            .write(move |c| {
                let now = unix_millis();
                let mut released = 0;
                for turn in turns {
                    let open = c
                        .prepare_cached(
                            "UPDATE turns SET finished_at = ?1, outcome = 'abandoned'
                             WHERE id = ?2 AND agent = ?3 AND finished_at IS NULL",
                        )?
                        .execute(params![now, turn, key])?;
                    if open == 1 {
                        released += c
                            .prepare_cached(&format!(
                                "UPDATE messages SET {UNLEASED}
                                 WHERE lease_turn = ?1 AND state = 'leased'"
                            ))?
                            .execute([turn])?;
                    }
                }
                Ok(released)
            })
            .await?;
        if released > 0 {
            self.notifiers.wake(agent.as_str());
        }
        Ok(released)
    }

    /// Releases the leases of every agent: at daemon start no harness holds a turn.
    pub async fn release_all_leases(&self) -> Result<usize> {
        self.store.write(|c| release(c, None)).await
    }

    /// Deletes delivered messages older than `retention` (queued and leased ones are never
    /// deleted). Returns how many went.
    pub async fn vacuum(&self, retention: Duration) -> Result<usize> {
        let cutoff = unix_millis() - retention.as_millis() as i64;
        self.store
            .write(move |c| {
                Ok(c.execute(
                    "DELETE FROM messages WHERE state = 'delivered' AND delivered_at < ?1",
                    [cutoff],
                )?)
            })
            .await
    }

    /// The newest `limit` messages, oldest first; only those from or to `agent` when given.
    pub async fn history(&self, agent: Option<String>, limit: usize) -> Result<Vec<Message>> {
        self.store
            .read(move |c| {
                let mut rows = match &agent {
                    Some(who) => c
                        .prepare_cached(&format!(
                            "SELECT {MESSAGE_COLUMNS} FROM messages
                             WHERE sender = ?1 OR recipient = ?1 ORDER BY id DESC LIMIT ?2"
                        ))?
                        .query_map(params![who, limit as i64], message_from_row)?
                        .collect::<Result<Vec<_>, _>>()?,
                    None => c
                        .prepare_cached(&format!(
                            "SELECT {MESSAGE_COLUMNS} FROM messages ORDER BY id DESC LIMIT ?1"
                        ))?
                        .query_map([limit as i64], message_from_row)?
                        .collect::<Result<Vec<_>, _>>()?,
                };
                rows.sort_by_key(|m| m.id);
                Ok(rows)
            })
            .await
    }

    /// Message `id`, whatever its state.
    pub async fn message(&self, id: i64) -> Result<Message> {
        self.store
            .read(move |c| {
                c.prepare_cached(&format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?1"
                ))?
                .query_row([id], message_from_row)
                .optional()?
                .ok_or_else(|| Error::NotFound {
                    what: format!("message {id}"),
                })
            })
            .await
    }

    /// The newest `limit` messages to `inbox`, oldest first, whatever their state. Marks nothing.
    pub async fn inbox(&self, inbox: &Inbox, limit: usize) -> Result<Vec<Message>> {
        let key = inbox.as_str().to_owned();
        self.store
            .read(move |c| {
                let mut rows = c
                    .prepare_cached(&format!(
                        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE recipient = ?1
                         ORDER BY id DESC LIMIT ?2"
                    ))?
                    .query_map(params![key, limit as i64], message_from_row)?
                    .collect::<Result<Vec<_>, _>>()?;
                rows.reverse();
                Ok(rows)
            })
            .await
    }

    /// Counts of messages by state (for `hive status`), from the counts the store keeps: a read of
    /// a few rows per inbox, whatever the length of the history.
    pub async fn counts(&self) -> Result<MessageCounts> {
        self.store.read(|c| stored_counts(c, None)).await
    }
}

/// The stored message counts of one inbox, or of all of them, read inside any transaction.
pub fn stored_counts(c: &Connection, inbox: Option<&str>) -> Result<MessageCounts> {
    let mut counts = MessageCounts::default();
    let mut stmt;
    let mut rows = match inbox {
        Some(inbox) => {
            stmt = c.prepare_cached(
                "SELECT state, sum(n) FROM message_counts WHERE recipient = ?1 GROUP BY state",
            )?;
            stmt.query([inbox])?
        }
        None => {
            stmt = c.prepare_cached("SELECT state, sum(n) FROM message_counts GROUP BY state")?;
            stmt.query([])?
        }
    };
    while let Some(row) = rows.next()? {
        let n = row.get::<_, i64>(1)?.max(0) as u64;
        match row.get::<_, StoredState>(0)?.0 {
            MessageState::Queued => counts.queued = n,
            MessageState::Leased => counts.leased = n,
            MessageState::Delivered => counts.delivered = n,
        }
    }
    Ok(counts)
}

pub use proto::status::MessageCounts;

/// What a take found; "nothing" sends the waiter back to sleep.
trait Taken: Send + 'static {
    fn is_nothing(&self) -> bool;
    fn from_handoff(handoff: Handoff) -> Self;
    /// What was taken, as a hand-over to put back; `None` for nothing.
    fn into_handoff(self) -> Option<Handoff>;
}

impl Taken for Vec<Message> {
    fn is_nothing(&self) -> bool {
        self.is_empty()
    }

    fn from_handoff(handoff: Handoff) -> Self {
        match handoff {
            Handoff::Messages(messages) => messages,
            Handoff::Turn(t) => t.messages,
        }
    }

    fn into_handoff(self) -> Option<Handoff> {
        (!self.is_empty()).then_some(Handoff::Messages(self))
    }
}

impl Taken for Option<Turn> {
    fn is_nothing(&self) -> bool {
        self.is_none()
    }

    fn from_handoff(handoff: Handoff) -> Self {
        match handoff {
            Handoff::Turn(t) => Some(t),
            Handoff::Messages(_) => None,
        }
    }

    fn into_handoff(self) -> Option<Handoff> {
        self.map(Handoff::Turn)
    }
}

/// Puts a hand-over nobody took back in its queue and wakes the inbox: run from the writer
/// thread, so it is queued behind the commit that claimed it.
fn put_back(store: &Store, notifiers: &Arc<Notifiers>, untaken: Handoff) {
    let inbox = untaken.inbox().to_owned();
    let notifiers = notifiers.clone();
    store.write_detached(
        "putting back a message its receiver left",
        move |c| handoff::undo(c, &untaken),
        move || notifiers.wake(&inbox),
    );
}

/// Refuses a send when an inbox it reaches holds `quota` queued messages already (all or none:
/// a broadcast stores nothing then). Reads the recipient's current incarnation's count as the
/// transaction sees it (`store::message_counts`: the stored count plus what this batch queued;
/// what a destroyed agent of the same name left queued is not this one's), so a send costs the
/// same with 10 or 100 000 queued.
fn check_queue_quota(c: &Connection, recipients: &[String], quota: u64) -> Result<()> {
    for inbox in recipients {
        let queued = message_counts::inbox_now(c, inbox)?.queued;
        if queued.max(0) as u64 >= quota {
            return Err(Error::InboxFull {
                inbox: inbox.clone(),
                max: quota,
            });
        }
    }
    Ok(())
}

/// Inserts one message per recipient inside the caller's transaction. The caller must
/// [`Mailbox::announce`] the rows after the commit.
pub(crate) fn insert_messages(
    c: &Connection,
    sender: &str,
    recipients: &[String],
    body: &str,
    in_reply_to: Option<i64>,
) -> Result<Vec<Message>> {
    if let Some(id) = in_reply_to {
        let exists = c
            .prepare_cached("SELECT 1 FROM messages WHERE id = ?1")?
            .exists([id])?;
        if !exists {
            return Err(Error::NotFound {
                what: format!("message {id} (in_reply_to)"),
            });
        }
    }
    let now = unix_millis();
    let mut insert = c.prepare_cached(
        "INSERT INTO messages (sender, recipient, body, in_reply_to, sent_at, incarnation)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    let mut rows = Vec::with_capacity(recipients.len());
    for to in recipients {
        let incarnation = message_counts::inbox_now(c, to)?.incarnation;
        message_counts::insert_queued(to, incarnation, || {
            insert.execute(params![sender, to, body, in_reply_to, now, incarnation])
        })?;
        rows.push(Message {
            id: c.last_insert_rowid(),
            from: sender.to_owned(),
            to: to.clone(),
            body: body.to_owned(),
            in_reply_to,
            sent_at: now,
            state: MessageState::Queued,
            delivered_at: None,
            leased_at: None,
            turn: None,
            redelivered: false,
        });
    }
    Ok(rows)
}

fn take_delivered(c: &Connection, inbox: &str, max: usize) -> Result<Vec<Message>> {
    let mut messages = c
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages
             WHERE recipient = ?1 AND state = 'queued' AND {LIVE_INBOX} ORDER BY id LIMIT ?2"
        ))?
        .query_map(params![inbox, max as i64], message_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    if messages.is_empty() {
        return Ok(messages);
    }
    let now = unix_millis();
    let mut mark = c.prepare_cached(
        "UPDATE messages SET state = 'delivered', delivered_at = ?1 WHERE id = ?2",
    )?;
    for m in &mut messages {
        mark.execute(params![now, m.id])?;
        m.state = MessageState::Delivered;
        m.delivered_at = Some(now);
    }
    Ok(messages)
}

/// Leases the queued messages of `agent`, oldest first, to one new turn: at most
/// [`MAX_TURN_MESSAGES`], and no more than [`MAX_TURN_BYTES`] of bodies unless the first alone is
/// larger (a turn always carries at least one).
fn lease_queued(c: &Connection, agent: &str) -> Result<Option<Turn>> {
    if crate::pause::paused_in(c, agent)? {
        return Ok(None);
    }
    let queued = c
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages
             WHERE recipient = ?1 AND state = 'queued' AND {LIVE_INBOX} ORDER BY id LIMIT ?2"
        ))?
        .query_map(params![agent, MAX_TURN_MESSAGES as i64], message_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    let mut bytes = 0;
    let mut messages: Vec<Message> = Vec::with_capacity(queued.len());
    for m in queued {
        bytes += m.body.len();
        if !messages.is_empty() && bytes > MAX_TURN_BYTES {
            break;
        }
        messages.push(m);
    }
    if messages.is_empty() {
        return Ok(None);
    }
    let now = unix_millis();
    c.prepare_cached(INSERT_TURN)?
        .execute(params![agent, messages[0].id, now])?;
    let turn = c.last_insert_rowid();
    let mut lease = c.prepare_cached(LEASE_MESSAGE)?;
    for m in &mut messages {
        lease.execute(params![turn, m.id, now])?;
        m.state = MessageState::Leased;
        m.leased_at = Some(now);
        m.turn = Some(turn);
    }
    Ok(Some(turn_of(turn, messages)))
}

fn release(c: &Connection, agent: Option<&str>) -> Result<usize> {
    let now = unix_millis();
    c.execute(
        "UPDATE turns SET finished_at = ?1, outcome = 'abandoned'
         WHERE finished_at IS NULL AND (?2 IS NULL OR agent = ?2)",
        params![now, agent],
    )?;
    Ok(c.execute(
        &format!(
            "UPDATE messages SET {UNLEASED}
             WHERE state = 'leased' AND (?1 IS NULL OR recipient = ?1)"
        ),
        params![agent],
    )?)
}
