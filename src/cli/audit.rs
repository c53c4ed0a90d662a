//! `hive audit` and `hive audit verify`.

use std::process::ExitCode;

use broker::paths::StateDir;
use clap::Subcommand;

use super::client::{AdminClient, encode};
use super::{output, print_listing};

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
        let v = rt.block_on(client.get("/api/v1/audit/verify"))?;
        if args.json {
            output::json(&v);
        }
        return Ok(match v["first_broken"].as_i64() {
            None => {
                if !args.json {
                    outln!(
                        "audit chain intact: {} rows, anchored at row {}",
                        v["rows"],
                        v["anchored"]
                    );
                }
                ExitCode::SUCCESS
            }
            Some(row) => {
                output::emit_err(&format!(
                    "hive: audit chain broken at row {row}: {}",
                    v["reason"]
                        .as_str()
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
    print_listing(
        state,
        &path,
        args.json,
        "no audit rows",
        &["ROW", "AT (UTC)", "ACTOR", "ACTION", "AGENT", "DETAIL"],
        |e| {
            vec![
                e["id"].to_string(),
                output::time(&e["ts"]),
                e["actor"].as_str().unwrap_or("?").to_owned(),
                e["action"].as_str().unwrap_or("?").to_owned(),
                e["agent"].as_str().unwrap_or("-").to_owned(),
                e["detail"].to_string(),
            ]
        },
    )
}
