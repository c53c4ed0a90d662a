//! Delivery receipts through the real daemon: a message taken in a harness turn (the real
//! `harness.sock` tools through an rmcp client) shows queued → leased (its turn) → delivered with
//! times in `hive message`, `hive messages` and the admin API; and the delivery latency of the
//! last hour lies within the measured times of what was delivered, and is none on an empty hive.

mod common;

use std::path::Path;

use common::*;
use serde_json::{Value, json};

/// `hive message ID --json`.
fn message_cli(state: &Path, id: i64) -> Value {
    serde_json::from_str(&cli_ok(state, &["message", &id.to_string(), "--json"])).unwrap()
}

/// The receipt's three times, in order, and the turn.
fn assert_receipt(m: &Value, turn: i64) {
    assert_eq!(m["state"], "delivered", "{m}");
    assert_eq!(m["turn"], turn, "{m}");
    let (sent, leased, delivered) = (
        m["sent_at"].as_i64().unwrap(),
        m["leased_at"].as_i64().expect("leased_at"),
        m["delivered_at"].as_i64().expect("delivered_at"),
    );
    assert!(sent <= leased && leased <= delivered, "{m}");
}

#[test]
fn a_message_taken_in_a_turn_shows_queued_leased_and_delivered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let _daemon = Daemon::start(state, "");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let id = rt.block_on(send(state, "manager", "a receipt, please"));

    let queued = message_cli(state, id);
    assert_eq!(queued["state"], "queued", "{queued}");
    assert!(queued.get("leased_at").is_none() && queued.get("turn").is_none());

    let harness = mcp_connect(&rt, state, "manager", "harness.sock");
    let taken = rt.block_on(mcp_ok(&harness, "next_turn", json!({"wait_seconds": 0})));
    let turn = taken["turn"].as_i64().unwrap();
    let (status, leased) = rt.block_on(api(state, "GET", &format!("/api/v1/messages/{id}"), None));
    assert_eq!(status, 200, "{leased}");
    assert_eq!(leased["state"], "leased", "{leased}");
    assert_eq!(leased["turn"], turn, "{leased}");
    assert!(leased["leased_at"].as_i64().unwrap() >= leased["sent_at"].as_i64().unwrap());
    assert!(leased.get("delivered_at").is_none(), "{leased}");

    rt.block_on(mcp_ok(
        &harness,
        "finish_turn",
        json!({"turn": turn, "outcome": "ok"}),
    ));
    // Kept after the turn finished (its lease is gone): in the CLI, the API and the listing.
    let shown = message_cli(state, id);
    assert_receipt(&shown, turn);
    assert_eq!(shown["leased_at"], leased["leased_at"], "{shown}");
    let (status, api_view) =
        rt.block_on(api(state, "GET", &format!("/api/v1/messages/{id}"), None));
    assert_eq!(status, 200);
    assert_eq!(api_view, shown);
    let listed: Vec<Value> = serde_json::from_str(&cli_ok(
        state,
        &["messages", "--agent", "manager", "--json"],
    ))
    .unwrap();
    let row = listed.iter().find(|m| m["id"] == id).expect("listed");
    assert_receipt(row, turn);

    let plain = cli_ok(state, &["message", &id.to_string()]);
    for line in ["queued:", &format!("to turn {turn}"), "delivered:"] {
        assert!(plain.contains(line), "{line} in\n{plain}");
    }
    let flow = cli_ok(state, &["messages", "--agent", "manager"]);
    assert!(
        flow.contains(&format!("(turn {turn}), delivered +")),
        "{flow}"
    );

    // An unknown message: a clear not-found, from the CLI and the API.
    let (status, err) = rt.block_on(api(state, "GET", "/api/v1/messages/999999", None));
    assert_eq!(status, 404, "{err}");
    let out = cli(state, &["message", "999999"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("message 999999"),
        "{}",
        text(&out.stderr)
    );
}

/// The smallest and largest of `later - sent_at` over the delivered messages.
fn measured(state: &Path, later: &str) -> (i64, i64, i64) {
    open_db(state)
        .query_row(
            &format!(
                "SELECT count(*), min({later} - sent_at), max({later} - sent_at) FROM messages
                 WHERE state = 'delivered'"
            ),
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
}

fn assert_within(summary: &Value, (count, min, max): (i64, i64, i64)) {
    assert_eq!(summary["count"], count, "{summary}");
    for p in ["p50_ms", "p99_ms"] {
        let v = summary[p]
            .as_i64()
            .unwrap_or_else(|| panic!("{p}: {summary}"));
        assert!((min..=max).contains(&v), "{p} {v} not in {min}..={max}");
    }
    assert!(summary["p50_ms"].as_i64() <= summary["p99_ms"].as_i64());
}

#[test]
fn the_delivery_latency_lies_within_the_measured_times_and_an_empty_hive_reports_none() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let _daemon = Daemon::start(state, "");
    let rt = tokio::runtime::Runtime::new().unwrap();

    let (status, empty) = rt.block_on(api(state, "GET", "/api/v1/delivery-latency", None));
    assert_eq!(status, 200, "{empty}");
    for key in ["picked_up", "delivered"] {
        assert_eq!(empty[key]["count"], 0, "{empty}");
        assert!(empty[key]["p50_ms"].is_null() && empty[key]["p99_ms"].is_null());
    }
    let plain = cli_ok(state, &["status"]);
    assert!(
        plain.contains("delivered:   none in the last hour"),
        "{plain}"
    );

    // Turns of one to three messages each: sent at different times, leased and delivered.
    let harness = mcp_connect(&rt, state, "manager", "harness.sock");
    for round in 0..6 {
        for i in 0..=(round % 3) {
            rt.block_on(send(
                state,
                "manager",
                &format!("round {round} message {i}"),
            ));
        }
        let turn = rt.block_on(mcp_ok(&harness, "next_turn", json!({"wait_seconds": 0})));
        rt.block_on(mcp_ok(
            &harness,
            "finish_turn",
            json!({"turn": turn["turn"], "outcome": "ok"}),
        ));
    }
    let delivered = measured(state, "delivered_at");
    let picked_up = measured(state, "leased_at");
    assert!(delivered.0 >= 12, "{delivered:?}");

    let (_, latency) = rt.block_on(api(state, "GET", "/api/v1/delivery-latency", None));
    assert_eq!(latency["window_seconds"], 3600, "{latency}");
    assert_within(&latency["delivered"], delivered);
    assert_within(&latency["picked_up"], picked_up);
    let status: Value = serde_json::from_str(&cli_ok(state, &["status", "--json"])).unwrap();
    assert_eq!(status["delivery_latency"], latency);
    let plain = cli_ok(state, &["status"]);
    assert!(
        plain.contains("delivered:   p50 +")
            && plain.contains(&format!("({} messages, last hour)", delivered.0)),
        "{plain}"
    );
}
