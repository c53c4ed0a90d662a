//! Tombstones of destroyed agents, and the answers of destroy, restore and purge.

use serde::{Deserialize, Serialize};

/// One tombstone (`/api/v1/tombstones`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// `<agent>-<YYYYMMDDTHHMMSSZ>`.
    pub id: String,
    pub agent: String,
}

/// What `destroy` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destroyed {
    /// The tombstone its files went to (named even when they were purged at once).
    pub tombstone: String,
    pub purged: bool,
}

/// What `restore` brought back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restored {
    pub agent: String,
}

/// What `purge` deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purged {
    /// The tombstone.
    pub purged: String,
}
