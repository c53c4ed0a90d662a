//! What one turn of `hive-agent serve` does beyond answering one message, with the real claude
//! CLI against the scripted model server and an in-process hive: queued messages become one turn,
//! the operator's commands (`/model`, `/new-session`, `/compact`, `/cancel`) are run by the
//! harness and answered in the operator's inbox, a busy provider is tried again and a model that
//! never stops calling tools is cut.

mod common;

use broker::bus::Event;
use broker::names::Inbox;
use common::{TestHive, name};
use proto::tools::TurnState;
use serde_json::{Value, json};
use testkit::model_server::{ModelServer, Reply};
use testkit::tools;

use common::running::*;

/// The harness's own idle timeout: these tests never wait for it.
const DEFAULT_IDLE_SECONDS: u64 = 600;

/// Waits for the harness's answer to operator command `command`.
async fn answer_to(hive: &TestHive, command: i64) -> String {
    let m = receive(hive, Inbox::Operator).await;
    assert_eq!(
        (m.from.as_str(), m.in_reply_to),
        ("system", Some(command)),
        "{m:?}"
    );
    m.body
}

/// Waits until every message of `ids` is delivered.
async fn delivered(events: &mut tokio::sync::broadcast::Receiver<Event>, ids: &[i64]) {
    let mut left: Vec<i64> = ids.to_vec();
    tokio::time::timeout(DEADLINE, async {
        while !left.is_empty() {
            if let Ok(Event::MessageDelivered { ids, .. }) = events.recv().await {
                left.retain(|id| !ids.contains(id));
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not delivered: {ids:?}"));
}

fn db(hive: &TestHive) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(
        hive.hive.state_dir().db(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap()
}

/// (turn id, outcome) of the turn that leased message `id` (its lease is kept in `lease_turn`
/// only while open, so this reads the turn whose first message it is or that delivered it).
fn turn_of(hive: &TestHive, first: i64) -> (i64, Option<String>) {
    db(hive)
        .query_row(
            "SELECT id, outcome FROM turns WHERE message_id = ?1 ORDER BY id DESC LIMIT 1",
            [first],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
}

fn events_of(hive: &TestHive, turn: i64) -> Vec<Value> {
    db(hive)
        .prepare("SELECT data FROM turn_events WHERE turn = ?1 ORDER BY seq")
        .unwrap()
        .query_map([turn], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|d| serde_json::from_str(&d.unwrap()).unwrap())
        .collect()
}

fn session_of(server: &ModelServer, request: usize) -> String {
    server.model_requests()[request]
        .header("x-claude-code-session-id")
        .unwrap_or_default()
        .to_owned()
}

fn claude_ready() -> bool {
    tools::require("claude", tools::claude_bin()).is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_while_a_turn_runs_become_one_next_turn() {
    if !claude_ready() {
        return;
    }
    let server = ModelServer::start(vec![
        Reply::Held("first done".into()),
        Reply::text("all three read"),
    ])
    .await;
    let hive = TestHive::open_with_model(&["alice", "bob"], &server.base_url()).await;
    let mut bus = hive.hive.subscribe();
    let harness = Harness::start(&hive, &server, json!({}), DEFAULT_IDLE_SECONDS);
    let first = send(&hive, "bob", "alice", "first").await;
    server
        .wait_for_requests(1, DEADLINE)
        .await
        .expect("the first turn reached the model");
    let later = [
        send(&hive, "bob", "alice", "later one").await,
        send(&hive, "operator", "alice", "later two").await,
        send(&hive, "bob", "alice", "later three").await,
    ];
    server.release();
    delivered(&mut bus, &[first]).await;
    delivered(&mut bus, &later).await;
    let requests = server.model_requests();
    assert_eq!(
        requests.len(),
        2,
        "one model call per turn: {}",
        harness.log()
    );
    let prompt = requests[1].last_user_text().unwrap();
    let at = |s: &str| {
        prompt
            .find(s)
            .unwrap_or_else(|| panic!("{s} missing: {prompt}"))
    };
    assert!(prompt.contains("3 new messages"), "{prompt}");
    assert!(at(&format!("{} from bob", later[0])) < at("later one"));
    assert!(at("later one") < at(&format!("{} from operator", later[1])));
    assert!(at("later two") < at("later three"));
    // One turn leased all three and delivered them when it finished.
    let (turn, outcome) = turn_of(&hive, later[0]);
    assert_eq!(outcome.as_deref(), Some("ok"));
    let turns: i64 = db(&hive)
        .query_row("SELECT count(*) FROM turns", [], |r| r.get(0))
        .unwrap();
    assert_eq!(turns, 2, "{}", harness.log());
    let states: Vec<String> = hive
        .messages()
        .await
        .iter()
        .filter(|m| later.contains(&m.id))
        .map(|m| format!("{:?}", m.state))
        .collect();
    assert_eq!(states, ["Delivered"; 3]);
    assert!(turn > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_is_set_by_the_operator_and_survives_a_harness_restart() {
    if !claude_ready() {
        return;
    }
    let server = ModelServer::start(vec![Reply::text("one"), Reply::text("two")]).await;
    let hive = TestHive::open_with_model(&["alice", "bob"], &server.base_url()).await;
    let mut bus = hive.hive.subscribe();
    let harness = Harness::start(&hive, &server, json!({}), DEFAULT_IDLE_SECONDS);

    let bad = send(&hive, "operator", "alice", "/model two words").await;
    let answer = answer_to(&hive, bad).await;
    assert!(
        answer.starts_with("alice: unknown command /model"),
        "{answer}"
    );
    let bad = send(&hive, "operator", "alice", "/model --evil").await;
    let answer = answer_to(&hive, bad).await;
    assert!(answer.contains("model not changed"), "{answer}");
    assert!(!harness.state.join("model").exists());

    let set = send(&hive, "operator", "alice", "/model claude-test-model").await;
    assert_eq!(
        answer_to(&hive, set).await,
        "alice: model set to claude-test-model"
    );
    assert_eq!(
        std::fs::read_to_string(harness.state.join("model")).unwrap(),
        "claude-test-model"
    );
    let id = send(&hive, "bob", "alice", "hello").await;
    delivered(&mut bus, &[id]).await;
    assert_eq!(
        server.model_requests()[0].model(),
        Some("claude-test-model")
    );
    // A command is not shown to the model: the only model call was the message's.
    assert_eq!(server.model_requests().len(), 1);
    // The system prompt tells the model where its durable notes live.
    let system = server.model_requests()[0].body["system"].to_string();
    let notes = harness.state.join("notes.md");
    assert!(system.contains(&*notes.to_string_lossy()), "{system}");

    drop(harness);
    let harness = Harness::start(&hive, &server, json!({}), DEFAULT_IDLE_SECONDS);
    let ask = send(&hive, "operator", "alice", "/model").await;
    assert_eq!(
        answer_to(&hive, ask).await,
        "alice: model is claude-test-model"
    );
    let id = send(&hive, "bob", "alice", "again").await;
    delivered(&mut bus, &[id]).await;
    assert_eq!(
        server.model_requests()[1].model(),
        Some("claude-test-model"),
        "{}",
        harness.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_session_drops_the_conversation_and_compact_compacts_it() {
    if !claude_ready() {
        return;
    }
    let server = ModelServer::start(vec![
        Reply::text("one"),
        Reply::text("<summary>summary of the conversation</summary>"),
        Reply::text("two"),
        Reply::text("three"),
    ])
    .await;
    let hive = TestHive::open_with_model(&["alice", "bob"], &server.base_url()).await;
    let mut bus = hive.hive.subscribe();
    let harness = Harness::start(&hive, &server, json!({}), DEFAULT_IDLE_SECONDS);
    let id = send(&hive, "bob", "alice", "remember the word zanzibar").await;
    delivered(&mut bus, &[id]).await;
    let session = session_of(&server, 0);

    let mut states = hive.hive.subscribe();
    let compact = send(&hive, "operator", "alice", "/compact").await;
    assert_eq!(
        answer_to(&hive, compact).await,
        "alice: compacted the session"
    );
    delivered(&mut bus, &[compact]).await;
    let (turn, _) = turn_of(&hive, compact);
    let events = events_of(&hive, turn);
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "system" && e["subtype"] == "compact_boundary"),
        "{events:?}"
    );
    // The harness said it was compacting while it did.
    let compacting = tokio::time::timeout(DEADLINE, async {
        loop {
            if let Ok(Event::TurnState { state, .. }) = states.recv().await
                && state == TurnState::Compacting
            {
                return;
            }
        }
    })
    .await;
    assert!(compacting.is_ok(), "no compacting state was reported");
    let id = send(&hive, "bob", "alice", "what was the number?").await;
    delivered(&mut bus, &[id]).await;
    let history = server.model_requests()[2].body["messages"].to_string();
    assert!(history.contains("summary of the conversation"), "{history}");

    let fresh = send(&hive, "operator", "alice", "/new-session").await;
    assert!(
        answer_to(&hive, fresh)
            .await
            .starts_with("alice: new session")
    );
    assert!(!harness.state.join("claude-session").exists());
    let id = send(&hive, "bob", "alice", "who are you?").await;
    delivered(&mut bus, &[id]).await;
    assert_ne!(session_of(&server, 3), session);
    let history = server.model_requests()[3].body["messages"].to_string();
    assert!(!history.contains("zanzibar"), "{history}");
    assert_eq!(harness.claude_starts().len(), 2, "{}", harness.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_running_turn_and_the_next_message_resumes() {
    if !claude_ready() {
        return;
    }
    let server = ModelServer::start(vec![Reply::Hang, Reply::text("back")]).await;
    let hive = TestHive::open_with_model(&["alice", "bob"], &server.base_url()).await;
    let mut bus = hive.hive.subscribe();
    let harness = Harness::start(&hive, &server, json!({}), DEFAULT_IDLE_SECONDS);
    let nothing = send(&hive, "operator", "alice", "/cancel").await;
    assert_eq!(
        answer_to(&hive, nothing).await,
        "alice: nothing to cancel: no turn was running"
    );

    let slow = send(&hive, "bob", "alice", "think forever").await;
    server
        .wait_for_requests(1, DEADLINE)
        .await
        .expect("the turn reached the model");
    let cancel = send(&hive, "operator", "alice", "/cancel").await;
    let answer = answer_to(&hive, cancel).await;
    let (turn, _) = turn_of(&hive, slow);
    assert_eq!(answer, format!("alice: cancelled turn {turn}"));
    delivered(&mut bus, &[slow, cancel]).await;
    assert_eq!(turn_of(&hive, slow).1.as_deref(), Some("cancelled"));
    until("the harness reports idle", || {
        hive.hive.agent_run(&name("alice")).unwrap().turn_state == Some(TurnState::Idle)
    })
    .await;

    let next = send(&hive, "bob", "alice", "are you there?").await;
    delivered(&mut bus, &[next]).await;
    let (_, outcome) = turn_of(&hive, next);
    assert_eq!(outcome.as_deref(), Some("ok"), "{}", harness.log());
    let starts = harness.claude_starts();
    // The second start resumes the session when claude had named it before the kill (a third,
    // fresh start follows when it had not yet written the transcript); a kill before claude named
    // it leaves nothing to resume and the second start is fresh.
    assert!(matches!(starts.len(), 2 | 3), "{}", harness.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_turn_is_tried_again_after_a_pause_and_succeeds() {
    if !claude_ready() {
        return;
    }
    let server = ModelServer::start(vec![
        Reply::rate_limited(Some(1)),
        Reply::tool_use(
            "mcp__hive__send",
            json!({"to": "bob", "body": "got through"}),
        ),
        Reply::text("ok"),
    ])
    .await;
    let hive = TestHive::open_with_model(&["alice", "bob"], &server.base_url()).await;
    let mut bus = hive.hive.subscribe();
    let harness = Harness::start(&hive, &server, json!({}), DEFAULT_IDLE_SECONDS);
    let id = send(&hive, "bob", "alice", "busy?").await;
    let reply = receive(&hive, Inbox::Agent(name("bob"))).await;
    assert_eq!(reply.body, "got through");
    delivered(&mut bus, &[id]).await;
    let (turn, outcome) = turn_of(&hive, id);
    assert_eq!(outcome.as_deref(), Some("ok"), "{}", harness.log());
    let events = events_of(&hive, turn);
    let retry = events
        .iter()
        .find(|e| e["type"] == "harness" && e["subtype"] == "retry")
        .unwrap_or_else(|| panic!("no retry event: {events:?}"));
    assert!(
        retry["message"].as_str().unwrap().contains("429"),
        "{retry}"
    );
    assert_eq!(server.model_requests().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_never_stops_calling_tools_is_cut_at_the_bound() {
    if !claude_ready() {
        return;
    }
    let whoami = || Reply::tool_use("mcp__hive__whoami", json!({}));
    let server = ModelServer::start(vec![whoami(), whoami(), whoami(), whoami()]).await;
    let hive = TestHive::open_with_model(&["alice", "bob"], &server.base_url()).await;
    let mut bus = hive.hive.subscribe();
    let harness = Harness::start_with_env(
        &hive,
        &server,
        json!({}),
        DEFAULT_IDLE_SECONDS,
        &[("HIVE_MAX_TURNS", "2")],
    );
    let id = send(&hive, "bob", "alice", "loop forever").await;
    delivered(&mut bus, &[id]).await;
    let (turn, outcome) = turn_of(&hive, id);
    assert_eq!(
        outcome.as_deref(),
        Some("tool_loop_cut"),
        "{}",
        harness.log()
    );
    assert_eq!(
        server.model_requests().len(),
        2,
        "cut after two model calls"
    );
    let events = events_of(&hive, turn);
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "harness" && e["subtype"] == "tool_loop_cut"),
        "{events:?}"
    );
}

/// A paused agent takes no turn — the pause reaches the harness while it waits in `next_turn` —
/// and its mail waits, queued; the resume starts the turn. Both are audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_agent_takes_no_turn_until_it_is_resumed() {
    use broker::containers::Actor;
    if !claude_ready() {
        return;
    }
    let server = ModelServer::start(vec![
        Reply::tool_use(
            "mcp__hive__send",
            json!({"to": "bob", "body": "after the pause"}),
        ),
        Reply::text("answered"),
    ])
    .await;
    let hive = TestHive::open_with_model(&["alice", "bob"], &server.base_url()).await;
    let mut bus = hive.hive.subscribe();
    let _harness = Harness::start(&hive, &server, json!({}), DEFAULT_IDLE_SECONDS);
    let state = || hive.hive.agent_run(&name("alice")).unwrap().turn_state;
    until("the harness waits for a turn", || {
        state() == Some(TurnState::Idle)
    })
    .await;

    let paused = hive
        .hive
        .pause_agent(Actor::Operator, &name("alice"))
        .await
        .unwrap();
    assert_eq!(paused.result, "paused");
    assert!(paused.run.paused);
    assert_eq!(state(), Some(TurnState::Paused));
    let id = send(&hive, "bob", "alice", "wake up").await;
    // A negative: for a while nothing is leased and the model is not asked.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let queued = db(&hive)
        .query_row("SELECT state FROM messages WHERE id = ?1", [id], |r| {
            r.get::<_, String>(0)
        })
        .unwrap();
    assert_eq!(queued, "queued");
    assert!(server.model_requests().is_empty());
    assert_eq!(state(), Some(TurnState::Paused));
    let again = hive
        .hive
        .pause_agent(Actor::Operator, &name("alice"))
        .await
        .unwrap();
    assert_eq!(again.result, "already paused");

    let resumed = hive
        .hive
        .resume_agent(Actor::Operator, &name("alice"))
        .await
        .unwrap();
    assert_eq!(resumed.result, "resumed");
    let reply = receive(&hive, Inbox::Agent(name("bob"))).await;
    assert_eq!(reply.body, "after the pause");
    delivered(&mut bus, &[id]).await;
    let actions: Vec<String> = db(&hive)
        .prepare("SELECT action FROM audit WHERE action IN ('pause', 'resume') ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(actions, ["pause", "resume"]);
}
