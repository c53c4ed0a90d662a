//! The mailbox against a real sqlite file: wake-ups, durability of order, leases, bad input.

mod common;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::Hive;
use broker::config::Config;
use broker::mailbox::{MessageState, RecvLimits};
use broker::names::{AgentName, Inbox, Recipient, Sender};
use broker::paths::StateDir;
use broker::registry::AgentKind;
use common::until;

struct Fixture {
    _dir: tempfile::TempDir,
    hive: Arc<Hive>,
}

async fn hive_with(config: Config, agents: &[&str]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::new(dir.path());
    state.create().unwrap();
    let hive = Hive::open(state, config).await.unwrap();
    for a in agents {
        hive.add_agent(name(a), AgentKind::Agent).await.unwrap();
    }
    Fixture { _dir: dir, hive }
}

async fn hive(agents: &[&str]) -> Fixture {
    hive_with(Config::default(), agents).await
}

fn name(s: &str) -> AgentName {
    AgentName::parse(s).unwrap()
}

fn agent(s: &str) -> Sender {
    Sender::Agent(name(s))
}

fn to(s: &str) -> Recipient {
    Recipient::parse(s).unwrap()
}

fn inbox(s: &str) -> Inbox {
    Inbox::Agent(name(s))
}

/// (rows in agents, rows in messages, rows in turns, sum of message states as text): what "nothing
/// changed" is checked against.
async fn snapshot(hive: &Hive) -> (i64, i64, i64, String) {
    let c = common::open_db(hive);
    let count = |t: &str| -> i64 {
        c.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
            .unwrap()
    };
    let states: String = c
        .query_row(
            "SELECT coalesce(group_concat(id || ':' || state || ':' || redelivered, ','), '')
             FROM messages",
            [],
            |r| r.get(0),
        )
        .unwrap();
    (count("agents"), count("messages"), count("turns"), states)
}

fn limits(wait: u64, max: u64) -> RecvLimits {
    RecvLimits::new(wait, max).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_recv_wakes_on_the_send_not_at_its_timeout() {
    let f = hive(&["alice", "bob"]).await;
    let hive = f.hive.clone();
    let waiter = tokio::spawn(async move {
        let started = Instant::now();
        let got = hive.recv(&inbox("bob"), limits(60, 32)).await.unwrap();
        (got, started.elapsed())
    });
    until("bob's recv waits", || {
        f.hive.waiting_receivers(&inbox("bob")) == 1
    })
    .await;
    let sent_at = Instant::now();
    let ids = f
        .hive
        .send(&agent("alice"), &to("bob"), "hi bob".into(), None)
        .await
        .unwrap();
    let (got, _) = waiter.await.unwrap();
    let woke_after_send = sent_at.elapsed();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, ids[0]);
    assert_eq!(got[0].body, "hi bob");
    assert_eq!(got[0].from, "alice");
    assert_eq!(got[0].state, MessageState::Delivered);
    assert!(
        woke_after_send < Duration::from_millis(100),
        "woke {woke_after_send:?} after the send"
    );
    // Taken once: a second recv finds nothing.
    let again = f.hive.recv(&inbox("bob"), limits(0, 32)).await.unwrap();
    assert!(again.is_empty());
}

#[tokio::test]
async fn with_no_send_recv_returns_empty_at_its_timeout() {
    let f = hive(&["bob"]).await;
    let started = Instant::now();
    let got = f.hive.recv(&inbox("bob"), limits(1, 32)).await.unwrap();
    let took = started.elapsed();
    assert!(got.is_empty());
    assert!(took >= Duration::from_secs(1), "{took:?}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_went_away_marks_nothing_delivered() {
    let f = hive(&["alice", "bob"]).await;
    let hive = f.hive.clone();
    let waiter = tokio::spawn(async move { hive.recv(&inbox("bob"), limits(60, 32)).await });
    until("bob's recv waits", || {
        f.hive.waiting_receivers(&inbox("bob")) == 1
    })
    .await;
    waiter.abort();
    let _ = waiter.await;
    assert_eq!(f.hive.waiting_receivers(&inbox("bob")), 0);
    let ids = f
        .hive
        .send(&agent("alice"), &to("bob"), "still here?".into(), None)
        .await
        .unwrap();
    let (_, _, _, states) = snapshot(&f.hive).await;
    assert_eq!(states, format!("{}:queued:0", ids[0]));
    let got = f.hive.recv(&inbox("bob"), limits(0, 32)).await.unwrap();
    assert_eq!(got.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_senders_lose_nothing_and_keep_their_order() {
    const SENDERS: usize = 100;
    const EACH: usize = 100;
    let names: Vec<String> = (0..SENDERS).map(|i| format!("s{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let f = hive(&refs).await;
    let mut tasks = Vec::new();
    for sender in names.clone() {
        let hive = f.hive.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..EACH {
                hive.send(
                    &agent(&sender),
                    &to("manager"),
                    format!("{sender}:{n}"),
                    None,
                )
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut seen = std::collections::HashMap::<String, usize>::new();
    let mut total = 0;
    loop {
        let got = f
            .hive
            .recv(&Inbox::Agent(AgentName::manager()), limits(0, 32))
            .await
            .unwrap();
        if got.is_empty() {
            break;
        }
        for m in got {
            let (sender, n) = m.body.split_once(':').unwrap();
            assert_eq!(sender, m.from);
            let next = seen.entry(sender.to_owned()).or_default();
            assert_eq!(n.parse::<usize>().unwrap(), *next, "order of {sender}");
            *next += 1;
            total += 1;
        }
    }
    assert_eq!(total, SENDERS * EACH);
    assert!(seen.values().all(|&n| n == EACH));
}

#[tokio::test]
async fn an_unfinished_lease_is_delivered_again_flagged() {
    let f = hive(&["alice", "bob"]).await;
    let mb = &f.hive;
    let first = mb
        .send(&agent("alice"), &to("bob"), "do the thing".into(), None)
        .await
        .unwrap()[0];
    let turn = mb
        .next_turn(&name("bob"), Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(turn.message.id, first);
    assert!(!turn.message.redelivered);
    // Leased: neither recv nor another next_turn sees it.
    assert!(
        mb.recv(&inbox("bob"), limits(0, 32))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        mb.next_turn(&name("bob"), Duration::ZERO)
            .await
            .unwrap()
            .is_none()
    );

    // The agent stops before finishing.
    assert_eq!(mb.release_leases(&name("bob")).await.unwrap(), 1);
    let again = mb
        .next_turn(&name("bob"), Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.message.id, first);
    assert!(again.message.redelivered);
    assert_ne!(again.turn, turn.turn);

    // The old turn cannot finish any more; the new one can, once.
    let err = mb
        .finish_turn(&name("bob"), turn.turn, "ok", None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "not_found");
    mb.finish_turn(
        &name("bob"),
        again.turn,
        "ok",
        Some(proto::Usage {
            input_tokens: Some(3),
            ..Default::default()
        }),
    )
    .await
    .unwrap();
    let err = mb
        .finish_turn(&name("bob"), again.turn, "ok", None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "not_found");
    let (_, _, turns, states) = snapshot(&f.hive).await;
    assert_eq!(turns, 2);
    assert_eq!(states, format!("{first}:delivered:1"));
}

#[tokio::test]
async fn a_restart_returns_leases_to_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::new(dir.path());
    state.create().unwrap();
    let hive = Hive::open(state.clone(), Config::default()).await.unwrap();
    hive.add_agent(name("bob"), AgentKind::Agent).await.unwrap();
    let id = hive
        .send(&Sender::Operator, &to("bob"), "x".into(), None)
        .await
        .unwrap()[0];
    hive.next_turn(&name("bob"), Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    hive.close();
    drop(hive);
    let hive = Hive::open(state, Config::default()).await.unwrap();
    let turn = hive
        .next_turn(&name("bob"), Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(turn.message.id, id);
    assert!(turn.message.redelivered);
}

#[tokio::test]
async fn broadcast_reaches_every_other_agent_and_replies_link() {
    let f = hive(&["alice", "bob", "carol"]).await;
    let mb = &f.hive;
    let ids = mb
        .send(&agent("alice"), &to("*"), "all hands".into(), None)
        .await
        .unwrap();
    assert_eq!(ids.len(), 3, "bob, carol and the manager");
    let got = mb.recv(&inbox("carol"), limits(0, 32)).await.unwrap();
    assert_eq!(got[0].body, "all hands");
    assert!(
        mb.recv(&inbox("alice"), limits(0, 32))
            .await
            .unwrap()
            .is_empty()
    );

    let reply = mb
        .send(&agent("carol"), &to("alice"), "ack".into(), Some(got[0].id))
        .await
        .unwrap();
    let got = mb.recv(&inbox("alice"), limits(0, 32)).await.unwrap();
    assert_eq!(got[0].id, reply[0]);
    assert_eq!(got[0].in_reply_to, Some(ids[1]));

    let to_op = mb
        .send(&agent("bob"), &to("operator"), "hello human".into(), None)
        .await
        .unwrap();
    let listed = mb.inbox_messages(&Inbox::Operator, 10).await.unwrap();
    assert_eq!(listed.iter().map(|m| m.id).collect::<Vec<_>>(), to_op);
    assert_eq!(
        listed[0].state,
        MessageState::Queued,
        "listing marks nothing"
    );
}

#[tokio::test]
async fn bad_input_is_refused_with_a_reason_and_changes_nothing() {
    let mut config = Config::default();
    config.mailbox.max_body_bytes = 1024;
    let f = hive_with(config, &["alice"]).await;
    let mb = &f.hive;
    mb.send(&Sender::Operator, &to("alice"), "before".into(), None)
        .await
        .unwrap();
    let before = snapshot(&f.hive).await;

    for bad in ["../x", "a/b", "Manager", "", &"a".repeat(300), "system"] {
        let e = Recipient::parse(bad).unwrap_err();
        assert!(e.to_string().contains(if bad == "system" {
            "reserved"
        } else {
            "invalid agent name"
        }));
        let e = AgentName::parse(bad).unwrap_err();
        assert!(!e.to_string().is_empty());
    }
    // `operator` is a recipient but never an agent.
    assert!(
        AgentName::parse("operator")
            .unwrap_err()
            .to_string()
            .contains("reserved")
    );

    let cases: Vec<(&str, broker::Error)> = vec![
        (
            "unknown_agent",
            mb.send(&agent("alice"), &to("bob"), "x".into(), None)
                .await
                .unwrap_err(),
        ),
        (
            "send_to_self",
            mb.send(&agent("alice"), &to("alice"), "x".into(), None)
                .await
                .unwrap_err(),
        ),
        (
            "send_to_self",
            mb.send(&Sender::Operator, &to("operator"), "x".into(), None)
                .await
                .unwrap_err(),
        ),
        (
            "body_too_large",
            mb.send(&agent("alice"), &to("manager"), "x".repeat(1025), None)
                .await
                .unwrap_err(),
        ),
        (
            "invalid_argument",
            mb.send(&agent("alice"), &to("manager"), String::new(), None)
                .await
                .unwrap_err(),
        ),
        (
            "not_found",
            mb.send(&agent("alice"), &to("manager"), "x".into(), Some(999_999))
                .await
                .unwrap_err(),
        ),
        (
            "invalid_argument",
            mb.send(&agent("alice"), &to("manager"), "x".into(), Some(-1))
                .await
                .unwrap_err(),
        ),
        (
            "not_found",
            mb.send(&agent("ghost"), &to("manager"), "x".into(), None)
                .await
                .unwrap_err(),
        ),
        (
            "invalid_argument",
            RecvLimits::new(1_000_000_000, 1).unwrap_err(),
        ),
        ("invalid_argument", RecvLimits::new(0, 0).unwrap_err()),
        ("invalid_argument", RecvLimits::new(0, 1000).unwrap_err()),
        (
            "invalid_argument",
            mb.next_turn(&name("alice"), Duration::from_secs(1_000_000_000))
                .await
                .unwrap_err(),
        ),
        (
            "not_found",
            mb.finish_turn(&name("alice"), 12345, "ok", None)
                .await
                .unwrap_err(),
        ),
        (
            "conflict",
            f.hive
                .add_agent(name("alice"), AgentKind::Agent)
                .await
                .unwrap_err(),
        ),
    ];
    for (code, err) in &cases {
        assert_eq!(err.code(), *code, "{err}");
        assert!(!err.to_string().is_empty());
    }
    let unknown = &cases[0].1.to_string();
    assert!(
        unknown.contains("you may write to: manager, operator"),
        "{unknown}"
    );
    assert!(cases[1].1.to_string().contains("remind"));
    assert_eq!(snapshot(&f.hive).await, before);
}

#[tokio::test]
async fn retention_deletes_old_delivered_messages_only() {
    let f = hive(&["bob"]).await;
    let mb = &f.hive;
    let old = mb
        .send(&Sender::Operator, &to("bob"), "old".into(), None)
        .await
        .unwrap()[0];
    mb.recv(&inbox("bob"), limits(0, 32)).await.unwrap();
    let queued = mb
        .send(&Sender::Operator, &to("bob"), "queued".into(), None)
        .await
        .unwrap()[0];
    // Age both by 40 days, as if written long ago.
    let db = rusqlite::Connection::open(f.hive.state_dir().db()).unwrap();
    db.execute(
        "UPDATE messages SET sent_at = sent_at - 3456000000,
                             delivered_at = delivered_at - 3456000000",
        [],
    )
    .unwrap();
    let deleted = mb
        .vacuum_messages(Duration::from_secs(30 * 86400))
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    let left: Vec<i64> = mb
        .message_history(None, 10)
        .await
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(left, [queued]);
    assert_ne!(old, queued);
}

/// Holds the store's writer inside a write job until `release`: whatever is queued meanwhile is
/// committed together in the writer's next batch.
struct HeldWriter {
    entered: std::sync::mpsc::Receiver<()>,
    go: std::sync::mpsc::Sender<()>,
}

impl HeldWriter {
    fn queue(hive: &Hive) -> Self {
        let (entered_tx, entered) = std::sync::mpsc::channel();
        let (go, go_rx) = std::sync::mpsc::channel::<()>();
        hive.run_on_writer_for_tests(move || {
            entered_tx.send(()).unwrap();
            go_rx.recv().unwrap();
        });
        Self { entered, go }
    }

    /// Blocks until the writer is inside this job.
    fn wait_entered(&self) {
        self.entered
            .recv_timeout(Duration::from_secs(10))
            .expect("the writer reached the held job");
    }

    fn release(self) {
        self.go.send(()).unwrap();
    }
}

/// Polls `call` once: that hands its write job to the store's writer, which a [`HeldWriter`]
/// holds, so the call cannot have finished.
fn queue_behind_the_held_writer<F: Future>(call: &mut std::pin::Pin<Box<F>>) {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(
        call.as_mut().poll(&mut cx).is_pending(),
        "the call finished while the writer was held"
    );
}

/// Starts `take`, lets the writer run its job, and drops the caller while the take's
/// transaction is still open (another job of the same batch holds the writer before the commit).
async fn leave_while_the_take_commits<T>(hive: &Hive, take: impl Future<Output = T>) {
    let first = HeldWriter::queue(hive);
    first.wait_entered();
    let mut take = Box::pin(take);
    queue_behind_the_held_writer(&mut take);
    let second = HeldWriter::queue(hive);
    first.release();
    // The writer ran the take's job (the same batch, before `second`) and is now in `second`.
    second.wait_entered();
    drop(take);
    second.release();
}

#[tokio::test]
async fn a_recv_whose_caller_leaves_while_it_commits_loses_nothing() {
    let f = hive(&["alice", "bob"]).await;
    let mb = &f.hive;
    let ids = mb
        .send(&agent("alice"), &to("bob"), "one".into(), None)
        .await
        .unwrap();
    leave_while_the_take_commits(&f.hive, mb.recv(&inbox("bob"), limits(0, 32))).await;
    let got = mb.recv(&inbox("bob"), limits(10, 32)).await.unwrap();
    assert_eq!(got.iter().map(|m| m.id).collect::<Vec<_>>(), ids);
    assert!(got[0].redelivered, "a put-back message is flagged");
    assert_eq!(got[0].state, MessageState::Delivered);
}

#[tokio::test]
async fn an_operator_inbox_take_whose_caller_leaves_while_it_commits_loses_nothing() {
    let f = hive(&["alice"]).await;
    let mb = &f.hive;
    let ids = mb
        .send(&agent("alice"), &to("operator"), "for you".into(), None)
        .await
        .unwrap();
    leave_while_the_take_commits(&f.hive, mb.recv(&Inbox::Operator, limits(0, 32))).await;
    let got = mb.recv(&Inbox::Operator, limits(10, 32)).await.unwrap();
    assert_eq!(got.iter().map(|m| m.id).collect::<Vec<_>>(), ids);
    assert!(got[0].redelivered);
}

#[tokio::test]
async fn a_next_turn_whose_caller_leaves_while_it_commits_loses_nothing() {
    let f = hive(&["alice", "bob"]).await;
    let mb = &f.hive;
    let id = mb
        .send(&agent("alice"), &to("bob"), "work".into(), None)
        .await
        .unwrap()[0];
    leave_while_the_take_commits(&f.hive, mb.next_turn(&name("bob"), Duration::ZERO)).await;
    let turn = mb
        .next_turn(&name("bob"), Duration::from_secs(10))
        .await
        .unwrap()
        .expect("the message came back to the queue");
    assert_eq!(turn.message.id, id);
    assert!(turn.message.redelivered);
    // The lost turn was closed as abandoned; only the new one is open.
    let open: i64 = common::open_db(&f.hive)
        .query_row(
            "SELECT count(*) FROM turns WHERE finished_at IS NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(open, 1);
}

/// The counts kept in the store, and the same counted from the rows, by (inbox, state).
async fn stored_and_counted(
    hive: &Hive,
) -> (Vec<(String, String, i64)>, Vec<(String, String, i64)>) {
    let c = common::open_db(hive);
    let rows = |sql: &str| -> Vec<(String, String, i64)> {
        c.prepare(sql)
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    };
    (
        rows(
            "SELECT recipient, state, n FROM message_counts WHERE n != 0
             ORDER BY recipient, state",
        ),
        rows(
            "SELECT recipient, state, count(*) FROM messages GROUP BY recipient, state
             ORDER BY recipient, state",
        ),
    )
}

#[tokio::test]
async fn the_stored_counts_follow_a_mixed_history() {
    let f = hive(&["alice", "bob", "carol"]).await;
    let mb = &f.hive;
    for n in 0..5 {
        mb.send(&agent("alice"), &to("bob"), format!("b{n}"), None)
            .await
            .unwrap();
    }
    mb.send(&agent("bob"), &to("*"), "all".into(), None)
        .await
        .unwrap();
    mb.send(&agent("carol"), &to("operator"), "op".into(), None)
        .await
        .unwrap();
    assert_eq!(mb.recv(&inbox("bob"), limits(0, 2)).await.unwrap().len(), 2);
    assert_eq!(
        mb.recv(&Inbox::Operator, limits(0, 32))
            .await
            .unwrap()
            .len(),
        1
    );
    let finished = mb
        .next_turn(&name("bob"), Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(finished.messages.len(), 3, "b2, b3 and b4 in one turn");
    mb.finish_turn(&name("bob"), finished.turn, "ok", None)
        .await
        .unwrap();
    for n in 5..7 {
        mb.send(&agent("alice"), &to("bob"), format!("b{n}"), None)
            .await
            .unwrap();
    }
    mb.next_turn(&name("bob"), Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    let held = mb
        .next_turn(&name("carol"), Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(mb.release_leases(&name("bob")).await.unwrap(), 2);
    mb.next_turn(&name("bob"), Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    // A waiting receiver takes a send in the send's own transaction.
    let waiting = {
        let hive = f.hive.clone();
        // carol's only message is leased: nothing queued.
        tokio::spawn(async move { hive.recv(&inbox("carol"), limits(10, 32)).await })
    };
    mb.send(&agent("alice"), &to("carol"), "direct".into(), None)
        .await
        .unwrap();
    assert_eq!(waiting.await.unwrap().unwrap().len(), 1);
    // Age the delivered messages of bob's first recv so the vacuum takes them.
    rusqlite::Connection::open(f.hive.state_dir().db())
        .unwrap()
        .execute(
            "UPDATE messages SET delivered_at = delivered_at - 100000
             WHERE recipient = 'bob' AND state = 'delivered' AND body IN ('b0', 'b1')",
            [],
        )
        .unwrap();
    assert_eq!(
        mb.vacuum_messages(Duration::from_secs(10)).await.unwrap(),
        2
    );

    let (stored, counted) = stored_and_counted(&f.hive).await;
    assert_eq!(stored, counted);
    // Every state is present, so the check above covers each trigger.
    let states: std::collections::BTreeSet<&str> =
        counted.iter().map(|(_, s, _)| s.as_str()).collect();
    assert_eq!(states, ["delivered", "leased", "queued"].into());
    let total = mb.message_counts().await.unwrap();
    let sum = |state: &str| -> u64 {
        counted
            .iter()
            .filter(|(_, s, _)| s == state)
            .map(|(_, _, n)| *n as u64)
            .sum()
    };
    assert_eq!(
        (total.queued, total.leased, total.delivered),
        (sum("queued"), sum("leased"), sum("delivered"))
    );
    assert_eq!(
        total.leased, 3,
        "carol's open turn (one message) and bob's (two)"
    );
    assert_ne!(held.turn, finished.turn);
}

#[tokio::test]
async fn an_unknown_stored_state_is_an_error_not_queued() {
    let f = hive(&["bob"]).await;
    let mb = &f.hive;
    let id = mb
        .send(&Sender::Operator, &to("bob"), "x".into(), None)
        .await
        .unwrap()[0];
    // A row written by something newer than this hive (the CHECK would refuse it otherwise).
    let db = rusqlite::Connection::open(f.hive.state_dir().db()).unwrap();
    db.execute_batch("PRAGMA ignore_check_constraints = ON")
        .unwrap();
    db.execute("UPDATE messages SET state = 'archived' WHERE id = ?1", [id])
        .unwrap();
    // Its counts too, as that hive's writer would keep them.
    broker::store::message_counts::recount(&db).unwrap();
    let err = mb.inbox_messages(&inbox("bob"), 10).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("unknown stored message state 'archived'"),
        "{err}"
    );
    let err = mb.message_history(None, 10).await.unwrap_err();
    assert!(err.to_string().contains("'archived'"), "{err}");
    let err = mb.message_counts().await.unwrap_err();
    assert!(err.to_string().contains("'archived'"), "{err}");
    // Nothing takes it for a queued message.
    assert!(
        mb.recv(&inbox("bob"), limits(0, 32))
            .await
            .unwrap()
            .is_empty()
    );
}

/// The ids of `turn`'s messages, in order.
fn ids_of(turn: &broker::mailbox::Turn) -> Vec<i64> {
    turn.messages.iter().map(|m| m.id).collect()
}

async fn send_n(hive: &Hive, n: usize, body: impl Fn(usize) -> String) -> Vec<i64> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.extend(
            hive.send(&agent("alice"), &to("bob"), body(i), None)
                .await
                .unwrap(),
        );
    }
    ids
}

#[tokio::test]
async fn queued_messages_become_one_turn_and_are_all_delivered_when_it_finishes() {
    let f = hive(&["alice", "bob"]).await;
    let mb = &f.hive;
    let ids = send_n(mb, 3, |i| format!("m{i}")).await;
    let mut bus = mb.subscribe();
    let turn = mb
        .next_turn(&name("bob"), Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ids_of(&turn), ids);
    assert_eq!(turn.message.id, ids[0], "the first is the turn's message");
    assert!(
        turn.messages
            .iter()
            .all(|m| m.state == MessageState::Leased)
    );
    assert!(
        mb.next_turn(&name("bob"), Duration::ZERO)
            .await
            .unwrap()
            .is_none(),
        "nothing is left for a second turn"
    );
    let (_, _, turns, states) = snapshot(mb).await;
    assert_eq!(turns, 1);
    assert_eq!(
        states,
        ids.iter()
            .map(|id| format!("{id}:leased:0"))
            .collect::<Vec<_>>()
            .join(",")
    );
    mb.finish_turn(&name("bob"), turn.turn, "ok", None)
        .await
        .unwrap();
    let (_, _, _, states) = snapshot(mb).await;
    assert_eq!(
        states,
        ids.iter()
            .map(|id| format!("{id}:delivered:0"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let delivered = loop {
        if let broker::bus::Event::MessageDelivered { ids, .. } = bus.recv().await.unwrap() {
            break ids;
        }
    };
    assert_eq!(delivered, ids);
}

#[tokio::test]
async fn a_turn_leases_at_most_its_bound_of_messages_and_bytes() {
    let f = hive(&["alice", "bob"]).await;
    let mb = &f.hive;
    let ids = send_n(mb, broker::mailbox::MAX_TURN_MESSAGES + 4, |i| {
        format!("m{i}")
    })
    .await;
    let first = mb
        .next_turn(&name("bob"), Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ids_of(&first), ids[..broker::mailbox::MAX_TURN_MESSAGES]);
    let second = mb
        .next_turn(&name("bob"), Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ids_of(&second), ids[broker::mailbox::MAX_TURN_MESSAGES..]);

    // Bodies: two of 30 000 bytes fit the 64 KiB bound, a third does not.
    let f = hive(&["alice", "bob"]).await;
    let mb = &f.hive;
    let ids = send_n(mb, 3, |_| "x".repeat(30_000)).await;
    let first = mb
        .next_turn(&name("bob"), Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ids_of(&first), ids[..2]);
    let second = mb
        .next_turn(&name("bob"), Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ids_of(&second), ids[2..]);
}

#[tokio::test]
async fn a_released_turn_gives_every_message_back_flagged() {
    let f = hive(&["alice", "bob"]).await;
    let mb = &f.hive;
    let ids = send_n(mb, 3, |i| format!("m{i}")).await;
    let turn = mb
        .next_turn(&name("bob"), Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(turn.messages.len(), 3);
    // The harness goes away: every message of its turn goes back.
    assert_eq!(mb.release_leases(&name("bob")).await.unwrap(), 3);
    let again = mb
        .next_turn(&name("bob"), Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ids_of(&again), ids);
    assert!(again.messages.iter().all(|m| m.redelivered));
}

#[tokio::test]
async fn a_turn_of_several_messages_whose_caller_leaves_while_it_commits_loses_none() {
    let f = hive(&["alice", "bob"]).await;
    let mb = &f.hive;
    let ids = send_n(mb, 3, |i| format!("m{i}")).await;
    leave_while_the_take_commits(&f.hive, mb.next_turn(&name("bob"), Duration::ZERO)).await;
    let turn = mb
        .next_turn(&name("bob"), Duration::from_secs(10))
        .await
        .unwrap()
        .expect("the messages came back to the queue");
    assert_eq!(ids_of(&turn), ids);
    assert!(turn.messages.iter().all(|m| m.redelivered));
}

/// The inbox quota counts the sends of the batch they commit in: ten sends queued behind a held
/// writer (one transaction) store exactly as many as the quota leaves room for, and refuse the
/// rest with `inbox_full`, where each once read only the count stored before the batch.
#[tokio::test]
async fn sends_committed_in_one_batch_meet_the_inbox_quota_exactly() {
    let mut config = Config::default();
    config.mailbox.max_queued_per_inbox = 3;
    let f = hive_with(config, &["alice", "bob"]).await;
    f.hive
        .send(&agent("alice"), &to("bob"), "before".into(), None)
        .await
        .unwrap();
    let held = HeldWriter::queue(&f.hive);
    held.wait_entered();
    let (alice, bob) = (agent("alice"), to("bob"));
    let mut sends: Vec<_> = (0..10)
        .map(|i| Box::pin(f.hive.send(&alice, &bob, format!("m{i}"), None)))
        .collect();
    for send in &mut sends {
        queue_behind_the_held_writer(send);
    }
    held.release();
    let results = futures_util::future::join_all(sends).await;
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    let refused: Vec<&str> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| e.code()))
        .collect();
    assert_eq!(accepted, 2, "the quota of 3 had room for two more");
    assert_eq!(refused, ["inbox_full"; 8]);
    let c = common::open_db(&f.hive);
    let queued: i64 = c
        .query_row(
            "SELECT count(*) FROM messages WHERE recipient = 'bob' AND state = 'queued'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(queued, 3);
    assert_eq!(f.hive.message_counts().await.unwrap().queued, 3);
}
