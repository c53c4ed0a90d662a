//! The real claude CLI as an agent's model client: it reaches the hive only through `hive-agent
//! mcp` (stdio ↔ the agent's unix socket), run headless as FACTS A measured, against the scripted
//! model server. What the model calls must land in the store as the socket's agent, and each
//! socket must show claude its own tool set.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use broker::mailbox::RecvLimits;
use broker::mcp::Role;
use broker::names::Inbox;
use common::{AGENT_TOOLS, MANAGER_ONLY_TOOLS, TestHive, mcp_config, name};
use serde_json::{Value, json};
use testkit::claude::{Claude, ClaudeRun};
use testkit::model_server::{ModelServer, Reply};
use testkit::tools;

const PROMPT: &str = "Say hello to bob with the send tool.";

/// Runs one headless turn of claude with the hive MCP server bridged to `socket`, its files in
/// `dir`. The hive keeps serving on the test's runtime while this awaits the child.
async fn run_claude(
    claude: &Path,
    server: &ModelServer,
    dir: &Path,
    socket: &Path,
    allowed_tools: &str,
) -> ClaudeRun {
    Claude::new(claude, server, dir)
        .mcp_config(mcp_config("hive", socket))
        .allowed_tools(allowed_tools)
        .run(PROMPT)
        .await
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
    let init = run.init_with_connected("hive");
    assert_eq!(hive_tools(run.init_tools()), set(&AGENT_TOOLS), "{init}");
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
    let msg = hive.only_message("alice", "bob", "hello from claude").await;
    let inbox = hive
        .hive
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
        let init = run.init_with_connected("hive");
        assert_eq!(&hive_tools(run.init_tools()), want, "{init}");
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
