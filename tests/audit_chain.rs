//! `hive audit verify` against a real daemon notices what the chain claims: an edited row, the
//! newest rows deleted, and every hash recomputed with the documented canonical JSON (the head
//! anchored in `audit.head` no longer matches); and it does not cry wolf when the head lags
//! behind the rows after a crash between a commit and the head write.

mod common;

use std::path::Path;

use common::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn verify(state: &Path) -> (Option<i32>, String, String) {
    let out = cli(state, &["audit", "verify"]);
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

fn newest_row(state: &Path) -> i64 {
    open_db(state)
        .query_row("SELECT max(id) FROM audit", [], |r| r.get(0))
        .unwrap()
}

/// The documented hash: sha256(prev_hash ‖ canonical JSON of the other fields).
fn hash_of(
    prev: &str,
    id: i64,
    ts: i64,
    actor: &str,
    action: &str,
    agent: Option<&str>,
    detail: &str,
) -> String {
    let fields = json!({
        "id": id, "ts": ts, "actor": actor, "action": action, "agent": agent, "detail": detail,
    });
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(fields.to_string().as_bytes());
    hex::encode(h.finalize())
}

#[test]
fn truncation_and_recomputation_are_detected_and_a_lagging_head_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let mut daemon = Daemon::start(state, "");
    for name in ["alice", "bob", "carol"] {
        let out = cli(state, &["spawn", name]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let (code, out, err) = verify(state);
    assert_eq!(code, Some(0), "{err}");
    let last = newest_row(state);
    assert!(last >= 3);
    assert!(out.contains(&format!("anchored at row {last}")), "{out}");
    let head: Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("audit.head")).unwrap()).unwrap();
    assert_eq!(head["id"], last);

    // The newest row deleted: the chain alone is whole, the head names the missing row.
    let db = open_db(state);
    let saved: (i64, String, String, Option<String>, String, String, String) = db
        .query_row(
            "SELECT ts, actor, action, agent, detail, prev_hash, hash FROM audit WHERE id = ?1",
            [last],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            },
        )
        .unwrap();
    db.execute("DELETE FROM audit WHERE id = ?1", [last])
        .unwrap();
    let (code, _, err) = verify(state);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("broken at row {last}")), "{err}");
    assert!(err.contains("deleted"), "{err}");
    // Put back, it verifies again.
    db.execute(
        "INSERT INTO audit (id, ts, actor, action, agent, detail, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        rusqlite::params![
            last, saved.0, saved.1, saved.2, saved.3, saved.4, saved.5, saved.6
        ],
    )
    .unwrap();
    assert_eq!(verify(state).0, Some(0));

    // Row 2 edited and every hash from there recomputed the documented way.
    db.execute(
        "UPDATE audit SET detail = '{\"forged\":true}' WHERE id = 2",
        [],
    )
    .unwrap();
    let rows: Vec<(i64, i64, String, String, Option<String>, String)> = db
        .prepare("SELECT id, ts, actor, action, agent, detail FROM audit ORDER BY id")
        .unwrap()
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut prev = "0".repeat(64);
    for (id, ts, actor, action, agent, detail) in rows {
        let hash = hash_of(&prev, id, ts, &actor, &action, agent.as_deref(), &detail);
        db.execute(
            "UPDATE audit SET prev_hash = ?1, hash = ?2 WHERE id = ?3",
            rusqlite::params![prev, hash, id],
        )
        .unwrap();
        prev = hash;
    }
    let (code, _, err) = verify(state);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("broken at row {last}")), "{err}");
    assert!(err.contains("recomputed"), "{err}");

    // A fresh hive: a head left behind by a crash between a commit and its head write (the
    // head names an older, intact row) verifies, and the next start moves it up.
    drop(daemon);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    daemon = Daemon::start(state, "");
    assert!(cli(state, &["spawn", "alice"]).status.success());
    let older = std::fs::read_to_string(state.join("audit.head")).unwrap();
    assert!(cli(state, &["spawn", "bob"]).status.success());
    let newest = std::fs::read_to_string(state.join("audit.head")).unwrap();
    assert_ne!(older, newest);
    std::fs::write(state.join("audit.head"), &older).unwrap();
    let (code, _, err) = verify(state);
    assert_eq!(code, Some(0), "a lagging head is no break: {err}");
    daemon.kill9();
    let _daemon = Daemon::start(state, "");
    let (code, out, err) = verify(state);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(&format!("anchored at row {}", newest_row(state))),
        "{out}"
    );
    assert_eq!(
        std::fs::read_to_string(state.join("audit.head")).unwrap(),
        newest
    );

    // The head file deleted while rows exist: verify says so.
    std::fs::remove_file(state.join("audit.head")).unwrap();
    let (code, _, err) = verify(state);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("audit.head is missing"), "{err}");
}
