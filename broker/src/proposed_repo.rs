//! Reading the manager's PROPOSED repo (`agents/<name>/config/.git`) as hostile input. The manager
//! can write every byte there, so this module opens each path with `openat2` and
//! `RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH` (the kernel refuses a symlink anywhere on the way, with
//! no window between a check and the open), accepts `.git` only as a real directory (a gitfile or
//! a symlink is refused), never opens the repo with libgit2 (so its `config`, `core.worktree` and
//! upward search are never read), refuses `objects/info/alternates`, and reads refs by reading
//! the files itself.
//!
//! Objects are copied by content into a private staging dir the broker alone writes; libgit2 reads
//! them from there. This module never writes into the proposed repo.

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{SFlag, fstat};

use crate::error::{Error, Result};
use crate::names::AgentName;

/// The largest `HEAD` or loose ref file read.
const MAX_REF_FILE: u64 = 4096;
/// The largest `packed-refs` read.
const MAX_PACKED_REFS: u64 = 1024 * 1024;

/// An open `agents/<name>/config/.git` that was a real directory, reached through real
/// directories only.
pub(crate) struct ProposedGitDir {
    fd: OwnedFd,
    /// How the operator and the manager name it in messages.
    shown: String,
}

fn resolve_flags() -> ResolveFlag {
    ResolveFlag::RESOLVE_NO_SYMLINKS
        | ResolveFlag::RESOLVE_NO_MAGICLINKS
        | ResolveFlag::RESOLVE_BENEATH
}

/// `openat2` beneath `dir`, following no symlink; `Ok(None)` when the path does not exist.
fn open_beneath(dir: &OwnedFd, rel: &str, flags: OFlag) -> nix::Result<Option<OwnedFd>> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(resolve_flags());
    match openat2(dir, rel, how) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn kind_of(fd: &OwnedFd) -> nix::Result<SFlag> {
    Ok(SFlag::from_bits_truncate(fstat(fd)?.st_mode) & SFlag::S_IFMT)
}

impl ProposedGitDir {
    /// Opens `agents/<agent>/config/.git` under the state dir `root`. `Ok(None)` when there is no
    /// repo; an error when anything on the way is a symlink or `.git` is not a directory.
    pub(crate) fn open(root: &Path, agent: &AgentName) -> Result<Option<Self>> {
        let rel = format!("agents/{agent}/config/.git");
        let root_fd: OwnedFd = File::open(root)
            .map_err(|e| Error::io(format!("cannot open {}", root.display()), e))?
            .into();
        let opened = open_beneath(&root_fd, &rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY);
        match opened {
            Ok(Some(fd)) => Ok(Some(Self { fd, shown: rel })),
            Ok(None) => Ok(None),
            Err(Errno::ELOOP | Errno::EXDEV | Errno::ENOTDIR) => Err(Error::UnsafePath(format!(
                "{rel}: it must be a plain directory reached through plain directories; a symlink or a gitfile (`gitdir: ...`) is not followed. Re-create the repo with `git init` there"
            ))),
            Err(e) => Err(Error::io(format!("cannot open {rel}"), e.into())),
        }
    }

    fn refuse(&self, rel: &str, why: &str) -> Error {
        Error::UnsafePath(format!("{}/{rel}: {why}", self.shown))
    }

    fn open_at(&self, dir: &OwnedFd, rel: &str, flags: OFlag) -> Result<Option<OwnedFd>> {
        open_beneath(dir, rel, flags).map_err(|e| match e {
            Errno::ELOOP | Errno::EXDEV => {
                self.refuse(rel, "a symlink is in the way; it is not followed")
            }
            Errno::ENOTDIR => self.refuse(rel, "not a directory"),
            e => Error::io(format!("cannot open {}/{rel}", self.shown), e.into()),
        })
    }

    /// Reads a regular file under `dir` (at most `max` bytes, else `too_large()`); `None` if absent.
    fn read_file(
        &self,
        dir: &OwnedFd,
        rel: &str,
        max: u64,
        too_large: impl FnOnce() -> Error,
    ) -> Result<Option<Vec<u8>>> {
        // O_NONBLOCK: a FIFO planted here must not hang the broker.
        let Some(fd) = self.open_at(dir, rel, OFlag::O_RDONLY | OFlag::O_NONBLOCK)? else {
            return Ok(None);
        };
        let kind = kind_of(&fd).map_err(|e| Error::io("fstat", e.into()))?;
        if kind != SFlag::S_IFREG {
            return Err(self.refuse(rel, "not a regular file"));
        }
        let mut bytes = Vec::new();
        File::from(fd)
            .take(max + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(format!("cannot read {}/{rel}", self.shown), e))?;
        if bytes.len() as u64 > max {
            return Err(too_large());
        }
        Ok(Some(bytes))
    }

    /// The commit `HEAD` names, read from `HEAD`, the loose ref and `packed-refs` by hand.
    /// `None` when the branch has no commit yet.
    pub(crate) fn head(&self) -> Result<Option<git2::Oid>> {
        let mut name = "HEAD".to_owned();
        for _ in 0..5 {
            let loose = self.read_file(&self.fd, &name, MAX_REF_FILE, || {
                self.refuse(&name, "too large for a ref")
            })?;
            let text = match loose {
                Some(bytes) => String::from_utf8(bytes)
                    .map_err(|_| self.refuse(&name, "not a ref (not UTF-8)"))?,
                None => match self.packed_ref(&name)? {
                    Some(sha) => sha,
                    None => return Ok(None),
                },
            };
            let text = text.trim_end();
            if let Some(target) = text.strip_prefix("ref: ") {
                if !target.starts_with("refs/") || !git2::Reference::is_valid_name(target) {
                    return Err(self.refuse(&name, &format!("'{target}' is not a ref name")));
                }
                name = target.to_owned();
                continue;
            }
            return git2::Oid::from_str(text)
                .ok()
                .filter(|_| text.len() == 40)
                .map(Some)
                .ok_or_else(|| self.refuse(&name, "does not hold a commit id"));
        }
        Err(self.refuse("HEAD", "too many symbolic refs"))
    }

    fn packed_ref(&self, name: &str) -> Result<Option<String>> {
        let Some(bytes) = self.read_file(&self.fd, "packed-refs", MAX_PACKED_REFS, || {
            self.refuse("packed-refs", "too large")
        })?
        else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&bytes);
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with('^'))
            .filter_map(|l| l.split_once(' '))
            .find(|(_, r)| *r == name)
            .map(|(sha, _)| sha.to_owned()))
    }

    /// Copies the object store (`objects/xx/*` and `objects/pack/pack-*.{idx,pack}`) by content
    /// into `into` (a fresh directory the broker alone writes), at most `max_bytes` in all.
    /// `objects/info` is not copied, and a repo with `objects/info/alternates` is refused: libgit2
    /// would follow it wherever it points.
    pub(crate) fn copy_objects(&self, into: &Path, max_bytes: u64) -> Result<()> {
        let Some(objects) =
            self.open_at(&self.fd, "objects", OFlag::O_RDONLY | OFlag::O_DIRECTORY)?
        else {
            return Err(Error::NotFound {
                what: format!("{}/objects", self.shown),
            });
        };
        if let Some(info) = self.open_at(&objects, "info", OFlag::O_PATH)? {
            let alternates = open_beneath(&info, "alternates", OFlag::O_PATH);
            if !matches!(alternates, Ok(None)) {
                return Err(self.refuse(
                    "objects/info/alternates",
                    "a repo that borrows objects from elsewhere is not read; remove the file (and `git repack -a` if objects are missing)",
                ));
            }
        }
        let mut copied = 0u64;
        for (dir, keep) in self.list(&objects, "objects")? {
            let is_fanout = dir.len() == 2 && dir.bytes().all(|b| b.is_ascii_hexdigit());
            if !(is_fanout || dir == "pack") || keep != SFlag::S_IFDIR {
                continue;
            }
            let Some(sub) = self.open_at(&objects, &dir, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?
            else {
                continue;
            };
            let target = into.join(&dir);
            crate::paths::make_dir(&target, 0o700)?;
            for (file, kind) in self.list(&sub, &format!("objects/{dir}"))? {
                let wanted = if is_fanout {
                    file.len() == 38 && file.bytes().all(|b| b.is_ascii_hexdigit())
                } else {
                    file.starts_with("pack-") && (file.ends_with(".pack") || file.ends_with(".idx"))
                };
                if !wanted || kind != SFlag::S_IFREG {
                    continue;
                }
                let left = max_bytes.saturating_sub(copied);
                let rel = format!("{dir}/{file}");
                let bytes = self
                    .read_file(&objects, &rel, left, || {
                        Error::TooLarge(format!(
                            "{}/objects holds more than {max_bytes} bytes; run `git gc --prune=now` there, or raise approvals.max_repo_bytes in hive.toml",
                            self.shown
                        ))
                    })?
                    .unwrap_or_default();
                copied += bytes.len() as u64;
                std::fs::write(target.join(&file), &bytes)
                    .map_err(|e| Error::io(format!("cannot stage {rel}"), e))?;
            }
        }
        Ok(())
    }

    /// The names in a directory with their types (from `fstatat` without following, so a
    /// symlink is listed as one and then skipped).
    fn list(&self, dir: &OwnedFd, shown: &str) -> Result<Vec<(String, SFlag)>> {
        let dup = dir
            .try_clone()
            .map_err(|e| Error::io(format!("cannot list {shown}"), e))?;
        let mut listing = nix::dir::Dir::from_fd(dup)
            .map_err(|e| Error::io(format!("cannot list {shown}"), e.into()))?;
        let mut names = Vec::new();
        for entry in listing.iter() {
            let entry = entry.map_err(|e| Error::io(format!("cannot list {shown}"), e.into()))?;
            let Ok(name) = entry.file_name().to_str() else {
                continue;
            };
            if name == "." || name == ".." {
                continue;
            }
            let stat = nix::sys::stat::fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(|e| Error::io(format!("cannot inspect {shown}/{name}"), e.into()))?;
            let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
            names.push((name.to_owned(), kind));
        }
        Ok(names)
    }
}
