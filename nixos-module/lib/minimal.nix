# The minimal builder (DESIGN §8): an agent's image from its exported config tree with builtins
# only — no nixpkgs. The hive runs it as
#   nix-build minimal.nix --argstr name NAME --argstr src SRC_DIR --argstr harness HIVE_AGENT \
#     --argstr defaults JSON
# under restricted evaluation: only SRC_DIR, this directory and the harness binary are readable.
# JSON holds the hive's defaults for this agent by option name (e.g. {"model": "…",
# "resources": {"memoryMB": 1024}}); what agent.nix sets wins over them.
#
# agent.nix is a NixOS module; it is called with stub pkgs/lib/config and only its `hyperhive`
# attribute is read (./check.nix checks it against ./options.nix). The output is the image:
#   bin/hive-agent, bin/busybox, bin/sh -> busybox, etc/hyperhive/agent.json,
#   lib -> usr/lib, lib64 -> usr/lib64, and the empty mount points of the container.
{ name, src, harness, defaults ? "{}" }:
let
  srcDir = /. + src;
  agentFile = srcDir + "/agent.nix";
  check = import ./check.nix { srcDir = src; defaults = builtins.fromJSON defaults; };

  unavailable = what: throw
    "agent.nix used `${what}`, which the minimal builder does not have (it has no nixpkgs); only the `hyperhive` options are read";
  # lib: the few helpers a module uses on plain values; priorities do not exist here.
  lib = {
    mkDefault = v: v;
    mkForce = v: v;
    mkOverride = _: v: v;
    mkIf = cond: v: if cond then v else { };
  };
  args = {
    inherit config lib;
    pkgs = unavailable "pkgs";
    modulesPath = unavailable "modulesPath";
    options = unavailable "options";
  };
  module =
    if !builtins.pathExists agentFile
    then throw "the config has no agent.nix at its top level"
    else import agentFile;
  evaluated = if builtins.isFunction module then module args else module;
  # `hyperhive = …` at the top, or under `config` as a module may also write it.
  top = if evaluated ? config && builtins.isAttrs evaluated.config && evaluated.config ? hyperhive
    then evaluated.config else evaluated;
  raw = top.hyperhive or { };
  loc = check.where "hyperhive" top;
  resolved = check.resolve loc raw;
  config = { hyperhive = resolved; };

  # busybox runs the applet its argv[0] names, so it goes into the store as a directory holding
  # a file called `busybox` (a store path's own name would be "<hash>-…").
  busybox = builtins.path { path = ./busybox-static; name = "busybox-static"; };
  hiveAgent = builtins.path { path = /. + harness; name = "hive-agent"; };
in
derivation {
  name = "hyperhive-image-${name}";
  system = builtins.currentSystem;
  builder = "${busybox}/busybox";
  args = [ "sh" "-eu" "-c" ''
    bb=${busybox}/busybox
    $bb mkdir -p "$out/bin" "$out/etc/hyperhive" "$out/nix/store"
    for d in root var proc sys dev tmp run state usr agents; do $bb mkdir "$out/$d"; done
    $bb cp ${hiveAgent} "$out/bin/hive-agent"
    $bb cp $bb "$out/bin/busybox"
    $bb ln -s busybox "$out/bin/sh"
    $bb cp "$agentJsonPath" "$out/etc/hyperhive/agent.json"
    $bb ln -s usr/lib "$out/lib"
    $bb ln -s usr/lib64 "$out/lib64"
  '' ];
  agentJson = builtins.unsafeDiscardStringContext (builtins.toJSON resolved);
  passAsFile = [ "agentJson" ];
}
