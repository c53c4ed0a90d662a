//! `hive start`, `stop`, `restart`, `update`, `logs`, `show-agent` and `gc`: agents' containers.

use std::process::ExitCode;

use broker::paths::StateDir;
use proto::{AgentDetail, AgentLog, GcReport, LogText, Outcome, RuntimeKind, StreamEvent};
use serde_json::json;

use super::client::{AdminClient, encode};
use super::{get_answer, output, post_action_of};

#[derive(clap::Args)]
pub struct AgentArgs {
    /// The agent
    name: String,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct LogsArgs {
    /// The agent whose container log to print
    name: String,
    /// How many of the last lines (at most 10000 are printed)
    #[arg(long, short = 'n', default_value_t = 100)]
    lines: usize,
    /// Keep printing lines as the container writes them, until Ctrl-C or the hive stops
    #[arg(long, short = 'f')]
    follow: bool,
}

#[derive(clap::Args)]
pub struct GcArgs {
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// Prints what a lifecycle action did: `<name>: <result> (<state>, harness up|not connected)`.
fn print_outcome(name: &str, o: &Outcome) {
    let up = if o.run.up {
        "harness connected"
    } else {
        "harness not connected"
    };
    outln!(
        "{}: {} ({}, {up})",
        output::one_line(name),
        output::one_line(&o.result),
        output::one_line(&o.run.state),
    );
    if let Some(d) = &o.deploy {
        output::deploy(d);
    }
}

fn action(state: &StateDir, args: AgentArgs, verb: &str) -> anyhow::Result<ExitCode> {
    let path = format!("/api/v1/agents/{}/{verb}", encode(&args.name));
    let name = args.name.clone();
    post_action_of(state, &path, &json!({}), args.json, |o: &Outcome| {
        print_outcome(&name, o)
    })
}

pub fn start(state: &StateDir, args: AgentArgs) -> anyhow::Result<ExitCode> {
    action(state, args, "start")
}

pub fn stop(state: &StateDir, args: AgentArgs) -> anyhow::Result<ExitCode> {
    action(state, args, "stop")
}

pub fn pause(state: &StateDir, args: AgentArgs) -> anyhow::Result<ExitCode> {
    action(state, args, "pause")
}

pub fn recheck(state: &StateDir, args: AgentArgs) -> anyhow::Result<ExitCode> {
    action(state, args, "recheck")
}

pub fn resume(state: &StateDir, args: AgentArgs) -> anyhow::Result<ExitCode> {
    action(state, args, "resume")
}

pub fn restart(state: &StateDir, args: AgentArgs) -> anyhow::Result<ExitCode> {
    action(state, args, "restart")
}

pub fn update(state: &StateDir, args: AgentArgs) -> anyhow::Result<ExitCode> {
    action(state, args, "update")
}

pub fn logs(state: &StateDir, args: LogsArgs) -> anyhow::Result<ExitCode> {
    let path = format!(
        "/api/v1/agents/{}/logs?lines={}",
        encode(&args.name),
        args.lines
    );
    if args.follow {
        super::client_runtime()?.block_on(AdminClient::new(state).follow(
            &format!("{path}&follow=1"),
            |followed| {
                if let StreamEvent::Log(LogText { text }) = followed.event {
                    for line in text.lines() {
                        outln!("{line}");
                    }
                }
            },
        ))?;
        return Ok(ExitCode::SUCCESS);
    }
    let Some(log) = get_answer::<AgentLog>(state, &path, false)? else {
        return Ok(ExitCode::SUCCESS);
    };
    // Line by line: each is escaped (a container can print anything), the newlines kept.
    for line in log.log.lines() {
        outln!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn show_agent(state: &StateDir, args: AgentArgs) -> anyhow::Result<ExitCode> {
    let path = format!("/api/v1/agents/{}", encode(&args.name));
    let Some(a) = get_answer::<AgentDetail>(state, &path, args.json)? else {
        return Ok(ExitCode::SUCCESS);
    };
    let run = &a.run;
    outln!("agent:       {}", output::one_line(&a.record.name));
    outln!("kind:        {}", a.record.kind.as_str());
    outln!("runtime:     {}", a.runtime.map_or("none", runtime_name));
    outln!("state:       {}", output::one_line(&run.state));
    outln!(
        "harness:     {}",
        if run.up { "connected" } else { "not connected" }
    );
    if let Some(pid) = run.pid {
        outln!("pid:         {pid}");
    }
    if let Some(deploy) = run.deploy {
        outln!(
            "deploy:      {deploy} (commit {})",
            output::one_line(run.commit.as_deref().unwrap_or("?"))
        );
    }
    if let Some(exited) = &run.exited {
        outln!("last exit:   {}", output::one_line(exited));
    }
    if let Some(driver) = &run.driver {
        outln!("driver:      {}", output::one_line(driver));
    }
    if let Some(iso) = &a.isolation {
        outln!("isolation (read from the kernel):");
        outln!(
            "  isolated:        {}",
            if iso.isolated {
                "yes"
            } else {
                "NO (process runtime)"
            }
        );
        let show = |label: &str, v: Option<String>| {
            if let Some(text) = v {
                outln!("  {label:<16} {}", output::one_line(&text));
            }
        };
        show("uid_map:", iso.uid_map.clone());
        show(
            "network links:",
            iso.net_links.as_ref().map(|l| l.join(", ")),
        );
        show("read-only root:", iso.read_only_root.map(|r| r.to_string()));
        show(
            "memory max:",
            iso.memory_max_bytes
                .map(|b| format!("{} MiB", b / (1024 * 1024))),
        );
        show("pids max:", iso.pids_max.map(|n| n.to_string()));
        show("cpu weight:", iso.cpu_weight.map(|n| n.to_string()));
    } else if let Some(why) = &a.isolation_error {
        outln!("isolation:   {}", output::one_line(why));
    }
    if let Some(c) = &a.confinement {
        outln!("confinement:");
        outln!("  network:         {}", output::one_line(&c.network));
        outln!(
            "  egress:          {}",
            output::one_line(&if c.egress.is_empty() {
                "none".to_owned()
            } else {
                c.egress.join(", ")
            })
        );
        outln!("  egress denied:   {}", c.egress_denied);
        match c.tokens_per_day {
            Some(limit) => outln!("  tokens today:    {} of {limit}", c.tokens_today),
            None => outln!("  tokens today:    {} (no budget)", c.tokens_today),
        }
        let key = match c.key_inside {
            Some(false) => format!(
                "no (searched {} files and the environments)",
                c.files_searched
            ),
            Some(true) => "YES".to_owned(),
            None => "not checked".to_owned(),
        };
        outln!("  key inside:      {key}");
        for w in &c.warnings {
            outln!("  WARNING:         {}", output::one_line(w));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `[runtime] kind` as hive.toml spells it.
fn runtime_name(kind: RuntimeKind) -> &'static str {
    match kind {
        RuntimeKind::Nspawn => "nspawn",
        RuntimeKind::Process => "process",
        RuntimeKind::Off => "none",
    }
}

pub fn gc(state: &StateDir, args: GcArgs) -> anyhow::Result<ExitCode> {
    post_action_of(
        state,
        "/api/v1/gc",
        &json!({}),
        args.json,
        |r: &GcReport| {
            outln!(
                "removed {} old image(s); kept the running and the previous deploy of each agent",
                r.removed
            );
        },
    )
}
