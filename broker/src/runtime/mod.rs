//! Running agents' containers (DESIGN §8): one [`Runtime`] trait, two implementations —
//! `nspawn` (a systemd-nspawn container per agent: read-only image root, its own user-namespace
//! range, no network, cgroup limits) and `process` (the harness as a plain child; no isolation).
//! Which one runs is `[runtime] kind` (default: nspawn when `systemd-nspawn` is on PATH).
//!
//! The trait's methods block (they fork, wait, read /proc and /sys): callers run them off the
//! async workers (`lifecycle::off_runtime`). A runtime never decides *whether* to start or stop an
//! agent (that is the lifecycle's), and never follows a path out of the state dir.

use std::path::PathBuf;
use std::time::Duration;

use proto::AgentConfig;
use serde::Serialize;

use crate::config::RuntimeKind;
use crate::error::Result;
use crate::names::AgentName;

/// Everything a runtime needs to start one agent's container. Every path comes from `StateDir`.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub agent: AgentName,
    /// The manager also gets `agents/` at `/agents`.
    pub manager: bool,
    /// The built image (a store path): the read-only root for nspawn; the process runtime runs
    /// its `bin/hive-agent` and reads its `etc/hyperhive/agent.json`.
    pub image: PathBuf,
    /// The image's resolved `agent.json` (network, resources, env).
    pub config: AgentConfig,
    /// The first host uid of the agent's 65536-uid user-namespace range.
    pub uid_base: u32,
    /// `run/agents/<name>/` → `/run/hive`.
    pub run_dir: PathBuf,
    /// `agents/<name>/state` → `/state`.
    pub state_dir: PathBuf,
    /// `secrets/<name>/home` → root's home.
    pub home_dir: PathBuf,
    /// `agents/` → `/agents` (the manager only).
    pub agents_dir: Option<PathBuf>,
    /// `logs/<name>.log`: the container's stdout and stderr are appended here.
    pub log_file: PathBuf,
}

/// What a runtime knows of one agent's container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum ContainerState {
    /// Running; `pid` is the host pid of the container's leader (nspawn, or the harness).
    Running { pid: u32 },
    /// It ran and ended: the exit code, or the signal that ended it.
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// Never started by this daemon (or reaped).
    Absent,
}

/// A container that ended on its own (not through [`Runtime::stop`]).
#[derive(Debug, Clone)]
pub struct ContainerExit {
    pub agent: AgentName,
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

/// What the kernel says of a running container's isolation — read, never assumed from config.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Isolation {
    pub runtime: Option<RuntimeKind>,
    /// false for the process runtime.
    pub isolated: bool,
    /// `/proc/<payload>/uid_map`, trimmed.
    pub uid_map: Option<String>,
    /// Network interfaces in the payload's network namespace (`lo` alone for `network = "none"`).
    pub net_links: Option<Vec<String>>,
    /// Whether `/` is mounted read-only for the payload.
    pub read_only_root: Option<bool>,
    /// The cgroup limits in force.
    pub memory_max_bytes: Option<u64>,
    pub pids_max: Option<u64>,
    pub cpu_weight: Option<u64>,
}

/// The output of a command run inside a container.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// What [`Runtime::adopt`] did with a container a previous daemon left running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adoption {
    /// Still running, now tracked again.
    Adopted { pid: u32 },
    /// Killed and cleaned up.
    Reaped,
}

/// One way of running agents.
pub trait Runtime: Send + Sync + 'static {
    fn kind(&self) -> RuntimeKind;
    /// Starts the agent's container and returns the leader's pid. An agent already running is
    /// an error: never two containers of one agent.
    fn start(&self, spec: &ContainerSpec) -> Result<u32>;
    /// Stops it: SIGTERM, then after `timeout` SIGKILL of everything in its cgroup; children
    /// reaped. Stopping an agent that is not running is not an error.
    fn stop(&self, agent: &AgentName, timeout: Duration) -> Result<()>;
    fn status(&self, agent: &AgentName) -> ContainerState;
    /// Runs `argv` inside the running container (in its namespaces, as its root).
    fn exec(&self, agent: &AgentName, argv: &[String], timeout: Duration) -> Result<ExecOutput>;
    fn isolation(&self, agent: &AgentName) -> Result<Isolation>;
    /// At daemon start: finds containers a killed daemon left running (through their cgroups)
    /// and adopts or reaps each; anything left for a name not in `known` is reaped.
    fn adopt(&self, known: &[AgentName]) -> Result<Vec<(AgentName, Adoption)>>;
    /// Containers that ended on their own.
    fn exits(&self) -> tokio::sync::broadcast::Receiver<ContainerExit>;
}

/// The runtime `[runtime] kind` names (default: nspawn where `systemd-nspawn` is on PATH and the
/// daemon is root, else process).
pub fn open(
    _config: &crate::config::Config,
    _paths: &crate::paths::StateDir,
) -> Result<std::sync::Arc<dyn Runtime>> {
    Err(crate::Error::Internal("no runtime yet".into()))
}
