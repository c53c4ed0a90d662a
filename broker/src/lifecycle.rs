//! Creating and removing agents. [`Hive::create_agent`] is the one place an agent comes into
//! being — its incarnation and record, its sockets, its applied repo, the `agent_created` event —
//! and [`Hive::remove_agent`] the one place it goes — record, leases, sockets, its files into a
//! tombstone, `agent_removed`. Spawn, an approved spawn, restore and destroy call these and repeat
//! none of their steps.
//!
//! The store moves first and the files follow: a removal whose files were not moved yet (the
//! daemon died in between) is finished at the next start by [`Hive::finish_removals`]. File and
//! git work runs on blocking threads, never on the async workers. This module never touches a
//! path outside the state dir and never moves the files of a name that is live.
//!
//! Both are `Hive`'s own, not a service's: each combines the registry, the mailbox, the
//! containers (a removal stops the agent first), the MCP sockets, the config repos and the bus,
//! and runs under the caller's `config_lock`.

use std::path::PathBuf;
use std::sync::Arc;

use rusqlite::{Connection, params};
use serde_json::json;

use crate::audit;
use crate::bus::Event;
use crate::config_repo::ConfigRepos;
use crate::error::{Error, Result};
use crate::hive::Hive;
use crate::names::AgentName;
use crate::paths::checked_within;
use crate::registry::{self, AgentKind, AgentRecord};
use crate::store::unix_millis;
use crate::tombstones::{TombstoneId, parts};

/// What [`Hive::create_agent`] makes.
pub(crate) struct NewAgent {
    pub name: AgentName,
    pub kind: AgentKind,
    /// A tombstoned incarnation to bring back (a restore); `None` starts a new one.
    pub revive: Option<i64>,
    /// The commit to move the applied repo to once the store committed, with its tags.
    pub deploy: Option<(String, Vec<String>)>,
}

/// What [`Hive::create_agent`] did: the record, what its `with` returned, and whether the applied
/// repo moved (the agent exists either way; a failed move is retried at the next start).
pub(crate) struct Created<T> {
    pub record: AgentRecord,
    pub with: T,
    pub applied: Result<()>,
}

/// Runs file or git work on a blocking thread: a purge of a big tree or a fetch must not hold an
/// async worker (and every MCP call queued behind it).
pub(crate) async fn off_runtime<T, F>(work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Internal(format!("blocking work did not finish: {e}")))?
}

impl Hive {
    /// Runs `work` with the config repos on a blocking thread.
    pub(crate) async fn git<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&ConfigRepos) -> Result<T> + Send + 'static,
    {
        let repos = self.repos.clone();
        off_runtime(move || work(&repos)).await
    }

    /// Creates an agent: in one transaction its incarnation, its record and whatever `with` adds
    /// (deploy, audit, approval rows); then the registry, its sockets, the bus, and its applied
    /// repo.
    pub(crate) async fn create_agent<T, F>(
        self: &Arc<Self>,
        new: NewAgent,
        with: F,
    ) -> Result<Created<T>>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &AgentRecord) -> Result<T> + Send + 'static,
    {
        let mut record = registry::new_record(new.name, new.kind);
        record.incarnation = new.revive.unwrap_or(0);
        let uid_base_start = self.config.runtime.uid_base_start;
        let (record, extra) = self
            .store
            .write(move |c| {
                registry::insert_row(c, &mut record, uid_base_start)?;
                let extra = with(c, &record)?;
                Ok((record, extra))
            })
            .await?;
        self.registry.remember(record.clone());
        self.bus.publish(Event::AgentCreated {
            agent: (&record).into(),
        });
        self.open_agent_sockets(&record)?;
        let applied = match new.deploy {
            Some((commit, tags)) => self.move_applied(&record.name, commit, tags).await,
            None => Ok(()),
        };
        Ok(Created {
            record,
            with: extra,
            applied,
        })
    }

    /// Moves the applied repo to a commit the store has recorded as deployed.
    pub(crate) async fn move_applied(
        &self,
        agent: &AgentName,
        commit: String,
        tags: Vec<String>,
    ) -> Result<()> {
        let name = agent.clone();
        self.git(move |repos| repos.apply(&name, &commit, &tags))
            .await
            .map_err(|e| {
                Error::Internal(format!(
                    "the change to '{agent}' is recorded, but its applied repo could not be moved ({e}); it is retried at the next start"
                ))
            })
    }

    /// Removes an agent: the store lets go of it (record deleted, its incarnation marked, leases
    /// returned to its parked queue, audited) and then its files move into the tombstone `id`, or
    /// are deleted with `purge`. The caller holds the config lock.
    pub(crate) async fn remove_agent(&self, agent: &AgentName, purge: bool) -> Result<TombstoneId> {
        if agent.is_manager() {
            return Err(Error::invalid(
                "agent",
                "the manager cannot be destroyed (it is the one manager of the hive)",
            ));
        }
        self.registry.require(agent)?;
        let id = TombstoneId::new(agent);
        let tomb = self.tombstone_path(&id)?;
        if tomb.exists() {
            return Err(Error::Conflict(format!(
                "tombstone {id} exists already; try again in a second"
            )));
        }
        self.removal_moves(agent, &tomb)?;
        // Its container stops first; the guard keeps a start out until the agent is gone.
        let _stopping = self.stop_for_removal(agent).await?;
        let (name, tid) = (agent.clone(), id.clone());
        let incarnation = self
            .store
            .write(move |c| {
                let incarnation = registry::delete_row(c, &name, tid.as_str(), purge)?;
                release_leases(c, incarnation)?;
                if purge {
                    purge_rows(c, incarnation)?;
                }
                audit::append(
                    c,
                    "operator",
                    "destroy",
                    Some(name.as_str()),
                    json!({"tombstone": tid, "purged": purge, "incarnation": incarnation}),
                )?;
                Ok(incarnation)
            })
            .await?;
        self.registry.forget(agent);
        self.close_agent_sockets(agent);
        self.bus.publish(Event::AgentRemoved {
            agent: agent.to_string(),
            incarnation,
        });
        self.finish_removal(agent, incarnation, &id, purge).await?;
        Ok(id)
    }

    /// The live places of `agent` and where each goes inside `tomb`, checked to stay inside.
    fn removal_moves(
        &self,
        agent: &AgentName,
        tomb: &std::path::Path,
    ) -> Result<Vec<(PathBuf, PathBuf)>> {
        parts(&self.paths, agent)
            .into_iter()
            .map(|(live, part)| Ok((checked_within(self.paths.root(), &live)?, tomb.join(part))))
            .collect()
    }

    /// The file half of a removal: moves what is still live into the tombstone (purging deletes
    /// it), then records that the incarnation is tombstoned (or purged). Idempotent, so a restart
    /// can finish what a crash cut.
    async fn finish_removal(
        &self,
        agent: &AgentName,
        incarnation: i64,
        id: &TombstoneId,
        purge: bool,
    ) -> Result<()> {
        let tomb = self.tombstone_path(id)?;
        let moves = self.removal_moves(agent, &tomb)?;
        off_runtime(move || {
            crate::paths::make_dir(&tomb, 0o700)?;
            for (live, dest) in &moves {
                if std::fs::symlink_metadata(live).is_ok() && !dest.exists() {
                    std::fs::rename(live, dest).map_err(|e| {
                        Error::io(
                            format!("cannot move {} into the tombstone", live.display()),
                            e,
                        )
                    })?;
                }
            }
            if purge {
                std::fs::remove_dir_all(&tomb)
                    .map_err(|e| Error::io(format!("cannot delete {}", tomb.display()), e))?;
            }
            Ok(())
        })
        .await?;
        self.store
            .write(move |c| {
                c.execute(
                    "UPDATE incarnations SET state = CASE state WHEN 'purging' THEN 'purged'
                     ELSE 'tombstoned' END,
                     tombstone = CASE state WHEN 'purging' THEN NULL ELSE tombstone END
                     WHERE id = ?1 AND state IN ('destroying', 'purging')",
                    [incarnation],
                )?;
                Ok(())
            })
            .await
    }

    /// Finishes the removals a crash cut between their commit and their file moves. One that
    /// cannot be finished is reported and left for the next start; it never stops this one.
    pub(crate) async fn finish_removals(&self) -> Result<()> {
        let unfinished: Vec<(i64, String, Option<String>, String)> = self
            .store
            .read(|c| {
                Ok(c.prepare(
                    "SELECT id, name, tombstone, state FROM incarnations
                     WHERE state IN ('destroying', 'purging') ORDER BY id",
                )?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<Result<_, _>>()?)
            })
            .await?;
        for (incarnation, name, tombstone, state) in unfinished {
            let finished = async {
                let agent = AgentName::parse(&name)?;
                if self.registry.get(&agent).is_some() {
                    return Err(Error::Conflict(format!(
                        "'{agent}' is live again; its files are not moved"
                    )));
                }
                let (id, _) = TombstoneId::parse(tombstone.as_deref().unwrap_or(""))?;
                self.finish_removal(&agent, incarnation, &id, state == "purging")
                    .await
            }
            .await;
            match finished {
                Ok(()) => tracing::warn!(%name, incarnation, "finished a destroy a crash had cut"),
                Err(e) => tracing::error!(%name, incarnation, error = %e,
                    "cannot finish a destroy a crash had cut; retried at the next start"),
            }
        }
        Ok(())
    }
}

/// Returns the messages leased to `incarnation`'s turns to its (parked) queue.
fn release_leases(c: &Connection, incarnation: i64) -> Result<()> {
    c.execute(
        "UPDATE turns SET finished_at = ?1, outcome = 'abandoned'
         WHERE incarnation = ?2 AND finished_at IS NULL",
        params![unix_millis(), incarnation],
    )?;
    c.execute(
        &format!(
            "UPDATE messages SET {} WHERE state = 'leased' AND incarnation = ?1",
            crate::mailbox::UNLEASED
        ),
        [incarnation],
    )?;
    Ok(())
}

/// What a purge promises beyond the files: the incarnation's undelivered mail and pending
/// reminders are deleted and its open questions closed, inside the caller's transaction.
pub(crate) fn purge_rows(c: &Connection, incarnation: i64) -> Result<()> {
    c.execute(
        "DELETE FROM messages WHERE incarnation = ?1 AND state != 'delivered'",
        [incarnation],
    )?;
    c.execute(
        "DELETE FROM reminders WHERE incarnation = ?1 AND status = 'pending'",
        [incarnation],
    )?;
    c.execute(
        "UPDATE questions SET status = 'expired', resolved_at = ?1
         WHERE incarnation = ?2 AND status = 'open'",
        params![unix_millis(), incarnation],
    )?;
    Ok(())
}
