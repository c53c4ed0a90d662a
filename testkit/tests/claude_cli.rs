//! The real claude CLI against the scripted model server: the fake must be good enough for the real
//! client (a tool call through a real stdio MCP server, then an answer), and errors must come back
//! the way FACTS A measured them.

use std::path::PathBuf;

use serde_json::json;
use testkit::claude::Claude;
use testkit::model_server::{ModelServer, Reply};
use testkit::probe_mcp::ProbeMcp;
use testkit::tools;

const PROMPT: &str = "Call the echo tool with the text hi.";

fn require_claude_and_python() -> Option<(PathBuf, PathBuf)> {
    let claude = tools::require("claude", tools::claude_bin())?;
    let python3 = tools::require("python3", tools::python3())?;
    Some((claude, python3))
}

#[tokio::test]
async fn claude_calls_an_mcp_tool_through_the_scripted_server() {
    let Some((claude, python3)) = require_claude_and_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let probe = ProbeMcp::write(dir.path()).unwrap();

    let server = ModelServer::start(vec![
        Reply::tool_use("mcp__probe__echo", json!({"text": "hi"})),
        Reply::text("done"),
    ])
    .await;
    let run = Claude::new(&claude, &server, dir.path())
        .mcp_config(probe.mcp_config("probe", &python3))
        .allowed_tools("mcp__probe__echo")
        .run(PROMPT)
        .await;

    assert_eq!(run.code, Some(0), "{}", run.describe());
    run.init_with_connected("probe");
    let result = run.result();
    assert_eq!(result["is_error"], false, "{result}");
    assert_eq!(result["result"], "done", "{result}");

    let reqs = server.requests();
    assert_eq!(reqs.len(), 2, "{reqs:#?}");
    for r in &reqs {
        assert!(r.is_messages(), "{} {}", r.method, r.path);
        assert_eq!(r.query.as_deref(), Some("beta=true"));
        assert_eq!(r.api_key(), Some("sk-test"));
        assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
        assert_eq!(r.body["stream"], true);
    }
    assert!(
        server
            .tool_names(&reqs[0])
            .contains(&"mcp__probe__echo".to_owned()),
        "tools of the first request: {:?}",
        reqs[0].tool_names()
    );
    assert_eq!(reqs[0].last_user_text().as_deref(), Some(PROMPT));
    assert!(reqs[0].tool_results().is_empty());
    let results = reqs[1].tool_results();
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0].tool_use_id, "toolu_testkit_1");
    assert_eq!(results[0].text, "echo: hi");
    assert!(!results[0].is_error);
    assert_eq!(server.remaining(), 0);

    let calls = probe.calls();
    assert_eq!(
        calls,
        vec![json!({"name": "echo", "arguments": {"text": "hi"}})]
    );
}

#[tokio::test]
async fn prompt_too_long_is_an_error_result() {
    let Some((claude, _)) = require_claude_and_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = ModelServer::start(vec![Reply::prompt_too_long()]).await;
    let run = Claude::new(&claude, &server, dir.path()).run("hello").await;

    let result = run.result();
    assert_eq!(result["is_error"], true, "{result}");
    assert_eq!(result["terminal_reason"], "prompt_too_long", "{result}");
    assert!(
        result["result"]
            .as_str()
            .is_some_and(|t| t.contains("Prompt is too long")),
        "{result}"
    );
    assert_eq!(run.code, Some(1), "{}", run.describe());
    assert_eq!(server.requests().len(), 1, "a 400 must not be retried");
}
