//! `hive stats AGENT`: an agent's turns — totals over a window and its last turns.

use std::process::ExitCode;

use broker::paths::StateDir;
use serde_json::Value;

use super::client::{AdminClient, encode};
use super::output;

/// How many of the window's turns the table shows (the newest).
const SHOWN_TURNS: usize = 20;

#[derive(clap::Args)]
pub struct StatsArgs {
    /// The agent
    agent: String,
    /// Only turns that finished since then: a span back from now (30m, 1h, 24h, 7d) or an RFC 3339 time
    #[arg(long)]
    since: Option<String>,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// `{"a": 2, "b": 1}` as `a 2, b 1`, most called first.
fn tools(map: &Value) -> String {
    let mut calls: Vec<(&String, u64)> = map
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k, v.as_u64().unwrap_or(0)))
        .collect();
    calls.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let shown: Vec<String> = calls.iter().map(|(k, n)| format!("{k} {n}")).collect();
    if shown.is_empty() {
        "-".into()
    } else {
        shown.join(", ")
    }
}

fn sent(s: &Value) -> String {
    format!(
        "{}/{}/{}",
        s["agent"].as_u64().unwrap_or(0),
        s["operator"].as_u64().unwrap_or(0),
        s["broadcast"].as_u64().unwrap_or(0)
    )
}

fn cost(v: &Value) -> String {
    format!("${:.4}", v.as_f64().unwrap_or(0.0))
}

pub fn stats(state: &StateDir, args: StatsArgs) -> anyhow::Result<ExitCode> {
    let mut path = format!("/api/v1/agents/{}/stats", encode(&args.agent));
    if let Some(since) = &args.since {
        path.push_str(&format!("?since={}", encode(since)));
    }
    let s = super::client_runtime()?.block_on(AdminClient::new(state).get(&path))?;
    if args.json {
        output::json(&s);
        return Ok(ExitCode::SUCCESS);
    }
    let t = &s["totals"];
    outln!("agent:        {}", output::field(&s["agent"], "?"));
    outln!("inbox depth:  {}", s["inbox_depth"].as_u64().unwrap_or(0));
    outln!("last turn:    {}", output::time(&s["last_turn_at"]));
    if let Some(since) = s["since"].as_i64() {
        outln!("since:        {}", output::time(&Value::from(since)));
    }
    outln!("turns:        {}", t["turns"].as_u64().unwrap_or(0));
    outln!(
        "tokens:       {} in, {} out",
        t["input_tokens"].as_u64().unwrap_or(0),
        t["output_tokens"].as_u64().unwrap_or(0)
    );
    outln!("cost:         {}", cost(&t["cost_usd"]));
    outln!(
        "time:         {} ms",
        t["duration_ms"].as_u64().unwrap_or(0)
    );
    outln!(
        "tool calls:   {}",
        output::one_line(&tools(&t["tool_calls"]))
    );
    outln!(
        "sent:         {} (agent/operator/broadcast)",
        sent(&t["sent"])
    );
    let turns = s["turns"].as_array().cloned().unwrap_or_default();
    if turns.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    outln!();
    let rows: Vec<Vec<String>> = turns
        .iter()
        .rev()
        .take(SHOWN_TURNS)
        .rev()
        .map(|turn| {
            vec![
                turn["turn"].to_string(),
                output::time(&turn["finished_at"]),
                turn["duration_ms"].to_string(),
                format!("{}/{}", turn["input_tokens"], turn["output_tokens"]),
                cost(&turn["cost_usd"]),
                sent(&turn["sent"]),
                output::field(&turn["outcome"], "?").into_owned(),
                tools(&turn["tool_calls"]),
            ]
        })
        .collect();
    output::table(
        &[
            "TURN",
            "FINISHED",
            "MS",
            "TOKENS IN/OUT",
            "COST",
            "SENT A/O/B",
            "OUTCOME",
            "TOOLS",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}
