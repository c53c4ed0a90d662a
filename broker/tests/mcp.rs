//! The MCP surfaces over real unix sockets with a real rmcp client: the tool set each socket lists,
//! what each tool does, and what bad callers get.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::Hive;
use broker::config::Config;
use broker::registry::AgentKind;
use common::*;
use serde_json::json;

async fn tools(client: &Client) -> Vec<String> {
    let mut names: Vec<String> = client
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    names.sort();
    names
}

/// (messages, questions, reminders, turns) counts and message states.
async fn snapshot(hive: &Hive) -> String {
    open_db(hive)
        .query_row(
            "SELECT (SELECT count(*) FROM messages) || '/' || (SELECT count(*) FROM questions)
             || '/' || (SELECT count(*) FROM reminders) || '/' || (SELECT count(*) FROM turns)
             || '/' || (SELECT coalesce(group_concat(id || state, ','), '') FROM messages)",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_socket_lists_its_role_and_nothing_more() {
    let f = fixture(&["alice"]).await;
    let agent = connect(&f, "alice", "mcp.sock").await;
    let manager = connect(&f, "manager", "mcp.sock").await;
    let harness = connect(&f, "alice", "harness.sock").await;
    let agent_tools = ["ask_operator", "recv", "remind", "send", "whoami"];
    assert_eq!(tools(&agent).await, agent_tools);
    let mut manager_tools = agent_tools.to_vec();
    manager_tools.extend([
        "agents",
        "approvals",
        "kill",
        "logs",
        "pause",
        "request_apply_commit",
        "request_spawn",
        "restart",
        "resume",
        "start",
        "update",
    ]);
    manager_tools.sort();
    assert_eq!(tools(&manager).await, manager_tools);
    assert_eq!(
        tools(&harness).await,
        [
            "command_reply",
            "finish_turn",
            "next_cancel",
            "next_turn",
            "release_turn",
            "report_state",
            "turn_events",
            "wait_login"
        ]
    );
    for list in [
        tools(&agent).await,
        tools(&manager).await,
        tools(&harness).await,
    ] {
        assert!(!list.iter().any(|t| t.contains("approve")), "{list:?}");
    }
    // Every tool explains itself.
    for tool in agent.list_all_tools().await.unwrap() {
        assert!(
            tool.description.as_deref().is_some_and(|d| d.len() > 40),
            "{}",
            tool.name
        );
    }

    // A manager tool called on a sub-agent socket fails.
    assert!(call(&agent, "agents", json!({})).await.is_err());
    let listed = ok(&manager, "agents", json!({})).await;
    assert_eq!(listed.as_array().unwrap().len(), 2);

    let me = ok(&agent, "whoami", json!({})).await;
    assert_eq!(me["name"], "alice");
    assert_eq!(me["role"], "agent");
    assert_eq!(me["may_write_to"], json!(["manager", "operator"]));

    // Socket modes: dir 0700, sockets 0660.
    use std::os::unix::fs::PermissionsExt;
    let dir = f.dir.path().join("run/agents/alice");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("mcp.sock")), 0o660);
    assert_eq!(mode(&dir.join("harness.sock")), 0o660);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_on_one_socket_wakes_recv_on_another() {
    let f = fixture(&["alice", "bob"]).await;
    let alice = connect(&f, "alice", "mcp.sock").await;
    let bob = connect(&f, "bob", "mcp.sock").await;
    let waiter = tokio::spawn(async move {
        let got = ok(&bob, "recv", json!({"wait_seconds": 60})).await;
        (got, Instant::now(), bob)
    });
    until("bob's recv waits", || {
        f.hive.waiting_receivers(&inbox("bob")) == 1
    })
    .await;
    let sent_at = Instant::now();
    let sent = ok(&alice, "send", json!({"to": "bob", "body": "hello bob"})).await;
    let (got, woke, _bob) = waiter.await.unwrap();
    assert!(
        woke - sent_at < Duration::from_millis(200),
        "{:?}",
        woke - sent_at
    );
    assert_eq!(got[0]["id"], sent["sent"][0]);
    assert_eq!(got[0]["from"], "alice");
    assert_eq!(got[0]["body"], "hello bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_calls_get_clear_errors_and_change_nothing() {
    let mut config = Config::default();
    config.mailbox.max_body_bytes = 1024;
    let f = open(tempfile::tempdir().unwrap(), config).await;
    for a in ["alice", "bob", "carol"] {
        f.hive.add_agent(name(a), AgentKind::Agent).await.unwrap();
    }
    f.hive
        .set_allowed_recipients(&name("alice"), vec![name("carol")])
        .await
        .unwrap();
    let alice = connect(&f, "alice", "mcp.sock").await;
    let before = snapshot(&f.hive).await;

    // Unknown tools, wrong types, missing arguments, unknown fields: a protocol error or an error
    // result, with a reason either way.
    for (tool, args) in [
        ("nope", json!({})),
        ("send", json!({"to": "bob", "body": 5})),
        ("send", json!({"to": "bob"})),
        ("send", json!({"to": "bob", "body": "x", "as": "manager"})),
        ("recv", json!({"wait_seconds": "soon"})),
        ("remind", json!({"in_seconds": -5, "body": "x"})),
        ("next_turn", json!({})),
    ] {
        let reason = match call(&alice, tool, args.clone()).await {
            Err(e) => e.to_string(),
            Ok((true, text)) => text,
            Ok((false, text)) => panic!("{tool} {args} succeeded: {text}"),
        };
        assert!(reason.len() > 10, "{tool} {args}: {reason}");
    }
    // Tool errors the model reads.
    let cases = [
        (
            "send",
            json!({"to": "dave", "body": "x"}),
            "unknown agent 'dave'; you may write to: carol, manager, operator",
        ),
        (
            "send",
            json!({"to": "bob", "body": "x"}),
            "'bob' is not in your allowed recipients; you may write to: carol, manager, operator",
        ),
        ("send", json!({"to": "alice", "body": "x"}), "use `remind`"),
        (
            "send",
            json!({"to": "../x", "body": "x"}),
            "invalid agent name",
        ),
        (
            "send",
            json!({"to": "carol", "body": "x".repeat(1025)}),
            "1025 bytes; the limit is 1024",
        ),
        ("send", json!({"to": "carol", "body": ""}), "needs a body"),
        (
            "recv",
            json!({"wait_seconds": 1_000_000_000u64}),
            "wait at most 180 seconds",
        ),
        ("recv", json!({"max": 0}), "take 1 to 32"),
        ("recv", json!({"max": 1000}), "take 1 to 32"),
        ("ask_operator", json!({"question": ""}), "question is empty"),
        (
            "ask_operator",
            json!({"question": "?", "options": ["a", "a"]}),
            "offered twice",
        ),
        (
            "ask_operator",
            json!({"question": "?", "ttl_seconds": 0}),
            "out of range",
        ),
        (
            "remind",
            json!({"in_seconds": 0, "body": "x"}),
            "out of range",
        ),
        (
            "remind",
            json!({"in_seconds": 99_999_999u64, "body": "x"}),
            "out of range",
        ),
    ];
    for (tool, args, expect) in cases {
        let text = tool_error(&alice, tool, args).await;
        assert!(text.contains(expect), "{tool}: {text}");
    }
    assert_eq!(snapshot(&f.hive).await, before);
    // The allow-list still lets alice write to carol and the manager.
    ok(&alice, "send", json!({"to": "carol", "body": "allowed"})).await;
    ok(&alice, "send", json!({"to": "manager", "body": "allowed"})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_during_recv_takes_nothing() {
    let f = fixture(&["alice", "bob"]).await;
    let bob = connect(&f, "bob", "mcp.sock").await;
    let waiting = tokio::spawn(async move {
        let _ = call(&bob, "recv", json!({"wait_seconds": 60})).await;
    });
    let bob_waits = || f.hive.waiting_receivers(&inbox("bob"));
    until("bob's recv waits", || bob_waits() == 1).await;
    waiting.abort(); // drops the client: the socket closes mid-recv
    let _ = waiting.await;
    until("the broker saw bob's recv go", || bob_waits() == 0).await;
    let alice = connect(&f, "alice", "mcp.sock").await;
    let sent = ok(
        &alice,
        "send",
        json!({"to": "bob", "body": "are you there?"}),
    )
    .await;
    let bob = connect(&f, "bob", "mcp.sock").await;
    let got = ok(&bob, "recv", json!({})).await;
    assert_eq!(
        got.as_array().unwrap().len(),
        1,
        "the message was taken by a gone waiter"
    );
    assert_eq!(got[0]["id"], sent["sent"][0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_harness_that_drops_mid_turn_gets_the_message_again_flagged() {
    let f = fixture(&["alice", "bob"]).await;
    let alice = connect(&f, "alice", "mcp.sock").await;
    ok(&alice, "send", json!({"to": "bob", "body": "work"})).await;
    let harness = connect(&f, "bob", "harness.sock").await;
    let turn = ok(&harness, "next_turn", json!({"wait_seconds": 5})).await;
    assert_eq!(turn["message"]["body"], "work");
    assert_eq!(turn["message"]["redelivered"], false);
    let t = turn["turn"].as_i64().unwrap();
    let recorded = ok(
        &harness,
        "turn_events",
        json!({"turn": t, "events": [{"type": "assistant", "text": "thinking"}]}),
    )
    .await;
    assert_eq!(recorded["recorded"], 1);
    drop(harness);

    let harness = connect(&f, "bob", "harness.sock").await;
    let again = ok(&harness, "next_turn", json!({"wait_seconds": 5})).await;
    assert_eq!(again["message"]["body"], "work");
    assert_eq!(again["message"]["redelivered"], true);
    let t2 = again["turn"].as_i64().unwrap();
    let err = tool_error(&harness, "finish_turn", json!({"turn": t, "outcome": "ok"})).await;
    assert!(err.contains("not found"), "{err}");
    ok(
        &harness,
        "finish_turn",
        json!({"turn": t2, "outcome": "ok", "usage": {"input_tokens": 3}}),
    )
    .await;
    // Another agent's harness cannot touch bob's turn.
    let alice_harness = connect(&f, "alice", "harness.sock").await;
    let err = tool_error(
        &alice_harness,
        "turn_events",
        json!({"turn": t2, "events": []}),
    )
    .await;
    assert!(err.contains("not found"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_operator_gets_the_answer_as_a_reply_from_operator() {
    let f = fixture(&["alice"]).await;
    let alice = connect(&f, "alice", "mcp.sock").await;
    let asked = ok(
        &alice,
        "ask_operator",
        json!({"question": "Deploy now?", "options": ["yes", "no"]}),
    )
    .await;
    let id = asked["question"].as_i64().unwrap();
    let open = f.hive.questions(false).await.unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].options, ["yes", "no"]);
    let in_inbox = f.hive.operator_inbox(10).await.unwrap();
    assert!(
        in_inbox[0].body.contains("Deploy now?"),
        "{}",
        in_inbox[0].body
    );

    use broker::questions::Answer;
    let before = snapshot(&f.hive).await;
    for bad in [
        Answer::Text("maybe".into()),
        Answer::Choices(vec!["yes".into(), "no".into()]),
        Answer::Choices(vec![]),
    ] {
        let e = f.hive.answer_question(id, bad).await.unwrap_err();
        assert_eq!(e.code(), "invalid_argument", "{e}");
    }
    assert_eq!(
        f.hive
            .answer_question(999, Answer::Text("x".into()))
            .await
            .unwrap_err()
            .code(),
        "not_found"
    );
    assert_eq!(snapshot(&f.hive).await, before);

    f.hive
        .answer_question(id, Answer::Text("yes".into()))
        .await
        .unwrap();
    let again = f
        .hive
        .answer_question(id, Answer::Text("no".into()))
        .await
        .unwrap_err();
    assert_eq!(again.code(), "conflict");
    let got = ok(&alice, "recv", json!({"wait_seconds": 5})).await;
    assert_eq!(got[0]["from"], "operator");
    assert_eq!(got[0]["in_reply_to"], in_inbox[0].id);
    assert!(
        got[0]["body"].as_str().unwrap().contains(": yes"),
        "{}",
        got[0]["body"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_question_expires_into_the_askers_inbox() {
    let f = fixture(&["alice"]).await;
    let alice = connect(&f, "alice", "mcp.sock").await;
    ok(
        &alice,
        "ask_operator",
        json!({"question": "Anyone?", "ttl_seconds": 1}),
    )
    .await;
    let started = Instant::now();
    let got = ok(&alice, "recv", json!({"wait_seconds": 10})).await;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(got[0]["from"], "system");
    assert!(
        got[0]["body"]
            .as_str()
            .unwrap()
            .contains("expired, no answer"),
        "{}",
        got[0]["body"]
    );
    assert_eq!(f.hive.questions(true).await.unwrap()[0].status, "expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reminder_survives_a_restart_and_arrives_from_system() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let f = open(dir, Config::default()).await;
    f.hive
        .add_agent(name("alice"), AgentKind::Agent)
        .await
        .unwrap();
    let alice = connect(&f, "alice", "mcp.sock").await;
    ok(
        &alice,
        "remind",
        json!({"in_seconds": 2, "body": "check the build"}),
    )
    .await;
    drop(alice);
    // Stop the hive before the reminder is due, then start it again.
    f.shutdown.cancel();
    f.hive.close();
    let old = Arc::downgrade(&f.hive);
    let Fixture { dir, hive, .. } = f;
    drop(hive);
    assert_eq!(dir.path(), path);
    // Every task of the old hive (listeners, due jobs) has ended.
    until("the old hive is gone", || old.strong_count() == 0).await;
    let f = open(dir, Config::default()).await;
    let alice = connect(&f, "alice", "mcp.sock").await;
    let got = ok(&alice, "recv", json!({"wait_seconds": 10})).await;
    assert_eq!(got[0]["from"], "system");
    assert_eq!(got[0]["body"], "check the build");
}

/// The manager pauses and resumes an agent (audited as the manager's); it cannot pause itself,
/// an unknown agent or a bad name is an error that changes nothing, and what the operator paused
/// only the operator resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manager_pauses_and_resumes_an_agent_but_not_the_operators_pause() {
    use broker::containers::Actor;
    let f = fixture(&["alice", "bob"]).await;
    let manager = connect(&f, "manager", "mcp.sock").await;
    let paused_rows = || {
        let db = rusqlite::Connection::open(f.dir.path().join("hive.db")).unwrap();
        db.query_row(
            "SELECT (SELECT count(*) FROM paused) || '/' || (SELECT count(*) FROM audit)",
            [],
            |r| r.get::<_, String>(0),
        )
        .unwrap()
    };
    let before = paused_rows();
    for (args, expect) in [
        (json!({"agent": "manager"}), "you cannot pause yourself"),
        (json!({"agent": "dave"}), "dave"),
        (json!({"agent": "../x"}), "invalid agent name"),
    ] {
        let text = tool_error(&manager, "pause", args.clone()).await;
        assert!(text.contains(expect), "{args}: {text}");
    }
    assert_eq!(paused_rows(), before, "refused pauses changed nothing");

    let paused = ok(&manager, "pause", json!({"agent": "alice"})).await;
    assert_eq!(paused["result"], "paused", "{paused}");
    assert!(f.hive.is_paused(&name("alice")));
    let again = ok(&manager, "pause", json!({"agent": "alice"})).await;
    assert_eq!(again["result"], "already paused");
    let resumed = ok(&manager, "resume", json!({"agent": "alice"})).await;
    assert_eq!(resumed["result"], "resumed", "{resumed}");
    assert!(!f.hive.is_paused(&name("alice")));

    f.hive
        .pause_agent(Actor::Operator, &name("bob"))
        .await
        .unwrap();
    let before = paused_rows();
    let refused = tool_error(&manager, "resume", json!({"agent": "bob"})).await;
    assert!(
        refused.contains("only the operator resumes it"),
        "{refused}"
    );
    assert!(f.hive.is_paused(&name("bob")));
    assert_eq!(paused_rows(), before);
    let by_operator = f
        .hive
        .resume_agent(Actor::Operator, &name("bob"))
        .await
        .unwrap();
    assert_eq!(by_operator.result, "resumed");
}
