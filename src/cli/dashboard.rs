//! `hive dashboard`: prints the dashboard's URL and a one-time login link (minted by the daemon
//! over the admin socket, valid for a few minutes, usable once).

use std::process::ExitCode;

use broker::paths::StateDir;
use serde_json::json;

#[derive(clap::Args)]
pub struct DashboardArgs {
    /// Print JSON
    #[arg(long)]
    json: bool,
}

pub fn dashboard(state: &StateDir, args: DashboardArgs) -> anyhow::Result<ExitCode> {
    super::post_action(
        state,
        "/api/v1/dashboard/link",
        &json!({}),
        args.json,
        |answer| {
            outln!("dashboard:  {}", super::output::field(&answer["url"], "?"));
            outln!(
                "log in:     {}",
                super::output::field(&answer["login_link"], "?")
            );
            outln!(
                "(the link works once, within {} s)",
                answer["expires_in_seconds"]
            );
        },
    )
}
