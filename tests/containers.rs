//! Agents in containers, end to end through the real daemon: real nix builds, real
//! systemd-nspawn, the real `hive-agent serve` payload. What is checked is read from the kernel
//! (the payload's uid_map, its network links, its cgroup) and from the store — never assumed from
//! the config. Runs as root (nspawn needs it); without nix or nspawn these tests fail unless a
//! person set HYPERHIVE_ALLOW_SKIP=1.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use testkit::tools;

/// How long a build plus a start may take on a slow CI machine.
const DEPLOY_LIMIT: Duration = Duration::from_secs(120);

/// The real parts, or `None` (skip) when a person allowed it.
fn real_parts() -> Option<()> {
    tools::require("nix-build", tools::nix_build())?;
    tools::require("systemd-nspawn", tools::systemd_nspawn())?;
    tools::require("busybox", tools::busybox())?;
    tools::require("hive-agent", hive_agent_beside_hive())?;
    Some(())
}

/// The daemon finds `hive-agent` beside `hive`.
fn hive_agent_beside_hive() -> Option<std::path::PathBuf> {
    let beside = Path::new(HIVE).with_file_name("hive-agent");
    beside.is_file().then_some(beside)
}

fn start_nspawn_hive(state: &Path) -> Daemon {
    Daemon::start(
        state,
        "[runtime]\nkind = \"nspawn\"\nstop_timeout_seconds = 5\n",
    )
}

fn agents(state: &Path) -> Vec<Value> {
    serde_json::from_str(&cli_ok(state, &["agents", "--json"])).unwrap()
}

fn run_of(state: &Path, agent: &str) -> Value {
    agents(state)
        .into_iter()
        .find(|a| a["name"] == agent)
        .map(|a| a["run"].clone())
        .unwrap_or(Value::Null)
}

/// Waits until `agent` runs with its harness connected; returns its run.
fn wait_up(state: &Path, agent: &str) -> Value {
    let mut last = Value::Null;
    let up = eventually(DEPLOY_LIMIT, || {
        last = run_of(state, agent);
        last["up"] == true && last["state"] == "running"
    });
    assert!(
        up,
        "{agent} did not come up: {last}\nlog:\n{}",
        text(&cli(state, &["logs", agent]).stdout)
    );
    last
}

fn show_agent(state: &Path, agent: &str) -> Value {
    serde_json::from_str(&cli_ok(state, &["show-agent", agent, "--json"])).unwrap()
}

/// The payload processes (`hive-agent serve`) in the same cgroup as `pid`.
fn payloads_beside(pid: u32) -> usize {
    let cgroup_of = |pid: &str| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok();
    let Some(mine) = cgroup_of(&pid.to_string()) else {
        return 0;
    };
    let pids_line = |c: &str| {
        c.lines()
            .find(|l| l.contains(":pids:") || l.starts_with("0::"))
            .map(str::to_owned)
    };
    let mine = pids_line(&mine);
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|p| p.chars().all(|c| c.is_ascii_digit()))
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| {
                    let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                    args.len() >= 2 && args[0].ends_with(b"hive-agent") && args[1] == b"serve"
                })
                .unwrap_or(false)
        })
        .filter(|p| cgroup_of(p).and_then(|c| pids_line(&c)) == mine)
        .count()
}

#[test]
fn a_spawned_agent_builds_starts_and_is_isolated_as_the_kernel_says() {
    if real_parts().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("hive");
    let _daemon = start_nspawn_hive(&state);
    // The manager comes up by itself at the first start.
    wait_up(&state, "manager");
    cli_ok(&state, &["spawn", "alice"]);
    let run = wait_up(&state, "alice");
    assert!(run["deploy"].is_number(), "{run}");

    let shown = show_agent(&state, "alice");
    let iso = &shown["isolation"];
    assert_eq!(iso["isolated"], true, "{shown}");
    let uid_map = iso["uid_map"].as_str().unwrap();
    let fields: Vec<u64> = uid_map
        .split_whitespace()
        .map(|f| f.parse().unwrap())
        .collect();
    assert_eq!(fields[0], 0, "{uid_map}");
    assert_ne!(
        fields[1], 0,
        "the payload's root is not the host's: {uid_map}"
    );
    assert_eq!(fields[2], 65536, "{uid_map}");
    assert_eq!(iso["net_links"], json!(["lo"]), "{shown}");
    assert_eq!(iso["read_only_root"], true, "{shown}");
    assert_eq!(
        iso["memory_max_bytes"].as_u64(),
        Some(2048 * 1024 * 1024),
        "the default resources.memoryMB is in force: {shown}"
    );
    assert_eq!(iso["pids_max"].as_u64(), Some(512), "{shown}");
    // Manager and alice get different ranges.
    let manager_map = show_agent(&state, "manager")["isolation"]["uid_map"].clone();
    assert_ne!(manager_map.as_str(), Some(uid_map));

    // The deploy is tagged and audited.
    let history: Value =
        serde_json::from_str(&cli_ok(&state, &["history", "alice", "--json"])).unwrap();
    let last = history.as_array().unwrap().last().unwrap();
    assert_eq!(last["status"], "deployed", "{history}");
    let tags = git(&state.join("applied/alice"), &["tag", "--list"]);
    assert!(
        tags.lines()
            .any(|t| t == format!("deployed/{}", last["id"])),
        "{tags}"
    );
    let audit = cli_ok(&state, &["audit", "--json"]);
    assert!(audit.contains("\"deployed\""), "{audit}");
}

#[test]
fn kill_9_of_the_daemon_then_a_restart_leaves_one_container_per_agent() {
    if real_parts().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("hive");
    let mut daemon = start_nspawn_hive(&state);
    wait_up(&state, "manager");
    for name in ["alice", "bob"] {
        cli_ok(&state, &["spawn", name]);
    }
    for name in ["alice", "bob"] {
        wait_up(&state, name);
    }
    daemon.kill9();
    drop(daemon);
    let _daemon = start_nspawn_hive(&state);
    for name in ["manager", "alice", "bob"] {
        let run = wait_up(&state, name);
        let pid = run["pid"].as_u64().unwrap() as u32;
        assert_eq!(
            payloads_beside(pid),
            1,
            "{name}: exactly one payload in its cgroup after the restart"
        );
    }
}

#[test]
fn a_broken_agent_nix_fails_with_nix_s_message_and_the_old_container_keeps_running() {
    if real_parts().is_none() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("hive");
    let _daemon = start_nspawn_hive(&state);
    wait_up(&state, "manager");
    cli_ok(&state, &["spawn", "alice"]);
    let before = wait_up(&state, "alice");
    let manager = mcp_connect(&rt, &state, "manager", "mcp.sock");
    let repo = state.join("agents/alice/config");

    // A wrong type: the build fails naming the option; alice runs on.
    let nix = std::fs::read_to_string(repo.join("agent.nix")).unwrap();
    let broken = nix.replace(
        "allowedRecipients = [ ];",
        "allowedRecipients = [ ];\n    resources = { memoryMB = \"lots\"; };",
    );
    assert_ne!(broken, nix, "the template changed: adjust this test");
    std::fs::write(repo.join("agent.nix"), broken).unwrap();
    git(&repo, &["commit", "-qam", "more memory, wrongly"]);
    let sha = git(&repo, &["rev-parse", "HEAD"]);
    let queued = rt.block_on(mcp_ok(
        &manager,
        "request_apply_commit",
        json!({"agent": "alice", "commit": sha, "description": "more memory"}),
    ));
    let id = queued["id"].as_i64().unwrap().to_string();
    // Its check build failed already: approving it anyway needs the override.
    cli_ok(&state, &["approve", &id, "--override-failed-build"]);
    let mut shown = Value::Null;
    assert!(
        eventually(DEPLOY_LIMIT, || {
            shown = serde_json::from_str(&cli_ok(&state, &["show", &id, "--json"])).unwrap();
            shown["status"] == "failed"
        }),
        "{shown}"
    );
    let message = shown["deploy"]["message"].as_str().unwrap_or("");
    assert!(message.contains("memoryMB"), "{message}");
    let human = cli_ok(&state, &["show", &id]);
    assert!(human.contains("memoryMB"), "{human}");
    let after = run_of(&state, "alice");
    assert_eq!(after["pid"], before["pid"], "the old container still runs");
    assert_eq!(after["up"], true);

    // A good change rebuilds and restarts on the new limits.
    std::fs::write(
        repo.join("agent.nix"),
        nix.replace(
            "allowedRecipients = [ ];",
            "allowedRecipients = [ ];\n    resources = { memoryMB = 512; pids = 64; cpuWeight = 100; };",
        ),
    )
    .unwrap();
    git(&repo, &["commit", "-qam", "less memory"]);
    let sha = git(&repo, &["rev-parse", "HEAD"]);
    let queued = rt.block_on(mcp_ok(
        &manager,
        "request_apply_commit",
        json!({"agent": "alice", "commit": sha, "description": "less memory"}),
    ));
    let id = queued["id"].as_i64().unwrap().to_string();
    cli_ok(&state, &["approve", &id]);
    assert!(eventually(DEPLOY_LIMIT, || {
        shown = serde_json::from_str(&cli_ok(&state, &["show", &id, "--json"])).unwrap();
        shown["status"] == "deployed"
    }));
    let run = wait_up(&state, "alice");
    assert_ne!(run["pid"], before["pid"], "restarted on the new build");
    let iso = &show_agent(&state, "alice")["isolation"];
    assert_eq!(iso["memory_max_bytes"].as_u64(), Some(512 * 1024 * 1024));
    assert_eq!(iso["pids_max"].as_u64(), Some(64));
}

#[test]
fn update_builds_only_when_the_applied_head_is_not_what_runs_and_bad_input_changes_nothing() {
    if real_parts().is_none() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("hive");
    let _daemon = start_nspawn_hive(&state);
    wait_up(&state, "manager");
    cli_ok(&state, &["spawn", "alice"]);
    wait_up(&state, "alice");
    let deploys = |state: &Path| -> usize {
        let h: Value =
            serde_json::from_str(&cli_ok(state, &["history", "alice", "--json"])).unwrap();
        h.as_array().unwrap().len()
    };
    let before = deploys(&state);
    let first = cli_ok(&state, &["update", "alice"]);
    assert!(first.contains("already up to date"), "{first}");
    let second = cli_ok(&state, &["update", "alice"]);
    assert!(second.contains("already up to date"), "{second}");
    assert_eq!(deploys(&state), before, "nothing was built");

    // `logs --follow` shows the lines the container writes as it writes them: a restart's
    // harness says it connected again.
    let mut follower = std::process::Command::new(HIVE)
        .arg("--state-dir")
        .arg(&state)
        .args(["logs", "alice", "--follow"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines_rx = lines_of(follower.stdout.take().unwrap());
    let connected = |rx: &std::sync::mpsc::Receiver<String>| loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("a log line");
        if line.contains("hive-agent: connected") {
            return line;
        }
    };
    connected(&lines_rx);
    let restarted = cli_ok(&state, &["restart", "alice"]);
    assert!(restarted.contains("restarted"), "{restarted}");
    connected(&lines_rx);
    let _ = follower.kill();
    let _ = follower.wait();

    // Stopped, it starts again on its last build.
    let stopped = cli_ok(&state, &["stop", "alice"]);
    assert!(stopped.contains("stopped"), "{stopped}");
    assert_eq!(run_of(&state, "alice")["state"], "stopped");
    cli_ok(&state, &["start", "alice"]);
    wait_up(&state, "alice");

    // Bad input: a clear error, nothing changed.
    let snapshot = db_snapshot(&state);
    let unknown = cli(&state, &["start", "nobody"]);
    assert!(!unknown.status.success());
    assert!(text(&unknown.stderr).contains("nobody"), "{unknown:?}");
    let invalid = cli(&state, &["start", "../etc"]);
    assert!(!invalid.status.success());
    assert_eq!(db_snapshot(&state), snapshot);

    let manager = mcp_connect(&rt, &state, "manager", "mcp.sock");
    for tool in ["kill", "restart", "start"] {
        let (failed, text) = rt.block_on(mcp_try(&manager, tool, json!({"agent": "manager"})));
        assert!(failed, "{tool} of itself: {text}");
        assert!(text.contains("yourself"), "{text}");
    }
    assert_eq!(db_snapshot(&state), snapshot);
    assert_eq!(run_of(&state, "manager")["up"], true);

    // 10^9 lines are capped, not an error.
    let (failed, log) = rt.block_on(mcp_try(
        &manager,
        "logs",
        json!({"agent": "alice", "lines": 1_000_000_000u64}),
    ));
    assert!(!failed, "{log}");

    // A destroyed agent's container is stopped first.
    let pid = run_of(&state, "alice")["pid"].as_u64().unwrap();
    cli_ok(&state, &["destroy", "alice"]);
    assert!(
        eventually(Duration::from_secs(20), || !Path::new(&format!(
            "/proc/{pid}"
        ))
        .exists()),
        "alice's container was stopped"
    );
    let gone = cli(&state, &["start", "alice"]);
    assert!(!gone.status.success());

    // Restored, it is started again, in a new container.
    let tombstones: Value =
        serde_json::from_str(&cli_ok(&state, &["tombstones", "--json"])).unwrap();
    let tomb = tombstones[0]["id"].as_str().unwrap().to_owned();
    cli_ok(&state, &["restore", &tomb]);
    let back = wait_up(&state, "alice");
    assert_ne!(back["pid"].as_u64(), Some(pid), "{back}");
}
