//! The nspawn runtime: one systemd-nspawn container per agent with the flags measured in FACTS B —
//! the image as a read-only root, the agent's own user-namespace range (`--private-users=BASE:65536`)
//! with `:idmap` binds, no network unless `network = "host"`, `--as-pid2` so the payload is pid 2
//! under nspawn's stub init — inside the agent's own cgroup (the limits), which nspawn joins before
//! it runs. Stop is SIGTERM to nspawn, then SIGKILL of the whole cgroup (a SIGKILL of nspawn alone
//! would orphan the container).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use proto::agent_config::Network;

use super::cgroup::{self, AgentCgroup, Cgroups};
use super::children::Children;
use super::{
    Adoption, CLAUDE_IN_CONTAINER, ClaudeCli, ContainerExit, ContainerSpec, ContainerState,
    ExecOutput, Isolation, Runtime, kernel, run_with_timeout,
};
use crate::config::RuntimeKind;
use crate::error::{Error, Result};
use crate::names::AgentName;
use crate::registry::UID_RANGE;

/// How long a stop waits for the container to be gone after it killed its cgroup.
const AFTER_KILL: Duration = Duration::from_secs(10);

pub struct NspawnRuntime {
    nspawn: PathBuf,
    cgroups: Cgroups,
    children: Arc<Children>,
    hive_id: String,
    claude: ClaudeCli,
}

impl NspawnRuntime {
    /// A runtime for the hive at `state_root`, running `nspawn` (the `systemd-nspawn` binary).
    pub fn new(nspawn: PathBuf, state_root: &Path) -> Result<Self> {
        let cgroups = Cgroups::detect(state_root).ok_or_else(|| {
            Error::Runtime(
                "no usable cgroup hierarchy (v2 with the memory controller, or v1 memory, pids \
                 and cpu under /sys/fs/cgroup): the nspawn runtime needs one for the agents' \
                 limits; mount it, or set [runtime] kind = \"process\""
                    .into(),
            )
        })?;
        Ok(Self {
            nspawn,
            cgroups,
            children: Children::new(),
            hive_id: cgroup::hive_id(state_root),
            claude: Err("no claude CLI was given to this runtime".into()),
        })
    }

    /// The claude CLI bound read-only into every container at [`CLAUDE_IN_CONTAINER`] (FACTS D:
    /// one ELF needing only the bound `/usr`'s libc).
    pub fn with_claude(mut self, claude: ClaudeCli) -> Self {
        self.claude = claude;
        self
    }

    pub fn cgroups(&self) -> &Cgroups {
        &self.cgroups
    }

    /// The full command line that starts `spec`'s container (after the cgroup join).
    pub fn command_line(&self, spec: &ContainerSpec) -> Result<Vec<std::ffi::OsString>> {
        let bind = |flag: &str, from: &Path, to: &str, opts: &str| -> std::ffi::OsString {
            let mut arg = std::ffi::OsString::from(format!("{flag}="));
            arg.push(from.as_os_str());
            arg.push(format!(":{to}{opts}"));
            arg
        };
        let claude = self.claude.as_ref().ok();
        for (what, path) in [
            ("image", Some(&spec.image)),
            ("run dir", Some(&spec.run_dir)),
            ("state dir", Some(&spec.state_dir)),
            ("home dir", Some(&spec.home_dir)),
            ("claude CLI", claude),
        ]
        .into_iter()
        .filter_map(|(what, path)| Some((what, path?)))
        {
            // nspawn splits bind arguments at ':'.
            if path.as_os_str().as_encoded_bytes().contains(&b':') {
                return Err(Error::Runtime(format!(
                    "the {what} {} holds a ':', which nspawn cannot bind; move it",
                    path.display()
                )));
            }
        }
        let mut argv: Vec<std::ffi::OsString> = vec![
            self.nspawn.clone().into(),
            "-q".into(),
            // Our cgroup holds the container: nspawn must neither register with machined nor
            // move itself into a scope of its own (where none of our limits would apply), with
            // or without systemd as PID 1.
            "--register=no".into(),
            "--keep-unit".into(),
            "--console=pipe".into(),
            "--resolv-conf=off".into(),
            "--timezone=off".into(),
            "--link-journal=no".into(),
        ];
        argv.push("-D".into());
        argv.push(spec.image.clone().into());
        argv.push("--read-only".into());
        argv.push(format!("--machine=hh-{}-{}", self.hive_id, spec.agent).into());
        argv.push(format!("--hostname={}", spec.agent).into());
        argv.push(format!("--private-users={}:{UID_RANGE}", spec.uid_base).into());
        if spec.config.network == Network::None {
            argv.push("--private-network".into());
        }
        argv.push("--bind-ro=/usr".into());
        argv.push(bind("--bind", &spec.run_dir, "/run/hive", ":idmap"));
        argv.push(bind("--bind", &spec.state_dir, "/state", ":idmap"));
        argv.push(bind("--bind", &spec.home_dir, "/root", ":idmap"));
        if let Some(agents) = spec.agents_dir.as_ref().filter(|_| spec.manager) {
            argv.push(bind("--bind", agents, "/agents", ":idmap"));
        }
        if let Some(claude) = claude {
            // On nspawn's /run tmpfs: no mount point is needed in the read-only image.
            argv.push(bind("--bind-ro", claude, CLAUDE_IN_CONTAINER, ""));
        }
        for (key, value) in super::checked_env(&spec.config.env)? {
            argv.push(format!("--setenv={key}={value}").into());
        }
        argv.push("--setenv=HOME=/root".into());
        if claude.is_some() {
            argv.push(format!("--setenv=HIVE_CLAUDE={CLAUDE_IN_CONTAINER}").into());
        }
        argv.extend(
            [
                "--kill-signal=SIGRTMIN+3",
                "--as-pid2",
                "/bin/hive-agent",
                "serve",
            ]
            .map(Into::into),
        );
        Ok(argv)
    }

    /// The payload's host pid (pid 2 of the container).
    fn payload(&self, agent: &AgentName) -> Result<u32> {
        let ContainerState::Running { .. } = self.children.status(agent) else {
            return Err(Error::Runtime(format!("agent '{agent}' is not running")));
        };
        kernel::payload_among(&self.cgroups.agent(agent).pids()).ok_or_else(|| {
            Error::Runtime(format!(
                "the container of '{agent}' has no payload running (yet); try again"
            ))
        })
    }
}

impl Runtime for NspawnRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Nspawn
    }

    fn start(&self, spec: &ContainerSpec) -> Result<u32> {
        let cgroup = self.cgroups.agent(&spec.agent);
        let argv = self.command_line(spec)?;
        let agent = spec.agent.clone();
        let spawn = || {
            // Never two containers of one agent: what a killed daemon left is adopt's to reap.
            let left = cgroup.pids();
            if !left.is_empty() {
                return Err(Error::Conflict(format!(
                    "processes {left:?} of an earlier container of '{agent}' are still running; \
                     they are reaped when the hive starts (or stop the agent)"
                )));
            }
            super::make_dirs(spec)?;
            let log = super::open_log(&spec.log_file)?;
            let stdout = log
                .try_clone()
                .map_err(|e| Error::io("cannot share the log", e))?;
            let spawned = cgroup.create(&spec.config.resources).and_then(|()| {
                Command::new("/bin/sh")
                    .args(cgroup::join_prefix(&cgroup))
                    .args(&argv)
                    .env_clear()
                    .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                    .stdin(Stdio::null())
                    .stdout(stdout)
                    .stderr(log)
                    .current_dir("/")
                    .spawn()
                    .map_err(|e| {
                        Error::Runtime(format!("cannot run systemd-nspawn for '{agent}': {e}"))
                    })
            });
            if spawned.is_err() {
                // Nothing started: no cgroup is left behind either.
                let _ = cgroup.remove();
            }
            spawned
        };
        let cleanup_cgroup = cgroup.clone();
        let cgroups = self.cgroups.clone();
        let name = spec.agent.clone();
        self.children.start(&spec.agent, spawn, move || {
            // nspawn is gone: whatever is left of its container goes too, with its cgroup.
            if let Err(e) = cleanup_cgroup.remove() {
                tracing::error!(agent = %name, error = %e, "cannot clean up a container's cgroup");
            }
            cgroups.remove_hive_dirs_if_empty();
        })
    }

    fn stop(&self, agent: &AgentName, timeout: Duration) -> Result<()> {
        let Some(pid) = self.children.mark_stopping(agent) else {
            return Ok(());
        };
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        if self.children.wait_exited(agent, pid, timeout) {
            return Ok(());
        }
        tracing::warn!(%agent, pid, ?timeout, "container ignored SIGTERM; killing its cgroup");
        let cgroup: AgentCgroup = self.cgroups.agent(agent);
        cgroup.kill_all()?;
        if self.children.wait_exited(agent, pid, AFTER_KILL) {
            Ok(())
        } else {
            Err(Error::Runtime(format!(
                "the container of '{agent}' (pid {pid}) did not end after SIGKILL"
            )))
        }
    }

    fn status(&self, agent: &AgentName) -> ContainerState {
        self.children.status(agent)
    }

    fn exec(&self, agent: &AgentName, argv: &[String], timeout: Duration) -> Result<ExecOutput> {
        if argv.is_empty() {
            return Err(Error::invalid("argv", "give the command to run"));
        }
        let payload = self.payload(agent)?;
        let cgroup = self.cgroups.agent(agent);
        let mut command = Command::new("/bin/sh");
        command
            .args(cgroup::join_prefix(&cgroup))
            .arg("nsenter")
            .arg(format!("--target={payload}"))
            // user, mount, net, pid, uts, ipc; root and cwd of the payload; uid/gid 0 inside.
            .args(["-U", "-m", "-n", "-p", "-u", "-i", "-r", "-w", "--"])
            .args(argv)
            .env_clear()
            .env("PATH", "/bin:/usr/bin:/sbin:/usr/sbin")
            .env("HOME", "/root");
        run_with_timeout(command, timeout)
    }

    fn pids(&self, agent: &AgentName) -> Vec<u32> {
        self.cgroups.agent(agent).pids()
    }

    fn isolation(&self, agent: &AgentName) -> Result<Isolation> {
        let payload = self.payload(agent)?;
        let limits = self.cgroups.agent(agent).limits();
        Ok(Isolation {
            runtime: Some(RuntimeKind::Nspawn),
            isolated: true,
            uid_map: Some(kernel::uid_map(payload)?),
            net_links: Some(kernel::net_links(payload)?),
            read_only_root: Some(kernel::read_only_root(payload)?),
            memory_max_bytes: limits.memory_max_bytes,
            pids_max: limits.pids_max,
            cpu_weight: limits.cpu_weight,
        })
    }

    /// Reaps every container a previous daemon left (found through this hive's cgroups): its
    /// processes are killed, the cgroup removed; the containers component starts the agent anew. Containers this
    /// runtime started itself are left alone.
    fn adopt(&self, known: &[AgentName]) -> Result<Vec<(AgentName, Adoption)>> {
        let mut done = Vec::new();
        for agent in self.cgroups.existing() {
            if matches!(self.children.status(&agent), ContainerState::Running { .. }) {
                continue;
            }
            let cgroup = self.cgroups.agent(&agent);
            let pids = cgroup.pids();
            cgroup.remove()?;
            tracing::warn!(%agent, ?pids, known = known.contains(&agent),
                "reaped a container a previous daemon left");
            done.push((agent, Adoption::Reaped));
        }
        self.cgroups.remove_hive_dirs_if_empty();
        Ok(done)
    }

    fn exits(&self) -> tokio::sync::broadcast::Receiver<ContainerExit> {
        self.children.subscribe()
    }

    fn claude(&self) -> &ClaudeCli {
        &self.claude
    }
}
