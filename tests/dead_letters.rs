//! Dead letters: a message queued past `[mailbox] dead_letter_after_seconds` for an agent that
//! cannot take it (here: no runtime, so no agent runs) is listed for the operator, who redirects
//! or drops it, audited; bad requests change nothing.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// Every message row and the audit rows: "nothing changed".
fn snapshot(state: &std::path::Path) -> String {
    let db = open_db(state);
    let mut out = String::new();
    for q in [
        "SELECT id, sender, recipient, body, state FROM messages ORDER BY id",
        "SELECT id, action FROM audit ORDER BY id",
    ] {
        let mut stmt = db.prepare(q).unwrap();
        let rows = stmt
            .query_map([], |r| {
                let n = r.as_ref().column_count();
                Ok((0..n)
                    .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                    .collect::<Vec<_>>()
                    .join("|"))
            })
            .unwrap();
        for row in rows {
            out.push_str(&row.unwrap());
            out.push('\n');
        }
    }
    out
}

/// The dead letters for alice (the manager, which does not run either, has its own: the
/// `spawned` event).
fn dead_letters(state: &std::path::Path) -> Vec<Value> {
    let all: Vec<Value> =
        serde_json::from_str(&cli_ok(state, &["dead-letters", "--json"])).unwrap();
    all.into_iter().filter(|d| d["to"] == "alice").collect()
}

#[test]
fn a_message_no_agent_takes_becomes_a_dead_letter_the_operator_redirects_or_drops() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let _daemon = Daemon::start(state, "[mailbox]\ndead_letter_after_seconds = 1\n");
    cli_ok(state, &["spawn", "alice"]);
    cli_ok(state, &["send", "alice", "for alice, who never runs"]);
    cli_ok(state, &["send", "alice", "another one"]);
    let mut listed = Vec::new();
    assert!(eventually(Duration::from_secs(30), || {
        listed = dead_letters(state);
        listed.len() == 2
    }));
    assert_eq!(listed[0]["to"], "alice");
    assert_eq!(listed[0]["why"], "not running");
    assert_eq!(listed[0]["body"], "for alice, who never runs");
    let (first, second) = (
        listed[0]["id"].as_i64().unwrap(),
        listed[1]["id"].as_i64().unwrap(),
    );
    let shown = cli_ok(state, &["dead-letters"]);
    assert!(
        shown.contains("for alice, who never runs") && shown.contains("not running"),
        "{shown}"
    );

    // Bad requests: a clear error each, nothing changed.
    let before = snapshot(state);
    for (args, says) in [
        (
            vec!["dead-letters", "redirect", "999999", "--to", "operator"],
            "message 999999",
        ),
        (
            vec![
                "dead-letters",
                "redirect",
                &first.to_string(),
                "--to",
                "../x",
            ],
            "name",
        ),
        (
            vec![
                "dead-letters",
                "redirect",
                &first.to_string(),
                "--to",
                "nobody",
            ],
            "nobody",
        ),
        (
            vec!["dead-letters", "redirect", &first.to_string(), "--to", "*"],
            "one inbox",
        ),
        (
            vec![
                "dead-letters",
                "redirect",
                &first.to_string(),
                "--to",
                "alice",
            ],
            "already",
        ),
        (vec!["dead-letters", "drop", "999999"], "message 999999"),
    ] {
        let out = cli(state, &args);
        assert!(!out.status.success(), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // A fresh message is no dead letter yet.
    cli_ok(state, &["send", "alice", "fresh"]);
    let fresh_before = snapshot(state);
    let fresh: i64 = open_db(state)
        .query_row("SELECT max(id) FROM messages", [], |r| r.get(0))
        .unwrap();
    let out = cli(state, &["dead-letters", "drop", &fresh.to_string()]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not a dead letter"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        snapshot(state),
        fresh_before,
        "a refused drop changed nothing"
    );
    assert_ne!(before, fresh_before);

    // Redirected to the operator: a new message from the same sender; the old one delivered.
    let moved: Value = serde_json::from_str(&cli_ok(
        state,
        &[
            "dead-letters",
            "redirect",
            &first.to_string(),
            "--to",
            "operator",
            "--json",
        ],
    ))
    .unwrap();
    assert_eq!(moved["to"], "operator");
    assert_eq!(moved["from"], "operator");
    assert_eq!(moved["body"], "for alice, who never runs");
    cli_ok(state, &["dead-letters", "drop", &second.to_string()]);
    let db = open_db(state);
    let states: Vec<String> = [first, second]
        .iter()
        .map(|id| {
            db.query_row("SELECT state FROM messages WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap()
        })
        .collect();
    assert_eq!(states, ["delivered", "delivered"]);
    let actions: Vec<String> = db
        .prepare("SELECT action FROM audit WHERE action LIKE 'dead_letter_%' ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(actions, ["dead_letter_redirected", "dead_letter_dropped"]);
    let remaining: Vec<i64> = dead_letters(state)
        .iter()
        .filter_map(|d| d["id"].as_i64())
        .collect();
    assert!(
        !remaining.contains(&first) && !remaining.contains(&second),
        "{remaining:?}"
    );
    cli_ok(state, &["audit", "verify"]);
}
