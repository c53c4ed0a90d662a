//! The admin socket server: HTTP/1.1 on a unix socket, for root and the daemon's own uid only.
//!
//! The socket file is 0600, and each connection's peer is checked again with SO_PEERCRED: a
//! client of another uid gets `403 forbidden` and nothing else. Slow clients are cut off: the
//! request head must arrive within [`HEADER_DEADLINE`], the body within the API's deadline, and at
//! most [`MAX_CONNECTIONS`] are open at once.

use std::io;
use std::path::Path;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;

/// How long a client may take to send a request head.
pub const HEADER_DEADLINE: Duration = Duration::from_secs(10);

/// Open connections at once; more are closed on accept, so a flood cannot take every fd. Each
/// idle one is cut off after [`HEADER_DEADLINE`], so a flood holds the door for 10 s at most.
pub const MAX_CONNECTIONS: usize = 1024;

/// How long in-flight requests get to finish at shutdown.
pub const DRAIN: Duration = Duration::from_secs(5);

/// Who may use the socket.
#[derive(Debug, Clone, Copy)]
pub struct PeerPolicy {
    /// The daemon's own effective uid; root is always allowed.
    pub daemon_uid: u32,
}

impl PeerPolicy {
    pub fn current() -> Self {
        Self {
            daemon_uid: nix::unistd::geteuid().as_raw(),
        }
    }

    pub fn permits(&self, uid: u32) -> bool {
        uid == 0 || uid == self.daemon_uid
    }
}

/// Binds `path` with mode 0600 (no moment at which it is wider), replacing a stale socket.
/// The caller must hold the daemon lock: whatever socket is there is a dead daemon's.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    bound
}

/// Serves `/api/v1` of `hive`, plus `extra` routes (the dashboard's login links), on `listener`
/// (for root and this process's uid) until `shutdown`, then drains: the admin API component's
/// one task.
pub async fn serve_admin_api(
    hive: std::sync::Arc<broker::Hive>,
    listener: UnixListener,
    extra: Router,
    shutdown: CancellationToken,
) {
    let app = crate::api::router(crate::api::ApiState {
        hive,
        shutdown: shutdown.clone(),
    })
    .merge(extra);
    serve(listener, app, PeerPolicy::current(), shutdown).await
}

/// Serves `app` on `listener` until `shutdown`, then lets in-flight requests finish (at most
/// [`DRAIN`]).
pub async fn serve(
    listener: UnixListener,
    app: Router,
    policy: PeerPolicy,
    shutdown: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let forbidden = Router::new().fallback(|| async {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the admin socket is for root and the hive's own user",
        )
    });
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of fds or similar: say so and keep serving the clients we have.
                    tracing::warn!(error = %e, "admin socket accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!("too many admin connections; closing one");
            continue;
        };
        let peer = stream.peer_cred().ok();
        let allowed = peer.is_some_and(|c| policy.permits(c.uid()));
        if !allowed {
            tracing::warn!(uid = ?peer.map(|c| c.uid()), pid = ?peer.and_then(|c| c.pid()),
                "refused an admin socket client of another uid");
        }
        let service = TowerToHyperService::new(if allowed {
            app.clone()
        } else {
            forbidden.clone()
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_DEADLINE)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("admin connections still open after the drain period; closing them");
    }
}
