//! Model calls (DESIGN §16): what each call the gateway forwards used — the usage its answer
//! reports, read from the answer as it passes through (never held back from the agent) — stored
//! one row a call in `model_calls`, and each agent's daily token budget
//! (`hyperhive.budget.tokensPerDay` of its deployed image), checked before a call is forwarded.
//!
//! It owns the usage scanner, the per-agent day counters and the table; it keeps no more of an
//! answer than the line being scanned (a JSON answer: up to [`MAX_JSON_SCANNED`]), and never
//! stores or logs content.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::params;
use serde::Serialize;
use serde_json::Value;

use crate::error::Result;
use crate::names::AgentName;
use crate::store::{Store, unix_millis};

/// The longest SSE line scanned for usage; a longer one (a huge text delta) is skipped.
const MAX_LINE_SCANNED: usize = 1024 * 1024;
/// The largest non-streamed JSON answer scanned for usage.
pub const MAX_JSON_SCANNED: usize = 4 * 1024 * 1024;
const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// What one call used, as its answer said.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub model: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_creation_tokens: u64,
}

impl Usage {
    /// What it cost at `price` (USD per million tokens).
    pub fn cost_usd(&self, price: &crate::config::Price) -> f64 {
        let per = |n: u64, p: f64| n as f64 * p / 1_000_000.0;
        per(self.input_tokens, price.input)
            + per(self.output_tokens, price.output)
            + per(
                self.cache_read_tokens,
                price.cache_read.unwrap_or(price.input),
            )
            + per(
                self.cache_creation_tokens,
                price.cache_write.unwrap_or(price.input),
            )
    }

    /// Every token the model read or wrote: what the daily budget counts.
    pub fn tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_creation_tokens
    }

    /// Takes what `object` (an SSE event's data or a whole answer) reports: Anthropic's `usage`
    /// (top level or in `message_start`'s `message`), OpenAI's `usage` with `prompt_tokens` and
    /// `completion_tokens`. Counts are cumulative within an answer, so the largest seen wins.
    fn merge(&mut self, object: &Value) {
        let inner = object.get("message").filter(|m| m.is_object());
        for holder in [Some(object), inner].into_iter().flatten() {
            if let Some(model) = holder.get("model").and_then(Value::as_str)
                && self.model.is_none()
            {
                self.model = Some(model.chars().take(200).collect());
            }
            let Some(usage) = holder.get("usage").filter(|u| u.is_object()) else {
                continue;
            };
            let count = |names: &[&str]| {
                names
                    .iter()
                    .filter_map(|n| usage.get(*n).and_then(Value::as_u64))
                    .max()
                    .unwrap_or(0)
            };
            let up = |field: &mut u64, n: u64| *field = (*field).max(n);
            up(
                &mut self.input_tokens,
                count(&["input_tokens", "prompt_tokens"]),
            );
            up(
                &mut self.output_tokens,
                count(&["output_tokens", "completion_tokens"]),
            );
            up(
                &mut self.cache_read_tokens,
                count(&["cache_read_input_tokens"]),
            );
            up(
                &mut self.cache_creation_tokens,
                count(&["cache_creation_input_tokens"]),
            );
        }
    }
}

/// Reads the usage out of an answer fed to it chunk by chunk: server-sent events line by line,
/// a JSON answer whole at the end.
pub struct UsageScanner {
    sse: bool,
    /// The unfinished line (SSE), or the answer so far (JSON).
    buf: Vec<u8>,
    /// The current line is too long to scan: skip to its end.
    skipping: bool,
    usage: Usage,
}

impl UsageScanner {
    /// For an answer of `content_type`.
    pub fn new(content_type: &str) -> Self {
        Self {
            sse: content_type.starts_with("text/event-stream"),
            buf: Vec::new(),
            skipping: false,
            usage: Usage::default(),
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        if !self.sse {
            if self.buf.len() + bytes.len() <= MAX_JSON_SCANNED {
                self.buf.extend_from_slice(bytes);
            } else {
                self.skipping = true;
            }
            return;
        }
        let mut rest = bytes;
        while let Some(end) = memchr::memchr(b'\n', rest) {
            let line = &rest[..end];
            if !self.skipping {
                if self.buf.is_empty() {
                    // A whole line in this chunk: scanned where it lies, not copied.
                    scan_line(&mut self.usage, line);
                } else {
                    self.buf.extend_from_slice(line);
                    scan_line(&mut self.usage, &self.buf);
                }
            }
            self.buf.clear();
            self.skipping = false;
            rest = &rest[end + 1..];
        }
        if !self.skipping {
            if self.buf.len() + rest.len() > MAX_LINE_SCANNED {
                self.buf.clear();
                self.skipping = true;
            } else {
                self.buf.extend_from_slice(rest);
            }
        }
    }

    /// The usage seen, once the answer has ended (or was cut).
    pub fn finish(mut self) -> Usage {
        if self.sse {
            if !self.skipping && !self.buf.is_empty() {
                scan_line(&mut self.usage, &self.buf);
            }
        } else if !self.skipping
            && let Ok(object) = serde_json::from_slice::<Value>(&self.buf)
        {
            self.usage.merge(&object);
        }
        self.usage
    }
}

/// Takes the usage of one SSE line: only `data:` lines that mention `"usage"` are parsed (an
/// OpenAI chunk with usage names its model too; Anthropic's `message_start` has both).
fn scan_line(usage: &mut Usage, line: &[u8]) {
    static USAGE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"usage\""));
    let Some(data) = line.strip_prefix(b"data:") else {
        return;
    };
    if USAGE.find(data).is_none() {
        return;
    }
    if let Ok(object) = serde_json::from_slice::<Value>(data.trim_ascii()) {
        usage.merge(&object);
    }
}

/// One call as stored.
#[derive(Debug, Clone)]
pub struct Call {
    pub upstream: &'static str,
    pub status: u16,
    pub ms: u64,
    pub usage: Usage,
    /// From `[model.prices]`, when the model has a price there.
    pub cost_usd: Option<f64>,
}

/// Spent today beyond the limit: what a refused call is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Exhausted {
    pub tokens_per_day: u64,
    pub used_today: u64,
}

impl Exhausted {
    /// What the agent reads (the body of its 429).
    pub fn message(&self) -> String {
        let left = until_next_utc_day(unix_millis());
        format!(
            "this agent's {}: {} of {} tokens used today (UTC). It renews at 00:00 UTC, in {} h \
             {} min; until then the gateway refuses its model calls. The operator can raise \
             hyperhive.budget.tokensPerDay (the manager proposes it, the operator approves).",
            proto::BUDGET_SPENT,
            self.used_today,
            self.tokens_per_day,
            left.as_secs() / 3600,
            left.as_secs() % 3600 / 60
        )
    }
}

/// Today's number (days since the epoch, UTC): budgets and their events are per day.
pub fn utc_day() -> i64 {
    unix_millis().div_euclid(DAY_MS)
}

/// How long until the next UTC midnight, from `now_ms`.
fn until_next_utc_day(now_ms: i64) -> Duration {
    Duration::from_millis((DAY_MS - now_ms.rem_euclid(DAY_MS)) as u64)
}

/// Today's counter of one agent.
#[derive(Debug, Clone, Copy)]
struct Day {
    limit: Option<u64>,
    day: i64,
    used: u64,
}

impl Day {
    /// A new day starts with nothing used.
    fn roll_over(&mut self, today: i64) {
        if self.day != today {
            self.day = today;
            self.used = 0;
        }
    }
}

/// Each agent's tokens today and its limit (from its deployed image).
#[derive(Default)]
pub struct Budgets {
    agents: Mutex<HashMap<String, Day>>,
}

impl Budgets {
    /// `agent`'s container starts with `limit` (its image's `tokensPerDay`); `used_today` is
    /// what the table holds for today.
    pub fn set(&self, agent: &AgentName, limit: Option<u64>, used_today: u64) {
        let day = utc_day();
        self.agents.lock().expect("budgets").insert(
            agent.to_string(),
            Day {
                limit,
                day,
                used: used_today,
            },
        );
    }

    /// `Some` when `agent` has a limit and has spent it today.
    pub fn exhausted(&self, agent: &AgentName) -> Option<Exhausted> {
        let mut agents = self.agents.lock().expect("budgets");
        let day = agents.get_mut(agent.as_str())?;
        day.roll_over(utc_day());
        let limit = day.limit?;
        (day.used >= limit).then_some(Exhausted {
            tokens_per_day: limit,
            used_today: day.used,
        })
    }

    /// Counts `tokens` spent now; `Some` when this spend reached the limit (it had not before).
    pub fn spend(&self, agent: &AgentName, tokens: u64) -> Option<Exhausted> {
        let today = utc_day();
        let mut agents = self.agents.lock().expect("budgets");
        let day = agents.entry(agent.to_string()).or_insert(Day {
            limit: None,
            day: today,
            used: 0,
        });
        day.roll_over(today);
        let before = day.used;
        day.used += tokens;
        let limit = day.limit?;
        (before < limit && day.used >= limit).then_some(Exhausted {
            tokens_per_day: limit,
            used_today: day.used,
        })
    }

    /// `agent`'s tokens today and its limit, as the counters hold them.
    pub fn today(&self, agent: &AgentName) -> (u64, Option<u64>) {
        let mut agents = self.agents.lock().expect("budgets");
        match agents.get_mut(agent.as_str()) {
            Some(d) => {
                d.roll_over(utc_day());
                (d.used, d.limit)
            }
            None => (0, None),
        }
    }
}

/// The tokens `agent` used since today's UTC midnight, from the table.
pub async fn used_today(store: &Store, agent: &AgentName) -> Result<u64> {
    let (name, since) = (agent.to_string(), utc_day() * DAY_MS);
    store
        .read(move |c| {
            let used: i64 = c
                .prepare_cached(
                    "SELECT COALESCE(SUM(input_tokens + output_tokens + cache_read_tokens
                         + cache_creation_tokens), 0)
                     FROM model_calls WHERE agent = ?1 AND at >= ?2",
                )?
                .query_row(params![name, since], |r| r.get(0))?;
            Ok(used.max(0) as u64)
        })
        .await
}

/// Stores `call` of `agent`.
pub async fn insert(store: &Store, agent: &AgentName, call: Call) -> Result<()> {
    let name = agent.to_string();
    let clamp = |n: u64| n.min(i64::MAX as u64) as i64;
    store
        .write(move |c| {
            c.prepare_cached(
                "INSERT INTO model_calls (agent, at, upstream, model, status, input_tokens,
                     output_tokens, cache_read_tokens, cache_creation_tokens, cost_usd, ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?
            .execute(params![
                name,
                unix_millis(),
                call.upstream,
                call.usage.model,
                call.status,
                clamp(call.usage.input_tokens),
                clamp(call.usage.output_tokens),
                clamp(call.usage.cache_read_tokens),
                clamp(call.usage.cache_creation_tokens),
                call.cost_usd,
                clamp(call.ms),
            ])?;
            Ok(())
        })
        .await
}

/// One stored call, as the API and the dashboard's chart show it.
#[derive(Debug, Clone, Serialize)]
pub struct CallRecord {
    pub id: i64,
    /// Unix ms when its answer ended.
    pub at: i64,
    pub upstream: String,
    pub model: Option<String>,
    pub status: u16,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_creation_tokens: u64,
    pub cost_usd: Option<f64>,
    pub ms: u64,
}

/// `agent`'s newest `limit` calls, oldest first.
pub async fn recent(store: &Store, agent: &AgentName, limit: usize) -> Result<Vec<CallRecord>> {
    let name = agent.to_string();
    let limit = limit.min(10_000) as i64;
    store
        .read(move |c| {
            let mut q = c.prepare_cached(
                "SELECT id, at, upstream, model, status, input_tokens, output_tokens,
                        cache_read_tokens, cache_creation_tokens, cost_usd, ms
                 FROM model_calls WHERE agent = ?1 ORDER BY id DESC LIMIT ?2",
            )?;
            let n = |v: i64| v.max(0) as u64;
            let mut rows = q
                .query_map(params![name, limit], |r| {
                    Ok(CallRecord {
                        id: r.get(0)?,
                        at: r.get(1)?,
                        upstream: r.get(2)?,
                        model: r.get(3)?,
                        status: r.get::<_, i64>(4)?.clamp(0, 999) as u16,
                        input_tokens: n(r.get(5)?),
                        output_tokens: n(r.get(6)?),
                        cache_read_tokens: n(r.get(7)?),
                        cache_creation_tokens: n(r.get(8)?),
                        cost_usd: r.get(9)?,
                        ms: n(r.get(10)?),
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows.reverse();
            Ok(rows)
        })
        .await
}

impl crate::hive::Hive {
    /// `agent`'s newest `limit` model calls (at most 10 000), oldest first.
    pub async fn model_calls(&self, agent: &AgentName, limit: usize) -> Result<Vec<CallRecord>> {
        self.registry.require(agent)?;
        recent(&self.store, agent, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(content_type: &str, chunks: &[&[u8]]) -> Usage {
        let mut s = UsageScanner::new(content_type);
        for c in chunks {
            s.feed(c);
        }
        s.finish()
    }

    #[test]
    fn anthropic_stream_usage_is_read_across_split_chunks() {
        let body = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-x\",\"usage\":",
            "{\"input_tokens\":120,\"cache_creation_input_tokens\":7,\"cache_read_input_tokens\":30,\"output_tokens\":1}}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"the word usage\"}}\n\n",
            "event: message_delta\n",
            "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":42}}\n\n",
        )
        .as_bytes();
        // Every split point, so a line cut between two frames is still read whole.
        for cut in 0..body.len() {
            let usage = scan("text/event-stream", &[&body[..cut], &body[cut..]]);
            assert_eq!(
                usage,
                Usage {
                    model: Some("claude-x".into()),
                    input_tokens: 120,
                    output_tokens: 42,
                    cache_read_tokens: 30,
                    cache_creation_tokens: 7,
                },
                "cut at {cut}"
            );
            assert_eq!(usage.tokens(), 199);
        }
    }

    #[test]
    fn json_answers_of_both_providers_are_read_whole() {
        let anthropic = br#"{"model":"m","usage":{"input_tokens":5,"output_tokens":6}}"#;
        let (a, b) = anthropic.split_at(10);
        assert_eq!(scan("application/json", &[a, b]).tokens(), 11);
        let openai =
            br#"{"model":"gpt","usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}"#;
        let u = scan("application/json", &[openai]);
        assert_eq!((u.input_tokens, u.output_tokens), (9, 3));
        assert_eq!(u.model.as_deref(), Some("gpt"));
    }

    #[test]
    fn garbage_and_oversized_lines_count_nothing_and_keep_no_more_than_a_line() {
        let mut s = UsageScanner::new("text/event-stream");
        s.feed(b"data: {\"usage\": nonsense}\n");
        s.feed(&vec![b'x'; MAX_LINE_SCANNED + 10]);
        assert!(s.buf.is_empty(), "an oversized line is not kept");
        s.feed(b"\"usage\":{\"input_tokens\":99}}\n");
        s.feed(b"data: {\"usage\":{\"output_tokens\":2}}\n");
        assert_eq!(s.finish().tokens(), 2);
    }

    #[test]
    fn a_spend_reaching_the_limit_is_told_once_and_later_calls_are_refused() {
        let b = Budgets::default();
        let alice = AgentName::parse("alice").unwrap();
        assert_eq!(b.exhausted(&alice), None, "no limit set");
        b.set(&alice, Some(100), 40);
        assert_eq!(b.spend(&alice, 50), None);
        assert_eq!(b.exhausted(&alice), None);
        let crossed = b.spend(&alice, 20).expect("reached");
        assert_eq!(crossed.used_today, 110);
        assert_eq!(b.spend(&alice, 5), None, "told once");
        assert_eq!(
            b.exhausted(&alice),
            Some(Exhausted {
                tokens_per_day: 100,
                used_today: 115
            })
        );
        assert!(crossed.message().contains("110 of 100 tokens"));
        b.set(&alice, None, 115);
        assert_eq!(b.exhausted(&alice), None, "no limit, no refusal");
    }

    #[test]
    fn the_day_ends_at_utc_midnight() {
        assert_eq!(until_next_utc_day(0), Duration::from_secs(24 * 3600));
        assert_eq!(until_next_utc_day(DAY_MS - 1000), Duration::from_secs(1));
    }
}
