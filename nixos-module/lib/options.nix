# The one table of the `hyperhive.*` options of an agent (DESIGN §8). Plain Nix, no nixpkgs:
# `../agent-module.nix` turns it into NixOS options, and the minimal builder (`minimal.nix`) checks
# an agent.nix against it. The names are the fields of the image's /etc/hyperhive/agent.json
# (`proto::AgentConfig`); renaming one here without there fails the build test.
#
# An option: { type; description; default (absent: the option must be set); }.
# A type: { kind = "str" | "strOrPath" | "strMatching" | "enum" | "int" | "nullOr" | "listOf"
#           | "attrsOf" | "submodule"; … } with `pattern`/`what` (strMatching), `values` (enum),
# `min`/`max` (int), `elem` (nullOr, listOf, attrsOf) and `options` (submodule).
let
  str = { kind = "str"; };
  listOf = elem: { kind = "listOf"; inherit elem; };
  attrsOf = elem: { kind = "attrsOf"; inherit elem; };
  nullOr = elem: { kind = "nullOr"; inherit elem; };
  enum = values: { kind = "enum"; inherit values; };
  int = min: max: { kind = "int"; inherit min max; };
  submodule = options: { kind = "submodule"; inherit options; };
  # An agent name (broker::names): lowercase letter first, then lowercase, digits and '-', not
  # ending in '-', at most 63 bytes.
  agentName = {
    kind = "strMatching";
    pattern = "[a-z]([a-z0-9-]{0,61}[a-z0-9])?";
    what = "an agent name (a lowercase letter, then lowercase letters, digits or '-')";
  };
  hostPort = {
    kind = "strMatching";
    # a host name or address, or an IPv6 address in brackets, then the port
    pattern = "([[][0-9a-fA-F:.]+[]]|[A-Za-z0-9.-]+):[0-9]{1,5}";
    what = "\"host:port\"";
  };
in
{
  model = {
    type = nullOr str;
    default = null;
    description = "The model name passed to the driver; null: the hive's default model.";
  };
  driver = {
    type = enum [ "claude" "openai" ];
    default = "claude";
    description = "Which model driver the harness uses.";
  };
  prompt = {
    type = { kind = "strOrPath"; };
    default = "";
    description = "The system prompt appended for this agent: a string, or a file of the agent's config repo (its text is used). The templates set it from ./prompt.md.";
  };
  network = {
    type = enum [ "none" "host" ];
    default = "none";
    description = "The container's network: \"none\" is only lo (the gateway socket is the one way out); \"host\" shares the host's network.";
  };
  allowedRecipients = {
    type = listOf agentName;
    default = [ ];
    description = "Whom the agent may message besides the manager and the operator; empty: anyone.";
  };
  allowedCommands = {
    type = listOf str;
    default = [ ];
    description = "Shell commands the model may run.";
  };
  extraMcpServers = {
    type = attrsOf (submodule {
      command = {
        type = str;
        description = "The server's command.";
      };
      args = {
        type = listOf str;
        default = [ ];
        description = "Its arguments.";
      };
      env = {
        type = attrsOf str;
        default = { };
        description = "Its environment.";
      };
      allowedTools = {
        type = listOf str;
        default = [ ];
        description = "The tools of this server the model may call; empty: all.";
      };
    });
    default = { };
    description = "More MCP servers for this agent, by name.";
  };
  egress = {
    type = listOf hostPort;
    default = [ ];
    description = "\"host:port\" pairs the gateway lets the agent reach.";
  };
  resources = {
    type = submodule {
      memoryMB = {
        type = int 16 1048576;
        default = 2048;
        description = "Memory limit of the container, in MiB.";
      };
      pids = {
        type = int 8 1048576;
        default = 512;
        description = "The most processes and threads the container may hold.";
      };
      cpuWeight = {
        type = int 1 10000;
        default = 100;
        description = "Relative CPU share, 1–10000 (100 is one agent's fair share).";
      };
    };
    default = { };
    description = "cgroup limits of the container.";
  };
  restart = {
    type = enum [ "on-failure" "always" "never" ];
    default = "on-failure";
    description = "When the watcher restarts a container that stopped.";
  };
  env = {
    type = attrsOf str;
    default = { };
    description = "Environment for the harness.";
  };
  budget = {
    type = submodule {
      tokensPerDay = {
        type = nullOr (int 1 null);
        default = null;
        description = "The most model tokens the agent may use per day; null: no limit.";
      };
    };
    default = { };
    description = "Spending limits.";
  };
}
