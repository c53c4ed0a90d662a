//! `GET /api/v1/agents/{name}/stats` and `hive stats` through the real daemon: the shape, the
//! operator's queued message as inbox depth, and bad input refused with the field named.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_answer_with_the_inbox_depth_and_refuse_bad_input_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let _daemon = Daemon::start(state, "");
    cli_ok(state, &["spawn", "x1"]);
    cli_ok(state, &["send", "x1", "queued for x1"]);

    let (status, v) = api(state, "GET", "/api/v1/agents/x1/stats?since=24h", None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["agent"], "x1");
    assert_eq!(v["inbox_depth"], 1);
    assert_eq!(v["last_turn_at"], serde_json::Value::Null);
    assert_eq!(v["turns"], serde_json::json!([]));
    assert_eq!(v["totals"]["turns"], 0);
    assert_eq!(
        v["totals"]["sent"],
        serde_json::json!({"agent": 0, "operator": 0, "broadcast": 0})
    );

    let before = cli_ok(state, &["stats", "x1", "--json"]);
    let (status, v) = api(state, "GET", "/api/v1/agents/x1/stats?since=soon", None).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "invalid_argument");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("since"),
        "{v}"
    );
    let (status, v) = api(state, "GET", "/api/v1/agents/nobody/stats", None).await;
    assert_eq!(status, 404, "{v}");
    assert_eq!(v["error"]["code"], "unknown_agent");
    let out = cli(state, &["stats", "x1", "--since", "soon"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("since"), "{}", text(&out.stderr));
    // Nothing changed (but the clock: drop the time since the last turn, absent here anyway).
    assert_eq!(cli_ok(state, &["stats", "x1", "--json"]), before);

    let table = cli_ok(state, &["stats", "x1", "--since", "1h"]);
    assert!(table.contains("inbox depth:  1"), "{table}");
    assert!(table.contains("turns:        0"), "{table}");
}
