//! An API key the operator stores for an agent (`hive login NAME --api-key-file F`, the
//! dashboard's login panel): the one validation of what may be a key, and the one writer of
//! `secrets/<name>/api-key` (0600, through a temporary file and a rename, nothing on the way a
//! symlink). The watcher sees the file appear and reports `logged_in`.
//!
//! Never: store anything that failed validation, touch a path outside the state dir, or log a
//! key (a stored key is remembered by `redact`, so that every later log line masks it).
//!
//! A service ([`ApiKeys`]) built in `Hive::open` holding the state dir and the registry; `Hive`
//! delegates to it.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use crate::lifecycle::off_runtime;
use crate::names::AgentName;
use crate::paths::{self, StateDir};
use crate::registry::Registry;
use crate::{Error, Result};

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

/// The API-key service: the operator's stored keys, one per agent.
pub struct ApiKeys {
    paths: StateDir,
    registry: Arc<Registry>,
}

impl ApiKeys {
    pub(crate) fn new(paths: StateDir, registry: Arc<Registry>) -> Self {
        Self { paths, registry }
    }

    /// The operator stores an API key for `agent` (validated first; nothing is written when it
    /// is refused). The watcher then reports the agent `logged_in`.
    pub async fn store(&self, agent: &AgentName, key: &[u8]) -> Result<()> {
        self.registry.require(agent)?;
        let key = validate(key)?;
        crate::redact::remember(&key);
        let (paths, agent) = (self.paths.clone(), agent.clone());
        off_runtime(move || store(&paths, &agent, &key)).await
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_key_is_one_trimmed_line_of_printable_ascii_within_the_bound() {
        assert_eq!(
            validate(b"  sk-ant-api03-abc_DEF\n").unwrap(),
            "sk-ant-api03-abc_DEF"
        );
        assert_eq!(
            validate(&[b'k'; MAX_KEY_BYTES]).unwrap().len(),
            MAX_KEY_BYTES
        );
        for bad in [
            &b""[..],
            b" \n",
            b"two words",
            b"line\nline",
            b"nul\0inside",
            b"\xff\xfe",
            "caf\u{e9}".as_bytes(),
            &[b'k'; MAX_KEY_BYTES + 1],
        ] {
            let err = validate(bad).unwrap_err();
            assert_eq!(err.code(), "invalid_argument", "{bad:?}");
        }
    }

    #[test]
    fn a_key_is_stored_0600_and_never_through_a_symlink_out_of_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let paths = StateDir::new(dir.path().join("state"));
        paths.create().unwrap();
        let alice = AgentName::parse("alice").unwrap();
        store(&paths, &alice, "sk-1").unwrap();
        let file = paths.agent_api_key(&alice);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "sk-1\n");
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // An agent's secrets dir planted as a symlink to a directory outside: refused, the
        // outside directory untouched.
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), "keep").unwrap();
        let bob = AgentName::parse("bob").unwrap();
        std::fs::create_dir_all(paths.secrets_dir(&bob).parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&outside, paths.secrets_dir(&bob)).unwrap();
        assert!(store(&paths, &bob, "sk-2").is_err());
        let mut names: Vec<_> = std::fs::read_dir(&outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["keep"]);
    }
}
