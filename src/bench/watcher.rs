//! Row 10: the watcher, on the real daemon. 10a: an agent's payload (`hive-agent serve`, process
//! runtime, a real minimal-builder image) killed with SIGKILL → the `container_crash` message
//! committed in the manager's inbox (seen by polling the sqlite file read-only every 200 µs; the
//! agent is started again by hand between kills, which also resets its crash count). 10b: a
//! claude credentials file written → `logged_in` committed (and removed → `needs_login`). 10c:
//! the daemon's CPU time while 100 agents sit idle for 60 s (15 s with `--quick`; only the
//! reconcile ticks run), summed per thread from `/proc/<pid>/task/*/schedstat` (nanoseconds; a
//! thread that ends within the window loses its share) beside the process's own count in
//! `/proc/<pid>/stat` (10 ms ticks, too coarse to show an idle daemon's work).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::Value;

use crate::daemon::Daemon;
use crate::stats::Samples;

pub struct Figures {
    pub crash_to_told: Samples,
    pub login_to_told: Samples,
    pub idle_agents: usize,
    pub idle_seconds: u64,
    /// CPU time of the daemon's threads over the idle window (schedstat, ns resolution).
    pub idle_cpu: Duration,
    /// The same from the process's user + system ticks (10 ms resolution).
    pub idle_cpu_ticks: Duration,
}

const LIMIT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_micros(200);

async fn wait_up(d: &Daemon, agent: &str) -> anyhow::Result<u64> {
    let end = Instant::now() + LIMIT;
    loop {
        let (code, a) = d
            .call("GET", &format!("/api/v1/agents/{agent}"), "")
            .await?;
        if code == 200 && a["run"]["up"] == true && a["run"]["state"] == "running" {
            return a["run"]["pid"].as_u64().context("no pid");
        }
        if Instant::now() > end {
            bail!("{agent} did not come up within {LIMIT:?}: {a}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many helper events `event` the manager's inbox holds.
fn count(db: &rusqlite::Connection, event: &str) -> anyhow::Result<i64> {
    Ok(db.query_row(
        "SELECT count(*) FROM messages WHERE sender = 'system' AND recipient = 'manager'
         AND json_extract(body, '$.event') = ?1",
        [event],
        |r| r.get(0),
    )?)
}

/// Polls until more than `before` events `event` are committed; the time from `t0`.
fn until_told(
    db: &rusqlite::Connection,
    event: &str,
    before: i64,
    t0: Instant,
) -> anyhow::Result<Duration> {
    loop {
        if count(db, event)? > before {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > LIMIT {
            bail!("no '{event}' within {LIMIT:?}");
        }
        std::thread::sleep(POLL);
    }
}

fn read_only(state: &Path) -> anyhow::Result<rusqlite::Connection> {
    Ok(rusqlite::Connection::open_with_flags(
        state.join("hive.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?)
}

/// The CPU time (user + system) the process `pid` used so far.
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("odd /proc stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // /proc counts in USER_HZ, which Linux fixes at 100 for user space.
    Ok(Duration::from_millis(ticks * 10))
}

/// Per thread of the process `pid`, the CPU time it ran so far (ns).
fn thread_cpu(pid: u32) -> anyhow::Result<HashMap<u32, u64>> {
    let mut threads = HashMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let entry = entry?;
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        // A thread may end between the listing and the read.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("schedstat")) else {
            continue;
        };
        let ran: u64 = stat
            .split_whitespace()
            .next()
            .context("empty schedstat")?
            .parse()?;
        threads.insert(tid, ran);
    }
    Ok(threads)
}

/// The CPU time the threads in `after` ran since `before` (a thread new since then: all of it).
fn ran_since(before: &HashMap<u32, u64>, after: &HashMap<u32, u64>) -> Duration {
    let ns = after
        .iter()
        .map(|(tid, ran)| ran.saturating_sub(before.get(tid).copied().unwrap_or(0)))
        .sum();
    Duration::from_nanos(ns)
}

pub async fn measure(
    hive: &Path,
    kills: usize,
    logins: usize,
    idle_agents: usize,
    idle_seconds: u64,
) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir()?;
    let state = dir.path();
    std::fs::write(
        state.join("hive.toml"),
        "[runtime]\nkind = \"process\"\nstop_timeout_seconds = 5\n",
    )?;
    let d = Daemon::start(hive, state)?;
    let (code, v) = d
        .call("POST", "/api/v1/agents", r#"{"name":"bench-w"}"#)
        .await?;
    ensure!(code < 300, "spawn answered {code}: {v}");
    let db = read_only(state)?;

    // 10a: kill → container_crash committed.
    let mut crash_to_told = Vec::with_capacity(kills);
    for _ in 0..kills {
        let pid = wait_up(&d, "bench-w").await?;
        let before = count(&db, "container_crash")?;
        let t0 = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        crash_to_told.push(until_told(&db, "container_crash", before, t0)?);
        // Started by hand: no backoff to wait for, and the crash count starts again.
        let (code, v): (u16, Value) = d.call("POST", "/api/v1/agents/bench-w/start", "{}").await?;
        ensure!(code < 300, "start answered {code}: {v}");
    }

    // 10b: credentials written → logged_in committed; removed → needs_login.
    let claude = state.join("secrets/bench-w/home/.claude");
    std::fs::create_dir_all(&claude)?;
    let file = claude.join(".credentials.json");
    let mut login_to_told = Vec::with_capacity(logins);
    for _ in 0..logins {
        let before = count(&db, "logged_in")?;
        let t0 = Instant::now();
        std::fs::write(&file, r#"{"claudeAiOauth":{}}"#)?;
        login_to_told.push(until_told(&db, "logged_in", before, t0)?);
        let before = count(&db, "needs_login")?;
        let t0 = Instant::now();
        std::fs::remove_file(&file)?;
        until_told(&db, "needs_login", before, t0)?;
    }
    d.stop()?;

    // 10c: many idle agents (no containers: the watcher's own work is what is measured).
    let dir = tempfile::tempdir()?;
    let d = Daemon::start(hive, dir.path())?;
    for i in 0..idle_agents {
        let (code, v) = d
            .call(
                "POST",
                "/api/v1/agents",
                &format!(r#"{{"name":"idle-{i}"}}"#),
            )
            .await?;
        ensure!(code < 300, "spawn answered {code}: {v}");
    }
    // Let the spawns' own work settle before the window opens.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (before, threads_before) = (cpu_time(d.pid())?, thread_cpu(d.pid())?);
    tokio::time::sleep(Duration::from_secs(idle_seconds)).await;
    let idle_cpu = ran_since(&threads_before, &thread_cpu(d.pid())?);
    let idle_cpu_ticks = cpu_time(d.pid())?.saturating_sub(before);
    d.stop()?;
    Ok(Figures {
        crash_to_told: Samples::new(crash_to_told),
        login_to_told: Samples::new(login_to_told),
        idle_agents,
        idle_seconds,
        idle_cpu,
        idle_cpu_ticks,
    })
}
