# services.hyperhive's typed options → the hive.toml they stand for, with `settings` laid over
# them (a key set in both is taken from `settings`). Plain Nix, no nixpkgs: CI evaluates it and
# checks the result with `hive check-config` on machines that cannot fetch nixpkgs.
{ dashboard, runtime, autoUpdate, settings, manager ? { model = null; }
, agentDefaults ? { resources = { }; } }:
let
  setOnly = a: builtins.removeAttrs a (builtins.filter (n: a.${n} == null) (builtins.attrNames a));
  resources = setOnly {
    memory_mb = agentDefaults.resources.memoryMB or null;
    pids = agentDefaults.resources.pids or null;
    cpu_weight = agentDefaults.resources.cpuWeight or null;
  };
  fromOptions = {
    dashboard = { inherit (dashboard) address port; };
    runtime.kind = runtime;
    watcher.auto_update = autoUpdate;
  }
  // (if manager.model or null != null then { manager.model = manager.model; } else { })
  // (if resources != { } then { defaults.resources = resources; } else { });
  # Tables merge key by key; anything else in `over` replaces what `under` had.
  merge = under: over: under // builtins.mapAttrs
    (key: value:
      if builtins.isAttrs value && builtins.isAttrs (under.${key} or null)
      then merge under.${key} value
      else value)
    over;
in
merge fromOptions settings
