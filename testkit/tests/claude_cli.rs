//! The real claude CLI against the scripted model server: the fake must be good enough for the real
//! client (a tool call through a real stdio MCP server, then an answer), and errors must come back
//! the way FACTS A measured them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use testkit::model_server::{ModelServer, Reply};
use testkit::probe_mcp::ProbeMcp;
use testkit::tools;

const PROMPT: &str = "Call the echo tool with the text hi.";

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

    /// What the run printed, for assertion messages.
    fn describe(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    fn result(&self) -> &Value {
        self.event("result", None)
            .unwrap_or_else(|| panic!("no result event in {}", self.describe()))
    }
}

/// Runs `claude --print` headless as FACTS A says, with HOME, cwd and TMPDIR inside `dir` and only
/// the environment the run needs.
async fn run_claude(claude: &Path, server: &ModelServer, dir: &Path, args: &[&str]) -> Run {
    let home = dir.join("home");
    let cwd = dir.join("work");
    let tmp = dir.join("tmp");
    for d in [&home, &cwd, &tmp] {
        std::fs::create_dir_all(d).unwrap();
    }
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
        .args(args)
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
    Run {
        code: out.status.code(),
        events,
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// With `TESTKIT_DUMP=1` (and `--nocapture`), prints the run and every request the server saw.
fn dump(run: &Run, server: &ModelServer) {
    if std::env::var_os("TESTKIT_DUMP").is_some() {
        eprintln!("{}\n{:#?}", run.describe(), server.requests());
    }
}

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
    let mcp_config = dir.path().join("mcp.json");
    std::fs::write(&mcp_config, probe.mcp_config("probe", &python3).to_string()).unwrap();

    let server = ModelServer::start(vec![
        Reply::tool_use("mcp__probe__echo", json!({"text": "hi"})),
        Reply::text("done"),
    ])
    .await;
    let run = run_claude(
        &claude,
        &server,
        dir.path(),
        &[
            "--mcp-config",
            mcp_config.to_str().unwrap(),
            "--strict-mcp-config",
            "--allowedTools",
            "mcp__probe__echo",
            "--",
            PROMPT,
        ],
    )
    .await;

    assert_eq!(run.code, Some(0), "{}", run.describe());
    dump(&run, &server);
    let init = run.event("system", Some("init")).expect("an init event");
    let servers = init["mcp_servers"].as_array().expect("init.mcp_servers");
    assert!(
        servers
            .iter()
            .any(|s| s["name"] == "probe" && s["status"] == "connected"),
        "probe not connected: {servers:?}"
    );
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
    let run = run_claude(&claude, &server, dir.path(), &["--", "hello"]).await;

    let result = run.result();
    assert_eq!(result["is_error"], true, "{result}");
    assert_eq!(result["terminal_reason"], "prompt_too_long", "{result}");
    assert!(
        result["result"]
            .as_str()
            .is_some_and(|t| t.contains("Prompt is too long")),
        "{result}"
    );
    dump(&run, &server);
    assert_eq!(run.code, Some(1), "{}", run.describe());
    assert_eq!(server.requests().len(), 1, "a 400 must not be retried");
}
