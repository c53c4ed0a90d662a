//! Each agent's config in git (DESIGN §7): the PROPOSED repo `agents/<name>/config` (non-bare; the
//! manager commits there) and the APPLIED repo `applied/<name>` (bare). Only this module writes
//! the applied repo, and it writes the proposed one only to create a draft and to hold a commit
//! still while it is fetched. Every path is checked to stay inside the state dir: the manager can
//! write `agents/`, so a repo there may be a planted symlink.

use std::path::{Path, PathBuf};

use git2::{ErrorCode, Oid, Repository, RepositoryInitOptions, Signature};

use crate::error::{Error, Result};
use crate::names::AgentName;
use crate::paths::{StateDir, checked_within};

/// The agent templates, embedded: a new draft starts from these.
const DEFAULT_TEMPLATE: &[(&str, &str)] = &[
    ("agent.nix", include_str!("../../agents/default/agent.nix")),
    ("prompt.md", include_str!("../../agents/default/prompt.md")),
];
const MANAGER_TEMPLATE: &[(&str, &str)] = &[
    ("agent.nix", include_str!("../../agents/manager/agent.nix")),
    ("prompt.md", include_str!("../../agents/manager/prompt.md")),
];

/// The branch the applied repo's HEAD names.
const APPLIED_BRANCH: &str = "refs/heads/main";

/// A diff of a proposed commit against what is applied.
#[derive(Debug, Clone)]
pub struct ProposedChange {
    pub commit: String,
    /// The applied HEAD it is compared with (`None` for a new agent).
    pub base: Option<String>,
    /// Unified diff, or for a new agent the whole agent.nix.
    pub diff: String,
    /// "N files changed, N insertions(+), N deletions(-)".
    pub stat: String,
}

#[derive(Clone)]
pub struct ConfigRepos {
    paths: StateDir,
}

fn git(context: &str, e: git2::Error) -> Error {
    Error::Internal(format!("{context}: {}", e.message()))
}

fn signature() -> Signature<'static> {
    Signature::now("hyperhive", "hive@localhost").expect("a valid signature")
}

impl ConfigRepos {
    pub fn new(paths: StateDir) -> Self {
        Self { paths }
    }

    fn proposed_path(&self, agent: &AgentName) -> Result<PathBuf> {
        checked_within(self.paths.root(), &self.paths.proposed_repo(agent))
    }

    fn applied_path(&self, agent: &AgentName) -> Result<PathBuf> {
        checked_within(self.paths.root(), &self.paths.applied_repo(agent))
    }

    pub fn proposed_exists(&self, agent: &AgentName) -> bool {
        self.proposed_path(agent)
            .is_ok_and(|p| p.join(".git").exists())
    }

    pub fn applied_exists(&self, agent: &AgentName) -> bool {
        self.applied_path(agent)
            .is_ok_and(|p| p.join("HEAD").exists())
    }

    /// Creates the proposed repo with one commit: the template, or `agent_nix` in place of the
    /// template's agent.nix. Returns the commit.
    pub fn create_proposed(&self, agent: &AgentName, agent_nix: Option<&str>) -> Result<String> {
        let path = self.proposed_path(agent)?;
        if path.exists() {
            return Err(Error::Conflict(format!(
                "a config repo for '{agent}' exists already at agents/{agent}/config"
            )));
        }
        crate::paths::make_dir(&path, 0o755)?;
        let mut opts = RepositoryInitOptions::new();
        opts.initial_head("main");
        let repo =
            Repository::init_opts(&path, &opts).map_err(|e| git("cannot create the repo", e))?;
        let template = if agent.is_manager() {
            MANAGER_TEMPLATE
        } else {
            DEFAULT_TEMPLATE
        };
        for (file, content) in template {
            let content = match (*file, agent_nix) {
                ("agent.nix", Some(own)) => own,
                _ => content,
            };
            std::fs::write(path.join(file), content)
                .map_err(|e| Error::io(format!("cannot write {file}"), e))?;
        }
        let mut index = repo.index().map_err(|e| git("index", e))?;
        for (file, _) in template {
            index
                .add_path(Path::new(file))
                .map_err(|e| git("git add", e))?;
        }
        index.write().map_err(|e| git("index", e))?;
        let tree_id = index.write_tree().map_err(|e| git("write tree", e))?;
        let tree = repo.find_tree(tree_id).map_err(|e| git("tree", e))?;
        let sig = signature();
        let message = format!("{agent}: initial config from the template");
        let commit = repo
            .commit(Some("HEAD"), &sig, &sig, &message, &tree, &[])
            .map_err(|e| git("commit", e))?;
        Ok(commit.to_string())
    }

    /// Creates the applied repo (bare, empty) if it does not exist.
    pub fn ensure_applied(&self, agent: &AgentName) -> Result<Repository> {
        let path = self.applied_path(agent)?;
        if path.join("HEAD").exists() {
            return Repository::open_bare(&path)
                .map_err(|e| git("cannot open the applied repo", e));
        }
        crate::paths::make_dir(&path, 0o755)?;
        let mut opts = RepositoryInitOptions::new();
        opts.bare(true).initial_head("main");
        Repository::init_opts(&path, &opts).map_err(|e| git("cannot create the applied repo", e))
    }

    fn open_proposed(&self, agent: &AgentName) -> Result<Repository> {
        let path = self.proposed_path(agent)?;
        Repository::open(&path).map_err(|_| Error::NotFound {
            what: format!("config repo of '{agent}' (agents/{agent}/config)"),
        })
    }

    /// The proposed repo's HEAD commit.
    pub fn proposed_head(&self, agent: &AgentName) -> Result<String> {
        let repo = self.open_proposed(agent)?;
        let head = repo.head().and_then(|h| h.peel_to_commit()).map_err(|_| {
            Error::Conflict(format!(
                "agents/{agent}/config has no commit yet; commit agent.nix first"
            ))
        })?;
        Ok(head.id().to_string())
    }

    /// Finds `commit` (7–40 hex, unambiguous) in the proposed repo and copies it into the applied
    /// repo's object store, held there by the ref `dest` (e.g. `refs/tags/proposal/<id>`), so
    /// later force-pushes or deleted tags in the proposed repo change nothing. Returns the sha.
    pub fn pin(&self, agent: &AgentName, commit: &str, dest: &str) -> Result<String> {
        check_sha(commit)?;
        let proposed = self.open_proposed(agent)?;
        let object = proposed
            .revparse_single(commit)
            .map_err(|e| match e.code() {
                ErrorCode::Ambiguous => Error::invalid(
                    "commit",
                    format!(
                        "'{commit}' is ambiguous in agents/{agent}/config; give more hex digits"
                    ),
                ),
                _ => Error::NotFound {
                    what: format!("commit '{commit}' in agents/{agent}/config"),
                },
            })?;
        let found = object
            .peel_to_commit()
            .map_err(|_| Error::invalid("commit", format!("'{commit}' is not a commit")))?;
        let sha = found.id().to_string();
        // Hold the commit at a ref while the applied repo fetches it (it may be on no branch).
        let hold = "refs/hyperhive/pin".to_owned();
        proposed
            .reference(&hold, found.id(), true, "held for the hive to fetch")
            .map_err(|e| git("cannot hold the commit", e))?;
        let fetched = (|| {
            let applied = self.ensure_applied(agent)?;
            let url = self.proposed_path(agent)?.display().to_string();
            let mut remote = applied
                .remote_anonymous(&url)
                .map_err(|e| git("remote", e))?;
            let refspec = format!("+{hold}:{dest}");
            remote
                .fetch(&[refspec.as_str()], None, None)
                .map_err(|e| git("cannot fetch the commit", e))
        })();
        if let Ok(mut r) = proposed.find_reference(&hold) {
            let _ = r.delete();
        }
        fetched?;
        Ok(sha)
    }

    /// The applied HEAD, if anything was ever applied.
    pub fn applied_head(&self, agent: &AgentName) -> Result<Option<String>> {
        if !self.applied_exists(agent) {
            return Ok(None);
        }
        let repo = self.ensure_applied(agent)?;
        Ok(repo
            .refname_to_id(APPLIED_BRANCH)
            .ok()
            .map(|o| o.to_string()))
    }

    /// What approving `commit` would change: the diff against the applied HEAD (or the whole
    /// agent.nix for a new agent). The commit must be pinned in the applied repo.
    pub fn change(&self, agent: &AgentName, commit: &str) -> Result<ProposedChange> {
        let repo = self.ensure_applied(agent)?;
        let oid = Oid::from_str(commit).map_err(|e| git("sha", e))?;
        let new = repo.find_commit(oid).map_err(|e| git("pinned commit", e))?;
        let new_tree = new.tree().map_err(|e| git("tree", e))?;
        let base = repo.refname_to_id(APPLIED_BRANCH).ok();
        let Some(base) = base else {
            let diff = read_file(&repo, &new_tree, "agent.nix")?
                .unwrap_or_else(|| "(no agent.nix in this commit)".into());
            return Ok(ProposedChange {
                commit: commit.to_owned(),
                base: None,
                stat: format!("new agent: {} files", new_tree.len()),
                diff,
            });
        };
        let old_tree = repo
            .find_commit(base)
            .and_then(|c| c.tree())
            .map_err(|e| git("applied tree", e))?;
        let diff = repo
            .diff_tree_to_tree(Some(&old_tree), Some(&new_tree), None)
            .map_err(|e| git("diff", e))?;
        let stats = diff.stats().map_err(|e| git("diff stats", e))?;
        let mut patch = String::new();
        diff.print(git2::DiffFormat::Patch, |_, _, line| {
            if matches!(line.origin(), '+' | '-' | ' ') {
                patch.push(line.origin());
            }
            patch.push_str(&String::from_utf8_lossy(line.content()));
            true
        })
        .map_err(|e| git("diff text", e))?;
        Ok(ProposedChange {
            commit: commit.to_owned(),
            base: Some(base.to_string()),
            diff: patch,
            stat: format!(
                "{} files changed, {} insertions(+), {} deletions(-)",
                stats.files_changed(),
                stats.insertions(),
                stats.deletions()
            ),
        })
    }

    /// Moves the applied HEAD to `commit` (which must be in the applied repo) and adds `tags`.
    /// Idempotent: the reconcile after a crash calls it again.
    pub fn apply(&self, agent: &AgentName, commit: &str, tags: &[String]) -> Result<()> {
        let repo = self.ensure_applied(agent)?;
        let oid = Oid::from_str(commit).map_err(|e| git("sha", e))?;
        let target = repo
            .find_commit(oid)
            .map_err(|e| git("commit to apply", e))?;
        repo.reference(APPLIED_BRANCH, oid, true, "applied by the operator")
            .map_err(|e| git("cannot move the applied HEAD", e))?;
        for tag in tags {
            repo.reference(&format!("refs/tags/{tag}"), target.id(), true, "hyperhive")
                .map_err(|e| git("cannot tag", e))?;
        }
        Ok(())
    }

    /// Adds a tag in the applied repo pointing at `commit`.
    /// Writes nothing when the tag already points there (the start-up reconcile calls this for
    /// every decided approval).
    pub fn tag(&self, agent: &AgentName, tag: &str, commit: &str) -> Result<()> {
        let repo = self.ensure_applied(agent)?;
        let oid = Oid::from_str(commit).map_err(|e| git("sha", e))?;
        let name = format!("refs/tags/{tag}");
        if repo.refname_to_id(&name).ok() == Some(oid) {
            return Ok(());
        }
        repo.reference(&name, oid, true, "hyperhive")
            .map_err(|e| git("cannot tag", e))?;
        Ok(())
    }

    /// Removes the lock files a killed daemon left in the middle of a ref update: every `*.lock`
    /// in the applied repo (only the broker writes it, and the caller holds the daemon lock) and
    /// the broker's own `refs/hyperhive/*.lock` in the proposed repo (the manager's git may be
    /// working there; its locks are left alone). Returns how many went.
    pub fn clear_stale_locks(&self, agent: &AgentName) -> Result<usize> {
        let mut removed = 0;
        let mut remove_locks_under = |dir: PathBuf, recursive: bool| -> Result<()> {
            let mut pending = vec![dir];
            while let Some(dir) = pending.pop() {
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let path = entry.path();
                    let Ok(kind) = entry.file_type() else {
                        continue;
                    };
                    if kind.is_dir() && recursive && entry.file_name() != "objects" {
                        pending.push(path);
                    } else if kind.is_file() && path.extension().is_some_and(|e| e == "lock") {
                        std::fs::remove_file(&path).map_err(|e| {
                            Error::io(format!("cannot remove {}", path.display()), e)
                        })?;
                        tracing::warn!(lock = %path.display(), "removed a lock file left by a killed daemon");
                        removed += 1;
                    }
                }
            }
            Ok(())
        };
        if self.applied_exists(agent) {
            remove_locks_under(self.applied_path(agent)?, true)?;
        }
        if self.proposed_exists(agent) {
            remove_locks_under(
                self.proposed_path(agent)?.join(".git/refs/hyperhive"),
                false,
            )?;
        }
        Ok(removed)
    }

    /// Whether `commit` is in the applied repo's object store (without creating the repo).
    pub fn applied_has_commit(&self, agent: &AgentName, commit: &str) -> bool {
        let Ok(oid) = Oid::from_str(commit) else {
            return false;
        };
        self.applied_exists(agent)
            && self
                .applied_path(agent)
                .and_then(|p| Repository::open_bare(p).map_err(|e| git("open", e)))
                .is_ok_and(|repo| repo.find_commit(oid).is_ok())
    }

    /// The names of the tags in the applied repo (for tests and diagnostics).
    pub fn applied_tags(&self, agent: &AgentName) -> Result<Vec<String>> {
        let repo = self.ensure_applied(agent)?;
        let names = repo.tag_names(None).map_err(|e| git("tags", e))?;
        Ok(names
            .iter()
            .flatten()
            .flatten()
            .map(str::to_owned)
            .collect())
    }

    /// The applied agent.nix, if any.
    pub fn applied_agent_nix(&self, agent: &AgentName) -> Result<Option<String>> {
        let Some(head) = self.applied_head(agent)? else {
            return Ok(None);
        };
        let repo = self.ensure_applied(agent)?;
        let tree = repo
            .find_commit(Oid::from_str(&head).map_err(|e| git("sha", e))?)
            .and_then(|c| c.tree())
            .map_err(|e| git("tree", e))?;
        read_file(&repo, &tree, "agent.nix")
    }
}

fn read_file(repo: &Repository, tree: &git2::Tree<'_>, name: &str) -> Result<Option<String>> {
    let Some(entry) = tree.get_name(name) else {
        return Ok(None);
    };
    let blob = repo.find_blob(entry.id()).map_err(|e| git("blob", e))?;
    Ok(Some(String::from_utf8_lossy(blob.content()).into_owned()))
}

/// A commit as the manager may give it: 7 to 40 hex digits.
pub fn check_sha(commit: &str) -> Result<()> {
    let ok = (7..=40).contains(&commit.len()) && commit.bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "commit",
            format!(
                "'{}' is not a commit id: give 7 to 40 hex digits",
                commit.chars().take(48).collect::<String>()
            ),
        ))
    }
}
