//! `/api/v1`: the JSON API the CLI (over the admin socket) and the dashboard use (DESIGN §13).
//! Every request acts as the operator; who may reach it is decided by the listener in front
//! (SO_PEERCRED on the admin socket, the login session on the dashboard port).
//!
//! Errors are `{"error":{"code":"…","message":"…"}}`; unknown fields are refused; streams
//! (`?follow=1`) are server-sent events that end when the hive shuts down.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequest, FromRequestParts, State};
use axum::http::StatusCode;
use axum::response::sse;
use axum::routing::{get, post};
use axum::{Json, Router};
use broker::Hive;
use broker::bus::Event;
use futures_util::{Stream, StreamExt};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::RequestBodyDeadlineLayer;

use crate::error::ApiError;

mod agents;
mod config;
mod messages;

/// The most messages one listing returns.
pub const MAX_LIST: usize = 1000;

/// How long a client may take to send its whole request body.
pub const BODY_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct ApiState {
    pub hive: Arc<Hive>,
    /// Cancelled at shutdown: long polls return and streams end.
    pub shutdown: CancellationToken,
}

/// The `/api/v1` router.
pub fn router(state: ApiState) -> Router {
    routes(state).fallback(not_found)
}

/// The `/api/v1` routes without a fallback (the dashboard merges them into its own router).
pub(crate) fn routes(state: ApiState) -> Router {
    // A body may be escaped JSON (up to 6 bytes per byte) plus the other fields.
    let body_limit = state.hive.max_body_bytes() * 6 + 64 * 1024;
    Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/agents", get(agents::list).post(config::spawn))
        .route("/api/v1/agents/{name}", get(agents::show))
        .route("/api/v1/agents/{name}/start", post(agents::start))
        .route("/api/v1/agents/{name}/stop", post(agents::stop))
        .route("/api/v1/agents/{name}/restart", post(agents::restart))
        .route("/api/v1/agents/{name}/pause", post(agents::pause))
        .route("/api/v1/agents/{name}/resume", post(agents::resume))
        .route("/api/v1/agents/{name}/recheck", post(agents::recheck))
        .route("/api/v1/agents/{name}/update", post(agents::update))
        .route("/api/v1/agents/{name}/logs", get(agents::logs))
        .route("/api/v1/agents/{name}/stats", get(agents::stats))
        .route(
            "/api/v1/agents/{name}/model-calls",
            get(agents::model_calls),
        )
        .route("/api/v1/gc", post(agents::gc))
        .route(
            "/api/v1/messages",
            get(messages::messages).post(messages::send),
        )
        .route("/api/v1/messages/{id}", get(messages::message))
        .route("/api/v1/delivery-latency", get(messages::delivery_latency))
        .route("/api/v1/inbox", get(messages::inbox))
        .route("/api/v1/inbox/recv", post(messages::inbox_recv))
        .route("/api/v1/questions", get(messages::questions))
        .route("/api/v1/dead-letters", get(messages::dead_letters))
        .route(
            "/api/v1/dead-letters/{id}/redirect",
            post(messages::redirect_dead_letter),
        )
        .route(
            "/api/v1/dead-letters/{id}/drop",
            post(messages::drop_dead_letter),
        )
        .route("/api/v1/questions/{id}/answer", post(messages::answer))
        .route("/api/v1/approvals", get(config::approvals))
        .route("/api/v1/approvals/{id}", get(config::approval))
        .route("/api/v1/approvals/{id}/approve", post(config::approve))
        .route("/api/v1/approvals/{id}/deny", post(config::deny))
        .route("/api/v1/agents/{name}/deploys", get(config::deploys))
        .route("/api/v1/agents/{name}/rollback", post(config::rollback))
        .route("/api/v1/agents/{name}/destroy", post(config::destroy))
        .route("/api/v1/tombstones", get(config::tombstones))
        .route("/api/v1/tombstones/{id}/restore", post(config::restore))
        .route("/api/v1/tombstones/{id}/purge", post(config::purge))
        .route("/api/v1/audit", get(config::audit))
        .route("/api/v1/audit/verify", get(config::verify_audit))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(RequestBodyDeadlineLayer::new(BODY_DEADLINE))
        .with_state(state)
}

/// `Json<T>` whose rejections are API errors.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// `Path<T>` whose rejections are API errors.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// `Query<T>` whose rejections are API errors.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such API endpoint")
}

async fn status(State(s): State<ApiState>) -> Result<Json<broker::hive::Status>, ApiError> {
    Ok(Json(s.hive.status().await?))
}

/// Bus events as SSE, filtered, ending at shutdown. A subscriber that fell behind gets a `lagged`
/// event telling it how many it missed (re-read the listing to catch up).
pub(crate) fn event_stream<K>(
    s: &ApiState,
    keep: K,
) -> impl Stream<Item = Result<sse::Event, Infallible>> + use<K>
where
    K: Fn(&Event) -> bool + Send + 'static,
{
    let shutdown = s.shutdown.clone();
    BroadcastStream::new(s.hive.subscribe())
        .filter_map(move |item| {
            let out = match item {
                Ok(event) if keep(&event) => Some(to_sse(&event)),
                Ok(_) => None,
                Err(BroadcastStreamRecvError::Lagged(missed)) => Some(
                    sse::Event::default()
                        .event(proto::event::LAGGED)
                        .json_data(proto::Lagged { missed })
                        .unwrap_or_else(|_| sse::Event::default().event(proto::event::ERROR)),
                ),
            };
            std::future::ready(out.map(Ok))
        })
        .take_until(async move { shutdown.cancelled_owned().await })
}

fn to_sse(event: &Event) -> sse::Event {
    sse::Event::default()
        .event(event.name())
        .json_data(event)
        .unwrap_or_else(|_| sse::Event::default().event(proto::event::ERROR))
}
