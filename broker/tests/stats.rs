//! Per-turn stats through the real harness MCP surface: a turn taken with `next_turn`, its events
//! recorded with `turn_events`, sends made on the agent's socket, and `finish_turn` — then the
//! stats row holds exactly those numbers; `since` filters; bad input changes nothing.

mod common;

use common::*;
use serde_json::json;

/// Every stored stats row as text: what "nothing changed" is checked against.
fn stats_rows(f: &Fixture) -> String {
    let c = open_db(&f.hive);
    c.query_row(
        "SELECT coalesce(group_concat(turn || ':' || agent || ':' || input_tokens || ':' ||
                 tool_calls || ':' || sent_agent || sent_operator || sent_broadcast, ','), '')
         FROM turn_stats",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_turn_stores_exact_stats_and_since_filters() {
    let f = fixture(&["alice", "bob", "carol"]).await;
    let harness = connect(&f, "alice", "harness.sock").await;
    let alice = connect(&f, "alice", "mcp.sock").await;
    let bob = connect(&f, "bob", "mcp.sock").await;

    // Sent before the turn: not the turn's.
    ok(&alice, "send", json!({"to": "carol", "body": "before"})).await;
    ok(&bob, "send", json!({"to": "alice", "body": "work"})).await;
    let turn = ok(&harness, "next_turn", json!({"wait_seconds": 0})).await;
    let id = turn["turn"].as_i64().unwrap();

    ok(&alice, "send", json!({"to": "bob", "body": "one"})).await;
    ok(&alice, "send", json!({"to": "carol", "body": "two"})).await;
    ok(&alice, "send", json!({"to": "operator", "body": "three"})).await;
    // One broadcast reaching two agents counts once.
    ok(&alice, "send", json!({"to": "*", "body": "all"})).await;
    // Another agent's sends during the turn are not alice's.
    ok(&bob, "send", json!({"to": "operator", "body": "bob's"})).await;

    let events = json!([
        {"type": "system", "subtype": "init"},
        {"type": "assistant", "message": {"content": [
            {"type": "text", "text": "thinking"},
            {"type": "tool_use", "name": "mcp__hive__send", "input": {}},
            {"type": "tool_use", "name": "Bash", "input": {}},
        ]}},
        {"type": "assistant", "message": {"content": [
            {"type": "tool_use", "name": "Bash", "input": {}},
            "not an object",
        ]}},
        // The openai driver's shape.
        {"type": "assistant", "message": {"tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "Read", "arguments": "{}"}},
        ]}},
        // Hostile shapes count nothing and break nothing.
        {"type": "assistant", "message": {"content": "plain text"}},
        {"type": "assistant", "message": {"tool_calls": {"name": "x"}}},
        {"type": "user", "message": {"content": [{"type": "tool_use", "name": "NotCounted"}]}},
    ]);
    ok(
        &harness,
        "turn_events",
        json!({"turn": id, "events": events}),
    )
    .await;
    ok(
        &harness,
        "finish_turn",
        json!({"turn": id, "outcome": "success", "usage": {
            "input_tokens": 1200, "output_tokens": 345, "cost_usd": 0.0625,
            "duration_ms": 4321, "tool_calls": 4
        }}),
    )
    .await;

    let stats = f.hive.agent_stats(&name("alice"), None).await.unwrap();
    let v = serde_json::to_value(&stats).unwrap();
    let t = &v["turns"][0];
    assert_eq!(v["turns"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(t["turn"], id);
    assert_eq!(t["input_tokens"], 1200);
    assert_eq!(t["output_tokens"], 345);
    assert_eq!(t["cost_usd"], 0.0625);
    assert_eq!(t["duration_ms"], 4321);
    assert_eq!(t["outcome"], "success");
    assert_eq!(
        t["tool_calls"],
        json!({"Bash": 2, "mcp__hive__send": 1, "Read": 1})
    );
    assert_eq!(
        t["sent"],
        json!({"agent": 2, "operator": 1, "broadcast": 1})
    );
    assert_eq!(v["totals"]["turns"], 1);
    assert_eq!(v["totals"]["input_tokens"], 1200);
    assert_eq!(v["totals"]["tool_calls"], t["tool_calls"]);
    assert_eq!(v["totals"]["sent"], t["sent"]);
    assert_eq!(v["last_turn_at"], t["finished_at"]);
    // The broadcast's copies went to bob and carol; alice's inbox is empty.
    assert_eq!(v["inbox_depth"], 0);
    let bob_stats = f.hive.agent_stats(&name("bob"), None).await.unwrap();
    assert_eq!(bob_stats.inbox_depth, 2, "'one' and the broadcast");
    assert!(bob_stats.turns.is_empty());

    // `since` filters: a window after the turn holds none, one before holds it.
    let later = "2999-01-01T00:00:00Z";
    let none = f
        .hive
        .agent_stats(&name("alice"), Some(later))
        .await
        .unwrap();
    assert!(none.turns.is_empty());
    assert_eq!(none.totals.turns, 0);
    assert_eq!(
        none.last_turn_at, stats.last_turn_at,
        "last turn ignores the window"
    );
    let recent = f
        .hive
        .agent_stats(&name("alice"), Some("1h"))
        .await
        .unwrap();
    assert_eq!(recent.turns.len(), 1);

    // Bad input: the clear error, and nothing changed.
    let before = stats_rows(&f);
    assert!(before.contains(&format!("{id}:alice:1200:")), "{before}");
    let e = f
        .hive
        .agent_stats(&name("alice"), Some("yesterday"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "invalid_argument");
    assert!(e.to_string().contains("since"), "{e}");
    let e = f.hive.agent_stats(&name("nobody"), None).await.unwrap_err();
    assert_eq!(e.code(), "unknown_agent", "{e}");
    assert_eq!(stats_rows(&f), before);
}
