//! Row 3: the operator's send through the real HTTP API — `dashboard::api::router` served by
//! `dashboard::admin_socket::serve` on a temp unix socket in this process, a hyper HTTP/1 client on
//! one kept-alive connection — to the return of the manager's waiting in-process `recv`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use broker::config::Synchronous;
use broker::names::{AgentName, Inbox, Recipient, Sender};
use dashboard::admin_socket;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use crate::inproc::{REARM, TempHive, body, spawn_waiter};
use crate::stats::Samples;

/// What one run of row 3 measured.
#[derive(Debug, Clone)]
pub struct AdminFigures {
    /// Request written → the manager's `recv` returned.
    pub wake: Samples,
    /// Request written → the `201 Created` (the send's acknowledgement) fully read.
    pub ack: Samples,
}

pub async fn operator_send_to_waiting_recv(n: usize) -> anyhow::Result<AdminFigures> {
    let h = TempHive::open(Synchronous::Normal).await?;
    let shutdown = CancellationToken::new();
    let socket = h.dir.path().join("bench-admin.sock");
    let listener = admin_socket::bind(&socket).context("cannot bind the admin socket")?;
    let server = tokio::spawn(admin_socket::serve_admin_api(
        h.hive.clone(),
        listener,
        dashboard::web::server::link_routes(None),
        shutdown.clone(),
    ));

    let stream = tokio::net::UnixStream::connect(&socket).await?;
    let (mut client, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let conn = tokio::spawn(conn);

    let stop = Arc::new(AtomicBool::new(false));
    let mut woke = spawn_waiter(
        h.hive.clone(),
        Inbox::Agent(AgentName::manager()),
        stop.clone(),
    );
    let payload = Bytes::from(serde_json::json!({"to": "manager", "body": body()}).to_string());
    let warmup = (n / 10).max(20);
    let mut wake = Vec::with_capacity(n);
    let mut ack = Vec::with_capacity(n);
    for i in 0..n + warmup {
        tokio::time::sleep(REARM).await;
        client.ready().await?;
        let request = hyper::Request::post("/api/v1/messages")
            .header("host", "hive")
            .header("content-type", "application/json")
            .body(Full::new(payload.clone()))?;
        let t0 = Instant::now();
        let response = client.send_request(request).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        let acked = t0.elapsed();
        if status.as_u16() != 201 {
            bail!(
                "the API answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        let at = woke.recv().await.context("the waiter stopped")?;
        if i >= warmup {
            wake.push(at.saturating_duration_since(t0));
            ack.push(acked);
        }
    }
    stop.store(true, Ordering::Relaxed);
    // One more message lets the waiter see `stop`.
    h.hive
        .send(
            &Sender::Operator,
            &Recipient::Agent(AgentName::manager()),
            body(),
            None,
        )
        .await?;
    drop(client);
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    conn.abort();
    Ok(AdminFigures {
        wake: Samples::new(wake),
        ack: Samples::new(ack),
    })
}
