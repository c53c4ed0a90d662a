//! Agents act, end to end through the real daemon with the process runtime: a real minimal-builder
//! image, the real `hive-agent serve` payload driving the real claude CLI against the scripted
//! model server. The operator's message becomes a turn; the model's answer reaches the operator's
//! inbox; the hive shows the harness's turn state.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use testkit::model_server::{ModelServer, Reply};
use testkit::tools;

const LIMIT: Duration = Duration::from_secs(120);

fn run_of(state: &Path, agent: &str) -> Value {
    let agents: Vec<Value> = serde_json::from_str(&cli_ok(state, &["agents", "--json"])).unwrap();
    agents
        .into_iter()
        .find(|a| a["name"] == agent)
        .map(|a| a["run"].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_in_the_process_runtime_answers_the_operator_through_claude() {
    let Some(claude) = tools::require("claude", tools::claude_bin()) else {
        return;
    };
    if tools::require("nix-build", tools::nix_build()).is_none()
        || tools::require("busybox", tools::busybox()).is_none()
    {
        return;
    }
    let server = ModelServer::start(vec![
        Reply::tool_use(
            "mcp__hive__send",
            json!({"to": "operator", "body": "hello operator"}),
        ),
        Reply::text("answered"),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("hive");
    let base_url = server.base_url();
    let claude = claude.display().to_string();
    // The model is reached the way it is in production: the harness talks to the agent's
    // gateway.sock, which forwards to `[model] anthropic_base_url` (here the scripted server).
    let config = format!(
        "[runtime]\nkind = \"process\"\nstop_timeout_seconds = 5\n\n[model]\nanthropic_base_url = \"{base_url}\"\n"
    );
    let _daemon = Daemon::start_with_env(
        &state,
        &config,
        &[
            ("HIVE_CLAUDE", claude.as_str()),
            ("CLAUDE_CODE_MAX_RETRIES", "0"),
        ],
    );
    cli_ok(&state, &["spawn", "alice"]);
    let mut last = Value::Null;
    let idle = eventually(LIMIT, || {
        last = run_of(&state, "alice");
        last["up"] == true && last["turn_state"] == "idle"
    });
    assert!(idle, "alice never came up idle: {last}");

    let id = send(&state, "alice", "say hello").await;
    let mut inbox = Value::Null;
    let mut got = false;
    for _ in 0..600 {
        let (status, v) = api(&state, "GET", "/api/v1/inbox?limit=10", None).await;
        assert_eq!(status, 200, "{v}");
        inbox = v;
        if inbox.to_string().contains("hello operator") {
            got = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(got, "no answer in the operator's inbox: {inbox}");
    let answer = inbox
        .as_array()
        .into_iter()
        .flatten()
        .chain(inbox["messages"].as_array().into_iter().flatten())
        .find(|m| m["body"] == "hello operator")
        .cloned()
        .unwrap_or_else(|| panic!("{inbox}"));
    assert_eq!(answer["from"], "alice", "{answer}");

    // The turn finished with usage, its events stored; the session id sits in the agent's state.
    let db = open_db(&state);
    let mut outcome = None;
    assert!(eventually(LIMIT, || {
        outcome = db
            .query_row(
                "SELECT outcome FROM turns WHERE message_id = ?1 AND outcome IS NOT NULL",
                [id],
                |r| r.get::<_, String>(0),
            )
            .ok();
        outcome.is_some()
    }));
    assert_eq!(outcome.as_deref(), Some("ok"));
    let events: i64 = db
        .query_row(
            "SELECT count(*) FROM turn_events e JOIN turns t ON e.turn = t.id WHERE t.message_id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    assert!(events >= 4, "{events} events");
    let session = state.join("agents/alice/state/claude-session");
    assert!(
        session.is_file(),
        "no session file at {}",
        session.display()
    );
}
