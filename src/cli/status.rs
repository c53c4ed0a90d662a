//! `hive status` and `hive agents`.

use std::process::ExitCode;

use broker::paths::StateDir;
use proto::message::LatencySummary;
use proto::tools::TurnState;
use proto::{AgentRun, AgentView, Status};

use super::{get_answer, output, print_listing_of};

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
    let Some(s) = get_answer::<Status>(state, "/api/v1/status", args.json)? else {
        return Ok(ExitCode::SUCCESS);
    };
    outln!(
        "hive {} is running (pid {}, up {}s)",
        output::one_line(&s.version),
        s.pid,
        s.uptime_seconds
    );
    outln!("state dir:   {}", output::one_line(&s.state_dir));
    outln!(
        "store:       synchronous = {}",
        output::one_line(&s.synchronous)
    );
    outln!("agents:      {}", s.agents);
    outln!("runtime:     {}", output::one_line(&s.runtime));
    if let Some(driver) = &s.driver {
        outln!("driver:      {}", output::one_line(driver));
    }
    let m = &s.messages;
    outln!(
        "messages:    {} queued, {} in a turn, {} delivered",
        m.queued,
        m.leased,
        m.delivered
    );
    let latency = &s.delivery_latency;
    outln!("{}", latency_line("picked up", &latency.picked_up));
    outln!("{}", latency_line("delivered", &latency.delivered));
    // Agents kept stopped at start because their repo could not be reconciled.
    for f in &s.faulted {
        outln!(
            "FAULTED:     {} is kept stopped: {}",
            output::one_line(&f.agent),
            output::one_line(&f.reason)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One delivery latency of the last hour: `delivered:   p50 1.2s, p99 3.4s (57 messages, last
/// hour)`, or `none in the last hour`.
fn latency_line(label: &str, l: &LatencySummary) -> String {
    let label = format!("{label}:");
    match (l.p50_ms, l.p99_ms) {
        (Some(p50), Some(p99)) => format!(
            "{label:<12} p50 {}, p99 {} after sending ({} messages, last hour)",
            output::after(p50),
            output::after(p99),
            l.count
        ),
        _ => format!("{label:<12} none in the last hour"),
    }
}

/// A watcher axis: `yes`, `no`, or `-` while it is not known.
fn yes_no(v: Option<bool>) -> String {
    match v {
        Some(true) => "yes".into(),
        Some(false) => "no".into(),
        None => "-".into(),
    }
}

/// The HARNESS column: `paused`, else what a connected harness does (`idle`, `thinking`, …),
/// else `-`.
fn harness_column(run: &AgentRun) -> String {
    if run.paused {
        "paused".into()
    } else if run.up {
        run.turn_state.map_or("up", TurnState::as_str).to_owned()
    } else {
        "-".into()
    }
}

pub fn agents(state: &StateDir, args: AgentsArgs) -> anyhow::Result<ExitCode> {
    print_listing_of(
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
        |a: &AgentView| {
            let allowed = a.record.allowed_recipients.len();
            vec![
                a.record.name.clone(),
                a.record.kind.as_str().to_owned(),
                a.run.state.clone(),
                harness_column(&a.run),
                a.liveness.map_or("-", |l| l.as_str()).to_owned(),
                yes_no(a.axes.logged_in),
                if a.axes.crash_loop {
                    "crash loop".into()
                } else {
                    yes_no(a.axes.up_to_date)
                },
                output::time_ms(a.record.created_at),
                if allowed == 0 {
                    "anyone".into()
                } else {
                    format!("{allowed} names")
                },
            ]
        },
    )
}
