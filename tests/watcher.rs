//! The watcher through the real daemon: helper events in the manager's inbox (read from the
//! sqlite file), restarts with backoff and the crash-loop stop (the process runtime running the
//! real `hive-agent serve` from real minimal-builder images), credentials seen through inotify,
//! and no event told twice across daemon restarts.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use testkit::tools;

/// How long a build plus a start may take on a slow CI machine.
const LIMIT: Duration = Duration::from_secs(120);

const PROCESS: &str = "[runtime]\nkind = \"process\"\nstop_timeout_seconds = 5\n";

/// nix and busybox for real builds; `None` (skip) only when a person allowed it.
fn real_builds() -> Option<()> {
    tools::require("nix-build", tools::nix_build())?;
    tools::require("busybox", tools::busybox())?;
    tools::require("hive-agent", hive_agent())?;
    Some(())
}

fn hive_agent() -> Option<PathBuf> {
    let beside = Path::new(HIVE).with_file_name("hive-agent");
    beside.is_file().then_some(beside)
}

fn agents(state: &Path) -> Vec<Value> {
    serde_json::from_str(&cli_ok(state, &["agents", "--json"])).unwrap()
}

fn agent_view(state: &Path, agent: &str) -> Value {
    agents(state)
        .into_iter()
        .find(|a| a["name"] == agent)
        .unwrap_or(Value::Null)
}

/// Waits until `agent` runs with its harness connected (and, when given, another pid than
/// `not_pid`); returns its pid.
fn wait_up(state: &Path, agent: &str, not_pid: Option<u64>) -> u64 {
    let mut last = Value::Null;
    let up = eventually(LIMIT, || {
        last = agent_view(state, agent)["run"].clone();
        last["up"] == true && last["state"] == "running" && last["pid"].as_u64() != not_pid
    });
    assert!(
        up,
        "{agent} did not come up: {last}\nlog:\n{}",
        text(&cli(state, &["logs", agent]).stdout)
    );
    last["pid"].as_u64().unwrap()
}

/// The helper events in the manager's inbox named `event` about `agent`: (sent_at, body).
fn told(state: &Path, event: &str, agent: &str) -> Vec<(i64, Value)> {
    let db = open_db(state);
    let mut stmt = db
        .prepare(
            "SELECT sent_at, body FROM messages
             WHERE sender = 'system' AND recipient = 'manager' ORDER BY id",
        )
        .unwrap();
    stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .filter_map(|(at, body)| Some((at, serde_json::from_str::<Value>(&body).ok()?)))
        .filter(|(_, b)| b["event"] == event && b["agent"] == agent)
        .collect()
}

/// Waits until `n` events `event` about `agent` were told; returns them all.
fn wait_told(state: &Path, event: &str, agent: &str, n: usize) -> Vec<(i64, Value)> {
    let mut got = Vec::new();
    let ok = eventually(LIMIT, || {
        got = told(state, event, agent);
        got.len() >= n
    });
    assert!(ok, "expected {n} '{event}' about {agent}, got {got:?}");
    got
}

fn kill9(pid: u64) {
    signal(pid as u32, nix::sys::signal::Signal::SIGKILL);
}

#[test]
fn a_killed_payload_is_told_with_its_status_and_log_and_restarted_with_backoff() {
    if real_builds().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("hive");
    let _daemon = Daemon::start(&state, PROCESS);
    cli_ok(&state, &["spawn", "alice"]);
    let first = wait_up(&state, "alice", None);

    kill9(first);
    let crash = wait_told(&state, "container_crash", "alice", 1);
    let (crashed_at, body) = &crash[0];
    assert_eq!(body["signal"], 9, "{body}");
    assert_eq!(body["how"], "killed by signal 9", "{body}");
    assert_eq!(body["restart"], "on-failure", "{body}");
    assert_eq!(body["restart_in_seconds"], 1, "{body}");
    let tail = body["log_tail"].as_array().expect("log lines");
    assert!(
        !tail.is_empty() && tail.len() <= 20,
        "the log's last lines: {body}"
    );
    let second = wait_up(&state, "alice", Some(first));
    let starts = system_starts(&state, "alice");
    let restarted = *starts.last().expect("a restart by the system");
    assert!(
        restarted - crashed_at >= 1000,
        "restarted {} ms after the crash was told (backoff 1 s)",
        restarted - crashed_at
    );

    // The second crash within the window waits twice as long.
    kill9(second);
    let crash = wait_told(&state, "container_crash", "alice", 2);
    let (crashed_at, body) = &crash[1];
    assert_eq!(body["restart_in_seconds"], 2, "{body}");
    assert_eq!(body["crashes_in_window"], 2, "{body}");
    wait_up(&state, "alice", Some(second));
    let restarted = *system_starts(&state, "alice").last().unwrap();
    assert!(
        restarted - crashed_at >= 2000,
        "restarted {} ms after the second crash (backoff 2 s)",
        restarted - crashed_at
    );
    assert_eq!(told(&state, "container_crash", "alice").len(), 2);
    assert_eq!(agent_view(&state, "alice")["axes"]["running"], true);

    // The manager's own crash: it is restarted and finds the event about itself in its inbox.
    let manager = wait_up(&state, "manager", None);
    kill9(manager);
    wait_told(&state, "container_crash", "manager", 1);
    wait_up(&state, "manager", Some(manager));
    assert_eq!(told(&state, "container_crash", "manager").len(), 1);
}

#[test]
fn a_container_that_exits_at_once_crash_loops_once_and_hive_start_brings_it_back() {
    if real_builds().is_none() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("hive");
    let config = format!("{PROCESS}[mailbox]\ndead_letter_after_seconds = 1\n");
    let mut daemon = Daemon::start(&state, &config);
    cli_ok(&state, &["spawn", "alice"]);
    wait_up(&state, "alice", None);
    wait_up(&state, "manager", None);

    // A harness setting it cannot parse: the payload exits (code 2) at every start.
    let manager = mcp_connect(&rt, &state, "manager", "mcp.sock");
    let repo = state.join("agents/alice/config");
    let nix = std::fs::read_to_string(repo.join("agent.nix")).unwrap();
    let broken = nix.replace(
        "allowedRecipients = [ ];",
        "allowedRecipients = [ ];\n    env = { HIVE_CLAUDE_IDLE_SECONDS = \"never\"; };",
    );
    assert_ne!(broken, nix, "the template changed: adjust this test");
    std::fs::write(repo.join("agent.nix"), broken).unwrap();
    git(&repo, &["commit", "-qam", "a setting the harness refuses"]);
    let sha = git(&repo, &["rev-parse", "HEAD"]);
    let queued = rt.block_on(mcp_ok(
        &manager,
        "request_apply_commit",
        json!({"agent": "alice", "commit": sha, "description": "idle forever"}),
    ));
    cli_ok(
        &state,
        &["approve", &queued["id"].as_i64().unwrap().to_string()],
    );

    let looped = wait_told(&state, "crash_loop", "alice", 1);
    assert_eq!(looped[0].1["crashes"], 6, "{:?}", looped[0].1);
    let crashes = told(&state, "container_crash", "alice");
    assert_eq!(crashes.len(), 6, "{crashes:?}");
    let waits: Vec<Value> = crashes
        .iter()
        .map(|(_, b)| b["restart_in_seconds"].clone())
        .collect();
    assert_eq!(
        waits,
        [
            json!(1),
            json!(2),
            json!(4),
            json!(8),
            json!(16),
            Value::Null
        ]
    );
    assert_eq!(crashes[0].1["code"], 2, "{:?}", crashes[0].1);
    // Five restarts, then none: it stays stopped and `hive agents` says why.
    assert_eq!(system_starts(&state, "alice").len(), 5);
    let view = agent_view(&state, "alice");
    assert_eq!(view["run"]["state"], "stopped", "{view}");
    assert_eq!(view["axes"]["crash_loop"], true, "{view}");
    assert!(cli_ok(&state, &["agents"]).contains("crash loop"));

    // Mail for it becomes a dead letter, why: the crash loop; redirected, it reaches the manager.
    redirect_a_dead_letter_of_the_crash_loop(&state);

    // A daemon restart leaves it stopped and tells nothing again. The start boots agents in
    // name order: once the manager is up, alice's turn has passed.
    drop(manager);
    assert!(daemon.sigterm().success());
    let _daemon = Daemon::start(&state, &config);
    wait_up(&state, "manager", None);
    let view = agent_view(&state, "alice");
    assert_eq!(view["run"]["state"], "stopped", "{view}");
    assert_eq!(view["axes"]["crash_loop"], true, "{view}");
    assert_eq!(told(&state, "crash_loop", "alice").len(), 1);
    assert_eq!(told(&state, "container_crash", "alice").len(), 6);
    assert_eq!(system_starts(&state, "alice").len(), 5);

    // `hive start` brings it back: it runs again and its crashes count from one.
    cli_ok(&state, &["start", "alice"]);
    let again = wait_told(&state, "container_crash", "alice", 7);
    assert_eq!(again[6].1["crashes_in_window"], 1, "{:?}", again[6].1);
    assert_eq!(again[6].1["restart_in_seconds"], 1, "{:?}", again[6].1);
    assert_eq!(told(&state, "crash_loop", "alice").len(), 1);
    assert_eq!(agent_view(&state, "alice")["axes"]["crash_loop"], false);
}

/// Sends alice (held stopped by its crash loop) a message, waits until `hive dead-letters` lists
/// it with the crash loop as its why, redirects it to the manager and waits until the manager's
/// running harness has taken it.
fn redirect_a_dead_letter_of_the_crash_loop(state: &Path) {
    let body = "for alice, who crash-loops";
    let sent: Value =
        serde_json::from_str(&cli_ok(state, &["send", "alice", body, "--json"])).unwrap();
    let id = sent["ids"][0].as_i64().unwrap();
    let mut listed = Value::Null;
    let dead = eventually(LIMIT, || {
        let all: Vec<Value> =
            serde_json::from_str(&cli_ok(state, &["dead-letters", "--json"])).unwrap();
        listed = all
            .into_iter()
            .find(|d| d["id"] == id)
            .unwrap_or(Value::Null);
        !listed.is_null()
    });
    assert!(dead, "message {id} never became a dead letter");
    assert_eq!(listed["to"], "alice", "{listed}");
    assert_eq!(listed["why"], "crash loop", "{listed}");
    assert_eq!(listed["body"], body, "{listed}");

    let moved: Value = serde_json::from_str(&cli_ok(
        state,
        &[
            "dead-letters",
            "redirect",
            &id.to_string(),
            "--to",
            "manager",
            "--json",
        ],
    ))
    .unwrap();
    assert_eq!(moved["to"], "manager", "{moved}");
    assert_eq!(moved["from"], "operator", "{moved}");
    assert_eq!(moved["body"], body, "{moved}");
    let old: Value =
        serde_json::from_str(&cli_ok(state, &["message", &id.to_string(), "--json"])).unwrap();
    assert_eq!(old["state"], "delivered", "{old}");
    let all: Vec<Value> =
        serde_json::from_str(&cli_ok(state, &["dead-letters", "--json"])).unwrap();
    assert!(all.iter().all(|d| d["id"] != id), "{all:?}");

    // It arrives: the manager's harness takes it in a turn (its receipt names the turn).
    let new = moved["id"].as_i64().unwrap().to_string();
    let mut shown = Value::Null;
    let taken = eventually(LIMIT, || {
        shown = serde_json::from_str(&cli_ok(state, &["message", &new, "--json"])).unwrap();
        shown["turn"].is_i64() || shown["redelivered"] == true
    });
    assert!(
        taken,
        "the manager's harness never took the redirected message: {shown}"
    );
}

/// Writes a claude credentials file in `agent`'s home as the CLI's login would.
fn write_credentials(state: &Path, agent: &str) {
    let dir = state.join("secrets").join(agent).join("home/.claude");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(".credentials.json"),
        r#"{"claudeAiOauth":{"accessToken":"x"}}"#,
    )
    .unwrap();
}

fn credentials(state: &Path, agent: &str) -> PathBuf {
    state
        .join("secrets")
        .join(agent)
        .join("home/.claude/.credentials.json")
}

#[test]
fn credentials_written_and_removed_tell_logged_in_and_needs_login_once_each_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("hive");
    let mut daemon = Daemon::start(&state, "");
    cli_ok(&state, &["spawn", "alice"]);
    cli_ok(&state, &["spawn", "bob"]);
    // Spawned, not logged in: told as part of `spawned`, no needs_login of its own.
    let spawned = wait_told(&state, "spawned", "alice", 1);
    assert_eq!(spawned[0].1["logged_in"], false);
    assert!(eventually(
        LIMIT,
        || agent_view(&state, "bob")["axes"]["logged_in"] == false
    ));

    // A symlinked .claude pointing out of the state dir is not followed. The inotify events
    // arrive in order: once bob's login (written after) is told, alice's link was looked at.
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join(".credentials.json"), "{}").unwrap();
    let alice_home = state.join("secrets/alice/home");
    std::fs::create_dir_all(&alice_home).unwrap();
    std::os::unix::fs::symlink(&outside, alice_home.join(".claude")).unwrap();
    write_credentials(&state, "bob");
    wait_told(&state, "logged_in", "bob", 1);
    assert!(told(&state, "logged_in", "alice").is_empty());
    assert_eq!(agent_view(&state, "alice")["axes"]["logged_in"], false);

    std::fs::remove_file(alice_home.join(".claude")).unwrap();
    write_credentials(&state, "alice");
    wait_told(&state, "logged_in", "alice", 1);
    std::fs::remove_file(credentials(&state, "alice")).unwrap();
    wait_told(&state, "needs_login", "alice", 1);
    write_credentials(&state, "alice");
    wait_told(&state, "logged_in", "alice", 2);
    assert_eq!(told(&state, "needs_login", "alice").len(), 1);
    assert_eq!(told(&state, "logged_in", "bob").len(), 1);

    // Down: bob logs out, alice stays logged in. Up again: bob's change is told once, alice's
    // unchanged state not at all.
    assert!(daemon.sigterm().success());
    std::fs::remove_file(credentials(&state, "bob")).unwrap();
    let _daemon = Daemon::start(&state, "");
    wait_told(&state, "needs_login", "bob", 1);
    assert!(eventually(LIMIT, || {
        let all = agents(&state);
        all.iter()
            .all(|a| a["name"] == "manager" || a["axes"]["logged_in"].is_boolean())
    }));
    assert_eq!(told(&state, "logged_in", "alice").len(), 2);
    assert_eq!(told(&state, "needs_login", "alice").len(), 1);
    assert_eq!(told(&state, "logged_in", "bob").len(), 1);
    assert_eq!(told(&state, "needs_login", "bob").len(), 1);
    assert_eq!(told(&state, "spawned", "alice").len(), 1);
}

#[test]
fn an_api_key_stored_by_hive_login_logs_the_agent_in_and_bad_keys_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("hive");
    let _daemon = Daemon::start(&state, "");
    cli_ok(&state, &["spawn", "alice"]);
    assert!(eventually(
        LIMIT,
        || agent_view(&state, "alice")["axes"]["logged_in"] == false
    ));

    // The interactive login runs the claude CLI's own, with HOME at the agent's home.
    let printed = cli_ok(
        &state,
        &[
            "login",
            "alice",
            "--claude",
            "/opt/claude",
            "--print-command",
        ],
    );
    let home = state.join("secrets/alice/home");
    assert_eq!(
        printed.trim(),
        format!("HOME={} /opt/claude auth login", home.display())
    );
    // It really runs that: a stand-in CLI records its argv and HOME.
    let fake = dir.path().join("claude");
    let seen = dir.path().join("seen");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\necho \"$HOME $*\" > {}\n", seen.display()),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    cli_ok(
        &state,
        &["login", "alice", "--claude", fake.to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read_to_string(&seen).unwrap().trim(),
        format!("{} auth login", home.display())
    );

    // Bad keys: refused, nothing stored, nothing told.
    let key_path = state.join("secrets/alice/api-key");
    for (content, why) in [
        ("", "not an API key"),
        ("two words", "not an API key"),
        (&"k".repeat(5000) as &str, "longer than"),
    ] {
        let bad = dir.path().join("bad-key");
        std::fs::write(&bad, content).unwrap();
        let out = cli(
            &state,
            &["login", "alice", "--api-key-file", bad.to_str().unwrap()],
        );
        assert!(!out.status.success());
        assert!(text(&out.stderr).contains(why), "{}", text(&out.stderr));
        assert!(!key_path.exists());
    }
    let out = cli(&state, &["login", "nobody", "--api-key-file", "/dev/null"]);
    assert!(!out.status.success());
    assert!(!state.join("secrets/nobody").exists());
    assert!(told(&state, "logged_in", "alice").is_empty());

    let good = dir.path().join("key");
    std::fs::write(&good, "sk-ant-test-key\n").unwrap();
    cli_ok(
        &state,
        &["login", "alice", "--api-key-file", good.to_str().unwrap()],
    );
    let meta = std::fs::metadata(&key_path).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::read_to_string(&key_path).unwrap(),
        "sk-ant-test-key\n"
    );
    wait_told(&state, "logged_in", "alice", 1);
    assert_eq!(agent_view(&state, "alice")["axes"]["logged_in"], true);
}

#[test]
fn an_applied_commit_not_built_tells_needs_update_once_and_update_tells_rebuilt() {
    if real_builds().is_none() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("hive");
    // The harness the builder puts into images, at a path this test can take away: while it is
    // gone, builds fail and what ran before runs on.
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let harness = bin.join("hive-agent");
    std::fs::copy(hive_agent().unwrap(), &harness).unwrap();
    let config = format!("{PROCESS}harness_binary = \"{}\"\n", harness.display());
    let mut daemon = Daemon::start(&state, &config);
    cli_ok(&state, &["spawn", "alice"]);
    let first = wait_up(&state, "alice", None);
    wait_up(&state, "manager", None);
    assert!(eventually(
        LIMIT,
        || agent_view(&state, "alice")["axes"]["up_to_date"] == true
    ));

    let manager = mcp_connect(&rt, &state, "manager", "mcp.sock");
    let repo = state.join("agents/alice/config");
    let nix = std::fs::read_to_string(repo.join("agent.nix")).unwrap();
    std::fs::write(repo.join("agent.nix"), format!("{nix}\n# a change\n")).unwrap();
    git(&repo, &["commit", "-qam", "a change"]);
    let sha = git(&repo, &["rev-parse", "HEAD"]);
    let queued = rt.block_on(mcp_ok(
        &manager,
        "request_apply_commit",
        json!({"agent": "alice", "commit": sha, "description": "a change"}),
    ));
    std::fs::remove_file(&harness).unwrap();
    // The request's check build may have run before the harness went, or failed after: either
    // way the operator approves it.
    cli_ok(
        &state,
        &[
            "approve",
            &queued["id"].as_i64().unwrap().to_string(),
            "--override-failed-build",
        ],
    );
    let stale = wait_told(&state, "needs_update", "alice", 1);
    assert_eq!(
        stale[0].1["applied_commit"],
        sha.as_str(),
        "{:?}",
        stale[0].1
    );
    assert_ne!(stale[0].1["running_commit"], sha.as_str());
    assert_eq!(agent_view(&state, "alice")["run"]["pid"], first);

    // A daemon restart with the agent stale tells nothing again.
    std::fs::copy(hive_agent().unwrap(), &harness).unwrap();
    drop(manager);
    assert!(daemon.sigterm().success());
    let _daemon = Daemon::start(&state, &config);
    wait_up(&state, "alice", None);
    assert!(eventually(
        LIMIT,
        || agent_view(&state, "alice")["axes"]["up_to_date"] == false
    ));
    assert_eq!(told(&state, "needs_update", "alice").len(), 1);

    // The manager updates it: rebuilt (naming the commit), and alice is told herself.
    wait_up(&state, "manager", None);
    let manager = mcp_connect(&rt, &state, "manager", "mcp.sock");
    let updated = rt.block_on(mcp_ok(&manager, "update", json!({"agent": "alice"})));
    assert_eq!(updated["deploy"]["status"], "deployed", "{updated}");
    let rebuilt = wait_told(&state, "rebuilt", "alice", 1);
    assert_eq!(rebuilt[0].1["commit"], sha.as_str());
    let db = open_db(&state);
    let own: String = db
        .query_row(
            "SELECT body FROM messages WHERE sender = 'system' AND recipient = 'alice'
             ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(own.contains(&sha), "{own}");
    assert!(eventually(
        LIMIT,
        || agent_view(&state, "alice")["axes"]["up_to_date"] == true
    ));
    assert_eq!(told(&state, "needs_update", "alice").len(), 1);
    assert_eq!(told(&state, "rebuilt", "alice").len(), 1);
}

/// A copy of `hive-agent` in `dir/bin/` and the process-runtime config whose builder puts that
/// copy into images: the test can change it (a byte appended still runs) or take it away.
fn own_harness(dir: &Path, extra: &str) -> (PathBuf, String) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let harness = bin.join("hive-agent");
    std::fs::copy(hive_agent().unwrap(), &harness).unwrap();
    let config = format!(
        "{PROCESS}harness_binary = \"{}\"\n{extra}",
        harness.display()
    );
    (harness, config)
}

/// Appends one byte to `file`: another harness binary that still runs.
fn append_a_byte(file: &Path) {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new().append(true).open(file).unwrap();
    f.write_all(b"\n").unwrap();
}

/// The last message from `system` to `agent` itself.
fn last_own_message(state: &Path, agent: &str) -> Option<String> {
    open_db(state)
        .query_row(
            "SELECT body FROM messages WHERE sender = 'system' AND recipient = ?1
             ORDER BY id DESC LIMIT 1",
            [agent],
            |r| r.get(0),
        )
        .ok()
}

/// The commit `agent` runs, as `hive agents` shows it.
fn running_commit(state: &Path, agent: &str) -> String {
    agent_view(state, agent)["run"]["commit"]
        .as_str()
        .unwrap_or_else(|| panic!("{agent} runs no commit"))
        .to_owned()
}

#[test]
fn a_daemon_restarted_with_another_harness_tells_needs_update_once_and_update_rebuilds() {
    if real_builds().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("hive");
    let (harness, config) = own_harness(dir.path(), "");
    let mut daemon = Daemon::start(&state, &config);
    cli_ok(&state, &["spawn", "alice"]);
    wait_up(&state, "alice", None);
    wait_up(&state, "manager", None);
    assert!(eventually(
        LIMIT,
        || agent_view(&state, "alice")["axes"]["up_to_date"] == true
    ));
    let commit = running_commit(&state, "alice");

    // The same commits, another harness: every running image is stale, told once per agent.
    assert!(daemon.sigterm().success());
    append_a_byte(&harness);
    let _daemon = Daemon::start(&state, &config);
    let stale = wait_told(&state, "needs_update", "alice", 1);
    let body = &stale[0].1;
    assert_eq!(body["builder_changed"], true, "{body}");
    assert_eq!(body["running_commit"], commit.as_str(), "{body}");
    assert_eq!(body["applied_commit"], commit.as_str(), "{body}");
    wait_told(&state, "needs_update", "manager", 1);
    assert!(eventually(
        LIMIT,
        || agent_view(&state, "alice")["axes"]["up_to_date"] == false
    ));
    // Still running on the old image: nothing was rebuilt without being asked.
    assert!(told(&state, "rebuilt", "alice").is_empty());

    // `update` rebuilds it on the same commit: rebuilt, and alice is told herself.
    let updated = cli_ok(&state, &["update", "alice"]);
    assert!(updated.contains("updated"), "{updated}");
    let rebuilt = wait_told(&state, "rebuilt", "alice", 1);
    assert_eq!(rebuilt[0].1["commit"], commit.as_str());
    assert_eq!(rebuilt[0].1["kind"], "update");
    let own = last_own_message(&state, "alice").unwrap();
    assert!(own.contains(&commit), "{own}");
    assert!(eventually(
        LIMIT,
        || agent_view(&state, "alice")["axes"]["up_to_date"] == true
    ));
    // Up to date now: a second update builds nothing.
    assert!(cli_ok(&state, &["update", "alice"]).contains("already up to date"));
    assert_eq!(told(&state, "needs_update", "alice").len(), 1);
    assert_eq!(told(&state, "needs_update", "manager").len(), 1);
    assert_eq!(told(&state, "rebuilt", "alice").len(), 1);
}

#[test]
fn with_auto_update_a_stale_agent_is_rebuilt_without_needs_update_and_told_itself() {
    if real_builds().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("hive");
    let (harness, config) = own_harness(dir.path(), "\n[watcher]\nauto_update = true\n");
    let mut daemon = Daemon::start(&state, &config);
    cli_ok(&state, &["spawn", "alice"]);
    let first = wait_up(&state, "alice", None);
    wait_up(&state, "manager", None);
    assert!(eventually(
        LIMIT,
        || agent_view(&state, "alice")["axes"]["up_to_date"] == true
    ));
    let commit = running_commit(&state, "alice");
    let deploy = agent_view(&state, "alice")["run"]["deploy"].clone();

    assert!(daemon.sigterm().success());
    append_a_byte(&harness);
    let _daemon = Daemon::start(&state, &config);
    let rebuilt = wait_told(&state, "rebuilt", "alice", 1);
    assert_eq!(rebuilt[0].1["commit"], commit.as_str());
    assert_eq!(rebuilt[0].1["kind"], "update");
    assert_ne!(rebuilt[0].1["deploy"], deploy);
    wait_told(&state, "rebuilt", "manager", 1);
    let own = last_own_message(&state, "alice").unwrap();
    assert!(own.contains(&commit) && own.contains("rebuilt"), "{own}");
    wait_up(&state, "alice", Some(first));
    assert!(eventually(LIMIT, || {
        let view = agent_view(&state, "alice");
        view["axes"]["up_to_date"] == true && view["run"]["deploy"] != deploy
    }));
    assert!(told(&state, "needs_update", "alice").is_empty());
    assert!(told(&state, "needs_update", "manager").is_empty());
    assert_eq!(told(&state, "rebuilt", "alice").len(), 1);
}

/// The manager asks to apply a change to `agent`'s agent.nix (a comment) and the operator
/// approves it (overriding a failed check build: callers take the harness away to make the
/// deploy fail); returns the commit.
fn approve_a_change(rt: &tokio::runtime::Runtime, state: &Path, agent: &str) -> String {
    let manager = mcp_connect(rt, state, "manager", "mcp.sock");
    let repo = state.join("agents").join(agent).join("config");
    let nix = std::fs::read_to_string(repo.join("agent.nix")).unwrap();
    std::fs::write(repo.join("agent.nix"), format!("{nix}\n# a change\n")).unwrap();
    git(&repo, &["commit", "-qam", "a change"]);
    let sha = git(&repo, &["rev-parse", "HEAD"]);
    let queued = rt.block_on(mcp_ok(
        &manager,
        "request_apply_commit",
        json!({"agent": agent, "commit": sha, "description": "a change"}),
    ));
    cli_ok(
        state,
        &[
            "approve",
            &queued["id"].as_i64().unwrap().to_string(),
            "--override-failed-build",
        ],
    );
    sha
}

/// Every helper event in the manager's inbox: (event, agent).
fn all_told(state: &Path) -> Vec<(String, String)> {
    let db = open_db(state);
    let mut stmt = db
        .prepare(
            "SELECT body FROM messages WHERE sender = 'system' AND recipient = 'manager'
             ORDER BY id",
        )
        .unwrap();
    stmt.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .filter_map(|body| serde_json::from_str::<Value>(&body).ok())
        .map(|b| {
            (
                b["event"].as_str().unwrap_or_default().to_owned(),
                b["agent"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[test]
fn a_daemon_restart_tells_nothing_twice_and_once_what_changed_while_it_was_down() {
    if real_builds().is_none() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("hive");
    // A reconcile tick every second: a repeat would show within the test's own waits.
    let (harness, config) = own_harness(dir.path(), "\n[watcher]\nreconcile_seconds = 1\n");
    let mut daemon = Daemon::start(&state, &config);
    cli_ok(&state, &["spawn", "alice"]);
    cli_ok(&state, &["spawn", "bob"]);
    cli_ok(&state, &["spawn", "carol"]);
    let alice = wait_up(&state, "alice", None);
    wait_up(&state, "bob", None);
    wait_up(&state, "carol", None);
    wait_up(&state, "manager", None);

    // alice crashed (and was restarted), bob logged in and out, carol is stale (her approved
    // change could not be built: the harness was gone).
    kill9(alice);
    wait_told(&state, "container_crash", "alice", 1);
    wait_up(&state, "alice", Some(alice));
    write_credentials(&state, "bob");
    wait_told(&state, "logged_in", "bob", 1);
    std::fs::remove_file(credentials(&state, "bob")).unwrap();
    wait_told(&state, "needs_login", "bob", 1);
    std::fs::rename(&harness, dir.path().join("away")).unwrap();
    approve_a_change(&rt, &state, "carol");
    wait_told(&state, "needs_update", "carol", 1);
    std::fs::rename(dir.path().join("away"), &harness).unwrap();
    let before = all_told(&state);

    // While the daemon is down, carol logs in: that change is told once after the start.
    assert!(daemon.sigterm().success());
    write_credentials(&state, "carol");
    let _daemon = Daemon::start(&state, &config);
    wait_told(&state, "logged_in", "carol", 1);
    for agent in ["alice", "bob", "carol", "manager"] {
        wait_up(&state, agent, None);
    }
    // Every axis looked at again after the start (carol's stale image included).
    assert!(eventually(LIMIT, || {
        let view = agent_view(&state, "carol");
        view["axes"]["up_to_date"] == false && view["axes"]["logged_in"] == true
    }));
    assert!(eventually(LIMIT, || {
        agents(&state)
            .iter()
            .all(|a| a["name"] == "carol" || a["axes"]["up_to_date"] == true)
    }));
    assert_eq!(agent_view(&state, "bob")["axes"]["logged_in"], false);
    let mut expected = before.clone();
    expected.push(("logged_in".into(), "carol".into()));
    assert_eq!(
        all_told(&state),
        expected,
        "told before the restart: {before:?}"
    );
}

#[test]
fn spawned_and_destroyed_reach_the_manager_with_the_incarnation() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("hive");
    let _daemon = Daemon::start(&state, "");
    cli_ok(&state, &["spawn", "alice"]);
    let spawned = wait_told(&state, "spawned", "alice", 1);
    let incarnation = spawned[0].1["incarnation"].clone();
    assert!(incarnation.is_i64(), "{:?}", spawned[0].1);
    assert_eq!(spawned[0].1["logged_in"], false);

    let destroyed = cli_ok(&state, &["destroy", "alice"]);
    assert!(destroyed.contains("tombstone alice-"), "{destroyed}");
    let gone = wait_told(&state, "destroyed", "alice", 1);
    assert_eq!(gone[0].1["incarnation"], incarnation);

    // Restored: the same incarnation comes back, told as spawned again.
    let tombstones: Value =
        serde_json::from_str(&cli_ok(&state, &["tombstones", "--json"])).unwrap();
    let tomb = tombstones[0]["id"].as_str().unwrap().to_owned();
    cli_ok(&state, &["restore", &tomb]);
    let spawned = wait_told(&state, "spawned", "alice", 2);
    assert_eq!(spawned[1].1["incarnation"], incarnation);
    assert_eq!(told(&state, "destroyed", "alice").len(), 1);
    // Each reached the manager as one message from system, in order.
    let events: Vec<String> = all_told(&state)
        .into_iter()
        .filter(|(_, agent)| agent == "alice")
        .map(|(event, _)| event)
        .collect();
    assert_eq!(events, ["spawned", "destroyed", "spawned"]);
}

#[test]
fn the_crashed_manager_is_restarted_and_takes_the_event_about_itself_in_a_turn() {
    let Some(claude) = tools::require("claude", tools::claude_bin()) else {
        return;
    };
    if real_builds().is_none() {
        return;
    }
    // Every model call is answered "done".
    let server = testkit::model_server::ModelServer::start_blocking(Vec::new());
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("hive");
    let config = format!(
        "{PROCESS}\n[model]\nanthropic_base_url = \"{}\"\n",
        server.base_url()
    );
    let claude = claude.display().to_string();
    let _daemon = Daemon::start_with_env(
        &state,
        &config,
        &[
            ("HIVE_CLAUDE", claude.as_str()),
            ("CLAUDE_CODE_MAX_RETRIES", "0"),
        ],
    );
    let first = wait_up(&state, "manager", None);
    kill9(first);
    let crash = wait_told(&state, "container_crash", "manager", 1);
    assert_eq!(crash[0].1["signal"], 9, "{:?}", crash[0].1);
    wait_up(&state, "manager", Some(first));

    // Told while it was down, taken by the restarted manager's harness in a turn: its model
    // reads the event about itself, and the turn finishes.
    let db = open_db(&state);
    let id: i64 = db
        .query_row(
            "SELECT id FROM messages WHERE sender = 'system' AND recipient = 'manager'
             AND json_extract(body, '$.event') = 'container_crash'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let mut outcome = None;
    let finished = eventually(LIMIT, || {
        outcome = db
            .query_row(
                "SELECT outcome FROM turns WHERE message_id = ?1 AND outcome IS NOT NULL",
                [id],
                |r| r.get::<_, String>(0),
            )
            .ok();
        outcome.is_some()
    });
    assert!(
        finished,
        "the manager took no turn on its crash event\nlog:\n{}",
        text(&cli(&state, &["logs", "manager"]).stdout)
    );
    assert_eq!(outcome.as_deref(), Some("ok"));
    let seen = server.model_requests().iter().any(|r| {
        r.last_user_text()
            .is_some_and(|t| t.contains("container_crash"))
    });
    assert!(seen, "the model never read the crash event");
    assert_eq!(told(&state, "container_crash", "manager").len(), 1);
}
