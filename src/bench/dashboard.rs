//! Row 12: the operator's dashboard, served in this process by the daemon's own TCP server
//! (`dashboard::web::server::Dashboard` on a free loopback port) over a hive with 100 agents and
//! 1 000 approvals (100 of them pending), written straight into the store beforehand like row 8's
//! history. It reads: the server time of `/` and `/approvals` (a kept-alive HTTP/1 connection
//! with a session cookie, until the whole body is read); the SSE fan-out (50 clients on
//! `/events`, an operator send committed → every client has read its `message_sent` event); and
//! the page weight of `/` (its HTML plus every script and stylesheet it loads).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use broker::Hive;
use broker::config::{Config, RuntimeKind};
use broker::names::{AgentName, Recipient, Sender};
use broker::paths::StateDir;
use broker::registry::AgentKind;
use dashboard::web::server::Dashboard;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use crate::stats::Samples;

/// The hive's shape.
pub const AGENTS: usize = 100;
pub const APPROVALS: usize = 1000;
/// How many of the approvals are pending (the rest are resolved history).
const PENDING: usize = 100;
/// SSE clients connected at once.
pub const SSE_CLIENTS: usize = 50;

/// What row 12 measured.
pub struct Figures {
    pub hive_page: Samples,
    pub approvals_page: Samples,
    /// Event committed → all clients received it.
    pub fan_out: Samples,
    /// `/`'s HTML, and the scripts and stylesheets it loads, in bytes.
    pub html_bytes: usize,
    pub asset_bytes: usize,
}

pub async fn measure(page_samples: usize, events: usize) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir()?;
    prepare(dir.path()).await?;
    let hive = open(dir.path()).await?;
    let server = Dashboard::open(&hive)?;
    let addr = server.addr();
    let auth = server.auth().clone();
    let cookie = auth
        .use_link(&auth.new_link())
        .context("a fresh login link was refused")?;
    let stop = CancellationToken::new();
    let serving = tokio::spawn(server.serve(hive.clone(), stop.clone()));

    let mut client = Client::connect(addr, &cookie).await?;
    // Warm the caches (sqlite pages, askama's buffers) once per page before timing.
    let html = client.get("/").await?;
    client.get("/approvals").await?;
    let mut hive_page = Vec::with_capacity(page_samples);
    let mut approvals_page = Vec::with_capacity(page_samples);
    for _ in 0..page_samples {
        let t0 = Instant::now();
        client.get("/").await?;
        hive_page.push(t0.elapsed());
        let t0 = Instant::now();
        client.get("/approvals").await?;
        approvals_page.push(t0.elapsed());
    }
    let mut asset_bytes = 0;
    for asset in loaded_assets(&String::from_utf8_lossy(&html)) {
        asset_bytes += client.get(&asset).await?.len();
    }

    let fan_out = fan_out(&hive, addr, &cookie, events).await?;
    stop.cancel();
    let _ = serving.await;
    hive.close();
    Ok(Figures {
        hive_page: Samples::new(hive_page),
        approvals_page: Samples::new(approvals_page),
        fan_out,
        html_bytes: html.len(),
        asset_bytes,
    })
}

/// The hive the dashboard serves: no runtime (nothing runs; the pages read the same rows).
async fn open(root: &Path) -> anyhow::Result<Arc<Hive>> {
    let mut config = Config::default();
    config.runtime.kind = Some(RuntimeKind::Off);
    config.dashboard.port = 0;
    config.mailbox.max_queued_per_inbox = i64::MAX as u64;
    Ok(Hive::open(StateDir::new(root), config).await?)
}

/// 100 agents registered through the hive, then 1 000 approvals (spawns and applies spread over
/// the agents, each with a small diff) written straight into the store.
async fn prepare(root: &Path) -> anyhow::Result<()> {
    StateDir::new(root).create()?;
    let hive = open(root).await?;
    for i in 0..AGENTS {
        hive.add_agent(agent(i)?, AgentKind::Agent).await?;
    }
    let db = hive.state_dir().db();
    hive.close();
    drop(hive);
    let mut c = rusqlite::Connection::open(db)?;
    let tx = c.transaction()?;
    {
        let mut insert = tx.prepare(
            "INSERT INTO approvals (kind, agent, requester, commit_sha, base_sha, description, diff,
                                    stat, status, note, created_at, resolved_at, incarnation)
             VALUES (?1, ?2, 'manager', ?3, ?4, ?5, ?6, '1 file changed, 2 insertions(+), 1 deletion(-)',
                     ?7, ?8, ?9, ?10, (SELECT incarnation FROM agents WHERE name = ?2))",
        )?;
        let now = broker::store::unix_millis();
        for i in 0..APPROVALS {
            let name = agent(i % AGENTS)?;
            let pending = i >= APPROVALS - PENDING;
            let (status, note, resolved) = match (pending, i % 7) {
                (true, _) => ("pending", None, None),
                (false, 0) => ("denied", Some("not now"), Some(now)),
                (false, 1) => ("failed", None, Some(now)),
                _ => ("deployed", None, Some(now)),
            };
            let diff = format!(
                "diff --git a/agent.nix b/agent.nix\n--- a/agent.nix\n+++ b/agent.nix\n@@ -1,2 +1,3 @@\n \
                 {{ ... }}: {{\n-  hyperhive.model = \"m{i}\";\n+  hyperhive.model = \"m{}\";\n+  hyperhive.effort = \"high\";\n",
                i + 1
            );
            insert.execute(rusqlite::params![
                if i < AGENTS { "spawn" } else { "apply" },
                name.as_str(),
                format!("{i:040x}"),
                (i >= AGENTS).then(|| format!("{:040x}", i + 1_000_000)),
                format!("change {i} of {}", name.as_str()),
                diff,
                status,
                note,
                now - (APPROVALS - i) as i64 * 1000,
                resolved,
            ])?;
        }
    }
    tx.commit()?;
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
    Ok(())
}

fn agent(i: usize) -> anyhow::Result<AgentName> {
    Ok(AgentName::parse(&format!("agent-{i:03}"))?)
}

/// The `src` of each `<script>` and the `href` of each stylesheet `<link>` in `html`.
fn loaded_assets(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (tag, attr) in [("<script", "src=\""), ("<link", "href=\"")] {
        for part in html.split(tag).skip(1) {
            let head = &part[..part.find('>').unwrap_or(part.len())];
            if tag == "<link" && !head.contains("rel=\"stylesheet\"") {
                continue;
            }
            if let Some(at) = head.find(attr) {
                let rest = &head[at + attr.len()..];
                out.push(rest[..rest.find('"').unwrap_or(rest.len())].to_owned());
            }
        }
    }
    out
}

/// `events` operator sends, one at a time, each timed from just before the send until all
/// [`SSE_CLIENTS`] clients have read its event.
async fn fan_out(
    hive: &Arc<Hive>,
    addr: std::net::SocketAddr,
    cookie: &str,
    events: usize,
) -> anyhow::Result<Samples> {
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let mut ready = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..SSE_CLIENTS {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        ready.push(ready_rx);
        let (seen_tx, cookie) = (seen_tx.clone(), cookie.to_owned());
        clients.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let req = hyper::Request::get("/events")
                .header("host", addr.to_string())
                .header("cookie", format!("hive_session={cookie}"))
                .header("accept", "text/event-stream")
                .body(Empty::<Bytes>::new())?;
            let res = sender.send_request(req).await?;
            if res.status() != 200 {
                bail!("/events answered {}", res.status());
            }
            let _ = ready_tx.send(());
            let mut body = res.into_body();
            let mut pending = String::new();
            while let Some(frame) = body.frame().await {
                let Ok(data) = frame?.into_data() else {
                    continue;
                };
                pending.push_str(&String::from_utf8_lossy(&data));
                // Each event's marker is `fan-out N` in its body.
                while let Some(end) = pending.find("\n\n") {
                    let event: String = pending.drain(..end + 2).collect();
                    if event.starts_with("event: message_sent")
                        && let Some(at) = event.find("fan-out ")
                    {
                        let n: String = event[at + 8..]
                            .chars()
                            .take_while(char::is_ascii_digit)
                            .collect();
                        let _ = seen_tx.send((n.parse()?, Instant::now()));
                    }
                }
            }
            anyhow::Ok(())
        }));
    }
    drop(seen_tx);
    for r in ready {
        tokio::time::timeout(Duration::from_secs(10), r)
            .await
            .context("an SSE client did not connect")?
            .context("an SSE client failed to connect")?;
    }
    let to = Recipient::Agent(agent(0)?);
    let mut samples = Vec::with_capacity(events);
    for n in 0..events {
        let t0 = Instant::now();
        hive.send(&Sender::Operator, &to, format!("fan-out {n}"), None)
            .await?;
        let mut got = 0;
        let mut last = t0;
        while got < SSE_CLIENTS {
            let (seen_n, at) = tokio::time::timeout(Duration::from_secs(10), seen.recv())
                .await
                .context("an SSE client did not see the event within 10 s")?
                .context("the SSE clients ended")?;
            if seen_n == n {
                got += 1;
                last = last.max(at);
            }
        }
        samples.push(last - t0);
    }
    for c in clients {
        c.abort();
    }
    Ok(Samples::new(samples))
}

/// A logged-in browser on one kept-alive connection.
struct Client {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    host: String,
    cookie: String,
}

impl Client {
    async fn connect(addr: std::net::SocketAddr, cookie: &str) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Self {
            sender,
            host: addr.to_string(),
            cookie: format!("hive_session={cookie}"),
        })
    }

    /// One GET, until its whole body is read; the body.
    async fn get(&mut self, path: &str) -> anyhow::Result<Bytes> {
        self.sender.ready().await?;
        let req = hyper::Request::get(path)
            .header("host", &self.host)
            .header("cookie", &self.cookie)
            .body(Empty::new())?;
        let res = self.sender.send_request(req).await?;
        let status = res.status();
        let body = res.into_body().collect().await?.to_bytes();
        if status != 200 {
            bail!("GET {path} answered {status}");
        }
        Ok(body)
    }
}
