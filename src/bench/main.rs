//! `hive-bench`: every performance row of DESIGN §19 that this build can measure, in one command:
//!
//! ```text
//! cargo run --release --bin hive-bench [-- --quick] [-- --json]
//! ```
//!
//! (Row 5 starts the real daemon: under `cargo run` the `hive` binary is built first. Rows 6 and
//! 7 re-run this executable as their MCP client process.)
//!
//! Each row prints its figure beside its target, the physical limit it chases (measured in the
//! same run: bare sqlite commits, a bare unix-socket round trip) and, for latencies, the baseline
//! of hyperhive's first version (a receiver polling every 5 s). Results go in docs/benchmarks.md.

mod admin;
mod containers;
mod daemon;
mod dashboard;
mod growth;
mod inproc;
mod limits;
mod mcp;
mod report;
mod stats;
mod turns;
mod watcher;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use broker::config::Synchronous;
use clap::Parser;
use serde_json::json;

use crate::limits::{BareDb, Limits, Schema};
use crate::report::{Machine, Row, Verdict};
use crate::stats::{Samples, fmt_dur, fmt_rate, us};

#[derive(Parser)]
#[command(
    name = "hive-bench",
    about = "Measure hyperhive against its performance targets (DESIGN §19)",
    after_help = "Row 5 starts the `hive` binary next to this one; under `cargo run` it is built \
first (same profile, same target dir). Otherwise build it: cargo build --release --bin hive"
)]
struct Args {
    /// A smaller run (fewer samples, shorter windows, one baseline sample): ~25 s instead of ~75 s
    #[arg(long)]
    quick: bool,
    /// Print the machine and the rows as JSON on stdout (progress still goes to stderr)
    #[arg(long)]
    json: bool,
    /// The `hive` binary for row 5 [default: `hive` next to this executable]
    #[arg(long, value_name = "FILE")]
    hive: Option<PathBuf>,
    /// Run only these rows (row 1, the limits, always runs): 2, 3, 4 (or one of its rows, e.g.
    /// 4-full-64), 5, 6, 7 (or 7-1, 7-16), 8 (growth with history and agents: `--only 8`), 9
    /// (agents in containers: root, nix and systemd-nspawn), 10 (the watcher: nix), 11 (agents act: the harness,
    /// the claude CLI, the model route; nix needed), 12 (the dashboard), baseline
    #[arg(long, value_delimiter = ',', value_name = "ROWS")]
    only: Vec<String>,
    /// Where the MCP clients of rows 6 and 7 run: in a second hive-bench process, or on a second
    /// tokio runtime in this one
    #[arg(long, value_enum, default_value = "process", value_name = "WHERE")]
    mcp_clients: mcp::Place,
    /// Internal: run as the MCP client process of rows 6 and 7 (TASK is JSON)
    #[arg(long, hide = true, value_name = "TASK")]
    mcp_client: Option<String>,
}

impl Args {
    fn wants(&self, row: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|r| r == row)
    }
}

/// How much each row measures.
struct Plan {
    latency_samples: usize,
    baseline_samples: usize,
    throughput_warmup: Duration,
    throughput_window: Duration,
    /// How long each of row 4's limits is measured.
    limit_run: Duration,
    rss_agents: usize,
    rss_per_agent: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        Self {
            latency_samples: if quick { 300 } else { 2000 },
            baseline_samples: if quick { 1 } else { 3 },
            throughput_warmup: Duration::from_millis(if quick { 150 } else { 300 }),
            throughput_window: Duration::from_millis(if quick { 500 } else { 2000 }),
            limit_run: Duration::from_millis(if quick { 200 } else { 500 }),
            rss_agents: 50,
            rss_per_agent: 1000,
        }
    }
}

fn main() -> ExitCode {
    if turns::is_stand_in_claude() {
        // Row 11 runs this executable as the harness's claude.
        return match turns::stand_in_claude_main() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hive-bench (stand-in claude): {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let args = Args::parse();
    if let Some(task) = &args.mcp_client {
        return match mcp::client_main(task) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hive-bench (MCP client): {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hive-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The `hive` binary the daemon rows start: `--hive`, else the one beside this executable (built
/// first under `cargo run`).
fn hive_binary(args: &Args) -> anyhow::Result<PathBuf> {
    match &args.hive {
        Some(path) => Ok(path.clone()),
        None => {
            daemon::build_hive()?;
            daemon::hive_binary()
        }
    }
}

fn progress(what: &str) {
    eprintln!("hive-bench: {what}");
}

fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let machine = Machine::detect(args.quick);
    let plan = Plan::new(args.quick);
    if cfg!(debug_assertions) {
        eprintln!("hive-bench: WARNING: a debug build; run with --release for real figures");
    }

    progress("row 1: bare sqlite commits and unix-socket round trips");
    let limits = Limits::measure(args.quick)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hive-bench")
        .build()?;
    let measured = runtime.block_on(measure(args, &plan, &limits))?;
    runtime.shutdown_timeout(Duration::from_secs(5));

    let mut rows = limit_rows(&limits);
    rows.extend(measured);
    if args.json {
        let out = json!({ "machine": machine, "rows": rows });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{}", machine.line());
        println!();
        print!("{}", report::markdown(&rows));
        println!();
        println!(
            "limit = the bare operation measured in this run; baseline = the same path with a \
             receiver that polls its inbox every 5 s (hyperhive's first version)."
        );
    }
    let missed: Vec<&str> = rows
        .iter()
        .filter(|r| r.verdict == Verdict::Missed)
        .map(|r| r.id.as_str())
        .collect();
    eprintln!(
        "hive-bench: done in {:.0} s; {}",
        started.elapsed().as_secs_f64(),
        if missed.is_empty() {
            "every target met".to_owned()
        } else {
            format!("missed: {}", missed.join(", "))
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn limit_note(design: &str) -> String {
    if design == "—" {
        "(is a limit)".into()
    } else {
        format!("(is a limit; §19 measured {design})")
    }
}

fn limit_rows(l: &Limits) -> Vec<Row> {
    let commit = |id: &str, name: &str, s: &Samples, design: &str| {
        Row::new(
            id,
            name,
            format!("p50 {} · p99 {}", fmt_dur(s.p50()), fmt_dur(s.p99())),
        )
        .limit(limit_note(design))
        .values(json!({"p50_us": us(s.p50()), "p99_us": us(s.p99()), "samples": s.len()}))
    };
    let rates = |id: &str, name: &str, s: &limits::SqliteLimit, design: &str| {
        Row::new(
            id,
            name,
            format!(
                "{} · {} · {} rows/s",
                fmt_rate(s.commits_per_s).trim_end_matches("/s"),
                fmt_rate(s.rows8_per_s).trim_end_matches("/s"),
                fmt_rate(s.rows64_per_s).trim_end_matches("/s"),
            ),
        )
        .limit(limit_note(design))
        .values(json!({
            "rows_per_s_1": s.commits_per_s,
            "rows_per_s_8": s.rows8_per_s,
            "rows_per_s_64": s.rows64_per_s,
        }))
    };
    vec![
        commit(
            "1a",
            "bare sqlite WAL commit, one 200 B row, synchronous=normal",
            &l.normal.commit,
            "~11 µs",
        ),
        commit(
            "1b",
            "bare sqlite WAL commit, one 200 B row, synchronous=full",
            &l.full.commit,
            "~156 µs",
        ),
        rates(
            "1c",
            "bare sqlite rows/s, 1 · 8 · 64 rows per commit, normal",
            &l.normal,
            "63 000/s at 1",
        ),
        rates(
            "1d",
            "bare sqlite rows/s, 1 · 8 · 64 rows per commit, full",
            &l.full,
            "4 400/s at 1, 142 000/s at 64",
        ),
        Row::new(
            "1e",
            "bare unix-socket 200 B round trip (echo thread)",
            format!(
                "p50 {} · p99 {}",
                fmt_dur(l.uds.p50()),
                fmt_dur(l.uds.p99())
            ),
        )
        .limit("(is a limit; §19 measured ~9 µs)")
        .values(
            json!({"p50_us": us(l.uds.p50()), "p99_us": us(l.uds.p99()), "samples": l.uds.len()}),
        ),
        commit(
            "1f",
            "sqlite commit of one message in the hive's own schema (indexes, no broker), normal",
            &l.schema_normal.commit,
            "—",
        ),
        commit(
            "1g",
            "sqlite commit of one message in the hive's own schema, full",
            &l.schema_full.commit,
            "—",
        ),
        rates(
            "1h",
            "hive schema rows/s, 1 · 8 · 64 rows per commit, normal",
            &l.schema_normal,
            "—",
        ),
        rates(
            "1i",
            "hive schema rows/s, 1 · 8 · 64 rows per commit, full",
            &l.schema_full,
            "—",
        ),
        Row::new(
            "1j",
            "thread wake-up round trip (2 wake-ups), back to back · after 0.5 ms idle",
            format!(
                "p50 {} · p50 {} (p99 {})",
                fmt_dur(l.wake_hot.p50()),
                fmt_dur(l.wake_idle.p50()),
                fmt_dur(l.wake_idle.p99())
            ),
        )
        .limit("(is a limit; not in §19)")
        .values(json!({
            "hot_p50_us": us(l.wake_hot.p50()), "hot_p99_us": us(l.wake_hot.p99()),
            "idle_p50_us": us(l.wake_idle.p50()), "idle_p99_us": us(l.wake_idle.p99()),
        })),
    ]
}

fn latency_figure(s: &Samples) -> String {
    format!("p50 {} · p99 {}", fmt_dur(s.p50()), fmt_dur(s.p99()))
}

fn latency_values(s: &Samples) -> serde_json::Value {
    json!({"p50_us": us(s.p50()), "p99_us": us(s.p99()), "mean_us": us(s.mean()), "samples": s.len()})
}

async fn measure(args: &Args, plan: &Plan, limits: &Limits) -> anyhow::Result<Vec<Row>> {
    let commit = limits.commit_p50(false);
    let mut latency_rows = Vec::new();

    // Row 6 is compared with row 2: it is measured whenever either is.
    let mut inproc_wake = None;
    let mut reported = None;
    if args.wants("2") || args.wants("6") {
        progress("row 2: in-process send → a waiting recv");
        let (wake, latency) = inproc::send_to_waiting_recv(plan.latency_samples).await?;
        inproc_wake = Some(wake);
        reported = Some(latency);
    }
    if let Some(wake) = inproc_wake.as_ref().filter(|_| args.wants("2")) {
        latency_rows.push(
            Row::new(
                "2",
                "in-process send → a waiting recv returns",
                latency_figure(wake),
            )
            .target(
                "p50 < 100 µs · p99 < 500 µs",
                us(wake.p50()) < 100.0 && us(wake.p99()) < 500.0,
            )
            .limit(format!(
                "{} (1 bare commit: the send hands the message to the waiting recv in its own transaction)",
                fmt_dur(commit)
            ))
            .values(latency_values(wake)),
        );
    }

    if let Some(latency) = reported.filter(|_| args.wants("2")) {
        latency_rows.push(delivery_latency_row(&latency));
    }

    if args.wants("3") {
        progress("row 3: operator send over the admin socket (HTTP) → a waiting recv");
        let admin = admin::operator_send_to_waiting_recv(plan.latency_samples).await?;
        let uds = limits.uds.p50();
        latency_rows.push(
            Row::new(
                "3",
                "operator send over the admin socket (HTTP/1, kept alive) → the manager's waiting recv returns",
                latency_figure(&admin.wake),
            )
            .target(
                "p50 < 300 µs · p99 < 1.5 ms (the MCP socket path's, §19)",
                us(admin.wake.p50()) < 300.0 && us(admin.wake.p99()) < 1500.0,
            )
            .limit(format!(
                "{} (1 socket round trip + 1 bare commit)",
                fmt_dur(uds + commit)
            ))
            .values(latency_values(&admin.wake)),
        );
        latency_rows.push(
            Row::new(
                "3b",
                "operator send over the admin socket → 201 acknowledgement read",
                latency_figure(&admin.ack),
            )
            .limit(format!(
                "{} (1 socket round trip + 1 bare commit)",
                fmt_dur(uds + commit)
            ))
            .values(latency_values(&admin.ack)),
        );
    }

    if let Some(inproc) = &inproc_wake
        && args.wants("6")
    {
        progress(&format!(
            "row 6: MCP send → a waiting MCP recv ({})",
            args.mcp_clients.describe()
        ));
        let got = mcp::send_to_waiting_recv(args.mcp_clients, plan.latency_samples).await?;
        let uds = limits.uds.p50();
        latency_rows.push(
            Row::new(
                "6",
                "MCP send on one agent's socket → a waiting recv (wait_seconds 60) on another's returns",
                latency_figure(&got.wake),
            )
            .target(
                "p50 < 300 µs · p99 < 1.5 ms",
                us(got.wake.p50()) < 300.0 && us(got.wake.p99()) < 1500.0,
            )
            .limit(format!(
                "{} (1 socket round trip + 1 bare commit); row 2 + 1 round trip: p50 {} · p99 {}",
                fmt_dur(uds + commit),
                fmt_dur(inproc.p50() + uds),
                fmt_dur(inproc.p99() + uds),
            ))
            .values(latency_values(&got.wake)),
        );
        latency_rows.push(
            Row::new("6b", "MCP send → its result read", latency_figure(&got.ack))
                .limit(format!(
                    "{} (1 socket round trip + 1 bare commit)",
                    fmt_dur(uds + commit)
                ))
                .values(latency_values(&got.ack)),
        );
    }

    let mut rows = Vec::new();
    if args.wants("baseline") {
        progress(&format!(
            "baseline: a receiver polling every 5 s ({} sample{}, ~{} s)",
            plan.baseline_samples,
            if plan.baseline_samples == 1 { "" } else { "s" },
            plan.baseline_samples * 5
        ));
        let poll = inproc::send_to_polling_recv(plan.baseline_samples).await?;
        let baseline = format!("5 s poll: mean {} (n={})", fmt_dur(poll.mean()), poll.len());
        let poll_values = json!({"mean_us": us(poll.mean()), "samples": poll.len()});
        if latency_rows.is_empty() {
            rows.push(
                Row::new(
                    "2-baseline",
                    "send → a receiver polling every 5 s sees it",
                    baseline,
                )
                .values(poll_values),
            );
        } else {
            for row in &mut latency_rows {
                if row.id == "3b" || row.id == "6b" || row.id == "2l" {
                    continue;
                }
                row.baseline = baseline.clone();
                row.values["baseline_poll"] = poll_values.clone();
            }
        }
    }
    rows.splice(0..0, latency_rows);

    let row4 = ["normal", "full"]
        .iter()
        .flat_map(|s| [1, 8, 64].map(|n| format!("4-{s}-{n}")))
        .any(|id| args.wants(&id));
    if args.wants("4") || row4 {
        progress("row 4: durable sends per second, 1 / 8 / 64 senders, normal and full");
        for sync in [Synchronous::Normal, Synchronous::Full] {
            for senders in [1usize, 8, 64] {
                let id = format!("4-{sync}-{senders}");
                if !args.wants("4") && !args.wants(&id) {
                    continue;
                }
                let rate = inproc::sends_per_second(
                    sync,
                    senders,
                    plan.throughput_warmup,
                    plan.throughput_window,
                )
                .await?;
                // The disk's fsync latency drifts within minutes: the limit is measured right
                // after the row, with as many rows per commit as there are senders.
                let per_commit = senders.min(64);
                let bare =
                    BareDb::open(Schema::Bare, sync.pragma())?.rate(per_commit, plan.limit_run)?;
                let schema =
                    BareDb::open(Schema::Hive, sync.pragma())?.rate(per_commit, plan.limit_run)?;
                let target = match (sync, senders) {
                    (Synchronous::Normal, 1) => Some(20_000.0),
                    (Synchronous::Normal, 64) => Some(100_000.0),
                    (Synchronous::Full, 64) => Some(40_000.0),
                    _ => None,
                };
                let mut row = Row::new(
                    id,
                    format!(
                        "durable sends in-process, synchronous={sync}, {senders} sender{}",
                        if senders == 1 { "" } else { "s" }
                    ),
                    fmt_rate(rate),
                )
                .limit(format!(
                    "{} bare · {} hive schema ({per_commit} row{} per commit)",
                    fmt_rate(bare),
                    fmt_rate(schema),
                    if per_commit == 1 { "" } else { "s" }
                ))
                .values(json!({"per_s": rate, "limit_bare_per_s": bare,
                    "limit_schema_per_s": schema, "senders": senders,
                    "synchronous": sync.to_string()}));
                if let Some(t) = target {
                    row = row.target(format!("≥ {}", fmt_rate(t)), rate >= t);
                }
                rows.push(row);
            }
        }
    }

    if args.wants("7") || args.wants("7-1") || args.wants("7-16") {
        progress(&format!(
            "row 7: MCP tool calls per second on 1 and {MCP_CONNECTIONS} connections ({})",
            args.mcp_clients.describe()
        ));
        rows.extend(mcp_rate_rows(args, plan).await?);
    }

    if args.wants("5") {
        progress("row 5: daemon RSS (idle fresh; 50 agents + 50 000 queued messages)");
        rows.extend(rss_rows(args, plan).await);
    }

    if args.wants("8") {
        rows.extend(growth_rows(args).await?);
    }

    if args.wants("9") {
        progress(
            "row 9: agents in containers (nspawn): start → harness up, a built deploy, 20 idle agents",
        );
        rows.extend(container_rows(args).await);
    }
    if args.wants("10") {
        progress(
            "row 10: the watcher: payload killed → container_crash, login → logged_in, idle CPU",
        );
        rows.extend(watcher_rows(args).await);
    }
    if args.wants("11") {
        progress(
            "row 11: agents act: message → claude's stdin, warm vs per-turn claude, the model route",
        );
        rows.extend(turn_rows(args).await);
    }
    if args.wants("12") {
        progress(&format!(
            "row 12: the dashboard: / and /approvals with {} agents and {} approvals, SSE fan-out to {}, page weight",
            dashboard::AGENTS,
            dashboard::APPROVALS,
            dashboard::SSE_CLIENTS
        ));
        rows.extend(dashboard_rows(args).await);
    }
    // Measured in the order that shares work; shown in the order of §19's table (stable: 6 before
    // 6b, 4-normal before 4-full).
    rows.sort_by_key(|r| {
        let digits = r.id.len() - r.id.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        r.id[..digits].parse::<u32>().unwrap_or(u32::MAX)
    });
    Ok(rows)
}

/// Row 2l: what the hive itself reports after row 2's run (its last-hour window, as `hive status`
/// and `GET /api/v1/delivery-latency` show it): from stored millisecond timestamps, so a sub-ms
/// delivery reads as 0 ms.
fn delivery_latency_row(l: &broker::mailbox::DeliveryLatency) -> Row {
    let ms = |v: Option<i64>| v.map_or("—".to_owned(), |v| format!("{v} ms"));
    Row::new(
        "2l",
        "the hive's own delivery latency after row 2 (sent → delivered, its last-hour window)",
        format!(
            "p50 {} · p99 {} (n={})",
            ms(l.delivered.p50_ms),
            ms(l.delivered.p99_ms),
            l.delivered.count
        ),
    )
    .limit("row 2's measured latency, in whole ms")
    .values(json!({
        "delivered_count": l.delivered.count,
        "delivered_p50_ms": l.delivered.p50_ms,
        "delivered_p99_ms": l.delivered.p99_ms,
        "picked_up_p50_ms": l.picked_up.p50_ms,
        "picked_up_p99_ms": l.picked_up.p99_ms,
    }))
}

/// Row 9: agents in containers on the real daemon (nspawn).
async fn container_rows(args: &Args) -> Vec<Row> {
    let measured = async {
        let hive = hive_binary(args)?;
        containers::measure(&hive, if args.quick { 5 } else { 15 }, 20).await
    }
    .await;
    let f = match measured {
        Ok(f) => f,
        Err(e) => {
            eprintln!("hive-bench: row 9 skipped: {e:#}");
            return vec![
                Row::new("9", "agents in containers", format!("not measured: {e:#}")).skipped(),
            ];
        }
    };
    let per_agent = f.per_agent_pss_kib as f64 / 1024.0;
    vec![
        Row::new(
            "9a",
            "image built → harness connected (`hive start` answers when it is up)",
            format!(
                "p50 {} · p95 {} (n={})",
                fmt_dur(f.start_to_up.p50()),
                fmt_dur(f.start_to_up.percentile(95.0)),
                f.start_to_up.len()
            ),
        )
        .target("< 150 ms", f.start_to_up.p50() < Duration::from_millis(150))
        .limit(format!(
            "bare systemd-nspawn of busybox true, same image and flags: p50 {}",
            fmt_dur(f.bare_nspawn.p50())
        ))
        .values(json!({
            "p50_us": us(f.start_to_up.p50()), "p95_us": us(f.start_to_up.percentile(95.0)),
            "bare_nspawn_p50_us": us(f.bare_nspawn.p50()),
        })),
        Row::new(
            "9b",
            "deploy of a commit nix has built (a rollback) → harness up",
            format!(
                "p50 {} (n={}; nix's evaluation included)",
                fmt_dur(f.deploy_built.p50()),
                f.deploy_built.len()
            ),
        )
        .target("< 1 s", f.deploy_built.p50() < Duration::from_secs(1))
        .values(json!({"p50_us": us(f.deploy_built.p50())})),
        Row::new(
            "9c",
            format!(
                "{} idle agents: memory per agent (PSS of its cgroup) · broker RSS",
                f.agents
            ),
            format!(
                "{per_agent:.1} MB per agent · broker {}",
                mb(f.broker.rss_kib)
            ),
        )
        .values(json!({
            "agents": f.agents, "per_agent_pss_kib": f.per_agent_pss_kib,
            "broker_rss_kib": f.broker.rss_kib,
        })),
    ]
}

/// Row 10: the watcher on the real daemon (process runtime).
async fn watcher_rows(args: &Args) -> Vec<Row> {
    let measured = async {
        let hive = hive_binary(args)?;
        let (kills, logins, idle) = if args.quick {
            (10, 10, 15)
        } else {
            (50, 50, 60)
        };
        watcher::measure(&hive, kills, logins, 100, idle).await
    }
    .await;
    let f = match measured {
        Ok(f) => f,
        Err(e) => {
            eprintln!("hive-bench: row 10 skipped: {e:#}");
            return vec![Row::new("10", "the watcher", format!("not measured: {e:#}")).skipped()];
        }
    };
    let cpu_share = f.idle_cpu.as_secs_f64() / f.idle_seconds as f64 * 100.0;
    vec![
        Row::new(
            "10a",
            "payload killed (SIGKILL) → `container_crash` committed in the manager's inbox",
            format!(
                "p50 {} · p99 {} (n={})",
                fmt_dur(f.crash_to_told.p50()),
                fmt_dur(f.crash_to_told.p99()),
                f.crash_to_told.len()
            ),
        )
        .target(
            "< 100 ms",
            f.crash_to_told.p99() < Duration::from_millis(100),
        )
        .limit("hyperhive (the Python original) polls every 10 s: up to 10 s")
        .values(json!({
            "p50_us": us(f.crash_to_told.p50()), "p99_us": us(f.crash_to_told.p99()),
        })),
        Row::new(
            "10b",
            "credentials file written → `logged_in` committed",
            format!(
                "p50 {} · p99 {} (n={})",
                fmt_dur(f.login_to_told.p50()),
                fmt_dur(f.login_to_told.p99()),
                f.login_to_told.len()
            ),
        )
        .target(
            "< 100 ms",
            f.login_to_told.p99() < Duration::from_millis(100),
        )
        .values(json!({
            "p50_us": us(f.login_to_told.p50()), "p99_us": us(f.login_to_told.p99()),
        })),
        Row::new(
            "10c",
            format!(
                "the daemon's CPU with {} idle agents for {} s",
                f.idle_agents, f.idle_seconds
            ),
            format!(
                "{} CPU ({cpu_share:.3} % of one core; {} in /proc's 10 ms ticks)",
                fmt_dur(f.idle_cpu),
                fmt_dur(f.idle_cpu_ticks)
            ),
        )
        .target(
            "no measurable work between events",
            f.idle_cpu < Duration::from_millis(100),
        )
        .values(json!({
            "cpu_us": us(f.idle_cpu), "cpu_ticks_us": us(f.idle_cpu_ticks),
            "agents": f.idle_agents, "seconds": f.idle_seconds,
        })),
    ]
}

/// Row 11: agents act (the process runtime, the real claude CLI, the model route).
async fn turn_rows(args: &Args) -> Vec<Row> {
    let measured = async {
        let hive = hive_binary(args)?;
        turns::measure(&hive, args.quick).await
    }
    .await;
    let f = match measured {
        Ok(f) => f,
        Err(e) => {
            eprintln!("hive-bench: row 11 skipped: {e:#}");
            return vec![Row::new("11", "agents act", format!("not measured: {e:#}")).skipped()];
        }
    };
    let g = &f.gateway_first_byte;
    let t = &f.direct_first_byte;
    vec![
        Row::new(
            "11a",
            "operator send → the agent's claude reads the message on stdin (real harness, process runtime)",
            format!(
                "p50 {} · p95 {} (n={})",
                fmt_dur(f.to_stdin.p50()),
                fmt_dur(f.to_stdin.percentile(95.0)),
                f.to_stdin.len()
            ),
        )
        .target("< 5 ms", f.to_stdin.p50() < Duration::from_millis(5))
        .values(json!({
            "p50_us": us(f.to_stdin.p50()), "p95_us": us(f.to_stdin.percentile(95.0)),
        })),
        Row::new(
            "11b",
            "a turn of the real claude CLI on a model that answers at once: warm process · one process per turn",
            format!(
                "warm p50 {} · per-turn p50 {} (n={} · {})",
                fmt_dur(f.warm_turn.p50()),
                fmt_dur(f.per_turn.p50()),
                f.warm_turn.len(),
                f.per_turn.len()
            ),
        )
        .target(
            "warm ≪ per-turn",
            f.warm_turn.p50() * 4 < f.per_turn.p50(),
        )
        .values(json!({
            "warm_p50_us": us(f.warm_turn.p50()), "per_turn_p50_us": us(f.per_turn.p50()),
        })),
        Row::new(
            "11c",
            "memory: hive-agent idle (RSS) · the warm claude process (RSS)",
            format!(
                "hive-agent {} · claude {}",
                mb(f.harness.rss_kib),
                mb(f.claude_warm.rss_kib)
            ),
        )
        .target("hive-agent < 10 MB", f.harness.rss_kib < 10 * 1024)
        .values(json!({
            "hive_agent_rss_kib": f.harness.rss_kib, "claude_rss_kib": f.claude_warm.rss_kib,
        })),
        Row::new(
            "11d",
            "the model route: first byte of a streamed answer through gateway.sock",
            format!(
                "p50 {} · p99 {} (n={})",
                fmt_dur(g.p50()),
                fmt_dur(g.p99()),
                g.len()
            ),
        )
        .target(
            "added p99 < 1 ms",
            g.p99().saturating_sub(t.p99()) < Duration::from_millis(1),
        )
        .limit(format!(
            "direct to the same upstream: p50 {} · p99 {}",
            fmt_dur(t.p50()),
            fmt_dur(t.p99())
        ))
        .values(json!({
            "p50_us": us(g.p50()), "p99_us": us(g.p99()),
            "direct_p50_us": us(t.p50()), "direct_p99_us": us(t.p99()),
        })),
        Row::new(
            "11e",
            "the model route: a streamed 32 MiB answer through gateway.sock (usage scanned on the way)",
            format!(
                "median {:.0} MiB/s (n={})",
                median(&f.gateway_mib_s),
                f.gateway_mib_s.len()
            ),
        )
        // A model streams well under 1 MiB/s; the gateway must never be what limits it.
        .target("≥ 100 MiB/s", median(&f.gateway_mib_s) >= 100.0)
        .limit(format!(
            "direct to the same upstream: median {:.0} MiB/s",
            median(&f.direct_mib_s)
        ))
        .values(json!({
            "mib_s": f.gateway_mib_s, "direct_mib_s": f.direct_mib_s,
        })),
    ]
}

/// The median of a few figures (0 for none).
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Row 12: the dashboard, served in process over TCP.
async fn dashboard_rows(args: &Args) -> Vec<Row> {
    let (pages, events) = if args.quick { (50, 50) } else { (300, 200) };
    let f = match dashboard::measure(pages, events).await {
        Ok(f) => f,
        Err(e) => {
            eprintln!("hive-bench: row 12 skipped: {e:#}");
            return vec![Row::new("12", "the dashboard", format!("not measured: {e:#}")).skipped()];
        }
    };
    let page = |id: &str, path: &str, s: &Samples| {
        Row::new(
            id,
            format!(
                "server time of `{path}` with {} agents and {} approvals (kept-alive connection, whole body)",
                dashboard::AGENTS,
                dashboard::APPROVALS
            ),
            format!(
                "p50 {} · p99 {} (n={})",
                fmt_dur(s.p50()),
                fmt_dur(s.p99()),
                s.len()
            ),
        )
        .target("p50 < 5 ms", s.p50() < Duration::from_millis(5))
        .values(json!({"p50_us": us(s.p50()), "p99_us": us(s.p99())}))
    };
    let weight = f.html_bytes + f.asset_bytes;
    vec![
        page("12a", "/", &f.hive_page),
        page("12b", "/approvals", &f.approvals_page),
        Row::new(
            "12c",
            format!(
                "SSE fan-out: an operator send committed → all {} `/events` clients read its event",
                dashboard::SSE_CLIENTS
            ),
            format!(
                "p50 {} · p99 {} (n={})",
                fmt_dur(f.fan_out.p50()),
                fmt_dur(f.fan_out.p99()),
                f.fan_out.len()
            ),
        )
        .target("p99 < 50 ms", f.fan_out.p99() < Duration::from_millis(50))
        .values(json!({"p50_us": us(f.fan_out.p50()), "p99_us": us(f.fan_out.p99())})),
        Row::new(
            "12d",
            format!(
                "page weight of `/` with {} agents: HTML + the JS and CSS it loads (uncompressed)",
                dashboard::AGENTS
            ),
            format!(
                "{:.1} kB (HTML {:.1} kB · assets {:.1} kB)",
                weight as f64 / 1000.0,
                f.html_bytes as f64 / 1000.0,
                f.asset_bytes as f64 / 1000.0
            ),
        )
        .target("< 100 kB", weight < 100_000)
        .values(json!({"html_bytes": f.html_bytes, "asset_bytes": f.asset_bytes})),
    ]
}

/// Row 7's many connections.
const MCP_CONNECTIONS: usize = 16;

async fn mcp_rate_rows(args: &Args, plan: &Plan) -> anyhow::Result<Vec<Row>> {
    let rates = mcp::calls_per_second(
        args.mcp_clients,
        MCP_CONNECTIONS,
        plan.throughput_warmup,
        plan.throughput_window,
    )
    .await?;
    let mut rows = Vec::new();
    for r in rates {
        let id = format!("7-{}", r.connections);
        if !args.wants("7") && !args.wants(&id) {
            continue;
        }
        // The same sends without MCP: row 4's path with as many senders as connections.
        let inproc = inproc::sends_per_second(
            Synchronous::Normal,
            r.connections,
            plan.throughput_warmup,
            plan.throughput_window,
        )
        .await?;
        let (target, what) = if r.connections == 1 {
            (5_000.0, "one connection, sequential calls".to_owned())
        } else {
            (
                20_000.0,
                format!("{} connections (one per agent socket)", r.connections),
            )
        };
        let plural = if r.connections == 1 { "" } else { "s" };
        rows.push(
            Row::new(
                id,
                format!("MCP tool calls per second, {what}: whoami · send (200 B, durable)"),
                format!(
                    "whoami {} · send {}",
                    fmt_rate(r.whoami),
                    fmt_rate(r.send)
                ),
            )
            .target(
                format!("≥ {} (whoami)", fmt_rate(target)),
                r.whoami >= target,
            )
            .limit(format!(
                "echo {} (the same socket{plural}, 200 B lines, no MCP) · in-process send {} ({} sender{plural})",
                fmt_rate(r.echo),
                fmt_rate(inproc),
                r.connections
            ))
            .values(json!({
                "connections": r.connections,
                "whoami_per_s": r.whoami,
                "send_per_s": r.send,
                "limit_echo_per_s": r.echo,
                "limit_inproc_send_per_s": inproc,
                "clients": format!("{:?}", args.mcp_clients).to_lowercase(),
            })),
        );
    }
    Ok(rows)
}

const RSS_TARGET_BYTES: f64 = 25e6;

fn mb(kib: u64) -> String {
    format!("{:.1} MB", kib as f64 * 1024.0 / 1e6)
}

async fn rss_rows(args: &Args, plan: &Plan) -> Vec<Row> {
    let names = [
        ("5a", "daemon RSS, idle, fresh state dir"),
        (
            "5b",
            "daemon RSS, 50 agents registered, 50 000 queued, after READY",
        ),
        (
            "5c",
            "daemon RSS, 50 agents, 50 000 queued, after GET /api/v1/status (reads the stored counts)",
        ),
    ];
    match rss(args, plan).await {
        Ok(figures) => names
            .iter()
            .zip(figures)
            .map(|((id, name), m)| {
                let bytes = m.rss_kib as f64 * 1024.0;
                Row::new(
                    *id,
                    *name,
                    format!("{} (peak {})", mb(m.rss_kib), mb(m.hwm_kib)),
                )
                .target("< 25 MB", bytes < RSS_TARGET_BYTES)
                .values(json!({"rss_kib": m.rss_kib, "hwm_kib": m.hwm_kib}))
            })
            .collect(),
        Err(e) => {
            eprintln!("hive-bench: row 5 skipped: {e:#}");
            vec![
                Row::new("5", "daemon RSS", format!("not measured: {e:#}"))
                    .target("< 25 MB", false)
                    .skipped(),
            ]
        }
    }
}

/// Row 5's three readings: fresh idle, loaded after READY, loaded after a status request.
async fn rss(args: &Args, plan: &Plan) -> anyhow::Result<[daemon::Memory; 3]> {
    let hive = hive_binary(args)?;

    let fresh_dir = tempfile::tempdir()?;
    let fresh = daemon::Daemon::start(&hive, fresh_dir.path())?;
    tokio::time::sleep(daemon::SETTLE).await;
    let idle = daemon::memory(fresh.pid())?;
    fresh.stop()?;

    let loaded_dir = tempfile::tempdir()?;
    inproc::prepare_loaded_state(loaded_dir.path(), plan.rss_agents, plan.rss_per_agent).await?;
    let loaded = daemon::Daemon::start(&hive, loaded_dir.path())?;
    tokio::time::sleep(daemon::SETTLE).await;
    let ready = daemon::memory(loaded.pid())?;
    let status = loaded.get("/api/v1/status").await?;
    anyhow::ensure!(status == 200, "GET /api/v1/status answered {status}");
    tokio::time::sleep(daemon::SETTLE).await;
    let after_status = daemon::memory(loaded.pid())?;
    loaded.stop()?;
    Ok([idle, ready, after_status])
}

/// Row 8's configurations: the history grows (10 agents), then the agents (100 k stored).
const GROWTH: [(&str, growth::Shape); 5] = [
    (
        "8-10k",
        growth::Shape {
            stored: 10_000,
            agents: 10,
        },
    ),
    (
        "8-100k",
        growth::Shape {
            stored: 100_000,
            agents: 10,
        },
    ),
    (
        "8-1m",
        growth::Shape {
            stored: 1_000_000,
            agents: 10,
        },
    ),
    (
        "8-agents-50",
        growth::Shape {
            stored: 100_000,
            agents: 50,
        },
    ),
    (
        "8-agents-100",
        growth::Shape {
            stored: 100_000,
            agents: 100,
        },
    ),
];

async fn growth_rows(args: &Args) -> anyhow::Result<Vec<Row>> {
    let hive = hive_binary(args)?;
    let sizes = growth::Sizes {
        sends: if args.quick { 300 } else { 2000 },
        statuses: if args.quick { 50 } else { 200 },
        burst: if args.quick { 16_000 } else { 64_000 },
    };
    let mut measured: Vec<(&str, growth::Figures)> = Vec::new();
    for (id, shape) in GROWTH {
        if args.quick && shape.stored > 100_000 {
            continue;
        }
        progress(&format!(
            "row {id}: the daemon with {} stored messages and {} agents",
            shape.stored, shape.agents
        ));
        measured.push((id, growth::measure(&hive, shape, &sizes).await?));
    }
    // Each figure is held against the smallest of its series: 10 k stored for the history rows,
    // 10 agents (the 100 k row) for the agent rows.
    let smallest = |id: &str| -> Option<&growth::Figures> {
        let base = if id.starts_with("8-agents") {
            "8-100k"
        } else {
            "8-10k"
        };
        measured.iter().find(|(i, _)| *i == base).map(|(_, f)| f)
    };
    let mut rows = Vec::new();
    for (id, f) in &measured {
        let base = smallest(id).unwrap_or(f);
        let flat = |now: Duration, then: Duration| now <= then * 2;
        let send_flat = flat(f.send.p50(), base.send.p50());
        let status_flat = flat(f.status.p50(), base.status.p50());
        let rss_bytes = f.after_burst.rss_kib as f64 * 1024.0;
        rows.push(
            Row::new(
                *id,
                format!(
                    "daemon with {} stored messages, {} agents: operator send (admin socket) · \
                     GET /api/v1/status (fresh connection) · RSS idle after a {}-send burst",
                    f.shape.stored, f.shape.agents, f.burst
                ),
                format!(
                    "send p50 {} · status p50 {} · RSS {} (peak {})",
                    fmt_dur(f.send.p50()),
                    fmt_dur(f.status.p50()),
                    mb(f.after_burst.rss_kib),
                    mb(f.after_burst.hwm_kib)
                ),
            )
            .target(
                "send and status within 2× of the smallest · RSS < 25 MB",
                send_flat && status_flat && rss_bytes < RSS_TARGET_BYTES,
            )
            .values(json!({
                "stored": f.shape.stored, "agents": f.shape.agents,
                "send_p50_us": us(f.send.p50()), "send_p99_us": us(f.send.p99()),
                "status_p50_us": us(f.status.p50()), "status_p99_us": us(f.status.p99()),
                "rss_kib": f.after_burst.rss_kib, "hwm_kib": f.after_burst.hwm_kib,
                "burst": f.burst,
            })),
        );
    }
    Ok(rows)
}
