//! A day in the life of a hive, end to end with every real part: a fresh state dir, `hive serve`
//! with the nspawn runtime and the minimal builder; the operator asks the manager (the real claude
//! CLI in its container, its model scripted) for an agent; the manager drafts `alice`, commits and
//! calls `request_spawn`; the operator approves in a real browser; alice is built and started in
//! her container; the manager writes to her and she answers (claude too); her payload is killed,
//! the manager is told `container_crash` and proposes a change, alice is back after the backoff;
//! the change is approved, and the operator rolls alice back to her first config and sees it run.
//! Every step is asserted on the store, and the audit chain verifies at the end.
//!
//! One scripted model server serves both agents: it tells them apart by their system prompts
//! (each carries its agent's prompt.md) and answers by what the request says.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use testkit::model_server::{ModelServer, RecordedRequest, Reply};
use testkit::tools;
use testkit::webdriver::ChromeDriver;

/// How long a build plus a start, or a turn, may take on a slow CI machine.
const LIMIT: Duration = Duration::from_secs(120);

/// What the operator asks of the manager; the manager's model acts on this text.
const TASK: &str = "Please create an agent named alice who reports her status when asked.";
/// alice's prompt in her first and second config; she names the one she runs.
const FIRST: &str = "config one";
const SECOND: &str = "config two";

#[test]
fn a_day_in_the_life_of_a_hive() {
    let Some(claude) = tools::require("claude", tools::claude_bin()) else {
        return;
    };
    let Some(chromium) = tools::require("chromium", tools::chromium()) else {
        return;
    };
    let Some(chromedriver) = tools::require("chromedriver", tools::chromedriver()) else {
        return;
    };
    if tools::require("nix-build", tools::nix_build()).is_none()
        || tools::require("busybox", tools::busybox()).is_none()
        || tools::require("systemd-nspawn", tools::systemd_nspawn()).is_none()
    {
        return;
    }
    let started = Instant::now();
    let step = |what: &str| eprintln!("[{:>6.1} s] {what}", started.elapsed().as_secs_f64());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("hive");
    let script = Script::new(&state);
    let server = ModelServer::start_responding({
        let script = script.clone();
        move |req| script.answer(req)
    });
    let config = format!(
        "[runtime]\nkind = \"nspawn\"\nstop_timeout_seconds = 5\n\n[model]\nanthropic_base_url = \"{}\"\n\n[dashboard]\nport = 0\n",
        server.base_url()
    );
    let claude_path = claude.display().to_string();
    let _daemon = Daemon::start_with_env(
        &state,
        &config,
        &[
            ("HIVE_CLAUDE", claude_path.as_str()),
            ("CLAUDE_CODE_MAX_RETRIES", "0"),
        ],
    );
    wait_idle(&state, "manager");
    step("the manager is up");

    // The operator gives the manager a task; the manager drafts alice, commits, and asks.
    let task = rt.block_on(send(&state, "manager", TASK));
    let approval = wait_for(&state, "the manager's spawn request for alice", || {
        approvals(&state)
            .into_iter()
            .find(|a| a["agent"] == "alice" && a["status"] == "pending")
    });
    assert_eq!(approval["kind"], "spawn", "{approval}");
    assert_eq!(finished_turn(&state, task), "ok");
    let first_commit = script.commits()[0].clone();
    assert_eq!(approval["commit"], first_commit.as_str(), "{approval}");
    let repo = state.join("agents/alice/config");
    assert_eq!(git(&repo, &["rev-parse", "HEAD"]), first_commit);
    let prompt = git(&repo, &["show", "HEAD:prompt.md"]);
    assert!(prompt.contains(FIRST), "{prompt}");
    let id = approval["id"].as_i64().unwrap();
    step("the manager asked to spawn alice");

    // The operator approves in the real browser, logged in by the one-time link.
    let link: Value = serde_json::from_str(&cli_ok(&state, &["dashboard", "--json"])).unwrap();
    let login_link = link["login_link"].as_str().unwrap().to_owned();
    let base = login_link.split("/login/").next().unwrap().to_owned();
    let driver = ChromeDriver::start(&chromedriver).unwrap();
    let profile = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let c = driver
            .session(&chromium, profile.path())
            .await
            .expect("a WebDriver session");
        c.goto(&login_link).await.unwrap();
        c.until("location.pathname === '/'", "the hive page after login")
            .await
            .unwrap();
        c.goto(&format!("{base}/approvals/{id}")).await.unwrap();
        c.until("document.getElementById('approve')", "alice's approval page")
            .await
            .unwrap();
        let diff = c.text(&c.find("#diff").await.unwrap()).await.unwrap();
        assert!(diff.contains(FIRST), "the diff shows the new prompt: {diff}");
        c.click(&c.find("#approve").await.unwrap()).await.unwrap();
        c.until(
            "document.getElementById('approval-status') && document.getElementById('approval-status').textContent !== 'pending'",
            "the approval decided",
        )
        .await
        .unwrap();
        c.close().await.unwrap();
    });
    step("approved in the browser");

    // alice is built and started in her container, on the approved commit.
    let first_deploy = wait_deployed(&state, "alice", "spawn");
    assert_eq!(first_deploy["commit"], first_commit.as_str());
    let first_pid = wait_up(&state, "alice", None);
    assert_eq!(running_commit(&state, "alice"), first_commit);
    assert_eq!(applied_head(&state, "alice"), first_commit);
    let shown = show(&state, id);
    assert_eq!(shown["status"], "deployed", "{shown}");
    step("alice runs in nspawn");

    // The manager, told alice was spawned, writes to her; she answers it through her claude.
    let asked = wait_message(&state, task, "manager", "alice", "status");
    let answer = wait_message(&state, asked.0, "alice", "manager", FIRST);
    assert!(answer.1.contains(FIRST), "{answer:?}");
    assert_eq!(
        finished_turn(&state, asked.0),
        "ok",
        "{}",
        log_of(&state, "alice")
    );
    assert_eq!(
        finished_turn(&state, answer.0),
        "ok",
        "{}",
        log_of(&state, "manager")
    );
    step("the manager and alice talked");

    // alice's payload is killed: the manager is told and proposes a change; alice comes back
    // after the backoff.
    let payload = harness_pid(&state, "alice").expect("alice's harness in her container");
    signal(payload, nix::sys::signal::Signal::SIGKILL);
    let (crash_id, crashed_at, body) = wait_told(&state, "container_crash", "alice");
    // nspawn exits 255 when its payload is killed (the payload's signal does not come through).
    assert_eq!(body["code"], 255, "{body}");
    assert_eq!(body["how"], "exited with code 255", "{body}");
    assert_eq!(body["restart_in_seconds"], 1, "{body}");
    wait_up(&state, "alice", Some(first_pid));
    let restarted = *system_starts(&state, "alice")
        .last()
        .expect("a restart by the system");
    assert!(
        restarted - crashed_at >= 1000,
        "restarted {} ms after the crash was told (backoff 1 s)",
        restarted - crashed_at
    );
    assert_eq!(running_commit(&state, "alice"), first_commit);
    let change = wait_for(
        &state,
        "the manager's change for alice after the crash",
        || {
            approvals(&state)
                .into_iter()
                .find(|a| a["agent"] == "alice" && a["status"] == "pending")
        },
    );
    assert_eq!(change["kind"], "apply", "{change}");
    let second_commit = script.commits()[1].clone();
    assert_eq!(change["commit"], second_commit.as_str(), "{change}");
    assert_eq!(
        finished_turn(&state, crash_id),
        "ok",
        "{}",
        log_of(&state, "manager")
    );
    step("crashed, told, back after the backoff");

    // The operator approves the change; alice runs her second config.
    cli_ok(
        &state,
        &["approve", &change["id"].as_i64().unwrap().to_string()],
    );
    let second_deploy = wait_deployed(&state, "alice", "apply");
    assert_eq!(second_deploy["commit"], second_commit.as_str());
    assert!(
        eventually(LIMIT, || running_commit_of(&state, "alice").as_deref()
            == Some(second_commit.as_str())),
        "alice did not run the change"
    );
    wait_up(&state, "alice", None);
    assert_eq!(applied_head(&state, "alice"), second_commit);
    let which = rt.block_on(send(&state, "alice", "Which config do you run?"));
    let said = wait_message(&state, which, "alice", "operator", "config");
    // Her new prompt is the one her model reads (not the one her resumed session began with).
    assert!(
        said.1.contains(SECOND),
        "{said:?}\n{}",
        log_of(&state, "alice")
    );
    assert_eq!(
        finished_turn(&state, which),
        "ok",
        "{}",
        log_of(&state, "alice")
    );
    step("the change is deployed, and alice says so");

    // The operator rolls alice back to her first deploy and sees her run it.
    let rolled: Value = serde_json::from_str(&cli_ok(
        &state,
        &[
            "rollback",
            "alice",
            &first_deploy["id"].as_i64().unwrap().to_string(),
            "--json",
        ],
    ))
    .unwrap();
    assert_eq!(rolled["commit"], first_commit.as_str(), "{rolled}");
    let rollback = wait_deployed(&state, "alice", "rollback");
    assert_eq!(rollback["id"], rolled["id"], "{rollback}");
    assert_eq!(applied_head(&state, "alice"), first_commit);
    assert!(
        eventually(LIMIT, || running_commit_of(&state, "alice").as_deref()
            == Some(first_commit.as_str())),
        "alice did not go back to her first commit"
    );
    wait_up(&state, "alice", None);
    let which = rt.block_on(send(&state, "alice", "Which config do you run now?"));
    let said = wait_message(&state, which, "alice", "operator", "config");
    assert!(said.1.contains(FIRST), "{said:?}");
    assert_eq!(
        finished_turn(&state, which),
        "ok",
        "{}",
        log_of(&state, "alice")
    );
    step("rolled back, and alice says so");

    // The audit chain holds every step about alice, in order, and verifies. The restart after
    // the crash comes after her first deploy and before the change's approval; whether before or
    // after the manager's request depends on the manager's speed.
    let rows: Vec<(String, String)> = audit(&state)
        .into_iter()
        .filter(|(_, _, agent)| agent == "alice")
        .map(|(actor, action, _)| (actor, action))
        .collect();
    let steps: Vec<(&str, &str)> = rows
        .iter()
        .map(|(actor, action)| (actor.as_str(), action.as_str()))
        .collect();
    let without_start: Vec<(&str, &str)> = steps
        .iter()
        .copied()
        .filter(|step| *step != ("system", "start"))
        .collect();
    assert_eq!(
        without_start,
        [
            ("manager", "request_spawn"),
            ("operator", "approve"),
            ("system", "deployed"),
            ("manager", "request_apply"),
            ("operator", "approve"),
            ("system", "deployed"),
            ("operator", "rollback"),
            ("system", "deployed"),
        ],
        "{steps:?}"
    );
    let at = |step: (&str, &str), nth: usize| {
        steps
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == step)
            .nth(nth)
            .map(|(i, _)| i)
            .unwrap_or_else(|| panic!("{step:?} #{nth} in {steps:?}"))
    };
    let restart = at(("system", "start"), 0);
    assert!(
        at(("system", "deployed"), 0) < restart && restart < at(("operator", "approve"), 1),
        "{steps:?}"
    );
    assert_eq!(
        steps.iter().filter(|s| **s == ("system", "start")).count(),
        1,
        "{steps:?}"
    );
    let out = cli(&state, &["audit", "verify"]);
    assert!(
        out.status.success(),
        "audit verify: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    step("the audit chain verifies");
    assert_eq!(script.errors(), Vec::<String>::new());
}

/// The two agents' model, answering by what each request says. The manager's git work (drafting
/// alice's config, then changing it after her crash) is done here, on the host, in the repo the
/// manager sees at /agents/alice/config, as the manager's tools would.
#[derive(Clone)]
struct Script {
    repo: PathBuf,
    /// Commits made for the manager, in order.
    commits: Arc<Mutex<Vec<String>>>,
    /// Whether the manager already wrote to alice (once, when told she was spawned).
    asked_alice: Arc<Mutex<bool>>,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Script {
    fn new(state: &Path) -> Self {
        Self {
            repo: state.join("agents/alice/config"),
            commits: Arc::default(),
            asked_alice: Arc::default(),
            errors: Arc::default(),
        }
    }

    fn commits(&self) -> Vec<String> {
        self.commits.lock().unwrap().clone()
    }

    fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    fn answer(&self, req: &RecordedRequest) -> Reply {
        let system = req.body["system"].to_string();
        if system.contains("You are the manager of a hyperhive") {
            self.manager(req)
        } else if system.contains("You are alice") {
            alice(req, &system)
        } else {
            self.errors
                .lock()
                .unwrap()
                .push(format!("a request from no known agent: {system}"));
            Reply::text("done")
        }
    }

    fn manager(&self, req: &RecordedRequest) -> Reply {
        if let Some((tool, input, result)) = tool_answered(req) {
            return match (tool.as_str(), input.get("commit")) {
                ("mcp__hive__request_spawn", None) => {
                    match self.commit(FIRST, "alice: a first config") {
                        Ok(sha) => Reply::tool_use(
                            "mcp__hive__request_spawn",
                            json!({"name": "alice", "commit": sha}),
                        ),
                        Err(e) => self.failed(e),
                    }
                }
                _ => Reply::text(format!("done: {tool} said {result}")),
            };
        }
        let wake = req.last_user_text().unwrap_or_default();
        if wake.contains(TASK) {
            return Reply::tool_use("mcp__hive__request_spawn", json!({"name": "alice"}));
        }
        if wake.contains("\"container_crash\"") && wake.contains("\"alice\"") {
            return match self.commit(SECOND, "alice: a second config after her crash") {
                Ok(sha) => Reply::tool_use(
                    "mcp__hive__request_apply_commit",
                    json!({"agent": "alice", "commit": sha,
                           "description": "alice crashed: try her second config"}),
                ),
                Err(e) => self.failed(e),
            };
        }
        if wake.contains("\"spawned\"") && wake.contains("\"alice\"") {
            let mut asked = self.asked_alice.lock().unwrap();
            if !*asked {
                *asked = true;
                return Reply::tool_use(
                    "mcp__hive__send",
                    json!({"to": "alice", "body": "Welcome, alice: what is your status?"}),
                );
            }
        }
        Reply::text("noted")
    }

    /// alice's prompt.md says `config`; committed in her proposed repo. Returns the commit.
    fn commit(&self, config: &str, message: &str) -> Result<String, String> {
        let prompt = format!(
            "You are alice, running {config}. When asked, report your status with the send tool.\n"
        );
        std::fs::write(self.repo.join("prompt.md"), prompt).map_err(|e| e.to_string())?;
        let git = |args: &[&str]| -> Result<String, String> {
            let out = std::process::Command::new("git")
                .arg("-C")
                .arg(&self.repo)
                .args(["-c", "user.name=manager", "-c", "user.email=manager@hive"])
                .args(args)
                .output()
                .map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!("git {args:?}: {}", text(&out.stderr)));
            }
            Ok(text(&out.stdout).trim().to_owned())
        };
        git(&["commit", "-qam", message])?;
        let sha = git(&["rev-parse", "HEAD"])?;
        self.commits.lock().unwrap().push(sha.clone());
        Ok(sha)
    }

    fn failed(&self, error: String) -> Reply {
        self.errors.lock().unwrap().push(error.clone());
        Reply::text(format!("failed: {error}"))
    }
}

/// alice answers whoever wrote to her with the config her system prompt names.
fn alice(req: &RecordedRequest, system: &str) -> Reply {
    if tool_answered(req).is_some() {
        return Reply::text("answered");
    }
    let wake = req.last_user_text().unwrap_or_default();
    // "New message N from SENDER": she answers the last one not from `system` (the hive's
    // notices, e.g. her container's restart, need no answer).
    let Some(sender) = wake
        .split("New message ")
        .skip(1)
        .filter_map(|m| m.split(" from ").nth(1))
        .filter_map(|s| s.split([' ', ':']).next())
        .filter(|s| *s != "system")
        .last()
    else {
        return Reply::text("noted");
    };
    let config = if system.contains(SECOND) {
        SECOND
    } else {
        FIRST
    };
    Reply::tool_use(
        "mcp__hive__send",
        json!({"to": sender, "body": format!("alice here, all well, running {config}")}),
    )
}

/// When `req` carries the result of the tool the model just called (the turn goes on): the
/// tool's name, its input, and the result's text.
fn tool_answered(req: &RecordedRequest) -> Option<(String, Value, String)> {
    let messages = req.body["messages"].as_array()?;
    let last = messages.last()?;
    if last["role"] != "user" {
        return None;
    }
    let result = last["content"]
        .as_array()?
        .iter()
        .find(|b| b["type"] == "tool_result")?;
    let id = result["tool_use_id"].as_str()?;
    let call = messages
        .iter()
        .rev()
        .filter(|m| m["role"] == "assistant")
        .filter_map(|m| m["content"].as_array())
        .flatten()
        .find(|b| b["type"] == "tool_use" && b["id"] == id)?;
    let text = match &result["content"] {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    };
    Some((
        call["name"].as_str()?.to_owned(),
        call["input"].clone(),
        text,
    ))
}

/// Waits until `f` finds something, at most [`LIMIT`]; fails naming `what`.
fn wait_for<T>(state: &Path, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let mut found = None;
    let ok = eventually(LIMIT, || {
        found = f();
        found.is_some()
    });
    assert!(
        ok,
        "waited {LIMIT:?} for {what}\nmanager's log:\n{}\nalice's log:\n{}",
        log_of(state, "manager"),
        log_of(state, "alice")
    );
    found.unwrap()
}

fn agent_view(state: &Path, agent: &str) -> Value {
    let agents: Vec<Value> = serde_json::from_str(&cli_ok(state, &["agents", "--json"])).unwrap();
    agents
        .into_iter()
        .find(|a| a["name"] == agent)
        .unwrap_or(Value::Null)
}

fn wait_idle(state: &Path, agent: &str) {
    wait_for(state, &format!("{agent} up and idle"), || {
        let run = agent_view(state, agent)["run"].clone();
        (run["up"] == true && run["turn_state"] == "idle").then_some(())
    })
}

/// Waits until `agent` runs with its harness connected (and, when given, another pid than
/// `not_pid`); returns its pid.
fn wait_up(state: &Path, agent: &str, not_pid: Option<u64>) -> u64 {
    wait_for(state, &format!("{agent} up (not pid {not_pid:?})"), || {
        let run = agent_view(state, agent)["run"].clone();
        (run["up"] == true && run["state"] == "running" && run["pid"].as_u64() != not_pid)
            .then(|| run["pid"].as_u64())
            .flatten()
    })
}

fn running_commit_of(state: &Path, agent: &str) -> Option<String> {
    agent_view(state, agent)["run"]["commit"]
        .as_str()
        .map(str::to_owned)
}

fn running_commit(state: &Path, agent: &str) -> String {
    running_commit_of(state, agent).unwrap_or_else(|| panic!("{agent} runs no commit"))
}

/// The applied (bare) repo's HEAD commit.
fn applied_head(state: &Path, agent: &str) -> String {
    git(&state.join("applied").join(agent), &["rev-parse", "HEAD"])
}

/// alice's approvals.
fn approvals(state: &Path) -> Vec<Value> {
    serde_json::from_str(&cli_ok(state, &["approvals", "--agent", "alice", "--json"])).unwrap()
}

fn show(state: &Path, approval: i64) -> Value {
    serde_json::from_str(&cli_ok(state, &["show", &approval.to_string(), "--json"])).unwrap()
}

/// Waits until `agent`'s latest deploy of `kind` is deployed (failing on `failed`); returns it.
fn wait_deployed(state: &Path, agent: &str, kind: &str) -> Value {
    let deploy = wait_for(state, &format!("{agent}'s {kind} deploy to end"), || {
        let history: Vec<Value> =
            serde_json::from_str(&cli_ok(state, &["history", agent, "--json"])).unwrap();
        history
            .into_iter()
            .filter(|d| d["kind"] == kind)
            .max_by_key(|d| d["id"].as_i64())
            .filter(|d| d["status"] == "deployed" || d["status"] == "failed")
    });
    assert_eq!(
        deploy["status"],
        "deployed",
        "{deploy}\n{}",
        log_of(state, agent)
    );
    deploy
}

/// Waits for the first message `from` → `to` after message `after` whose body holds `holding`:
/// (id, body).
fn wait_message(state: &Path, after: i64, from: &str, to: &str, holding: &str) -> (i64, String) {
    wait_for(
        state,
        &format!("a message {from} → {to} holding {holding:?}"),
        || {
            open_db(state)
                .query_row(
                    "SELECT id, body FROM messages WHERE id > ?1 AND sender = ?2 AND recipient = ?3
                 AND instr(body, ?4) > 0 ORDER BY id LIMIT 1",
                    rusqlite::params![after, from, to, holding],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .ok()
        },
    )
}

/// The outcome of the finished turn that took message `id` (a turn leases every queued message
/// of its agent; finishing it marks them delivered at its own finish time).
fn finished_turn(state: &Path, id: i64) -> String {
    wait_for(
        state,
        &format!("the turn of message {id} to finish"),
        || {
            open_db(state)
                .query_row(
                    "SELECT t.outcome FROM messages m JOIN turns t ON t.agent = m.recipient
                 AND t.finished_at = m.delivered_at
                 WHERE m.id = ?1 AND m.state = 'delivered' AND t.outcome IS NOT NULL
                 ORDER BY t.id DESC LIMIT 1",
                    [id],
                    |r| r.get(0),
                )
                .ok()
        },
    )
}

/// The first helper event `event` about `agent` told the manager: (id, sent_at, body).
fn wait_told(state: &Path, event: &str, agent: &str) -> (i64, i64, Value) {
    wait_for(state, &format!("'{event}' about {agent}"), || {
        let db = open_db(state);
        let mut stmt = db
            .prepare(
                "SELECT id, sent_at, body FROM messages WHERE sender = 'system' AND recipient = 'manager'
                 AND json_extract(body, '$.event') = ?1 AND json_extract(body, '$.agent') = ?2
                 ORDER BY id LIMIT 1",
            )
            .unwrap();
        stmt.query_row([event, agent], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .ok()
        .map(|(id, at, body)| (id, at, serde_json::from_str(&body).unwrap()))
    })
}

/// Every audit row as (actor, action, agent), in order.
fn audit(state: &Path) -> Vec<(String, String, String)> {
    let db = open_db(state);
    let mut stmt = db
        .prepare("SELECT actor, action, coalesce(agent, '') FROM audit ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// `hive logs AGENT`: the container's output.
fn log_of(state: &Path, agent: &str) -> String {
    text(&cli(state, &["logs", agent]).stdout)
}
