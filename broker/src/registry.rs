//! The agent registry: who exists in the hive. The `agents` table is the truth; an in-memory copy
//! answers the hot path (every send checks its recipient) without a read.

use std::collections::BTreeMap;
use std::sync::RwLock;

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::names::AgentName;
use crate::store::{Store, unix_millis};

pub use proto::agent::AgentKind;

#[derive(Debug, Clone, Serialize)]
pub struct AgentRecord {
    pub name: AgentName,
    pub kind: AgentKind,
    /// This spawn of the name: rows about the agent are keyed by it, so a name used again inherits
    /// nothing (0 until the record is inserted).
    pub incarnation: i64,
    /// The first host uid of the incarnation's 65536-uid user-namespace range (allocated once
    /// when the incarnation is created; 0 until the record is inserted).
    pub uid_base: u32,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Empty = may write to anyone (DESIGN §6).
    pub allowed_recipients: Vec<AgentName>,
}

/// The record as the admin API serves it.
impl From<&AgentRecord> for proto::AgentRecord {
    fn from(r: &AgentRecord) -> Self {
        Self {
            name: r.name.to_string(),
            kind: r.kind,
            incarnation: r.incarnation,
            uid_base: r.uid_base,
            created_at: r.created_at,
            allowed_recipients: r.allowed_recipients.iter().map(|a| a.to_string()).collect(),
        }
    }
}

impl AgentRecord {
    /// Whether this agent may send to `to` (an agent). The manager may always; others when their
    /// allow-list is empty or names `to`, and always to the manager.
    pub fn may_send_to(&self, to: &AgentName) -> bool {
        self.kind == AgentKind::Manager
            || self.allowed_recipients.is_empty()
            || to.is_manager()
            || self.allowed_recipients.contains(to)
    }
}

pub struct Registry {
    store: Store,
    /// `[runtime] uid_base_start`: where new uid ranges are allocated from.
    uid_base_start: u32,
    agents: RwLock<BTreeMap<AgentName, AgentRecord>>,
}

impl Registry {
    /// Loads every agent record from the store.
    pub async fn load(store: Store, uid_base_start: u32) -> Result<Self> {
        let agents = store
            .read(|c| {
                let mut stmt = c.prepare(
                    "SELECT a.name, a.kind, a.created_at, a.allowed_recipients, a.incarnation,
                            i.uid_base
                     FROM agents a LEFT JOIN incarnations i ON i.id = a.incarnation
                     ORDER BY a.name",
                )?;
                let rows = stmt.query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, Option<i64>>(4)?.unwrap_or(0),
                        r.get::<_, Option<u32>>(5)?.unwrap_or(0),
                    ))
                })?;
                let mut agents = BTreeMap::new();
                for row in rows {
                    let (name, kind, created_at, allowed, incarnation, uid_base) = row?;
                    let mut record = decode(&name, &kind, created_at, &allowed)
                        .map_err(|reason| Error::Corrupt(format!("agent '{name}': {reason}")))?;
                    record.incarnation = incarnation;
                    record.uid_base = uid_base;
                    agents.insert(record.name.clone(), record);
                }
                Ok(agents)
            })
            .await?;
        Ok(Self {
            store,
            uid_base_start,
            agents: RwLock::new(agents),
        })
    }

    /// Creates the manager's record if it does not exist yet.
    pub async fn ensure_manager(&self) -> Result<()> {
        if self.get(&AgentName::manager()).is_some() {
            return Ok(());
        }
        self.register(AgentName::manager(), AgentKind::Manager)
            .await
            .map(|_| ())
    }

    /// Adds an agent. A name that exists already is a conflict and changes nothing.
    pub(crate) async fn register(&self, name: AgentName, kind: AgentKind) -> Result<AgentRecord> {
        if self.get(&name).is_some() {
            return Err(Error::Conflict(format!("agent '{name}' exists already")));
        }
        let mut record = new_record(name, kind);
        let start = self.uid_base_start;
        let record = self
            .store
            .write(move |c| {
                insert_row(c, &mut record, start)?;
                Ok(record)
            })
            .await?;
        self.remember(record.clone());
        Ok(record)
    }

    /// Adds a record the caller has just committed with [`insert_row`].
    pub(crate) fn remember(&self, record: AgentRecord) {
        self.agents
            .write()
            .expect("registry lock")
            .insert(record.name.clone(), record);
    }

    /// Forgets a record the caller has just deleted with [`delete_row`].
    pub(crate) fn forget(&self, name: &AgentName) {
        self.agents.write().expect("registry lock").remove(name);
    }

    /// Sets whom an agent may write to (from its applied config; empty = anyone).
    pub async fn set_allowed_recipients(
        &self,
        name: &AgentName,
        allowed: Vec<AgentName>,
    ) -> Result<()> {
        if self.get(name).is_none() {
            return Err(Error::NotFound {
                what: format!("agent '{name}'"),
            });
        }
        let key = name.to_string();
        let json = serde_json::to_string(&allowed).expect("names serialize");
        self.store
            .write(move |c| {
                c.execute(
                    "UPDATE agents SET allowed_recipients = ?1 WHERE name = ?2",
                    params![json, key],
                )?;
                Ok(())
            })
            .await?;
        if let Some(record) = self.agents.write().expect("registry lock").get_mut(name) {
            record.allowed_recipients = allowed;
        }
        Ok(())
    }

    /// The record of `name`, or an `unknown_agent` error listing the agents there are.
    pub fn require(&self, name: &AgentName) -> Result<AgentRecord> {
        self.get(name).ok_or_else(|| Error::NoSuchAgent {
            name: name.to_string(),
            agents: self.names().iter().map(|n| n.to_string()).collect(),
        })
    }

    pub fn get(&self, name: &AgentName) -> Option<AgentRecord> {
        self.agents
            .read()
            .expect("registry lock")
            .get(name)
            .cloned()
    }

    pub fn list(&self) -> Vec<AgentRecord> {
        self.agents
            .read()
            .expect("registry lock")
            .values()
            .cloned()
            .collect()
    }

    pub fn names(&self) -> Vec<AgentName> {
        self.agents
            .read()
            .expect("registry lock")
            .keys()
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.agents.read().expect("registry lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A new record, as a row inside the caller's transaction.
pub(crate) fn new_record(name: AgentName, kind: AgentKind) -> AgentRecord {
    AgentRecord {
        name,
        kind,
        incarnation: 0,
        uid_base: 0,
        created_at: unix_millis(),
        allowed_recipients: Vec::new(),
    }
}

/// Inserts an agent row inside the caller's transaction; a name that exists is a conflict. A
/// record with incarnation 0 starts a new incarnation (filled in); one with an incarnation brings
/// back that tombstoned incarnation (a restore). A new incarnation gets its uid range here, the
/// lowest free one from `uid_base_start`; a restored one keeps its own.
pub(crate) fn insert_row(
    c: &rusqlite::Connection,
    record: &mut AgentRecord,
    uid_base_start: u32,
) -> Result<()> {
    let live = c
        .prepare_cached("SELECT 1 FROM agents WHERE name = ?1")?
        .exists([record.name.as_str()])?;
    if live {
        return Err(Error::Conflict(format!(
            "agent '{}' exists already",
            record.name
        )));
    }
    if record.incarnation == 0 {
        let uid_base = free_uid_base(c, uid_base_start)?;
        c.prepare_cached(
            "INSERT INTO incarnations (name, kind, created_at, uid_base) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![
            record.name.as_str(),
            record.kind.as_str(),
            record.created_at,
            uid_base
        ])?;
        record.incarnation = c.last_insert_rowid();
        record.uid_base = uid_base;
    } else {
        let revived = c
            .prepare_cached(
                "UPDATE incarnations SET state = 'live', tombstone = NULL, destroyed_at = NULL
                 WHERE id = ?1 AND name = ?2 AND state = 'tombstoned'",
            )?
            .execute(params![record.incarnation, record.name.as_str()])?;
        if revived != 1 {
            return Err(Error::Conflict(format!(
                "incarnation {} of '{}' is not waiting in a tombstone",
                record.incarnation, record.name
            )));
        }
        let kept: Option<u32> = c
            .prepare_cached("SELECT uid_base FROM incarnations WHERE id = ?1")?
            .query_row([record.incarnation], |r| r.get(0))?;
        record.uid_base = match kept {
            Some(base) => base,
            None => {
                let base = free_uid_base(c, uid_base_start)?;
                c.prepare_cached("UPDATE incarnations SET uid_base = ?1 WHERE id = ?2")?
                    .execute(params![base, record.incarnation])?;
                base
            }
        };
    }
    c.prepare_cached(
        "INSERT INTO agents (name, kind, created_at, incarnation) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        record.name.as_str(),
        record.kind.as_str(),
        record.created_at,
        record.incarnation
    ])?;
    Ok(())
}

/// The size of one agent's user-namespace range.
pub const UID_RANGE: u32 = 65536;
/// The last base whose range ends below uid 0xffffffff (which is "no uid").
const LAST_UID_BASE: u32 = u32::MAX - 2 * UID_RANGE + 1;

/// The lowest range at or above `start` (a multiple of [`UID_RANGE`]) that no incarnation holds:
/// a live or tombstoned incarnation holds its range (its files are owned by it); a purged one
/// does not.
fn free_uid_base(c: &rusqlite::Connection, start: u32) -> Result<u32> {
    let held: Vec<u32> = c
        .prepare_cached(
            "SELECT uid_base FROM incarnations
             WHERE state != 'purged' AND uid_base >= ?1 ORDER BY uid_base",
        )?
        .query_map([start], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut base = start;
    for h in held {
        if h >= base.saturating_add(UID_RANGE) {
            break;
        }
        // Ranges are aligned: the next free one starts after this one.
        base = (h / UID_RANGE + 1).saturating_mul(UID_RANGE);
    }
    if base > LAST_UID_BASE {
        return Err(Error::Conflict(format!(
            "no user-namespace range is left at or above {start} (runtime.uid_base_start); purge \
             tombstones or lower the start"
        )));
    }
    Ok(base)
}

/// Deletes an agent row inside the caller's transaction and marks its incarnation `destroying`
/// (or `purging`) with the tombstone its files go to. Returns the incarnation.
pub(crate) fn delete_row(
    c: &rusqlite::Connection,
    name: &AgentName,
    tombstone: &str,
    purge: bool,
) -> Result<i64> {
    let incarnation: i64 = c
        .prepare_cached("DELETE FROM agents WHERE name = ?1 RETURNING incarnation")?
        .query_row([name.as_str()], |r| r.get(0))
        .optional()?
        .ok_or_else(|| Error::NotFound {
            what: format!("agent '{name}'"),
        })?;
    c.prepare_cached(
        "UPDATE incarnations SET state = ?1, tombstone = ?2, destroyed_at = ?3 WHERE id = ?4",
    )?
    .execute(params![
        if purge { "purging" } else { "destroying" },
        tombstone,
        unix_millis(),
        incarnation
    ])?;
    Ok(incarnation)
}

fn decode(name: &str, kind: &str, created_at: i64, allowed: &str) -> Result<AgentRecord, String> {
    let name = AgentName::parse(name).map_err(|e| e.to_string())?;
    let kind = match kind {
        "manager" => AgentKind::Manager,
        "agent" => AgentKind::Agent,
        other => return Err(format!("unknown kind '{other}'")),
    };
    let allowed: Vec<String> = serde_json::from_str(allowed).map_err(|e| e.to_string())?;
    let allowed_recipients = allowed
        .iter()
        .map(|n| AgentName::parse(n).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    Ok(AgentRecord {
        name,
        kind,
        incarnation: 0,
        uid_base: 0,
        created_at,
        allowed_recipients,
    })
}
