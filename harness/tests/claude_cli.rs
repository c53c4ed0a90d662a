//! The real claude CLI as an agent's model client: it reaches the hive only through `hive-agent
//! mcp` (stdio ↔ the agent's unix socket), run headless as FACTS A measured, against the scripted
//! model server. What the model calls must land in the store as the socket's agent, and each
//! socket must show claude its own tool set.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use broker::mailbox::RecvLimits;
use broker::mcp::Role;
use broker::names::Inbox;
use common::{AGENT_TOOLS, MANAGER_ONLY_TOOLS, TestHive, mcp_config, name};
use serde_json::{Value, json};
use testkit::model_server::{ModelServer, Reply};
use testkit::tools;

const PROMPT: &str = "Say hello to bob with the send tool.";

#[derive(Debug)]
struct Run {
    code: Option<i32>,
    events: Vec<Value>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn event(&self, kind: &str, subtype: Option<&str>) -> Option<&Value> {
        self.events
            .iter()
            .find(|e| e["type"] == kind && subtype.is_none_or(|s| e["subtype"].as_str() == Some(s)))
    }

    fn describe(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    /// The `system/init` event; asserts that the MCP server `hive` connected (a failed MCP server
    /// is otherwise silent: FACTS A pitfall 5).
    fn init_with_hive_connected(&self) -> &Value {
        let init = self
            .event("system", Some("init"))
            .unwrap_or_else(|| panic!("no system/init event in {}", self.describe()));
        let servers = init["mcp_servers"].as_array().expect("init.mcp_servers");
        assert!(
            servers
                .iter()
                .any(|s| s["name"] == "hive" && s["status"] == "connected"),
            "the hive MCP server did not connect: {servers:?}\n{}",
            self.describe()
        );
        init
    }

    fn result(&self) -> &Value {
        self.event("result", None)
            .unwrap_or_else(|| panic!("no result event in {}", self.describe()))
    }
}

/// Runs one headless turn of claude with the hive MCP server bridged to `socket`. HOME, cwd and
/// TMPDIR are fresh directories in `dir`; the environment holds only what the run needs. The hive
/// keeps serving on the test's runtime while this awaits the child.
async fn run_claude(
    claude: &Path,
    server: &ModelServer,
    dir: &Path,
    socket: &Path,
    allowed_tools: &str,
) -> Run {
    let (home, cwd, tmp) = (dir.join("home"), dir.join("work"), dir.join("tmp"));
    for d in [&home, &cwd, &tmp] {
        std::fs::create_dir_all(d).unwrap();
    }
    let config = dir.join("mcp.json");
    std::fs::write(&config, mcp_config("hive", socket).to_string()).unwrap();
    let mut cmd = tokio::process::Command::new(claude);
    cmd.current_dir(&cwd)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("TMPDIR", &tmp)
        .env("ANTHROPIC_BASE_URL", server.base_url())
        .env("ANTHROPIC_API_KEY", "sk-test")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_TELEMETRY", "1")
        .env("ENABLE_TOOL_SEARCH", "false")
        .env("CLAUDE_CODE_MAX_RETRIES", "0")
        .args(["--print", "--verbose", "--output-format", "stream-json"])
        .arg("--mcp-config")
        .arg(&config)
        .args([
            "--strict-mcp-config",
            "--allowedTools",
            allowed_tools,
            "--",
            PROMPT,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("claude did not finish within 120 s")
        .expect("spawn claude");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let events = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let run = Run {
        code: out.status.code(),
        events,
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    if std::env::var_os("TESTKIT_DUMP").is_some() {
        eprintln!("{}\n{:#?}", run.describe(), server.requests());
    }
    run
}

/// The hive's tools among `names` (claude calls them `mcp__hive__<tool>`), without the prefix.
fn hive_tools<'a>(names: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    names
        .into_iter()
        .filter_map(|n| n.strip_prefix("mcp__hive__"))
        .map(str::to_owned)
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// The tool names the `init` event lists.
fn init_tools(init: &Value) -> Vec<&str> {
    init["tools"]
        .as_array()
        .expect("init.tools")
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_sends_a_message_through_the_bridge() {
    let Some(claude) = tools::require("claude", tools::claude_bin()) else {
        return;
    };
    let hive = TestHive::open(&["alice", "bob"]).await;
    let server = ModelServer::start(vec![
        Reply::tool_use(
            "mcp__hive__send",
            json!({"to": "bob", "body": "hello from claude"}),
        ),
        Reply::text("sent"),
    ])
    .await;

    let run = run_claude(
        &claude,
        &server,
        &hive.scratch("claude"),
        &hive.mcp_socket("alice"),
        "mcp__hive__send",
    )
    .await;

    assert_eq!(run.code, Some(0), "{}", run.describe());
    let init = run.init_with_hive_connected();
    assert_eq!(hive_tools(init_tools(init)), set(&AGENT_TOOLS), "{init}");
    let result = run.result();
    assert_eq!(result["is_error"], false, "{result}");
    assert_eq!(result["result"], "sent", "{result}");
    assert!(
        run.event("system", Some("permission_denied")).is_none(),
        "{}",
        run.describe()
    );

    let reqs = server.requests();
    assert_eq!(reqs.len(), 2, "{reqs:#?}");
    let first_tools = reqs[0].tool_names();
    assert!(
        first_tools.iter().any(|t| t == "mcp__hive__send"),
        "{first_tools:?}"
    );
    assert_eq!(
        hive_tools(first_tools.iter().map(String::as_str)),
        set(&AGENT_TOOLS),
        "the model must see exactly the agent tools: {first_tools:?}"
    );
    assert_eq!(reqs[0].last_user_text().as_deref(), Some(PROMPT));
    assert!(reqs[0].tool_results().is_empty());

    // The message is stored once, from the socket's agent to bob.
    let stored = hive.messages().await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    let msg = &stored[0];
    assert_eq!(
        (msg.from.as_str(), msg.to.as_str(), msg.body.as_str()),
        ("alice", "bob", "hello from claude"),
        "{msg:?}"
    );
    let inbox = hive
        .hive
        .mailbox
        .recv(&Inbox::Agent(name("bob")), RecvLimits::new(0, 32).unwrap())
        .await
        .unwrap();
    assert_eq!(
        inbox.iter().map(|m| m.id).collect::<Vec<_>>(),
        [msg.id],
        "{inbox:?}"
    );

    // The model got the tool's answer: not an error, naming the new message.
    let results = reqs[1].tool_results();
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0].tool_use_id, "toolu_testkit_1");
    assert!(!results[0].is_error, "{results:?}");
    let answer: Value = serde_json::from_str(&results[0].text)
        .unwrap_or_else(|e| panic!("tool result is not JSON ({e}): {}", results[0].text));
    assert_eq!(answer, json!({"sent": [msg.id]}));
    assert_eq!(server.remaining(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_socket_shows_claude_its_own_tools() {
    let Some(claude) = tools::require("claude", tools::claude_bin()) else {
        return;
    };
    let hive = TestHive::open(&["alice"]).await;
    let manager_server = ModelServer::start(vec![Reply::text("ok")]).await;
    let alice_server = ModelServer::start(vec![Reply::text("ok")]).await;
    let (manager_dir, alice_dir) = (hive.scratch("manager"), hive.scratch("alice"));
    let (manager_socket, alice_socket) = (hive.mcp_socket("manager"), hive.mcp_socket("alice"));
    let (manager, alice) = tokio::join!(
        run_claude(
            &claude,
            &manager_server,
            &manager_dir,
            &manager_socket,
            "mcp__hive"
        ),
        run_claude(
            &claude,
            &alice_server,
            &alice_dir,
            &alice_socket,
            "mcp__hive"
        ),
    );

    // The manager's set is the hive's own list for its socket: the agent tools, `agents`, and
    // whatever else the manager gains; a sub-agent's is exactly the agent tools.
    let manager_tools: BTreeSet<String> = hive
        .hive
        .mcp_tool_names(&name("manager"), Role::Manager)
        .into_iter()
        .collect();
    assert!(
        manager_tools.is_superset(&set(&AGENT_TOOLS)),
        "{manager_tools:?}"
    );
    assert!(
        manager_tools.is_superset(&set(&MANAGER_ONLY_TOOLS)),
        "{manager_tools:?}"
    );
    for (run, server, want) in [
        (&manager, &manager_server, &manager_tools),
        (&alice, &alice_server, &set(&AGENT_TOOLS)),
    ] {
        assert_eq!(run.code, Some(0), "{}", run.describe());
        let init = run.init_with_hive_connected();
        assert_eq!(&hive_tools(init_tools(init)), want, "{init}");
        let reqs = server.requests();
        assert_eq!(reqs.len(), 1, "{reqs:#?}");
        let names = reqs[0].tool_names();
        assert_eq!(
            &hive_tools(names.iter().map(String::as_str)),
            want,
            "{names:?}"
        );
    }
    assert!(
        manager_server.requests()[0]
            .tool_names()
            .contains(&"mcp__hive__agents".to_owned())
    );
    assert!(
        !alice_server.requests()[0]
            .tool_names()
            .contains(&"mcp__hive__agents".to_owned())
    );
    // Listing tools sends nothing.
    assert!(hive.messages().await.is_empty());
}
