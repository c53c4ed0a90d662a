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

/// Builds images for one hive.
pub struct Builder {
    _private: (),
}

impl Builder {
    /// A builder of `kind`; a missing `nix-build` is an error that says how to install it.
    pub fn new(
        _kind: crate::config::BuilderKind,
        _paths: crate::paths::StateDir,
        _harness_binary: PathBuf,
        _timeout: std::time::Duration,
    ) -> crate::Result<Self> {
        Err(crate::Error::Internal(
            "the builder is not built yet".into(),
        ))
    }

    /// Builds deploy `deploy_id` of `agent` from commit `sha` of its applied repo.
    pub fn build(
        &self,
        _agent: &crate::names::AgentName,
        _deploy_id: i64,
        _applied_repo: &std::path::Path,
        _sha: &str,
    ) -> crate::Result<Image> {
        Err(crate::Error::Internal(
            "the builder is not built yet".into(),
        ))
    }

    /// The image an earlier build of that deploy left (its gcroot), if it is still there.
    pub fn image(&self, _agent: &crate::names::AgentName, _deploy_id: i64) -> Option<Image> {
        None
    }

    /// Removes the gcroots of every deploy of `agent` but `keep`, and their store paths.
    pub fn collect(&self, _agent: &crate::names::AgentName, _keep: &[i64]) -> crate::Result<usize> {
        Ok(0)
    }
}
