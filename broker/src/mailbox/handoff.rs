//! Direct delivery to a waiting receiver. A `recv` or `next_turn` that finds its inbox empty
//! registers here; the next send to that inbox delivers (or leases) the message to it inside the
//! send's own transaction and hands it over the moment that commits — one commit and one wake-up
//! instead of a wake-up, a second take and a second commit.
//!
//! Order holds: a send claims a waiter only when its message is the oldest queued one of the
//! inbox. Nothing is lost: a waiter that went away before the hand-over gets its message put back
//! in the queue.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, params};
use tokio::sync::oneshot;

use super::{INSERT_TURN, LEASE_MESSAGE, LIVE_INBOX, Message, MessageState, Turn, UNLEASED};
use crate::error::Result;
use crate::store::unix_millis;

/// What a waiter takes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Want {
    /// `recv`: messages, marked delivered.
    Messages,
    /// `next_turn`: the new message, leased to a new turn.
    Turn,
}

/// What a waiter is handed.
#[derive(Debug)]
pub(super) enum Handoff {
    Messages(Vec<Message>),
    Turn(Turn),
}

struct Waiter {
    id: u64,
    want: Want,
    tx: oneshot::Sender<Handoff>,
}

#[derive(Default)]
pub(super) struct Waiters {
    next_id: AtomicU64,
    by_inbox: Mutex<HashMap<String, VecDeque<Waiter>>>,
}

/// What becomes of a hand-over its waiter left before taking it: put back in the queue.
pub(super) type GiveBack = Box<dyn FnOnce(Handoff) + Send>;

/// A registered wait; dropping it withdraws it, and gives back what was handed over untaken.
pub(super) struct Registration {
    waiters: Arc<Waiters>,
    inbox: String,
    pub id: u64,
    pub rx: oneshot::Receiver<Handoff>,
    give_back: Option<GiveBack>,
}

impl Registration {
    /// Ends the wait: `None` if nothing was claimed for it, else what was (or is being) handed
    /// over. A hand-over whose commit failed comes as `None` too.
    pub async fn settle(&mut self) -> Option<Handoff> {
        if self.waiters.withdraw(&self.inbox, self.id) {
            return None;
        }
        (&mut self.rx).await.ok()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.waiters.withdraw(&self.inbox, self.id) {
            return;
        }
        // Claimed by a send. Closed first, a hand-over still to come fails and its send gives it
        // back; one that came already waits in the channel, untaken, and is given back here.
        self.rx.close();
        if let (Ok(untaken), Some(give_back)) = (self.rx.try_recv(), self.give_back.take()) {
            give_back(untaken);
        }
    }
}

/// A message claimed for a waiter in a send's transaction, to hand over after the commit.
pub(super) struct Claim {
    tx: oneshot::Sender<Handoff>,
    handoff: Handoff,
}

impl Claim {
    /// Hands the message over; gives it back if the waiter is gone.
    pub fn hand_over(self) -> Option<Handoff> {
        self.tx.send(self.handoff).err()
    }
}

impl Waiters {
    /// Registers a wait on `inbox`; `give_back` gets what a send hands over if the wait is dropped
    /// before taking it.
    pub fn register(
        self: &Arc<Self>,
        inbox: &str,
        want: Want,
        give_back: impl FnOnce(Handoff) + Send + 'static,
    ) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.by_inbox
            .lock()
            .expect("waiters")
            .entry(inbox.to_owned())
            .or_default()
            .push_back(Waiter { id, want, tx });
        Registration {
            waiters: self.clone(),
            inbox: inbox.to_owned(),
            id,
            rx,
            give_back: Some(Box::new(give_back)),
        }
    }

    /// How many waits are registered on `inbox`.
    pub fn count(&self, inbox: &str) -> usize {
        let map = self.by_inbox.lock().expect("waiters");
        map.get(inbox).map_or(0, VecDeque::len)
    }

    /// Whether the wait `id` is still registered (not claimed, not withdrawn).
    pub fn is_waiting(&self, inbox: &str, id: u64) -> bool {
        let map = self.by_inbox.lock().expect("waiters");
        map.get(inbox).is_some_and(|q| q.iter().any(|w| w.id == id))
    }

    /// Removes the wait `id`; false if it was no longer there (claimed).
    pub fn withdraw(&self, inbox: &str, id: u64) -> bool {
        let mut map = self.by_inbox.lock().expect("waiters");
        let Some(queue) = map.get_mut(inbox) else {
            return false;
        };
        let before = queue.len();
        queue.retain(|w| w.id != id);
        let removed = queue.len() != before;
        if queue.is_empty() {
            map.remove(inbox);
        }
        removed
    }

    /// Inside a send's transaction: gives each new message whose inbox has a live waiter, and no
    /// older queued message, to the first such waiter — marked delivered, or leased to a new turn.
    /// Returns the claims to hand over after the commit; `rows` are updated to their new state.
    pub fn claim(&self, c: &Connection, rows: &mut [Message]) -> Result<Vec<Claim>> {
        let mut map = self.by_inbox.lock().expect("waiters");
        let mut claims = Vec::new();
        for row in rows.iter_mut() {
            let Some(queue) = map.get_mut(&row.to) else {
                continue;
            };
            while queue.front().is_some_and(|w| w.tx.is_closed()) {
                queue.pop_front();
            }
            if queue.is_empty() {
                map.remove(&row.to);
                continue;
            }
            // A paused agent's harness may not have noticed the pause yet: lease it nothing.
            if queue.front().is_some_and(|w| matches!(w.want, Want::Turn))
                && crate::pause::paused_in(c, &row.to)?
            {
                continue;
            }
            let older_queued = c
                .prepare_cached(&format!(
                    // The queued index, named: left to itself the planner walks the inbox's
                    // whole history (`messages_by_recipient`), delivered rows included.
                    "SELECT 1 FROM messages INDEXED BY messages_queued
                     WHERE recipient = ?1 AND state = 'queued' AND id < ?2 AND {LIVE_INBOX}"
                ))?
                .exists(params![row.to, row.id])?;
            if older_queued {
                continue;
            }
            let waiter = queue.pop_front().expect("not empty");
            let now = unix_millis();
            let handoff = match waiter.want {
                Want::Messages => {
                    c.prepare_cached(
                        "UPDATE messages SET state = 'delivered', delivered_at = ?1 WHERE id = ?2",
                    )?
                    .execute(params![now, row.id])?;
                    row.state = MessageState::Delivered;
                    row.delivered_at = Some(now);
                    Handoff::Messages(vec![row.clone()])
                }
                Want::Turn => {
                    c.prepare_cached(INSERT_TURN)?
                        .execute(params![row.to, row.id, now])?;
                    let turn = c.last_insert_rowid();
                    c.prepare_cached(LEASE_MESSAGE)?
                        .execute(params![turn, row.id, now])?;
                    row.state = MessageState::Leased;
                    row.leased_at = Some(now);
                    row.turn = Some(turn);
                    Handoff::Turn(super::turn_of(turn, vec![row.clone()]))
                }
            };
            claims.push(Claim {
                tx: waiter.tx,
                handoff,
            });
        }
        Ok(claims)
    }
}

/// Puts back a hand-over nobody took, inside the caller's transaction, flagged `redelivered`: it
/// may have got as far as the receiver's connection.
pub(super) fn undo(c: &Connection, handoff: &Handoff) -> Result<()> {
    match handoff {
        Handoff::Messages(messages) => {
            for m in messages {
                c.execute(
                    "UPDATE messages SET state = 'queued', delivered_at = NULL, redelivered = 1
                     WHERE id = ?1 AND state = 'delivered'",
                    [m.id],
                )?;
            }
        }
        Handoff::Turn(t) => {
            c.execute(
                "UPDATE turns SET finished_at = ?1, outcome = 'abandoned'
                 WHERE id = ?2 AND finished_at IS NULL",
                params![unix_millis(), t.turn],
            )?;
            c.execute(
                &format!(
                    "UPDATE messages SET {UNLEASED} WHERE state = 'leased' AND lease_turn = ?1"
                ),
                [t.turn],
            )?;
        }
    }
    Ok(())
}

impl Handoff {
    pub fn inbox(&self) -> &str {
        match self {
            Self::Messages(m) => &m[0].to,
            Self::Turn(t) => &t.message.to,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Synchronous;
    use crate::mailbox::insert_messages;
    use crate::store::Store;

    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        Store::open(&path, Synchronous::Normal).unwrap().close();
        (dir, Connection::open(&path).unwrap())
    }

    fn state(c: &Connection, id: i64) -> String {
        c.query_row("SELECT state FROM messages WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap()
    }

    #[test]
    fn a_claim_for_a_receiver_that_left_is_put_back() {
        let (_dir, c) = db();
        let waiters = Arc::new(Waiters::default());
        let wait = waiters.register("bob", Want::Messages, |_| {});
        let mut rows = insert_messages(&c, "alice", &["bob".into()], "hi", None).unwrap();
        let claims = waiters.claim(&c, &mut rows).unwrap();
        assert_eq!(claims.len(), 1);
        assert_eq!(state(&c, rows[0].id), "delivered");
        drop(wait); // the receiver leaves before the hand-over
        let untaken = claims
            .into_iter()
            .next()
            .unwrap()
            .hand_over()
            .expect("given back");
        undo(&c, &untaken).unwrap();
        assert_eq!(state(&c, rows[0].id), "queued");
    }

    #[test]
    fn an_older_queued_message_is_not_overtaken() {
        let (_dir, c) = db();
        let waiters = Arc::new(Waiters::default());
        let first = insert_messages(&c, "alice", &["bob".into()], "first", None).unwrap();
        let mut wait = waiters.register("bob", Want::Turn, |_| {});
        let mut second = insert_messages(&c, "alice", &["bob".into()], "second", None).unwrap();
        assert!(waiters.claim(&c, &mut second).unwrap().is_empty());
        assert_eq!(state(&c, first[0].id), "queued");
        assert_eq!(state(&c, second[0].id), "queued");
        assert!(waiters.is_waiting("bob", wait.id));
        assert!(wait.rx.try_recv().is_err());
    }

    #[test]
    fn a_turn_claim_leases_the_message() {
        let (_dir, c) = db();
        let waiters = Arc::new(Waiters::default());
        let mut wait = waiters.register("bob", Want::Turn, |_| {});
        let mut rows = insert_messages(&c, "alice", &["bob".into()], "work", None).unwrap();
        let claim = waiters.claim(&c, &mut rows).unwrap().pop().unwrap();
        assert!(claim.hand_over().is_none());
        let Ok(Handoff::Turn(t)) = wait.rx.try_recv() else {
            panic!("no turn handed over")
        };
        assert_eq!(t.message.body, "work");
        assert_eq!(state(&c, rows[0].id), "leased");
        assert!(!waiters.is_waiting("bob", wait.id));
    }

    /// An agent `bob` of incarnation 7, paused.
    fn pause_bob(c: &Connection) {
        c.execute_batch(
            "INSERT INTO agents (name, kind, created_at, incarnation) VALUES ('bob', 'agent', 0, 7);
             INSERT INTO paused (incarnation, paused_at, by) VALUES (7, 0, 'operator');",
        )
        .unwrap();
    }

    #[test]
    fn a_paused_agent_is_handed_no_turn_though_its_harness_still_waits() {
        let (_dir, c) = db();
        pause_bob(&c);
        let waiters = Arc::new(Waiters::default());
        let mut wait = waiters.register("bob", Want::Turn, |_| {});
        let mut rows = insert_messages(&c, "alice", &["bob".into()], "work", None).unwrap();
        assert!(waiters.claim(&c, &mut rows).unwrap().is_empty());
        assert_eq!(state(&c, rows[0].id), "queued");
        assert!(wait.rx.try_recv().is_err());
        assert!(crate::mailbox::lease_queued(&c, "bob").unwrap().is_none());
        assert_eq!(state(&c, rows[0].id), "queued");

        c.execute("DELETE FROM paused", []).unwrap();
        let turn = crate::mailbox::lease_queued(&c, "bob")
            .unwrap()
            .expect("resumed");
        assert_eq!(turn.message.id, rows[0].id);
        assert_eq!(state(&c, rows[0].id), "leased");
    }

    #[test]
    fn a_hand_over_its_waiter_left_untaken_is_given_back() {
        let (_dir, c) = db();
        let waiters = Arc::new(Waiters::default());
        let given_back = Arc::new(Mutex::new(None));
        let wait = waiters.register("bob", Want::Turn, {
            let given_back = given_back.clone();
            move |h| *given_back.lock().unwrap() = Some(h)
        });
        let mut rows = insert_messages(&c, "alice", &["bob".into()], "work", None).unwrap();
        let claim = waiters.claim(&c, &mut rows).unwrap().pop().unwrap();
        assert!(claim.hand_over().is_none(), "the waiter was there");
        assert_eq!(state(&c, rows[0].id), "leased");
        drop(wait); // it leaves with the turn in its channel, untaken
        let untaken = given_back.lock().unwrap().take().expect("given back");
        undo(&c, &untaken).unwrap();
        assert_eq!(state(&c, rows[0].id), "queued");
    }
}
