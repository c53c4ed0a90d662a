//! Destroy, restore and purge (operator only, DESIGN §7). A destroy moves the agent's
//! `agents/<name>`, `secrets/<name>` and `applied/<name>` into `tombstones/<name>-<utc>/`; restore
//! moves them back; purge deletes a tombstone. Tombstone ids are parsed, never joined raw, and
//! every path is checked to stay inside the state dir before anything is touched.
//!
//! A restore first writes its intent (a `.restoring` file in the tombstone), then moves the files,
//! then commits the agent: a crash anywhere in between is finished at the next start by
//! [`Hive::finish_restores`].
//!
//! These are `Hive`'s own use cases, not a service: destroy, restore and purge combine the
//! lifecycle (`remove_agent`, `create_agent`), the store and the files under `config_lock`.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use serde_json::json;

use crate::audit;
use crate::error::{Error, Result};
use crate::hive::Hive;
use crate::lifecycle::{NewAgent, off_runtime, purge_rows};
use crate::names::AgentName;
use crate::paths::StateDir;
use crate::paths::checked_within;
use crate::registry::AgentKind;
use rusqlite::OptionalExtension;

/// The file in a tombstone that says a restore of it began.
const RESTORING: &str = ".restoring";

/// `<name>-<YYYYMMDDTHHMMSSZ>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct TombstoneId(String);

impl TombstoneId {
    pub fn parse(raw: &str) -> Result<(Self, AgentName)> {
        let bad = || {
            Error::invalid(
                "tombstone",
                format!(
                    "'{}' is not a tombstone id: <agent>-<YYYYMMDDTHHMMSSZ>, as `hive tombstones` lists them",
                    raw.chars().take(64).collect::<String>()
                ),
            )
        };
        let (name, stamp) = raw.rsplit_once('-').ok_or_else(bad)?;
        let b = stamp.as_bytes();
        let stamp_ok = b.len() == 16
            && b[..8].iter().all(u8::is_ascii_digit)
            && b[8] == b'T'
            && b[9..15].iter().all(u8::is_ascii_digit)
            && b[15] == b'Z';
        if !stamp_ok {
            return Err(bad());
        }
        let name = AgentName::parse(name).map_err(|_| bad())?;
        Ok((Self(raw.to_owned()), name))
    }

    pub(crate) fn new(name: &AgentName) -> Self {
        let now = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ");
        Self(format!("{name}-{now}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TombstoneId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tombstone; served as [`proto::Tombstone`].
#[derive(Debug, Clone)]
pub struct Tombstone {
    pub id: TombstoneId,
    pub agent: String,
}

impl From<Tombstone> for proto::Tombstone {
    fn from(t: Tombstone) -> Self {
        Self {
            id: t.id.to_string(),
            agent: t.agent,
        }
    }
}

/// The live places of an agent and their names inside a tombstone.
pub(crate) fn parts(paths: &StateDir, agent: &AgentName) -> [(PathBuf, &'static str); 3] {
    [
        (paths.agent_dir(agent), "agents"),
        (paths.secrets_dir(agent), "secrets"),
        (paths.applied_repo(agent), "applied"),
    ]
}

impl Hive {
    pub(crate) fn tombstone_path(&self, id: &TombstoneId) -> Result<PathBuf> {
        checked_within(
            self.paths.root(),
            &self.paths.tombstones_dir().join(id.as_str()),
        )
    }

    /// Stops an agent and moves what it has into a tombstone (deleted at once with `purge`).
    pub async fn destroy(&self, agent: &AgentName, purge: bool) -> Result<TombstoneId> {
        let _config = self.config_lock.lock().await;
        self.remove_agent(agent, purge).await
    }

    /// The tombstones, oldest first.
    pub fn tombstones(&self) -> Result<Vec<Tombstone>> {
        let dir = checked_within(self.paths.root(), &self.paths.tombstones_dir())?;
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("cannot list tombstones", e)),
        };
        let mut list: Vec<Tombstone> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| {
                let raw = e.file_name().into_string().ok()?;
                let (id, agent) = TombstoneId::parse(&raw).ok()?;
                Some(Tombstone {
                    id,
                    agent: agent.to_string(),
                })
            })
            .collect();
        list.sort_by(|a, b| a.id.as_str()[a.agent.len()..].cmp(&b.id.as_str()[b.agent.len()..]));
        Ok(list)
    }

    /// Brings a destroyed agent back from its tombstone (refused while the name is live).
    pub async fn restore(self: &Arc<Self>, raw: &str) -> Result<AgentName> {
        let (id, agent) = TombstoneId::parse(raw)?;
        let _config = self.config_lock.lock().await;
        let tomb = self.existing_tombstone(&id)?;
        if self.registry.get(&agent).is_some() {
            return Err(Error::Conflict(format!(
                "an agent named '{agent}' is live; destroy it first or keep the tombstone"
            )));
        }
        for (live, part) in parts(&self.paths, &agent) {
            let live = checked_within(self.paths.root(), &live)?;
            checked_within(self.paths.root(), &tomb.join(part))?;
            if std::fs::symlink_metadata(&live).is_ok() {
                return Err(Error::Conflict(format!(
                    "{} exists; move it away before restoring",
                    live.strip_prefix(self.paths.root())
                        .unwrap_or(&live)
                        .display()
                )));
            }
        }
        let incarnation = self.tombstoned_incarnation(&id).await?;
        let marker = tomb.join(RESTORING);
        off_runtime(move || {
            // The intent is on disk before the first file moves.
            let file = std::fs::File::create(&marker)
                .and_then(|f| f.sync_all().map(|()| f))
                .and_then(|_| std::fs::File::open(marker.parent().expect("in the tombstone")))
                .and_then(|dir| dir.sync_all());
            file.map_err(|e| Error::io(format!("cannot write {}", marker.display()), e))
        })
        .await?;
        self.finish_restore(&agent, &id, incarnation).await?;
        self.start_in_background(agent.clone());
        Ok(agent)
    }

    /// The incarnation waiting in tombstone `id`, if the tombstone is younger than incarnations.
    async fn tombstoned_incarnation(&self, id: &TombstoneId) -> Result<Option<i64>> {
        let tid = id.clone();
        self.store
            .read(move |c| {
                Ok(c.prepare_cached(
                    "SELECT id FROM incarnations WHERE tombstone = ?1 AND state = 'tombstoned'",
                )?
                .query_row([tid.as_str()], |r| r.get(0))
                .optional()?)
            })
            .await
    }

    /// Moves what is still in the tombstone back, commits the agent unless that was done, and
    /// removes the emptied tombstone with its intent. Safe to run again after a crash at any
    /// point of it.
    async fn finish_restore(
        self: &Arc<Self>,
        agent: &AgentName,
        id: &TombstoneId,
        incarnation: Option<i64>,
    ) -> Result<()> {
        let tomb = self.existing_tombstone(id)?;
        let mut moves = Vec::new();
        for (live, part) in parts(&self.paths, agent) {
            let live = checked_within(self.paths.root(), &live)?;
            let kept = checked_within(self.paths.root(), &tomb.join(part))?;
            if std::fs::symlink_metadata(&kept).is_ok() {
                moves.push((kept, live));
            }
        }
        off_runtime(move || {
            for (kept, live) in &moves {
                if std::fs::symlink_metadata(live).is_ok() {
                    return Err(Error::Conflict(format!(
                        "{} exists and so does its copy in the tombstone; move one away",
                        live.display()
                    )));
                }
                if let Some(parent) = live.parent() {
                    crate::paths::make_dir(parent, 0o755)?;
                }
                std::fs::rename(kept, live)
                    .map_err(|e| Error::io(format!("cannot restore {}", live.display()), e))?;
            }
            Ok(())
        })
        .await?;
        if self.registry.get(agent).is_none() {
            // The same incarnation comes back, with the mail, reminders and questions it left; a
            // tombstone older than incarnations starts a new one.
            let new = NewAgent {
                name: agent.clone(),
                kind: AgentKind::Agent,
                revive: incarnation,
                deploy: None,
            };
            let tid = id.clone();
            self.create_agent(new, move |c, record| {
                audit::append(
                    c,
                    "operator",
                    "restore",
                    Some(record.name.as_str()),
                    json!({"tombstone": tid, "incarnation": record.incarnation}),
                )
            })
            .await?;
        }
        let _ = std::fs::remove_file(tomb.join(RESTORING));
        let _ = std::fs::remove_dir(&tomb);
        self.due.reschedule();
        Ok(())
    }

    /// Finishes the restores a crash cut (a tombstone holding a `.restoring` intent). One that
    /// cannot be finished is reported and left for the next start; it never stops this one.
    pub(crate) async fn finish_restores(self: &Arc<Self>) -> Result<()> {
        for tombstone in self.tombstones()? {
            let Ok(tomb) = self.tombstone_path(&tombstone.id) else {
                continue;
            };
            if std::fs::symlink_metadata(tomb.join(RESTORING)).is_err() {
                continue;
            }
            let finished = async {
                let agent = AgentName::parse(&tombstone.agent)?;
                let incarnation = self.tombstoned_incarnation(&tombstone.id).await?;
                self.finish_restore(&agent, &tombstone.id, incarnation)
                    .await
            }
            .await;
            match finished {
                Ok(()) => {
                    tracing::warn!(tombstone = %tombstone.id, "finished a restore a crash had cut")
                }
                Err(e) => tracing::error!(tombstone = %tombstone.id, error = %e,
                    "cannot finish a restore a crash had cut; retried at the next start"),
            }
        }
        Ok(())
    }

    /// Deletes a tombstone for good, with what its incarnation left in the store (undelivered
    /// mail, pending reminders, open questions).
    pub async fn purge(&self, raw: &str) -> Result<()> {
        let (id, agent) = TombstoneId::parse(raw)?;
        let _config = self.config_lock.lock().await;
        let tomb = self.existing_tombstone(&id)?;
        let tid = id.clone();
        self.store
            .write(move |c| {
                let incarnation: Option<i64> = c
                    .prepare_cached(
                        "UPDATE incarnations SET state = 'purged', tombstone = NULL
                         WHERE tombstone = ?1 AND state = 'tombstoned' RETURNING id",
                    )?
                    .query_row([tid.as_str()], |r| r.get(0))
                    .optional()?;
                if let Some(incarnation) = incarnation {
                    purge_rows(c, incarnation)?;
                }
                audit::append(
                    c,
                    "operator",
                    "purge",
                    Some(agent.as_str()),
                    json!({"tombstone": tid, "incarnation": incarnation}),
                )?;
                Ok(())
            })
            .await?;
        off_runtime(move || {
            std::fs::remove_dir_all(&tomb)
                .map_err(|e| Error::io(format!("cannot delete {}", tomb.display()), e))
        })
        .await
    }

    /// The tombstone's directory: a real directory inside the state dir.
    fn existing_tombstone(&self, id: &TombstoneId) -> Result<PathBuf> {
        let tomb = self.tombstone_path(id)?;
        match std::fs::symlink_metadata(&tomb) {
            Ok(m) if m.is_dir() => Ok(tomb),
            Ok(_) => Err(Error::UnsafePath(format!(
                "{}: not a directory",
                tomb.display()
            ))),
            Err(_) => Err(Error::NotFound {
                what: format!("tombstone {id} (see `hive tombstones`)"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_strictly() {
        let (id, name) = TombstoneId::parse("bob-2-20261126T101500Z").unwrap();
        assert_eq!(name.as_str(), "bob-2");
        assert_eq!(id.as_str(), "bob-2-20261126T101500Z");
        for bad in [
            "..",
            "../..",
            "x/../../etc",
            "/etc/passwd",
            "bob",
            "bob-",
            "bob-20261126T101500",
            "Bob-20261126T101500Z",
            "bob-20261126T10150aZ",
            "../bob-20261126T101500Z",
            "bob/x-20261126T101500Z",
            "",
        ] {
            assert!(TombstoneId::parse(bad).is_err(), "{bad}");
        }
    }
}
