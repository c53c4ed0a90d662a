//! Running agents' containers (DESIGN §8): one [`Runtime`] trait, two implementations —
//! `nspawn` (a systemd-nspawn container per agent: read-only image root, its own user-namespace
//! range, no network, cgroup limits) and `process` (the harness as a plain child; no isolation).
//! Which one runs is `[runtime] kind` (default: nspawn when `systemd-nspawn` is on PATH).
//!
//! The trait's methods block (they fork, wait, read /proc and /sys): callers run them off the
//! async workers (`lifecycle::off_runtime`). A runtime never decides *whether* to start or stop an
//! agent (that is the lifecycle's), and never follows a path out of the state dir.

pub mod cgroup;
mod children;
pub mod kernel;
pub mod nspawn;
pub mod process;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use proto::AgentConfig;
use serde::Serialize;

pub use nspawn::NspawnRuntime;
pub use process::ProcessRuntime;

use crate::config::{Config, RuntimeKind};
use crate::error::{Error, Result};
use crate::names::AgentName;
use crate::paths::StateDir;

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
pub use proto::agent::Isolation;

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
    /// The claude CLI the agents get, or why there is none (shown by `hive status`).
    fn claude(&self) -> &ClaudeCli;
    /// The host pids of the running container's processes (none when it does not run).
    fn pids(&self, agent: &AgentName) -> Vec<u32>;
}

/// The claude CLI found at daemon start ([`find_claude`]): the real file (symlinks resolved, so
/// that it can be bound), or why none was found.
pub type ClaudeCli = std::result::Result<PathBuf, String>;

/// Where the nspawn runtime binds the claude CLI inside a container (on nspawn's own `/run`
/// tmpfs: the image root stays read-only); the harness finds it through `HIVE_CLAUDE`.
pub const CLAUDE_IN_CONTAINER: &str = "/run/hive-bin/claude";

/// The claude CLI: `[runtime] claude`, else `HIVE_CLAUDE` from the daemon's environment, else
/// `claude` on its PATH; resolved once, symlinks followed to the real executable.
pub fn find_claude(configured: Option<&Path>) -> ClaudeCli {
    use std::os::unix::fs::PermissionsExt;
    let (candidate, from) = if let Some(p) = configured {
        (Some(p.to_path_buf()), "[runtime] claude")
    } else if let Some(p) = std::env::var_os("HIVE_CLAUDE").filter(|p| !p.is_empty()) {
        (Some(PathBuf::from(p)), "HIVE_CLAUDE")
    } else {
        (find_on_path("claude"), "PATH")
    };
    let Some(candidate) = candidate else {
        return Err("claude not found (set [runtime] claude in hive.toml)".into());
    };
    let real = std::fs::canonicalize(&candidate).map_err(|e| {
        format!(
            "claude not found: {} (from {from}): {e} (set [runtime] claude in hive.toml)",
            candidate.display()
        )
    })?;
    match std::fs::metadata(&real) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(real),
        _ => Err(format!(
            "claude not usable: {} (from {from}) is not an executable file (set [runtime] claude \
             in hive.toml)",
            real.display()
        )),
    }
}

/// The runtime `[runtime] kind` names; unset: nspawn when `systemd-nspawn` is on PATH and we are
/// root, else the process runtime.
pub fn open(config: &Config, state: &StateDir) -> Result<Arc<dyn Runtime>> {
    let nspawn = find_on_path("systemd-nspawn");
    let root = nix::unistd::geteuid().is_root();
    let kind = config.runtime.kind.unwrap_or(if nspawn.is_some() && root {
        RuntimeKind::Nspawn
    } else {
        RuntimeKind::Process
    });
    let claude = find_claude(config.runtime.claude.as_deref());
    match &claude {
        Ok(path) => tracing::info!(claude = %path.display(), "the agents' claude CLI"),
        Err(why) => tracing::warn!(%why, "agents with the claude driver cannot take turns"),
    }
    Ok(match kind {
        RuntimeKind::Off => {
            return Err(Error::Internal(
                "runtime::open called for a hive that runs no agents".into(),
            ));
        }
        RuntimeKind::Process => Arc::new(ProcessRuntime::new().with_claude(claude)),
        RuntimeKind::Nspawn => {
            let nspawn = nspawn.ok_or_else(|| {
                Error::Runtime(
                    "[runtime] kind = \"nspawn\" but systemd-nspawn is not on PATH; install \
                     systemd-container (or set kind = \"process\")"
                        .into(),
                )
            })?;
            if !root {
                return Err(Error::Runtime(
                    "[runtime] kind = \"nspawn\" needs the hive to run as root (or set kind = \
                     \"process\")"
                        .into(),
                ));
            }
            Arc::new(NspawnRuntime::new(nspawn, state.root())?.with_claude(claude))
        }
    })
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The agent's bound dirs exist (0700) before its container starts.
fn make_dirs(spec: &ContainerSpec) -> Result<()> {
    for dir in [&spec.run_dir, &spec.state_dir, &spec.home_dir] {
        if !dir.is_dir() {
            crate::paths::make_dir(dir, 0o700)?;
        }
    }
    Ok(())
}

/// The agent's log, opened for appending (`containers` rotates it by copy-truncate).
fn open_log(path: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.is_dir()) {
        crate::paths::make_dir(dir, 0o700)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("cannot open the log {}", path.display()), e))
}

/// The config's environment, each name checked (the image's config is the manager's writing).
fn checked_env(env: &BTreeMap<String, String>) -> Result<Vec<(&str, &str)>> {
    env.iter()
        .map(|(key, value)| {
            let good_key = !key.is_empty()
                && !key.starts_with(|c: char| c.is_ascii_digit())
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !good_key || value.contains('\0') {
                return Err(Error::invalid(
                    "env",
                    format!("'{key}' is not a usable environment variable (letters, digits and _; no NUL in the value)"),
                ));
            }
            Ok((key.as_str(), value.as_str()))
        })
        .collect()
}

/// Runs `command` (in a process group of its own) and collects its output; after `timeout` the
/// whole group is killed and the output so far comes back with no exit code.
fn run_with_timeout(mut command: Command, timeout: Duration) -> Result<ExecOutput> {
    use std::os::unix::process::CommandExt;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let child = command
        .spawn()
        .map_err(|e| Error::Runtime(format!("cannot run the command: {e}")))?;
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    let output = match result.recv_timeout(timeout) {
        Ok(output) => output,
        Err(_) => {
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            // Something it started outside its group may still hold the pipes.
            result.recv_timeout(Duration::from_secs(10)).map_err(|_| {
                Error::Runtime(format!(
                    "the command ran over {timeout:?} and was killed, but its output did not close"
                ))
            })?
        }
    }
    .map_err(|e| Error::io("cannot wait for the command", e))?;
    Ok(ExecOutput {
        code: output.status.code(),
        stdout: output.stdout,
        stderr: output.stderr,
    })
}
