//! Incarnations: a name spawned again after a destroy is a new agent and inherits nothing of the
//! old one (queued mail, reminders, question expiries, deploys); a restore brings the old one back
//! with what it left; a purge deletes what it promises.

mod common;

use broker::Hive;
use broker::config::Config;
use broker::mailbox::RecvLimits;
use broker::names::{AgentName, Inbox, Recipient, Sender};
use broker::paths::StateDir;
use common::*;

impl Fixture {
    fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.dir.path().join("hive.db")).unwrap()
    }

    fn count(&self, sql: &str) -> i64 {
        self.db().query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// Makes every pending reminder and open question due now, so the due jobs fire them
    /// (instead of waiting out their delay).
    fn make_everything_due(&self) {
        let db = self.db();
        db.execute(
            "UPDATE reminders SET due_at = 0 WHERE status = 'pending'",
            [],
        )
        .unwrap();
        db.execute(
            "UPDATE questions SET expires_at = 0 WHERE status = 'open'",
            [],
        )
        .unwrap();
    }

    /// Everything in `agent`'s inbox, taken at once without waiting.
    async fn take_all(&self, agent: &str) -> Vec<String> {
        self.hive
            .recv(&Inbox::Agent(name(agent)), RecvLimits::new(0, 32).unwrap())
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.body)
            .collect()
    }

    /// Leaves mail, a reminder and a question behind for `agent`'s current incarnation.
    async fn leave_things_behind(&self, agent: &str) -> i64 {
        self.hive
            .send(
                &Sender::Operator,
                &Recipient::Agent(name(agent)),
                "mail for the old one".into(),
                None,
            )
            .await
            .unwrap();
        self.hive
            .remind(&name(agent), 60, "reminder of the old one".into())
            .await
            .unwrap();
        self.hive
            .ask_operator(
                &name(agent),
                "question of the old one".into(),
                vec![],
                false,
                Some(60),
            )
            .await
            .unwrap()
            .id
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_spawned_again_inherits_no_mail_reminders_or_question_expiries() {
    let f = fixture(&[]).await;
    f.hive.spawn("x1", None).await.unwrap();
    let question = f.leave_things_behind("x1").await;
    f.hive.destroy(&name("x1"), false).await.unwrap();
    f.hive.spawn("x1", None).await.unwrap();

    f.make_everything_due();
    f.hive.fire_due_jobs().await.unwrap();
    assert_eq!(
        f.take_all("x1").await,
        Vec::<String>::new(),
        "the new x1 got what the old one left"
    );

    // Answering the old one's question reaches nobody, and says so.
    let messages_before = f.count("SELECT count(*) FROM messages");
    let e = f
        .hive
        .answer_question(question, broker::questions::Answer::Text("yes".into()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "conflict", "{e}");
    assert!(e.to_string().contains("destroyed"), "{e}");
    assert_eq!(f.count("SELECT count(*) FROM messages"), messages_before);
    assert_eq!(f.take_all("x1").await, Vec::<String>::new());
    // And the open-question listing shows only questions someone can still receive.
    assert!(f.hive.questions(false).await.unwrap().is_empty());

    // The new x1 works: its own mail, its own reminder.
    f.leave_things_behind("x1").await;
    f.make_everything_due();
    f.hive.fire_due_jobs().await.unwrap();
    let mut got = f.take_all("x1").await;
    got.sort();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got.contains(&"mail for the old one".to_owned()));
    assert!(got.contains(&"reminder of the old one".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_brings_back_what_the_old_incarnation_left() {
    let f = fixture(&[]).await;
    f.hive.spawn("x1", None).await.unwrap();
    f.leave_things_behind("x1").await;
    let tomb = f.hive.destroy(&name("x1"), false).await.unwrap();
    f.make_everything_due();
    f.hive.fire_due_jobs().await.unwrap();
    assert_eq!(
        f.count("SELECT count(*) FROM reminders WHERE status = 'pending'"),
        1,
        "a destroyed agent's reminder fired"
    );

    f.hive.restore(tomb.as_str()).await.unwrap();
    f.hive.fire_due_jobs().await.unwrap();
    let mut got = f.take_all("x1").await;
    got.sort();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got.contains(&"mail for the old one".to_owned()), "{got:?}");
    assert!(
        got.contains(&"reminder of the old one".to_owned()),
        "{got:?}"
    );
    assert!(
        got.iter().any(|m| m.contains("expired, no answer")),
        "{got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_deletes_the_mail_reminders_and_questions_it_promised() {
    let f = fixture(&[]).await;
    f.hive.spawn("x1", None).await.unwrap();
    f.leave_things_behind("x1").await;
    f.hive.spawn("x2", None).await.unwrap();
    let tomb = f.hive.destroy(&name("x1"), false).await.unwrap();
    f.leave_things_behind("x2").await;
    f.hive.destroy(&name("x2"), true).await.unwrap();
    assert_eq!(
        f.count("SELECT count(*) FROM messages WHERE recipient = 'x2'"),
        0
    );
    assert_eq!(
        f.count("SELECT count(*) FROM reminders WHERE agent = 'x2'"),
        0
    );
    assert_eq!(
        f.count("SELECT count(*) FROM questions WHERE asker = 'x2' AND status = 'open'"),
        0
    );
    // x1's wait in its tombstone until that is purged too.
    assert_eq!(
        f.count("SELECT count(*) FROM messages WHERE recipient = 'x1' AND state = 'queued'"),
        1
    );
    f.hive.purge(tomb.as_str()).await.unwrap();
    assert_eq!(
        f.count("SELECT count(*) FROM messages WHERE recipient = 'x1' AND state = 'queued'"),
        0
    );
    assert_eq!(
        f.count("SELECT count(*) FROM reminders WHERE agent = 'x1'"),
        0
    );
    assert_eq!(
        f.count("SELECT count(*) FROM questions WHERE asker = 'x1' AND status = 'open'"),
        0
    );
    // A purged tombstone cannot be restored.
    assert_eq!(
        f.hive.restore(tomb.as_str()).await.unwrap_err().code(),
        "not_found"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_to_a_deploy_of_an_earlier_incarnation_is_refused_and_changes_nothing() {
    let f = fixture(&[]).await;
    f.hive.spawn("x1", None).await.unwrap();
    let old = f.hive.deploys(&name("x1")).await.unwrap()[0].id;
    f.hive.destroy(&name("x1"), false).await.unwrap();
    f.hive.spawn("x1", None).await.unwrap();
    let history = f.hive.deploys(&name("x1")).await.unwrap();
    assert_eq!(
        history.len(),
        1,
        "the new x1's history holds the old one's deploys"
    );
    let before = f.count("SELECT count(*) FROM deploys");
    let e = f.hive.rollback(&name("x1"), old).await.unwrap_err();
    assert_eq!(e.code(), "not_found", "{e}");
    assert_eq!(f.count("SELECT count(*) FROM deploys"), before);
    // The start-up reconcile has nothing to trip on.
    f.hive.reconcile_applied().await.unwrap();
    assert!(f.hive.faults().is_empty(), "{:?}", f.hive.faults());
}

/// What a destroy has committed when the daemon dies before moving the files: the agent's row is
/// gone and its incarnation waits for its tombstone (`destroying`, or `purging` for a purge).
fn crash_after_the_destroy_commit(state: &std::path::Path, agent: &str, tomb: &str, purge: bool) {
    let db = rusqlite::Connection::open(state.join("hive.db")).unwrap();
    db.execute(
        "UPDATE incarnations SET state = ?1, tombstone = ?2, destroyed_at = 0
         WHERE id = (SELECT incarnation FROM agents WHERE name = ?3)",
        rusqlite::params![if purge { "purging" } else { "destroying" }, tomb, agent],
    )
    .unwrap();
    db.execute("DELETE FROM agents WHERE name = ?1", [agent])
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destroy_cut_between_its_commit_and_its_file_moves_is_finished_at_the_next_start() {
    let f = fixture(&[]).await;
    f.hive.spawn("x1", None).await.unwrap();
    f.hive.spawn("x2", None).await.unwrap();
    std::fs::create_dir_all(f.dir.path().join("agents/x1/state")).unwrap();
    std::fs::write(f.dir.path().join("agents/x1/state/notes.md"), "remember").unwrap();
    f.hive.close();
    f.shutdown.cancel();
    let Fixture { dir, hive, .. } = f;
    drop(hive);
    crash_after_the_destroy_commit(dir.path(), "x1", "x1-20260101T000000Z", false);
    crash_after_the_destroy_commit(dir.path(), "x2", "x2-20260101T000000Z", true);

    let state = StateDir::new(dir.path());
    let hive = Hive::open(state, Config::default()).await.unwrap();
    let tomb = dir.path().join("tombstones/x1-20260101T000000Z");
    assert!(
        !dir.path().join("agents/x1").exists(),
        "x1's files stayed live"
    );
    assert!(!dir.path().join("applied/x1").exists());
    assert!(tomb.join("agents/state/notes.md").exists());
    assert!(tomb.join("applied/HEAD").exists());
    assert!(
        !dir.path().join("agents/x2").exists(),
        "x2's purge was not finished"
    );
    assert!(!dir.path().join("applied/x2").exists());
    assert!(!dir.path().join("tombstones/x2-20260101T000000Z").exists());

    // The names are free again, and the tombstone restores.
    hive.spawn("x2", None).await.unwrap();
    hive.restore("x1-20260101T000000Z").await.unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("agents/x1/state/notes.md")).unwrap(),
        "remember"
    );
    hive.close();
}

/// A restore cut by a crash — after its intent, with some or all of the files moved back and
/// the agent not yet committed — is finished at the next start: the same incarnation is live
/// with its files and queued mail, and the tombstone is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_cut_between_its_file_moves_and_its_commit_is_finished_at_the_next_start() {
    let f = fixture(&[]).await;
    for agent in ["x1", "x2"] {
        f.hive.spawn(agent, None).await.unwrap();
        std::fs::create_dir_all(f.dir.path().join(format!("agents/{agent}/state"))).unwrap();
        std::fs::write(
            f.dir.path().join(format!("agents/{agent}/state/notes.md")),
            format!("{agent} remembers"),
        )
        .unwrap();
        f.hive
            .send(
                &Sender::Operator,
                &Recipient::Agent(name(agent)),
                "kept for later".into(),
                None,
            )
            .await
            .unwrap();
    }
    let incarnation = |agent: &str| -> i64 {
        f.db()
            .query_row(
                "SELECT incarnation FROM agents WHERE name = ?1",
                [agent],
                |r| r.get(0),
            )
            .unwrap()
    };
    let (x1, x2) = (incarnation("x1"), incarnation("x2"));
    let t1 = f.hive.destroy(&name("x1"), false).await.unwrap();
    let t2 = f.hive.destroy(&name("x2"), false).await.unwrap();
    f.hive.close();
    f.shutdown.cancel();
    let Fixture { dir, hive, .. } = f;
    drop(hive);
    // What a restore leaves when the daemon dies after its intent: x1 with one part moved back,
    // x2 with every part moved back; neither committed.
    let root = dir.path();
    let (tomb1, tomb2) = (
        root.join("tombstones").join(t1.as_str()),
        root.join("tombstones").join(t2.as_str()),
    );
    std::fs::write(tomb1.join(".restoring"), "").unwrap();
    std::fs::write(tomb2.join(".restoring"), "").unwrap();
    std::fs::rename(tomb1.join("agents"), root.join("agents/x1")).unwrap();
    for (part, live) in [
        ("agents", "agents/x2"),
        ("secrets", "secrets/x2"),
        ("applied", "applied/x2"),
    ] {
        if tomb2.join(part).exists() {
            std::fs::rename(tomb2.join(part), root.join(live)).unwrap();
        }
    }

    let hive = Hive::open(StateDir::new(root), Config::default())
        .await
        .unwrap();
    for (agent, was, tomb) in [("x1", x1, &tomb1), ("x2", x2, &tomb2)] {
        assert!(!tomb.exists(), "{} is still there", tomb.display());
        assert_eq!(
            std::fs::read_to_string(root.join(format!("agents/{agent}/state/notes.md"))).unwrap(),
            format!("{agent} remembers")
        );
        assert!(root.join(format!("applied/{agent}/HEAD")).exists());
        let record = hive.agent(&name(agent)).unwrap();
        assert_eq!(
            record.incarnation, was,
            "{agent} came back as a new incarnation"
        );
        let got = hive
            .recv(&Inbox::Agent(name(agent)), RecvLimits::new(0, 32).unwrap())
            .await
            .unwrap();
        assert_eq!(got.len(), 1, "{agent}: {got:?}");
        assert_eq!(got[0].body, "kept for later");
    }
    assert!(hive.tombstones().unwrap().is_empty());
    hive.close();
}

/// A pause belongs to the incarnation: it outlives a daemon restart and a destroy + restore, a
/// name spawned again starts unpaused, and pausing an unknown agent changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_outlives_a_restart_and_a_restore_but_not_a_new_incarnation() {
    use broker::containers::Actor;
    let f = fixture(&[]).await;
    f.hive.spawn("x1", None).await.unwrap();
    f.hive.spawn("x2", None).await.unwrap();
    let audit = f.count("SELECT count(*) FROM audit");
    let e = f
        .hive
        .pause_agent(Actor::Operator, &name("nobody"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "unknown_agent", "{e}");
    assert_eq!(f.count("SELECT count(*) FROM paused"), 0);
    assert_eq!(f.count("SELECT count(*) FROM audit"), audit);
    for agent in ["x1", "x2"] {
        f.hive
            .pause_agent(Actor::Operator, &name(agent))
            .await
            .unwrap();
    }
    f.hive.close();
    f.shutdown.cancel();
    let Fixture { dir, hive, .. } = f;
    drop(hive);

    let f = common::open(dir, Config::default()).await;
    assert!(f.hive.is_paused(&name("x1")) && f.hive.is_paused(&name("x2")));
    let t1 = f.hive.destroy(&name("x1"), false).await.unwrap();
    f.hive.destroy(&name("x2"), false).await.unwrap();
    f.hive.restore(t1.as_str()).await.unwrap();
    f.hive.spawn("x2", None).await.unwrap();
    assert!(
        f.hive.is_paused(&name("x1")),
        "the restored x1 lost its pause"
    );
    assert!(
        !f.hive.is_paused(&name("x2")),
        "the new x2 inherited a pause"
    );
    assert!(f.hive.agent_run(&name("x1")).unwrap().paused);
    f.hive.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_belong_to_the_incarnation_they_were_asked_for() {
    use broker::approvals::SpawnRequest;
    use broker::bus::Event;

    let f = fixture(&[]).await;
    let mut events = f.hive.subscribe();
    let manager = AgentName::manager();
    let SpawnRequest::Draft(draft) = f.hive.request_spawn(&manager, "x1", None).await.unwrap()
    else {
        panic!("no draft")
    };
    let queue = || async {
        match f
            .hive
            .request_spawn(&manager, "x1", Some(&draft.head))
            .await
            .unwrap()
        {
            SpawnRequest::Queued(a) => a.id,
            SpawnRequest::Draft(_) => panic!("not queued"),
        }
    };
    let (first, second) = (queue().await, queue().await);
    f.hive.approve(first).await.unwrap();
    f.hive.destroy(&name("x1"), false).await.unwrap();

    // The second request's pin went into the tombstone with the old x1's applied repo.
    let snapshot = || {
        (
            f.count("SELECT count(*) FROM agents"),
            f.count("SELECT count(*) FROM deploys"),
            f.count("SELECT count(*) FROM approvals WHERE status = 'pending'"),
            f.dir.path().join("applied/x1").exists(),
        )
    };
    let before = snapshot();
    let e = f.hive.approve(second).await.unwrap_err();
    assert_eq!(e.code(), "conflict", "{e}");
    assert!(e.to_string().contains("nothing was changed"), "{e}");
    assert_eq!(snapshot(), before);

    // A new x1: the old one's decided approval is not its, and the start-up reconcile agrees.
    f.hive.spawn("x1", None).await.unwrap();
    f.hive.reconcile_applied().await.unwrap();
    assert!(f.hive.faults().is_empty(), "{:?}", f.hive.faults());

    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        match event {
            Event::AgentCreated { agent } => seen.push(format!("created {}", agent.name)),
            Event::AgentRemoved { agent, .. } => seen.push(format!("removed {agent}")),
            _ => {}
        }
    }
    assert_eq!(seen, ["created x1", "removed x1", "created x1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_from_before_incarnations_migrates_and_keeps_its_agents_mail() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = rusqlite::Connection::open(dir.path().join("hive.db")).unwrap();
        for sql in [
            include_str!("../src/migrations/0001_core.sql"),
            include_str!("../src/migrations/0002_questions_reminders_turn_events.sql"),
            include_str!("../src/migrations/0003_approvals_deploys_audit.sql"),
            include_str!("../src/migrations/0004_drop_sender_index.sql"),
        ] {
            db.execute_batch(sql).unwrap();
        }
        db.execute_batch(
            "PRAGMA user_version = 4;
             INSERT INTO agents (name, kind, created_at) VALUES ('manager', 'manager', 1), ('bob', 'agent', 2);
             INSERT INTO messages (sender, recipient, body, sent_at) VALUES ('operator', 'bob', 'kept', 3);
             INSERT INTO reminders (agent, body, created_at, due_at) VALUES ('bob', 'due', 3, 0);",
        )
        .unwrap();
    }
    let state = StateDir::new(dir.path());
    state.create().unwrap();
    let hive = Hive::open(state, Config::default()).await.unwrap();
    let bob = hive.agent(&name("bob")).unwrap();
    assert!(bob.incarnation > 0);
    assert_ne!(
        bob.incarnation,
        hive.agent(&AgentName::manager()).unwrap().incarnation
    );
    hive.fire_due_jobs().await.unwrap();
    let mut got: Vec<String> = hive
        .recv(&Inbox::Agent(name("bob")), RecvLimits::new(0, 32).unwrap())
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.body)
        .collect();
    got.sort();
    assert_eq!(got, ["due", "kept"]);
    hive.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destroyed_agents_queued_mail_does_not_fill_the_inbox_quota_of_a_new_one() {
    let mut config = Config::default();
    config.mailbox.max_queued_per_inbox = 3;
    let f = open(tempfile::tempdir().unwrap(), config).await;
    f.hive.spawn("x1", None).await.unwrap();
    let to = Recipient::Agent(name("x1"));
    let send = |body: &'static str| f.hive.send(&Sender::Operator, &to, body.into(), None);
    for _ in 0..3 {
        send("for the old one").await.unwrap();
    }
    assert_eq!(send("one too many").await.unwrap_err().code(), "inbox_full");
    // The old x1's three queued messages wait in its tombstone (for a restore).
    f.hive.destroy(&name("x1"), false).await.unwrap();
    f.hive.spawn("x1", None).await.unwrap();
    for _ in 0..3 {
        send("for the new one").await.unwrap();
    }
    assert_eq!(send("one too many").await.unwrap_err().code(), "inbox_full");
    assert_eq!(
        f.count("SELECT count(*) FROM messages WHERE recipient = 'x1' AND state = 'queued'"),
        6,
        "the old one's mail is kept, the new one's quota is its own"
    );
    // The hive-wide counts still count both.
    assert_eq!(f.hive.message_counts().await.unwrap().queued, 6);
}

/// The mail a destroyed agent left queued (kept for a restore) is not the dead letters of a new
/// agent of the same name and cannot be redirected or dropped as one; the new agent's own mail
/// is. (Its liveness backlog: `liveness::tests::the_backlog_is_the_live_incarnations_alone`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destroyed_agents_queued_mail_is_not_the_dead_letters_of_a_new_one() {
    let mut config = Config::default();
    config.mailbox.dead_letter_after_seconds = 0;
    let f = open(tempfile::tempdir().unwrap(), config).await;
    f.hive.spawn("x1", None).await.unwrap();
    let to = Recipient::Agent(name("x1"));
    let old = f
        .hive
        .send(&Sender::Operator, &to, "for the old one".into(), None)
        .await
        .unwrap()[0];
    f.hive.destroy(&name("x1"), false).await.unwrap();
    f.hive.spawn("x1", None).await.unwrap();

    // Not running: nothing of the new x1's is dead, the old one's mail is not its.
    assert!(f.hive.dead_letters().await.unwrap().is_empty());
    let snapshot = || {
        (
            f.count("SELECT count(*) FROM messages"),
            f.count("SELECT count(*) FROM messages WHERE state = 'queued'"),
            f.count("SELECT count(*) FROM audit"),
        )
    };
    let before = snapshot();
    let e = f
        .hive
        .redirect_dead_letter(old, "manager")
        .await
        .unwrap_err();
    assert_eq!(e.code(), "conflict", "{e}");
    assert!(e.to_string().contains("not a dead letter"), "{e}");
    let e = f.hive.drop_dead_letter(old).await.unwrap_err();
    assert_eq!(e.code(), "conflict", "{e}");
    assert_eq!(snapshot(), before);

    // Its own mail is a dead letter (it is not running).
    let new = f
        .hive
        .send(&Sender::Operator, &to, "for the new one".into(), None)
        .await
        .unwrap()[0];
    let dead: Vec<i64> = f
        .hive
        .dead_letters()
        .await
        .unwrap()
        .iter()
        .map(|d| d.message.id)
        .collect();
    assert_eq!(dead, [new]);
}

/// A paused agent's mail is dead for that reason, whether its harness runs or not: the operator
/// reads `paused` (and resumes it), not `not running`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_agents_dead_letters_say_paused_even_when_it_is_not_running() {
    let mut config = Config::default();
    config.mailbox.dead_letter_after_seconds = 0;
    let f = open(tempfile::tempdir().unwrap(), config).await;
    f.hive.spawn("x1", None).await.unwrap();
    f.hive
        .send(
            &Sender::Operator,
            &Recipient::Agent(name("x1")),
            "work".into(),
            None,
        )
        .await
        .unwrap();
    let why = |dead: Vec<broker::dead_letters::DeadLetter>| -> Vec<&'static str> {
        dead.iter()
            .filter(|d| d.message.to == "x1")
            .map(|d| d.why)
            .collect()
    };
    assert_eq!(why(f.hive.dead_letters().await.unwrap()), ["not running"]);
    f.hive
        .pause_agent(broker::containers::Actor::Operator, &name("x1"))
        .await
        .unwrap();
    assert_eq!(why(f.hive.dead_letters().await.unwrap()), ["paused"]);
}
