//! The MCP surfaces (DESIGN §10): for every agent, `run/agents/<name>/mcp.sock` (model-facing: the
//! agent tool set, or the manager's) and `run/agents/<name>/harness.sock` (the harness's turn
//! loop); the agent's `gateway.sock` (crate::gateway) opens and closes with them. The socket an agent connects to is its identity: every connection is served by a fresh
//! [`tools::HiveMcp`] bound to that socket's agent and role. No socket has an approving tool.
//!
//! Directories are 0700 and sockets 0660; inside a container the directory is bound at /run/hive.

mod framing;
mod tools;

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::ServiceExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use proto::tools::MAX_EVENTS_PER_CALL;
pub use tools::HiveMcp;

use crate::components::Scope;
use crate::error::{Error, Result};
use crate::hive::Hive;
use crate::names::AgentName;
use crate::paths;
use crate::registry::{AgentKind, AgentRecord, UID_RANGE};

/// How long a client has to finish the MCP handshake.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
/// Open connections per socket; more are closed at once.
pub const MAX_CONNECTIONS_PER_SOCKET: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Agent,
    Manager,
    Harness,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Manager => "manager",
            Self::Harness => "harness",
        }
    }
}

/// The open listeners, by agent; `None` until the hive serves MCP.
#[derive(Default)]
pub struct McpSockets {
    /// The MCP component's scope once the hive serves: listeners and connections run on it, so
    /// stopping the component drains them.
    serving: Mutex<Option<Scope>>,
    open: Mutex<HashMap<AgentName, CancellationToken>>,
}

impl Hive {
    /// Opens the sockets of every agent, and of every agent added later, until `scope` stops.
    pub fn serve_mcp(self: &Arc<Self>, scope: &Scope) -> Result<()> {
        *self.mcp.serving.lock().expect("mcp sockets") = Some(scope.clone());
        for agent in self.registry.list() {
            if self.is_faulted(&agent.name) {
                // Kept stopped (`hive status` says why): no socket, not even a stale one.
                self.close_agent_sockets(&agent.name);
                continue;
            }
            self.open_agent_sockets(&agent)?;
        }
        Ok(())
    }

    /// Registers an agent (no repos, no deploy) and, when the hive is serving, opens its sockets.
    pub async fn add_agent(
        self: &Arc<Self>,
        name: AgentName,
        kind: AgentKind,
    ) -> Result<AgentRecord> {
        let new = crate::lifecycle::NewAgent {
            name,
            kind,
            revive: None,
            deploy: None,
        };
        Ok(self.create_agent(new, |_, _| Ok(())).await?.record)
    }

    pub(crate) fn open_agent_sockets(self: &Arc<Self>, agent: &AgentRecord) -> Result<()> {
        let Some(scope) = self.mcp.serving.lock().expect("mcp sockets").clone() else {
            return Ok(());
        };
        let token = scope.stopping().child_token();
        let dir = self.paths.agent_run_dir(&agent.name);
        paths::make_dir(&dir, 0o700)?;
        for (file, role) in [
            ("mcp.sock", Role::for_agent(agent.kind)),
            ("harness.sock", Role::Harness),
        ] {
            let listener = bind(&dir.join(file))?;
            scope.spawn(accept_loop(
                self.clone(),
                agent.name.clone(),
                role,
                listener,
                token.clone(),
                scope.clone(),
            ));
        }
        crate::gateway::open(self, &agent.name, &dir, &token, &scope)?;
        if let Some(old) = self
            .mcp
            .open
            .lock()
            .expect("mcp sockets")
            .insert(agent.name.clone(), token)
        {
            old.cancel();
        }
        Ok(())
    }

    /// Closes an agent's sockets and removes its socket directory.
    pub fn close_agent_sockets(&self, agent: &AgentName) {
        if let Some(token) = self.mcp.open.lock().expect("mcp sockets").remove(agent) {
            token.cancel();
        }
        let _ = std::fs::remove_dir_all(self.paths.agent_run_dir(agent));
    }

    /// The tool names a surface lists (for `hive` diagnostics and tests).
    pub fn mcp_tool_names(self: &Arc<Self>, agent: &AgentName, role: Role) -> Vec<String> {
        HiveMcp::new(self.clone(), agent.clone(), role, Default::default()).tool_names()
    }
}

/// Binds a socket at `path` (replacing a stale one) with mode 0660.
pub(crate) fn bind(path: &Path) -> Result<UnixListener> {
    let io_err =
        |what: &str, e: io::Error| Error::io(format!("cannot {what} {}", path.display()), e);
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("remove the stale socket", e)),
    }
    let listener = UnixListener::bind(path).map_err(|e| io_err("listen on", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| io_err("set the mode of", e))?;
    Ok(listener)
}

async fn accept_loop(
    hive: Arc<Hive>,
    agent: AgentName,
    role: Role,
    listener: UnixListener,
    token: CancellationToken,
    scope: Scope,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS_PER_SOCKET));
    loop {
        let stream = tokio::select! {
            _ = token.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(%agent, role = role.as_str(), error = %e, "MCP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(refused) = peer_allowed(&hive, &agent, &stream) {
            tracing::warn!(%agent, role = role.as_str(), uid = refused.uid, pid = ?refused.pid,
                "refused an MCP connection from a uid that is not this agent's");
            continue;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%agent, role = role.as_str(), "too many MCP connections; closing one");
            continue;
        };
        scope.spawn(serve_connection(
            hive.clone(),
            agent.clone(),
            role,
            stream,
            token.clone(),
            slot,
        ));
    }
}

/// Who was refused.
pub(crate) struct Refused {
    pub(crate) uid: u32,
    pub(crate) pid: Option<i32>,
}

/// The socket's peer (SO_PEERCRED) must be root, the daemon's own uid, or a uid of the agent's
/// own user-namespace range (its container's root and users): another agent's container given
/// this socket directory is refused.
pub(crate) fn peer_allowed(
    hive: &Hive,
    agent: &AgentName,
    stream: &UnixStream,
) -> Result<(), Refused> {
    let cred = stream.peer_cred().map_err(|_| Refused {
        uid: u32::MAX,
        pid: None,
    })?;
    let uid = cred.uid();
    if uid == 0 || uid == nix::unistd::geteuid().as_raw() {
        return Ok(());
    }
    let in_range = hive.registry.get(agent).is_some_and(|record| {
        record.uid_base != 0
            && (u64::from(record.uid_base)..u64::from(record.uid_base) + u64::from(UID_RANGE))
                .contains(&u64::from(uid))
    });
    if in_range {
        Ok(())
    } else {
        Err(Refused {
            uid,
            pid: cred.pid(),
        })
    }
}

async fn serve_connection(
    hive: Arc<Hive>,
    agent: AgentName,
    role: Role,
    stream: UnixStream,
    token: CancellationToken,
    _slot: tokio::sync::OwnedSemaphorePermit,
) {
    let conn = Arc::new(tools::ConnectionState::default());
    let (read, write) = stream.into_split();
    // A request is one JSON line: a body at its limit, escaped, plus the envelope.
    let max_line = hive.mailbox.max_body_bytes() * 6 + 64 * 1024;
    let transport = framing::LineTransport::new(read, write, max_line, conn.closed.clone());
    let server = HiveMcp::new(hive.clone(), agent.clone(), role, conn.clone());
    let started = tokio::time::timeout(
        HANDSHAKE_DEADLINE,
        server.serve_with_ct(transport, token.child_token()),
    )
    .await;
    match started {
        Ok(Ok(running)) => {
            // A harness connected is what makes its agent *up*.
            let harness = role == Role::Harness;
            if harness {
                hive.containers.harness_connected(&agent, true);
            }
            let _ = running.waiting().await;
            if harness {
                hive.containers.harness_connected(&agent, false);
            }
        }
        Ok(Err(e)) => tracing::debug!(%agent, error = %e, "MCP handshake failed"),
        Err(_) => tracing::debug!(%agent, "MCP client sent no handshake in time"),
    }
    conn.closed.cancel();
    let turns: Vec<i64> = conn.leased_turns.lock().expect("turns").drain().collect();
    match hive.mailbox.release_turns(&agent, turns).await {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!(%agent, released = n, "harness went away mid-turn; message requeued")
        }
        Err(e) => tracing::warn!(%agent, error = %e, "cannot requeue an abandoned turn"),
    }
}
