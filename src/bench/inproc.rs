//! Rows 2 and 4: the broker used as a library, in this process — `send` → a waiting `recv`, the
//! 5-second-poll baseline, and durable sends per second with 1, 8 and 64 concurrent senders.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use broker::Hive;
use broker::config::{Config, Synchronous};
use broker::mailbox::RecvLimits;
use broker::names::{AgentName, Inbox, Recipient, Sender};
use broker::paths::StateDir;
use broker::registry::AgentKind;
use tokio::sync::mpsc;

use crate::limits::BODY_BYTES;
use crate::stats::{Samples, count_over_window};

/// How long the sender lets a woken receiver go back to waiting before the next sample.
pub const REARM: Duration = crate::limits::IDLE;

/// A hive in a temp state dir; the dir goes when this is dropped (after the hive is closed).
pub struct TempHive {
    pub hive: Arc<Hive>,
    pub dir: tempfile::TempDir,
}

impl TempHive {
    pub async fn open(synchronous: Synchronous) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("cannot create a temp state dir")?;
        let hive = open_hive(dir.path(), synchronous).await?;
        Ok(Self { hive, dir })
    }

    /// Registers `name` as an agent and returns it.
    pub async fn agent(&self, name: &str) -> anyhow::Result<AgentName> {
        let name = AgentName::parse(name)?;
        self.hive.add_agent(name.clone(), AgentKind::Agent).await?;
        Ok(name)
    }
}

impl Drop for TempHive {
    fn drop(&mut self) {
        self.hive.close();
    }
}

/// Opens (creating) a hive in `root`.
pub async fn open_hive(
    root: &std::path::Path,
    synchronous: Synchronous,
) -> anyhow::Result<Arc<Hive>> {
    let state = StateDir::new(root);
    state.create()?;
    let mut config = Config::default();
    config.store.synchronous = synchronous;
    // Throughput rows queue far more than the default per-inbox quota.
    config.mailbox.max_queued_per_inbox = i64::MAX as u64;
    Ok(Hive::open(state, config).await?)
}

pub fn body() -> String {
    "x".repeat(BODY_BYTES)
}

/// A task that waits in `recv` on `inbox` over and over and reports the instant each `recv`
/// returned with messages. It ends at the first wake after `stop` is set, or when the returned
/// receiver is dropped.
pub fn spawn_waiter(
    hive: Arc<Hive>,
    inbox: Inbox,
    stop: Arc<AtomicBool>,
) -> mpsc::UnboundedReceiver<Instant> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let limits = RecvLimits::new(60, 32).expect("valid limits");
        while !stop.load(Ordering::Relaxed) {
            match hive.recv(&inbox, limits).await {
                Ok(got) if got.is_empty() => continue,
                Ok(_) => {
                    if tx.send(Instant::now()).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    if !stop.load(Ordering::Relaxed) {
                        eprintln!("waiter: recv failed: {e}");
                    }
                    return;
                }
            }
        }
    });
    rx
}

/// Row 2: time from just before `send` (agent `a` → agent `b`) to the return of `b`'s waiting
/// `recv`, `n` samples after a short warm-up.
/// Also returns the hive's own delivery latency of the last hour after the run (the mailbox's
/// window, as `hive status` shows it).
pub async fn send_to_waiting_recv(
    n: usize,
) -> anyhow::Result<(Samples, broker::mailbox::DeliveryLatency)> {
    let h = TempHive::open(Synchronous::Normal).await?;
    let a = h.agent("alice").await?;
    let b = h.agent("bob").await?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut woke = spawn_waiter(h.hive.clone(), Inbox::Agent(b.clone()), stop.clone());
    let from = Sender::Agent(a);
    let to = Recipient::Agent(b);
    let body = body();
    let warmup = (n / 10).max(20);
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + warmup {
        tokio::time::sleep(REARM).await;
        let t0 = Instant::now();
        h.hive.send(&from, &to, body.clone(), None).await?;
        let at = woke.recv().await.context("the waiter stopped")?;
        if i >= warmup {
            samples.push(at.saturating_duration_since(t0));
        }
    }
    stop.store(true, Ordering::Relaxed);
    // One more message lets the waiter see `stop`.
    h.hive.send(&from, &to, body, None).await?;
    Ok((Samples::new(samples), h.hive.delivery_latency()))
}

/// The period of hyperhive's first version's inbox poll.
pub const POLL_PERIOD: Duration = Duration::from_secs(5);

/// Row 2's baseline: the same path with a receiver that polls the inbox every 5 s (a `recv` that
/// does not wait). Sample k is sent at a phase (k + ½)/n through its own poll period, so `n`
/// samples cover the period evenly; each takes one period.
pub async fn send_to_polling_recv(n: usize) -> anyhow::Result<Samples> {
    let h = TempHive::open(Synchronous::Normal).await?;
    let a = h.agent("alice").await?;
    let b = h.agent("bob").await?;
    let (tx, mut seen) = mpsc::unbounded_channel();
    let hive = h.hive.clone();
    let inbox = Inbox::Agent(b.clone());
    let start = tokio::time::Instant::now();
    let poller = tokio::spawn(async move {
        let limits = RecvLimits::new(0, 32).expect("valid limits");
        let mut every = tokio::time::interval_at(start, POLL_PERIOD);
        loop {
            every.tick().await;
            match hive.recv(&inbox, limits).await {
                Ok(got) if got.is_empty() => {}
                Ok(_) => {
                    if tx.send(Instant::now()).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    eprintln!("poller: recv failed: {e}");
                    return;
                }
            }
        }
    });
    let from = Sender::Agent(a);
    let to = Recipient::Agent(b);
    let mut samples = Vec::with_capacity(n);
    for k in 0..n {
        let phase = POLL_PERIOD.mul_f64((k as f64 + 0.5) / n as f64);
        tokio::time::sleep_until(start + POLL_PERIOD * k as u32 + phase).await;
        let t0 = Instant::now();
        h.hive.send(&from, &to, body(), None).await?;
        let at = seen.recv().await.context("the poller stopped")?;
        samples.push(at.saturating_duration_since(t0));
    }
    poller.abort();
    Ok(Samples::new(samples))
}

/// Row 4: durable sends per second with `senders` concurrent agents, each awaiting each send to
/// the manager, measured over `window` after `warmup`.
pub async fn sends_per_second(
    synchronous: Synchronous,
    senders: usize,
    warmup: Duration,
    window: Duration,
) -> anyhow::Result<f64> {
    let h = TempHive::open(synchronous).await?;
    let mut names = Vec::with_capacity(senders);
    for i in 0..senders {
        names.push(h.agent(&format!("sender-{i}")).await?);
    }
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(senders);
    for name in names {
        let hive = h.hive.clone();
        let count = count.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let from = Sender::Agent(name);
            let to = Recipient::Agent(AgentName::manager());
            let body = body();
            while !stop.load(Ordering::Relaxed) {
                hive.send(&from, &to, body.clone(), None).await?;
                count.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    let (sent, seconds) = count_over_window(&count, &stop, tasks, warmup, window).await?;
    Ok(sent as f64 / seconds)
}

/// Fills `root` with a hive of `agents` agents and `per_agent` queued messages from each to the
/// manager, then closes it (row 5's loaded state).
pub async fn prepare_loaded_state(
    root: &std::path::Path,
    agents: usize,
    per_agent: usize,
) -> anyhow::Result<()> {
    let hive = open_hive(root, Synchronous::Normal).await?;
    let mut tasks = Vec::with_capacity(agents);
    for i in 0..agents {
        let name = AgentName::parse(&format!("agent-{i:02}"))?;
        hive.add_agent(name.clone(), AgentKind::Agent).await?;
        let hive = hive.clone();
        tasks.push(tokio::spawn(async move {
            let from = Sender::Agent(name);
            let to = Recipient::Agent(AgentName::manager());
            for _ in 0..per_agent {
                hive.send(&from, &to, body(), None).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await.context("a sender panicked")??;
    }
    hive.close();
    Ok(())
}
