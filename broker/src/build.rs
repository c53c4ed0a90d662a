//! Turning an applied `agent.nix` into an image (DESIGN §8): the **minimal** builder (a
//! builtins-only derivation, any Linux with `nix`) and the **nixos** builder (a NixOS container
//! system; needs nixpkgs). Both give a store path kept alive by a gcroot per deploy under
//! `build/<name>/`.
//!
//! The source is the applied tree, written out by the broker from the applied repo; evaluation is
//! restricted to it and the hive's own Nix code, so an `agent.nix` cannot read a host file.
//! Blocking: callers run it off the async workers.

use std::path::PathBuf;

use proto::AgentConfig;

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
