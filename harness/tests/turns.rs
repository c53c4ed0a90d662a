//! The turn loop of `hive-agent serve` with the real claude CLI as a warm process, against the
//! scripted model server and an in-process hive serving its real sockets: a message becomes a
//! turn whose events and usage are stored, the process is reused and resumed, failures release
//! the turn or end it as an error.

mod common;

use std::process::Command;

use broker::bus::Event;
use broker::names::Inbox;
use common::{TestHive, name};
use proto::tools::TurnState;
use serde_json::{Value, json};
use testkit::model_server::{ModelServer, RecordedRequest, Reply};
use testkit::tools;

use common::running::*;

/// One stored turn.
#[derive(Debug)]
struct TurnRow {
    id: i64,
    outcome: Option<String>,
    usage: Option<Value>,
    events: Vec<Value>,
}

fn turns_of(hive: &TestHive, message: i64) -> Vec<TurnRow> {
    let db = rusqlite::Connection::open_with_flags(
        hive.hive.state_dir().db(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut turns = db
        .prepare("SELECT id, outcome, usage FROM turns WHERE message_id = ?1 ORDER BY id")
        .unwrap()
        .query_map([message], |r| {
            Ok(TurnRow {
                id: r.get(0)?,
                outcome: r.get(1)?,
                usage: r
                    .get::<_, Option<String>>(2)?
                    .map(|u| serde_json::from_str(&u).unwrap()),
                events: Vec::new(),
            })
        })
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    for t in &mut turns {
        t.events = db
            .prepare("SELECT data FROM turn_events WHERE turn = ?1 ORDER BY seq")
            .unwrap()
            .query_map([t.id], |r| r.get::<_, String>(0))
            .unwrap()
            .map(|d| serde_json::from_str(&d.unwrap()).unwrap())
            .collect();
    }
    turns
}

/// Waits until message `id` of alice is delivered (its turn finished).
async fn delivered(hive: &TestHive, events: &mut tokio::sync::broadcast::Receiver<Event>, id: i64) {
    tokio::time::timeout(DEADLINE, async {
        loop {
            if let Ok(Event::MessageDelivered { ids, .. }) = events.recv().await
                && ids.contains(&id)
            {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("message {id} was not delivered: {:?}", turns_of(hive, id)));
}

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let t = e["type"].as_str().unwrap_or("?");
            match e["subtype"].as_str() {
                Some(s) => format!("{t}/{s}"),
                None => t.to_owned(),
            }
        })
        .collect()
}

/// The turn's events hold a notes checkpoint, then the harness's compaction, then the model's
/// compact boundary, in that order.
fn checkpoint_then_compaction(events: &[Value], harness: &Harness) {
    let k = kinds(events);
    let at = |kind: &str| {
        k.iter()
            .position(|e| e == kind)
            .unwrap_or_else(|| panic!("no {kind} in {k:?}\n{}", harness.log()))
    };
    assert!(
        at("harness/notes_checkpoint") < at("harness/compacting"),
        "{k:?}"
    );
    assert!(
        at("harness/compacting") < at("system/compact_boundary"),
        "{k:?}"
    );
}

fn session_of(server: &ModelServer, request: usize) -> String {
    server.model_requests()[request]
        .header("x-claude-code-session-id")
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_wakes_a_warm_claude_that_answers_and_resumes_after_idle() {
    if tools::require("claude", tools::claude_bin()).is_none() {
        return;
    }
    let server = ModelServer::start(vec![
        Reply::tool_use("mcp__hive__send", json!({"to": "bob", "body": "hello bob"})),
        Reply::text("answered"),
        Reply::tool_use("mcp__hive__send", json!({"to": "bob", "body": "second"})),
        Reply::text("answered again"),
        Reply::tool_use("mcp__hive__send", json!({"to": "bob", "body": "third"})),
        Reply::text("answered after a rest"),
    ])
    .await;
    let hive = TestHive::open_with_model(&["alice", "bob"], &server.base_url()).await;
    let mut bus = hive.hive.subscribe();
    let harness = Harness::start(&hive, &server, json!({}), 3);

    let first = send(&hive, "bob", "alice", "please say hello").await;
    let reply = receive(&hive, Inbox::Agent(name("bob"))).await;
    assert_eq!(
        (reply.from.as_str(), reply.body.as_str()),
        ("alice", "hello bob")
    );
    delivered(&hive, &mut bus, first).await;
    let turns = turns_of(&hive, first);
    assert_eq!(turns.len(), 1, "{turns:?}");
    assert_eq!(turns[0].outcome.as_deref(), Some("ok"), "{turns:?}");
    let usage = turns[0].usage.clone().expect("usage");
    assert_eq!(usage["tool_calls"], 1, "{usage}");
    assert!(usage["output_tokens"].as_u64().is_some(), "{usage}");
    assert!(usage["input_tokens"].as_u64().is_some(), "{usage}");
    assert!(usage["duration_ms"].as_u64().is_some(), "{usage}");
    let k = kinds(&turns[0].events);
    assert!(k.contains(&"system/init".to_owned()), "{k:?}");
    assert_eq!(
        k.last().map(String::as_str),
        Some("result/success"),
        "{k:?}"
    );
    assert!(
        k.iter().any(|e| e == "assistant") && k.iter().any(|e| e == "user"),
        "{k:?}"
    );
    // The model read who wrote and how to answer.
    let prompt = server.model_requests()[0].last_user_text().unwrap();
    assert!(
        prompt.contains("from bob") && prompt.contains("please say hello"),
        "{prompt}"
    );
    assert!(!prompt.contains("redelivered"), "{prompt}");
    // The harness reported thinking and then idle; the hive shows it.
    until("the harness reports idle", || {
        hive.hive.agent_run(&name("alice")).unwrap().turn_state == Some(TurnState::Idle)
    })
    .await;

    // A second message: the same process, the same session.
    let second = send(&hive, "operator", "alice", "again").await;
    let reply = receive(&hive, Inbox::Agent(name("bob"))).await;
    assert_eq!(reply.body, "second");
    delivered(&hive, &mut bus, second).await;
    assert_eq!(harness.claude_starts().len(), 1, "{}", harness.log());
    let session = session_of(&server, 0);
    assert!(!session.is_empty());
    assert_eq!(session_of(&server, 2), session);
    assert_eq!(
        std::fs::read_to_string(harness.state.join("claude-session")).unwrap(),
        session
    );

    // Idle past the timeout: the process goes; the next message resumes the session.
    harness
        .wait_log("claude is stopped when idle", |l| l.contains("claude idle"))
        .await;
    until("claude is gone", || harness.claude_pid().is_none()).await;
    let third = send(&hive, "bob", "alice", "after a rest").await;
    let reply = receive(&hive, Inbox::Agent(name("bob"))).await;
    assert_eq!(reply.body, "third");
    delivered(&hive, &mut bus, third).await;
    let starts = harness.claude_starts();
    assert_eq!(starts.len(), 2, "{}", harness.log());
    assert!(
        starts[1].contains(&format!("resuming session {session}")),
        "{starts:?}"
    );
    assert_eq!(session_of(&server, 4), session);
    // The resumed conversation holds the earlier turns.
    let history = server.model_requests()[4].body["messages"].to_string();
    assert!(history.contains("please say hello"), "{history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_extra_mcp_server_is_a_turn_error_naming_it() {
    if tools::require("claude", tools::claude_bin()).is_none() {
        return;
    }
    let server = ModelServer::start(vec![Reply::text("no tools")]).await;
    let hive = TestHive::open_with_model(&["alice", "bob"], &server.base_url()).await;
    let mut bus = hive.hive.subscribe();
    let config = json!({"extraMcpServers": {"broken": {"command": "/nonexistent/mcp-server"}}});
    let _harness = Harness::start(&hive, &server, config, 600);

    let id = send(&hive, "bob", "alice", "work").await;
    delivered(&hive, &mut bus, id).await;
    let turns = turns_of(&hive, id);
    assert_eq!(turns.len(), 1, "{turns:?}");
    assert_eq!(turns[0].outcome.as_deref(), Some("error"), "{turns:?}");
    let error = turns[0]
        .events
        .iter()
        .find(|e| e["type"] == "harness" && e["subtype"] == "error")
        .unwrap_or_else(|| panic!("no error event: {:?}", turns[0].events));
    let text = error["message"].as_str().unwrap();
    assert!(text.contains("broken") && text.contains("failed"), "{text}");
    assert!(
        !text.contains("hive ("),
        "the hive server connected: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_commands_become_exactly_their_bash_permission() {
    if tools::require("claude", tools::claude_bin()).is_none() {
        return;
    }
    let server = ModelServer::start(vec![Reply::Hang]).await;
    let hive = TestHive::open_with_model(&["alice", "bob"], &server.base_url()).await;
    let harness = Harness::start(&hive, &server, json!({"allowedCommands": ["git"]}), 600);
    send(&hive, "bob", "alice", "run git").await;
    server
        .wait_for_requests(1, DEADLINE)
        .await
        .expect("a model request");
    let pid = harness.claude_pid().expect("claude runs");
    let args = argv(pid);
    let allowed = args
        .iter()
        .position(|a| a == "--allowedTools")
        .map(|i| args[i + 1].clone())
        .unwrap_or_else(|| panic!("no --allowedTools in {args:?}"));
    let notes = harness.state.join("notes.md").display().to_string();
    assert_eq!(
        allowed,
        format!("mcp__hive,Read(/{notes}),Edit(/{notes}),Bash(git:*)"),
        "{args:?}"
    );
    assert!(!args.iter().any(|a| a == "--disallowedTools"), "{args:?}");
    assert!(args.iter().any(|a| a == "--strict-mcp-config"), "{args:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_killed_mid_turn_gets_the_message_again_flagged_once() {
    if tools::require("claude", tools::claude_bin()).is_none() {
        return;
    }
    let server = ModelServer::start(vec![
        Reply::Hang,
        Reply::tool_use(
            "mcp__hive__send",
            json!({"to": "bob", "body": "done at last"}),
        ),
        Reply::text("ok"),
    ])
    .await;
    let hive = TestHive::open_with_model(&["alice", "bob"], &server.base_url()).await;
    let mut bus = hive.hive.subscribe();
    let harness = Harness::start(&hive, &server, json!({}), 600);
    let id = send(&hive, "bob", "alice", "slow work").await;
    server
        .wait_for_requests(1, DEADLINE)
        .await
        .expect("a model request");
    let pid = harness.claude_pid().expect("claude runs");
    let killed = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    let reply = receive(&hive, Inbox::Agent(name("bob"))).await;
    assert_eq!(reply.body, "done at last");
    delivered(&hive, &mut bus, id).await;
    let turns = turns_of(&hive, id);
    let outcomes: Vec<_> = turns.iter().map(|t| t.outcome.clone()).collect();
    assert_eq!(
        outcomes,
        [Some("abandoned".to_owned()), Some("ok".to_owned())],
        "{turns:?}\n{}",
        harness.log()
    );
    assert!(
        kinds(&turns[0].events).contains(&"harness/model_died".to_owned()),
        "{turns:?}"
    );
    // Whether claude wrote its transcript before it died decides whether the second turn resumed
    // the session or went on in a fresh one (`harness/fresh_session`): both answer the message.
    let prompt = server
        .model_requests()
        .last()
        .unwrap()
        .last_user_text()
        .unwrap();
    assert!(
        prompt.contains("delivered before (redelivered)"),
        "{prompt}"
    );
    // Nothing else reached bob, and alice's message is delivered, flagged.
    nothing_more_for(&hive, "bob").await;
    let stored = hive.messages().await;
    let msg = stored.iter().find(|m| m.id == id).unwrap();
    assert!(msg.redelivered, "{msg:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_killed_mid_turn_gets_the_message_again_flagged_once() {
    if tools::require("claude", tools::claude_bin()).is_none() {
        return;
    }
    let server = ModelServer::start(vec![
        Reply::Hang,
        Reply::tool_use(
            "mcp__hive__send",
            json!({"to": "bob", "body": "done after the restart"}),
        ),
        Reply::text("ok"),
    ])
    .await;
    let hive = TestHive::open_with_model(&["alice", "bob"], &server.base_url()).await;
    let mut bus = hive.hive.subscribe();
    let mut harness = Harness::start(&hive, &server, json!({}), 600);
    let id = send(&hive, "bob", "alice", "slow work").await;
    server
        .wait_for_requests(1, DEADLINE)
        .await
        .expect("a model request");
    let claude = harness.claude_pid().expect("claude runs");
    harness.child.kill().unwrap();
    harness.child.wait().unwrap();
    // What a container's end does to the rest of it (the process runtime leaves claude behind).
    let _ = Command::new("kill")
        .args(["-9", &claude.to_string()])
        .status();
    until("the hive gave the turn back", || {
        turns_of(&hive, id).first().and_then(|t| t.outcome.clone()) == Some("abandoned".into())
    })
    .await;
    let stored = hive.messages().await;
    let msg = stored.iter().find(|m| m.id == id).unwrap();
    assert_eq!(msg.state, broker::mailbox::MessageState::Queued, "{msg:?}");
    assert!(msg.redelivered, "{msg:?}");

    // The same state dir (its session file names a conversation claude never wrote).
    let harness = Harness::start(&hive, &server, json!({}), 600);
    let reply = receive(&hive, Inbox::Agent(name("bob"))).await;
    assert_eq!(reply.body, "done after the restart");
    delivered(&hive, &mut bus, id).await;
    let turns = turns_of(&hive, id);
    let outcomes: Vec<_> = turns.iter().map(|t| t.outcome.clone()).collect();
    assert_eq!(
        outcomes,
        [Some("abandoned".to_owned()), Some("ok".to_owned())],
        "{turns:?}\n{}",
        harness.log()
    );
    let prompt = server
        .model_requests()
        .last()
        .unwrap()
        .last_user_text()
        .unwrap();
    assert!(
        prompt.contains("delivered before (redelivered)"),
        "{prompt}"
    );
    nothing_more_for(&hive, "bob").await;
    assert_eq!(server.model_requests().len(), 3);
}

/// Stops `harness` and the claude it started (the process runtime leaves claude behind).
fn stop(mut harness: Harness) {
    let claude = harness.claude_pid();
    harness.child.kill().unwrap();
    harness.child.wait().unwrap();
    if let Some(claude) = claude {
        let _ = Command::new("kill")
            .args(["-9", &claude.to_string()])
            .status();
    }
}

/// claude's `--resume` keeps the system prompt a session began with: a harness started with
/// another prompt (a config change) begins a new session, which the model sees with the new
/// prompt; started again with the same prompt, it resumes that session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_prompt_begins_a_new_session_and_the_same_prompt_resumes_it() {
    if tools::require("claude", tools::claude_bin()).is_none() {
        return;
    }
    let mut script = Vec::new();
    for body in ["one", "two", "three"] {
        script.push(Reply::tool_use(
            "mcp__hive__send",
            json!({"to": "bob", "body": body}),
        ));
        script.push(Reply::text("answered"));
    }
    let server = ModelServer::start(script).await;
    let hive = TestHive::open_with_model(&["alice", "bob"], &server.base_url()).await;
    let mut bus = hive.hive.subscribe();
    // The prompt the agent adds comes last in the system blocks: the tail is enough to show.
    let system = |request: usize| {
        let text = server.model_requests()[request].body["system"].to_string();
        text[text.len().saturating_sub(300)..].to_owned()
    };
    let mut turn = async |prompt: &str, body: &str| -> Harness {
        let harness = Harness::start(&hive, &server, json!({ "prompt": prompt }), 600);
        let id = send(&hive, "bob", "alice", "work").await;
        assert_eq!(receive(&hive, Inbox::Agent(name("bob"))).await.body, body);
        delivered(&hive, &mut bus, id).await;
        harness
    };

    let first = turn("PROMPT-ONE", "one").await;
    stop(first);
    let second = turn("PROMPT-TWO", "two").await;
    assert!(
        system(2).contains("PROMPT-TWO") && !system(2).contains("PROMPT-ONE"),
        "{}",
        system(2)
    );
    let starts = second.claude_starts();
    assert!(!starts[0].contains("resuming"), "{starts:?}");
    assert!(
        second.log().contains("began under another system prompt"),
        "{}",
        second.log()
    );
    let session = session_of(&server, 2);
    assert_ne!(session, session_of(&server, 0));
    stop(second);

    let third = turn("PROMPT-TWO", "three").await;
    let starts = third.claude_starts();
    assert!(
        starts[0].contains(&format!("resuming session {session}")),
        "{starts:?}\n{}",
        third.log()
    );
    assert_eq!(session_of(&server, 4), session);
    assert!(system(4).contains("PROMPT-TWO"), "{}", system(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_logged_in_reports_needs_login_and_gives_the_message_back() {
    if tools::require("claude", tools::claude_bin()).is_none() {
        return;
    }
    let server = ModelServer::start(vec![Reply::invalid_api_key()]).await;
    let hive = TestHive::open_with_model(&["alice", "bob"], &server.base_url()).await;
    let harness = Harness::start(&hive, &server, json!({}), 600);
    let id = send(&hive, "bob", "alice", "hello").await;
    until("the harness reports needs_login", || {
        hive.hive.agent_run(&name("alice")).unwrap().turn_state == Some(TurnState::NeedsLogin)
    })
    .await;
    until("the turn is released", || {
        turns_of(&hive, id)
            .first()
            .and_then(|t| t.outcome.clone())
            .is_some()
    })
    .await;
    let turns = turns_of(&hive, id);
    assert_eq!(turns.len(), 1, "{turns:?}\n{}", harness.log());
    assert_eq!(turns[0].outcome.as_deref(), Some("abandoned"), "{turns:?}");
    assert!(
        kinds(&turns[0].events).contains(&"harness/needs_login".to_owned()),
        "{turns:?}"
    );
    let stored = hive.messages().await;
    let msg = stored.iter().find(|m| m.id == id).unwrap();
    assert_eq!(msg.state, broker::mailbox::MessageState::Queued, "{msg:?}");
    assert!(msg.redelivered, "{msg:?}");
}

/// A 400 "prompt is too long" mid-session: the session is compacted once (claude compacts on
/// its own when it can; the harness's `/compact`, then a fresh session, are the fallbacks when
/// it gives up) and the same turn succeeds in the same process and session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_too_long_is_compacted_once_and_the_turn_succeeds_in_the_same_session() {
    if tools::require("claude", tools::claude_bin()).is_none() {
        return;
    }
    // A first turn gives the session something to compact (claude will not compact less).
    let server = ModelServer::start(vec![
        Reply::text("first answer"),
        Reply::prompt_too_long(),
        Reply::text("<summary>the story so far</summary>"),
        Reply::tool_use("mcp__hive__send", json!({"to": "bob", "body": "fits now"})),
        Reply::text("ok"),
    ])
    .await;
    let hive = TestHive::open_with_model(&["alice", "bob"], &server.base_url()).await;
    let mut bus = hive.hive.subscribe();
    let harness = Harness::start(&hive, &server, json!({}), 600);
    let first = send(&hive, "bob", "alice", "the beginning").await;
    delivered(&hive, &mut bus, first).await;
    let id = send(&hive, "bob", "alice", "a long story").await;
    let reply = receive(&hive, Inbox::Agent(name("bob"))).await;
    assert_eq!(reply.body, "fits now");
    delivered(&hive, &mut bus, id).await;
    let turns = turns_of(&hive, id);
    assert_eq!(turns.len(), 1, "{turns:?}");
    assert_eq!(turns[0].outcome.as_deref(), Some("ok"), "{turns:?}");
    let k = kinds(&turns[0].events);
    let compactions = k.iter().filter(|e| *e == "system/compact_boundary").count();
    assert_eq!(compactions, 1, "{k:?}");
    assert!(!k.contains(&"harness/fresh_session".to_owned()), "{k:?}");
    // The same process and session, compacted: no fresh start.
    assert_eq!(harness.claude_starts().len(), 1, "{}", harness.log());
    assert_eq!(session_of(&server, 3), session_of(&server, 0));
    let history = server.model_requests()[3].body["messages"].to_string();
    assert!(history.contains("the story so far"), "{history}");
    assert_eq!(server.remaining(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_error_ends_the_turn_as_an_error_and_the_next_turn_runs() {
    if tools::require("claude", tools::claude_bin()).is_none() {
        return;
    }
    // Overloaded on the first try and on both of the harness's retries.
    let server = ModelServer::start(vec![
        Reply::overloaded(),
        Reply::overloaded(),
        Reply::overloaded(),
        Reply::tool_use(
            "mcp__hive__send",
            json!({"to": "bob", "body": "better now"}),
        ),
        Reply::text("ok"),
    ])
    .await;
    let hive = TestHive::open_with_model(&["alice", "bob"], &server.base_url()).await;
    let mut bus = hive.hive.subscribe();
    let _harness = Harness::start(&hive, &server, json!({}), 600);
    let first = send(&hive, "bob", "alice", "one").await;
    delivered(&hive, &mut bus, first).await;
    let turns = turns_of(&hive, first);
    assert_eq!(turns.len(), 1, "{turns:?}");
    assert_eq!(turns[0].outcome.as_deref(), Some("error"), "{turns:?}");
    // claude calls it a success with is_error set: the harness goes by is_error.
    let result = turns[0]
        .events
        .iter()
        .find(|e| e["type"] == "result")
        .unwrap();
    assert_eq!(
        (result["subtype"].as_str(), result["is_error"].as_bool()),
        (Some("success"), Some(true)),
        "{result}"
    );
    assert!(
        kinds(&turns[0].events).contains(&"harness/error".to_owned()),
        "{turns:?}"
    );

    let second = send(&hive, "bob", "alice", "two").await;
    let reply = receive(&hive, Inbox::Agent(name("bob"))).await;
    assert_eq!(reply.body, "better now");
    delivered(&hive, &mut bus, second).await;
    assert_eq!(turns_of(&hive, second)[0].outcome.as_deref(), Some("ok"));
}

/// The env var that shortens the harness's first pause after a turn the model could not be
/// reached for (5 s otherwise; doubled per such turn in a row, at most 60 s).
const UNREACHABLE_PAUSE: (&str, &str) = ("HIVE_UNREACHABLE_PAUSE_MS", "100");

/// Message `id`'s state, its redelivered flag and the turn that holds or delivered it.
fn receipt(hive: &TestHive, id: i64) -> (String, bool, Option<i64>) {
    rusqlite::Connection::open_with_flags(
        hive.hive.state_dir().db(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap()
    .query_row(
        "SELECT state, redelivered, lease_turn FROM messages WHERE id = ?1",
        [id],
        |r| Ok((r.get(0)?, r.get::<_, i64>(1)? == 1, r.get(2)?)),
    )
    .unwrap()
}

/// The names of the `model_*` helper events the manager was told, oldest first.
fn model_events(hive: &TestHive) -> Vec<String> {
    let db = rusqlite::Connection::open_with_flags(
        hive.hive.state_dir().db(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    db.prepare(
        "SELECT body FROM messages WHERE recipient = 'manager' AND sender = 'system' ORDER BY id",
    )
    .unwrap()
    .query_map([], |r| r.get::<_, String>(0))
    .unwrap()
    .map(|b| serde_json::from_str::<Value>(&b.unwrap()).unwrap())
    .filter_map(|v| v["event"].as_str().map(str::to_owned))
    .filter(|e| e.starts_with("model_"))
    .collect()
}

/// Waits for the first delivery of message `id`; returns how many deliveries of it the bus
/// carried by then and after, once the harness is idle again.
async fn deliveries(
    hive: &TestHive,
    bus: &mut tokio::sync::broadcast::Receiver<Event>,
    id: i64,
) -> usize {
    delivered(hive, bus, id).await;
    until("the harness is idle again", || {
        hive.hive.agent_run(&name("alice")).unwrap().turn_state == Some(TurnState::Idle)
    })
    .await;
    let mut more = 0;
    while let Ok(event) = bus.try_recv() {
        if let Event::MessageDelivered { ids, .. } = event
            && ids.contains(&id)
        {
            more += 1;
        }
    }
    1 + more
}

/// Each of `failed` (turns given back) carries the harness's `model_unreachable` note, saying
/// why and when the turn is taken again; returns the notes' texts.
fn unreachable_notes(failed: &[TurnRow]) -> Vec<String> {
    failed
        .iter()
        .map(|t| {
            let k = kinds(&t.events);
            assert!(!k.contains(&"harness/error".to_owned()), "{k:?}");
            t.events
                .iter()
                .find(|e| e["type"] == "harness" && e["subtype"] == "model_unreachable")
                .and_then(|e| e["message"].as_str())
                .unwrap_or_else(|| panic!("no model_unreachable note: {k:?}"))
                .to_owned()
        })
        .collect()
}

/// The seconds of the gateway's `tries again in N s` in `note`.
fn breaker_seconds(note: &str) -> u64 {
    let at = note
        .find(proto::BREAKER_RETRY_IN)
        .unwrap_or_else(|| panic!("no retry time in {note}"));
    note[at + proto::BREAKER_RETRY_IN.len()..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no seconds in {note}"))
}

/// The model upstream cannot be reached for the first turns of a message, under `driver` (the
/// harness's options): the provider drops the connection (the gateway answers 502), then
/// answers 500, which opens the gateway's breaker (2 failures), whose 503 answers the next turn
/// without reaching the provider. Each of those turns is given back — not finished: the message
/// is never marked delivered by a turn the model did not answer — and the harness waits before
/// the next (the breaker's own time for the 503); the turn after the cool-down reaches the
/// model, which answers the message once, flagged redelivered. Returns the hive, the harness and
/// the provider's requests for what each driver checks besides.
async fn unreachable_then_answered(driver: Value) -> (TestHive, Harness, Vec<RecordedRequest>) {
    let server = ModelServer::start(vec![
        Reply::Disconnect,
        Reply::api_error(500, "api_error", "Internal server error"),
        Reply::tool_use(
            "mcp__hive__send",
            json!({"to": "bob", "body": "answered once"}),
        ),
        Reply::text("ok"),
    ])
    .await;
    let mut config = common::model_config(&server.base_url());
    config.model.breaker_failures = 2;
    config.model.breaker_cooldown_secs = 3;
    let hive = TestHive::open_with(&["alice", "bob"], config).await;
    let mut bus = hive.hive.subscribe();
    let harness = Harness::start_with_env(&hive, &server, driver, 600, &[UNREACHABLE_PAUSE]);
    let id = send(&hive, "bob", "alice", "are you there?").await;
    assert_eq!(deliveries(&hive, &mut bus, id).await, 1);
    let turns = turns_of(&hive, id);
    let outcomes: Vec<_> = turns.iter().map(|t| t.outcome.as_deref()).collect();
    assert_eq!(
        outcomes,
        [
            Some("abandoned"),
            Some("abandoned"),
            Some("abandoned"),
            Some("ok")
        ],
        "{turns:?}\n{}",
        harness.log()
    );
    // Delivered by the turn that answered it, flagged.
    assert_eq!(
        receipt(&hive, id),
        ("delivered".to_owned(), true, Some(turns[3].id))
    );
    let notes = unreachable_notes(&turns[..3]);
    assert!(
        notes[0].contains("502") && notes[0].contains("gateway cannot reach"),
        "{notes:?}"
    );
    assert!(
        notes[1].contains("500") && notes[1].contains("Internal server error"),
        "{notes:?}"
    );
    assert!(
        notes[2].contains("503") && notes[2].contains("stopped calling"),
        "{notes:?}"
    );
    // The first pauses are the harness's own, doubling; the third is the breaker's.
    assert!(notes[0].ends_with("taken again in 0.1 s"), "{notes:?}");
    assert!(notes[1].ends_with("taken again in 0.2 s"), "{notes:?}");
    let breaker = breaker_seconds(&notes[2]);
    assert!((1..=3).contains(&breaker), "{notes:?}");
    assert!(
        notes[2].ends_with(&format!("taken again in {breaker}.0 s")),
        "{notes:?}"
    );
    // The 503 never reached the provider: two failed calls, then the answering turn's two.
    let requests = server.model_requests();
    assert_eq!(requests.len(), 4, "{}", harness.log());
    let prompt = requests[2].last_user_text().unwrap();
    assert!(prompt.contains("(redelivered)"), "{prompt}");
    // Bob got the answer once.
    let reply = receive(&hive, Inbox::Agent(name("bob"))).await;
    assert_eq!(reply.body, "answered once");
    nothing_more_for(&hive, "bob").await;
    // The manager heard the breaker open and close.
    until("the manager is told the upstream answers again", || {
        model_events(&hive).len() >= 2
    })
    .await;
    assert_eq!(
        model_events(&hive),
        ["model_unreachable", "model_reachable"]
    );
    (hive, harness, requests)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_the_model_cannot_be_reached_for_is_given_back_and_a_later_turn_answers_it() {
    if tools::require("claude", tools::claude_bin()).is_none() {
        return;
    }
    let (_hive, harness, requests) = unreachable_then_answered(json!({})).await;
    assert!(
        !requests[0]
            .last_user_text()
            .unwrap()
            .contains("redelivered")
    );
    // One claude process throughout: a failed call is not a dead model.
    assert_eq!(harness.claude_starts().len(), 1, "{}", harness.log());
}

/// The same under the openai driver, which sees the HTTP status itself (and the breaker's
/// `retry-after`); the failed calls leave nothing in its conversation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_driver_gives_back_a_turn_the_model_cannot_be_reached_for() {
    let (_hive, harness, _) = unreachable_then_answered(json!({"driver": "openai"})).await;
    let kept: Vec<Value> = serde_json::from_slice(
        &std::fs::read(harness.state.join("openai-conversation.json")).unwrap(),
    )
    .unwrap();
    let users: Vec<&Value> = kept.iter().filter(|m| m["role"] == "user").collect();
    assert_eq!(users.len(), 1, "{kept:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_turn_mode_runs_one_claude_per_turn_resuming_the_session() {
    if tools::require("claude", tools::claude_bin()).is_none() {
        return;
    }
    let server = ModelServer::start(vec![
        Reply::tool_use("mcp__hive__send", json!({"to": "bob", "body": "one"})),
        Reply::text("answered"),
        Reply::tool_use("mcp__hive__send", json!({"to": "bob", "body": "two"})),
        Reply::text("answered again"),
    ])
    .await;
    let hive = TestHive::open_with_model(&["alice", "bob"], &server.base_url()).await;
    let mut bus = hive.hive.subscribe();
    let harness = Harness::start_with_env(
        &hive,
        &server,
        json!({}),
        600,
        &[("HIVE_CLAUDE_MODE", "per-turn")],
    );
    let first = send(&hive, "bob", "alice", "first").await;
    assert_eq!(receive(&hive, Inbox::Agent(name("bob"))).await.body, "one");
    delivered(&hive, &mut bus, first).await;
    assert_eq!(turns_of(&hive, first)[0].outcome.as_deref(), Some("ok"));
    // No idle wait: the process ends with its turn.
    until("claude ended with its turn", || {
        harness.claude_pid().is_none()
    })
    .await;
    let second = send(&hive, "bob", "alice", "second").await;
    assert_eq!(receive(&hive, Inbox::Agent(name("bob"))).await.body, "two");
    delivered(&hive, &mut bus, second).await;
    assert_eq!(turns_of(&hive, second)[0].outcome.as_deref(), Some("ok"));
    let starts = harness.claude_starts();
    assert_eq!(starts.len(), 2, "{}", harness.log());
    let session = session_of(&server, 0);
    assert!(
        starts[1].contains(&format!("resuming session {session}")),
        "{starts:?}"
    );
    assert_eq!(session_of(&server, 2), session);
    assert!(!harness.log().contains("claude idle"), "{}", harness.log());
    let history = server.model_requests()[2].body["messages"].to_string();
    assert!(history.contains("first"), "{history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_driver_runs_the_tool_loop_through_the_gateway_bounded_and_remembers() {
    let server = ModelServer::start(vec![
        Reply::tool_use(
            "mcp__hive__send",
            json!({"to": "bob", "body": "hello from openai"}),
        ),
        Reply::text("answered"),
        // The second turn never stops calling tools: cut after 2 model calls.
        Reply::tool_use("mcp__hive__whoami", json!({})),
        Reply::tool_use("mcp__hive__whoami", json!({})),
        Reply::text("remembered"),
    ])
    .await;
    let hive = TestHive::open_with_model(&["alice", "bob"], &server.base_url()).await;
    let mut bus = hive.hive.subscribe();
    let harness = Harness::start_with_env(
        &hive,
        &server,
        json!({"driver": "openai", "model": "gpt-test", "prompt": "You are alice."}),
        600,
        &[("HIVE_OPENAI_MAX_ROUNDS", "2")],
    );

    let first = send(&hive, "bob", "alice", "please say hello").await;
    let reply = receive(&hive, Inbox::Agent(name("bob"))).await;
    assert_eq!(
        (reply.from.as_str(), reply.body.as_str()),
        ("alice", "hello from openai")
    );
    delivered(&hive, &mut bus, first).await;
    let turns = turns_of(&hive, first);
    assert_eq!(turns[0].outcome.as_deref(), Some("ok"), "{turns:?}");
    let usage = turns[0].usage.clone().expect("usage");
    assert_eq!(usage["tool_calls"], 1, "{usage}");
    assert!(usage["input_tokens"].as_u64().unwrap() > 0, "{usage}");
    let k = kinds(&turns[0].events);
    assert_eq!(
        k,
        [
            "system/init",
            "assistant",
            "user",
            "assistant",
            "result/success"
        ],
        "{:?}",
        turns[0].events
    );
    let requests = server.model_requests();
    assert!(
        requests.iter().all(|r| r.is_chat_completions()),
        "{requests:?}"
    );
    assert_eq!(requests[0].model(), Some("gpt-test"));
    let tools = requests[0].tool_names();
    assert!(tools.contains(&"mcp__hive__send".to_owned()), "{tools:?}");
    let sent = requests[0].body["messages"].to_string();
    assert!(
        sent.contains("You are alice.") && sent.contains("please say hello"),
        "{sent}"
    );
    // The tool's result went back to the model.
    assert!(
        requests[1].body["messages"]
            .to_string()
            .contains("\"role\":\"tool\""),
        "{}",
        requests[1].body
    );

    // A turn whose model keeps calling tools is cut at the bound (`tool_loop_cut`), saying so.
    let second = send(&hive, "bob", "alice", "loop forever").await;
    delivered(&hive, &mut bus, second).await;
    let turns = turns_of(&hive, second);
    assert_eq!(
        turns[0].outcome.as_deref(),
        Some("tool_loop_cut"),
        "{turns:?}"
    );
    let error = turns[0]
        .events
        .iter()
        .find(|e| e["type"] == "harness" && e["subtype"] == "error")
        .unwrap_or_else(|| panic!("{:?}", turns[0].events));
    assert!(
        error["message"].as_str().unwrap().contains("cut after 2"),
        "{error}"
    );
    assert_eq!(server.model_requests().len(), 4);

    // The conversation is kept in the state dir and sent again with the next message.
    let third = send(&hive, "bob", "alice", "do you remember?").await;
    delivered(&hive, &mut bus, third).await;
    assert_eq!(turns_of(&hive, third)[0].outcome.as_deref(), Some("ok"));
    let last = server.model_requests().last().unwrap().body["messages"].to_string();
    assert!(
        last.contains("please say hello") && last.contains("loop forever"),
        "{last}"
    );
    let kept: Vec<Value> = serde_json::from_slice(
        &std::fs::read(harness.state.join("openai-conversation.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(kept.last().unwrap()["content"], "remembered", "{kept:?}");
    assert!(
        !harness.log().contains("claude started"),
        "{}",
        harness.log()
    );
}

/// The model keeps `notes.md` with claude's own file tools — write, edit, read — and may write
/// no other file of the state dir (the harness's own `model` and `claude-session` among them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_keeps_its_notes_with_its_file_tools_and_writes_nothing_else() {
    if tools::require("claude", tools::claude_bin()).is_none() {
        return;
    }
    let server = ModelServer::start(vec![]).await;
    let hive = TestHive::open_with_model(&["alice", "bob"], &server.base_url()).await;
    let mut bus = hive.hive.subscribe();
    let harness = Harness::start(&hive, &server, json!({}), 600);
    let notes = harness.state.join("notes.md").display().to_string();
    let other = harness.state.join("model").display().to_string();
    server.push([
        Reply::tool_use(
            "Write",
            json!({"file_path": notes, "content": "bob likes tea"}),
        ),
        Reply::tool_use(
            "Edit",
            json!({"file_path": notes, "old_string": "tea", "new_string": "green tea"}),
        ),
        Reply::tool_use("Read", json!({"file_path": notes})),
        Reply::tool_use("Write", json!({"file_path": other, "content": "opus"})),
        Reply::text("noted"),
    ]);
    let id = send(&hive, "bob", "alice", "bob likes tea; remember it").await;
    delivered(&hive, &mut bus, id).await;
    let results = server.model_requests()[4].tool_results();
    assert_eq!(results.len(), 4, "{results:?}");
    for r in &results[..3] {
        assert!(!r.is_error, "{results:?}");
    }
    assert!(
        results[2].text.contains("bob likes green tea"),
        "{results:?}"
    );
    assert!(
        results[3].is_error && results[3].text.contains("permission"),
        "{results:?}"
    );
    assert_eq!(
        std::fs::read_to_string(harness.state.join("notes.md")).unwrap(),
        "bob likes green tea"
    );
    assert!(!harness.state.join("model").exists());
}

/// Near the context limit (here a bound of 1 % so that any turn reaches it) the harness asks the
/// model for a notes checkpoint, then compacts the session — both turn events, in that order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_the_context_limit_a_notes_checkpoint_comes_before_the_compaction() {
    if tools::require("claude", tools::claude_bin()).is_none() {
        return;
    }
    let server = ModelServer::start(vec![]).await;
    let hive = TestHive::open_with_model(&["alice", "bob"], &server.base_url()).await;
    let mut bus = hive.hive.subscribe();
    let harness = Harness::start_with_env(
        &hive,
        &server,
        json!({}),
        600,
        &[("HIVE_NOTES_CHECKPOINT_PERCENT", "1")],
    );
    let notes = harness.state.join("notes.md");
    server.push([
        Reply::tool_use("mcp__hive__send", json!({"to": "bob", "body": "on it"})),
        Reply::text("answered"),
        Reply::tool_use(
            "Write",
            json!({"file_path": notes.display().to_string(), "content": "- bob wants the report"}),
        ),
        Reply::text("notes updated"),
        Reply::text("<summary>bob asked for the report</summary>"),
    ]);
    let id = send(&hive, "bob", "alice", "write me the report").await;
    let reply = receive(&hive, Inbox::Agent(name("bob"))).await;
    assert_eq!(reply.body, "on it");
    delivered(&hive, &mut bus, id).await;
    let turns = turns_of(&hive, id);
    assert_eq!(turns[0].outcome.as_deref(), Some("ok"), "{turns:?}");
    checkpoint_then_compaction(&turns[0].events, &harness);
    let checkpoint = server.model_requests()[2].last_user_text().unwrap();
    assert!(
        checkpoint.contains("% full") && checkpoint.contains(&notes.display().to_string()),
        "{checkpoint}"
    );
    assert_eq!(
        std::fs::read_to_string(&notes).unwrap(),
        "- bob wants the report"
    );
    // The same process and session carry on, compacted.
    assert_eq!(harness.claude_starts().len(), 1, "{}", harness.log());
    assert_eq!(session_of(&server, 4), session_of(&server, 0));
}

/// `notes.md` grown past its bound is rewritten by a separate one-shot session (no tools, not
/// the agent's conversation) and replaced in place; the warm process is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notes_past_their_bound_are_rewritten_in_a_separate_session() {
    if tools::require("claude", tools::claude_bin()).is_none() {
        return;
    }
    let server = ModelServer::start(vec![
        Reply::text("nothing to do"),
        Reply::text("- facts 0 to 299, merged"),
    ])
    .await;
    let hive = TestHive::open_with_model(&["alice", "bob"], &server.base_url()).await;
    let mut bus = hive.hive.subscribe();
    let harness = Harness::start_with_env(
        &hive,
        &server,
        json!({}),
        600,
        &[("HIVE_NOTES_MAX_BYTES", "2048")],
    );
    let notes = harness.state.join("notes.md");
    let long: String = (0..300).map(|i| format!("- fact {i}\n")).collect();
    std::fs::write(&notes, &long).unwrap();
    let id = send(&hive, "bob", "alice", "anything new?").await;
    delivered(&hive, &mut bus, id).await;
    assert_eq!(
        std::fs::read_to_string(&notes).unwrap(),
        "- facts 0 to 299, merged\n"
    );
    let turns = turns_of(&hive, id);
    assert_eq!(turns[0].outcome.as_deref(), Some("ok"), "{turns:?}");
    let k = kinds(&turns[0].events);
    assert!(k.contains(&"harness/notes_rewrite".to_owned()), "{k:?}");
    assert!(k.contains(&"harness/notes_rewritten".to_owned()), "{k:?}");
    let rewrite = &server.model_requests()[1];
    assert!(
        rewrite.tool_names().is_empty(),
        "{:?}",
        rewrite.tool_names()
    );
    assert!(
        rewrite.body["system"]
            .to_string()
            .contains("You rewrite an agent's notes file"),
        "{}",
        rewrite.body["system"]
    );
    let text = rewrite.last_user_text().unwrap();
    assert!(
        text.contains("- fact 0") && text.contains("- fact 299"),
        "{text}"
    );
    assert_ne!(session_of(&server, 1), session_of(&server, 0));
    assert_eq!(harness.claude_starts().len(), 1, "{}", harness.log());
}

/// The fallback model route: with `HIVE_MODEL_ROUTE=relay` claude reaches the model through the
/// harness's loopback relay to gateway.sock instead of `ANTHROPIC_UNIX_SOCKET` (should a claude
/// release stop honouring the variable, the nspawn turn tests fail and this route still works).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_route_reaches_the_model_without_the_unix_socket_variable() {
    if tools::require("claude", tools::claude_bin()).is_none() {
        return;
    }
    let server = ModelServer::start(vec![
        Reply::tool_use(
            "mcp__hive__send",
            json!({"to": "bob", "body": "via the relay"}),
        ),
        Reply::text("answered"),
    ])
    .await;
    let hive = TestHive::open_with_model(&["alice", "bob"], &server.base_url()).await;
    let harness = Harness::start_with_env(
        &hive,
        &server,
        json!({}),
        600,
        &[("HIVE_MODEL_ROUTE", "relay")],
    );
    send(&hive, "bob", "alice", "answer through the relay").await;
    let reply = receive(&hive, Inbox::Agent(name("bob"))).await;
    assert_eq!(reply.body, "via the relay");
    let pid = harness.claude_pid().expect("claude runs");
    let env = environ(pid);
    assert!(
        !env.iter().any(|v| v.starts_with("ANTHROPIC_UNIX_SOCKET=")),
        "{env:?}"
    );
    let base = env
        .iter()
        .find_map(|v| v.strip_prefix("ANTHROPIC_BASE_URL="))
        .unwrap_or_else(|| panic!("{env:?}"));
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    assert!(
        env.iter().any(|v| v == "NO_PROXY=model-gateway,127.0.0.1"),
        "{env:?}"
    );
    until("the turn's second model call", || {
        server.model_requests().len() >= 2
    })
    .await;
}

/// The openai driver's model keeps `notes.md` through the harness's own `notes_write` /
/// `notes_read` functions (its system prompt names the file), and `/compact` replaces the
/// conversation with its summary, written by a one-shot call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_driver_keeps_notes_and_compacts_to_a_summary() {
    let server = ModelServer::start(vec![
        Reply::tool_use("notes_write", json!({"text": "- bob likes green tea"})),
        Reply::tool_use("notes_read", json!({})),
        Reply::text("noted"),
        Reply::text("bob told alice he likes green tea; nothing is open"),
        Reply::text("after the summary"),
    ])
    .await;
    let hive = TestHive::open_with_model(&["alice", "bob"], &server.base_url()).await;
    let mut bus = hive.hive.subscribe();
    let harness = Harness::start(&hive, &server, json!({"driver": "openai"}), 600);
    let first = send(&hive, "bob", "alice", "I like green tea").await;
    delivered(&hive, &mut bus, first).await;
    assert_eq!(
        std::fs::read_to_string(harness.state.join("notes.md")).unwrap(),
        "- bob likes green tea\n"
    );
    let requests = server.model_requests();
    let tools = requests[0].tool_names();
    assert!(
        tools.contains(&"notes_write".to_owned()) && tools.contains(&"notes_read".to_owned()),
        "{tools:?}"
    );
    assert!(
        requests[0].body["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("notes.md"),
        "{}",
        requests[0].body
    );
    let results = requests[2].tool_results();
    assert!(
        results.iter().any(|r| r.text == "- bob likes green tea\n"),
        "{results:?}"
    );

    let compact = send(&hive, "operator", "alice", "/compact").await;
    delivered(&hive, &mut bus, compact).await;
    let summary_call = &server.model_requests()[3];
    assert!(summary_call.tool_names().is_empty());
    assert!(
        summary_call.body["messages"]
            .to_string()
            .contains("I like green tea"),
        "{}",
        summary_call.body
    );
    let next = send(&hive, "bob", "alice", "what do I like?").await;
    delivered(&hive, &mut bus, next).await;
    let after = server.model_requests()[4].body["messages"].to_string();
    assert!(after.contains("nothing is open"), "{after}");
    assert!(!after.contains("I like green tea"), "{after}");
}

/// Under the openai driver with its context window given (here tiny, so that any turn fills it),
/// the notes checkpoint comes too: the model writes its notes, then the conversation is compacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_driver_checkpoints_its_notes_near_the_context_window() {
    let server = ModelServer::start(vec![
        Reply::text("done"),
        Reply::tool_use("notes_write", json!({"text": "- the report is due friday"})),
        Reply::text("notes updated"),
        Reply::text("the report is due friday"),
    ])
    .await;
    let hive = TestHive::open_with_model(&["alice", "bob"], &server.base_url()).await;
    let mut bus = hive.hive.subscribe();
    let harness = Harness::start_with_env(
        &hive,
        &server,
        json!({"driver": "openai"}),
        600,
        &[("HIVE_CONTEXT_WINDOW", "100")],
    );
    let id = send(&hive, "bob", "alice", "the report is due friday").await;
    delivered(&hive, &mut bus, id).await;
    let turns = turns_of(&hive, id);
    checkpoint_then_compaction(&turns[0].events, &harness);
    assert_eq!(
        std::fs::read_to_string(harness.state.join("notes.md")).unwrap(),
        "- the report is due friday\n"
    );
    assert_eq!(server.remaining(), 0);
}
