//! What confines a running agent beyond the kernel's isolation (DESIGN §16), for `hive show-agent NAME`,
//! the API and the dashboard: the network mode and egress list of the image that runs, the egress
//! denials since the daemon started, the tokens spent today against the budget, and whether any
//! key the hive holds is inside the container — checked, never assumed: the environment of each of
//! the container's processes (the runtime reads it) and the files of every directory bound
//! writable into it (its home, state and run dirs), searched for the keys themselves.
//!
//! It only reads. It never follows a symlink out of the state dir, reads at most
//! [`MAX_FILE_BYTES`] of a file and [`MAX_FILES`] files, and never returns or logs a key. A
//! service ([`ConfinementReader`]) built in `Hive::open` holding its own handles (the state dir,
//! the registry, the containers, the egress lists and the budgets, all read only); `Hive`
//! delegates to it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::containers::Containers;
use crate::egress::EgressLists;
use crate::error::Result;
use crate::lifecycle::off_runtime;
use crate::model_calls::Budgets;
use crate::names::AgentName;
use crate::paths::StateDir;
use crate::registry::Registry;

/// The largest file searched for keys (a larger one is searched up to here).
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// The most files searched per report.
pub const MAX_FILES: usize = 20_000;

/// The report.
pub use proto::agent::Confinement;

/// Whether a report searches the container for keys (it reads every file it can write: for a
/// command or an API call, not for a page the dashboard renders again at each event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySearch {
    Search,
    Skip,
}

/// The confinement service: reads what confines a running agent.
pub struct ConfinementReader {
    paths: StateDir,
    registry: Arc<Registry>,
    /// The agent's run, its image (the builder) and its processes (the runtime).
    containers: Arc<Containers>,
    egress: Arc<EgressLists>,
    budgets: Arc<Budgets>,
}

impl ConfinementReader {
    pub(crate) fn new(
        paths: StateDir,
        registry: Arc<Registry>,
        containers: Arc<Containers>,
        egress: Arc<EgressLists>,
        budgets: Arc<Budgets>,
    ) -> Self {
        Self {
            paths,
            registry,
            containers,
            egress,
            budgets,
        }
    }

    /// The confinement of `agent`, whose container runs; with [`KeySearch::Skip`], `key_inside`
    /// is `None` (not checked) and nothing is read from its processes or files.
    pub async fn of(&self, agent: &AgentName, keys: KeySearch) -> Result<Confinement> {
        self.registry.require(agent)?;
        let run = self.containers.run_of(agent);
        let image = match run.deploy {
            Some(id) => {
                let builder = self.containers.builder()?;
                let name = agent.clone();
                off_runtime(move || Ok(builder.image(&name, id))).await?
            }
            None => None,
        };
        let Some(image) = image else {
            return Err(crate::Error::Conflict(format!(
                "agent '{agent}' is not running: its confinement is read from what runs"
            )));
        };
        let (key_inside, found, files_searched, search_cut_short) = match keys {
            KeySearch::Search => self.search_keys(agent).await?,
            KeySearch::Skip => (None, Vec::new(), 0, false),
        };
        let network = match image.config.network {
            proto::agent_config::Network::None => "none",
            proto::agent_config::Network::Host => "host",
        };
        let mut warnings = Vec::new();
        if network == "host" {
            warnings.push(
                "network = \"host\": the container shares the host's network; its egress is not \
                 confined to the list"
                    .to_owned(),
            );
        }
        if key_inside == Some(true) {
            warnings.push(
                "a key the hive holds is inside the container: rotate it, and remove it from \
                 where it was found"
                    .to_owned(),
            );
        }
        let (tokens_today, tokens_per_day) = self.budgets.today(agent);
        Ok(Confinement {
            network: network.to_owned(),
            egress: image.config.egress.clone(),
            egress_denied: self.egress.denied(agent),
            tokens_today,
            tokens_per_day,
            key_inside,
            key_found_in: found,
            files_searched,
            search_cut_short,
            warnings,
        })
    }

    /// Searches `agent`'s container processes' environments and writable files for a key the
    /// hive holds: (inside, where, files searched, search cut short).
    async fn search_keys(
        &self,
        agent: &AgentName,
    ) -> Result<(Option<bool>, Vec<String>, usize, bool)> {
        // The agent's stored key is searched for too, though the gateway may not have read it yet.
        let (root, key_file) = (
            self.paths.root().to_owned(),
            self.paths.agent_api_key(agent),
        );
        let _ = off_runtime(move || {
            let _ = crate::gateway::read_agent_key(&root, &key_file);
            Ok(())
        })
        .await;
        let environ = match self.containers.runtime() {
            Ok(runtime) => {
                let (runtime, name) = (runtime.clone(), agent.clone());
                off_runtime(move || Ok(environs_holding_a_key(runtime.pids(&name)))).await
            }
            Err(e) => Err(e),
        };
        let dirs = vec![
            self.paths.agent_home(agent),
            self.paths.agent_state_dir(agent),
            self.paths.agent_run_dir(agent),
        ];
        let root = self.paths.root().to_owned();
        let files = off_runtime(move || Ok(files_holding_a_key(&root, &dirs))).await?;
        let mut found = Vec::new();
        let key_inside = match environ {
            Ok(pids) => {
                found.extend(pids.iter().map(|p| format!("the environment of pid {p}")));
                Some(!pids.is_empty() || !files.found.is_empty())
            }
            Err(e) => {
                tracing::debug!(%agent, error = %e, "cannot read the container's environments");
                (!files.found.is_empty()).then_some(true)
            }
        };
        found.extend(
            files
                .found
                .iter()
                .map(|f| format!("the file {}", f.display())),
        );
        Ok((key_inside, found, files.searched, files.cut_short))
    }
}

/// Those of `pids` whose environment holds a key the hive holds.
fn environs_holding_a_key(pids: Vec<u32>) -> Vec<u32> {
    pids.into_iter()
        .filter(|&pid| {
            crate::runtime::kernel::environ(pid)
                .is_ok_and(|env| crate::redact::holds_a_known_secret(&env))
        })
        .collect()
}

/// The files under some directories that hold a known key.
#[derive(Debug, Default)]
struct FileSearch {
    found: Vec<PathBuf>,
    searched: usize,
    cut_short: bool,
}

/// Searches the plain files under `dirs` (each within `root`; symlinks are not followed) for a
/// key the hive holds.
fn files_holding_a_key(root: &Path, dirs: &[PathBuf]) -> FileSearch {
    use std::io::Read;
    let mut search = FileSearch::default();
    let mut stack: Vec<PathBuf> = dirs
        .iter()
        .filter(|d| crate::paths::checked_within(root, d).is_ok())
        .cloned()
        .collect();
    let mut buf = Vec::new();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            // `file_type` does not follow symlinks.
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                if search.searched >= MAX_FILES {
                    search.cut_short = true;
                    return search;
                }
                search.searched += 1;
                buf.clear();
                let read = std::fs::File::open(entry.path())
                    .and_then(|f| f.take(MAX_FILE_BYTES).read_to_end(&mut buf));
                if read.is_ok() && crate::redact::holds_a_known_secret(&buf) {
                    search.found.push(entry.path());
                }
            }
        }
    }
    search
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_planted_key_is_found_and_a_symlink_to_one_is_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let home = root.path().join("home");
        std::fs::create_dir_all(home.join(".config/deep")).unwrap();
        let key = "sk-confinement-test-key-0123456789abcdef";
        crate::redact::remember(key);
        std::fs::write(home.join("clean.txt"), "nothing here").unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("k"), key).unwrap();
        std::os::unix::fs::symlink(outside.path().join("k"), home.join("link")).unwrap();
        let clean = files_holding_a_key(root.path(), std::slice::from_ref(&home));
        assert!(clean.found.is_empty(), "{clean:?}");
        assert_eq!(clean.searched, 1, "the symlink is not read");

        std::fs::write(
            home.join(".config/deep/settings.json"),
            format!("{{\"apiKey\":\"{key}\"}}"),
        )
        .unwrap();
        let found = files_holding_a_key(root.path(), std::slice::from_ref(&home));
        assert_eq!(found.found, vec![home.join(".config/deep/settings.json")]);
        // A directory outside the root is not searched.
        let outside_dir = outside.path().to_owned();
        assert_eq!(files_holding_a_key(root.path(), &[outside_dir]).searched, 0);
    }
}
