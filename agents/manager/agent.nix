# The manager's configuration: a NixOS module, like every agent's. The manager sees every agent's
# proposed config repo at /agents/<name>/config and asks the operator to apply its commits.
{ ... }:
{
  hyperhive = {
    driver = "claude";
    prompt = builtins.readFile ./prompt.md;
  };
}
