//! The daemon lock: one `hive serve` per state dir. An exclusive `flock` on the state dir itself
//! (a file in it could be deleted, and a second daemon would lock a fresh one), held for the
//! daemon's life and released by the kernel when the process dies (also on `kill -9`), so nothing
//! stale ever blocks a restart. `hive.lock` only tells who holds it (the pid), for the message.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another hive is already running on {dir}{pid}; stop it first (or use another --state-dir)",
        pid = holder.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Held { dir: String, holder: Option<u32> },
    #[error("cannot lock {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Held while the daemon runs; dropping it releases the lock.
#[derive(Debug)]
pub struct DaemonLock {
    _lock: Flock<File>,
}

impl DaemonLock {
    /// Locks `state_dir` or says who holds it, then writes our pid into `pid_file`.
    pub fn acquire(pid_file: &Path, state_dir: &Path) -> Result<Self, LockError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| LockError::Io { path, source }
        };
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(OFlag::O_DIRECTORY.bits())
            .open(state_dir)
            .map_err(io(state_dir))?;
        let lock = match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, Errno::EWOULDBLOCK)) => {
                let text = std::fs::read_to_string(pid_file).unwrap_or_default();
                return Err(LockError::Held {
                    dir: state_dir.display().to_string(),
                    holder: text.trim().parse().ok(),
                });
            }
            Err((_, errno)) => return Err(io(state_dir)(std::io::Error::from(errno))),
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(OFlag::O_NOFOLLOW.bits())
            .mode(0o644)
            .open(pid_file)
            .map_err(io(pid_file))?;
        writeln!(file, "{}", std::process::id()).map_err(io(pid_file))?;
        Ok(Self { _lock: lock })
    }
}
