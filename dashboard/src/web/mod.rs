//! The operator's web dashboard (DESIGN §12): server-rendered pages ([`pages`]), the login
//! ([`auth`]), one SSE stream of bus events (`/events`), the embedded assets ([`assets`]), and
//! `/api/v1` behind the same session. [`server`] serves it over TCP.
//!
//! Every route but the login, the one-time link and the assets needs a session: pages without one
//! redirect to `/login`, `/api/v1` and `/events` answer 401. Every POST must come from this origin
//! (`Origin` equal to `http://<Host>`) and carry the session's CSRF token (the `csrf` form field or
//! the `x-csrf-token` header), else it is refused before any handler runs. Responses never carry
//! a file path or an internal error's text (see [`crate::error`]).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use broker::Hive;
use tokio_util::sync::CancellationToken;

use crate::api::ApiState;
use crate::error::ApiError;

pub mod assets;
pub mod auth;
mod login;
mod pages;
pub mod server;

pub use auth::Auth;

/// The largest form body a page posts (an agent.nix in a spawn form, a message body escaped).
fn form_limit(hive: &Hive) -> usize {
    hive.max_body_bytes() * 6 + 1024 * 1024
}

/// The header a script sends the CSRF token in (forms send the `csrf` field).
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The Content-Security-Policy of every response: scripts and styles only from this origin (no
/// inline script), no framing, forms only to this origin.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

#[derive(Clone)]
pub struct WebState {
    pub hive: Arc<Hive>,
    pub auth: Arc<Auth>,
    /// Cancelled at shutdown: the event stream ends.
    pub shutdown: CancellationToken,
}

impl WebState {
    fn api(&self) -> ApiState {
        ApiState {
            hive: self.hive.clone(),
            shutdown: self.shutdown.clone(),
        }
    }
}

/// The whole dashboard: pages, login, assets, `/events` and `/api/v1`.
pub fn router(state: WebState) -> Router {
    // Merged, not mounted with `route_service("/api/v1/{*rest}")`: a mounted router's handlers
    // would see the outer `rest` parameter beside their own and refuse every `{name}` path.
    let api = crate::api::routes(state.api())
        .route_layer(middleware::from_fn_with_state(state.clone(), guard));
    let guarded = pages::routes()
        .route("/events", get(events))
        .route("/logout", post(login::logout))
        // Any other `/api/v1` path: 401 without a session, else a JSON 404.
        .route("/api/v1/{*rest}", any(api_not_found))
        .route_layer(middleware::from_fn_with_state(state.clone(), guard));
    Router::new()
        .route("/login", get(login::page).post(login::submit))
        .route("/login/link", get(login::link))
        .route("/go", get(login::alert_link))
        .route("/assets/{name}", get(assets::serve))
        .merge(guarded)
        .fallback(pages::not_found)
        .with_state(state)
        .merge(api)
        .layer(middleware::from_fn(security_headers))
}

async fn api_not_found() -> Response {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such API route").into_response()
}

/// Whether a path answers JSON (401 without a session) rather than HTML (a redirect to login).
fn is_api(path: &str) -> bool {
    path.starts_with("/api/") || path == "/events"
}

/// A refusal before any handler ran: JSON for the API, a short page for a browser.
fn refuse(api: bool, status: StatusCode, code: &'static str, message: &str) -> Response {
    if api {
        ApiError::new(status, code, message).into_response()
    } else {
        pages::error_page(status, message)
    }
}

/// Checks the session, and for a POST the Origin and the CSRF token; hands the session to the
/// handler as an extension.
async fn guard(State(s): State<WebState>, req: Request, next: Next) -> Response {
    let api = is_api(req.uri().path());
    let session = auth::cookie(req.headers(), auth::SESSION_COOKIE).and_then(|c| s.auth.session(c));
    let Some(session) = session else {
        if api {
            return refuse(
                true,
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "log in first: `hive dashboard` prints a login link",
            );
        }
        return login::to_login();
    };
    let mut req = req;
    if req.method() != Method::GET && req.method() != Method::HEAD {
        if !same_origin(req.headers()) {
            tracing::warn!(path = %req.uri().path(), "refused a cross-origin request to the dashboard");
            return refuse(
                api,
                StatusCode::FORBIDDEN,
                "cross_origin",
                "refused: the request did not come from this dashboard's own pages",
            );
        }
        let (parts, body) = req.into_parts();
        let (token, body) = match parts.headers.get(CSRF_HEADER) {
            Some(v) => (v.to_str().ok().map(str::to_owned), body),
            None if is_form(&parts.headers) => {
                let Ok(bytes) = axum::body::to_bytes(body, form_limit(&s.hive)).await else {
                    return refuse(
                        api,
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "request_too_large",
                        "the form is too large",
                    );
                };
                (form_field(&bytes, "csrf"), Body::from(bytes))
            }
            None => (None, body),
        };
        if !token.is_some_and(|t| auth::same_secret(&t, &session.csrf)) {
            return refuse(
                api,
                StatusCode::FORBIDDEN,
                "csrf",
                "refused: the CSRF token is missing or stale; reload the page and try again",
            );
        }
        req = Request::from_parts(parts, body);
    }
    req.extensions_mut().insert(session);
    next.run(req).await
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
}

/// The first value of `name` in a urlencoded form.
pub(crate) fn form_field(bytes: &[u8], name: &str) -> Option<String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(bytes)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// Whether a request says it comes from this origin: `Origin` must be `http://<Host>` (a browser
/// sends `Origin` with every POST; a script must set it).
pub(crate) fn same_origin(headers: &HeaderMap) -> bool {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    match (origin, host) {
        (Some(origin), Some(host)) => {
            origin.strip_prefix("http://") == Some(host)
                || origin.strip_prefix("https://") == Some(host)
        }
        _ => false,
    }
}

/// The security headers of every response.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // `same-origin`, not `no-referrer`: under no-referrer a browser sends `Origin: null` with a
    // form POST, which the Origin check must refuse.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

/// `/events`: every bus event as server-sent events, until the hive stops.
async fn events(State(s): State<WebState>) -> Response {
    let stream = crate::api::event_stream(&s.api(), |_| true);
    axum::response::sse::Sse::new(stream)
        .keep_alive(axum::response::sse::KeepAlive::default())
        .into_response()
}
