//! The operator's and the manager's whole config flow against a real `hive serve`: the manager
//! over its MCP socket (a real rmcp client), the operator with the `hive` CLI.

mod common;

use common::*;
use serde_json::{Value, json};

#[test]
fn manager_proposes_operator_approves_destroys_restores() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let _daemon = Daemon::start(state, "");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let manager = mcp_connect(&rt, state, "manager", "mcp.sock");
    let tools: Vec<String> = rt
        .block_on(manager.list_all_tools())
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    assert!(tools.contains(&"request_spawn".to_owned()));
    assert!(
        !tools
            .iter()
            .any(|t| t.contains("approve") || t.contains("destroy")),
        "{tools:?}"
    );

    // The manager drafts, edits with git, and asks.
    let draft = rt.block_on(mcp_ok(&manager, "request_spawn", json!({"name": "bob"})));
    assert_eq!(draft["repo"], "/agents/bob/config");
    let repo = state.join("agents/bob/config");
    std::fs::write(
        repo.join("agent.nix"),
        "{ ... }: { hyperhive.model = \"bob-model\"; }\n",
    )
    .unwrap();
    git(&repo, &["commit", "-qam", "bob: model"]);
    let sha = git(&repo, &["rev-parse", "HEAD"]);
    let queued = rt.block_on(mcp_ok(
        &manager,
        "request_spawn",
        json!({"name": "bob", "commit": &sha[..12]}),
    ));
    let id = queued["id"].as_i64().unwrap().to_string();

    // The operator looks, and approves.
    let listed = cli_ok(state, &["approvals", "--status", "pending"]);
    assert!(
        listed.contains("spawn") && listed.contains("bob") && listed.contains(&sha[..12]),
        "{listed}"
    );
    let shown = cli_ok(state, &["show", &id]);
    assert!(shown.contains("hyperhive.model = \"bob-model\""), "{shown}");
    // Every file of the commit is listed and shown, the prompt the template reads included.
    assert!(
        shown.contains("files:\n  added      agent.nix mode 100644"),
        "{shown}"
    );
    assert!(shown.contains("  added      prompt.md"), "{shown}");
    assert!(shown.contains("+++ b/prompt.md"), "{shown}");
    let out = cli(state, &["deny", &id]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--note"),
        "{}",
        text(&out.stderr)
    );
    assert!(cli_ok(state, &["approve", &id]).contains(&format!("approved #{id}")));
    assert!(cli_ok(state, &["agents"]).contains("bob"));
    let out = cli(state, &["approve", &id]);
    assert!(
        text(&out.stderr).contains("approved already"),
        "{}",
        text(&out.stderr)
    );
    let told = rt.block_on(mcp_ok(&manager, "recv", json!({"wait_seconds": 5})));
    let event: Value = serde_json::from_str(told[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(event["event"], "approval_resolved");
    assert_eq!(event["status"], "approved");
    let history = cli_ok(state, &["history", "bob"]);
    assert!(
        history.contains("spawn") && history.contains(&sha[..12]),
        "{history}"
    );

    // Destroy keeps a tombstone; restore brings bob back.
    let destroyed = cli_ok(state, &["destroy", "bob"]);
    assert!(destroyed.contains("tombstone bob-"), "{destroyed}");
    assert!(!cli_ok(state, &["agents"]).contains("bob"));
    let tombstones: Value =
        serde_json::from_str(&cli_ok(state, &["tombstones", "--json"])).unwrap();
    let tomb = tombstones[0]["id"].as_str().unwrap().to_owned();
    for bad in ["..", "x/../../etc", "bob"] {
        assert!(!cli(state, &["restore", bad]).status.success());
    }
    // Whatever is typed stays one path segment: this must not reach the restore endpoint.
    let out = cli(state, &["purge", &format!("{tomb}/restore?")]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("is not a tombstone id"),
        "{}",
        text(&out.stderr)
    );
    assert!(!cli_ok(state, &["agents"]).contains("bob"));
    assert!(cli_ok(state, &["restore", &tomb]).contains("restored bob"));
    assert!(cli_ok(state, &["agents"]).contains("bob"));
    assert!(cli_ok(state, &["tombstones"]).contains("no tombstones"));

    // The audit chain holds, and names the row an edit breaks.
    let verified = cli_ok(state, &["audit", "verify"]);
    assert!(verified.contains("audit chain intact"), "{verified}");
    assert!(cli_ok(state, &["audit", "--agent", "bob"]).contains("restore"));
    open_db(state)
        .execute("UPDATE audit SET detail = '{}' WHERE id = 2", [])
        .unwrap();
    let out = cli(state, &["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("broken at row 2"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn operator_spawn_from_a_file_and_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let _daemon = Daemon::start(state, "");
    let file = state.join("carol.nix");
    std::fs::write(&file, "{ ... }: { hyperhive.model = \"c1\"; }\n").unwrap();
    assert!(
        cli_ok(state, &["spawn", "carol", "--from", file.to_str().unwrap()])
            .contains("spawned carol")
    );
    let repo = state.join("agents/carol/config");
    assert!(
        std::fs::read_to_string(repo.join("agent.nix"))
            .unwrap()
            .contains("c1")
    );
    let out = cli(state, &["spawn", "carol"]);
    assert!(text(&out.stderr).contains("exists already"));
    let out = cli(state, &["spawn", "../etc"]);
    assert!(text(&out.stderr).contains("invalid agent name"));
    let out = cli(state, &["spawn", "dave", "--from", "/nonexistent/file.nix"]);
    assert!(text(&out.stderr).contains("cannot read /nonexistent/file.nix"));

    let history: Value =
        serde_json::from_str(&cli_ok(state, &["history", "carol", "--json"])).unwrap();
    let first = history[0]["id"].as_i64().unwrap().to_string();
    let out = cli_ok(state, &["rollback", "carol", &first]);
    assert!(out.contains("carol is back at"), "{out}");
    let out = cli(state, &["rollback", "carol", "999"]);
    assert!(
        text(&out.stderr).contains("deploy 999 of 'carol'"),
        "{}",
        text(&out.stderr)
    );
    let history: Value =
        serde_json::from_str(&cli_ok(state, &["history", "carol", "--json"])).unwrap();
    assert_eq!(history.as_array().unwrap().len(), 2);
    assert_eq!(history[1]["kind"], "rollback");
}
