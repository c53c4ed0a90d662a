//! Row 8: costs as the history and the hive grow — the real daemon over a state dir holding 10 k,
//! 100 k and 1 M stored messages (10 agents), and 10, 50 and 100 agents (100 k messages). Each
//! configuration reads: an operator send's acknowledgement over the admin socket (p50), a
//! `GET /api/v1/status` on a fresh connection (what `hive status` does, p50), and the daemon's RSS
//! after a burst of sends once it went idle. Flat (within 2× of the smallest) is the target.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use broker::config::Synchronous;
use broker::names::AgentName;
use broker::registry::AgentKind;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::daemon::{self, Daemon, Memory};
use crate::inproc::{body, open_hive};
use crate::stats::Samples;

/// One configuration of the hive: how many messages are stored, how many agents it has.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub stored: usize,
    pub agents: usize,
}

/// What one configuration measured.
#[derive(Debug, Clone)]
pub struct Figures {
    pub shape: Shape,
    pub send: Samples,
    pub status: Samples,
    /// After the burst of sends, once idle.
    pub after_burst: Memory,
    pub burst: usize,
}

/// Sends timed per configuration, status requests timed, and sends in the burst.
pub struct Sizes {
    pub sends: usize,
    pub statuses: usize,
    pub burst: usize,
}

pub async fn measure(hive: &Path, shape: Shape, sizes: &Sizes) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir()?;
    prepare(dir.path(), shape).await?;
    let daemon = Daemon::start(hive, dir.path())?;
    tokio::time::sleep(daemon::SETTLE).await;

    let mut status = Vec::with_capacity(sizes.statuses);
    for _ in 0..sizes.statuses {
        let t0 = Instant::now();
        let code = daemon.get("/api/v1/status").await?;
        status.push(t0.elapsed());
        anyhow::ensure!(code == 200, "GET /api/v1/status answered {code}");
    }

    let socket = dir.path().join("run/admin.sock");
    let mut client = Client::connect(&socket).await?;
    let mut send = Vec::with_capacity(sizes.sends);
    for i in 0..sizes.sends {
        let t0 = Instant::now();
        client.send(i % shape.agents).await?;
        send.push(t0.elapsed());
    }

    // The burst: 16 connections sending at once, then the daemon is left idle.
    let per = sizes.burst / 16;
    let mut tasks = Vec::new();
    for c in 0..16 {
        let socket = socket.clone();
        let agents = shape.agents;
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(&socket).await?;
            for i in 0..per {
                client.send((c + i) % agents).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await.context("a burst sender panicked")??;
    }
    tokio::time::sleep(daemon::SETTLE * 3).await;
    let after_burst = daemon::memory(daemon.pid())?;
    daemon.stop()?;
    Ok(Figures {
        shape,
        send: Samples::new(send),
        status: Samples::new(status),
        after_burst,
        burst: per * 16,
    })
}

/// A state dir with `shape.agents` agents and `shape.stored` delivered messages to them, written
/// straight into the store's tables (the history's rows, not its sends, are what is measured).
async fn prepare(root: &Path, shape: Shape) -> anyhow::Result<()> {
    let hive = open_hive(root, Synchronous::Normal).await?;
    for i in 0..shape.agents {
        hive.add_agent(agent(i)?, AgentKind::Agent).await?;
    }
    let db = hive.state_dir().db();
    hive.close();
    drop(hive);
    let mut c = rusqlite::Connection::open(db)?;
    let body = body();
    let mut written = 0;
    while written < shape.stored {
        let tx = c.transaction()?;
        {
            let mut insert = tx.prepare(
                "INSERT INTO messages (sender, recipient, body, sent_at, state, delivered_at)
                 VALUES ('manager', ?1, ?2, ?3, 'delivered', ?3)",
            )?;
            let now = broker::store::unix_millis();
            for i in written..(written + 50_000).min(shape.stored) {
                insert.execute(rusqlite::params![
                    agent(i % shape.agents)?.as_str(),
                    body,
                    now
                ])?;
            }
        }
        tx.commit()?;
        written = (written + 50_000).min(shape.stored);
    }
    // Written past the store's writer, which keeps the counts: count them once here.
    broker::store::message_counts::recount(&c)?;
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
    Ok(())
}

fn agent(i: usize) -> anyhow::Result<AgentName> {
    Ok(AgentName::parse(&format!("agent-{i:03}"))?)
}

/// An operator on one kept-alive admin-socket connection.
struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    payloads: Vec<Bytes>,
}

impl Client {
    async fn connect(socket: &Path) -> anyhow::Result<Self> {
        let stream = tokio::net::UnixStream::connect(socket).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let payloads = (0..100)
            .map(|i| {
                let to = agent(i).expect("a valid name");
                Bytes::from(serde_json::json!({"to": to.as_str(), "body": body()}).to_string())
            })
            .collect();
        Ok(Self { sender, payloads })
    }

    /// One operator send to agent `to`; returns once its `201 Created` is read.
    async fn send(&mut self, to: usize) -> anyhow::Result<()> {
        self.sender.ready().await?;
        let request = hyper::Request::post("/api/v1/messages")
            .header("host", "hive")
            .header("content-type", "application/json")
            .body(Full::new(self.payloads[to % self.payloads.len()].clone()))?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        if status.as_u16() != 201 {
            bail!(
                "the API answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        Ok(())
    }
}
