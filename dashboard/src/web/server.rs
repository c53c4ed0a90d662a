//! Serving the dashboard over TCP (`[dashboard] address/port`), and the admin-socket route that
//! mints one-time login links for `hive dashboard`.
//!
//! The listener is bound by [`Dashboard::open`] before the daemon says it is ready, and the bound
//! address is written to `run/dashboard.addr` (port 0 picks a free port). Slow clients are cut
//! off like the admin socket's; at most [`MAX_CONNECTIONS`] are open at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::post;
use axum::{Json, Router};
use broker::Hive;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{Auth, WebState};
use crate::admin_socket::{DRAIN, HEADER_DEADLINE};
use crate::error::ApiError;

/// Open browser connections at once (each page holds one SSE stream).
pub const MAX_CONNECTIONS: usize = 512;

/// The dashboard, bound and ready to serve.
pub struct Dashboard {
    listener: TcpListener,
    addr: SocketAddr,
    auth: Arc<Auth>,
}

impl Dashboard {
    /// Reads (or makes) the operator token, binds `[dashboard] address:port` and writes the bound
    /// address to `run/dashboard.addr`. Must run inside the tokio runtime.
    pub fn open(hive: &Hive) -> std::io::Result<Self> {
        let config = &hive.config().dashboard;
        let paths = hive.state_dir();
        let token = super::auth::load_or_create_token(&paths.operator_token())
            .map_err(|e| std::io::Error::other(format!("the dashboard's operator token: {e}")))?;
        let wanted = SocketAddr::new(config.address, config.port);
        let std_listener = std::net::TcpListener::bind(wanted).map_err(|e| {
            std::io::Error::other(format!(
                "cannot listen on {wanted} for the dashboard: {e} (set [dashboard] port, or \
                 enabled = false)"
            ))
        })?;
        std_listener
            .set_nonblocking(true)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let addr = std_listener
            .local_addr()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let listener = TcpListener::from_std(std_listener)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        std::fs::write(paths.dashboard_addr(), format!("{addr}\n")).map_err(|e| {
            std::io::Error::other(format!(
                "cannot write {}: {e}",
                paths.dashboard_addr().display()
            ))
        })?;
        Ok(Self {
            listener,
            addr,
            auth: Arc::new(Auth::new(&token)),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its sessions and login links (the benchmark logs in with a link minted here).
    pub fn auth(&self) -> &Arc<Auth> {
        &self.auth
    }

    /// Mints the one-time links of alerts (`[notify]`): each opens the alert's page (after a
    /// login when the browser has no session), at `base` (`[notify] dashboard_url`) or at this
    /// dashboard's own address.
    pub fn alert_links(&self, base: Option<&str>) -> broker::notify::LinkMinter {
        let auth = self.auth.clone();
        let base = base
            .map(|b| b.trim_end_matches('/').to_owned())
            .unwrap_or_else(|| base_url(self.addr));
        std::sync::Arc::new(move |path: &str| {
            let secret = auth.new_alert_link(&super::login::local_path(path));
            Some(format!("{base}/go?t={secret}"))
        })
    }

    /// The admin-socket routes of this dashboard (`POST /api/v1/dashboard/link`).
    pub fn admin_routes(&self) -> Router {
        link_routes(Some(LinkMinter {
            auth: self.auth.clone(),
            base: base_url(self.addr),
        }))
    }

    /// Serves until `shutdown`, then drains: the dashboard component's one task.
    pub async fn serve(self, hive: Arc<Hive>, shutdown: CancellationToken) {
        let app = super::router(WebState {
            hive,
            auth: self.auth,
            shutdown: shutdown.clone(),
        });
        serve_tcp(self.listener, app, shutdown).await;
    }
}

/// `http://addr`; an unspecified address (`0.0.0.0`) is shown as this host's loopback.
fn base_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        }
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
        }
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

#[derive(Clone)]
pub struct LinkMinter {
    auth: Arc<Auth>,
    base: String,
}

/// The admin-socket route `hive dashboard` calls; `None` when the dashboard is off.
pub fn link_routes(minter: Option<LinkMinter>) -> Router {
    Router::new().route(
        "/api/v1/dashboard/link",
        post(move || {
            let minter = minter.clone();
            async move {
                let Some(m) = minter else {
                    return Err(ApiError::new(
                        axum::http::StatusCode::CONFLICT,
                        "dashboard_off",
                        "the dashboard is off ([dashboard] enabled = false in hive.toml)",
                    ));
                };
                let secret = m.auth.new_link();
                Ok(Json(proto::dashboard::DashboardLink {
                    url: format!("{}/", m.base),
                    login_link: format!("{}/login/link?t={secret}", m.base),
                    expires_in_seconds: super::auth::LINK_TTL.as_secs(),
                }))
            }
        }),
    )
}

/// Serves `app` on `listener` until `shutdown`, then lets in-flight requests finish.
async fn serve_tcp(listener: TcpListener, app: Router, shutdown: CancellationToken) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "dashboard accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!("too many dashboard connections; closing one");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_DEADLINE)
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "dashboard connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("dashboard connections still open after the drain period; closing them");
    }
}
