//! The real `hive serve` process: durability across `kill -9`, the lock, the admin socket's
//! guards, systemd notification, clean shutdown, and the CLI in front of it.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn acked_messages_survive_kill9(synchronous: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("[store]\nsynchronous = \"{synchronous}\"\n");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut acked = Vec::new();
    for round in 0..3 {
        let mut daemon = Daemon::start(dir.path(), &config);
        for n in 0..20 {
            let body = format!("round {round} message {n}");
            acked.push((rt.block_on(send(dir.path(), "manager", &body)), body));
        }
        // SIGKILL right after the last send returned.
        daemon.kill9();
        let db = open_db(dir.path());
        for (id, body) in &acked {
            let stored: String = db
                .query_row("SELECT body FROM messages WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .unwrap_or_else(|e| panic!("acknowledged message {id} lost: {e}"));
            assert_eq!(&stored, body);
        }
    }
    // And the restarted daemon serves them.
    let _daemon = Daemon::start(dir.path(), &config);
    let out = cli(dir.path(), &["messages", "--limit", "1000", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), acked.len());
}

#[test]
fn acknowledged_messages_survive_kill9_with_synchronous_normal() {
    acked_messages_survive_kill9("normal");
}

#[test]
fn acknowledged_messages_survive_kill9_with_synchronous_full() {
    acked_messages_survive_kill9("full");
}

#[test]
fn a_second_daemon_on_the_same_state_dir_fails_clearly_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), "");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(send(dir.path(), "manager", "hello"));
    let before = db_snapshot(dir.path());
    let out = Command::new(HIVE)
        .args(["serve", "--state-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("another hive is already running"), "{err}");
    assert!(err.contains(&format!("pid {}", daemon.pid())), "{err}");
    assert_eq!(db_snapshot(dir.path()), before);
    // The first daemon still answers.
    assert!(cli(dir.path(), &["status"]).status.success());
}

#[test]
fn sigterm_finishes_in_flight_sends_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(dir.path(), "");
    let state = dir.path().to_owned();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let acked_so_far = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let acked = rt.block_on(async {
        let mut senders = Vec::new();
        for s in 0..8 {
            let state = state.clone();
            let acked_so_far = acked_so_far.clone();
            senders.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for n in 0..10_000 {
                    let req = serde_json::json!({"to": "manager", "body": format!("{s}:{n}")});
                    let conn = tokio::net::UnixStream::connect(state.join("run/admin.sock")).await;
                    if conn.is_err() {
                        break;
                    }
                    drop(conn);
                    match tokio::time::timeout(
                        Duration::from_secs(10),
                        try_send(&state, &req.to_string()),
                    )
                    .await
                    {
                        Ok(Some(id)) => {
                            acked.push(id);
                            acked_so_far.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        _ => break,
                    }
                }
                acked
            }));
        }
        // SIGTERM lands while every sender is busy: after a few hundred acknowledged sends.
        let busy = Instant::now() + Duration::from_secs(30);
        while acked_so_far.load(std::sync::atomic::Ordering::Relaxed) < 200 {
            assert!(Instant::now() < busy, "the senders got no sends through");
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let status = tokio::task::spawn_blocking(move || daemon.sigterm())
            .await
            .unwrap();
        assert_eq!(status.code(), Some(0), "{status:?}");
        let mut all = Vec::new();
        for s in senders {
            all.extend(s.await.unwrap());
        }
        all
    });
    assert!(!acked.is_empty());
    let db = open_db(dir.path());
    for id in &acked {
        let n: i64 = db
            .query_row("SELECT count(*) FROM messages WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(n, 1, "acknowledged message {id} lost at shutdown");
    }
    assert!(
        !dir.path().join("run/admin.sock").exists(),
        "socket left behind"
    );
}

/// A send that may fail because the daemon is going away: `None` then.
async fn try_send(state: &std::path::Path, req: &str) -> Option<i64> {
    match try_api(state, "POST", "/api/v1/messages", req).await? {
        (201, v) => v["ids"][0].as_i64(),
        _ => None,
    }
}

#[test]
fn systemd_gets_ready_and_watchdog_pings() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start_with_env(dir.path(), "", &[("WATCHDOG_USEC", "200000")]);
    // Pings keep coming (at half the interval), not just one.
    for _ in 0..2 {
        let next = daemon.next_notification().expect("no watchdog ping");
        assert!(next.lines().any(|l| l == "WATCHDOG=1"), "{next:?}");
    }
    // SIGTERM: systemd is told the daemon is stopping before it exits.
    assert!(daemon.sigterm().success());
    let mut seen = vec![];
    while let Some(next) = daemon.next_notification() {
        if next.lines().any(|l| l == "STOPPING=1") {
            return;
        }
        seen.push(next);
    }
    panic!("no STOPPING=1 after SIGTERM; got {seen:?}");
}

#[test]
fn the_admin_socket_refuses_other_uids() {
    let dir = tempfile::tempdir().unwrap();
    let _daemon = Daemon::start(dir.path(), "");
    let socket = dir.path().join("run/admin.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let (_bin_dir, hive) = hive_for_other_uids();
    let as_nobody = || {
        Command::new(&hive)
            .args(["status"])
            .env("HIVE_STATE_DIR", dir.path())
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    // The file mode keeps it out…
    let out = as_nobody();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("permission denied"),
        "{}",
        text(&out.stderr)
    );

    // …and with the file opened up, SO_PEERCRED still does.
    for (path, mode) in [(dir.path(), 0o755), (&socket, 0o666)] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let before = db_snapshot(dir.path());
    let out = as_nobody();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("the admin socket is for root and the hive's own user"),
        "{err}"
    );
    let out = Command::new(&hive)
        .args(["send", "manager", "sneaky"])
        .env("HIVE_STATE_DIR", dir.path())
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(db_snapshot(dir.path()), before);
}

#[test]
fn the_cli_says_when_the_hive_is_not_running() {
    let dir = tempfile::tempdir().unwrap();
    for cmd in [
        &["status"][..],
        &["agents"],
        &["send", "manager", "x"],
        &["inbox"],
        &["messages"],
    ] {
        let out = cli(dir.path(), cmd);
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert!(
            err.contains("hive is not running (no socket at")
                && err.contains("start it with `hive serve`"),
            "{cmd:?}: {err}"
        );
    }
}

#[test]
fn the_cli_sends_lists_and_shows_status() {
    let dir = tempfile::tempdir().unwrap();
    let _daemon = Daemon::start(dir.path(), "");
    let out = cli(dir.path(), &["send", "manager", "hello manager"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "sent #1");

    let out = cli(dir.path(), &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["agents"], 1);
    assert_eq!(status["messages"]["queued"], 1);

    let out = cli(dir.path(), &["agents"]);
    assert!(
        text(&out.stdout).contains("manager  manager"),
        "{}",
        text(&out.stdout)
    );

    let out = cli(dir.path(), &["messages", "--agent", "manager"]);
    let listed = text(&out.stdout);
    assert!(
        listed.contains("operator → manager  hello manager"),
        "{listed}"
    );

    let out = cli(dir.path(), &["messages", "--agent", "../x"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("invalid agent name '../x'"));

    let out = cli(dir.path(), &["inbox"]);
    assert_eq!(text(&out.stdout).trim(), "the operator's inbox is empty");
}

#[test]
fn messages_follow_streams_new_messages() {
    let dir = tempfile::tempdir().unwrap();
    let _daemon = Daemon::start(dir.path(), "");
    let mut follower = Command::new(HIVE)
        .args(["messages", "--follow", "--json"])
        .env("HIVE_STATE_DIR", dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = lines_of(follower.stdout.take().unwrap());
    // The follower subscribes before it reads: send until it prints one, waiting for its output
    // after each send.
    let started = Instant::now();
    let mut line = None;
    while line.is_none() && started.elapsed() < Duration::from_secs(20) {
        assert!(
            cli(dir.path(), &["send", "manager", "streamed"])
                .status
                .success()
        );
        line = lines.recv_timeout(Duration::from_millis(100)).ok();
    }
    let line = line.expect("no event streamed");
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["event"], "message_sent");
    assert_eq!(event["message"]["body"], "streamed");
    let _ = follower.kill();
    let _ = follower.wait();
}

/// A message too long for the hive, from the CLI: over `max_body_bytes` it is told the limit;
/// far over, where the hive stops reading the request, it is told so too (not a broken pipe).
/// Nothing is stored either way.
#[test]
fn an_oversized_cli_send_is_refused_clearly_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let _daemon = Daemon::start(state, "[mailbox]\nmax_body_bytes = 1024\n");
    cli_ok(state, &["send", "manager", "before"]);
    let before = db_snapshot(state);
    let out = cli_with_stdin(state, &["send", "manager", "-"], &[b'x'; 2000]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("2000 bytes; the limit is 1024 bytes"),
        "{}",
        text(&out.stderr)
    );
    // Far over the request limit (1024 * 6 + 64 KiB): the hive answers 413 and closes while
    // the CLI still writes; whichever the CLI meets first, it says what happened.
    for _ in 0..3 {
        let out = cli_with_stdin(state, &["send", "manager", "-"], &vec![b'x'; 4 << 20]);
        assert!(!out.status.success());
        let said = text(&out.stderr);
        assert!(said.contains("[mailbox] max_body_bytes"), "{said}");
        assert!(!said.contains("Broken pipe"), "{said}");
    }
    assert_eq!(db_snapshot(state), before);
}

#[test]
fn bad_api_requests_get_clear_errors_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[mailbox]\nmax_body_bytes = 1024\n";
    let _daemon = Daemon::start(dir.path(), config);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let state = dir.path();
    rt.block_on(send(state, "manager", "before"));
    let before = db_snapshot(state);
    let big = "x".repeat(1025);
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        (
            "POST",
            "/api/v1/messages",
            "{not json".into(),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/api/v1/messages",
            r#"{"to":"manager","body":"x","sneaky":1}"#.into(),
            422,
            "invalid_json",
        ),
        (
            "POST",
            "/api/v1/messages",
            r#"{"to":"manager"}"#.into(),
            422,
            "invalid_json",
        ),
        (
            "POST",
            "/api/v1/messages",
            r#"{"to":"manager","body":5}"#.into(),
            422,
            "invalid_json",
        ),
        (
            "POST",
            "/api/v1/messages",
            r#"{"to":"../x","body":"x"}"#.into(),
            400,
            "invalid_name",
        ),
        (
            "POST",
            "/api/v1/messages",
            r#"{"to":"a/b","body":"x"}"#.into(),
            400,
            "invalid_name",
        ),
        (
            "POST",
            "/api/v1/messages",
            r#"{"to":"Manager","body":"x"}"#.into(),
            400,
            "invalid_name",
        ),
        (
            "POST",
            "/api/v1/messages",
            r#"{"to":"","body":"x"}"#.into(),
            400,
            "invalid_name",
        ),
        (
            "POST",
            "/api/v1/messages",
            format!(r#"{{"to":"{}","body":"x"}}"#, "a".repeat(300)),
            400,
            "invalid_name",
        ),
        (
            "POST",
            "/api/v1/messages",
            r#"{"to":"system","body":"x"}"#.into(),
            400,
            "invalid_name",
        ),
        (
            "POST",
            "/api/v1/messages",
            r#"{"to":"operator","body":"x"}"#.into(),
            400,
            "send_to_self",
        ),
        (
            "POST",
            "/api/v1/messages",
            r#"{"to":"bob","body":"x"}"#.into(),
            404,
            "unknown_agent",
        ),
        (
            "POST",
            "/api/v1/messages",
            format!(r#"{{"to":"manager","body":"{big}"}}"#),
            413,
            "body_too_large",
        ),
        (
            "POST",
            "/api/v1/messages",
            format!(r#"{{"to":"manager","body":"{}"}}"#, "x".repeat(200_000)),
            413,
            "request_too_large",
        ),
        (
            "POST",
            "/api/v1/messages",
            format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000)),
            422,
            "invalid_json",
        ),
        (
            "POST",
            "/api/v1/inbox/recv",
            r#"{"wait_seconds":1000000000}"#.into(),
            400,
            "invalid_argument",
        ),
        (
            "POST",
            "/api/v1/inbox/recv",
            r#"{"max":0}"#.into(),
            400,
            "invalid_argument",
        ),
        (
            "POST",
            "/api/v1/inbox/recv",
            r#"{"max":1000}"#.into(),
            400,
            "invalid_argument",
        ),
        (
            "POST",
            "/api/v1/inbox/recv",
            r#"{"max":-1}"#.into(),
            422,
            "invalid_json",
        ),
        (
            "GET",
            "/api/v1/messages?agent=../x",
            String::new(),
            400,
            "invalid_name",
        ),
        (
            "GET",
            "/api/v1/messages?limit=0",
            String::new(),
            400,
            "invalid_argument",
        ),
        (
            "GET",
            "/api/v1/messages?bogus=1",
            String::new(),
            400,
            "invalid_query",
        ),
        ("GET", "/api/v1/nothing", String::new(), 404, "not_found"),
    ];
    rt.block_on(async {
        for (method, path, body, status, code) in &cases {
            let (got, v) = api(state, method, path, Some(body)).await;
            let shown = &body[..body.len().min(60)];
            assert_eq!(got, *status, "{method} {path} {shown}: {v}");
            assert_eq!(v["error"]["code"], *code, "{method} {path} {shown}: {v}");
            let message = v["error"]["message"].as_str().unwrap();
            assert!(!message.is_empty() && message.len() < 1000, "{message}");
        }
        // The recv with no message waits its time and returns nothing.
        let started = Instant::now();
        let (got, v) = api(
            state,
            "POST",
            "/api/v1/inbox/recv",
            Some(r#"{"wait_seconds":1}"#),
        )
        .await;
        assert_eq!(got, 200);
        assert_eq!(v["messages"].as_array().unwrap().len(), 0);
        assert!(started.elapsed() >= Duration::from_secs(1));
    });
    assert_eq!(db_snapshot(state), before);
}

#[test]
fn check_config_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hive.toml");
    std::fs::write(&file, "[store]\nsynchronous = \"full\"\n").unwrap();
    let out = cli(dir.path(), &["check-config", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("synchronous = full"));

    std::fs::write(&file, "[mailbox]\nmax_body_byte = 10\n").unwrap();
    let out = cli(dir.path(), &["check-config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("max_body_byte"),
        "{}",
        text(&out.stderr)
    );

    // serve refuses the same file before touching the state dir.
    let state = dir.path().join("state");
    let out = Command::new(HIVE)
        .args(["serve", "--state-dir"])
        .arg(&state)
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("max_body_byte"));
    assert!(!state.exists());
}

#[test]
fn the_hive_restarts_after_a_rollback_to_a_deploy_of_an_earlier_agent_of_the_name() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let mut daemon = Daemon::start(state, "");
    cli_ok(state, &["spawn", "x1"]);
    let first: serde_json::Value =
        serde_json::from_str(&cli_ok(state, &["history", "x1", "--json"])).unwrap();
    let old_deploy = first[0]["id"].as_i64().unwrap().to_string();
    cli_ok(state, &["destroy", "x1"]);
    // Another agent.nix, so the new x1's commit cannot be the old one's.
    let file = state.join("x1.nix");
    std::fs::write(&file, "{ ... }: { hyperhive.model = \"second\"; }\n").unwrap();
    cli_ok(state, &["spawn", "x1", "--from", file.to_str().unwrap()]);
    let deploys_before: i64 = daemon
        .db()
        .query_row("SELECT count(*) FROM deploys", [], |r| r.get(0))
        .unwrap();
    let out = cli(state, &["rollback", "x1", &old_deploy]);
    assert!(
        !out.status.success(),
        "a rollback into the old x1's history was taken"
    );
    assert!(
        text(&out.stderr).contains(&format!("deploy {old_deploy} of 'x1'")),
        "{}",
        text(&out.stderr)
    );
    let deploys_after: i64 = daemon
        .db()
        .query_row("SELECT count(*) FROM deploys", [], |r| r.get(0))
        .unwrap();
    assert_eq!(deploys_after, deploys_before);

    assert_eq!(daemon.sigterm().code(), Some(0));
    let _daemon = Daemon::start(state, "");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_, status) = rt.block_on(api(state, "GET", "/api/v1/status", None));
    assert_eq!(status["faulted"], serde_json::json!([]), "{status}");
    rt.block_on(send(state, "x1", "the new x1 answers"));
}

#[test]
fn one_corrupt_applied_repo_stops_that_agent_and_the_rest_of_the_hive_starts() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let mut daemon = Daemon::start(state, "");
    cli_ok(state, &["spawn", "x1"]);
    cli_ok(state, &["spawn", "x2"]);
    assert_eq!(daemon.sigterm().code(), Some(0));
    // x1's applied repo loses its object store; its HEAD still names a commit.
    std::fs::remove_dir_all(state.join("applied/x1/objects")).unwrap();

    let _daemon = Daemon::start(state, "");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_, status) = rt.block_on(api(state, "GET", "/api/v1/status", None));
    let faulted = status["faulted"].as_array().unwrap();
    assert_eq!(faulted.len(), 1, "{status}");
    assert_eq!(faulted[0]["agent"], "x1", "{status}");
    assert!(!faulted[0]["reason"].as_str().unwrap().is_empty());
    // The operator reads it in the plain status too.
    let plain = cli_ok(state, &["status"]);
    assert!(
        plain.contains("FAULTED:     x1 is kept stopped: "),
        "{plain}"
    );
    assert!(
        !state.join("run/agents/x1/mcp.sock").exists(),
        "the inconsistent agent is kept stopped"
    );
    // The others work.
    assert!(state.join("run/agents/x2/mcp.sock").exists());
    assert!(state.join("run/agents/manager/mcp.sock").exists());
    rt.block_on(send(state, "x2", "still here"));
    cli_ok(state, &["spawn", "x3"]);
}

#[test]
fn sigterm_drains_mcp_before_the_store_closes() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let mut daemon = Daemon::start(state, "");
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert!(
        cli(state, &["send", "manager", "work in progress"])
            .status
            .success()
    );
    // One harness holds a leased turn; another waits in a long next_turn.
    let busy = mcp_connect(&rt, state, "manager", "harness.sock");
    let turn = rt.block_on(mcp_ok(
        &busy,
        "next_turn",
        serde_json::json!({"wait_seconds": 0}),
    ));
    assert!(turn["turn"].is_i64(), "{turn}");
    let idle = mcp_connect(&rt, state, "manager", "harness.sock");
    let waiting = rt.spawn(async move {
        let _ = mcp_try(&idle, "next_turn", serde_json::json!({"wait_seconds": 180})).await;
    });

    let asked = Instant::now();
    let status = daemon.sigterm();
    assert_eq!(status.code(), Some(0), "{status:?}");
    // The long wait did not hold the shutdown up…
    assert!(
        asked.elapsed() < Duration::from_secs(8),
        "{:?}",
        asked.elapsed()
    );
    // …and the MCP connections were drained before the store closed: the unfinished turn's
    // message is back in the queue, flagged, already in the file the daemon left.
    let (state_now, redelivered): (String, i64) = open_db(state)
        .query_row(
            "SELECT state, redelivered FROM messages WHERE body = 'work in progress'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((state_now.as_str(), redelivered), ("queued", 1));
    drop(busy);
    waiting.abort();
}

/// An agent kept stopped at start is checked again with `hive recheck` once its repo is mended:
/// while it is still broken the check fails and changes nothing; once mended the agent is served
/// again and the check is audited. A name that is not kept stopped, unknown, or not a name is
/// refused.
#[test]
fn recheck_clears_a_mended_fault_and_changes_nothing_while_it_is_still_broken() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let mut daemon = Daemon::start(state, "");
    cli_ok(state, &["spawn", "x1"]);
    assert_eq!(daemon.sigterm().code(), Some(0));
    let objects = state.join("applied/x1/objects");
    let kept = dir.path().join("x1-objects");
    std::fs::rename(&objects, &kept).unwrap();

    let daemon = Daemon::start(state, "");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let faulted = || -> Vec<String> {
        let (_, status) = rt.block_on(api(state, "GET", "/api/v1/status", None));
        status["faulted"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["agent"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(faulted(), ["x1"]);
    let audit_rows = || -> i64 {
        daemon
            .db()
            .query_row("SELECT count(*) FROM audit", [], |r| r.get(0))
            .unwrap()
    };
    let rows = audit_rows();

    // Still broken: refused, still kept stopped, nothing written, no socket.
    let out = cli(state, &["recheck", "x1"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("x1 is still inconsistent and stays stopped: "),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(faulted(), ["x1"]);
    assert_eq!(audit_rows(), rows);
    assert!(!state.join("run/agents/x1/mcp.sock").exists());
    // Not kept stopped, unknown, not a name.
    for (name, says) in [
        ("manager", "not kept stopped"),
        ("nobody", "nobody"),
        ("../x1", "name"),
    ] {
        let out = cli(state, &["recheck", name]);
        assert!(!out.status.success(), "recheck {name} was taken");
        assert!(text(&out.stderr).contains(says), "{}", text(&out.stderr));
    }
    assert_eq!(faulted(), ["x1"]);
    assert_eq!(audit_rows(), rows);

    // Mended: served again, audited.
    std::fs::rename(&kept, &objects).unwrap();
    let said = cli_ok(state, &["recheck", "x1"]);
    assert!(said.contains("x1: checked again"), "{said}");
    assert!(faulted().is_empty());
    assert_eq!(audit_rows(), rows + 1);
    let action: String = daemon
        .db()
        .query_row(
            "SELECT action || ' ' || agent FROM audit ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(action, "recheck x1");
    assert!(state.join("run/agents/x1/mcp.sock").exists());
    rt.block_on(send(state, "x1", "back again"));
}
