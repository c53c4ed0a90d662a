//! Config repos and approvals against real git repos; the manager's commits are made with the git
//! CLI, the way the manager makes them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use broker::approvals::SpawnRequest;
use broker::config::Config;
use broker::config_repo::ConfigRepos;
use broker::mailbox::RecvLimits;
use broker::names::Inbox;
use common::*;

impl Fixture {
    fn proposed(&self, agent: &str) -> PathBuf {
        self.dir.path().join("agents").join(agent).join("config")
    }

    fn applied(&self, agent: &str) -> PathBuf {
        self.dir.path().join("applied").join(agent)
    }

    /// The manager edits agent.nix and commits; returns the full sha.
    fn commit(&self, agent: &str, agent_nix: &str, message: &str) -> String {
        let repo = self.proposed(agent);
        std::fs::write(repo.join("agent.nix"), agent_nix).unwrap();
        git(&repo, &["commit", "-qam", message]);
        git(&repo, &["rev-parse", "HEAD"])
    }

    fn applied_head(&self, agent: &str) -> String {
        git(&self.applied(agent), &["rev-parse", "refs/heads/main"])
    }

    fn applied_tags(&self, agent: &str) -> Vec<String> {
        let mut tags: Vec<String> = git(&self.applied(agent), &["tag", "--list"])
            .lines()
            .map(str::to_owned)
            .collect();
        tags.sort();
        tags
    }

    /// Every table the approval flow writes, and every ref of every repo: "nothing changed".
    async fn snapshot(&self) -> String {
        let db = open_db(&self.hive)
            .query_row(
                "SELECT (SELECT count(*) FROM approvals) || '/' || (SELECT count(*) FROM deploys)
                 || '/' || (SELECT count(*) FROM agents) || '/' || (SELECT count(*) FROM audit)
                 || '/' || (SELECT count(*) FROM messages)
                 || '/' || (SELECT coalesce(group_concat(id || status, ','), '') FROM approvals)",
                [],
                |r| r.get::<_, String>(0),
            )
            .unwrap();
        let mut refs = String::new();
        for base in ["applied", "agents"] {
            let Ok(entries) = std::fs::read_dir(self.dir.path().join(base)) else {
                continue;
            };
            let mut names: Vec<_> = entries.flatten().map(|e| e.file_name()).collect();
            names.sort();
            for n in names {
                let repo = if base == "applied" {
                    self.dir.path().join(base).join(&n)
                } else {
                    self.dir.path().join(base).join(&n).join("config")
                };
                if repo.exists() {
                    refs.push_str(&git(
                        &repo,
                        &["for-each-ref", "--format=%(refname) %(objectname)"],
                    ));
                }
            }
        }
        format!("{db}\n{refs}")
    }

    async fn manager_messages(&self) -> Vec<serde_json::Value> {
        let got = self
            .hive
            .recv(&Inbox::Agent(manager()), RecvLimits::new(0, 32).unwrap())
            .await
            .unwrap();
        got.iter()
            .map(|m| serde_json::from_str(&m.body).unwrap())
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manager_exists_with_its_repos_from_the_first_start() {
    let f = fixture(&[]).await;
    assert!(f.proposed("manager").join("agent.nix").exists());
    let head = f.applied_head("manager");
    assert_eq!(head, git(&f.proposed("manager"), &["rev-parse", "HEAD"]));
    assert_eq!(f.hive.deploys(&manager()).await.unwrap().len(), 1);
    assert_eq!(f.hive.audit(None, 10).await.unwrap()[0].action, "spawn");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draft_commit_request_approve_then_apply_a_change() {
    let f = fixture(&[]).await;
    // 1. A draft from the template.
    let SpawnRequest::Draft(draft) = f.hive.request_spawn(&manager(), "bob", None).await.unwrap()
    else {
        panic!("expected a draft")
    };
    assert_eq!(draft.repo, "/agents/bob/config");
    assert!(draft.next.contains("request_spawn"), "{}", draft.next);
    assert!(
        f.hive.agent(&name("bob")).is_none(),
        "a draft is not an agent"
    );
    // 2. The manager edits and commits with git.
    let v1 = f.commit(
        "bob",
        "{ ... }: { hyperhive.model = \"m1\"; }\n",
        "bob: first config",
    );
    // 3. Request: a Spawn approval showing the whole agent.nix.
    let SpawnRequest::Queued(spawn) = f
        .hive
        .request_spawn(&manager(), "bob", Some(&v1[..10]))
        .await
        .unwrap()
    else {
        panic!("expected a queued approval")
    };
    assert_eq!(spawn.kind, "spawn");
    assert_eq!(spawn.commit, v1);
    assert_eq!(spawn.status, "pending");
    assert!(
        spawn
            .diff
            .as_deref()
            .unwrap()
            .contains("hyperhive.model = \"m1\"")
    );
    assert!(
        f.applied_tags("bob")
            .contains(&format!("proposal/{}", spawn.id))
    );
    // 4. Approve.
    let approved = f.hive.approve(spawn.id).await.unwrap();
    assert_eq!(approved.status, "approved");
    assert!(f.hive.agent(&name("bob")).is_some());
    assert!(f.dir.path().join("run/agents/bob/mcp.sock").exists());
    assert_eq!(f.applied_head("bob"), v1);
    assert_eq!(
        f.applied_tags("bob"),
        [
            format!("approved/{}", spawn.id),
            format!("proposal/{}", spawn.id)
        ]
    );
    let told = f.manager_messages().await;
    assert_eq!(told[0]["event"], "approval_resolved");
    assert_eq!(told[0]["status"], "approved");
    assert_eq!(told[0]["id"], spawn.id);

    // 5. A change: Apply with a diff against the applied HEAD.
    let v2 = f.commit(
        "bob",
        "{ ... }: { hyperhive.model = \"m2\"; }\n",
        "bob: model m2",
    );
    let apply = f
        .hive
        .request_apply(&manager(), "bob", &v2[..7], "switch bob to m2".into())
        .await
        .unwrap();
    assert_eq!(apply.kind, "apply");
    assert_eq!(apply.base.as_deref(), Some(v1.as_str()));
    let diff = apply.diff.as_deref().unwrap();
    assert!(
        diff.contains("-{ ... }: { hyperhive.model = \"m1\"; }"),
        "{diff}"
    );
    assert!(
        diff.contains("+{ ... }: { hyperhive.model = \"m2\"; }"),
        "{diff}"
    );
    assert_eq!(
        apply.stat,
        "1 files changed, 1 insertions(+), 1 deletions(-)"
    );
    assert_eq!(
        f.applied_head("bob"),
        v1,
        "nothing changes before the operator approves"
    );
    f.hive.approve(apply.id).await.unwrap();
    assert_eq!(f.applied_head("bob"), v2);
    let history = f.hive.deploys(&name("bob")).await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[1].approval, Some(apply.id));

    // 6. Rollback: a new deploy of the first commit.
    let back = f.hive.rollback(&name("bob"), history[0].id).await.unwrap();
    assert_eq!(back.kind, "rollback");
    assert_eq!(f.applied_head("bob"), v1);
    assert_eq!(f.hive.verify_audit().await.unwrap().first_broken, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_force_push_after_the_request_changes_nothing_approved() {
    let f = fixture(&[]).await;
    f.hive.spawn("bob", None).await.unwrap();
    let good = f.commit("bob", "{ ... }: { hyperhive.model = \"good\"; }\n", "good");
    let request = f
        .hive
        .request_apply(&manager(), "bob", &good, "the good one".into())
        .await
        .unwrap();
    // The manager rewrites history: the requested commit is on no branch any more and gc'd refs.
    let repo = f.proposed("bob");
    git(&repo, &["reset", "-q", "--hard", "HEAD~1"]);
    f.commit("bob", "{ ... }: { hyperhive.model = \"evil\"; }\n", "evil");
    git(&repo, &["reflog", "expire", "--expire=now", "--all"]);
    git(&repo, &["gc", "-q", "--prune=now"]);
    assert!(
        Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(["cat-file", "-e", &good])
            .status()
            .map(|s| !s.success())
            .unwrap()
    );
    f.hive.approve(request.id).await.unwrap();
    assert_eq!(f.applied_head("bob"), good);
    let applied = ConfigRepos::new(f.hive.state_dir().clone())
        .applied_agent_nix(&name("bob"))
        .unwrap()
        .unwrap();
    assert!(applied.contains("good"), "{applied}");
}

/// Writes two blobs whose ids share the 7-hex-digit prefix `ba64e11` (found once by searching
/// "ambiguity N" contents) and returns that prefix.
fn plant_ambiguous_prefix(repo: &Path) -> String {
    let repo = git2::Repository::open(repo).unwrap();
    let ids: Vec<String> = [7282, 48501]
        .iter()
        .map(|i| {
            repo.blob(format!("ambiguity {i}\n").as_bytes())
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids[0][..7], ids[1][..7], "{ids:?}");
    ids[0][..7].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_and_decisions_are_refused_and_change_nothing() {
    let f = fixture(&[]).await;
    f.hive.spawn("bob", None).await.unwrap();
    let real = f.commit("bob", "{ ... }: { }\n", "a change");
    let ambiguous = plant_ambiguous_prefix(&f.proposed("bob"));
    let pending = f
        .hive
        .request_apply(&manager(), "bob", &real, "pending one".into())
        .await
        .unwrap();
    let denied = f
        .hive
        .request_apply(&manager(), "bob", &real, "to deny".into())
        .await
        .unwrap();
    f.hive
        .deny(denied.id, Some("not now".into()))
        .await
        .unwrap();
    let before = f.snapshot().await;

    let m = manager();
    let cases: Vec<(&str, broker::Error)> = vec![
        (
            "not_found",
            f.hive
                .request_apply(&m, "bob", "1234567", "x".into())
                .await
                .unwrap_err(),
        ),
        (
            "not_found",
            f.hive
                .request_apply(&m, "bob", &"a".repeat(40), "x".into())
                .await
                .unwrap_err(),
        ),
        (
            "invalid_argument",
            f.hive
                .request_apply(&m, "bob", "xyz1234", "x".into())
                .await
                .unwrap_err(),
        ),
        (
            "invalid_argument",
            f.hive
                .request_apply(&m, "bob", &real[..6], "x".into())
                .await
                .unwrap_err(),
        ),
        (
            "invalid_argument",
            f.hive
                .request_apply(&m, "bob", &format!("{real}0"), "x".into())
                .await
                .unwrap_err(),
        ),
        (
            "invalid_argument",
            f.hive
                .request_apply(&m, "bob", "HEAD~1", "x".into())
                .await
                .unwrap_err(),
        ),
        (
            "invalid_argument",
            f.hive
                .request_apply(&m, "bob", &ambiguous, "x".into())
                .await
                .unwrap_err(),
        ),
        (
            "invalid_argument",
            f.hive
                .request_apply(&m, "bob", &real, "  ".into())
                .await
                .unwrap_err(),
        ),
        (
            "unknown_agent",
            f.hive
                .request_apply(&m, "carol", &real, "x".into())
                .await
                .unwrap_err(),
        ),
        (
            "invalid_name",
            f.hive
                .request_apply(&m, "../bob", &real, "x".into())
                .await
                .unwrap_err(),
        ),
        (
            "invalid_name",
            f.hive.request_spawn(&m, "Bob", None).await.unwrap_err(),
        ),
        (
            "conflict",
            f.hive.request_spawn(&m, "bob", None).await.unwrap_err(),
        ),
        ("conflict", f.hive.approve(denied.id).await.unwrap_err()),
        (
            "conflict",
            f.hive
                .deny(denied.id, Some("again".into()))
                .await
                .unwrap_err(),
        ),
        ("not_found", f.hive.approve(9999).await.unwrap_err()),
        (
            "invalid_argument",
            f.hive.deny(pending.id, None).await.unwrap_err(),
        ),
        (
            "invalid_argument",
            f.hive
                .deny(pending.id, Some("   ".into()))
                .await
                .unwrap_err(),
        ),
        (
            "not_found",
            f.hive.rollback(&name("bob"), 9999).await.unwrap_err(),
        ),
        (
            "unknown_agent",
            f.hive.rollback(&name("carol"), 1).await.unwrap_err(),
        ),
        ("conflict", f.hive.spawn("bob", None).await.unwrap_err()),
        ("invalid_name", f.hive.spawn("a/b", None).await.unwrap_err()),
        (
            "invalid_argument",
            f.hive.destroy(&manager(), false).await.unwrap_err(),
        ),
    ];
    for (code, err) in &cases {
        assert_eq!(err.code(), *code, "{err}");
    }
    let ambiguity = cases[6].1.to_string();
    assert!(ambiguity.contains("ambiguous"), "{ambiguity}");
    assert!(
        cases[0]
            .1
            .to_string()
            .contains("commit '1234567' in agents/bob/config"),
        "{}",
        cases[0].1
    );
    assert!(
        cases[12].1.to_string().contains("is denied already"),
        "{}",
        cases[12].1
    );
    assert_eq!(f.snapshot().await, before);

    // Approving twice: the second is refused, nothing changes.
    f.hive.approve(pending.id).await.unwrap();
    let after_first = f.snapshot().await;
    assert_eq!(
        f.hive.approve(pending.id).await.unwrap_err().code(),
        "conflict"
    );
    assert_eq!(f.snapshot().await, after_first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_note_is_optional_when_the_config_says_so() {
    let mut config = Config::default();
    config.approvals.deny_requires_note = false;
    let f = open(tempfile::tempdir().unwrap(), config).await;
    f.hive.spawn("bob", None).await.unwrap();
    let c = f.commit("bob", "{ ... }: { }\n", "x");
    let a = f
        .hive
        .request_apply(&manager(), "bob", &c, "x".into())
        .await
        .unwrap();
    let denied = f.hive.deny(a.id, None).await.unwrap();
    assert_eq!(denied.status, "denied");
    assert!(f.applied_tags("bob").contains(&format!("denied/{}", a.id)));
    assert_eq!(f.manager_messages().await[0]["status"], "denied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_approvers_at_once_exactly_one_wins() {
    let f = fixture(&[]).await;
    f.hive.spawn("bob", None).await.unwrap();
    let c = f.commit("bob", "{ ... }: { }\n", "x");
    for round in 0..5 {
        let a = f
            .hive
            .request_apply(&manager(), "bob", &c, format!("round {round}"))
            .await
            .unwrap();
        let (h1, h2) = (f.hive.clone(), f.hive.clone());
        // Two operators approving the same id, or one approving while another denies.
        let (r1, r2) = if round % 2 == 0 {
            let (r1, r2) = tokio::join!(
                tokio::spawn(async move { h1.approve(a.id).await }),
                tokio::spawn(async move { h2.approve(a.id).await })
            );
            (r1.unwrap(), r2.unwrap())
        } else {
            let (r1, r2) = tokio::join!(
                tokio::spawn(async move { h1.approve(a.id).await }),
                tokio::spawn(async move { h2.deny(a.id, Some("no".into())).await })
            );
            (r1.unwrap(), r2.unwrap())
        };
        assert!(r1.is_ok() != r2.is_ok(), "exactly one wins: {r1:?} {r2:?}");
        let loser = r1.err().or(r2.err()).unwrap();
        assert_eq!(loser.code(), "conflict");
    }
    let deploys = f
        .hive
        .approvals(Some("approved".into()), None)
        .await
        .unwrap()
        .len();
    let audit_approves = f
        .hive
        .audit(None, 100)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.action == "approve")
        .count();
    assert_eq!(deploys, audit_approves);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_restore_purge_and_hostile_tombstone_names() {
    let f = fixture(&[]).await;
    f.hive.spawn("bob", None).await.unwrap();
    let v = f.applied_head("bob");
    std::fs::create_dir_all(f.dir.path().join("agents/bob/state")).unwrap();
    std::fs::write(f.dir.path().join("agents/bob/state/notes.md"), "remember").unwrap();

    let id = f.hive.destroy(&name("bob"), false).await.unwrap();
    assert!(f.hive.agent(&name("bob")).is_none());
    assert!(!f.dir.path().join("agents/bob").exists());
    assert!(
        !f.dir.path().join("run/agents/bob").exists(),
        "sockets removed"
    );
    let tomb = f.dir.path().join("tombstones").join(id.as_str());
    assert!(tomb.join("agents/state/notes.md").exists());
    assert!(tomb.join("applied/HEAD").exists());
    assert_eq!(f.hive.tombstones().unwrap()[0].agent, "bob");

    // Hostile names: refused, and nothing outside the state dir is touched.
    let outside = tempfile::tempdir().unwrap();
    let precious = outside.path().join("precious");
    std::fs::write(&precious, "keep me").unwrap();
    let planted = "eve-20260101T000000Z";
    std::os::unix::fs::symlink(
        outside.path(),
        f.dir.path().join("tombstones").join(planted),
    )
    .unwrap();
    let before = f.snapshot().await;
    let outside_str = outside.path().to_str().unwrap().to_owned();
    for bad in [
        "..",
        "../..",
        "x/../../etc",
        "/etc",
        outside_str.as_str(),
        "bob",
        "bob-x",
    ] {
        assert!(f.hive.restore(bad).await.is_err(), "{bad}");
        assert!(f.hive.purge(bad).await.is_err(), "{bad}");
    }
    let e = f.hive.purge(planted).await.unwrap_err();
    assert_eq!(e.code(), "unsafe_path", "{e}");
    let e = f.hive.restore(planted).await.unwrap_err();
    assert_eq!(e.code(), "unsafe_path", "{e}");
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
    assert_eq!(f.snapshot().await, before);
    std::fs::remove_file(f.dir.path().join("tombstones").join(planted)).unwrap();

    // A symlink planted where an agent's files live (the manager can write agents/): a destroy
    // refuses before changing anything.
    f.hive.spawn("carol", None).await.unwrap();
    std::fs::rename(
        f.dir.path().join("agents/carol"),
        f.dir.path().join("carol-real"),
    )
    .unwrap();
    std::os::unix::fs::symlink(outside.path(), f.dir.path().join("agents/carol")).unwrap();
    let before = f.snapshot().await;
    assert_eq!(
        f.hive
            .destroy(&name("carol"), true)
            .await
            .unwrap_err()
            .code(),
        "unsafe_path"
    );
    assert_eq!(f.snapshot().await, before);
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");

    // Restore brings bob back, with his files and his applied config.
    f.hive.restore(id.as_str()).await.unwrap();
    assert!(f.hive.agent(&name("bob")).is_some());
    assert_eq!(
        std::fs::read_to_string(f.dir.path().join("agents/bob/state/notes.md")).unwrap(),
        "remember"
    );
    assert_eq!(f.applied_head("bob"), v);
    assert!(f.dir.path().join("run/agents/bob/mcp.sock").exists());
    assert!(f.hive.tombstones().unwrap().is_empty());
    assert_eq!(
        f.hive.restore(id.as_str()).await.unwrap_err().code(),
        "not_found"
    );

    // Destroy and purge at once; then purge of a kept one.
    f.hive.destroy(&name("bob"), true).await.unwrap();
    assert!(f.hive.tombstones().unwrap().is_empty());
    assert!(!f.dir.path().join("applied/bob").exists());
    let actions: Vec<String> = f
        .hive
        .audit(Some("bob".into()), 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(actions, ["spawn", "destroy", "restore", "destroy"]);
    assert_eq!(f.hive.verify_audit().await.unwrap().first_broken, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_names_the_edited_row() {
    let f = fixture(&[]).await;
    f.hive.spawn("bob", None).await.unwrap();
    f.hive.spawn("carol", None).await.unwrap();
    f.hive.destroy(&name("carol"), true).await.unwrap();
    let v = f.hive.verify_audit().await.unwrap();
    assert_eq!(v.rows, 4);
    assert_eq!(v.first_broken, None);
    let db = rusqlite::Connection::open(f.dir.path().join("hive.db")).unwrap();
    db.execute("UPDATE audit SET actor = 'manager' WHERE id = 3", [])
        .unwrap();
    assert_eq!(f.hive.verify_audit().await.unwrap().first_broken, Some(3));
    db.execute("UPDATE audit SET actor = 'operator' WHERE id = 3", [])
        .unwrap();
    assert_eq!(f.hive.verify_audit().await.unwrap().first_broken, None);
    db.execute("DELETE FROM audit WHERE id = 2", []).unwrap();
    assert_eq!(f.hive.verify_audit().await.unwrap().first_broken, Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_between_the_decision_and_git_the_repo_follows_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let f = open(dir, Config::default()).await;
    f.hive.spawn("bob", None).await.unwrap();
    let v1 = f.applied_head("bob");
    let v2 = f.commit("bob", "{ ... }: { hyperhive.model = \"m2\"; }\n", "m2");
    let a = f
        .hive
        .request_apply(&manager(), "bob", &v2, "m2".into())
        .await
        .unwrap();
    f.hive.approve(a.id).await.unwrap();
    // As if the daemon died after the commit and before git: the repo is back at v1, untagged.
    git(&f.applied("bob"), &["update-ref", "refs/heads/main", &v1]);
    git(
        &f.applied("bob"),
        &["tag", "-d", &format!("approved/{}", a.id)],
    );
    f.hive.close();
    let Fixture { dir, .. } = f;
    assert_eq!(dir.path(), path);
    let f = open(dir, Config::default()).await;
    assert_eq!(f.applied_head("bob"), v2);
    assert!(
        f.applied_tags("bob")
            .contains(&format!("approved/{}", a.id))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_sees_only_its_own_sockets() {
    let f = fixture(&[]).await;
    f.hive.spawn("bob", None).await.unwrap();
    // /run/hive inside bob's container is this directory.
    let mut inside: Vec<String> = std::fs::read_dir(f.dir.path().join("run/agents/bob"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    inside.sort();
    assert_eq!(inside, ["gateway.sock", "harness.sock", "mcp.sock"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_files_left_by_a_killed_daemon_are_cleared_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let f = open(dir, Config::default()).await;
    f.hive.spawn("bob", None).await.unwrap();
    let c = f.commit(
        "bob",
        "{ ... }: { hyperhive.model = \"after\"; }\n",
        "after",
    );
    // As if killed in the middle of ref updates in both repos.
    std::fs::create_dir_all(f.applied("bob").join("refs/tags/proposal")).unwrap();
    std::fs::write(f.applied("bob").join("refs/tags/proposal/1.lock"), "").unwrap();
    std::fs::write(f.applied("bob").join("refs/heads/main.lock"), "").unwrap();
    std::fs::create_dir_all(f.proposed("bob").join(".git/refs/hyperhive")).unwrap();
    std::fs::write(f.proposed("bob").join(".git/refs/hyperhive/pin.lock"), "").unwrap();
    // Locks in the proposed repo are not ours to remove: the broker never writes there, and a
    // "lock" there may be a planted symlink.
    std::fs::write(f.proposed("bob").join(".git/index.lock"), "").unwrap();
    f.hive.close();
    let Fixture { dir, .. } = f;
    let f = open(dir, Config::default()).await;
    let a = f
        .hive
        .request_apply(&manager(), "bob", &c, "after a crash".into())
        .await
        .unwrap();
    f.hive.approve(a.id).await.unwrap();
    assert_eq!(f.applied_head("bob"), c);
    assert!(f.proposed("bob").join(".git/index.lock").exists());
    assert!(
        f.proposed("bob")
            .join(".git/refs/hyperhive/pin.lock")
            .exists()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_copies_left_by_a_killed_daemon_are_cleared_at_start_and_nothing_outside() {
    let dir = tempfile::tempdir().unwrap();
    let f = open(dir, Config::default()).await;
    f.hive.close();
    f.shutdown.cancel();
    let Fixture { dir, hive, .. } = f;
    drop(hive);
    // As if killed while a request's objects were being copied; one entry is a symlink out.
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("keep"), "precious").unwrap();
    let staging = dir.path().join("staging");
    std::fs::create_dir_all(staging.join("bob-x1y2/objects/ab")).unwrap();
    std::fs::write(staging.join("bob-x1y2/objects/ab/cdef"), "object").unwrap();
    std::os::unix::fs::symlink(outside.path(), staging.join("bob-x1y2/out")).unwrap();
    std::os::unix::fs::symlink(outside.path(), staging.join("link-out")).unwrap();

    let _f = open(dir, Config::default()).await;
    let left: Vec<_> = std::fs::read_dir(&staging).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(
        std::fs::read_to_string(outside.path().join("keep")).unwrap(),
        "precious"
    );
}
