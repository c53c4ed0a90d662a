//! Per-turn stats: what one finished turn used and did (tokens, cost, time, tool calls by tool,
//! messages sent by kind of recipient), computed once when the turn finishes — in the
//! finishing transaction — into `turn_stats`, and read back per agent with its inbox depth.
//!
//! The tool names come from the turn's stored events, which the agent's model wrote: they are
//! hostile text, bounded here (name length, names per turn) and never interpreted. Never writes
//! anything but `turn_stats`. The reads are a service ([`StatsReader`]) built in `Hive::open`
//! holding its own store and registry handles; `Hive` delegates to it. The write ([`record`]) runs
//! inside the mailbox's `finish_turn` transaction.

use std::collections::BTreeMap;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};

use crate::names::AgentName;
use crate::registry::Registry;
use crate::store::{Store, unix_millis};
use crate::{Error, Result};

/// The longest tool name kept (longer ones are cut): names come from the model.
const MAX_TOOL_NAME: i64 = 64;
/// The most distinct tool names kept per turn (the most called ones).
const MAX_TOOLS_PER_TURN: i64 = 64;
/// The most turns one read returns (the newest); totals still cover the whole window.
pub const MAX_TURNS: usize = 1000;

/// Tool calls of turn `?1`: `tool_use` blocks of claude's assistant events and `tool_calls` of
/// the openai driver's. `b.type = 'object'` keeps `json_extract` off non-JSON text.
const TOOL_CALLS: &str = "
    SELECT name, count(*) FROM (
        SELECT substr(coalesce(json_extract(b.value, '$.name'), '?'), 1, ?2) AS name
          FROM turn_events e, json_each(e.data, '$.message.content') b
         WHERE e.turn = ?1 AND e.kind = 'assistant' AND b.type = 'object'
           AND json_extract(b.value, '$.type') = 'tool_use'
        UNION ALL
        SELECT substr(coalesce(json_extract(b.value, '$.function.name'), '?'), 1, ?2)
          FROM turn_events e, json_each(e.data, '$.message.tool_calls') b
         WHERE e.turn = ?1 AND e.kind = 'assistant' AND b.type = 'object'
    ) GROUP BY name ORDER BY count(*) DESC, name LIMIT ?3";

/// One turn's stats, their totals over a window, an agent's stats (the API's answer).
pub use proto::stats::{AgentStats, Sent, Totals, TurnStats};

/// Computes and stores the stats of `turn`, which the caller has just marked finished in the same
/// transaction.
pub(crate) fn record(c: &Connection, turn: i64) -> Result<()> {
    let row = c
        .prepare_cached(
            "SELECT agent, incarnation, started_at, finished_at, coalesce(outcome, ''), usage,
                    coalesce(sent_after, message_id)
             FROM turns WHERE id = ?1 AND finished_at IS NOT NULL",
        )?
        .query_row([turn], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<i64>>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, Option<String>>(5)?,
                r.get::<_, i64>(6)?,
            ))
        })
        .optional()?;
    let Some((agent, incarnation, started_at, finished_at, outcome, usage, sent_after)) = row
    else {
        return Err(Error::Internal(format!(
            "turn {turn} is not finished: no stats"
        )));
    };
    let usage: proto::Usage = usage
        .and_then(|u| serde_json::from_str(&u).ok())
        .unwrap_or_default();
    let tools: BTreeMap<String, u64> = c
        .prepare_cached(TOOL_CALLS)?
        .query_map(params![turn, MAX_TOOL_NAME, MAX_TOOLS_PER_TURN], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })?
        .collect::<Result<_, _>>()?;
    let (to_agent, to_operator, broadcast): (i64, i64, i64) = c
        .prepare_cached(
            "SELECT coalesce(sum(broadcast = 0 AND recipient <> 'operator'), 0),
                    coalesce(sum(recipient = 'operator'), 0),
                    count(DISTINCT nullif(broadcast, 0))
             FROM messages WHERE id > ?1 AND sender = ?2",
        )?
        .query_row(params![sent_after, agent], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    let duration_ms = usage
        .duration_ms
        .map_or((finished_at - started_at).max(0), |d| d as i64);
    c.prepare_cached(
        "INSERT OR REPLACE INTO turn_stats (turn, agent, incarnation, started_at, finished_at,
             duration_ms, input_tokens, output_tokens, cost_usd, tool_calls, sent_agent,
             sent_operator, sent_broadcast, outcome)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?
    .execute(params![
        turn,
        agent,
        incarnation,
        started_at,
        finished_at,
        duration_ms,
        usage.input_tokens.unwrap_or(0) as i64,
        usage.output_tokens.unwrap_or(0) as i64,
        usage.cost_usd.filter(|c| c.is_finite()).unwrap_or(0.0),
        serde_json::to_string(&tools).map_err(|e| Error::Internal(e.to_string()))?,
        to_agent,
        to_operator,
        broadcast,
        outcome,
    ])?;
    Ok(())
}

/// Reads `since`: an RFC 3339 time or a span back from `now` (`90s`, `30m`, `1h`, `24h`, `7d`).
/// Returns Unix milliseconds.
pub fn parse_since(raw: &str, now: i64) -> Result<i64> {
    let bad = || {
        Error::invalid(
            "since",
            format!(
                "'{raw}' is neither an RFC 3339 time (2026-01-31T12:00:00Z) nor a span back from now (30m, 1h, 24h, 7d)"
            ),
        )
    };
    if let Ok(at) = raw.parse::<jiff::Timestamp>() {
        return Ok(at.as_millisecond());
    }
    let unit_at = raw.find(|ch: char| !ch.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = raw.split_at(unit_at);
    let n: i64 = n.parse().map_err(|_| bad())?;
    let unit_ms: i64 = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    n.checked_mul(unit_ms)
        .and_then(|back| now.checked_sub(back))
        .ok_or_else(bad)
}

fn sent_of(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Sent> {
    Ok(Sent {
        agent: r.get::<_, i64>(first)? as u64,
        operator: r.get::<_, i64>(first + 1)? as u64,
        broadcast: r.get::<_, i64>(first + 2)? as u64,
    })
}

/// The stats service: reads an agent's `turn_stats`.
pub struct StatsReader {
    store: Store,
    registry: Arc<Registry>,
}

impl StatsReader {
    pub(crate) fn new(store: Store, registry: Arc<Registry>) -> Self {
        Self { store, registry }
    }

    /// `agent`'s stats: its current incarnation's turns that finished at or after `since`
    /// (RFC 3339 or a span such as `24h`; all of them when absent).
    pub async fn of(&self, agent: &AgentName, since: Option<&str>) -> Result<AgentStats> {
        let now = unix_millis();
        let since = since.map(|raw| parse_since(raw, now)).transpose()?;
        let record = self.registry.require(agent)?;
        let key = agent.to_string();
        let incarnation = record.incarnation;
        let from = since.unwrap_or(i64::MIN);
        self.store
            .read(move |c| {
                let inbox_depth: i64 = c
                    .prepare_cached(
                        "SELECT coalesce(sum(n), 0) FROM message_counts
                         WHERE recipient = ?1 AND incarnation = ?2 AND state = 'queued'",
                    )?
                    .query_row(params![key, incarnation], |r| r.get(0))?;
                let last_turn_at: Option<i64> = c
                    .prepare_cached(
                        "SELECT max(finished_at) FROM turn_stats
                         WHERE agent = ?1 AND incarnation = ?2",
                    )?
                    .query_row(params![key, incarnation], |r| r.get(0))?;
                let mut turns = c
                    .prepare_cached(
                        "SELECT turn, started_at, finished_at, duration_ms, input_tokens,
                                output_tokens, cost_usd, tool_calls, sent_agent, sent_operator,
                                sent_broadcast, outcome
                         FROM turn_stats WHERE agent = ?1 AND incarnation = ?2 AND finished_at >= ?3
                         ORDER BY finished_at DESC, turn DESC LIMIT ?4",
                    )?
                    .query_map(params![key, incarnation, from, MAX_TURNS as i64], |r| {
                        let tools: String = r.get(7)?;
                        Ok(TurnStats {
                            turn: r.get(0)?,
                            started_at: r.get(1)?,
                            finished_at: r.get(2)?,
                            duration_ms: r.get::<_, i64>(3)? as u64,
                            input_tokens: r.get::<_, i64>(4)? as u64,
                            output_tokens: r.get::<_, i64>(5)? as u64,
                            cost_usd: r.get(6)?,
                            tool_calls: serde_json::from_str(&tools).unwrap_or_default(),
                            sent: sent_of(r, 8)?,
                            outcome: r.get(11)?,
                        })
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                turns.reverse();
                let mut totals = c
                    .prepare_cached(
                        "SELECT count(*), coalesce(sum(duration_ms), 0),
                                coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0),
                                coalesce(sum(cost_usd), 0.0), coalesce(sum(sent_agent), 0),
                                coalesce(sum(sent_operator), 0), coalesce(sum(sent_broadcast), 0)
                         FROM turn_stats WHERE agent = ?1 AND incarnation = ?2 AND finished_at >= ?3",
                    )?
                    .query_row(params![key, incarnation, from], |r| {
                        Ok(Totals {
                            turns: r.get::<_, i64>(0)? as u64,
                            duration_ms: r.get::<_, i64>(1)? as u64,
                            input_tokens: r.get::<_, i64>(2)? as u64,
                            output_tokens: r.get::<_, i64>(3)? as u64,
                            cost_usd: r.get(4)?,
                            tool_calls: BTreeMap::new(),
                            sent: sent_of(r, 5)?,
                        })
                    })?;
                totals.tool_calls = c
                    .prepare_cached(
                        "SELECT j.key, sum(j.value) FROM turn_stats s, json_each(s.tool_calls) j
                         WHERE s.agent = ?1 AND s.incarnation = ?2 AND s.finished_at >= ?3
                         GROUP BY j.key",
                    )?
                    .query_map(params![key, incarnation, from], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
                    })?
                    .collect::<Result<_, _>>()?;
                Ok(AgentStats {
                    agent: key,
                    incarnation,
                    inbox_depth: inbox_depth as u64,
                    last_turn_at,
                    since_last_turn_ms: last_turn_at.map(|at| (now - at).max(0)),
                    since,
                    turns,
                    totals,
                })
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_reads_spans_and_rfc3339_and_names_the_field_otherwise() {
        let now = 10 * 86_400_000;
        assert_eq!(parse_since("1h", now).unwrap(), now - 3_600_000);
        assert_eq!(parse_since("7d", now).unwrap(), now - 7 * 86_400_000);
        assert_eq!(parse_since("1970-01-01T00:00:01Z", now).unwrap(), 1000);
        for bad in [
            "",
            "h",
            "1",
            "1y",
            "-1h",
            "1h1",
            "yesterday",
            "99999999999999999999d",
        ] {
            let e = parse_since(bad, now).unwrap_err();
            assert_eq!(e.code(), "invalid_argument", "{bad}");
            assert!(e.to_string().contains("since"), "{bad}: {e}");
        }
    }
}
