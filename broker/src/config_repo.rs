//! Each agent's config in git (DESIGN §7): the PROPOSED repo `agents/<name>/config` (non-bare; the
//! manager commits there) and the APPLIED repo `applied/<name>` (bare). Only this module writes
//! the applied repo. It writes the proposed one only to create a draft, and reads it only through
//! [`crate::proposed_repo`], which trusts nothing there (no symlink, gitfile, repo config or
//! alternates is followed). What an approval shows is rendered here: every file of the commit,
//! modes and symlink targets, binary content escaped and flagged, never hidden.

use std::path::{Path, PathBuf};

use std::collections::HashSet;

use git2::{DiffOptions, ErrorCode, ObjectType, Oid, Repository, RepositoryInitOptions, Signature};

use crate::config::ApprovalsConfig;
use crate::error::{Error, Result};
use crate::names::AgentName;
use crate::paths::{StateDir, checked_within};
use crate::proposed_repo::ProposedGitDir;

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
    /// Unified diff of every file (for a new agent, every file as added), binary content escaped.
    pub diff: String,
    /// "N files changed, N insertions(+), N deletions(-)".
    pub stat: String,
    pub files: Vec<ChangedFile>,
}

pub use proto::approval::ChangedFile;

#[derive(Clone)]
pub struct ConfigRepos {
    paths: StateDir,
}

fn git(context: &str, e: git2::Error) -> Error {
    Error::git(context, e)
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

    /// Whether anything named `.git` is in the proposed repo's place (not followed: a symlink or
    /// gitfile counts, and reading it is then refused with a clear error).
    pub fn proposed_exists(&self, agent: &AgentName) -> bool {
        self.proposed_path(agent)
            .is_ok_and(|p| std::fs::symlink_metadata(p.join(".git")).is_ok())
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

    fn open_proposed(&self, agent: &AgentName) -> Result<ProposedGitDir> {
        ProposedGitDir::open(self.paths.root(), agent)?.ok_or_else(|| Error::NotFound {
            what: format!("config repo of '{agent}' (agents/{agent}/config)"),
        })
    }

    /// The proposed repo's HEAD commit, read from its ref files (never through its config).
    pub fn proposed_head(&self, agent: &AgentName) -> Result<String> {
        let head = self.open_proposed(agent)?.head()?.ok_or_else(|| {
            Error::Conflict(format!(
                "agents/{agent}/config has no commit yet; commit agent.nix first"
            ))
        })?;
        Ok(head.to_string())
    }

    /// Finds `commit` (7–40 hex, unambiguous; never a ref name) among the proposed repo's objects
    /// and copies it with its tree into the applied repo's object store, held there by the ref
    /// `dest` (e.g. `refs/tags/proposal/<id>`), so later force-pushes or deleted tags in the
    /// proposed repo change nothing. The proposed repo is only read, through a private copy of its
    /// objects. Refuses a commit over the caps before writing anything. Returns the full sha.
    pub fn pin(
        &self,
        agent: &AgentName,
        commit: &str,
        dest: &str,
        caps: &ApprovalsConfig,
    ) -> Result<String> {
        check_sha(commit)?;
        let proposed = self.open_proposed(agent)?;
        let staging_root = checked_within(self.paths.root(), &self.paths.staging_dir())?;
        crate::paths::make_dir(&staging_root, 0o700)?;
        let staged = tempfile::Builder::new()
            .prefix(&format!("{agent}-"))
            .tempdir_in(&staging_root)
            .map_err(|e| Error::io("cannot make a staging dir", e))?;
        proposed.copy_objects(staged.path(), caps.max_repo_bytes)?;
        let odb = git2::Odb::new().map_err(|e| git("odb", e))?;
        let staged_path = staged
            .path()
            .to_str()
            .ok_or_else(|| Error::Internal("the state dir's path is not UTF-8".into()))?;
        odb.add_disk_alternate(staged_path)
            .map_err(|e| git("staged objects", e))?;
        let source = Repository::from_odb(odb).map_err(|e| git("staged repo", e))?;
        let source_odb = source.odb().map_err(|e| git("odb", e))?;
        let short = Oid::from_str(commit).map_err(|e| git("sha", e))?;
        let oid = source_odb
            .exists_prefix(short, commit.len())
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
        let found = source.find_commit(oid).map_err(|_| {
            Error::invalid(
                "commit",
                format!("'{commit}' is not a commit (give a commit's id)"),
            )
        })?;
        let objects = objects_of(&source, &found, caps, agent)?;
        let applied = self.ensure_applied(agent)?;
        let applied_odb = applied.odb().map_err(|e| git("applied odb", e))?;
        for id in &objects {
            if applied_odb.exists(*id) {
                continue;
            }
            let object = source_odb.read(*id).map_err(|e| git("staged object", e))?;
            let written = applied_odb
                .write(object.kind(), object.data())
                .map_err(|e| git("cannot copy an object", e))?;
            if written != *id {
                return Err(Error::Internal(format!("object {id} copied as {written}")));
            }
        }
        // Only the commit and its tree are copied: where its parents are absent, git is told
        // so (the `shallow` file), so `git log` in the applied repo stops there cleanly.
        if found.parent_ids().any(|p| !applied_odb.exists(p)) {
            self.mark_shallow(agent, oid)?;
        }
        applied
            .reference(dest, oid, true, "requested")
            .map_err(|e| git("cannot hold the commit", e))?;
        Ok(oid.to_string())
    }

    fn mark_shallow(&self, agent: &AgentName, oid: Oid) -> Result<()> {
        let path = checked_within(
            self.paths.root(),
            &self.applied_path(agent)?.join("shallow"),
        )?;
        let mut lines = match std::fs::read_to_string(&path) {
            Ok(text) => text.lines().map(str::to_owned).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io("cannot read the shallow file", e)),
        };
        let sha = oid.to_string();
        if lines.contains(&sha) {
            return Ok(());
        }
        lines.push(sha);
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, lines.join("\n") + "\n")
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| Error::io("cannot write the shallow file", e))
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

    /// What approving `commit` would change today: the diff against the applied HEAD now (for a
    /// new agent, every file as added). The commit must be pinned in the applied repo.
    pub fn change(&self, agent: &AgentName, commit: &str) -> Result<ProposedChange> {
        let base = self.applied_head(agent)?;
        self.change_from(agent, base.as_deref(), commit)
    }

    /// The diff of `commit` against `base` (or against nothing), both in the applied repo.
    pub fn change_from(
        &self,
        agent: &AgentName,
        base: Option<&str>,
        commit: &str,
    ) -> Result<ProposedChange> {
        let repo = self.ensure_applied(agent)?;
        let tree_of = |sha: &str| {
            let oid = Oid::from_str(sha).map_err(|e| git("sha", e))?;
            repo.find_commit(oid)
                .and_then(|c| c.tree())
                .map_err(|e| git("pinned commit", e))
        };
        let new_tree = tree_of(commit)?;
        let old_tree = base.map(tree_of).transpose()?;
        let (diff, stat, files) = render(&repo, old_tree.as_ref(), &new_tree)?;
        Ok(ProposedChange {
            commit: commit.to_owned(),
            base: base.map(str::to_owned),
            diff,
            stat,
            files,
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

    /// Removes what a killed daemon left in `staging/` (copies of proposed repos' objects made
    /// while a request was read). Only the broker writes there and the caller holds the daemon
    /// lock; entries are removed without following symlinks. Returns how many went.
    pub fn clear_staging(&self) -> Result<usize> {
        let dir = checked_within(self.paths.root(), &self.paths.staging_dir())?;
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(Error::io(format!("cannot read {}", dir.display()), e)),
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            let gone = match entry.file_type() {
                // remove_dir_all does not follow symlinks inside the tree.
                Ok(kind) if kind.is_dir() => std::fs::remove_dir_all(&path),
                _ => std::fs::remove_file(&path),
            };
            gone.map_err(|e| Error::io(format!("cannot remove {}", path.display()), e))?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Removes the lock files a killed daemon left in the middle of a ref update: every `*.lock`
    /// in the applied repo (only the broker writes it, and the caller holds the daemon lock).
    /// Never in the proposed repo: the broker writes nothing there, and what looks like a lock
    /// there may be a symlink planted to make it delete files elsewhere. Returns how many went.
    pub fn clear_stale_locks(&self, agent: &AgentName) -> Result<usize> {
        let mut removed = 0;
        let mut remove_locks_under = |dir: PathBuf| -> Result<()> {
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
                    if kind.is_dir() && entry.file_name() != "objects" {
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
            remove_locks_under(self.applied_path(agent)?)?;
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

/// The objects approving `commit` needs (the commit, its trees and blobs), checked against the
/// caps: no blob over `max_file_bytes`, all blobs together at most `max_commit_bytes`.
fn objects_of(
    repo: &Repository,
    commit: &git2::Commit<'_>,
    caps: &ApprovalsConfig,
    agent: &AgentName,
) -> Result<Vec<Oid>> {
    let odb = repo.odb().map_err(|e| git("odb", e))?;
    let missing = |what: String| Error::NotFound {
        what: format!("{what} of commit {} in agents/{agent}/config", commit.id()),
    };
    let mut seen = HashSet::new();
    let mut order = vec![commit.id()];
    let mut total = 0u64;
    let mut pending = vec![(String::new(), commit.tree_id())];
    while let Some((prefix, tree_id)) = pending.pop() {
        if !seen.insert(tree_id) {
            continue;
        }
        order.push(tree_id);
        let tree = repo
            .find_tree(tree_id)
            .map_err(|_| missing(format!("tree {tree_id}")))?;
        for entry in tree.iter() {
            let path = format!("{prefix}{}", escape(entry.name_bytes()));
            match entry.kind() {
                Some(ObjectType::Tree) => pending.push((format!("{path}/"), entry.id())),
                Some(ObjectType::Blob) => {
                    if !seen.insert(entry.id()) {
                        continue;
                    }
                    let (size, _) = odb
                        .read_header(entry.id())
                        .map_err(|_| missing(format!("file {path}")))?;
                    let size = size as u64;
                    if size > caps.max_file_bytes {
                        return Err(Error::TooLarge(format!(
                            "{path} in commit {} is {size} bytes; a file may hold at most {} bytes (approvals.max_file_bytes in hive.toml). Nothing was queued",
                            commit.id(),
                            caps.max_file_bytes
                        )));
                    }
                    total += size;
                    if total > caps.max_commit_bytes {
                        return Err(Error::TooLarge(format!(
                            "commit {} holds more than {} bytes of files (approvals.max_commit_bytes in hive.toml). Nothing was queued",
                            commit.id(),
                            caps.max_commit_bytes
                        )));
                    }
                    order.push(entry.id());
                }
                // A submodule's commit is named, not carried.
                _ => {}
            }
        }
    }
    Ok(order)
}

fn mode(mode: git2::FileMode) -> Option<String> {
    let bits = i32::from(mode);
    (bits != 0).then(|| format!("{bits:o}"))
}

/// Whether content must be shown escaped: NUL bytes, or not UTF-8.
fn is_binary(bytes: &[u8]) -> bool {
    bytes.contains(&0) || std::str::from_utf8(bytes).is_err()
}

/// Text safe to show: NUL as `\0`, other control characters and invalid UTF-8 as `\xNN` or
/// `\u{..}` (bidi controls too); newlines and tabs kept.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\n' | '\t' => out.push(c),
                '\0' => out.push_str("\\0"),
                c if (c as u32) < 0x80 && c.is_control() => {
                    out.push_str(&format!("\\x{:02x}", c as u32));
                }
                c if c.is_control()
                    || ('\u{202a}'..='\u{202e}').contains(&c)
                    || ('\u{2066}'..='\u{2069}').contains(&c) =>
                {
                    out.push_str(&format!("\\u{{{:x}}}", c as u32));
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// The diff text, its stat line and the list of files, from `old` (or nothing) to `new`.
fn render(
    repo: &Repository,
    old: Option<&git2::Tree<'_>>,
    new: &git2::Tree<'_>,
) -> Result<(String, String, Vec<ChangedFile>)> {
    let mut opts = DiffOptions::new();
    // Text for everything: binary content is escaped below, never summarised away.
    opts.force_text(true).include_typechange(true);
    let diff = repo
        .diff_tree_to_tree(old, Some(new), Some(&mut opts))
        .map_err(|e| git("diff", e))?;
    let stats = diff.stats().map_err(|e| git("diff stats", e))?;
    let blob = |id: Oid| repo.find_blob(id).ok();
    let mut files = Vec::new();
    for delta in diff.deltas() {
        let (old_file, new_file) = (delta.old_file(), delta.new_file());
        let path = new_file
            .path_bytes()
            .or(old_file.path_bytes())
            .map(escape)
            .unwrap_or_default();
        let new_blob = (!new_file.id().is_zero())
            .then(|| blob(new_file.id()))
            .flatten();
        let old_blob = (!old_file.id().is_zero())
            .then(|| blob(old_file.id()))
            .flatten();
        let binary = [&new_blob, &old_blob]
            .into_iter()
            .flatten()
            .any(|b| is_binary(b.content()));
        let symlink_target = (new_file.mode() == git2::FileMode::Link)
            .then(|| new_blob.as_ref().map(|b| escape(b.content())))
            .flatten();
        files.push(ChangedFile {
            path,
            change: format!("{:?}", delta.status()).to_lowercase(),
            old_mode: mode(old_file.mode()),
            new_mode: mode(new_file.mode()),
            symlink_target,
            binary,
            size: new_blob.map_or(0, |b| b.size() as u64),
        });
    }
    let mut patch = String::new();
    for f in files.iter().filter(|f| f.binary) {
        patch.push_str(&format!(
            "!!! BINARY: {} holds NUL bytes or is not UTF-8; its content is shown below with those bytes escaped (\\0, \\xNN)\n",
            f.path
        ));
    }
    diff.print(git2::DiffFormat::Patch, |_, _, line| {
        if matches!(line.origin(), '+' | '-' | ' ') {
            patch.push(line.origin());
        }
        patch.push_str(&escape(line.content()));
        true
    })
    .map_err(|e| git("diff text", e))?;
    let stat = format!(
        "{}{} files changed, {} insertions(+), {} deletions(-)",
        if old.is_none() { "new agent: " } else { "" },
        stats.files_changed(),
        stats.insertions(),
        stats.deletions()
    );
    Ok((patch, stat, files))
}

/// Writes the tree of `commit` in the (bare) repo at `repo` out into `dest`, which must not exist:
/// regular files with their exec bit, directories, and symlinks as symlinks (never followed here;
/// the build's restricted evaluation refuses one that leads out of the tree). Every directory and
/// file is created fresh (`O_EXCL`), so an entry can never write through an earlier one, and a
/// name that is not a plain file name is refused. A submodule is refused: a build cannot use it.
pub fn export_tree(repo: &Path, commit: &str, dest: &Path) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};

    let repo = Repository::open_bare(repo).map_err(|e| git("cannot open the applied repo", e))?;
    let oid = Oid::from_str(commit).map_err(|e| git("sha", e))?;
    let tree = repo
        .find_commit(oid)
        .and_then(|c| c.tree())
        .map_err(|e| git("commit to export", e))?;
    // A hostile tree may name an entry twice (a symlink, then a directory to write through it).
    let refused = |path: &Path, shown: &str, e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::UnsafePath(format!("'{shown}' appears twice in commit {commit}"))
        } else {
            Error::io(format!("cannot write {}", path.display()), e)
        }
    };
    let make_dir = |dir: &Path, shown: &str| {
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(dir)
            .map_err(|e| refused(dir, shown, e))
    };
    make_dir(dest, ".")?;
    let mut pending = vec![(tree, dest.to_path_buf(), String::new())];
    while let Some((tree, dir, shown)) = pending.pop() {
        for entry in tree.iter() {
            let name = entry.name_bytes();
            let shown = format!("{shown}{}", escape(name));
            if name.is_empty()
                || name == b"."
                || name == b".."
                || name.contains(&b'/')
                || name.contains(&0)
            {
                return Err(Error::UnsafePath(format!(
                    "'{shown}' in commit {commit} is not a plain file name"
                )));
            }
            let path = dir.join(std::ffi::OsStr::from_bytes(name));
            let written = |e| refused(&path, &shown, e);
            match entry.filemode() {
                0o040000 => {
                    let sub = repo
                        .find_tree(entry.id())
                        .map_err(|e| git("tree to export", e))?;
                    make_dir(&path, &shown)?;
                    pending.push((sub, path, format!("{shown}/")));
                }
                mode @ (0o100644 | 0o100755 | 0o120000) => {
                    let blob = repo
                        .find_blob(entry.id())
                        .map_err(|e| git("file to export", e))?;
                    if mode == 0o120000 {
                        let target = blob.content();
                        if target.contains(&0) {
                            return Err(Error::UnsafePath(format!(
                                "the symlink '{shown}' in commit {commit} has a NUL in its target"
                            )));
                        }
                        std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &path)
                            .map_err(written)?;
                    } else {
                        let mut file = std::fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .mode(if mode == 0o100755 { 0o755 } else { 0o644 })
                            .open(&path)
                            .map_err(written)?;
                        file.write_all(blob.content()).map_err(written)?;
                    }
                }
                _ => {
                    return Err(Error::invalid(
                        "commit",
                        format!(
                            "'{shown}' in commit {commit} is a submodule, which a build cannot use; remove it"
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
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
