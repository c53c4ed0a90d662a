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

/// Whether what an agent's image needs is here (nix-build, busybox; systemd-nspawn with
/// `nspawn`): a missing one fails the test unless skipping was allowed by hand.
fn images_ready(nspawn: bool) -> bool {
    tools::require("nix-build", tools::nix_build()).is_some()
        && tools::require("busybox", tools::busybox()).is_some()
        && (!nspawn || tools::require("systemd-nspawn", tools::systemd_nspawn()).is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_in_the_process_runtime_answers_the_operator_through_claude() {
    let Some(claude) = tools::require("claude", tools::claude_bin()) else {
        return;
    };
    if !images_ready(false) {
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
    let (dir, _daemon) = alice_up_in_the_process_runtime(&claude, &server);
    let state = dir.path().join("hive");
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

/// A daemon with the process runtime whose model is `server` (reached as in production: the
/// harness talks to the agent's gateway.sock, which forwards to `[model] anthropic_base_url`), the
/// manager stopped, and `alice` spawned and up, idle. The state dir is `hive` in the returned dir.
fn alice_up_in_the_process_runtime(
    claude: &Path,
    server: &ModelServer,
) -> (tempfile::TempDir, Daemon) {
    alice_up_with(claude, server, "")
}

/// [`alice_up_in_the_process_runtime`] with more of hive.toml (`extra`, whole sections).
fn alice_up_with(claude: &Path, server: &ModelServer, extra: &str) -> (tempfile::TempDir, Daemon) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("hive");
    let base_url = server.base_url();
    let claude = claude.display().to_string();
    let config = format!(
        "[runtime]\nkind = \"process\"\nstop_timeout_seconds = 5\n\n[model]\nanthropic_base_url = \"{base_url}\"\n\n{extra}"
    );
    let daemon = Daemon::start_with_env(
        &state,
        &config,
        &[
            ("HIVE_CLAUDE", claude.as_str()),
            ("CLAUDE_CODE_MAX_RETRIES", "0"),
        ],
    );
    quiet_manager(&state);
    cli_ok(&state, &["spawn", "alice"]);
    let mut last = Value::Null;
    let idle = eventually(LIMIT, || {
        last = run_of(&state, "alice");
        last["up"] == true && last["turn_state"] == "idle"
    });
    assert!(idle, "alice never came up idle: {last}");
    (dir, daemon)
}

/// Stops the manager once it is up: it would otherwise take turns on the watcher's events
/// (`spawned`, `rebuilt` …) and use up the scripted model's answers meant for alice.
fn quiet_manager(state: &Path) {
    let mut last = Value::Null;
    assert!(
        eventually(LIMIT, || {
            last = run_of(state, "manager");
            last["up"] == true
        }),
        "the manager did not come up: {last}"
    );
    cli_ok(state, &["stop", "manager"]);
}

/// Commits `from` → `to` in `agent`'s agent.nix as the manager would, has the operator approve
/// it, and waits until it is deployed.
fn change_agent_nix(rt: &tokio::runtime::Runtime, state: &Path, agent: &str, from: &str, to: &str) {
    let repo = state.join("agents").join(agent).join("config");
    let nix = std::fs::read_to_string(repo.join("agent.nix")).unwrap();
    let changed = nix.replace(from, to);
    assert_ne!(changed, nix, "the template changed: adjust this test");
    std::fs::write(repo.join("agent.nix"), changed).unwrap();
    git(&repo, &["commit", "-qam", "a change for the test"]);
    let sha = git(&repo, &["rev-parse", "HEAD"]);
    let manager = mcp_connect(rt, state, "manager", "mcp.sock");
    let queued = rt.block_on(mcp_ok(
        &manager,
        "request_apply_commit",
        json!({"agent": agent, "commit": sha, "description": "a change for the test"}),
    ));
    let approval = queued["id"].as_i64().unwrap().to_string();
    cli_ok(state, &["approve", &approval]);
    let mut last = Value::Null;
    assert!(
        eventually(LIMIT, || {
            last = serde_json::from_str(&cli_ok(state, &["show", &approval, "--json"])).unwrap();
            last["status"] == "deployed" || last["status"] == "failed"
        }),
        "{last}"
    );
    assert_eq!(last["status"], "deployed", "{last}");
}

/// `hive logs AGENT`: the container's output (the harness's lines among it).
fn log_of(state: &Path, agent: &str) -> String {
    text(&cli(state, &["logs", agent]).stdout)
}

/// Waits until the operator's inbox holds a message from `from` with `body`.
fn wait_for_answer(rt: &tokio::runtime::Runtime, state: &Path, from: &str, body: &str) {
    let mut inbox = Value::Null;
    let got = eventually(LIMIT, || {
        inbox = rt
            .block_on(api(state, "GET", "/api/v1/inbox?limit=50", None))
            .1;
        inbox
            .as_array()
            .into_iter()
            .flatten()
            .chain(inbox["messages"].as_array().into_iter().flatten())
            .any(|m| m["from"] == from && m["body"] == body)
    });
    assert!(
        got,
        "no {body:?} from {from} in the operator's inbox: {inbox}\nlog:\n{}",
        log_of(state, from)
    );
}

/// The outcome of the finished turn of message `id`, once it has one.
fn finished_turn(state: &Path, id: i64) -> (String, i64) {
    let db = open_db(state);
    let mut outcome = None;
    let done = eventually(LIMIT, || {
        outcome = db
            .query_row(
                "SELECT outcome, (SELECT count(*) FROM turn_events e WHERE e.turn = t.id) \
                 FROM turns t WHERE message_id = ?1 AND outcome IS NOT NULL",
                [id],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
            )
            .ok();
        outcome.is_some()
    });
    assert!(done, "the turn of message {id} did not finish");
    outcome.unwrap()
}

#[test]
fn an_agent_in_an_nspawn_container_answers_through_claude_and_resumes_after_idle() {
    let Some(claude) = tools::require("claude", tools::claude_bin()) else {
        return;
    };
    if !images_ready(true) {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = ModelServer::start_blocking(vec![
        Reply::tool_use(
            "mcp__hive__send",
            json!({"to": "operator", "body": "hello operator"}),
        ),
        Reply::text("answered"),
        Reply::tool_use(
            "mcp__hive__send",
            json!({"to": "operator", "body": "second"}),
        ),
        Reply::text("answered again"),
        Reply::tool_use(
            "mcp__hive__send",
            json!({"to": "operator", "body": "third"}),
        ),
        Reply::text("answered after a rest"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("hive");
    let base_url = server.base_url();
    // The container has only `lo` (--private-network): the model is reached through the agent's
    // gateway.sock, which forwards to the scripted server; claude is bound in from the host.
    let config = format!(
        "[runtime]\nkind = \"nspawn\"\nstop_timeout_seconds = 5\n\n[model]\nanthropic_base_url = \"{base_url}\"\n"
    );
    let claude_path = claude.display().to_string();
    let _daemon = Daemon::start_with_env(&state, &config, &[("HIVE_CLAUDE", &claude_path)]);
    let status = cli_ok(&state, &["status"]);
    let real = std::fs::canonicalize(&claude).unwrap();
    assert!(
        status.contains(&format!("driver:      claude at {}", real.display())),
        "{status}"
    );

    // alice's claude is stopped after 6 idle seconds (the harness reads its environment from
    // the agent's config).
    quiet_manager(&state);
    cli_ok(&state, &["spawn", "alice"]);
    let mut last = Value::Null;
    change_agent_nix(
        &rt,
        &state,
        "alice",
        "allowedRecipients = [ ];",
        "allowedRecipients = [ ];\n    env = { HIVE_CLAUDE_IDLE_SECONDS = \"6\"; };",
    );
    assert!(
        eventually(LIMIT, || {
            last = run_of(&state, "alice");
            last["up"] == true && last["turn_state"] == "idle"
        }),
        "alice never came up idle: {last}\n{}",
        log_of(&state, "alice")
    );

    let first = rt.block_on(send(&state, "alice", "say hello"));
    wait_for_answer(&rt, &state, "alice", "hello operator");
    let (outcome, events) = finished_turn(&state, first);
    assert_eq!(outcome, "ok", "{}", log_of(&state, "alice"));
    assert!(events >= 4, "{events} events");
    let session = std::fs::read_to_string(state.join("agents/alice/state/claude-session")).unwrap();
    assert!(!session.is_empty());

    // A second message: the same warm process.
    let second = rt.block_on(send(&state, "alice", "again"));
    wait_for_answer(&rt, &state, "alice", "second");
    assert_eq!(finished_turn(&state, second).0, "ok");
    let starts = |log: &str| log.lines().filter(|l| l.contains("claude started")).count();
    assert_eq!(
        starts(&log_of(&state, "alice")),
        1,
        "{}",
        log_of(&state, "alice")
    );

    // Idle past the timeout: the process goes; the third message resumes the same session.
    assert!(
        eventually(LIMIT, || log_of(&state, "alice").contains("claude idle")),
        "{}",
        log_of(&state, "alice")
    );
    let third = rt.block_on(send(&state, "alice", "after a rest"));
    wait_for_answer(&rt, &state, "alice", "third");
    assert_eq!(finished_turn(&state, third).0, "ok");
    let log = log_of(&state, "alice");
    assert_eq!(starts(&log), 2, "{log}");
    assert!(
        log.contains(&format!("resuming session {session}")),
        "{log}"
    );
    let sessions: Vec<String> = server
        .model_requests()
        .iter()
        .map(|r| {
            r.header("x-claude-code-session-id")
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    // Six scripted answers were used (the CLI may add a request of its own after a resume).
    assert!(sessions.len() >= 6, "{sessions:?}");
    assert!(sessions.iter().all(|s| *s == session), "{sessions:?}");
    // The resumed conversation holds the earlier turns.
    let history = server.model_requests()[4].body["messages"].to_string();
    assert!(history.contains("say hello"), "{history}");
}

#[test]
fn a_missing_claude_cli_is_named_by_status_and_show_agent() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("hive");
    let missing = dir.path().join("no-such-claude");
    let config = format!(
        "[runtime]\nkind = \"process\"\nstop_timeout_seconds = 5\nclaude = \"{}\"\n",
        missing.display()
    );
    let _daemon = Daemon::start(&state, &config);
    let status = cli_ok(&state, &["status"]);
    let line = status
        .lines()
        .find(|l| l.starts_with("driver:"))
        .unwrap_or_else(|| panic!("{status}"));
    assert!(
        line.contains("claude not found")
            && line.contains(&missing.display().to_string())
            && line.contains("set [runtime] claude"),
        "{line}"
    );
    let shown = cli_ok(&state, &["show-agent", "manager"]);
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("driver:") && l.contains("claude not found")),
        "{shown}"
    );
}

/// 401 → `needs_login`, the message given back; the operator's login (the credentials file the
/// claude CLI's login writes) wakes the harness at once — not its one-minute fallback — and the
/// message is answered, flagged as delivered again.
#[test]
fn an_agent_that_needs_a_login_answers_as_soon_as_the_credentials_appear() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(claude) = tools::require("claude", tools::claude_bin()) else {
        return;
    };
    if !images_ready(false) {
        return;
    }
    let server = rt.block_on(ModelServer::start(vec![
        Reply::invalid_api_key(),
        Reply::tool_use(
            "mcp__hive__send",
            json!({"to": "operator", "body": "after the login"}),
        ),
        Reply::text("answered"),
    ]));
    let (dir, _daemon) = alice_up_in_the_process_runtime(&claude, &server);
    let state = dir.path().join("hive");
    let mut last = Value::Null;
    let id = rt.block_on(send(&state, "alice", "are you there?"));
    assert!(
        eventually(LIMIT, || {
            last = run_of(&state, "alice");
            last["turn_state"] == "needs_login"
        }),
        "alice never reported needs_login: {last}\n{}",
        log_of(&state, "alice")
    );
    let db = open_db(&state);
    let queued = || {
        db.query_row(
            "SELECT state, redelivered FROM messages WHERE id = ?1",
            [id],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?)),
        )
        .unwrap()
    };
    assert!(
        eventually(LIMIT, || queued() == ("queued".to_owned(), true)),
        "the message was not given back: {:?}",
        queued()
    );

    // The operator logs alice in, as `hive login alice` would.
    let dir = state.join("secrets/alice/home/.claude");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(".credentials.json"),
        r#"{"claudeAiOauth":{"accessToken":"x"}}"#,
    )
    .unwrap();
    let logged_in = std::time::Instant::now();
    wait_for_answer(&rt, &state, "alice", "after the login");
    // Well inside the harness's one-minute fallback: the login itself woke it.
    let took = logged_in.elapsed();
    assert!(
        took < Duration::from_secs(40),
        "the answer came {took:?} after the login"
    );
    let mut outcomes = Vec::new();
    assert!(
        eventually(LIMIT, || {
            let mut q = db
                .prepare("SELECT outcome FROM turns WHERE message_id = ?1 ORDER BY id")
                .unwrap();
            outcomes = q
                .query_map([id], |r| r.get::<_, Option<String>>(0))
                .unwrap()
                .map(Result::unwrap)
                .collect::<Vec<_>>();
            outcomes.last().is_some_and(|o| o.as_deref() == Some("ok"))
        }),
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes,
        [Some("abandoned".to_owned()), Some("ok".to_owned())],
        "one turn given back for the login, one answered"
    );
}

/// The openai driver end to end in a real container with no network: the model (a scripted
/// OpenAI-compatible server) reached through gateway.sock, the tool loop run by the harness as an
/// MCP client of its socket, the conversation kept in /state across turns.
#[test]
fn an_agent_with_the_openai_driver_answers_from_an_nspawn_container() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    if !images_ready(true) {
        return;
    }
    let server = ModelServer::start_blocking(vec![
        Reply::tool_use(
            "mcp__hive__send",
            json!({"to": "operator", "body": "hello from openai"}),
        ),
        Reply::text("answered"),
        Reply::tool_use(
            "mcp__hive__send",
            json!({"to": "operator", "body": "still here"}),
        ),
        Reply::text("answered again"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("hive");
    let base_url = server.base_url();
    let config = format!(
        "[runtime]\nkind = \"nspawn\"\nstop_timeout_seconds = 5\n\n[model]\nopenai_base_url = \"{base_url}\"\n"
    );
    let _daemon = Daemon::start(&state, &config);
    quiet_manager(&state);
    cli_ok(&state, &["spawn", "alice"]);
    change_agent_nix(
        &rt,
        &state,
        "alice",
        "driver = \"claude\";",
        "driver = \"openai\";",
    );
    let mut last = Value::Null;
    assert!(
        eventually(LIMIT, || {
            last = run_of(&state, "alice");
            last["up"] == true && last["turn_state"] == "idle"
        }),
        "alice never came up idle: {last}\n{}",
        log_of(&state, "alice")
    );
    let first = rt.block_on(send(&state, "alice", "say hello"));
    wait_for_answer(&rt, &state, "alice", "hello from openai");
    assert_eq!(finished_turn(&state, first).0, "ok");
    let second = rt.block_on(send(&state, "alice", "are you still there?"));
    wait_for_answer(&rt, &state, "alice", "still here");
    assert_eq!(finished_turn(&state, second).0, "ok");
    let requests = server.model_requests();
    assert!(
        requests.iter().all(|r| r.is_chat_completions()),
        "{requests:?}"
    );
    assert!(
        requests[0]
            .tool_names()
            .iter()
            .any(|t| t == "mcp__hive__send"),
        "{:?}",
        requests[0].tool_names()
    );
    // The second turn's request carries the first turn's conversation (kept in /state).
    let history = requests[2].body["messages"].to_string();
    assert!(
        history.contains("say hello") && history.contains("hello from openai"),
        "{history}"
    );
    assert!(
        state
            .join("agents/alice/state/openai-conversation.json")
            .is_file()
    );
}

/// The key stays on the host: an agent in an nspawn container whose operator stored an API key
/// for it (`hive login --api-key-file`) completes a turn; the provider saw exactly that key on
/// every request; no process of the container holds it in its environment or command line, and
/// no file under the agent's state or home does.
#[test]
fn an_nspawn_agent_with_its_own_key_answers_and_the_key_never_enters_the_container() {
    let Some(claude) = tools::require("claude", tools::claude_bin()) else {
        return;
    };
    if tools::require("nix-build", tools::nix_build()).is_none()
        || tools::require("busybox", tools::busybox()).is_none()
        || tools::require("systemd-nspawn", tools::systemd_nspawn()).is_none()
    {
        return;
    }
    const KEY: &str = "sk-ant-api03-gate-test-Kq7Zr2Vw9Xy4";
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = ModelServer::start_blocking(vec![
        Reply::tool_use(
            "mcp__hive__send",
            json!({"to": "operator", "body": "keyed hello"}),
        ),
        Reply::text("answered"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("hive");
    let config = format!(
        "[runtime]\nkind = \"nspawn\"\nstop_timeout_seconds = 5\n\n[model]\nanthropic_base_url = \"{}\"\n",
        server.base_url()
    );
    let claude_path = claude.display().to_string();
    let _daemon = Daemon::start_with_env(&state, &config, &[("HIVE_CLAUDE", &claude_path)]);
    quiet_manager(&state);
    cli_ok(&state, &["spawn", "alice"]);
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    cli_ok(
        &state,
        &[
            "login",
            "alice",
            "--api-key-file",
            key_file.to_str().unwrap(),
        ],
    );
    std::fs::remove_file(&key_file).unwrap();
    let mut last = Value::Null;
    assert!(
        eventually(LIMIT, || {
            last = run_of(&state, "alice");
            last["up"] == true && last["turn_state"] == "idle"
        }),
        "alice never came up idle: {last}\n{}",
        log_of(&state, "alice")
    );
    let id = rt.block_on(send(&state, "alice", "say hello"));
    wait_for_answer(&rt, &state, "alice", "keyed hello");
    assert_eq!(
        finished_turn(&state, id).0,
        "ok",
        "{}",
        log_of(&state, "alice")
    );
    let keys: Vec<Option<String>> = server
        .model_requests()
        .iter()
        .map(|r| r.api_key().map(str::to_owned))
        .collect();
    assert!(keys.len() >= 2, "{keys:?}");
    assert!(keys.iter().all(|k| k.as_deref() == Some(KEY)), "{keys:?}");

    // The container's processes while claude is still warm.
    let mut seen = Vec::new();
    let mut proxied = false;
    for pid in container_pids(&state, "alice") {
        let proc_dir = std::path::PathBuf::from(format!("/proc/{pid}"));
        let cmdline = std::fs::read(proc_dir.join("cmdline")).unwrap_or_default();
        let environ = std::fs::read(proc_dir.join("environ")).unwrap_or_default();
        let shown = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        for (what, bytes) in [("cmdline", &cmdline), ("environ", &environ)] {
            assert!(
                !contains(bytes, KEY.as_bytes()),
                "the key is in the {what} of {shown}"
            );
        }
        assert!(
            !memory_holds(pid, KEY.as_bytes()),
            "the key is in the memory of {shown}"
        );
        // claude (and the commands it runs) get the egress relay as their proxy.
        proxied |= shown.contains("claude") && contains(&environ, b"HTTPS_PROXY=http://127.0.0.1:");
        seen.push(shown);
    }
    assert!(proxied, "claude has no HTTPS_PROXY: {seen:?}");
    assert!(
        seen.iter().any(|c| c.contains("hive-agent")) && seen.iter().any(|c| c.contains("claude")),
        "the container's harness and claude were not found: {seen:?}"
    );
    for root in [
        state.join("agents/alice/state"),
        state.join("secrets/alice/home"),
    ] {
        let files = files_under(&root);
        assert!(!files.is_empty(), "nothing under {}", root.display());
        for file in files {
            let bytes = std::fs::read(&file).unwrap();
            assert!(
                !contains(&bytes, KEY.as_bytes()),
                "the key is in {}",
                file.display()
            );
        }
    }

    // The hive's own report says the same, checked (not assumed): no key inside, network none.
    let shown: Value =
        serde_json::from_str(&cli_ok(&state, &["show-agent", "alice", "--json"])).unwrap();
    let c = &shown["confinement"];
    assert_eq!(c["network"], "none", "{shown}");
    assert_eq!(c["key_inside"], false, "{shown}");
    assert!(c["files_searched"].as_u64().unwrap() > 0, "{shown}");
    assert!(c["tokens_today"].as_u64().unwrap() > 0, "{shown}");
    // A key planted where the container can write is found, and named.
    let planted = state.join("secrets/alice/home/planted.txt");
    std::fs::write(&planted, format!("export KEY={KEY}\n")).unwrap();
    let shown: Value =
        serde_json::from_str(&cli_ok(&state, &["show-agent", "alice", "--json"])).unwrap();
    let c = &shown["confinement"];
    assert_eq!(c["key_inside"], true, "{shown}");
    assert!(
        c["key_found_in"].to_string().contains("planted.txt"),
        "{shown}"
    );
    assert!(
        !shown.to_string().contains(KEY),
        "the report never holds the key"
    );
    let text = cli_ok(&state, &["show-agent", "alice"]);
    assert!(text.contains("key inside:      YES"), "{text}");
    std::fs::remove_file(&planted).unwrap();
}

/// alice's approved agent.nix gives her a daily budget far below one model call: the call that
/// spends it goes through and tells the manager `budget_exhausted` once; every later call is
/// refused by the gateway (429, with a body saying why) without reaching the provider. Each call
/// is stored with its usage, and `hive agent` shows the tokens against the budget.
#[test]
fn a_spent_budget_refuses_the_next_model_calls_and_tells_the_manager_once() {
    let Some(claude) = tools::require("claude", tools::claude_bin()) else {
        return;
    };
    if !images_ready(false) {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = ModelServer::start_blocking(vec![
        Reply::tool_use(
            "mcp__hive__send",
            json!({"to": "operator", "body": "within budget"}),
        ),
        Reply::text("never reached"),
        Reply::text("never reached either"),
    ]);
    let (dir, _daemon) = alice_up_in_the_process_runtime(&claude, &server);
    let state = dir.path().join("hive");
    change_agent_nix(
        &rt,
        &state,
        "alice",
        "allowedRecipients = [ ];",
        "allowedRecipients = [ ];\n    budget.tokensPerDay = 50;",
    );
    let mut last = Value::Null;
    assert!(
        eventually(LIMIT, || {
            last = run_of(&state, "alice");
            last["up"] == true && last["turn_state"] == "idle"
        }),
        "alice did not come back: {last}"
    );
    let first = rt.block_on(send(&state, "alice", "say something"));
    wait_for_answer(&rt, &state, "alice", "within budget");
    let (outcome, _) = finished_turn(&state, first);
    assert_ne!(
        outcome, "ok",
        "the call after the spent budget failed the turn"
    );
    assert_eq!(
        server.model_requests().len(),
        1,
        "only the first call reached the provider"
    );
    let second = rt.block_on(send(&state, "alice", "and again"));
    finished_turn(&state, second);
    assert_eq!(
        server.model_requests().len(),
        1,
        "{}",
        log_of(&state, "alice")
    );

    let db = open_db(&state);
    let told: Vec<String> = db
        .prepare(
            "SELECT body FROM messages WHERE recipient = 'manager' AND sender = 'system'
             AND body LIKE '%budget_exhausted%'",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(told.len(), 1, "{told:?}");
    let event: Value = serde_json::from_str(&told[0]).unwrap();
    assert_eq!(event["agent"], "alice");
    assert_eq!(event["tokens_per_day"], 50);
    let (calls, tokens): (i64, i64) = db
        .query_row(
            "SELECT count(*), sum(input_tokens + output_tokens) FROM model_calls
             WHERE agent = 'alice' AND status = 200",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(calls, 1);
    assert!(tokens >= 50, "{tokens}");
    // What claude saw of the refusal: the gateway's reason, in the turn's events.
    let events: String = db
        .query_row(
            "SELECT group_concat(e.data, ' ') FROM turn_events e JOIN turns t ON e.turn = t.id
             WHERE t.message_id = ?1",
            [second],
            |r| r.get(0),
        )
        .unwrap();
    assert!(events.contains("daily token budget is spent"), "{events}");
    let shown: Value =
        serde_json::from_str(&cli_ok(&state, &["show-agent", "alice", "--json"])).unwrap();
    assert_eq!(shown["confinement"]["tokens_per_day"], 50, "{shown}");
    assert!(
        shown["confinement"]["tokens_today"].as_u64().unwrap() >= 50,
        "{shown}"
    );
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether a readable mapping of `pid`'s memory holds `needle` (read through `/proc/PID/mem`).
fn memory_holds(pid: u32, needle: &[u8]) -> bool {
    use std::os::unix::fs::FileExt;
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return false;
    };
    let Ok(mem) = std::fs::File::open(format!("/proc/{pid}/mem")) else {
        return false;
    };
    let mut buf = vec![0u8; 1 << 20];
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !perms.starts_with('r') || line.ends_with("[vvar]") || line.ends_with("[vsyscall]") {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        // Chunks overlap by the needle's length, so one cut in two is still found.
        let mut at = start;
        while at < end {
            let len = ((end - at) as usize).min(buf.len());
            let Ok(n) = mem.read_at(&mut buf[..len], at) else {
                break;
            };
            if n == 0 {
                break;
            }
            if memchr::memmem::find(&buf[..n], needle).is_some() {
                return true;
            }
            if at + n as u64 >= end {
                break;
            }
            at += (n.saturating_sub(needle.len())).max(1) as u64;
        }
    }
    false
}

/// Every regular file under `root`, symlinks not followed.
fn files_under(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_owned()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                todo.push(entry.path());
            } else if kind.is_file() {
                out.push(entry.path());
            }
        }
    }
    out
}

/// Secrets never in what the broker writes: with an agent's own key stored, a provider error
/// that quotes the key, a refused key file and an ordinary turn leave the key nowhere — not in
/// the daemon's log (at `info`), not in any file under the state dir (the db and its WAL, the
/// agent's log, its state and home) but the stored key file itself.
#[test]
fn a_key_quoted_by_the_provider_or_refused_is_in_no_log_event_or_file() {
    let Some(claude) = tools::require("claude", tools::claude_bin()) else {
        return;
    };
    if tools::require("nix-build", tools::nix_build()).is_none()
        || tools::require("busybox", tools::busybox()).is_none()
        || tools::require("systemd-nspawn", tools::systemd_nspawn()).is_none()
    {
        return;
    }
    // Nothing about it looks like a key: only knowing it masks it.
    const KEY: &str = "opaque0secret1value2Zq9";
    const REFUSED: &str = "refused3secret4value5Wx8";
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = ModelServer::start_blocking(vec![
        Reply::api_error(
            403,
            "permission_error",
            &format!("the key {KEY} may not use this model"),
        ),
        Reply::tool_use(
            "mcp__hive__send",
            json!({"to": "operator", "body": "after the error"}),
        ),
        Reply::text("answered"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("hive");
    let stderr = dir.path().join("daemon.stderr");
    let config = format!(
        "[runtime]\nkind = \"nspawn\"\nstop_timeout_seconds = 5\n\n[model]\nanthropic_base_url = \"{}\"\n",
        server.base_url()
    );
    let claude_path = claude.display().to_string();
    let daemon = Daemon::start_logging_to(
        &state,
        &config,
        &[
            ("HIVE_CLAUDE", &claude_path),
            ("CLAUDE_CODE_MAX_RETRIES", "0"),
            ("RUST_LOG", "info"),
        ],
        Some(&stderr),
    );
    quiet_manager(&state);
    cli_ok(&state, &["spawn", "alice"]);
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, format!("{REFUSED} and more\n")).unwrap();
    let refused = cli(
        &state,
        &[
            "login",
            "alice",
            "--api-key-file",
            key_file.to_str().unwrap(),
        ],
    );
    assert!(!refused.status.success());
    let said = format!("{}{}", text(&refused.stdout), text(&refused.stderr));
    assert!(said.contains("not an API key"), "{said}");
    assert!(!said.contains(REFUSED), "{said}");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    cli_ok(
        &state,
        &[
            "login",
            "alice",
            "--api-key-file",
            key_file.to_str().unwrap(),
        ],
    );
    let mut last = Value::Null;
    assert!(
        eventually(LIMIT, || {
            last = run_of(&state, "alice");
            last["up"] == true && last["turn_state"] == "idle"
        }),
        "alice never came up idle: {last}\n{}",
        log_of(&state, "alice")
    );
    let first = rt.block_on(send(&state, "alice", "try the model"));
    let (outcome, _) = finished_turn(&state, first);
    assert_ne!(outcome, "ok", "{}", log_of(&state, "alice"));
    let second = rt.block_on(send(&state, "alice", "again"));
    wait_for_answer(&rt, &state, "alice", "after the error");
    assert_eq!(finished_turn(&state, second).0, "ok");
    // The first turn's events say what the provider said, masked.
    let events: String = open_db(&state)
        .query_row(
            "SELECT group_concat(e.data, ' ') FROM turn_events e JOIN turns t ON e.turn = t.id \
             WHERE t.message_id = ?1",
            [first],
            |r| r.get::<_, Option<String>>(0),
        )
        .unwrap()
        .unwrap_or_default();
    assert!(
        events.contains("may not use this model") && events.contains("[redacted]"),
        "{events}"
    );
    drop(daemon);
    let log = std::fs::read(&stderr).unwrap();
    assert!(
        String::from_utf8_lossy(&log).contains("model request"),
        "the daemon logged no model request at info"
    );
    let stored = state.join("secrets/alice/api-key");
    let mut written = files_under(&state);
    written.retain(|f| *f != stored);
    written.push(stderr.clone());
    assert!(written.len() > 10, "{written:?}");
    for file in written {
        let bytes = std::fs::read(&file).unwrap();
        for secret in [KEY, REFUSED] {
            assert!(
                !contains(&bytes, secret.as_bytes()),
                "{secret} is in {}",
                file.display()
            );
        }
    }
    let requests = server.model_requests();
    assert!(
        requests.iter().all(|r| r.api_key() == Some(KEY)),
        "the provider did not see the agent's key"
    );
}

/// The egress allow-list from inside a container (its own network namespace, only `lo`): the
/// relay in `hive-agent` passes CONNECT to the gateway, which lets through exactly the approved
/// `hyperhive.egress` pairs. A pair merely proposed is still refused; once approved, an allowed
/// loopback upstream listed literally answers; an unlisted port, the metadata address and a name
/// resolving to loopback get 403. Each denial is one audit row and one line in the agent's log.
#[test]
fn connect_from_a_container_reaches_only_its_approved_egress_pairs() {
    let Some(claude) = tools::require("claude", tools::claude_bin()) else {
        return;
    };
    if tools::require("nix-build", tools::nix_build()).is_none()
        || tools::require("busybox", tools::busybox()).is_none()
        || tools::require("systemd-nspawn", tools::systemd_nspawn()).is_none()
        || tools::require("curl", tools::which("curl")).is_none()
        || tools::require("nsenter", tools::which("nsenter")).is_none()
    {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    // The upstream: a one-answer HTTP server on the host's loopback.
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = upstream.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in upstream.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nupstream",
            );
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("hive");
    let config =
        "[runtime]\nkind = \"nspawn\"\nstop_timeout_seconds = 5\n\n[dashboard]\nport = 0\n";
    let claude_path = claude.display().to_string();
    let _daemon = Daemon::start_with_env(&state, config, &[("HIVE_CLAUDE", &claude_path)]);
    quiet_manager(&state);
    cli_ok(&state, &["spawn", "alice"]);
    let allowed = format!("127.0.0.1:{port}");
    let unlisted = format!("127.0.0.1:{}", port.wrapping_add(1).max(1));
    let by_name = format!("localhost:{port}");
    let metadata = "169.254.169.254:80".to_owned();
    // The daemon's own dashboard, on the host's loopback.
    let dashboard = std::fs::read_to_string(state.join("run/dashboard.addr"))
        .unwrap()
        .trim()
        .to_owned();

    let inside = wait_for_relay(&state, 1);
    let (code, said) = connect_inside(inside, &allowed);
    assert_eq!(code, "403", "before any egress list: {said}");

    // The manager proposes the list; until the operator approves, nothing changes.
    let repo = state.join("agents/alice/config");
    let nix = std::fs::read_to_string(repo.join("agent.nix")).unwrap();
    let changed = nix.replace(
        "allowedRecipients = [ ];",
        &format!("allowedRecipients = [ ];\n    egress = [ \"{allowed}\" \"{by_name}\" ];"),
    );
    assert_ne!(changed, nix, "the template changed: adjust this test");
    std::fs::write(repo.join("agent.nix"), changed).unwrap();
    git(&repo, &["commit", "-qam", "egress for the test"]);
    let sha = git(&repo, &["rev-parse", "HEAD"]);
    let manager = mcp_connect(&rt, &state, "manager", "mcp.sock");
    let queued = rt.block_on(mcp_ok(
        &manager,
        "request_apply_commit",
        json!({"agent": "alice", "commit": sha, "description": "egress"}),
    ));
    let approval = queued["id"].as_i64().unwrap().to_string();
    assert_eq!(
        connect_inside(inside, &allowed).0,
        "403",
        "while only proposed"
    );
    // Adding egress widens isolation: it needs the second confirmation.
    cli_ok(&state, &["approve", &approval, "--yes-widen"]);
    let mut last = Value::Null;
    assert!(
        eventually(LIMIT, || {
            last = serde_json::from_str(&cli_ok(&state, &["show", &approval, "--json"])).unwrap();
            last["status"] == "deployed" || last["status"] == "failed"
        }),
        "{last}"
    );
    assert_eq!(last["status"], "deployed", "{last}");
    let inside = wait_for_relay(&state, 2);

    let (code, body) = connect_inside(inside, &allowed);
    assert_eq!((code.as_str(), body.as_str()), ("200", "upstream"));
    for refused in [&unlisted, &dashboard, &metadata, &by_name] {
        let (code, said) = connect_inside(inside, refused);
        assert_eq!(code, "403", "{refused}: {said}");
    }
    // Each denial audited once, and one line in alice's log.
    let db = open_db(&state);
    let mut q = db
        .prepare("SELECT json_extract(detail, '$.target'), json_extract(detail, '$.reason') FROM audit WHERE action = 'egress_denied' AND agent = 'alice' ORDER BY id")
        .unwrap();
    let denied: Vec<(String, String)> = q
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let targets: Vec<&str> = denied.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        targets,
        [
            &allowed, &allowed, &unlisted, &dashboard, &metadata, &by_name
        ]
        .map(String::as_str),
        "{denied:?}"
    );
    assert!(denied[5].1.contains("listed literally"), "{denied:?}");
    let log = std::fs::read_to_string(state.join("logs/alice.log")).unwrap();
    for target in [&unlisted, &dashboard, &metadata, &by_name] {
        let lines = log
            .lines()
            .filter(|l| l.contains(&format!("egress to {target} denied")))
            .count();
        assert_eq!(lines, 1, "{target}:\n{log}");
    }
    // The agent's report counts every denial since the daemon started: the two before the
    // approval and the four after.
    let shown: Value =
        serde_json::from_str(&cli_ok(&state, &["show-agent", "alice", "--json"])).unwrap();
    let c = &shown["confinement"];
    assert_eq!(c["egress_denied"], 6, "{shown}");
    assert_eq!(c["network"], "none", "{shown}");
    assert_eq!(c["egress"], json!([allowed, by_name]), "{shown}");
}

/// The pid of alice's harness (for its network namespace) and its relay's port, once the
/// `started`-th harness (counted from 1) logged its relay.
fn wait_for_relay(state: &Path, started: usize) -> (u32, u16) {
    let mut found = None;
    let ok = eventually(LIMIT, || {
        let log = log_of(state, "alice");
        let relays: Vec<u16> = log
            .lines()
            .filter_map(|l| l.split("egress relay on 127.0.0.1:").nth(1))
            .filter_map(|p| p.trim().parse::<u16>().ok())
            .collect();
        found = (relays.len() == started)
            .then(|| harness_pid(state, "alice"))
            .flatten()
            .zip(relays.last().copied());
        found.is_some()
    });
    assert!(ok, "no relay in alice's log:\n{}", log_of(state, "alice"));
    found.unwrap()
}

/// curl in the container's network namespace, through its relay, to `target`: the HTTP code of
/// the CONNECT's answer (or of the tunnelled request when it was let through) and the body.
fn connect_inside((pid, relay): (u32, u16), target: &str) -> (String, String) {
    let out = std::process::Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-n",
            "--",
            "curl",
            "-sS",
            "-p",
            "--max-time",
            "10",
        ])
        .args(["-x", &format!("http://127.0.0.1:{relay}")])
        .args(["-w", "\n%{http_connect} %{http_code}"])
        .arg(format!("http://{target}/"))
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    let (body, codes) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let mut codes = codes.split_whitespace();
    let (connect, http) = (codes.next().unwrap_or(""), codes.next().unwrap_or(""));
    if connect == "200" {
        (http.to_owned(), body.to_owned())
    } else {
        (connect.to_owned(), format!("{body}{}", text(&out.stderr)))
    }
}

/// The `hive-agent serve` processes running for `agent` (found through their command lines).
fn harnesses_of(state: &Path, agent: &str) -> Vec<u32> {
    let run_dir = state.join("run/agents").join(agent);
    let needle = format!("{}", run_dir.display());
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains("hive-agent serve") && cmdline.contains(&needle)
        })
        .collect()
}

/// A model that hangs mid-turn: the agent turns `stuck` once the turn has been quiet for
/// `stuck_after_seconds`, the manager is told once, and the operator's restart leaves exactly one
/// harness, which takes the message again and finishes it.
#[test]
fn a_turn_that_hangs_makes_the_agent_stuck_once_and_a_restart_leaves_one_harness() {
    let Some(claude) = tools::require("claude", tools::claude_bin()) else {
        return;
    };
    if !images_ready(false) {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = ModelServer::start_blocking(vec![Reply::Hang]);
    let (dir, _daemon) = alice_up_with(
        &claude,
        &server,
        "[watcher]\nreconcile_seconds = 1\nstuck_after_seconds = 2\n",
    );
    let state = dir.path().join("hive");
    let liveness = |agent: &str| -> Value {
        let agents: Vec<Value> =
            serde_json::from_str(&cli_ok(&state, &["agents", "--json"])).unwrap();
        agents
            .into_iter()
            .find(|a| a["name"] == agent)
            .map(|a| a["liveness"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(liveness("alice"), "idle");
    let id = rt.block_on(send(&state, "alice", "work on this"));
    let mut last = Value::Null;
    assert!(
        eventually(LIMIT, || {
            last = liveness("alice");
            last == "stuck"
        }),
        "alice never became stuck: {last}"
    );
    assert_eq!(server.model_requests().len(), 1, "the hanging call");
    let db = open_db(&state);
    let stuck_events = || -> i64 {
        db.query_row(
            "SELECT count(*) FROM messages WHERE recipient = 'manager' AND sender = 'system'
             AND json_extract(body, '$.event') = 'stuck' AND json_extract(body, '$.agent') = 'alice'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert!(eventually(LIMIT, || stuck_events() == 1));
    let text = cli_ok(&state, &["agents"]);
    assert!(
        text.contains("LIVENESS") && text.contains("stuck"),
        "{text}"
    );
    let before = harnesses_of(&state, "alice");
    assert_eq!(before.len(), 1, "{before:?}");

    // The restart: the old harness is stopped first; the message comes back and is answered.
    server.push([Reply::text("done at last")]);
    cli_ok(&state, &["restart", "alice"]);
    let mut now = Vec::new();
    assert!(eventually(LIMIT, || {
        now = harnesses_of(&state, "alice");
        now.len() == 1 && now != before
    }));
    let answered = || -> bool {
        db.query_row(
            "SELECT count(*) FROM turns WHERE message_id = ?1 AND outcome = 'ok'",
            [id],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
            == 1
    };
    assert!(
        eventually(LIMIT, answered),
        "the message was not answered after the restart:\n{}",
        log_of(&state, "alice")
    );
    assert!(
        eventually(LIMIT, || liveness("alice") == "idle"),
        "{}",
        liveness("alice")
    );
    assert_eq!(harnesses_of(&state, "alice").len(), 1);
    assert_eq!(stuck_events(), 1, "told once");
}
