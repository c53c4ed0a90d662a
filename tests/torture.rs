//! Crash torture: a real `hive serve` takes sends from concurrent clients (the admin API and MCP
//! sockets) and config decisions, and is killed with SIGKILL at a random moment, round after
//! round. After each restart every acknowledged message is stored exactly once, per-sender order
//! holds, every acknowledged approval keeps its status, and the applied repos agree with the store.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use serde_json::{Value, json};

const ROUNDS: usize = 20;
const SENDERS: [&str; 3] = ["alice", "bob", "carol"];

/// What clients were told before the kill.
#[derive(Default)]
struct Acked {
    /// sender → (message id, sequence number), in the order acknowledged.
    messages: HashMap<String, Vec<(i64, u64)>>,
    /// approval id → status acknowledged ("pending" or "approved").
    approvals: HashMap<i64, &'static str>,
}

async fn mcp_client(
    state: &Path,
    agent: &str,
) -> Option<rmcp::service::RunningService<rmcp::service::RoleClient, ()>> {
    let stream =
        tokio::net::UnixStream::connect(state.join("run/agents").join(agent).join("mcp.sock"))
            .await
            .ok()?;
    ().serve(stream).await.ok()
}

/// Calls a tool; `None` once the daemon is gone (or the call was refused).
async fn try_tool(
    client: &rmcp::service::RunningService<rmcp::service::RoleClient, ()>,
    tool: &str,
    args: Value,
) -> Option<Value> {
    let params = CallToolRequestParams::new(tool.to_owned())
        .with_arguments(args.as_object().cloned().unwrap());
    let result = client.call_tool(params).await.ok()?;
    if result.is_error.unwrap_or(false) {
        return None;
    }
    serde_json::from_str(&result.content[0].as_text()?.text).ok()
}

/// Sends from `agent` over MCP until the daemon dies, recording each acknowledged id.
async fn mcp_sender(state: PathBuf, agent: &'static str, next_seq: u64, acked: Arc<Mutex<Acked>>) {
    let Some(client) = mcp_client(&state, agent).await else {
        return;
    };
    for seq in next_seq.. {
        let args = json!({"to": "manager", "body": format!("{agent}:{seq}")});
        let Some(v) = try_tool(&client, "send", args).await else {
            return;
        };
        let id = v["sent"][0].as_i64().unwrap();
        acked
            .lock()
            .unwrap()
            .messages
            .entry(agent.into())
            .or_default()
            .push((id, seq));
    }
}

/// Sends as the operator over the admin API until the daemon dies.
async fn api_sender(state: PathBuf, next_seq: u64, acked: Arc<Mutex<Acked>>) {
    for seq in next_seq.. {
        let body = json!({"to": "manager", "body": format!("operator:{seq}")}).to_string();
        let Some((201, v)) = try_api(&state, "POST", "/api/v1/messages", &body).await else {
            return;
        };
        let id = v["ids"][0].as_i64().unwrap();
        acked
            .lock()
            .unwrap()
            .messages
            .entry("operator".into())
            .or_default()
            .push((id, seq));
    }
}

/// The manager asks for applies of alice's config; the operator approves every other one.
async fn decider(state: PathBuf, commits: Vec<String>, acked: Arc<Mutex<Acked>>) {
    let Some(manager) = mcp_client(&state, "manager").await else {
        return;
    };
    for (n, commit) in commits.iter().cycle().enumerate() {
        let args =
            json!({"agent": "alice", "commit": commit, "description": format!("change {n}")});
        let Some(v) = try_tool(&manager, "request_apply_commit", args).await else {
            return;
        };
        let id = v["id"].as_i64().unwrap();
        acked.lock().unwrap().approvals.insert(id, "pending");
        if n % 2 == 0 {
            match try_api(
                &state,
                "POST",
                &format!("/api/v1/approvals/{id}/approve"),
                "",
            )
            .await
            {
                Some((200, _)) => {
                    acked.lock().unwrap().approvals.insert(id, "approved");
                }
                _ => return,
            }
        }
    }
}

/// Checks the store after a kill against what was acknowledged.
fn check(state: &Path, acked: &Acked, round: usize) {
    let db = open_db(state);
    let mut stored: HashMap<String, Vec<(i64, u64)>> = HashMap::new();
    let mut stmt = db
        .prepare("SELECT id, sender, body FROM messages WHERE recipient = 'manager' AND sender != 'system' ORDER BY id")
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .unwrap();
    for row in rows {
        let (id, sender, body) = row.unwrap();
        let (who, seq) = body.split_once(':').unwrap();
        assert_eq!(
            who, sender,
            "round {round}: body {body} stored as from {sender}"
        );
        stored
            .entry(sender)
            .or_default()
            .push((id, seq.parse().unwrap()));
    }
    for (sender, acks) in &acked.messages {
        let have = stored.get(sender).cloned().unwrap_or_default();
        // Per-sender order: ids and sequence numbers rise together, no repeats.
        for pair in have.windows(2) {
            assert!(
                pair[0].1 < pair[1].1,
                "round {round}: {sender} out of order or twice: {pair:?}"
            );
        }
        for (id, seq) in acks {
            let n = have.iter().filter(|(i, s)| i == id && s == seq).count();
            assert_eq!(
                n, 1,
                "round {round}: acknowledged {sender}:{seq} (#{id}) stored {n} times"
            );
        }
    }
    for (id, status) in &acked.approvals {
        let now: String = db
            .query_row("SELECT status FROM approvals WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap_or_else(|e| panic!("round {round}: acknowledged approval {id} lost: {e}"));
        let kept = now == *status || (*status == "pending" && now == "approved");
        assert!(
            kept,
            "round {round}: approval {id} acknowledged {status}, stored {now}"
        );
    }
}

/// After the restart the applied repo of alice is where her latest deploy says.
fn check_repo_agrees(state: &Path, round: usize) {
    let latest: String = open_db(state)
        .query_row(
            "SELECT commit_sha FROM deploys WHERE agent = 'alice' ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let head = git(
        &state.join("applied/alice"),
        &["rev-parse", "refs/heads/main"],
    );
    assert_eq!(
        head, latest,
        "round {round}: applied repo and store disagree"
    );
}

fn torture(synchronous: &str) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_owned();
    let config = format!(
        "[store]\nsynchronous = \"{synchronous}\"\n[approvals]\ndeny_requires_note = false\n"
    );
    let seed = std::env::var("TORTURE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("torture {synchronous}: seed {seed} (TORTURE_SEED={seed} repeats it)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let rt = tokio::runtime::Runtime::new().unwrap();

    // Set up: three agents and two commits of alice's config to propose in turns.
    let mut daemon = Daemon::start(&state, &config);
    for a in SENDERS {
        assert!(cli(&state, &["spawn", a]).status.success());
    }
    let repo = state.join("agents/alice/config");
    let mut commits = Vec::new();
    for model in ["m1", "m2"] {
        std::fs::write(
            repo.join("agent.nix"),
            format!("{{ ... }}: {{ hyperhive.model = \"{model}\"; }}\n"),
        )
        .unwrap();
        git(&repo, &["commit", "-qam", model]);
        commits.push(git(&repo, &["rev-parse", "HEAD"]));
    }

    let acked = Arc::new(Mutex::new(Acked::default()));
    let started = Instant::now();
    for round in 0..ROUNDS {
        if round > 0 {
            daemon = Daemon::start(&state, &config);
            check_repo_agrees(&state, round);
        }
        let next_seq = |who: &str| {
            acked
                .lock()
                .unwrap()
                .messages
                .get(who)
                .and_then(|v| v.last())
                .map_or(0, |(_, s)| s + 1)
        };
        // A send that was in flight at the kill may have committed without an acknowledgement:
        // its sequence number is skipped, never reused.
        let skip = 1_000_000 * (round as u64 + 1);
        let kill_after = Duration::from_millis(rng.u64(20..250));
        rt.block_on(async {
            let mut tasks = Vec::new();
            for a in SENDERS {
                tasks.push(tokio::spawn(mcp_sender(
                    state.clone(),
                    a,
                    next_seq(a).max(skip),
                    acked.clone(),
                )));
            }
            tasks.push(tokio::spawn(api_sender(
                state.clone(),
                next_seq("operator").max(skip),
                acked.clone(),
            )));
            tasks.push(tokio::spawn(decider(
                state.clone(),
                commits.clone(),
                acked.clone(),
            )));
            tokio::time::sleep(kill_after).await;
            daemon.kill9();
            for t in tasks {
                let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
            }
        });
        check(&state, &acked.lock().unwrap(), round);
    }
    // One last start: the reconcile makes git agree with the store, and the store still checks.
    let _daemon = Daemon::start(&state, &config);
    check_repo_agrees(&state, ROUNDS);
    check(&state, &acked.lock().unwrap(), ROUNDS);
    let a = acked.lock().unwrap();
    let total: usize = a.messages.values().map(Vec::len).sum();
    println!(
        "torture {synchronous}: {ROUNDS} kills in {:?}, {total} acknowledged messages, {} approvals",
        started.elapsed(),
        a.approvals.len()
    );
    assert!(total > ROUNDS, "too few sends to mean anything: {total}");
    assert!(!a.approvals.is_empty());
}

#[test]
fn kill9_at_random_moments_with_synchronous_normal() {
    torture("normal");
}

#[test]
fn kill9_at_random_moments_with_synchronous_full() {
    torture("full");
}
