//! `hive status` and `hive agents`.

use std::process::ExitCode;

use broker::paths::StateDir;

use super::client::AdminClient;
use super::{output, print_listing};

#[derive(clap::Args)]
pub struct StatusArgs {
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct AgentsArgs {
    /// Print JSON
    #[arg(long)]
    json: bool,
}

pub fn status(state: &StateDir, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let s = super::client_runtime()?.block_on(AdminClient::new(state).get("/api/v1/status"))?;
    if args.json {
        output::json(&s);
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "hive {} is running (pid {}, up {}s)",
        output::field(&s["version"], "?"),
        s["pid"],
        s["uptime_seconds"]
    );
    outln!("state dir:   {}", output::field(&s["state_dir"], "?"));
    outln!(
        "store:       synchronous = {}",
        output::field(&s["synchronous"], "?")
    );
    outln!("agents:      {}", s["agents"]);
    outln!("runtime:     {}", output::field(&s["runtime"], "?"));
    if let Some(driver) = s["driver"].as_str() {
        outln!("driver:      {}", output::one_line(driver));
    }
    let m = &s["messages"];
    outln!(
        "messages:    {} queued, {} in a turn, {} delivered",
        m["queued"],
        m["leased"],
        m["delivered"]
    );
    let latency = &s["delivery_latency"];
    for (label, key) in [("picked up", "picked_up"), ("delivered", "delivered")] {
        outln!("{}", latency_line(label, &latency[key]));
    }
    // Agents kept stopped at start because their repo could not be reconciled.
    for f in s["faulted"].as_array().into_iter().flatten() {
        outln!(
            "FAULTED:     {} is kept stopped: {}",
            output::field(&f["agent"], "?"),
            output::field(&f["reason"], "?")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One delivery latency of the last hour: `delivered:   p50 1.2s, p99 3.4s (57 messages, last
/// hour)`, or `none in the last hour`.
fn latency_line(label: &str, l: &serde_json::Value) -> String {
    let label = format!("{label}:");
    match (l["p50_ms"].as_i64(), l["p99_ms"].as_i64()) {
        (Some(p50), Some(p99)) => format!(
            "{label:<12} p50 {}, p99 {} after sending ({} messages, last hour)",
            output::after(p50),
            output::after(p99),
            l["count"]
        ),
        _ => format!("{label:<12} none in the last hour"),
    }
}

/// A watcher axis: `yes`, `no`, or `-` while it is not known.
fn yes_no(v: &serde_json::Value) -> String {
    match v.as_bool() {
        Some(true) => "yes".into(),
        Some(false) => "no".into(),
        None => "-".into(),
    }
}

/// The HARNESS column: `paused`, else what a connected harness does (`idle`, `thinking`, …),
/// else `-`.
fn harness_column(run: &serde_json::Value) -> String {
    if run["paused"].as_bool() == Some(true) {
        "paused".into()
    } else if run["up"].as_bool() == Some(true) {
        run["turn_state"].as_str().unwrap_or("up").to_owned()
    } else {
        "-".into()
    }
}

pub fn agents(state: &StateDir, args: AgentsArgs) -> anyhow::Result<ExitCode> {
    print_listing(
        state,
        "/api/v1/agents",
        args.json,
        "no agents",
        &[
            "NAME",
            "KIND",
            "STATE",
            "HARNESS",
            "LIVENESS",
            "LOGGED IN",
            "UP TO DATE",
            "CREATED (UTC)",
            "MAY WRITE TO",
        ],
        |a| {
            let allowed = a["allowed_recipients"].as_array().map_or(0, Vec::len);
            vec![
                a["name"].as_str().unwrap_or("?").to_owned(),
                a["kind"].as_str().unwrap_or("?").to_owned(),
                a["run"]["state"].as_str().unwrap_or("?").to_owned(),
                harness_column(&a["run"]),
                a["liveness"].as_str().unwrap_or("-").to_owned(),
                yes_no(&a["axes"]["logged_in"]),
                if a["axes"]["crash_loop"].as_bool() == Some(true) {
                    "crash loop".into()
                } else {
                    yes_no(&a["axes"]["up_to_date"])
                },
                output::time(&a["created_at"]),
                if allowed == 0 {
                    "anyone".into()
                } else {
                    format!("{allowed} names")
                },
            ]
        },
    )
}
