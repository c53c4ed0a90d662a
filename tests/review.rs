//! Config requests reviewed before the operator decides, through the real daemon: the check build
//! of the requested commit with the real builder (nix), the risk flags read from the evaluated
//! config, and the confirmations `approve` asks for. The manager asks over its real MCP socket;
//! the operator answers with the `hive` CLI and the admin API.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use testkit::tools;

/// How long a check build may take on a slow machine.
const CHECK_LIMIT: Duration = Duration::from_secs(180);

/// A hive with a builder (the process runtime: nothing here needs a container).
const PROCESS: &str = "[runtime]\nkind = \"process\"\nstop_timeout_seconds = 5\n";

/// The real parts, or `None` (skip) when a person allowed it.
fn real_builder() -> Option<()> {
    tools::require("nix-build", tools::nix_build())?;
    tools::require("busybox", tools::busybox())?;
    let beside = Path::new(HIVE).with_file_name("hive-agent");
    tools::require("hive-agent", beside.is_file().then_some(beside)).map(|_| ())
}

/// The manager drafts `name`, replaces its agent.nix's `allowedRecipients` line with `with`,
/// commits, and asks to spawn it; returns the approval id.
fn request_spawn_with(
    rt: &tokio::runtime::Runtime,
    state: &Path,
    manager: &McpClient,
    name: &str,
    with: &str,
) -> i64 {
    rt.block_on(mcp_ok(manager, "request_spawn", json!({"name": name})));
    let repo = state.join("agents").join(name).join("config");
    let nix = std::fs::read_to_string(repo.join("agent.nix")).unwrap();
    let changed = nix.replace("allowedRecipients = [ ];", with);
    assert_ne!(changed, nix, "the template changed: adjust this test");
    std::fs::write(repo.join("agent.nix"), changed).unwrap();
    git(&repo, &["commit", "-qam", "the change under review"]);
    let sha = git(&repo, &["rev-parse", "HEAD"]);
    let queued = rt.block_on(mcp_ok(
        manager,
        "request_spawn",
        json!({"name": name, "commit": sha}),
    ));
    queued["id"].as_i64().unwrap()
}

/// Follows the admin API's event stream for `agent`; each SSE line arrives on the channel.
fn follow_events(state: &Path, agent: &str) -> std::sync::mpsc::Receiver<String> {
    use std::io::{BufRead as _, Write as _};
    let mut stream = std::os::unix::net::UnixStream::connect(state.join("run/admin.sock")).unwrap();
    write!(
        stream,
        "GET /api/v1/messages?follow=1&agent={agent} HTTP/1.1\r\nhost: hive\r\naccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stream).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // The stream is open once the answer's status line came.
    let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(first.contains("200"), "{first}");
    rx
}

/// The approval as `hive show --json` gives it once its check finished.
fn checked(state: &Path, id: i64) -> Value {
    let mut shown = Value::Null;
    let done = eventually(CHECK_LIMIT, || {
        shown = serde_json::from_str(&cli_ok(state, &["show", &id.to_string(), "--json"])).unwrap();
        shown["check"]["status"] != "checking"
    });
    assert!(done, "the check did not finish: {shown}");
    shown
}

/// What a refused approve must leave as it was: the decision tables and the applied repo's refs.
/// What a refused approve of `agent` must not change: the approvals, `agent`'s deploys and audit
/// rows (the manager, starting meanwhile, writes its own), the agents, the messages, and the
/// applied repo's refs.
fn snapshot(state: &Path, agent: &str) -> (String, String) {
    let db = open_db(state);
    let rows: String = db
        .query_row(
            "SELECT (SELECT group_concat(id||':'||status||':'||coalesce(resolved_at, ''), ',') FROM approvals)
             ||'|'||(SELECT count(*) FROM deploys WHERE agent = ?1)
             ||'|'||(SELECT count(*) FROM audit WHERE agent = ?1)
             ||'|'||(SELECT count(*) FROM agents)||'|'||(SELECT count(*) FROM messages)",
            [agent],
            |r| r.get(0),
        )
        .unwrap();
    let refs = git(
        &state.join("applied").join(agent),
        &["for-each-ref", "--format=%(refname) %(objectname)"],
    );
    (rows, refs)
}

#[test]
fn egress_and_host_network_show_first_and_need_the_second_confirmation() {
    if real_builder().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let _daemon = Daemon::start(state, PROCESS);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let manager = mcp_connect(&rt, state, "manager", "mcp.sock");
    let events = follow_events(state, "bob");
    let id = request_spawn_with(
        &rt,
        state,
        &manager,
        "bob",
        "allowedRecipients = [ ];\n    network = \"host\";\n    egress = [ \"api.example.com:443\" ];",
    );

    // Built before anyone decided: ok with its closure size, the flags from the evaluated config.
    let shown = checked(state, id);
    assert_eq!(shown["status"], "pending", "{shown}");
    assert_eq!(shown["check"]["status"], "ok", "{shown}");
    assert!(
        shown["check"]["closure_bytes"].as_u64().unwrap() > 0,
        "{shown}"
    );
    let risk = shown["risk"].as_array().unwrap();
    assert_eq!(risk[0]["flag"], "network_host", "{shown}");
    assert_eq!(risk[0]["widening"], true);
    assert_eq!(risk[1]["flag"], "egress_added", "{shown}");
    assert_eq!(risk[1]["details"], json!(["api.example.com:443"]));
    assert_eq!(risk[1]["widening"], true);
    assert!(
        std::fs::symlink_metadata(state.join(format!("build/bob/check-{id}/result"))).is_ok(),
        "the check's gcroot keeps its image"
    );
    // Watchers (the dashboard's live pages) are told the check finished.
    let told = loop {
        let line = events
            .recv_timeout(CHECK_LIMIT)
            .expect("no approval_checked event");
        if line == "event: approval_checked" {
            break events.recv_timeout(Duration::from_secs(5)).unwrap();
        }
    };
    assert!(
        told.contains("\"egress_added\"") && told.contains("\"status\":\"ok\""),
        "{told}"
    );

    // `hive show`: the flags first, then the build, then the approval.
    let human = cli_ok(state, &["show", &id.to_string()]);
    let lines: Vec<&str> = human.lines().collect();
    assert_eq!(lines[0], "risk: network_host (widens isolation)", "{human}");
    assert_eq!(
        lines[1], "risk: egress_added (widens isolation): api.example.com:443",
        "{human}"
    );
    let build = lines
        .iter()
        .position(|l| l.starts_with("build: ok (closure "));
    let header = lines.iter().position(|l| l.starts_with("approval #"));
    assert!(build.is_some() && build < header, "{human}");
    assert!(human.contains("--yes-widen"), "{human}");
    assert!(!human.contains('\u{1b}'), "plain into a pipe: {human:?}");
    // On a terminal (a pty from `script`), the widening flags and the row are red.
    let on_tty = |args: &str| {
        let out = std::process::Command::new("script")
            .args(["-qec", &format!("{HIVE} {args}"), "/dev/null"])
            .env("HIVE_STATE_DIR", state)
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let shown_tty = on_tty(&format!("show {id}"));
    assert!(
        shown_tty.contains("\u{1b}[1;31mrisk: network_host (widens isolation)\u{1b}[0m"),
        "{shown_tty:?}"
    );
    assert!(
        on_tty("approvals").contains("\u{1b}[1;31m1 "),
        "the widening request's row is red"
    );
    let listed = cli_ok(state, &["approvals", "--status", "pending"]);
    assert!(!listed.contains('\u{1b}'), "{listed:?}");
    assert!(listed.contains("RISK"), "{listed}");
    assert!(listed.contains("!network_host,!egress_added"), "{listed}");

    // Without the second confirmation: refused, with a stable code, nothing changed.
    let before = snapshot(state, "bob");
    let out = cli(state, &["approve", &id.to_string()]);
    assert!(!out.status.success());
    let said = text(&out.stderr);
    assert!(
        said.contains("widens the isolation") && said.contains("--yes-widen"),
        "{said}"
    );
    let (status, body) = rt.block_on(api(
        state,
        "POST",
        &format!("/api/v1/approvals/{id}/approve"),
        Some(r#"{"override_failed_build": true}"#),
    ));
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "widens_isolation", "{body}");
    assert_eq!(snapshot(state, "bob"), before);
    assert!(
        cli_ok(state, &["agents"])
            .lines()
            .all(|l| !l.starts_with("bob"))
    );

    // Confirmed: approved, and the check's build dir goes.
    let approved = cli_ok(state, &["approve", &id.to_string(), "--yes-widen"]);
    assert!(approved.contains(&format!("approved #{id}")), "{approved}");
    assert!(eventually(Duration::from_secs(10), || {
        !state.join(format!("build/bob/check-{id}")).exists()
    }));
}

#[test]
fn a_broken_agent_nix_shows_build_failed_before_anyone_approves() {
    if real_builder().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let _daemon = Daemon::start(state, PROCESS);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let manager = mcp_connect(&rt, state, "manager", "mcp.sock");
    let id = request_spawn_with(
        &rt,
        state,
        &manager,
        "carol",
        "allowedRecipients = [ ];\n    resources = { memoryMB = \"lots\"; };",
    );

    let shown = checked(state, id);
    assert_eq!(shown["status"], "pending", "nobody approved: {shown}");
    assert_eq!(shown["check"]["status"], "failed", "{shown}");
    let message = shown["check"]["message"].as_str().unwrap();
    assert!(message.contains("memoryMB"), "{message}");
    assert!(!message.contains(&state.display().to_string()), "{message}");
    let human = cli_ok(state, &["show", &id.to_string()]);
    assert!(human.contains("build: failed\n"), "{human}");
    assert!(human.contains("memoryMB"), "{human}");
    let listed = cli_ok(state, &["approvals"]);
    assert!(listed.contains("BUILD-FAILED"), "{listed}");

    // Approving needs the explicit override; without it nothing changes.
    let before = snapshot(state, "carol");
    let out = cli(state, &["approve", &id.to_string()]);
    assert!(!out.status.success());
    let said = text(&out.stderr);
    assert!(said.contains("--override-failed-build"), "{said}");
    let (status, body) = rt.block_on(api(
        state,
        "POST",
        &format!("/api/v1/approvals/{id}/approve"),
        Some(r#"{"yes_widen": true}"#),
    ));
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "build_check_failed", "{body}");
    assert_eq!(snapshot(state, "carol"), before);
    let approved = cli_ok(
        state,
        &["approve", &id.to_string(), "--override-failed-build"],
    );
    assert!(approved.contains(&format!("approved #{id}")), "{approved}");
}

#[test]
fn a_hive_without_a_builder_says_not_checked_and_approves_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let _daemon = Daemon::start(state, "");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let manager = mcp_connect(&rt, state, "manager", "mcp.sock");
    let id = request_spawn_with(
        &rt,
        state,
        &manager,
        "dave",
        "allowedRecipients = [ ];\n    network = \"host\";",
    );
    let shown: Value =
        serde_json::from_str(&cli_ok(state, &["show", &id.to_string(), "--json"])).unwrap();
    assert_eq!(shown["check"]["status"], "unavailable", "{shown}");
    assert!(
        shown["check"]["message"]
            .as_str()
            .unwrap()
            .contains("runs no agents"),
        "{shown}"
    );
    assert!(shown.get("risk").is_none(), "{shown}");
    let human = cli_ok(state, &["show", &id.to_string()]);
    assert!(human.contains("build: not checked ("), "{human}");
    let approved = cli_ok(state, &["approve", &id.to_string()]);
    assert!(approved.contains(&format!("approved #{id}")), "{approved}");
}

#[test]
fn an_apply_is_compared_with_the_running_image_and_a_cut_check_runs_again_at_start() {
    if real_builder().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let mut daemon = Daemon::start(state, PROCESS);
    cli_ok(state, &["spawn", "alice"]);
    assert!(
        eventually(CHECK_LIMIT, || cli_ok(state, &["history", "alice"])
            .contains("deployed")),
        "{}",
        cli_ok(state, &["history", "alice"])
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let manager = mcp_connect(&rt, state, "manager", "mcp.sock");
    let repo = state.join("agents/alice/config");
    let nix = std::fs::read_to_string(repo.join("agent.nix")).unwrap();
    std::fs::write(
        repo.join("agent.nix"),
        nix.replace(
            "allowedRecipients = [ ];",
            "allowedRecipients = [ ];\n    egress = [ \"api.example.com:443\" ];",
        ),
    )
    .unwrap();
    git(&repo, &["commit", "-qam", "egress"]);
    let sha = git(&repo, &["rev-parse", "HEAD"]);
    let queued = rt.block_on(mcp_ok(
        &manager,
        "request_apply_commit",
        json!({"agent": "alice", "commit": sha, "description": "reach the API"}),
    ));
    let id = queued["id"].as_i64().unwrap();
    // Against the running image (same prompt), not the defaults: only the egress is new.
    let flags = |shown: &Value| -> Vec<String> {
        shown["risk"]
            .as_array()
            .unwrap_or_else(|| panic!("no risk: {shown}"))
            .iter()
            .map(|f| f["flag"].as_str().unwrap().to_owned())
            .collect()
    };
    let shown = checked(state, id);
    assert_eq!(shown["check"]["status"], "ok", "{shown}");
    assert_eq!(flags(&shown), ["egress_added"], "{shown}");
    drop(manager);

    // A check a stop cut (left `checking`) is built again at the next start.
    assert!(daemon.sigterm().success());
    drop(daemon);
    open_db(state)
        .execute(
            "UPDATE approval_checks SET status = 'checking', risk = NULL, config = NULL,
                 closure_bytes = NULL, finished_at = NULL WHERE approval_id = ?1",
            [id],
        )
        .unwrap();
    let _daemon = Daemon::start(state, PROCESS);
    let shown = checked(state, id);
    assert_eq!(shown["check"]["status"], "ok", "{shown}");
    assert_eq!(flags(&shown), ["egress_added"], "{shown}");
    let approved = cli_ok(state, &["approve", &id.to_string(), "--yes-widen"]);
    assert!(approved.contains(&format!("approved #{id}")), "{approved}");
}
