//! `hive audit` and `hive audit verify`.

use std::process::ExitCode;

use broker::paths::StateDir;
use clap::Subcommand;

use proto::{AuditEntry, Verification};

use super::client::{AdminClient, encode};
use super::{output, print_listing_of, read_answer};

#[derive(clap::Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    command: Option<AuditCommand>,
    /// Only rows about this agent
    #[arg(long)]
    agent: Option<String>,
    /// How many recent rows
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute the hash chain; exit non-zero naming the first row that does not match
    Verify,
}

pub fn audit(state: &StateDir, args: AuditArgs) -> anyhow::Result<ExitCode> {
    let client = AdminClient::new(state);
    let rt = super::client_runtime()?;
    if let Some(AuditCommand::Verify) = args.command {
        let path = "/api/v1/audit/verify";
        let answer = rt.block_on(client.get(path))?;
        if args.json {
            output::json(&answer);
        }
        let v: Verification = read_answer(path, &answer)?;
        return Ok(match v.first_broken {
            None => {
                if !args.json {
                    outln!(
                        "audit chain intact: {} rows, anchored at row {}",
                        v.rows,
                        v.anchored.map_or("none".to_owned(), |a| a.to_string())
                    );
                }
                ExitCode::SUCCESS
            }
            Some(row) => {
                output::emit_err(&format!(
                    "hive: audit chain broken at row {row}: {}",
                    v.reason
                        .as_deref()
                        .unwrap_or("it or the row before it was changed")
                ));
                ExitCode::from(1)
            }
        });
    }
    let mut path = format!("/api/v1/audit?limit={}", args.limit);
    if let Some(a) = &args.agent {
        path.push_str(&format!("&agent={}", encode(a)));
    }
    print_listing_of(
        state,
        &path,
        args.json,
        "no audit rows",
        &["ROW", "AT (UTC)", "ACTOR", "ACTION", "AGENT", "DETAIL"],
        |e: &AuditEntry| {
            vec![
                e.id.to_string(),
                output::time_ms(e.ts),
                e.actor.clone(),
                e.action.clone(),
                e.agent.clone().unwrap_or_else(|| "-".to_owned()),
                e.detail.to_string(),
            ]
        },
    )
}
