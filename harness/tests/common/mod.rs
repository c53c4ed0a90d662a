//! What the harness's integration tests share: an in-process hive serving its MCP sockets in a
//! temporary state directory, and the real `hive-agent` binary that bridges stdio to them.

#![allow(dead_code)] // each test crate uses its own part of this module

use std::path::{Path, PathBuf};
use std::sync::Arc;

use broker::Hive;
use broker::config::Config;
use broker::mailbox::Message;
use broker::names::AgentName;
use broker::paths::StateDir;
use broker::registry::AgentKind;
use serde_json::{Value, json};
use tokio_util::sync::{CancellationToken, DropGuard};

pub mod running;

/// The agent tools every model-facing socket lists, sorted.
pub const AGENT_TOOLS: [&str; 5] = ["ask_operator", "recv", "remind", "send", "whoami"];
/// Tools the manager's socket adds (it may add more).
pub const MANAGER_ONLY_TOOLS: [&str; 1] = ["agents"];

/// A hive in a temporary state directory, serving MCP until dropped.
pub struct TestHive {
    pub hive: Arc<Hive>,
    pub dir: tempfile::TempDir,
    _stop_on_drop: DropGuard,
}

impl TestHive {
    /// Opens a hive (the manager plus `agents`, each a plain agent) and serves its sockets.
    pub async fn open(agents: &[&str]) -> Self {
        Self::open_with(agents, Config::default()).await
    }

    /// The same, with the agents' `gateway.sock` forwarding to the model server at `base_url`.
    #[allow(dead_code)] // not every test binary talks to a model
    pub async fn open_with_model(agents: &[&str], base_url: &str) -> Self {
        Self::open_with(agents, model_config(base_url)).await
    }

    /// A hive with `config` (e.g. [`model_config`] with its breaker changed).
    pub async fn open_with(agents: &[&str], config: Config) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("state"));
        state.create().unwrap();
        let hive = Hive::open(state, config).await.unwrap();
        let shutdown = CancellationToken::new();
        let scope = broker::components::Scope::new(shutdown.clone());
        hive.serve_mcp(&scope).unwrap();
        hive.spawn_due_jobs(&scope);
        for a in agents {
            hive.add_agent(name(a), AgentKind::Agent).await.unwrap();
        }
        Self {
            hive,
            dir,
            _stop_on_drop: shutdown.drop_guard(),
        }
    }

    /// The model-facing socket of `agent`: `STATE/run/agents/<agent>/mcp.sock`.
    pub fn mcp_socket(&self, agent: &str) -> PathBuf {
        let socket = self
            .hive
            .state_dir()
            .agent_run_dir(&name(agent))
            .join("mcp.sock");
        assert!(socket.exists(), "no socket at {}", socket.display());
        socket
    }

    /// A fresh directory for a client's files (HOME, cwd, scripts), inside the test's tempdir.
    pub fn scratch(&self, label: &str) -> PathBuf {
        let d = self.dir.path().join("scratch").join(label);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Every stored message, oldest first.
    pub async fn messages(&self) -> Vec<Message> {
        self.hive.message_history(None, 1000).await.unwrap()
    }

    /// The one stored message; asserts that it is the only one and goes `from` → `to` with `body`.
    pub async fn only_message(&self, from: &str, to: &str, body: &str) -> Message {
        let mut stored = self.messages().await;
        assert_eq!(stored.len(), 1, "{stored:?}");
        let msg = stored.remove(0);
        assert_eq!(
            (msg.from.as_str(), msg.to.as_str(), msg.body.as_str()),
            (from, to, body),
            "{msg:?}"
        );
        msg
    }
}

/// The default config with the agents' `gateway.sock` forwarding to the model server at
/// `base_url`.
pub fn model_config(base_url: &str) -> Config {
    let mut config = Config::default();
    config.model.anthropic_base_url = base_url.to_owned();
    // The scripted server speaks both protocols.
    config.model.openai_base_url = Some(base_url.to_owned());
    config
}

pub fn name(s: &str) -> AgentName {
    AgentName::parse(s).unwrap()
}

/// The real bridge, built by cargo for this test run.
pub fn hive_agent() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hive-agent"))
}

/// An MCP config for stdio clients such as the claude CLI: server `server` is `hive-agent mcp
/// --socket SOCKET`.
pub fn mcp_config(server: &str, socket: &Path) -> Value {
    json!({"mcpServers": {server: {
        "command": hive_agent(),
        "args": ["mcp", "--socket", socket],
    }}})
}
