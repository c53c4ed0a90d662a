# Checks an agent's `hyperhive` attribute against the option table (./options.nix) without
# nixpkgs, and resolves it: defaults applied, every option present, the prompt read from its file.
# An unknown option or a wrong type is an evaluation error naming the option and where it was set
# (`agent.nix:LINE`, from builtins.unsafeGetAttrPos). Pure builtins; used by ./minimal.nix.
#
# `srcDir` (a string): the exported config tree; positions under it are shown relative to it.
# `defaults`: the hive's own defaults (hive.toml `[defaults]`, the manager's `[manager] model`) by
# option name, laid over the table's; what an agent.nix sets still wins.
{ srcDir, defaults ? { } }:
let
  withDefaults = opts: d: builtins.mapAttrs
    (name: o:
      if !(d ? ${name}) then o
      else if o.type.kind == "submodule"
      then o // { type = o.type // { options = withDefaults o.type.options d.${name}; }; }
      else o // { default = d.${name}; })
    opts;
  table = withDefaults (import ./options.nix) defaults;
  inherit (builtins)
    all attrNames concatStringsSep elem filter genList hasContext isAttrs isInt isList isPath
    isString length listToAttrs match stringLength substring toJSON typeOf unsafeGetAttrPos;

  prefix = srcDir + "/";
  relative = file:
    if substring 0 (stringLength prefix) file == prefix
    then substring (stringLength prefix) (stringLength file) file
    else file;
  # "agent.nix:12" for where `name` is set in `attrs`, or null.
  where = name: attrs:
    let pos = unsafeGetAttrPos name attrs;
    in if pos == null then null else "${relative pos.file}:${toString pos.line}";

  fail = loc: path: msg:
    throw "hyperhive option ${path}${if loc == null then "" else " (${loc})"}: ${msg}";

  # What a wrong value was, briefly.
  shown = v:
    if isString v then
      (if stringLength v > 40 then "a string ${toJSON (substring 0 40 v)}…" else "the string ${toJSON v}")
    else if isInt v then "the integer ${toString v}"
    else if v == null then "null"
    else if v == true then "true"
    else if v == false then "false"
    else if isAttrs v then "an attribute set"
    else if isList v then "a list"
    else "a ${typeOf v}";

  describe = t:
    if t.kind == "str" then "a string"
    else if t.kind == "strOrPath" then "a string or a path"
    else if t.kind == "strMatching" then t.what
    else if t.kind == "enum" then "one of ${concatStringsSep ", " (map toJSON t.values)}"
    else if t.kind == "int" then
      "an integer ${if t.max == null then "of at least ${toString t.min}" else "from ${toString t.min} to ${toString t.max}"}"
    else if t.kind == "nullOr" then "null or ${describe t.elem}"
    else if t.kind == "listOf" then "a list of ${describe t.elem}"
    else if t.kind == "attrsOf" then "an attribute set of ${describe t.elem}"
    else if t.kind == "submodule" then "an attribute set of ${concatStringsSep ", " (attrNames t.options)}"
    else throw "options.nix: unknown type kind ${t.kind}";

  # A string that names a store path (a derivation, a copied file) would make the image depend on
  # something agent.nix chose to build; only plain text is taken.
  plain = loc: path: v:
    if hasContext v
    then fail loc path "must be plain text; it refers to a store path or derivation"
    else v;

  # The checked, resolved value `v` of type `t` at option `path`, set at `loc`.
  resolve = t: loc: path: v:
    let
      wrong = fail loc path "expected ${describe t}, got ${shown v}";
      at = i: "${path}[${toString i}]";
      attrAt = name: "${path}.${name}";
    in
    if t.kind == "str" then (if isString v then plain loc path v else wrong)
    else if t.kind == "strOrPath" then
      (if isString v then plain loc path v
       else if isPath v then builtins.readFile v
       else wrong)
    else if t.kind == "strMatching" then
      (if isString v && match t.pattern v != null then plain loc path v else wrong)
    else if t.kind == "enum" then (if isString v && elem v t.values then v else wrong)
    else if t.kind == "int" then
      (if isInt v && v >= t.min && (t.max == null || v <= t.max) then v else wrong)
    else if t.kind == "nullOr" then (if v == null then null else resolve t.elem loc path v)
    else if t.kind == "listOf" then
      (if isList v then genList (i: resolve t.elem loc (at i) (builtins.elemAt v i)) (length v) else wrong)
    else if t.kind == "attrsOf" then
      (if isAttrs v then
        listToAttrs (map (name: {
          inherit name;
          value = resolve t.elem (orElse (where name v) loc) (attrAt name) v.${name};
        }) (attrNames v))
      else wrong)
    else if t.kind == "submodule" then (if isAttrs v then options t.options loc path v else wrong)
    else throw "options.nix: unknown type kind ${t.kind}";

  orElse = a: b: if a == null then b else a;

  # The attribute set `v` checked against `opts`: no unknown name, each option resolved or its
  # default, a missing required one named.
  options = opts: loc: path: v:
    let
      unknown = filter (name: !(opts ? ${name})) (attrNames v);
      first = builtins.head unknown;
      one = name: o:
        let sub = if path == "" then name else "${path}.${name}";
        in
        if v ? ${name} then resolve o.type (orElse (where name v) loc) sub v.${name}
        else if o ? default then resolve o.type loc sub o.default
        else fail loc sub "must be set (${o.description})";
    in
    if unknown != [ ] then
      fail (orElse (where first v) loc) (if path == "" then first else "${path}.${first}")
        "no such option; the options are: ${concatStringsSep ", " (attrNames opts)}"
    else builtins.mapAttrs one opts;
in
{
  # The resolved configuration of a module's `hyperhive` attribute set (`loc`: where it was set).
  resolve = loc: v:
    if isAttrs v then options table loc "hyperhive" v
    else fail loc "hyperhive" "expected an attribute set of options, got ${shown v}";
  inherit where;
}
