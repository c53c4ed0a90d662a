# The NixOS VM test (`nix flake check` on a machine with nixpkgs): a host with
# `services.hyperhive.enable = true` boots, the unit becomes ready (Type=notify), the operator
# spawns an agent, the manager (played here through its MCP socket) asks to apply a commit, the
# operator approves it, and the agent's container runs the new deploy.
{ self }:
{
  name = "hyperhive";

  nodes.host = { ... }: {
    imports = [ self.nixosModules.default ];
    virtualisation = {
      memorySize = 2048;
      diskSize = 4096;
    };
    services.hyperhive = {
      enable = true;
      runtime = "nspawn";
      settings.runtime.stop_timeout_seconds = 5;
    };
  };

  testScript = ''
    import json

    def agents():
        return json.loads(host.succeed("hive agents --json"))

    def up(name):
        run = next((a["run"] for a in agents() if a["name"] == name), None) or {}
        return run.get("up") is True and run.get("state") == "running"

    host.wait_for_unit("hyperhive.service")
    host.succeed("systemctl show -p Type --value hyperhive.service | grep -qx notify")
    host.succeed("hive status")

    with subtest("the operator spawns an agent and its container comes up"):
        host.succeed("hive spawn bob")
        retry(lambda _: up("bob"), timeout=300)
        first_pid = next(a["run"]["pid"] for a in agents() if a["name"] == "bob")

    with subtest("the manager asks to apply a commit; the operator approves it"):
        repo = "/var/lib/hyperhive/agents/bob/config"
        host.succeed(
            f"cd {repo} && sed -i 's/allowedRecipients = \\[ \\];/allowedRecipients = [ ];\\n    resources = {{ memoryMB = 512; pids = 64; cpuWeight = 100; }};/' agent.nix"
            f" && git -c user.name=manager -c user.email=manager@hive commit -qam 'less memory'"
        )
        sha = host.succeed(f"git -C {repo} rev-parse HEAD").strip()
        calls = [
            {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "vm-test", "version": "1"}}},
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
                "name": "request_apply_commit",
                "arguments": {"agent": "bob", "commit": sha, "description": "less memory"}}},
        ]
        host.succeed("printf '%s\\n' " + " ".join("'" + json.dumps(c) + "'" for c in calls) + " > /tmp/calls")
        # stdin stays open until the answer to the call (id 2) is in.
        host.succeed(
            "{ cat /tmp/calls; until grep -q '\"id\":2' /tmp/answers 2>/dev/null; do sleep 0.2; done; }"
            " | hive-agent mcp --socket /var/lib/hyperhive/run/agents/manager/mcp.sock > /tmp/answers"
        )
        answer = next(json.loads(l) for l in host.succeed("cat /tmp/answers").splitlines() if '"id":2' in l)
        assert not answer["result"].get("isError"), answer
        queued = json.loads(answer["result"]["content"][0]["text"])
        host.succeed(f"hive approve {queued['id']}")
        host.wait_until_succeeds(f"hive show {queued['id']} --json | grep -q '\"status\": *\"deployed\"'", timeout=300)

    with subtest("the agent's container runs the approved deploy"):
        retry(lambda _: up("bob") and next(a["run"]["pid"] for a in agents() if a["name"] == "bob") != first_pid, timeout=300)
        iso = json.loads(host.succeed("hive show-agent bob --json"))["isolation"]
        assert iso["memory_max_bytes"] == 512 * 1024 * 1024, iso

    with subtest("a restart of the unit keeps the hive"):
        host.succeed("systemctl restart hyperhive.service")
        host.wait_for_unit("hyperhive.service")
        retry(lambda _: up("bob"), timeout=300)
        host.succeed("hive audit verify")
  '';
}
