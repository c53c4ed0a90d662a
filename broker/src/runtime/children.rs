//! The containers a runtime started: one waiter thread per child waits for it (so none is ever
//! left a zombie), runs the runtime's cleanup (kill what is left of it, remove its cgroup), then
//! records the exit and — when the stop was not ours — announces a [`ContainerExit`]. A stop waits
//! on that record.
//!
//! This module decides nothing about whether an agent should run.

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::process::Child;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use super::{ContainerExit, ContainerState};
use crate::error::{Error, Result};
use crate::names::AgentName;

#[derive(Debug, Clone)]
struct Entry {
    pid: u32,
    /// Set by a stop before it signals: the exit is then ours, not a crash.
    stopping: bool,
    exited: Option<(Option<i32>, Option<i32>)>,
}

/// The children of one runtime, by agent.
pub(crate) struct Children {
    entries: Mutex<HashMap<AgentName, Entry>>,
    changed: Condvar,
    exits: broadcast::Sender<ContainerExit>,
    /// Held across a start: check, spawn and record happen as one.
    starting: Mutex<()>,
}

impl Children {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            entries: Mutex::new(HashMap::new()),
            changed: Condvar::new(),
            exits: broadcast::channel(64).0,
            starting: Mutex::new(()),
        })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<ContainerExit> {
        self.exits.subscribe()
    }

    /// Runs `spawn` unless `agent` is running; the child it returns is tracked and, once it
    /// ended, `cleanup` runs on its waiter thread before the exit is recorded.
    pub fn start(
        self: &Arc<Self>,
        agent: &AgentName,
        spawn: impl FnOnce() -> Result<Child>,
        cleanup: impl FnOnce() + Send + 'static,
    ) -> Result<u32> {
        let _one_at_a_time = self.starting.lock().expect("runtime start lock");
        if let ContainerState::Running { pid } = self.status(agent) {
            return Err(Error::Conflict(format!(
                "agent '{agent}' is running already (pid {pid}); stop it first"
            )));
        }
        let mut child = spawn()?;
        let pid = child.id();
        self.entries.lock().expect("runtime children").insert(
            agent.clone(),
            Entry {
                pid,
                stopping: false,
                exited: None,
            },
        );
        let children = self.clone();
        let name = agent.clone();
        let waiter = std::thread::Builder::new()
            .name(format!("wait-{agent}"))
            .spawn(move || {
                let status = child.wait();
                cleanup();
                let (code, signal) = match status {
                    Ok(s) => (s.code(), s.signal()),
                    Err(e) => {
                        tracing::error!(agent = %name, error = %e, "cannot wait for a container");
                        (None, None)
                    }
                };
                children.record_exit(&name, pid, code, signal);
            });
        if let Err(e) = waiter {
            // Without a waiter the child would never be reaped: kill it and reap it here.
            tracing::error!(%agent, error = %e, "cannot start a waiter thread");
            let raw = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(raw, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(raw, None);
            self.entries.lock().expect("runtime children").remove(agent);
            return Err(Error::Runtime(format!(
                "cannot start a thread to watch the container of '{agent}': {e}"
            )));
        }
        Ok(pid)
    }

    fn record_exit(&self, agent: &AgentName, pid: u32, code: Option<i32>, signal: Option<i32>) {
        let mut entries = self.entries.lock().expect("runtime children");
        let Some(entry) = entries.get_mut(agent).filter(|e| e.pid == pid) else {
            return;
        };
        entry.exited = Some((code, signal));
        let ours = entry.stopping;
        drop(entries);
        self.changed.notify_all();
        if ours {
            tracing::info!(%agent, pid, ?code, ?signal, "container stopped");
        } else {
            tracing::warn!(%agent, pid, ?code, ?signal, "container ended on its own");
            let _ = self.exits.send(ContainerExit {
                agent: agent.clone(),
                code,
                signal,
            });
        }
    }

    pub fn status(&self, agent: &AgentName) -> ContainerState {
        match self.entries.lock().expect("runtime children").get(agent) {
            None => ContainerState::Absent,
            Some(Entry {
                exited: Some((code, signal)),
                ..
            }) => ContainerState::Exited {
                code: *code,
                signal: *signal,
            },
            Some(e) => ContainerState::Running { pid: e.pid },
        }
    }

    /// The pid of the running container, marked as being stopped by us; `None` when it is not
    /// running.
    pub fn mark_stopping(&self, agent: &AgentName) -> Option<u32> {
        let mut entries = self.entries.lock().expect("runtime children");
        let entry = entries.get_mut(agent).filter(|e| e.exited.is_none())?;
        entry.stopping = true;
        Some(entry.pid)
    }

    /// Waits until the container `pid` of `agent` has ended and was cleaned up; false on timeout.
    pub fn wait_exited(&self, agent: &AgentName, pid: u32, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut entries = self.entries.lock().expect("runtime children");
        loop {
            match entries.get(agent) {
                Some(e) if e.pid == pid && e.exited.is_none() => {}
                _ => return true,
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            entries = self
                .changed
                .wait_timeout(entries, left)
                .expect("runtime children")
                .0;
        }
    }
}
