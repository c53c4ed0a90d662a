//! Liveness (DESIGN §9): what an agent is doing, in one word a person can act on — `working` (a
//! turn streams events, or a queued message is about to be taken), `waiting_on_human` (an open
//! question it asked, an approval it requested, a login it needs), `idle` (alive, nothing queued),
//! `stuck` (a turn with no event for `[watcher] stuck_after_seconds`, or a queue not moving that
//! long while its harness is connected) and `dead` (no harness). The watcher tells the manager
//! `stuck` once per episode; the answer is a `restart`, which stops the old harness before the
//! new one starts — never a second harness beside a stuck one.
//!
//! It owns the judgement and the facts it reads; it never starts or stops anything. A service
//! ([`LivenessJudge`]) built in `Hive::open` holding its own handles (store, registry, and the
//! containers' view of each agent and the harness activity the watcher records, read only); `Hive`
//! and the watcher's check delegate to it.

use std::sync::Arc;
use std::time::Duration;

use proto::tools::TurnState;
use rusqlite::{Connection, OptionalExtension, params};

use crate::containers::Containers;
use crate::error::Result;
use crate::names::AgentName;
use crate::registry::Registry;
use crate::store::{Store, unix_millis};
use crate::watcher::HarnessActivity;

pub use proto::agent::Liveness;

/// What an agent's liveness is judged from.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Its harness is connected.
    pub up: bool,
    pub turn_state: Option<TurnState>,
    /// Since its harness last reported anything (a state, a turn event); `None`: nothing yet.
    pub quiet_for: Option<Duration>,
    /// How long its oldest queued message has waited.
    pub oldest_queued: Option<Duration>,
    /// An open question it asked, or a pending approval it requested.
    pub asked_a_human: bool,
}

/// The word for `facts`.
pub fn judge(facts: &Facts, stuck_after: Duration) -> Liveness {
    if !facts.up {
        return Liveness::Dead;
    }
    let quiet_long = facts.quiet_for.is_none_or(|q| q >= stuck_after);
    match facts.turn_state {
        Some(TurnState::Thinking | TurnState::Compacting) => {
            if quiet_long {
                Liveness::Stuck
            } else {
                Liveness::Working
            }
        }
        Some(TurnState::NeedsLogin) => Liveness::WaitingOnHuman,
        Some(TurnState::Paused) => {
            if facts.asked_a_human {
                Liveness::WaitingOnHuman
            } else {
                Liveness::Idle
            }
        }
        Some(TurnState::Idle) | None => {
            let waiting = facts.oldest_queued;
            if waiting.is_some_and(|w| w >= stuck_after) && quiet_long {
                Liveness::Stuck
            } else if facts.asked_a_human {
                Liveness::WaitingOnHuman
            } else if waiting.is_some() {
                Liveness::Working
            } else {
                Liveness::Idle
            }
        }
    }
}

/// When the oldest message queued for incarnation `incarnation` of `agent` was sent: what a
/// destroyed agent of the same name left queued (kept for a restore) is not this one's backlog.
fn oldest_queued(c: &Connection, agent: &str, incarnation: i64) -> Result<Option<i64>> {
    Ok(c.prepare_cached(
        "SELECT sent_at FROM messages INDEXED BY messages_queued
         WHERE recipient = ?1 AND state = 'queued' AND incarnation IS ?2
         ORDER BY id LIMIT 1",
    )?
    .query_row(params![agent, incarnation], |r| r.get(0))
    .optional()?)
}

/// The liveness service: gathers an agent's [`Facts`] and [`judge`]s them.
pub struct LivenessJudge {
    store: Store,
    registry: Arc<Registry>,
    /// Read only: the agent's run (harness up, turn state).
    containers: Arc<Containers>,
    /// Read only: how long the agent's harness has been quiet, and when that is stuck.
    activity: Arc<HarnessActivity>,
}

impl LivenessJudge {
    pub(crate) fn new(
        store: Store,
        registry: Arc<Registry>,
        containers: Arc<Containers>,
        activity: Arc<HarnessActivity>,
    ) -> Self {
        Self {
            store,
            registry,
            containers,
            activity,
        }
    }

    /// `agent`'s liveness now.
    pub async fn of(&self, agent: &AgentName) -> Result<Liveness> {
        let record = self.registry.require(agent)?;
        let run = self.containers.run_of(agent);
        let (name, incarnation) = (agent.to_string(), record.incarnation);
        let (oldest_sent, asked) = self
            .store
            .read(move |c| {
                let oldest = oldest_queued(c, &name, incarnation)?;
                let asked: bool = c
                    .prepare_cached(
                        "SELECT EXISTS (SELECT 1 FROM questions WHERE asker = ?1
                                          AND status = 'open' AND incarnation = ?2)
                             OR EXISTS (SELECT 1 FROM approvals WHERE requester = ?1
                                          AND status = 'pending')",
                    )?
                    .query_row(params![name, incarnation], |r| r.get(0))?;
                Ok((oldest, asked))
            })
            .await?;
        let now = unix_millis();
        let facts = Facts {
            up: run.up,
            turn_state: run.turn_state,
            quiet_for: self.activity.quiet_for(agent),
            oldest_queued: oldest_sent.map(|at| Duration::from_millis((now - at).max(0) as u64)),
            asked_a_human: asked,
        };
        Ok(judge(&facts, self.activity.stuck_after()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backlog_is_the_live_incarnations_alone() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE messages (id INTEGER PRIMARY KEY, recipient TEXT NOT NULL,
                 state TEXT NOT NULL, sent_at INTEGER NOT NULL, incarnation INTEGER);
             CREATE INDEX messages_queued ON messages (recipient, id) WHERE state = 'queued';
             INSERT INTO messages (recipient, state, sent_at, incarnation) VALUES
                 ('x1', 'queued', 10, 1), ('x1', 'delivered', 20, 2), ('x2', 'queued', 30, 2);",
        )
        .unwrap();
        // Incarnation 1 of x1 was destroyed with mail queued; incarnation 2 has none.
        assert_eq!(oldest_queued(&c, "x1", 1).unwrap(), Some(10));
        assert_eq!(oldest_queued(&c, "x1", 2).unwrap(), None);
        c.execute(
            "INSERT INTO messages (recipient, state, sent_at, incarnation) VALUES ('x1', 'queued', 40, 2)",
            [],
        )
        .unwrap();
        assert_eq!(oldest_queued(&c, "x1", 2).unwrap(), Some(40));
    }

    const AFTER: Duration = Duration::from_secs(600);

    fn facts(turn_state: Option<TurnState>, quiet: u64, queued: Option<u64>, asked: bool) -> Facts {
        Facts {
            up: true,
            turn_state,
            quiet_for: Some(Duration::from_secs(quiet)),
            oldest_queued: queued.map(Duration::from_secs),
            asked_a_human: asked,
        }
    }

    #[test]
    fn each_word_from_its_facts() {
        use Liveness::*;
        assert_eq!(judge(&Facts::default(), AFTER), Dead);
        let thinking = Some(TurnState::Thinking);
        assert_eq!(judge(&facts(thinking, 5, None, false), AFTER), Working);
        assert_eq!(judge(&facts(thinking, 601, None, false), AFTER), Stuck);
        let idle = Some(TurnState::Idle);
        assert_eq!(judge(&facts(idle, 5, None, false), AFTER), Idle);
        assert_eq!(judge(&facts(idle, 5, Some(1), false), AFTER), Working);
        assert_eq!(judge(&facts(idle, 700, Some(700), false), AFTER), Stuck);
        // A queue that waits long but a harness that spoke lately: not stuck.
        assert_eq!(judge(&facts(idle, 5, Some(700), false), AFTER), Working);
        assert_eq!(judge(&facts(idle, 5, None, true), AFTER), WaitingOnHuman);
        assert_eq!(
            judge(&facts(Some(TurnState::NeedsLogin), 900, None, false), AFTER),
            WaitingOnHuman
        );
        // Paused: its queue waits on purpose.
        assert_eq!(
            judge(
                &facts(Some(TurnState::Paused), 900, Some(900), false),
                AFTER
            ),
            Idle
        );
    }
}
