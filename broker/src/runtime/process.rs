//! The process runtime (machines without nspawn; development): the image's `bin/hive-agent serve`
//! as a plain child in its own process group, with the agent's socket dir and config passed by
//! flag, HOME at the agent's home and the state dir as its working directory. It isolates nothing
//! and says so.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use super::children::Children;
use super::{
    Adoption, ClaudeCli, ContainerExit, ContainerSpec, ContainerState, ExecOutput, Isolation,
    Runtime, run_with_timeout,
};
use crate::config::RuntimeKind;
use crate::error::{Error, Result};
use crate::names::AgentName;

pub struct ProcessRuntime {
    children: Arc<Children>,
    /// The state dirs of the running agents, the working directory of `exec`.
    cwd: std::sync::Mutex<std::collections::HashMap<AgentName, std::path::PathBuf>>,
    claude: ClaudeCli,
}

impl ProcessRuntime {
    pub fn new() -> Self {
        Self {
            children: Children::new(),
            cwd: Default::default(),
            claude: Err("no claude CLI was given to this runtime".into()),
        }
    }

    /// The claude CLI the harness runs (passed as `HIVE_CLAUDE`).
    pub fn with_claude(mut self, claude: ClaudeCli) -> Self {
        self.claude = claude;
        self
    }
}

impl Default for ProcessRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl Runtime for ProcessRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Process
    }

    fn start(&self, spec: &ContainerSpec) -> Result<u32> {
        let spawn = || {
            super::make_dirs(spec)?;
            let log = super::open_log(&spec.log_file)?;
            let mut command = Command::new(spec.image.join("bin/hive-agent"));
            command
                .arg("serve")
                .arg("--socket-dir")
                .arg(&spec.run_dir)
                .arg("--config")
                .arg(spec.image.join("etc/hyperhive/agent.json"))
                .arg("--state-dir")
                .arg(&spec.state_dir)
                .envs(super::checked_env(&spec.config.env)?)
                .env("HOME", &spec.home_dir)
                .current_dir(&spec.state_dir)
                .stdin(Stdio::null())
                .stdout(
                    log.try_clone()
                        .map_err(|e| Error::io("cannot share the log", e))?,
                )
                .stderr(log);
            if let Ok(claude) = &self.claude {
                command.env("HIVE_CLAUDE", claude);
            }
            // Its own group: a stop reaches whatever the harness started.
            std::os::unix::process::CommandExt::process_group(&mut command, 0);
            command.spawn().map_err(|e| {
                Error::Runtime(format!(
                    "cannot run {}/bin/hive-agent for '{}': {e}",
                    spec.image.display(),
                    spec.agent
                ))
            })
        };
        let pid = self.children.start(&spec.agent, spawn, || {})?;
        self.cwd
            .lock()
            .expect("process runtime")
            .insert(spec.agent.clone(), spec.state_dir.clone());
        Ok(pid)
    }

    fn stop(&self, agent: &AgentName, timeout: Duration) -> Result<()> {
        let Some(pid) = self.children.mark_stopping(agent) else {
            return Ok(());
        };
        let raw = Pid::from_raw(pid as i32);
        let _ = kill(raw, Signal::SIGTERM);
        let ended = self.children.wait_exited(agent, pid, timeout);
        // The group goes too (whatever the harness left behind), and the harness if it hung.
        let _ = killpg(raw, Signal::SIGKILL);
        if ended
            || self
                .children
                .wait_exited(agent, pid, Duration::from_secs(10))
        {
            Ok(())
        } else {
            Err(Error::Runtime(format!(
                "the harness of '{agent}' (pid {pid}) did not end after SIGKILL"
            )))
        }
    }

    fn status(&self, agent: &AgentName) -> ContainerState {
        self.children.status(agent)
    }

    fn exec(&self, agent: &AgentName, argv: &[String], timeout: Duration) -> Result<ExecOutput> {
        let Some((program, args)) = argv.split_first() else {
            return Err(Error::invalid("argv", "give the command to run"));
        };
        let ContainerState::Running { .. } = self.children.status(agent) else {
            return Err(Error::Runtime(format!("agent '{agent}' is not running")));
        };
        let mut command = Command::new(program);
        command.args(args);
        if let Some(dir) = self.cwd.lock().expect("process runtime").get(agent) {
            command.current_dir(dir);
        }
        run_with_timeout(command, timeout)
    }

    /// The harness and every process under it.
    fn pids(&self, agent: &AgentName) -> Vec<u32> {
        match self.children.status(agent) {
            ContainerState::Running { pid } => super::kernel::with_descendants(pid),
            _ => Vec::new(),
        }
    }

    fn isolation(&self, agent: &AgentName) -> Result<Isolation> {
        let ContainerState::Running { .. } = self.children.status(agent) else {
            return Err(Error::Runtime(format!("agent '{agent}' is not running")));
        };
        Ok(Isolation {
            runtime: Some(RuntimeKind::Process),
            isolated: false,
            ..Isolation::default()
        })
    }

    /// A plain child dies with nothing to find it by: there is nothing to adopt.
    fn adopt(&self, _known: &[AgentName]) -> Result<Vec<(AgentName, Adoption)>> {
        Ok(Vec::new())
    }

    fn exits(&self) -> tokio::sync::broadcast::Receiver<ContainerExit> {
        self.children.subscribe()
    }

    fn claude(&self) -> &ClaudeCli {
        &self.claude
    }
}
