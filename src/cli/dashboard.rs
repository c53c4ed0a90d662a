//! `hive dashboard`: prints the dashboard's URL and a one-time login link (minted by the daemon
//! over the admin socket, valid for a few minutes, usable once).

use std::process::ExitCode;

use broker::paths::StateDir;
use proto::dashboard::DashboardLink;
use serde_json::json;

#[derive(clap::Args)]
pub struct DashboardArgs {
    /// Print JSON
    #[arg(long)]
    json: bool,
}

pub fn dashboard(state: &StateDir, args: DashboardArgs) -> anyhow::Result<ExitCode> {
    super::post_action_of(
        state,
        "/api/v1/dashboard/link",
        &json!({}),
        args.json,
        |link: &DashboardLink| {
            outln!("dashboard:  {}", super::output::one_line(&link.url));
            outln!("log in:     {}", super::output::one_line(&link.login_link));
            outln!(
                "(the link works once, within {} s)",
                link.expires_in_seconds
            );
        },
    )
}
