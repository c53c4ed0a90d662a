//! `hive stats AGENT`: an agent's turns — totals over a window and its last turns.

use std::collections::BTreeMap;
use std::process::ExitCode;

use broker::paths::StateDir;
use proto::stats::{AgentStats, Sent};

use super::client::encode;
use super::{get_answer, output};

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
fn tools(map: &BTreeMap<String, u64>) -> String {
    let mut calls: Vec<(&String, u64)> = map.iter().map(|(k, n)| (k, *n)).collect();
    calls.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let shown: Vec<String> = calls.iter().map(|(k, n)| format!("{k} {n}")).collect();
    if shown.is_empty() {
        "-".into()
    } else {
        shown.join(", ")
    }
}

fn sent(s: &Sent) -> String {
    format!("{}/{}/{}", s.agent, s.operator, s.broadcast)
}

fn cost(usd: f64) -> String {
    format!("${usd:.4}")
}

pub fn stats(state: &StateDir, args: StatsArgs) -> anyhow::Result<ExitCode> {
    let mut path = format!("/api/v1/agents/{}/stats", encode(&args.agent));
    if let Some(since) = &args.since {
        path.push_str(&format!("?since={}", encode(since)));
    }
    let Some(s) = get_answer::<AgentStats>(state, &path, args.json)? else {
        return Ok(ExitCode::SUCCESS);
    };
    let t = &s.totals;
    outln!("agent:        {}", output::one_line(&s.agent));
    outln!("inbox depth:  {}", s.inbox_depth);
    outln!(
        "last turn:    {}",
        s.last_turn_at.map_or("-".to_owned(), output::time_ms)
    );
    if let Some(since) = s.since {
        outln!("since:        {}", output::time_ms(since));
    }
    outln!("turns:        {}", t.turns);
    outln!(
        "tokens:       {} in, {} out",
        t.input_tokens,
        t.output_tokens
    );
    outln!("cost:         {}", cost(t.cost_usd));
    outln!("time:         {} ms", t.duration_ms);
    outln!("tool calls:   {}", output::one_line(&tools(&t.tool_calls)));
    outln!("sent:         {} (agent/operator/broadcast)", sent(&t.sent));
    if s.turns.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    outln!();
    let shown = &s.turns[s.turns.len().saturating_sub(SHOWN_TURNS)..];
    let rows: Vec<Vec<String>> = shown
        .iter()
        .map(|turn| {
            vec![
                turn.turn.to_string(),
                output::time_ms(turn.finished_at),
                turn.duration_ms.to_string(),
                format!("{}/{}", turn.input_tokens, turn.output_tokens),
                cost(turn.cost_usd),
                sent(&turn.sent),
                output::one_line(&turn.outcome).into_owned(),
                tools(&turn.tool_calls),
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
