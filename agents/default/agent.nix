# This agent's configuration: a NixOS module. The hive reads its `hyperhive` options (the
# hyperhive.* options of the agent module: model, driver, prompt, allowedRecipients, resources, …).
# The manager edits this repo and commits; nothing runs until the operator approves the commit.
{ ... }:
{
  hyperhive = {
    driver = "claude";
    # model = "claude-sonnet-4-5";   # unset: the hive's default model
    prompt = builtins.readFile ./prompt.md;
    # Whom this agent may message besides the manager and the operator; empty = anyone.
    allowedRecipients = [ ];
    # restart = "on-failure";
    # resources = { memoryMB = 2048; pids = 512; cpuWeight = 100; };
  };
}
