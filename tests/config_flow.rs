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

/// Reads an API answer as wire type `T` and writes it back: the same JSON must come out, so no
/// field is missing from `T` (it would be dropped), none is of another type, and none is absent
/// that `T` needs.
fn reads_back_exactly<T: serde::de::DeserializeOwned + serde::Serialize>(
    what: &str,
    answer: &Value,
) -> T {
    let typed: T = serde_json::from_value(answer.clone())
        .unwrap_or_else(|e| panic!("{what} does not read as its wire type: {e}\n{answer:#}"));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(
        &back, answer,
        "{what}: the wire type does not hold every field the API serves"
    );
    typed
}

/// An admin API request that must succeed (a GET with 200, a POST with any 2xx); its JSON answer.
fn api_ok(
    rt: &tokio::runtime::Runtime,
    state: &std::path::Path,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Value {
    let body = body.map(|b| b.to_string());
    let (status, v) = rt.block_on(api(state, method, path, body.as_deref()));
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {v}"
    );
    v
}

/// Every record the admin API lists (messages, the operator's inbox, approvals, one approval,
/// deploys) and the answers of approve, deny and rollback read strictly as the `proto` types the
/// CLI prints from, on a hive with data in each: what the broker serves and what the CLI reads
/// are one definition.
#[test]
fn every_listing_the_api_serves_reads_strictly_as_the_wire_types() {
    use proto::{Approval, ApprovalStatus, Deploy, Message, MessageState};

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let _daemon = Daemon::start(state, "");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let manager = mcp_connect(&rt, state, "manager", "mcp.sock");
    let get = |path: &str| api_ok(&rt, state, "GET", path, None);
    let post = |path: &str, body: Value| api_ok(&rt, state, "POST", path, Some(body));

    // Messages: delivered, replied to, and queued for the operator.
    let asked = rt.block_on(send(state, "manager", "how are you?"));
    rt.block_on(mcp_ok(&manager, "recv", json!({"wait_seconds": 5})));
    for (body, reply) in [("fine", Some(asked)), ("and one more", None)] {
        rt.block_on(mcp_ok(
            &manager,
            "send",
            json!({"to": "operator", "body": body, "in_reply_to": reply}),
        ));
    }
    let history: Vec<Message> =
        reads_back_exactly("/api/v1/messages", &get("/api/v1/messages?limit=50"));
    assert!(
        history
            .iter()
            .any(|m| m.state == MessageState::Delivered && m.delivered_at.is_some()),
        "{history:?}"
    );
    assert!(history.iter().any(|m| m.in_reply_to == Some(asked)));
    let inbox: Vec<Message> = reads_back_exactly("/api/v1/inbox", &get("/api/v1/inbox?limit=20"));
    assert_eq!(inbox.len(), 2, "{inbox:?}");
    let taken = post("/api/v1/inbox/recv", json!({"wait_seconds": 0, "max": 32}));
    let taken: Vec<Message> = reads_back_exactly("/api/v1/inbox/recv", &taken["messages"]);
    assert_eq!(taken.len(), 2, "{taken:?}");

    // Approvals: a spawn approved, a change approved, one left pending (and stale: the change
    // before it moved the applied config), one denied with a note.
    let draft = rt.block_on(mcp_ok(&manager, "request_spawn", json!({"name": "bob"})));
    assert_eq!(draft["repo"], "/agents/bob/config");
    let repo = state.join("agents/bob/config");
    let commit = |model: &str| {
        std::fs::write(
            repo.join("agent.nix"),
            format!("{{ ... }}: {{ hyperhive.model = \"{model}\"; }}\n"),
        )
        .unwrap();
        git(&repo, &["commit", "-qam", model]);
        git(&repo, &["rev-parse", "HEAD"])
    };
    let spawn_sha = commit("m0");
    let request = |tool: &str, args: Value| {
        rt.block_on(mcp_ok(&manager, tool, args))["id"]
            .as_i64()
            .unwrap()
    };
    let spawn = request("request_spawn", json!({"name": "bob", "commit": spawn_sha}));
    reads_back_exactly::<Approval>(
        "approve",
        &post(&format!("/api/v1/approvals/{spawn}/approve"), json!({})),
    );
    let apply = |model: &str| {
        let sha = commit(model);
        request(
            "request_apply_commit",
            json!({"agent": "bob", "commit": sha, "description": format!("model {model}")}),
        )
    };
    let (first, stale, denied) = (apply("m1"), apply("m2"), apply("m3"));
    post(&format!("/api/v1/approvals/{first}/approve"), json!({}));
    let denial: Approval = reads_back_exactly(
        "deny",
        &post(
            &format!("/api/v1/approvals/{denied}/deny"),
            json!({"note": "not this one"}),
        ),
    );
    assert_eq!(denial.id, denied);

    let listed: Vec<Approval> = reads_back_exactly("/api/v1/approvals", &get("/api/v1/approvals"));
    let statuses: Vec<ApprovalStatus> = listed.iter().map(|a| a.status).collect();
    for s in [
        ApprovalStatus::Approved,
        ApprovalStatus::Pending,
        ApprovalStatus::Denied,
    ] {
        assert!(statuses.contains(&s), "{statuses:?}");
    }
    for id in [spawn, first, stale, denied] {
        let path = format!("/api/v1/approvals/{id}");
        let one: Approval = reads_back_exactly(&path, &get(&path));
        assert!(one.files.as_ref().is_some_and(|f| !f.is_empty()), "{one:?}");
        assert!(one.diff.is_some(), "{one:?}");
        if id == first || id == spawn {
            assert!(one.deploy.is_some(), "{one:?}");
        }
        if id == stale {
            assert!(one.stale && one.applied_head.is_some(), "{one:?}");
        }
        if id == denied {
            assert_eq!(one.note.as_deref(), Some("not this one"));
        }
    }

    // Deploys: the spawn's, the change's, and a rollback to the first.
    let path = "/api/v1/agents/bob/deploys";
    let deploys: Vec<Deploy> = reads_back_exactly(path, &get(path));
    assert_eq!(deploys.len(), 2, "{deploys:?}");
    reads_back_exactly::<Deploy>(
        "rollback",
        &post(
            "/api/v1/agents/bob/rollback",
            json!({"deploy": deploys[0].id}),
        ),
    );
    let deploys: Vec<Deploy> = reads_back_exactly(path, &get(path));
    assert_eq!(
        deploys.iter().map(|d| d.kind.as_str()).collect::<Vec<_>>(),
        ["spawn", "apply", "rollback"]
    );
    assert!(
        deploys
            .iter()
            .all(|d| d.approval.is_some() || d.kind == "rollback")
    );
}

/// Every other answer the admin API serves — status, the agent listing (with liveness), one agent,
/// a lifecycle outcome, questions and an answer, dead letters and their decisions, tombstones and
/// destroy/restore/purge, audit rows and the chain's verification, an agent's stats, the
/// operator's send, the dashboard's login link — reads strictly as its `proto` type on a hive
/// with data of each kind, and the CLI prints each from it.
#[test]
fn status_agents_questions_dead_letters_tombstones_audit_and_stats_read_as_the_wire_types() {
    use proto::dashboard::DashboardLink;
    use proto::message::Posted;
    use proto::{
        AgentDetail, AgentKind, AgentRecord, AgentStats, AgentView, AuditEntry, DeadLetter,
        Destroyed, Dropped, Liveness, Message, Outcome, Purged, Question, Restored, Status,
        Tombstone, Verification,
    };

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let _daemon = Daemon::start(
        state,
        "[mailbox]\ndead_letter_after_seconds = 1\n[dashboard]\nport = 0\n",
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let manager = mcp_connect(&rt, state, "manager", "mcp.sock");
    let harness = mcp_connect(&rt, state, "manager", "harness.sock");
    let get = |path: &str| api_ok(&rt, state, "GET", path, None);
    let post = |path: &str, body: Value| api_ok(&rt, state, "POST", path, Some(body));

    let link: DashboardLink =
        reads_back_exactly("dashboard link", &post("/api/v1/dashboard/link", json!({})));
    assert!(link.login_link.starts_with(&link.url), "{link:?}");
    cli_ok(state, &["dashboard"]);

    // A finished turn of the manager's with usage, a tool call and a send: its stats.
    let posted: Posted = reads_back_exactly(
        "send",
        &post(
            "/api/v1/messages",
            json!({"to": "manager", "body": "work, please"}),
        ),
    );
    assert_eq!(posted.ids.len(), 1);
    let turn = rt.block_on(mcp_ok(&harness, "next_turn", json!({"wait_seconds": 5})))["turn"]
        .as_i64()
        .unwrap();
    let tool_use = json!({"type": "assistant", "message": {"content": [
        {"type": "tool_use", "name": "send", "input": {}}
    ]}});
    rt.block_on(mcp_ok(
        &harness,
        "turn_events",
        json!({"turn": turn, "events": [tool_use]}),
    ));
    rt.block_on(mcp_ok(
        &manager,
        "send",
        json!({"to": "operator", "body": "done"}),
    ));
    rt.block_on(mcp_ok(
        &harness,
        "finish_turn",
        json!({"turn": turn, "outcome": "ok", "usage": {"input_tokens": 1200,
            "output_tokens": 80, "cost_usd": 0.0123, "duration_ms": 1500}}),
    ));
    let path = "/api/v1/agents/manager/stats";
    let stats: AgentStats = reads_back_exactly(path, &get(path));
    assert_eq!(stats.turns.len(), 1, "{stats:?}");
    assert_eq!(stats.totals.tool_calls.get("send"), Some(&1), "{stats:?}");
    assert_eq!(stats.totals.sent.operator, 1, "{stats:?}");
    assert!(stats.last_turn_at.is_some(), "{stats:?}");

    // Questions: one open with options, one answered.
    for (question, options) in [
        ("deploy now?", json!(["yes", "later"])),
        ("why?", json!([])),
    ] {
        rt.block_on(mcp_ok(
            &manager,
            "ask_operator",
            json!({"question": question, "options": options}),
        ));
    }
    let open: Vec<Question> = reads_back_exactly("/api/v1/questions", &get("/api/v1/questions"));
    assert_eq!(open.len(), 2, "{open:?}");
    let free = open.iter().find(|q| q.options.is_empty()).unwrap().id;
    let answered: Question = reads_back_exactly(
        "answer",
        &post(
            &format!("/api/v1/questions/{free}/answer"),
            json!({"text": "because"}),
        ),
    );
    assert_eq!(answered.answer.as_deref(), Some("because"));
    let all: Vec<Question> =
        reads_back_exactly("/api/v1/questions?all=1", &get("/api/v1/questions?all=1"));
    assert!(all.iter().any(|q| q.status == "answered"), "{all:?}");
    assert!(
        all.iter()
            .any(|q| q.status == "open" && q.options.len() == 2)
    );

    // Agents: alice (paused, with dead letters), bob (destroyed, restored, destroyed, purged).
    for name in ["alice", "bob"] {
        let record: AgentRecord =
            reads_back_exactly("spawn", &post("/api/v1/agents", json!({"name": name})));
        assert_eq!(record.kind, AgentKind::Agent);
    }
    let paused: Outcome =
        reads_back_exactly("pause", &post("/api/v1/agents/alice/pause", json!({})));
    assert!(paused.run.paused, "{paused:?}");
    for body in ["for alice", "for alice again"] {
        rt.block_on(send(state, "alice", body));
    }
    // (Mail for the manager, whose harness is no container here, is dead too: left out.)
    let mut letters: Vec<DeadLetter> = Vec::new();
    assert!(eventually(std::time::Duration::from_secs(30), || {
        let all: Vec<DeadLetter> =
            reads_back_exactly("/api/v1/dead-letters", &get("/api/v1/dead-letters"));
        letters = all
            .into_iter()
            .filter(|d| d.message.to == "alice")
            .collect();
        letters.len() == 2
    }));
    // Paused: said so, though its harness does not run either.
    assert!(letters.iter().all(|d| d.why == "paused"), "{letters:?}");

    let listed: Vec<AgentView> = reads_back_exactly("/api/v1/agents", &get("/api/v1/agents"));
    assert_eq!(listed.len(), 3, "{listed:?}");
    let alice = listed.iter().find(|a| a.record.name == "alice").unwrap();
    assert!(
        alice.run.paused && alice.liveness == Some(Liveness::Dead),
        "{alice:?}"
    );
    let one: AgentDetail = reads_back_exactly("/api/v1/agents/alice", &get("/api/v1/agents/alice"));
    assert_eq!(
        one.isolation_error.as_deref(),
        Some("not running"),
        "{one:?}"
    );
    let status: Status = reads_back_exactly("/api/v1/status", &get("/api/v1/status"));
    assert_eq!(status.agents, 3, "{status:?}");
    assert!(status.messages.queued >= 2, "{status:?}");

    // The CLI prints each of these from its wire type (a field it cannot read is an error).
    for args in [
        vec!["send", "alice", "one more"],
        vec!["status"],
        vec!["agents"],
        vec!["show-agent", "alice"],
        vec!["questions", "--all"],
        vec!["dead-letters"],
        vec!["stats", "manager"],
    ] {
        cli_ok(state, &args);
    }

    // Dead letters decided: one redirected to the operator, one dropped.
    let redirected: Message = reads_back_exactly(
        "redirect",
        &post(
            &format!("/api/v1/dead-letters/{}/redirect", letters[0].message.id),
            json!({"to": "operator"}),
        ),
    );
    assert_eq!(redirected.to, "operator");
    let dropped: Dropped = reads_back_exactly(
        "drop",
        &post(
            &format!("/api/v1/dead-letters/{}/drop", letters[1].message.id),
            json!({}),
        ),
    );
    assert_eq!(dropped.dropped, letters[1].message.id);

    // Tombstones.
    let destroy = |purge: bool| -> Destroyed {
        reads_back_exactly(
            "destroy",
            &post("/api/v1/agents/bob/destroy", json!({"purge": purge})),
        )
    };
    let first = destroy(false);
    let listed: Vec<Tombstone> =
        reads_back_exactly("/api/v1/tombstones", &get("/api/v1/tombstones"));
    assert_eq!(
        listed,
        [Tombstone {
            id: first.tombstone.clone(),
            agent: "bob".into()
        }]
    );
    cli_ok(state, &["tombstones"]);
    let restored: Restored = reads_back_exactly(
        "restore",
        &post(
            &format!("/api/v1/tombstones/{}/restore", first.tombstone),
            json!({}),
        ),
    );
    assert_eq!(restored.agent, "bob");
    let second = destroy(false);
    let purged: Purged = reads_back_exactly(
        "purge",
        &post(
            &format!("/api/v1/tombstones/{}/purge", second.tombstone),
            json!({}),
        ),
    );
    assert_eq!(purged.purged, second.tombstone);

    // The audit chain: rows about agents and rows about none, and its verification.
    let rows: Vec<AuditEntry> =
        reads_back_exactly("/api/v1/audit", &get("/api/v1/audit?limit=1000"));
    for action in ["spawn", "destroy", "restore", "purge"] {
        assert!(
            rows.iter()
                .any(|r| r.action.contains(action) && r.agent.as_deref() == Some("bob")),
            "{action}: {rows:?}"
        );
    }
    let verified: Verification =
        reads_back_exactly("/api/v1/audit/verify", &get("/api/v1/audit/verify"));
    assert_eq!(verified.first_broken, None, "{verified:?}");
    assert_eq!(verified.rows, rows.len() as u64);
    for args in [vec!["audit"], vec!["audit", "verify"]] {
        cli_ok(state, &args);
    }
}
