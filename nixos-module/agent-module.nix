# The agent module (DESIGN §8): declares the `hyperhive.*` options an agent.nix sets, for the
# nixos builder (a NixOS container system; needs nixpkgs). The options come from the one table in
# ./lib/options.nix, which the minimal builder checks against too. The resolved values go to
# /etc/hyperhive/agent.json, the only thing the harness reads.
{ config, lib, ... }:
let
  inherit (lib) types mkOption;
  table = import ./lib/options.nix;

  typeOf = t:
    if t.kind == "str" then types.str
    else if t.kind == "strOrPath" then types.either types.str types.path
    else if t.kind == "strMatching" then types.strMatching t.pattern
    else if t.kind == "enum" then types.enum t.values
    else if t.kind == "int" then
      (if t.max == null then types.addCheck types.int (v: v >= t.min) else types.ints.between t.min t.max)
    else if t.kind == "nullOr" then types.nullOr (typeOf t.elem)
    else if t.kind == "listOf" then types.listOf (typeOf t.elem)
    else if t.kind == "attrsOf" then types.attrsOf (typeOf t.elem)
    else if t.kind == "submodule" then types.submodule { options = optionsOf t.options; }
    else throw "options.nix: unknown type kind ${t.kind}";

  optionOf = o: mkOption ({
    type = typeOf o.type;
    inherit (o) description;
  } // lib.optionalAttrs (o ? default) { inherit (o) default; });

  optionsOf = lib.mapAttrs (_: optionOf);

  cfg = config.hyperhive;
  # What agent.json holds: every option, the prompt as text.
  resolved = cfg // {
    prompt = if builtins.isPath cfg.prompt then builtins.readFile cfg.prompt else cfg.prompt;
  };
in
{
  options.hyperhive = optionsOf table;

  config.environment.etc."hyperhive/agent.json".text = builtins.toJSON resolved;
}
