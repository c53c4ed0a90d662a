//! Turning an applied `agent.nix` into an image (DESIGN §8): the **minimal** builder (a
//! builtins-only derivation, any Linux with `nix`) and the **nixos** builder (a NixOS container
//! system; needs nixpkgs). Both give a store path kept alive by a gcroot per deploy under
//! `build/<name>/`.
//!
//! The source is the applied tree, written out by the broker from the applied repo; evaluation is
//! restricted to it and the hive's own Nix code, so an `agent.nix` cannot read a host file.
//! Blocking: callers run it off the async workers.
//!
//! Owns `build/<name>/`: `nix/` (the builder's Nix code, embedded in this binary, and the busybox
//! it puts in images), `src-<deploy id>/` (the exported tree) and `result-<deploy id>` (the
//! gcroot), and `check-<approval id>/` (the same for the check build of a request, removed once
//! it is decided). Never writes outside it except through nix into the store, and never garbage-collects
//! the store as a whole (the host's store is not the hive's): `collect` deletes only the images of
//! this agent's dropped deploys.
//!
//! [`Builder::fingerprint`] names everything an image depends on besides the agent's tree (the
//! builder, its Nix code, the hive's `[defaults]`, the harness binary and busybox it copies in): a deploy records it, and
//! the watcher calls an image built with another one stale.

use std::collections::HashSet;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::AgentConfig;

use crate::config::BuilderKind;
use crate::error::{Error, Result};
use crate::names::AgentName;
use crate::paths::{StateDir, checked_within, make_dir};

/// A built image.
#[derive(Debug, Clone)]
pub struct Image {
    /// The store path: the container's read-only root (minimal) or system (nixos).
    pub path: PathBuf,
    /// `build/<name>/result-<deploy id>`: the gcroot that keeps it.
    pub gcroot: PathBuf,
    /// Its `etc/hyperhive/agent.json`.
    pub config: AgentConfig,
}

/// The minimal builder's Nix code (`nixos-module/lib/`), written to `build/<name>/nix/` before
/// each build so the running hive needs no source checkout.
const NIX_FILES: &[(&str, &str)] = &[
    (
        "minimal.nix",
        include_str!("../../nixos-module/lib/minimal.nix"),
    ),
    (
        "check.nix",
        include_str!("../../nixos-module/lib/check.nix"),
    ),
    (
        "options.nix",
        include_str!("../../nixos-module/lib/options.nix"),
    ),
];

/// How much of nix's error output a failed build keeps.
const MAX_ERROR_BYTES: usize = 8 * 1024;
/// How much of nix's stderr is read at all (the rest is drained and dropped).
const MAX_STDERR_BYTES: usize = 256 * 1024;

/// Builds agents' images with nix.
#[derive(Debug, Clone)]
pub struct Builder {
    paths: StateDir,
    harness: PathBuf,
    busybox: PathBuf,
    nix_build: PathBuf,
    nix_store: PathBuf,
    timeout: Duration,
    /// The hive's defaults for an agent's options and for the manager's (`[defaults]`,
    /// `[manager]`), as the JSON the evaluation is given.
    defaults: String,
    manager_defaults: String,
    /// The last fingerprint and the file stamps it was computed from.
    fingerprint: Arc<Mutex<Option<Fingerprint>>>,
}

/// A fingerprint and the stamps of the files it read.
type Fingerprint = (Vec<Stamp>, String);

/// What identifies a file's content without reading it: a changed file has another stamp.
type Stamp = (u64, u64, u64, i64, i64, i64, i64);

fn stamp(path: &Path) -> Result<Stamp> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path)
        .map_err(|e| Error::io(format!("cannot inspect {}", path.display()), e))?;
    Ok((
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    ))
}

impl Builder {
    /// A builder of `kind` for the hive at `paths`, putting `harness_binary` (hive-agent) into
    /// images; a build taking longer than `timeout` is stopped. Fails, saying what to install, when
    /// nix or busybox is missing.
    pub fn new(
        kind: BuilderKind,
        paths: StateDir,
        harness_binary: PathBuf,
        timeout: Duration,
    ) -> Result<Self> {
        if kind == BuilderKind::Nixos {
            return Err(Error::BuildFailed(
                "the nixos builder needs nixpkgs, which this hive cannot use yet; set `[build] builder = \"minimal\"` in hive.toml".into(),
            ));
        }
        let nix_build = which("nix-build").ok_or_else(|| {
            Error::BuildFailed(
                "nix-build was not found on PATH: install nix (apt-get install nix-bin)".into(),
            )
        })?;
        let nix_store = nix_build
            .parent()
            .map(|dir| dir.join("nix-store"))
            .filter(|p| p.is_file())
            .or_else(|| which("nix-store"))
            .ok_or_else(|| {
                Error::BuildFailed(
                    "nix-store was not found on PATH: install nix (apt-get install nix-bin)".into(),
                )
            })?;
        let busybox = which("busybox").ok_or_else(|| {
            Error::BuildFailed(
                "busybox was not found on PATH; images need a static one (apt-get install busybox-static)"
                    .into(),
            )
        })?;
        // Restricted evaluation compares symlink-free paths: give nix the canonical one.
        let harness = std::fs::canonicalize(&harness_binary)
            .ok()
            .filter(|p| p.is_file())
            .ok_or_else(|| {
                Error::BuildFailed(format!(
                    "the harness binary {} is missing; build it (cargo build --workspace) or install hyperhive",
                    harness_binary.display()
                ))
            })?;
        Ok(Self {
            paths,
            harness,
            busybox,
            nix_build,
            nix_store,
            timeout,
            defaults: "{}".into(),
            manager_defaults: "{}".into(),
            fingerprint: Arc::default(),
        })
    }

    /// The builder with `config`'s `[defaults]` and `[manager]` laid under every agent.nix.
    pub fn with_defaults(mut self, config: &crate::config::Config) -> Self {
        self.defaults = config.agent_defaults(false).to_string();
        self.manager_defaults = config.agent_defaults(true).to_string();
        self.fingerprint = Arc::default();
        self
    }

    fn defaults_of(&self, agent: &AgentName) -> &str {
        if agent.is_manager() {
            &self.manager_defaults
        } else {
            &self.defaults
        }
    }

    /// What an image built now would depend on besides the agent's tree, as a sha256 (hex): the
    /// builder kind, its embedded Nix code, the hive's defaults, and the bytes of the harness
    /// binary and busybox it copies in. Read again only when one of those files changed (its stamp), so it is cheap to
    /// ask often.
    pub fn fingerprint(&self) -> Result<String> {
        use sha2::{Digest, Sha256};
        let files = [&self.harness, &self.busybox];
        let stamps = files.iter().map(|f| stamp(f)).collect::<Result<Vec<_>>>()?;
        let mut cached = self.fingerprint.lock().expect("fingerprint");
        if let Some((seen, fingerprint)) = cached.as_ref()
            && *seen == stamps
        {
            return Ok(fingerprint.clone());
        }
        let mut h = Sha256::new();
        // Each part with its length first, so no two different inputs hash alike.
        let mut part = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        part(b"minimal");
        for (name, text) in NIX_FILES {
            part(name.as_bytes());
            part(text.as_bytes());
        }
        part(self.defaults.as_bytes());
        part(self.manager_defaults.as_bytes());
        for file in files {
            let bytes = std::fs::read(file)
                .map_err(|e| Error::io(format!("cannot read {}", file.display()), e))?;
            part(&bytes);
        }
        let fingerprint = hex::encode(h.finalize());
        *cached = Some((stamps, fingerprint.clone()));
        Ok(fingerprint)
    }

    fn agent_dir(&self, agent: &AgentName) -> Result<PathBuf> {
        checked_within(self.paths.root(), &self.paths.build_dir(agent))
    }

    /// Builds the image of commit `sha` of the applied repo at `applied_repo` for deploy
    /// `deploy_id`: exports its tree to `build/<name>/src-<id>/`, runs nix-build (killed after the
    /// timeout) with the gcroot `build/<name>/result-<id>`, and reads the image's agent.json. A
    /// build nix refuses is [`Error::BuildFailed`] with nix's message. One deploy id is built
    /// once at a time (the caller's transient state guards it); other deploys and agents may build
    /// alongside.
    pub fn build(
        &self,
        agent: &AgentName,
        deploy_id: i64,
        applied_repo: &Path,
        sha: &str,
    ) -> Result<Image> {
        self.build_as(
            agent,
            &format!("src-{deploy_id}"),
            &format!("result-{deploy_id}"),
            applied_repo,
            sha,
        )
    }

    /// The check build of a requested commit (approval `approval_id`), before anyone decides:
    /// the same build as a deploy's (so the deploy after approval is a cache hit), into its own
    /// `build/<name>/check-<id>/` (`src/` and the gcroot `result`), never a deploy's paths.
    pub fn build_check(
        &self,
        agent: &AgentName,
        approval_id: i64,
        applied_repo: &Path,
        sha: &str,
    ) -> Result<Image> {
        let check = format!("check-{approval_id}");
        let dir = self.agent_dir(agent)?;
        make_dir(&dir, 0o700)?;
        make_dir(&dir.join(&check), 0o700)?;
        self.build_as(
            agent,
            &format!("{check}/src"),
            &format!("{check}/result"),
            applied_repo,
            sha,
        )
    }

    /// Removes what the check build of approval `approval_id` left (its tree and gcroot).
    pub fn remove_check(&self, agent: &AgentName, approval_id: i64) -> Result<()> {
        remove_entry(&self.agent_dir(agent)?.join(format!("check-{approval_id}")))
    }

    /// The size in bytes of everything `path` needs in the store (its closure).
    pub fn closure_size(&self, path: &Path) -> Result<u64> {
        let query = |args: &[&std::ffi::OsStr]| -> Result<String> {
            let out = Command::new(&self.nix_store)
                .arg("--query")
                .args(args)
                .env_remove("NIX_PATH")
                .stdin(Stdio::null())
                .output()
                .map_err(|e| Error::io("cannot run nix-store --query", e))?;
            if !out.status.success() {
                return Err(Error::Internal(format!(
                    "nix-store --query: {}",
                    cap(String::from_utf8_lossy(&out.stderr).trim())
                )));
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let requisites = query(&["--requisites".as_ref(), path.as_os_str()])?;
        let paths: Vec<&std::ffi::OsStr> = requisites.lines().map(|l| l.trim().as_ref()).collect();
        let mut args: Vec<&std::ffi::OsStr> = vec!["--size".as_ref()];
        args.extend(paths);
        query(&args)?
            .lines()
            .map(|l| {
                l.trim()
                    .parse::<u64>()
                    .map_err(|_| Error::Internal(format!("nix-store --query --size said {l:?}")))
            })
            .sum()
    }

    /// Builds commit `sha` with its tree at `build/<name>/<src_name>` and its gcroot at
    /// `build/<name>/<root_name>`.
    fn build_as(
        &self,
        agent: &AgentName,
        src_name: &str,
        root_name: &str,
        applied_repo: &Path,
        sha: &str,
    ) -> Result<Image> {
        let agent_dir = self.agent_dir(agent)?;
        make_dir(&agent_dir, 0o700)?;
        // Restricted evaluation compares symlink-free paths: nix gets the canonical ones.
        let dir = std::fs::canonicalize(&agent_dir)
            .map_err(|e| Error::io(format!("cannot resolve {}", agent_dir.display()), e))?;
        let nix_dir = dir.join("nix");
        self.write_nix_code(&nix_dir)?;

        let src = dir.join(src_name);
        remove_entry(&src)?; // what an interrupted try of this deploy left
        crate::config_repo::export_tree(applied_repo, sha, &src).map_err(|e| match e {
            Error::UnsafePath(_) | Error::InvalidArgument { .. } => {
                Error::BuildFailed(e.to_string())
            }
            other => other,
        })?;

        let gcroot = dir.join(root_name);
        let mut cmd = Command::new(&self.nix_build);
        cmd.arg(nix_dir.join("minimal.nix"))
            .args(["--argstr", "name", agent.as_str()])
            .arg("--argstr")
            .arg("src")
            .arg(&src)
            .arg("--argstr")
            .arg("harness")
            .arg(&self.harness)
            .args(["--argstr", "defaults", self.defaults_of(agent)])
            .arg("-o")
            .arg(&gcroot)
            // Only the tree, this code and the harness are readable; no search path, no fetching,
            // nothing built while evaluating, no binary cache to wait on.
            .args(["--option", "restrict-eval", "true"])
            .args(["--option", "nix-path", ""])
            .args(["--option", "allowed-uris", ""])
            .args(["--option", "allow-import-from-derivation", "false"])
            .args([
                "--option",
                "allow-unsafe-native-code-during-evaluation",
                "false",
            ])
            .args(["--option", "substituters", ""])
            .arg("-I")
            .arg(search_entry("hyperhive", &nix_dir))
            .arg("-I")
            .arg(search_entry("hyperhive-src", &src))
            .arg("-I")
            .arg(search_entry("hyperhive-harness", &self.harness))
            .env_remove("NIX_PATH")
            .current_dir(&dir);
        let outcome = run_with_timeout(cmd, self.timeout)?;
        match outcome {
            Outcome::Done(status, _) if status.success() => {}
            Outcome::Done(_, stderr) => {
                return Err(Error::BuildFailed(nix_message(&stderr, &src, &nix_dir)));
            }
            Outcome::TimedOut => {
                return Err(Error::BuildFailed(format!(
                    "nix was stopped after {} s; the build may take at most [build] timeout_seconds of hive.toml",
                    self.timeout.as_secs_f64()
                )));
            }
        }
        let gcroot = agent_dir.join(root_name);
        read_image(&gcroot)?.ok_or_else(|| {
            Error::Internal(format!(
                "nix-build succeeded but left no image at {}",
                gcroot.display()
            ))
        })
    }

    /// The image deploy `deploy_id` built, if its gcroot is still there (a restarted daemon starts
    /// containers from what was built before).
    pub fn image(&self, agent: &AgentName, deploy_id: i64) -> Option<Image> {
        let gcroot = self
            .agent_dir(agent)
            .ok()?
            .join(format!("result-{deploy_id}"));
        match read_image(&gcroot) {
            Ok(image) => image,
            Err(e) => {
                tracing::warn!(agent = %agent, deploy_id, error = %e, "an earlier image cannot be read");
                None
            }
        }
    }

    /// Removes the gcroots and exported trees of every deploy of `agent` not in `keep`, then
    /// deletes their images from the store (only those, and only when nothing else keeps them).
    /// Returns how many deploys' gcroots went.
    pub fn collect(&self, agent: &AgentName, keep: &[i64]) -> Result<usize> {
        let dir = self.agent_dir(agent)?;
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(Error::io(format!("cannot read {}", dir.display()), e)),
        };
        let mut kept_images = HashSet::new();
        let mut dropped_images = Vec::new();
        let mut removed = 0;
        for entry in entries {
            let entry =
                entry.map_err(|e| Error::io(format!("cannot read {}", dir.display()), e))?;
            let name = entry.file_name();
            let Some((kind, id)) = name.to_str().and_then(deploy_entry) else {
                continue;
            };
            let path = entry.path();
            if kind == "result" {
                let target = std::fs::read_link(&path).ok();
                if keep.contains(&id) {
                    kept_images.extend(target);
                    continue;
                }
                dropped_images.extend(target);
                removed += 1;
            } else if keep.contains(&id) {
                continue;
            }
            remove_entry(&path)?;
        }
        for image in dropped_images {
            if kept_images.contains(&image) || !image.exists() {
                continue;
            }
            self.delete_from_store(&image)?;
        }
        Ok(removed)
    }

    /// `nix-store --delete` of one path; one still kept alive by another root is left alone.
    fn delete_from_store(&self, path: &Path) -> Result<()> {
        let out = Command::new(&self.nix_store)
            .arg("--delete")
            .arg(path)
            .env_remove("NIX_PATH")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::io("cannot run nix-store --delete", e))?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("still alive") {
            tracing::debug!(path = %path.display(), "an image another root keeps stays in the store");
            return Ok(());
        }
        Err(Error::Internal(format!(
            "nix-store --delete {}: {}",
            path.display(),
            cap(stderr.trim())
        )))
    }

    /// Writes the embedded Nix code and a copy of busybox to `dir`, each file only when it differs
    /// (written aside, then renamed over).
    fn write_nix_code(&self, dir: &Path) -> Result<()> {
        make_dir(dir, 0o755)?;
        for (name, text) in NIX_FILES {
            write_if_changed(&dir.join(name), text.as_bytes(), 0o644)?;
        }
        let busybox = std::fs::read(&self.busybox)
            .map_err(|e| Error::io(format!("cannot read {}", self.busybox.display()), e))?;
        let bb_dir = dir.join("busybox-static");
        make_dir(&bb_dir, 0o755)?;
        write_if_changed(&bb_dir.join("busybox"), &busybox, 0o755)
    }
}

/// `result-<id>` or `src-<id>` → ("result" | "src", id).
fn deploy_entry(name: &str) -> Option<(&'static str, i64)> {
    if let Some(id) = name.strip_prefix("result-") {
        return id.parse().ok().map(|id| ("result", id));
    }
    name.strip_prefix("src-")?
        .parse()
        .ok()
        .map(|id| ("src", id))
}

/// Reads the image a gcroot points at; `None` when there is no gcroot.
fn read_image(gcroot: &Path) -> Result<Option<Image>> {
    let path = match std::fs::read_link(gcroot) {
        Ok(path) => path,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("cannot read {}", gcroot.display()), e)),
    };
    let json_path = path.join("etc/hyperhive/agent.json");
    let json = match std::fs::read(&json_path) {
        Ok(json) => json,
        // The root outlived its store path (someone deleted it by hand).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("cannot read {}", json_path.display()), e)),
    };
    let config: AgentConfig = serde_json::from_slice(&json).map_err(|e| {
        Error::Internal(format!(
            "{} does not match this hive's agent configuration: {e}",
            json_path.display()
        ))
    })?;
    Ok(Some(Image {
        path,
        gcroot: gcroot.to_path_buf(),
        config,
    }))
}

/// Removes a file, symlink (not followed) or directory tree, if there.
fn remove_entry(path: &Path) -> Result<()> {
    let gone = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
    };
    gone.map_err(|e| Error::io(format!("cannot remove {}", path.display()), e))
}

fn write_if_changed(path: &Path, content: &[u8], mode: u32) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    if std::fs::read(path).is_ok_and(|old| old == content) {
        return Ok(());
    }
    let written = |e| Error::io(format!("cannot write {}", path.display()), e);
    // A fresh name beside it, so two builds at once never write into one file.
    let mut file = tempfile::NamedTempFile::new_in(path.parent().unwrap_or(Path::new(".")))
        .map_err(written)?;
    file.write_all(content).map_err(written)?;
    file.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(written)?;
    file.persist(path).map_err(|e| written(e.error))?;
    Ok(())
}

/// A `-I name=path` entry.
fn search_entry(name: &str, path: &Path) -> std::ffi::OsString {
    let mut entry = std::ffi::OsString::from(format!("{name}="));
    entry.push(path);
    entry
}

enum Outcome {
    Done(std::process::ExitStatus, Vec<u8>),
    TimedOut,
}

/// Runs `cmd` in its own process group (stdout dropped, stderr kept); after `timeout` the whole
/// group is killed (nix does not stop for SIGTERM while it evaluates).
fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Result<Outcome> {
    use std::os::unix::process::CommandExt as _;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| Error::io("cannot run nix-build", e))?;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let reader = std::thread::spawn(move || {
        let mut kept = Vec::new();
        let _ = (&mut stderr)
            .take(MAX_STDERR_BYTES as u64)
            .read_to_end(&mut kept);
        let _ = std::io::copy(&mut stderr, &mut std::io::sink());
        kept
    });
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let status = child.wait();
        let _ = done_tx.send(());
        status
    });
    let timed_out = done_rx.recv_timeout(timeout).is_err();
    if timed_out {
        let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
    }
    let status = waiter
        .join()
        .map_err(|_| Error::Internal("the nix-build waiter panicked".into()))?
        .map_err(|e| Error::io("cannot wait for nix-build", e))?;
    // A builder nix started outside the group may hold stderr open: read it only when nix ended.
    if timed_out {
        return Ok(Outcome::TimedOut);
    }
    let stderr = reader.join().unwrap_or_default();
    Ok(Outcome::Done(status, stderr))
}

/// nix's error as the agent's manager should read it: paths inside the exported tree shown
/// relative to it, the hive's Nix code as `<hyperhive>/…`, progress lines and the `--show-trace`
/// hint dropped, at most [`MAX_ERROR_BYTES`].
fn nix_message(stderr: &[u8], src: &Path, nix_dir: &Path) -> String {
    let text = String::from_utf8_lossy(stderr);
    let src = format!("{}/", src.display());
    let nix_dir = format!("{}/", nix_dir.display());
    let mut lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("use '--show-trace'"))
        .collect();
    // Everything before nix's first `error:` is progress ("these derivations will be built" …).
    if let Some(first) = lines.iter().position(|l| l.starts_with("error")) {
        lines.drain(..first);
    }
    let message = lines
        .join("\n")
        .replace(&src, "")
        .replace(&nix_dir, "<hyperhive>/");
    let message = message.trim();
    if message.is_empty() {
        "nix-build failed without a message".into()
    } else {
        cap(message)
    }
}

fn cap(text: &str) -> String {
    if text.len() <= MAX_ERROR_BYTES {
        return text.to_owned();
    }
    let mut cut = MAX_ERROR_BYTES;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}\n… (cut at {MAX_ERROR_BYTES} bytes)", &text[..cut])
}

/// The first executable file called `name` in a directory of `PATH`.
fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deploy_entries_are_result_and_src_with_an_id() {
        assert_eq!(deploy_entry("result-12"), Some(("result", 12)));
        assert_eq!(deploy_entry("src-3"), Some(("src", 3)));
        assert_eq!(deploy_entry("nix"), None);
        assert_eq!(deploy_entry("result-x"), None);
    }

    #[test]
    fn nix_messages_are_relative_trimmed_and_capped() {
        let stderr = b"these derivations will be built:\n  /nix/store/x.drv\nerror: bad at /s/build/a/src-1/agent.nix:3:1\n(use '--show-trace' to show detailed location information)\n";
        let m = nix_message(
            stderr,
            Path::new("/s/build/a/src-1"),
            Path::new("/s/build/a/nix"),
        );
        assert_eq!(m, "error: bad at agent.nix:3:1");
        let long = format!("error: {}", "é".repeat(MAX_ERROR_BYTES));
        let m = nix_message(long.as_bytes(), Path::new("/x"), Path::new("/y"));
        assert!(m.len() < MAX_ERROR_BYTES + 40, "{}", m.len());
        assert!(m.ends_with("bytes)"), "{m}");
    }
}
