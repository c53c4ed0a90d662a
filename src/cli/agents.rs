//! `hive start`, `stop`, `restart`, `update`, `logs`, `show-agent` and `gc`: agents' containers.

use std::process::ExitCode;

use broker::paths::StateDir;
use serde::Deserialize;
use serde_json::{Value, json};

use super::client::{AdminClient, encode};
use super::{output, post_action};

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
fn print_outcome(name: &str, o: &Value) {
    let run = &o["run"];
    let up = if run["up"].as_bool() == Some(true) {
        "harness connected"
    } else {
        "harness not connected"
    };
    outln!(
        "{}: {} ({}, {up})",
        output::one_line(name),
        output::field(&o["result"], "?"),
        output::field(&run["state"], "?"),
    );
    match Option::<proto::Deploy>::deserialize(&o["deploy"]) {
        Ok(Some(d)) => output::deploy(&d),
        Ok(None) => {}
        Err(e) => output::emit_err(&format!(
            "hive: the deploy in the answer does not read as one ({e}); are the CLI and the \
             daemon the same version?"
        )),
    }
}

fn action(state: &StateDir, args: AgentArgs, verb: &str) -> anyhow::Result<ExitCode> {
    let path = format!("/api/v1/agents/{}/{verb}", encode(&args.name));
    let name = args.name.clone();
    post_action(state, &path, &json!({}), args.json, |o| {
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
            |_, event| {
                for line in event["text"].as_str().unwrap_or("").lines() {
                    outln!("{line}");
                }
            },
        ))?;
        return Ok(ExitCode::SUCCESS);
    }
    let log = super::client_runtime()?.block_on(AdminClient::new(state).get(&path))?;
    // Line by line: each is escaped (a container can print anything), the newlines kept.
    for line in log["log"].as_str().unwrap_or("").lines() {
        outln!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn show_agent(state: &StateDir, args: AgentArgs) -> anyhow::Result<ExitCode> {
    let path = format!("/api/v1/agents/{}", encode(&args.name));
    let a = super::client_runtime()?.block_on(AdminClient::new(state).get(&path))?;
    if args.json {
        output::json(&a);
        return Ok(ExitCode::SUCCESS);
    }
    let run = &a["run"];
    outln!("agent:       {}", output::field(&a["name"], "?"));
    outln!("kind:        {}", output::field(&a["kind"], "?"));
    outln!("runtime:     {}", output::field(&a["runtime"], "none"));
    outln!("state:       {}", output::field(&run["state"], "?"));
    outln!(
        "harness:     {}",
        if run["up"].as_bool() == Some(true) {
            "connected"
        } else {
            "not connected"
        }
    );
    if let Some(pid) = run["pid"].as_u64() {
        outln!("pid:         {pid}");
    }
    if run["deploy"].is_number() {
        outln!(
            "deploy:      {} (commit {})",
            run["deploy"],
            output::field(&run["commit"], "?")
        );
    }
    if let Some(exited) = run["exited"].as_str() {
        outln!("last exit:   {}", output::one_line(exited));
    }
    if let Some(driver) = run["driver"].as_str() {
        outln!("driver:      {}", output::one_line(driver));
    }
    let iso = &a["isolation"];
    if iso.is_object() {
        outln!("isolation (read from the kernel):");
        outln!(
            "  isolated:        {}",
            if iso["isolated"].as_bool() == Some(true) {
                "yes"
            } else {
                "NO (process runtime)"
            }
        );
        let show = |label: &str, v: &Value| {
            if !v.is_null() {
                let text = match v {
                    Value::String(s) => s.clone(),
                    Value::Array(items) => items
                        .iter()
                        .map(|i| i.as_str().unwrap_or("?").to_owned())
                        .collect::<Vec<_>>()
                        .join(", "),
                    other => other.to_string(),
                };
                outln!("  {label:<16} {}", output::one_line(&text));
            }
        };
        show("uid_map:", &iso["uid_map"]);
        show("network links:", &iso["net_links"]);
        show("read-only root:", &iso["read_only_root"]);
        let mib = iso["memory_max_bytes"]
            .as_u64()
            .map(|b| Value::from(format!("{} MiB", b / (1024 * 1024))));
        show("memory max:", mib.as_ref().unwrap_or(&Value::Null));
        show("pids max:", &iso["pids_max"]);
        show("cpu weight:", &iso["cpu_weight"]);
    } else if let Some(why) = a["isolation_error"].as_str() {
        outln!("isolation:   {}", output::one_line(why));
    }
    let c = &a["confinement"];
    if c.is_object() {
        outln!("confinement:");
        outln!("  network:         {}", output::field(&c["network"], "?"));
        let egress: Vec<&str> = c["egress"]
            .as_array()
            .map(|e| e.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        outln!(
            "  egress:          {}",
            output::one_line(&if egress.is_empty() {
                "none".to_owned()
            } else {
                egress.join(", ")
            })
        );
        outln!("  egress denied:   {}", c["egress_denied"]);
        match c["tokens_per_day"].as_u64() {
            Some(limit) => outln!("  tokens today:    {} of {limit}", c["tokens_today"]),
            None => outln!("  tokens today:    {} (no budget)", c["tokens_today"]),
        }
        let key = match c["key_inside"].as_bool() {
            Some(false) => format!(
                "no (searched {} files and the environments)",
                c["files_searched"]
            ),
            Some(true) => "YES".to_owned(),
            None => "not checked".to_owned(),
        };
        outln!("  key inside:      {key}");
        for w in c["warnings"].as_array().into_iter().flatten() {
            if let Some(w) = w.as_str() {
                outln!("  WARNING:         {}", output::one_line(w));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn gc(state: &StateDir, args: GcArgs) -> anyhow::Result<ExitCode> {
    post_action(state, "/api/v1/gc", &json!({}), args.json, |r| {
        outln!(
            "removed {} old image(s); kept the running and the previous deploy of each agent",
            r["removed"]
        );
    })
}
