//! What the broker's MCP tests share: a hive on a temp state dir with its MCP sockets served, a
//! real rmcp client per socket, and a wait on observable state.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::Hive;
use broker::config::Config;
use broker::names::{AgentName, Inbox};
use broker::paths::StateDir;
use broker::registry::AgentKind;
use rmcp::model::CallToolRequestParams;
use rmcp::service::{RoleClient, RunningService};
use rmcp::{ServiceError, ServiceExt};
use serde_json::Value;
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub hive: Arc<Hive>,
    pub shutdown: CancellationToken,
    _stop_on_drop: tokio_util::sync::DropGuard,
}

pub async fn open(dir: tempfile::TempDir, config: Config) -> Fixture {
    let state = StateDir::new(dir.path());
    state.create().unwrap();
    let hive = Hive::open(state, config).await.unwrap();
    let shutdown = CancellationToken::new();
    let scope = broker::components::Scope::new(shutdown.clone());
    hive.serve_mcp(&scope).unwrap();
    hive.spawn_due_jobs(&scope);
    Fixture {
        dir,
        hive,
        _stop_on_drop: shutdown.clone().drop_guard(),
        shutdown,
    }
}

pub async fn fixture(agents: &[&str]) -> Fixture {
    let f = open(tempfile::tempdir().unwrap(), Config::default()).await;
    for a in agents {
        f.hive.add_agent(name(a), AgentKind::Agent).await.unwrap();
    }
    f
}

/// A read-only connection of the test's own on the hive's database: tests look at the rows
/// without reaching into the hive.
pub fn open_db(hive: &Hive) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(
        hive.state_dir().db(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap()
}

pub fn manager() -> AgentName {
    AgentName::manager()
}

/// Runs git in `repo` as the manager would and returns its stdout; fails the test on error.
pub fn git(repo: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(repo)
        .args([
            "-c",
            "user.name=manager",
            "-c",
            "user.email=manager@hive",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

pub fn name(s: &str) -> AgentName {
    AgentName::parse(s).unwrap()
}

pub fn inbox(s: &str) -> Inbox {
    Inbox::Agent(name(s))
}

pub type Client = RunningService<RoleClient, ()>;

pub async fn connect(f: &Fixture, agent: &str, socket: &str) -> Client {
    let path = f.dir.path().join("run/agents").join(agent).join(socket);
    let stream = UnixStream::connect(&path).await.unwrap();
    ().serve(stream).await.unwrap()
}

/// Calls a tool: Ok((is_error, text)) for a tool result, Err for a protocol error.
pub async fn call(
    client: &Client,
    tool: &str,
    args: Value,
) -> Result<(bool, String), ServiceError> {
    let params = CallToolRequestParams::new(tool.to_owned())
        .with_arguments(args.as_object().cloned().unwrap_or_default());
    let result = client.call_tool(params).await?;
    let text = result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("");
    Ok((result.is_error.unwrap_or(false), text))
}

pub async fn ok(client: &Client, tool: &str, args: Value) -> Value {
    let (is_error, text) = call(client, tool, args).await.unwrap();
    assert!(!is_error, "{tool} failed: {text}");
    serde_json::from_str(&text).unwrap()
}

pub async fn tool_error(client: &Client, tool: &str, args: Value) -> String {
    let (is_error, text) = call(client, tool, args).await.unwrap();
    assert!(is_error, "{tool} should have failed: {text}");
    text
}

/// Waits until `done` holds (observable state, not a guess at how long something takes); panics
/// naming `what` after 10 s.
pub async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
