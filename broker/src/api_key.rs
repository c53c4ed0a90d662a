//! An API key the operator stores for an agent (`hive login NAME --api-key-file F`, the
//! dashboard's login panel): the one validation of what may be a key, and the one writer of
//! `secrets/<name>/api-key` (0600, through a temporary file and a rename, nothing on the way a
//! symlink). The watcher sees the file appear and reports `logged_in`.
//!
//! Never: store anything that failed validation, touch a path outside the state dir, or log a
//! key.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use crate::lifecycle::off_runtime;
use crate::names::AgentName;
use crate::paths::{self, StateDir};
use crate::{Error, Hive, Result};

/// The largest API key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 4096;

/// The key in `bytes`: one line of printable ASCII without spaces (surrounding whitespace
/// trimmed), at most [`MAX_KEY_BYTES`].
pub fn validate(bytes: &[u8]) -> Result<String> {
    if bytes.len() > MAX_KEY_BYTES {
        return Err(Error::invalid(
            "api_key",
            format!("longer than {MAX_KEY_BYTES} bytes; is it an API key?"),
        ));
    }
    std::str::from_utf8(bytes)
        .ok()
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .ok_or_else(|| {
            Error::invalid(
                "api_key",
                "not an API key (one line of printable characters without spaces)",
            )
        })
}

/// Writes `key` (already validated) to `secrets/<agent>/api-key` (0600) through a temporary
/// file and a rename, so a reader never sees half a key.
pub fn store(paths: &StateDir, agent: &AgentName, key: &str) -> Result<()> {
    let secrets = paths::checked_within(paths.root(), &paths.secrets_dir(agent))?;
    paths::make_dir(&secrets, 0o700)?;
    let target = secrets.join("api-key");
    let temp = secrets.join(".api-key.tmp");
    let _ = std::fs::remove_file(&temp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(&temp)
        .map_err(|e| Error::io(format!("cannot create {}", temp.display()), e))?;
    file.write_all(format!("{key}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io(format!("cannot write {}", temp.display()), e))?;
    std::fs::rename(&temp, &target)
        .map_err(|e| Error::io(format!("cannot write {}", target.display()), e))?;
    Ok(())
}

impl Hive {
    /// The operator stores an API key for `agent` (validated first; nothing is written when it
    /// is refused). The watcher then reports the agent `logged_in`.
    pub async fn store_api_key(&self, agent: &AgentName, key: &[u8]) -> Result<()> {
        self.registry.require(agent)?;
        let key = validate(key)?;
        let (paths, agent) = (self.paths.clone(), agent.clone());
        off_runtime(move || store(&paths, &agent, &key)).await
    }
}
