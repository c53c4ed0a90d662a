//! The agents' cgroups: one per agent at `hyperhive/<hive id>/<agent>` (the hive id is a short
//! hash of the canonical state dir, so hives side by side never share one), with the limits of
//! the agent's `resources`. cgroup v1 (one dir per controller: `memory`, `pids`, `cpu`) and v2
//! (one dir) both work. Without systemd as PID 1, nspawn's `--property=` limits are ignored: these
//! cgroups are the limits. A container's processes join before exec (through [`join_prefix`]),
//! so nothing of it ever runs outside them.
//!
//! This module owns the files under the hyperhive cgroup dirs and never touches another cgroup.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proto::agent_config::Resources;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::names::AgentName;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The v1 controllers the runtime limits.
const V1_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];
/// How long a kill of everything in a cgroup waits for it to be empty.
const KILL_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// This hive's part of the cgroup tree.
#[derive(Debug, Clone)]
pub struct Cgroups {
    version: Version,
    /// Per controller (v1) or one (v2): `<mount>/hyperhive/<hive id>`.
    hive_dirs: Vec<PathBuf>,
}

/// The limits read back from an agent's cgroup files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_max_bytes: Option<u64>,
    pub pids_max: Option<u64>,
    pub cpu_weight: Option<u64>,
}

/// The short stable id of a hive: the first 12 hex digits of the sha256 of its canonical state dir.
pub fn hive_id(state_root: &Path) -> String {
    let canonical = fs::canonicalize(state_root).unwrap_or_else(|_| state_root.to_path_buf());
    let digest = Sha256::digest(canonical.as_os_str().as_encoded_bytes());
    hex::encode(&digest[..6])
}

impl Cgroups {
    /// Finds the cgroup hierarchy: v2 when the unified mount has the memory controller, else v1
    /// with `memory`, `pids` and `cpu` mounted. `None` when neither is usable here.
    pub fn detect(state_root: &Path) -> Option<Self> {
        Self::detect_at(Path::new(CGROUP_ROOT), state_root)
    }

    fn detect_at(root: &Path, state_root: &Path) -> Option<Self> {
        let id = hive_id(state_root);
        let unified = fs::read_to_string(root.join("cgroup.controllers")).ok();
        if unified.is_some_and(|c| c.split_whitespace().any(|c| c == "memory")) {
            return Some(Self {
                version: Version::V2,
                hive_dirs: vec![root.join("hyperhive").join(&id)],
            });
        }
        let v1 = V1_CONTROLLERS
            .iter()
            .map(|c| root.join(c))
            .collect::<Vec<_>>();
        v1.iter()
            .all(|d| d.join("cgroup.procs").exists())
            .then(|| Self {
                version: Version::V1,
                hive_dirs: v1.iter().map(|d| d.join("hyperhive").join(&id)).collect(),
            })
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// The agent's cgroup (paths only; nothing is created).
    pub fn agent(&self, agent: &AgentName) -> AgentCgroup {
        AgentCgroup {
            version: self.version,
            dirs: self
                .hive_dirs
                .iter()
                .map(|d| d.join(agent.as_str()))
                .collect(),
        }
    }

    /// The agents that have a cgroup of this hive now (a valid name each; anything else there is
    /// not ours and is left alone).
    pub fn existing(&self) -> Vec<AgentName> {
        let mut names: Vec<AgentName> = self
            .hive_dirs
            .iter()
            .filter_map(|d| fs::read_dir(d).ok())
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| AgentName::parse(e.file_name().to_str()?).ok())
            .collect();
        names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        names.dedup();
        names
    }

    /// Removes the hive's own dirs when no agent's cgroup is left in them.
    pub fn remove_hive_dirs_if_empty(&self) {
        for dir in &self.hive_dirs {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// One agent's cgroup: a dir per v1 controller, or one v2 dir.
#[derive(Debug, Clone)]
pub struct AgentCgroup {
    version: Version,
    dirs: Vec<PathBuf>,
}

impl AgentCgroup {
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The `cgroup.procs` files a process writes itself into to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    pub fn exists(&self) -> bool {
        self.dirs.iter().any(|d| d.exists())
    }

    /// Creates the cgroup and writes the limits.
    pub fn create(&self, limits: &Resources) -> Result<()> {
        if self.version == Version::V2 {
            self.enable_v2_controllers()?;
        }
        for dir in &self.dirs {
            // Another agent's cleanup may remove the (empty) hive dir between our mkdirs: retry.
            let mut tries = 0;
            while let Err(e) = fs::create_dir_all(dir) {
                tries += 1;
                if e.kind() != ErrorKind::NotFound || tries > 3 {
                    return Err(Error::io(
                        format!("cannot create the cgroup {}", dir.display()),
                        e,
                    ));
                }
            }
        }
        let memory = limits.memory_mb.saturating_mul(1024 * 1024);
        match self.version {
            Version::V1 => {
                let [mem, pids, cpu] = [&self.dirs[0], &self.dirs[1], &self.dirs[2]];
                write(&mem.join("memory.limit_in_bytes"), memory)?;
                // Present only with swap accounting; without it there is no swap to escape to.
                let memsw = mem.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    write(&memsw, memory)?;
                }
                write(&pids.join("pids.max"), limits.pids)?;
                write(&cpu.join("cpu.shares"), weight_to_shares(limits.cpu_weight))?;
            }
            Version::V2 => {
                let dir = &self.dirs[0];
                write(&dir.join("memory.max"), memory)?;
                let swap = dir.join("memory.swap.max");
                if swap.exists() {
                    write(&swap, 0)?;
                }
                write(&dir.join("pids.max"), limits.pids)?;
                write(&dir.join("cpu.weight"), limits.cpu_weight.clamp(1, 10_000))?;
            }
        }
        Ok(())
    }

    /// v2: the controllers must be enabled in every ancestor's `cgroup.subtree_control`.
    fn enable_v2_controllers(&self) -> Result<()> {
        let hive_dir = self.dirs[0].parent().expect("agent dir has a parent");
        let hyperhive = hive_dir.parent().expect("hive dir has a parent");
        let root = hyperhive.parent().expect("hyperhive dir has a parent");
        for dir in [root, hyperhive, hive_dir] {
            fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("cannot create the cgroup {}", dir.display()), e))?;
            let control = dir.join("cgroup.subtree_control");
            fs::write(&control, "+memory +pids +cpu").map_err(|e| {
                Error::io(
                    format!("cannot enable controllers in {}", control.display()),
                    e,
                )
            })?;
        }
        Ok(())
    }

    /// The pids in the cgroup now (all controllers' union).
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .procs_files()
            .iter()
            .filter_map(|f| fs::read_to_string(f).ok())
            .flat_map(|text| {
                text.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// SIGKILLs everything in the cgroup until it is empty (a fork between reading and killing
    /// is caught by the next round).
    pub fn kill_all(&self) -> Result<()> {
        let deadline = Instant::now() + KILL_DEADLINE;
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                return Ok(());
            }
            for pid in &pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            if Instant::now() > deadline {
                return Err(Error::Runtime(format!(
                    "processes {pids:?} in {} did not die within {KILL_DEADLINE:?}",
                    self.dirs[0].display()
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Kills what is left and removes the cgroup dirs.
    pub fn remove(&self) -> Result<()> {
        self.kill_all()?;
        let deadline = Instant::now() + KILL_DEADLINE;
        for dir in &self.dirs {
            loop {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == ErrorKind::NotFound => break,
                    // A killed task can linger a moment before the cgroup lets go of it.
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
                    {
                        self.kill_all()?;
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(e) => {
                        return Err(Error::io(
                            format!("cannot remove the cgroup {}", dir.display()),
                            e,
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The limits in force, read from the cgroup files.
    pub fn limits(&self) -> Limits {
        let read = |dir: &Path, file: &str| -> Option<u64> {
            fs::read_to_string(dir.join(file)).ok()?.trim().parse().ok()
        };
        match self.version {
            Version::V1 => Limits {
                memory_max_bytes: read(&self.dirs[0], "memory.limit_in_bytes"),
                pids_max: read(&self.dirs[1], "pids.max"),
                cpu_weight: read(&self.dirs[2], "cpu.shares").map(shares_to_weight),
            },
            Version::V2 => Limits {
                memory_max_bytes: read(&self.dirs[0], "memory.max"),
                pids_max: read(&self.dirs[0], "pids.max"),
                cpu_weight: read(&self.dirs[0], "cpu.weight"),
            },
        }
    }
}

/// The command prefix that makes a process join `cgroup` and then exec the rest of its argv:
/// `/bin/sh -c '…' hive-cgroup-join N PROCS… CMD ARGS…`. The shell writes its own pid into each
/// `cgroup.procs` and execs, so the command (same pid) and all it forks are inside before they
/// run a single instruction of their own; a failed join exits 126 without running the command.
/// (Safe code cannot run between fork and exec; a shell does it for us.)
pub fn join_prefix(cgroup: &AgentCgroup) -> Vec<std::ffi::OsString> {
    let procs = cgroup.procs_files();
    let mut argv: Vec<std::ffi::OsString> = vec![
        "-c".into(),
        concat!(
            "n=$1; shift; while [ \"$n\" -gt 0 ]; do ",
            "echo $$ > \"$1\" || { echo \"cannot join the cgroup $1\" >&2; exit 126; }; ",
            "shift; n=$((n - 1)); done; exec \"$@\""
        )
        .into(),
        "hive-cgroup-join".into(),
        procs.len().to_string().into(),
    ];
    argv.extend(procs.into_iter().map(Into::into));
    argv
}

fn write(file: &Path, value: u64) -> Result<()> {
    fs::write(file, value.to_string())
        .map_err(|e| Error::io(format!("cannot write {value} to {}", file.display()), e))
}

/// cgroup v1 `cpu.shares` (1024 is the default) from a v2-style weight (100 is the default).
fn weight_to_shares(weight: u64) -> u64 {
    (weight.clamp(1, 10_000) * 1024 / 100).max(2)
}

fn shares_to_weight(shares: u64) -> u64 {
    (shares * 100).div_ceil(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_and_shares_round_trip() {
        assert_eq!(weight_to_shares(100), 1024);
        assert_eq!(shares_to_weight(1024), 100);
        for w in [1, 7, 50, 100, 333, 10_000] {
            assert_eq!(shares_to_weight(weight_to_shares(w)), w, "{w}");
        }
    }

    #[test]
    fn hive_ids_differ_per_state_dir_and_are_stable() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        assert_eq!(hive_id(a.path()), hive_id(a.path()));
        assert_ne!(hive_id(a.path()), hive_id(b.path()));
        assert_eq!(hive_id(a.path()).len(), 12);
    }
}
