# The `hive` daemon/CLI and the `hive-agent` harness, built from Cargo.lock (no network at build
# time: every crate is pinned there). The tests are not run here: they drive real nspawn, nix and
# the claude CLI as root (`scripts/test`); the flake's VM test checks the built package.
#
# `harnessOnly` builds just `hive-agent` (the flake builds it with pkgsStatic); `staticHarness`
# replaces the package's `hive-agent` with such a build. The minimal builder copies `hive-agent`
# into each agent's image without its closure, so it must be a static binary on NixOS, where the
# container has no /nix/store and no host libraries.
{ lib, rustPlatform, pkg-config, harnessOnly ? false, staticHarness ? null }:
let
  cargoToml = lib.importTOML ../Cargo.toml;
in
rustPlatform.buildRustPackage {
  pname = if harnessOnly then "hyperhive-harness" else "hyperhive";
  inherit (cargoToml.workspace.package) version;

  # Only what the build reads: a change to docs/ or scripts/ does not rebuild the package.
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../src
      ../broker
      ../dashboard
      ../harness
      ../proto
      ../testkit
      ../agents
      ../nixos-module/lib
    ];
  };
  cargoLock.lockFile = ../Cargo.lock;

  cargoBuildFlags =
    if harnessOnly then [ "-p" "hyperhive-harness" "--bin" "hive-agent" ]
    else [ "-p" "hyperhive" "-p" "hyperhive-harness" "--bin" "hive" "--bin" "hive-agent" ];
  # rusqlite's `preupdate_hook` generates its sqlite bindings with bindgen (libclang).
  nativeBuildInputs = [ pkg-config rustPlatform.bindgenHook ];
  doCheck = false;

  postInstall = lib.optionalString (staticHarness != null) ''
    install -m 0755 ${staticHarness}/bin/hive-agent $out/bin/hive-agent
  '';

  meta = {
    description = "A NixOS-native hive manager for AI agents";
    homepage = cargoToml.workspace.package.repository;
    license = lib.licenses.mit;
    mainProgram = if harnessOnly then "hive-agent" else "hive";
    platforms = lib.platforms.linux;
  };
}
