//! The audit chain (DESIGN §14): every approval request and resolution, spawn, rollback, destroy,
//! restore and purge appends a row in the same transaction as the change it records. Each row's
//! `hash = sha256(prev_hash ‖ canonical JSON of its other fields)`, so an edited, removed or
//! reordered row breaks the chain at that row. Rows are appended only here and never updated.
//!
//! The chain alone cannot notice its newest rows deleted, nor every hash recomputed after an
//! edit (the canonical form is documented). So its head, the newest row's id and hash, is also
//! kept outside the database in `audit.head`: written by the store's writer right after each
//! transaction that appended commits (fsynced, atomically replaced), before the caller hears
//! back. `verify` then requires the head's row to exist with the head's hash. A crash between
//! the commit and the head write leaves the head behind by that transaction's rows: rows after
//! the head are accepted, and the next append (or the next start) moves the head up. What this
//! proves and what it does not: `docs/security.md`.
//!
//! The reads and checks are a service ([`AuditLog`]) built in `Hive::open` holding its own store
//! handle and the head file's path; `Hive` delegates to it. Rows are appended by [`append`]
//! inside the transaction of the change they record, wherever that runs.

use std::cell::Cell;
use std::io::Write;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::paths::StateDir;
use crate::store::{Store, unix_millis};

/// The `prev_hash` of the first row.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A row of the chain, and the outcome of `hive audit verify`.
pub use proto::audit::{AuditEntry, Verification};

/// The chain's head as kept in `audit.head`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Head {
    pub id: i64,
    pub hash: String,
}

/// The head file beside the database.
pub fn head_file(db: &Path) -> PathBuf {
    db.with_file_name("audit.head")
}

thread_local! {
    /// Set by [`append`] on the committing thread: the transaction being built appended a row.
    static APPENDED: Cell<bool> = const { Cell::new(false) };
}

/// Called by the store's writer after each transaction ends (committed or not), before the
/// callers hear back: when it appended, writes the newest committed row as the head.
pub(crate) fn after_transaction(conn: &Connection) {
    if !APPENDED.with(|a| a.replace(false)) {
        return;
    }
    let Some(db) = conn.path().filter(|p| !p.is_empty()).map(PathBuf::from) else {
        return;
    };
    if let Err(e) = anchor(conn, &db) {
        tracing::error!(error = %e, "cannot write the audit chain's head file");
    }
}

/// Writes the newest row of `audit` as the head file (nothing when the table is empty).
fn anchor(conn: &Connection, db: &Path) -> Result<()> {
    let newest: Option<Head> = conn
        .prepare_cached("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1")?
        .query_row([], |r| {
            Ok(Head {
                id: r.get(0)?,
                hash: r.get(1)?,
            })
        })
        .optional()?;
    let Some(head) = newest else {
        return Ok(());
    };
    let file = head_file(db);
    let tmp = file.with_extension("head.tmp");
    let io = |e| Error::io(format!("cannot write {}", file.display()), e);
    let mut out = std::fs::File::create(&tmp).map_err(io)?;
    serde_json::to_writer(&mut out, &head).map_err(|e| Error::Internal(e.to_string()))?;
    out.write_all(b"\n").map_err(io)?;
    out.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &file).map_err(io)?;
    if let Some(dir) = file.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    // A second copy outside the state dir: the daemon's log (the journal under systemd), which
    // whoever rewrites the state dir cannot rewrite with it.
    tracing::info!(audit_head_id = head.id, audit_head_hash = %head.hash, "audit head");
    Ok(())
}

/// Reads the head file: `None` when there is none.
fn read_head(file: &Path) -> Result<Option<Head>, String> {
    match std::fs::read(file) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{} is not a head ({e})", file.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", file.display())),
    }
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
    APPENDED.with(|a| a.set(true));
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

/// The audit service: lists the chain's rows, anchors its head at start and verifies it.
pub struct AuditLog {
    store: Store,
    /// The database file, beside which `audit.head` is kept.
    db: PathBuf,
}

impl AuditLog {
    pub(crate) fn new(store: Store, paths: &StateDir) -> Self {
        Self {
            store,
            db: paths.db(),
        }
    }

    /// The newest `limit` audit rows (of one agent when given), oldest first.
    pub async fn newest(&self, agent: Option<String>, limit: usize) -> Result<Vec<AuditEntry>> {
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

    /// Anchors a chain that has no head file yet (a hive from before heads, or a crash right
    /// after its first append), or whose head lags behind intact rows (a crash between a commit
    /// and the head write). A head that names a missing or different row is left for `verify`.
    pub(crate) async fn anchor_head(&self) -> Result<()> {
        let file = head_file(&self.db);
        let db = self.db.clone();
        self.store
            .read(move |c| {
                let head = match read_head(&file) {
                    Ok(head) => head,
                    Err(_) => return Ok(()),
                };
                if let Some(head) = head {
                    let hash: Option<String> = c
                        .query_row("SELECT hash FROM audit WHERE id = ?1", [head.id], |r| {
                            r.get(0)
                        })
                        .optional()?;
                    if hash.as_deref() != Some(head.hash.as_str()) {
                        return Ok(());
                    }
                }
                anchor(c, &db)
            })
            .await
    }

    /// Recomputes the whole chain and names the first row that does not match; then checks the
    /// chain against its head file (deleted newest rows, or every hash recomputed).
    pub async fn verify(&self) -> Result<Verification> {
        // The head first: it is written after its rows commit, so the rows read next hold it.
        let head = read_head(&head_file(&self.db));
        self.store
            .read(move |c| {
                let mut stmt = c.prepare(&format!("SELECT {COLUMNS} FROM audit ORDER BY id"))?;
                let mut rows = stmt.query([])?;
                let mut expected_prev = GENESIS.to_owned();
                let mut expected_id = 1;
                let mut count = 0;
                let mut head_seen = None;
                let head_ref = head.as_ref().ok().and_then(Option::as_ref);
                let broken = |rows, id, reason: String| Verification {
                    rows,
                    first_broken: Some(id),
                    reason: Some(reason),
                    anchored: head_ref.map(|h| h.id),
                };
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
                        return Ok(broken(
                            count,
                            e.id,
                            format!("row {} or the row before it was changed", e.id),
                        ));
                    }
                    if head_ref.is_some_and(|h| h.id == e.id) {
                        head_seen = Some(e.hash.clone());
                    }
                    expected_prev = e.hash;
                    expected_id += 1;
                }
                let last = expected_id - 1;
                match (&head, head_ref) {
                    (Err(why), _) => return Ok(broken(count, last.max(1), why.clone())),
                    (Ok(None), _) if count > 0 => {
                        return Ok(broken(
                            count,
                            last,
                            "audit.head is missing: the chain's newest rows cannot be checked (was it deleted?)".into(),
                        ));
                    }
                    (_, Some(h)) => match head_seen {
                        None => {
                            return Ok(broken(
                                count,
                                h.id,
                                format!(
                                    "row {} is anchored in audit.head but missing (the table ends at row {last}): rows were deleted",
                                    h.id
                                ),
                            ));
                        }
                        Some(hash) if hash != h.hash => {
                            return Ok(broken(
                                count,
                                h.id,
                                format!(
                                    "row {}'s hash differs from the one anchored in audit.head: rows up to it were changed and the chain recomputed",
                                    h.id
                                ),
                            ));
                        }
                        Some(_) => {}
                    },
                    _ => {}
                }
                Ok(Verification {
                    rows: count,
                    first_broken: None,
                    reason: None,
                    anchored: head_ref.map(|h| h.id),
                })
            })
            .await
    }
}
