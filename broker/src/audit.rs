//! The audit chain (DESIGN §14): every approval request and resolution, spawn, rollback, destroy,
//! restore and purge appends a row in the same transaction as the change it records. Each row's
//! `hash = sha256(prev_hash ‖ canonical JSON of its other fields)`, so an edited, removed or
//! reordered row breaks the chain at that row. Rows are appended only here and never updated.

use rusqlite::{Connection, params};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::error::Result;
use crate::hive::Hive;
use crate::store::unix_millis;

/// The `prev_hash` of the first row.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub ts: i64,
    pub actor: String,
    pub action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    pub detail: Value,
    pub prev_hash: String,
    pub hash: String,
}

/// The outcome of `hive audit verify`.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub rows: u64,
    /// The first row whose hash or link does not match; `None` when the chain is whole.
    pub first_broken: Option<i64>,
}

fn hash_of(
    prev_hash: &str,
    id: i64,
    ts: i64,
    actor: &str,
    action: &str,
    agent: Option<&str>,
    detail: &str,
) -> String {
    // serde_json's maps are ordered by key: this is the canonical form.
    let fields = json!({
        "id": id, "ts": ts, "actor": actor, "action": action, "agent": agent, "detail": detail,
    });
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(fields.to_string().as_bytes());
    hex::encode(h.finalize())
}

/// Appends a row inside the caller's transaction.
pub(crate) fn append(
    c: &Connection,
    actor: &str,
    action: &str,
    agent: Option<&str>,
    detail: Value,
) -> Result<AuditEntry> {
    let (last_id, prev_hash): (i64, String) = c
        .prepare_cached("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok((0, GENESIS.to_owned())),
            e => Err(e),
        })?;
    let id = last_id + 1;
    let ts = unix_millis();
    let detail_text = detail.to_string();
    let hash = hash_of(&prev_hash, id, ts, actor, action, agent, &detail_text);
    c.prepare_cached(
        "INSERT INTO audit (id, ts, actor, action, agent, detail, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        id,
        ts,
        actor,
        action,
        agent,
        detail_text,
        prev_hash,
        hash
    ])?;
    Ok(AuditEntry {
        id,
        ts,
        actor: actor.to_owned(),
        action: action.to_owned(),
        agent: agent.map(str::to_owned),
        detail,
        prev_hash,
        hash,
    })
}

fn entry_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(AuditEntry, String)> {
    let detail_text: String = r.get(5)?;
    Ok((
        AuditEntry {
            id: r.get(0)?,
            ts: r.get(1)?,
            actor: r.get(2)?,
            action: r.get(3)?,
            agent: r.get(4)?,
            detail: serde_json::from_str(&detail_text)
                .unwrap_or(Value::String(detail_text.clone())),
            prev_hash: r.get(6)?,
            hash: r.get(7)?,
        },
        detail_text,
    ))
}

const COLUMNS: &str = "id, ts, actor, action, agent, detail, prev_hash, hash";

impl Hive {
    /// The newest `limit` audit rows (of one agent when given), oldest first.
    pub async fn audit(&self, agent: Option<String>, limit: usize) -> Result<Vec<AuditEntry>> {
        self.store
            .read(move |c| {
                let mut rows: Vec<AuditEntry> = match &agent {
                    Some(a) => c
                        .prepare(&format!(
                            "SELECT {COLUMNS} FROM audit WHERE agent = ?1 ORDER BY id DESC LIMIT ?2"
                        ))?
                        .query_map(params![a, limit as i64], entry_from_row)?
                        .map(|r| r.map(|(e, _)| e))
                        .collect::<Result<_, _>>()?,
                    None => c
                        .prepare(&format!(
                            "SELECT {COLUMNS} FROM audit ORDER BY id DESC LIMIT ?1"
                        ))?
                        .query_map([limit as i64], entry_from_row)?
                        .map(|r| r.map(|(e, _)| e))
                        .collect::<Result<_, _>>()?,
                };
                rows.reverse();
                Ok(rows)
            })
            .await
    }

    /// Recomputes the whole chain and names the first row that does not match.
    pub async fn verify_audit(&self) -> Result<Verification> {
        self.store
            .read(|c| {
                let mut stmt = c.prepare(&format!("SELECT {COLUMNS} FROM audit ORDER BY id"))?;
                let mut rows = stmt.query([])?;
                let mut expected_prev = GENESIS.to_owned();
                let mut expected_id = 1;
                let mut count = 0;
                while let Some(row) = rows.next()? {
                    let (e, detail_text) = entry_from_row(row)?;
                    count += 1;
                    let recomputed = hash_of(
                        &e.prev_hash,
                        e.id,
                        e.ts,
                        &e.actor,
                        &e.action,
                        e.agent.as_deref(),
                        &detail_text,
                    );
                    if e.id != expected_id || e.prev_hash != expected_prev || e.hash != recomputed {
                        return Ok(Verification {
                            rows: count,
                            first_broken: Some(e.id),
                        });
                    }
                    expected_prev = e.hash;
                    expected_id += 1;
                }
                Ok(Verification {
                    rows: count,
                    first_broken: None,
                })
            })
            .await
    }
}
