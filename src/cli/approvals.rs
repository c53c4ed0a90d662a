//! `hive approvals`, `show`, `approve`, `deny`, `spawn`, `history` and `rollback`: config changes
//! from the operator's side.

use std::path::PathBuf;
use std::process::ExitCode;

use broker::paths::StateDir;
use serde_json::{Value, json};

use super::client::{AdminClient, encode};
use super::{output, post_action, print_listing};

#[derive(clap::Args)]
pub struct ApprovalsArgs {
    /// Only approvals in this status (pending, approved, building, deployed, failed, denied)
    #[arg(long)]
    status: Option<String>,
    /// Only approvals of this agent
    #[arg(long)]
    agent: Option<String>,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct IdArgs {
    /// The approval's id (see `hive approvals`)
    id: i64,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct DenyArgs {
    /// The approval's id
    id: i64,
    /// Why: the manager reads it
    #[arg(long)]
    note: Option<String>,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct SpawnArgs {
    /// The new agent's name
    name: String,
    /// Use this file as its agent.nix (default: the manager's draft, else the template)
    #[arg(long, value_name = "FILE")]
    from: Option<PathBuf>,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct HistoryArgs {
    /// The agent
    agent: String,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct RollbackArgs {
    /// The agent
    agent: String,
    /// The deploy to go back to (see `hive history AGENT`)
    deploy: i64,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

fn short(sha: &Value) -> String {
    output::field(sha, "?").chars().take(12).collect()
}

pub fn approvals(state: &StateDir, args: ApprovalsArgs) -> anyhow::Result<ExitCode> {
    let mut query = vec![];
    if let Some(s) = &args.status {
        query.push(format!("status={}", encode(s)));
    }
    if let Some(a) = &args.agent {
        query.push(format!("agent={}", encode(a)));
    }
    let path = format!("/api/v1/approvals?{}", query.join("&"));
    print_listing(
        state,
        &path,
        args.json,
        "no approvals",
        &[
            "ID",
            "KIND",
            "AGENT",
            "STATUS",
            "COMMIT",
            "ASKED (UTC)",
            "DESCRIPTION",
        ],
        |a| {
            vec![
                a["id"].to_string(),
                a["kind"].as_str().unwrap_or("?").to_owned(),
                a["agent"].as_str().unwrap_or("?").to_owned(),
                a["status"].as_str().unwrap_or("?").to_owned(),
                short(&a["commit"]),
                output::time(&a["created_at"]),
                a["description"].as_str().unwrap_or("").replace('\n', " "),
            ]
        },
    )
}

fn print_approval(a: &Value) {
    outln!(
        "approval #{}: {} {} ({}), asked by {} at {}",
        a["id"],
        output::field(&a["kind"], "?"),
        output::field(&a["agent"], "?"),
        output::field(&a["status"], "?"),
        output::field(&a["requester"], "?"),
        output::time(&a["created_at"])
    );
    outln!("commit {}", output::field(&a["commit"], "?"));
    if let Some(d) = a["description"].as_str().filter(|d| !d.is_empty()) {
        outln!("\n{}\n", output::indented(d, "    "));
    }
    if let Some(note) = a["note"].as_str() {
        outln!("note: {}", output::one_line(note));
    }
    outln!("{}", a["stat"].as_str().unwrap_or(""));
}

pub fn show(state: &StateDir, args: IdArgs) -> anyhow::Result<ExitCode> {
    let a = super::client_runtime()?
        .block_on(AdminClient::new(state).get(&format!("/api/v1/approvals/{}", args.id)))?;
    if args.json {
        output::json(&a);
        return Ok(ExitCode::SUCCESS);
    }
    print_approval(&a);
    output::deploy(&a["deploy"]);
    if a["stale"].as_bool() == Some(true) {
        outln!(
            "\nSTALE: asked against {} but the applied config is at {} now; the diff below is against today's config. Approving is refused: deny it and let the manager ask again.",
            short(&a["base"]),
            short(&a["applied_head"])
        );
    }
    if let Some(files) = a["files"].as_array() {
        outln!("\nfiles:");
        for f in files {
            let modes = match (f["old_mode"].as_str(), f["new_mode"].as_str()) {
                (Some(o), Some(n)) if o != n => format!(" mode {o} -> {n}"),
                (None, Some(n)) => format!(" mode {n}"),
                _ => String::new(),
            };
            let target = f["symlink_target"]
                .as_str()
                .map(|t| format!(" -> {t}"))
                .unwrap_or_default();
            let binary = if f["binary"].as_bool() == Some(true) {
                "  BINARY (shown escaped)"
            } else {
                ""
            };
            outln!(
                "  {:<10} {}{target}{modes}{binary}",
                f["change"].as_str().unwrap_or("?"),
                f["path"].as_str().unwrap_or("?")
            );
        }
    }
    outln!();
    out!("{}", a["diff"].as_str().unwrap_or(""));
    Ok(ExitCode::SUCCESS)
}

pub fn approve(state: &StateDir, args: IdArgs) -> anyhow::Result<ExitCode> {
    let path = format!("/api/v1/approvals/{}/approve", args.id);
    post_action(state, &path, &json!({}), args.json, |a| {
        outln!(
            "approved #{}: {} {} is now at {}",
            a["id"],
            output::field(&a["kind"], "?"),
            output::field(&a["agent"], "?"),
            short(&a["commit"])
        );
    })
}

pub fn deny(state: &StateDir, args: DenyArgs) -> anyhow::Result<ExitCode> {
    let path = format!("/api/v1/approvals/{}/deny", args.id);
    post_action(state, &path, &json!({"note": args.note}), args.json, |a| {
        outln!(
            "denied #{} ({} {})",
            a["id"],
            output::field(&a["kind"], "?"),
            output::field(&a["agent"], "?")
        );
    })
}

pub fn spawn(state: &StateDir, args: SpawnArgs) -> anyhow::Result<ExitCode> {
    let agent_nix = match &args.from {
        Some(file) => Some(
            std::fs::read_to_string(file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?,
        ),
        None => None,
    };
    let body = json!({"name": args.name, "agent_nix": agent_nix});
    post_action(state, "/api/v1/agents", &body, args.json, |a| {
        outln!("spawned {}", output::field(&a["name"], "?"));
    })
}

pub fn history(state: &StateDir, args: HistoryArgs) -> anyhow::Result<ExitCode> {
    let path = format!("/api/v1/agents/{}/deploys", encode(&args.agent));
    print_listing(
        state,
        &path,
        args.json,
        "no deploys",
        &["DEPLOY", "KIND", "STATUS", "COMMIT", "APPROVAL", "AT (UTC)"],
        |d| {
            vec![
                d["id"].to_string(),
                d["kind"].as_str().unwrap_or("?").to_owned(),
                d["status"].as_str().unwrap_or("?").to_owned(),
                short(&d["commit"]),
                d["approval"]
                    .as_i64()
                    .map(|a| format!("#{a}"))
                    .unwrap_or_else(|| "-".into()),
                output::time(&d["created_at"]),
            ]
        },
    )
}

pub fn rollback(state: &StateDir, args: RollbackArgs) -> anyhow::Result<ExitCode> {
    let path = format!("/api/v1/agents/{}/rollback", encode(&args.agent));
    post_action(
        state,
        &path,
        &json!({"deploy": args.deploy}),
        args.json,
        |d| {
            outln!(
                "{} is back at {} (deploy {})",
                output::one_line(&args.agent),
                short(&d["commit"]),
                d["id"]
            );
        },
    )
}
