//! `StateDir`: every on-disk path of a hive (DESIGN §3). Nothing else in the hive joins strings into
//! paths; per-agent paths take an [`AgentName`], which can hold no `/` or `..`.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::names::AgentName;

#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// A state dir at `root`. Nothing is created until [`StateDir::create`].
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `/var/lib/hyperhive` as root, `$XDG_STATE_HOME/hyperhive` (or `~/.local/state/hyperhive`)
    /// otherwise.
    pub fn default_root() -> PathBuf {
        if nix::unistd::geteuid().is_root() {
            return PathBuf::from("/var/lib/hyperhive");
        }
        if let Some(xdg) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(xdg).join("hyperhive");
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
        PathBuf::from(home).join(".local/state/hyperhive")
    }

    /// Creates the dirs the daemon needs (the root 0700, `run/` 0755), after
    /// [`StateDir::prepare_root`].
    pub fn create(&self) -> Result<()> {
        self.prepare_root()?;
        make_dir(&self.run_dir(), 0o755)?;
        make_dir(&self.run_dir().join("agents"), 0o755)?;
        Ok(())
    }

    /// Creates the root 0700 when it is missing. An existing root keeps its mode (it may be
    /// someone else's dir): it must be a real dir of ours that no one else can write, else a
    /// clear refusal, since others could plant files the hive then trusts.
    pub fn prepare_root(&self) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let shown = self.root.display();
        // A symlinked root is followed (systemd's DynamicUser= makes one); what it points at is
        // checked.
        let meta = match fs::metadata(&self.root) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&self.root)
                    .map_err(|e| Error::io(format!("cannot create {shown}"), e));
            }
            Err(e) => return Err(Error::io(format!("cannot look at {shown}"), e)),
            Ok(meta) => meta,
        };
        let refuse = |why: String| {
            Err(Error::invalid(
                "state dir",
                format!(
                    "{shown} {why}; use a dir of your own (e.g. a new one: hive creates it 0700)"
                ),
            ))
        };
        if !meta.is_dir() {
            return refuse("is not a directory".into());
        }
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != me {
            return refuse(format!(
                "belongs to uid {}, not to this user (uid {me})",
                meta.uid()
            ));
        }
        if meta.mode() & 0o022 != 0 {
            return refuse(format!(
                "can be written by others (mode {:04o})",
                meta.mode() & 0o7777
            ));
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn config_file(&self) -> PathBuf {
        self.root.join("hive.toml")
    }

    pub fn db(&self) -> PathBuf {
        self.root.join("hive.db")
    }

    pub fn lock_file(&self) -> PathBuf {
        self.root.join("hive.lock")
    }

    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.run_dir().join("admin.sock")
    }

    /// The address the dashboard listens on, written at start (`host:port`).
    pub fn dashboard_addr(&self) -> PathBuf {
        self.run_dir().join("dashboard.addr")
    }

    /// The operator's dashboard login token (0600, made on the first start).
    pub fn operator_token(&self) -> PathBuf {
        self.root.join("operator.token")
    }

    /// `run/agents/<name>/`: the directory bound at `/run/hive` inside the agent's container.
    pub fn agent_run_dir(&self, agent: &AgentName) -> PathBuf {
        self.run_dir().join("agents").join(agent.as_str())
    }

    /// `agents/<name>/`: the agent's proposed config repo and its state.
    pub fn agent_dir(&self, agent: &AgentName) -> PathBuf {
        self.root.join("agents").join(agent.as_str())
    }

    /// `agents/<name>/config`: the PROPOSED repo (the manager commits here).
    pub fn proposed_repo(&self, agent: &AgentName) -> PathBuf {
        self.agent_dir(agent).join("config")
    }

    /// `applied/<name>`: the APPLIED repo (only the broker writes it).
    pub fn applied_repo(&self, agent: &AgentName) -> PathBuf {
        self.root.join("applied").join(agent.as_str())
    }

    /// `secrets/<name>`: credentials and the home of the agent's model CLI.
    pub fn secrets_dir(&self, agent: &AgentName) -> PathBuf {
        self.root.join("secrets").join(agent.as_str())
    }

    /// `agents/<name>/state`: the agent's `/state` (notes, the openai driver's conversation).
    pub fn agent_state_dir(&self, agent: &AgentName) -> PathBuf {
        self.agent_dir(agent).join("state")
    }

    /// `secrets/<name>/home`: root's home inside the container (the model CLI's sessions and
    /// credentials); writable, never under `agents/`.
    pub fn agent_home(&self, agent: &AgentName) -> PathBuf {
        self.secrets_dir(agent).join("home")
    }

    /// `secrets/<name>/home/.claude/.credentials.json`: the claude CLI's OAuth login.
    pub fn agent_credentials(&self, agent: &AgentName) -> PathBuf {
        self.agent_home(agent).join(".claude/.credentials.json")
    }

    /// `secrets/<name>/api-key`: an API key stored for the agent by `hive login --api-key-file`
    /// (outside its home, so the agent cannot read it).
    pub fn agent_api_key(&self, agent: &AgentName) -> PathBuf {
        self.secrets_dir(agent).join("api-key")
    }

    /// `build/<name>/`: the rendered build input and a gcroot per deploy.
    pub fn build_dir(&self, agent: &AgentName) -> PathBuf {
        self.root.join("build").join(agent.as_str())
    }

    /// `logs/`: one log file per agent.
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// `logs/<name>.log`: the container's output (size-bounded, rotated to `<name>.log.1`).
    pub fn agent_log(&self, agent: &AgentName) -> PathBuf {
        self.logs_dir().join(format!("{}.log", agent.as_str()))
    }

    /// `staging/`: private copies of a proposed repo's objects while a request is read.
    pub fn staging_dir(&self) -> PathBuf {
        self.root.join("staging")
    }

    /// `tombstones/`: what destroys keep.
    pub fn tombstones_dir(&self) -> PathBuf {
        self.root.join("tombstones")
    }
}

/// Checks that `path` lies under `root` through real directories only: no `..`, no absolute
/// part, and no symlink on the way (a symlink planted inside the state dir could lead out).
/// Parts that do not exist yet are fine. Returns the path.
pub fn checked_within(root: &Path, path: &Path) -> Result<PathBuf> {
    let refuse = |why: &str| Error::UnsafePath(format!("{}: {why}", path.display()));
    let rel = path
        .strip_prefix(root)
        .map_err(|_| refuse("not inside the state dir"))?;
    let mut at = root.to_path_buf();
    for part in rel.components() {
        let std::path::Component::Normal(name) = part else {
            return Err(refuse("only plain names may follow the state dir"));
        };
        at.push(name);
        match fs::symlink_metadata(&at) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(refuse("a symlink is in the way; it is not followed"));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
            Err(e) => return Err(Error::io(format!("cannot inspect {}", at.display()), e)),
        }
    }
    Ok(path.to_path_buf())
}

/// Creates `dir` (and parents) and sets its mode, also when it already existed.
pub fn make_dir(dir: &Path, mode: u32) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(format!("cannot set the mode of {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_agent_paths_stay_inside() {
        let dir = StateDir::new("/s");
        let a = AgentName::parse("alice").unwrap();
        assert_eq!(dir.agent_run_dir(&a), Path::new("/s/run/agents/alice"));
        assert_eq!(dir.admin_socket(), Path::new("/s/run/admin.sock"));
    }
}
