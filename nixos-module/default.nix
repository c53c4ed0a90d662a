# The host module (DESIGN §15): `services.hyperhive` runs `hive serve` as a systemd service.
# It owns the unit, its hive.toml (written from the typed options and `settings`, checked with
# `hive check-config` while the system is built, so a bad key fails `nixos-rebuild` and not the
# boot) and the firewall opening for the dashboard. It never writes the state dir: the daemon
# creates and owns everything in it.
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkEnableOption mkIf mkOption types literalExpression;
  cfg = config.services.hyperhive;
  tomlFormat = pkgs.formats.toml { };

  hiveToml = import ./hive-toml.nix {
    inherit (cfg) dashboard runtime autoUpdate settings manager agentDefaults;
  };
  unchecked = tomlFormat.generate "hive.toml" hiveToml;
  # The daemon reads exactly this file (`--config`); it exists only if `hive check-config` accepts it.
  configFile = pkgs.runCommand "hive.toml"
    { nativeBuildInputs = [ cfg.package ]; }
    ''
      hive --state-dir "$TMPDIR/state" check-config ${unchecked}
      cp ${unchecked} $out
    '';

  # Only the static busybox binary (the images need it), without its applet links, which would
  # shadow coreutils & co. on the daemon's PATH.
  busyboxOnly = pkgs.runCommand "busybox-static" { } ''
    install -D -m 0755 ${pkgs.pkgsStatic.busybox}/bin/busybox $out/bin/busybox
  '';

  effectivePort = hiveToml.dashboard.port;
  dashboardOn = hiveToml.dashboard.enabled or true;

  # The ranges of the agent option table (./lib/options.nix), which `hive check-config` checks too.
  resourceOption = min: max: description: mkOption {
    type = types.nullOr (types.ints.between min max);
    default = null;
    inherit description;
  };
in
{
  options.services.hyperhive = {
    enable = mkEnableOption "hyperhive, a hive of AI agents run by one daemon (`hive serve`)";

    package = mkOption {
      type = types.package;
      default = pkgs.hyperhive or (throw
        "services.hyperhive.package: pkgs has no hyperhive; use the flake's nixosModules.default or overlays.default, or set the option");
      defaultText = literalExpression "pkgs.hyperhive (the flake's nixosModules.default sets its own package)";
      description = "The hyperhive package: `hive` (the daemon and CLI) and `hive-agent` (the harness put in agents' images).";
    };

    stateDir = mkOption {
      type = types.strMatching "/var/lib/[^/].*";
      default = "/var/lib/hyperhive";
      description = ''
        The state dir (DESIGN §3): the sqlite store, the config repos, the agents' state and
        credentials. It must be under /var/lib: the unit creates it with `StateDirectory=` (mode 0700,
        owned by root). The CLI finds it through `HIVE_STATE_DIR`, set for every login shell.
      '';
    };

    dashboard = {
      address = mkOption {
        type = types.str;
        default = "127.0.0.1";
        example = "0.0.0.0";
        description = "The address the operator's web dashboard listens on (`[dashboard] address`; an IP address). The default is this host only.";
      };
      port = mkOption {
        type = types.port;
        default = 7000;
        description = "The dashboard's TCP port (`[dashboard] port`).";
      };
      openFirewall = mkOption {
        type = types.bool;
        default = false;
        description = "Open the dashboard's port in the firewall. Pair it with an `address` other than 127.0.0.1, and put TLS in front (the dashboard speaks plain HTTP).";
      };
    };

    manager.model = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "claude-opus-4-1";
      description = ''
        The manager's model when its agent.nix sets no `hyperhive.model` (`[manager] model`; over
        `settings.defaults.model`, the other agents' default). Applied when an image is built: a
        change makes the manager out of date (`needs_update`), it is not restarted by itself.
      '';
    };

    agentDefaults.resources = {
      memoryMB = resourceOption 16 1048576 "Every agent's memory limit (MiB) when its agent.nix sets no `hyperhive.resources.memoryMB` (`[defaults.resources] memory_mb`; otherwise 2048). Applied at the next build of each agent.";
      pids = resourceOption 8 1048576 "Every agent's process limit when its agent.nix sets no `hyperhive.resources.pids` (`[defaults.resources] pids`; otherwise 512). Applied at the next build of each agent.";
      cpuWeight = resourceOption 1 10000 "Every agent's CPU weight when its agent.nix sets no `hyperhive.resources.cpuWeight` (`[defaults.resources] cpu_weight`; otherwise 100). Applied at the next build of each agent.";
    };

    runtime = mkOption {
      type = types.enum [ "nspawn" "process" "none" ];
      default = "nspawn";
      description = "How agents run (`[runtime] kind`): `nspawn` (a systemd-nspawn container each, in its own user-namespace range), `process` (plain children, no isolation; development only) or `none` (mail, approvals and config only).";
    };

    autoUpdate = mkOption {
      type = types.bool;
      default = false;
      description = "Rebuild an agent whose running deploy is not its applied config by itself (`[watcher] auto_update`). Off: the manager is told (`needs_update`) and calls `update`.";
    };

    settings = mkOption {
      type = tomlFormat.type;
      default = { };
      example = literalExpression (builtins.readFile ./settings-example.nix);
      description = ''
        More of hive.toml, as Nix values (README, "Configuration", lists every key). It is laid over
        what the options above set; a key set in both is taken from here. Unknown keys and bad values
        fail the system build with the key and the reason (`hive check-config`). Secrets do not belong
        here (the file is in the world-readable store): give `model.api_key_file` a path such as
        /run/keys/anthropic (mode 0600).
      '';
    };
  };

  config = mkIf cfg.enable {
    environment.systemPackages = [ cfg.package ];
    # `hive status` and friends find the daemon's admin socket (root only).
    environment.variables.HIVE_STATE_DIR = cfg.stateDir;

    networking.firewall.allowedTCPPorts = lib.optional (cfg.dashboard.openFirewall && dashboardOn) effectivePort;

    systemd.services.hyperhive = {
      description = "hyperhive: a hive of AI agents (hive serve)";
      documentation = [ "https://github.com/hyperhive/hyperhive/blob/main/docs/operator.md" ];
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      restartTriggers = [ configFile ];

      # What the daemon runs: nix-build for agents' images, systemd-nspawn for their containers,
      # a static busybox that goes into each image, git for the config repos.
      path = [
        config.nix.package
        config.systemd.package
        busyboxOnly
        pkgs.git
      ];
      environment = {
        HIVE_STATE_DIR = cfg.stateDir;
        # The host's nixpkgs, for the nixos builder (`[build] builder = "nixos"`); the minimal
        # builder clears NIX_PATH and reads nothing but the agent's tree.
        NIX_PATH = "nixpkgs=${pkgs.path}";
      };

      serviceConfig = {
        Type = "notify";
        NotifyAccess = "main";
        ExecStart = "${cfg.package}/bin/hive serve --state-dir ${cfg.stateDir} --config ${configFile}";
        Restart = "on-failure";
        RestartSec = 5;
        # `hive serve` pings at half of this; a hung daemon is restarted.
        WatchdogSec = 30;
        # Agents stop (SIGTERM, then their cgroup is killed after [runtime] stop_timeout_seconds)
        # before the daemon exits.
        TimeoutStopSec = 120;
        KillMode = "mixed";
        StateDirectory = lib.removePrefix "/var/lib/" cfg.stateDir;
        StateDirectoryMode = "0700";
        RuntimeDirectory = "hyperhive";
        RuntimeDirectoryMode = "0700";
        UMask = "0077";
        LimitNOFILE = 1048576;

        # Hardening that still lets it run systemd-nspawn as root: it needs its capabilities, user
        # and mount namespaces, /sys/fs/cgroup writable (it makes a cgroup per agent) and
        # /proc/sys as it is. The rest of the system is read-only or hidden.
        ProtectSystem = "full";
        ProtectHome = true;
        PrivateTmp = true;
        ProtectClock = true;
        ProtectKernelLogs = true;
        ProtectKernelModules = true;
        RestrictRealtime = true;
        LockPersonality = true;
        SystemCallArchitectures = "native";
        RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" "AF_NETLINK" ];
      };
    };
  };
}
