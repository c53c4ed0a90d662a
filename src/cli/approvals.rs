//! `hive approvals`, `show`, `approve`, `deny`, `spawn`, `history` and `rollback`: config changes
//! from the operator's side.

use std::path::PathBuf;
use std::process::ExitCode;

use broker::paths::StateDir;
use proto::{AgentRecord, Approval, CheckStatus, Deploy};
use serde_json::json;

use super::client::{AdminClient, encode};
use super::{output, post_action_of, print_listing_of, read_answer};

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
pub struct ApproveArgs {
    /// The approval's id (see `hive approvals`)
    id: i64,
    /// Confirm a change that widens the agent's isolation (host network, egress, MCP servers,
    /// commands, recipients): read `hive show ID` first
    #[arg(long)]
    yes_widen: bool,
    /// Approve although its check build failed (the deploy will fail the same way unless the
    /// cause was outside the config)
    #[arg(long)]
    override_failed_build: bool,
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

fn short(sha: &str) -> String {
    output::one_line(sha).chars().take(12).collect()
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
    let list = super::client_runtime()?.block_on(AdminClient::new(state).get(&path))?;
    if args.json {
        output::json(&list);
        return Ok(ExitCode::SUCCESS);
    }
    let items: Vec<Approval> = read_answer(&path, &list)?;
    if items.is_empty() {
        outln!("no approvals");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|a| {
            vec![
                a.id.to_string(),
                risk_cell(a),
                a.kind.clone(),
                a.agent.clone(),
                a.status.to_string(),
                short(&a.commit),
                output::time_ms(a.created_at),
                a.description.replace('\n', " "),
            ]
        })
        .collect();
    // A pending change that widens isolation or failed its check: red on a terminal.
    let marked: Vec<bool> = items
        .iter()
        .map(|a| {
            a.status == proto::ApprovalStatus::Pending
                && (a.widens_isolation()
                    || a.check
                        .as_ref()
                        .is_some_and(|c| c.status == CheckStatus::Failed))
        })
        .collect();
    output::table_marked(
        &[
            "ID",
            "RISK",
            "KIND",
            "AGENT",
            "STATUS",
            "COMMIT",
            "ASKED (UTC)",
            "DESCRIPTION",
        ],
        &rows,
        &marked,
    );
    Ok(ExitCode::SUCCESS)
}

/// The RISK column: the flags (`!` before one that widens isolation), then the check's state
/// when it is not a plain ok.
fn risk_cell(a: &Approval) -> String {
    let mut parts: Vec<String> = a
        .risk
        .iter()
        .flatten()
        .map(|f| format!("{}{}", if f.widening { "!" } else { "" }, f.flag))
        .collect();
    match a.check.as_ref().map(|c| c.status) {
        Some(CheckStatus::Failed) => parts.push("BUILD-FAILED".into()),
        Some(CheckStatus::Checking) => parts.push("checking".into()),
        _ => {}
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(",")
    }
}

/// A size in bytes as people read it: `12.3 MiB`.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut size = n as f64;
    let mut unit = 0;
    while size >= 1024.0 && unit + 1 < UNITS.len() {
        size /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{size:.1} {}", UNITS[unit])
    }
}

/// The risk flags (widening ones in red on a terminal) and the check build, before anything
/// else of the approval.
fn print_review(a: &Approval) {
    match &a.risk {
        Some(flags) if flags.is_empty() => outln!("risk: none"),
        Some(flags) => {
            for f in flags {
                let details = if f.details.is_empty() {
                    String::new()
                } else {
                    format!(
                        ": {}",
                        f.details
                            .iter()
                            .map(|d| output::one_line(d).into_owned())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                if f.widening {
                    output::emit_red(&format!("risk: {} (widens isolation){details}\n", f.flag));
                } else {
                    outln!("risk: {}{details}", f.flag);
                }
            }
        }
        None => outln!("risk: not known (no evaluated config)"),
    }
    match &a.check {
        Some(c) => match c.status {
            CheckStatus::Ok => match c.closure_bytes {
                Some(n) => outln!("build: ok (closure {})", human_bytes(n)),
                None => outln!("build: ok"),
            },
            CheckStatus::Failed => {
                output::emit_red("build: failed\n");
                if let Some(message) = &c.message {
                    outln!("{}", output::indented(message, "  "));
                }
            }
            CheckStatus::Checking => outln!("build: checking"),
            CheckStatus::Unavailable => outln!(
                "build: not checked ({})",
                output::one_line(c.message.as_deref().unwrap_or("no reason given"))
            ),
        },
        None => outln!("build: not checked (no check was started)"),
    }
    if a.status == proto::ApprovalStatus::Pending && a.widens_isolation() {
        outln!(
            "approving needs the second confirmation: hive approve {} --yes-widen",
            a.id
        );
    }
    outln!();
}

fn print_approval(a: &Approval) {
    outln!(
        "approval #{}: {} {} ({}), asked by {} at {}",
        a.id,
        output::one_line(&a.kind),
        output::one_line(&a.agent),
        a.status,
        output::one_line(&a.requester),
        output::time_ms(a.created_at)
    );
    outln!("commit {}", output::one_line(&a.commit));
    if !a.description.is_empty() {
        outln!("\n{}\n", output::indented(&a.description, "    "));
    }
    if let Some(note) = &a.note {
        outln!("note: {}", output::one_line(note));
    }
    outln!("{}", a.stat);
}

pub fn show(state: &StateDir, args: IdArgs) -> anyhow::Result<ExitCode> {
    let path = format!("/api/v1/approvals/{}", args.id);
    let answer = super::client_runtime()?.block_on(AdminClient::new(state).get(&path))?;
    if args.json {
        output::json(&answer);
        return Ok(ExitCode::SUCCESS);
    }
    let a: Approval = read_answer(&path, &answer)?;
    print_review(&a);
    print_approval(&a);
    if let Some(d) = &a.deploy {
        output::deploy(d);
    }
    if a.stale {
        outln!(
            "\nSTALE: asked against {} but the applied config is at {} now; the diff below is against today's config. Approving is refused: deny it and let the manager ask again.",
            short(a.base.as_deref().unwrap_or("?")),
            short(a.applied_head.as_deref().unwrap_or("?"))
        );
    }
    if let Some(files) = &a.files {
        outln!("\nfiles:");
        for f in files {
            let modes = match (&f.old_mode, &f.new_mode) {
                (Some(o), Some(n)) if o != n => format!(" mode {o} -> {n}"),
                (None, Some(n)) => format!(" mode {n}"),
                _ => String::new(),
            };
            let target = f
                .symlink_target
                .as_ref()
                .map(|t| format!(" -> {t}"))
                .unwrap_or_default();
            let binary = if f.binary {
                "  BINARY (shown escaped)"
            } else {
                ""
            };
            outln!("  {:<10} {}{target}{modes}{binary}", f.change, f.path);
        }
    }
    outln!();
    out!("{}", a.diff.as_deref().unwrap_or(""));
    Ok(ExitCode::SUCCESS)
}

pub fn approve(state: &StateDir, args: ApproveArgs) -> anyhow::Result<ExitCode> {
    let path = format!("/api/v1/approvals/{}/approve", args.id);
    let body = json!({
        "yes_widen": args.yes_widen,
        "override_failed_build": args.override_failed_build,
    });
    post_action_of(state, &path, &body, args.json, |a: &Approval| {
        outln!(
            "approved #{}: {} {} is now at {}",
            a.id,
            output::one_line(&a.kind),
            output::one_line(&a.agent),
            short(&a.commit)
        );
    })
}

pub fn deny(state: &StateDir, args: DenyArgs) -> anyhow::Result<ExitCode> {
    let path = format!("/api/v1/approvals/{}/deny", args.id);
    let body = json!({"note": args.note});
    post_action_of(state, &path, &body, args.json, |a: &Approval| {
        outln!(
            "denied #{} ({} {})",
            a.id,
            output::one_line(&a.kind),
            output::one_line(&a.agent)
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
    post_action_of(
        state,
        "/api/v1/agents",
        &body,
        args.json,
        |a: &AgentRecord| {
            outln!("spawned {}", output::one_line(&a.name));
        },
    )
}

pub fn history(state: &StateDir, args: HistoryArgs) -> anyhow::Result<ExitCode> {
    let path = format!("/api/v1/agents/{}/deploys", encode(&args.agent));
    print_listing_of(
        state,
        &path,
        args.json,
        "no deploys",
        &["DEPLOY", "KIND", "STATUS", "COMMIT", "APPROVAL", "AT (UTC)"],
        |d: &Deploy| {
            vec![
                d.id.to_string(),
                d.kind.clone(),
                d.status.to_string(),
                short(&d.commit),
                d.approval
                    .map(|a| format!("#{a}"))
                    .unwrap_or_else(|| "-".into()),
                output::time_ms(d.created_at),
            ]
        },
    )
}

pub fn rollback(state: &StateDir, args: RollbackArgs) -> anyhow::Result<ExitCode> {
    let path = format!("/api/v1/agents/{}/rollback", encode(&args.agent));
    post_action_of(
        state,
        &path,
        &json!({"deploy": args.deploy}),
        args.json,
        |d: &Deploy| {
            outln!(
                "{} is back at {} (deploy {})",
                output::one_line(&args.agent),
                short(&d.commit),
                d.id
            );
        },
    )
}
