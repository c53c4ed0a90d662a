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
use axum::response::sse::{self, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use broker::Hive;
use broker::bus::Event;
use broker::mailbox::{Message, RecvLimits};
use broker::names::{Inbox, Recipient, Sender};
use broker::questions::{Answer, Question};
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::RequestBodyDeadlineLayer;

use crate::error::ApiError;

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
    // A body may be escaped JSON (up to 6 bytes per byte) plus the other fields.
    let body_limit = state.hive.mailbox.max_body_bytes() * 6 + 64 * 1024;
    Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/agents", get(agents))
        .route("/api/v1/messages", get(messages).post(send))
        .route("/api/v1/inbox", get(inbox))
        .route("/api/v1/inbox/recv", post(inbox_recv))
        .route("/api/v1/questions", get(questions))
        .route("/api/v1/questions/{id}/answer", post(answer))
        .fallback(not_found)
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

async fn agents(State(s): State<ApiState>) -> Json<Vec<broker::registry::AgentRecord>> {
    Json(s.hive.registry.list())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendRequest {
    to: String,
    body: String,
    #[serde(default)]
    in_reply_to: Option<i64>,
}

#[derive(Serialize)]
struct SendResponse {
    ids: Vec<i64>,
}

/// Sends a message as the operator.
async fn send(
    State(s): State<ApiState>,
    ApiJson(req): ApiJson<SendRequest>,
) -> Result<(StatusCode, Json<SendResponse>), ApiError> {
    let to = Recipient::parse(&req.to).map_err(broker::Error::from)?;
    let ids = s
        .hive
        .mailbox
        .send(&Sender::Operator, &to, req.body, req.in_reply_to)
        .await?;
    Ok((StatusCode::CREATED, Json(SendResponse { ids })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    agent: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    follow: Option<u8>,
}

impl ListQuery {
    fn limit(&self) -> Result<usize, ApiError> {
        match self.limit {
            None => Ok(100),
            Some(n) if (1..=MAX_LIST).contains(&n) => Ok(n),
            Some(n) => Err(broker::Error::invalid(
                "limit",
                format!("{n} is out of range; list 1 to {MAX_LIST}"),
            )
            .into()),
        }
    }

    fn follow(&self) -> bool {
        self.follow.unwrap_or(0) != 0
    }

    /// The agent filter, validated (`operator` is allowed: its inbox and what it sent).
    fn agent(&self) -> Result<Option<String>, ApiError> {
        match self.agent.as_deref() {
            None => Ok(None),
            Some("operator") => Ok(Some("operator".into())),
            Some(raw) => {
                let name = broker::names::AgentName::parse(raw).map_err(broker::Error::from)?;
                Ok(Some(name.to_string()))
            }
        }
    }
}

/// The message flow: recent messages, or (`follow=1`) a stream of new ones and deliveries.
async fn messages(
    State(s): State<ApiState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    let agent = q.agent()?;
    let limit = q.limit()?;
    if q.follow() {
        let events = event_stream(&s, move |e| agent.as_deref().is_none_or(|a| e.concerns(a)));
        return Ok(Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    Ok(Json(s.hive.mailbox.history(agent, limit).await?).into_response())
}

/// The operator's inbox, newest last. Marks nothing read; `inbox/recv` does.
async fn inbox(
    State(s): State<ApiState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<Message>>, ApiError> {
    if q.agent.is_some() || q.follow.is_some() {
        return Err(broker::Error::invalid(
            "query",
            "the inbox takes only `limit`; to wait for new messages use POST /api/v1/inbox/recv",
        )
        .into());
    }
    Ok(Json(
        s.hive.mailbox.inbox(&Inbox::Operator, q.limit()?).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecvRequest {
    #[serde(default)]
    wait_seconds: u64,
    #[serde(default = "default_max")]
    max: u64,
}

fn default_max() -> u64 {
    broker::mailbox::MAX_RECV as u64
}

#[derive(Serialize)]
struct RecvResponse {
    messages: Vec<Message>,
}

/// Takes the operator's queued messages, waiting up to `wait_seconds` for one to arrive.
async fn inbox_recv(
    State(s): State<ApiState>,
    ApiJson(req): ApiJson<RecvRequest>,
) -> Result<Json<RecvResponse>, ApiError> {
    let limits = RecvLimits::new(req.wait_seconds, req.max)?;
    let messages = tokio::select! {
        got = s.hive.mailbox.recv(&Inbox::Operator, limits) => got?,
        _ = s.shutdown.cancelled() => return Err(broker::Error::ShuttingDown.into()),
    };
    Ok(Json(RecvResponse { messages }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuestionsQuery {
    #[serde(default)]
    all: Option<u8>,
}

/// Open questions to the operator (`all=1`: answered and expired ones too).
async fn questions(
    State(s): State<ApiState>,
    ApiQuery(q): ApiQuery<QuestionsQuery>,
) -> Result<Json<Vec<Question>>, ApiError> {
    Ok(Json(s.hive.questions(q.all.unwrap_or(0) != 0).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswerRequest {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    choices: Option<Vec<String>>,
}

/// The operator answers a question; the asker gets the answer as a message.
async fn answer(
    State(s): State<ApiState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(req): ApiJson<AnswerRequest>,
) -> Result<Json<Question>, ApiError> {
    let answer = match (req.text, req.choices) {
        (Some(text), None) => Answer::Text(text),
        (None, Some(choices)) => Answer::Choices(choices),
        _ => {
            return Err(broker::Error::invalid(
                "answer",
                "give either `text` or `choices`, not both or neither",
            )
            .into());
        }
    };
    Ok(Json(s.hive.answer_question(id, answer).await?))
}

/// Bus events as SSE, filtered, ending at shutdown. A subscriber that fell behind gets a `lagged`
/// event telling it how many it missed (re-read the listing to catch up).
fn event_stream<K>(
    s: &ApiState,
    keep: K,
) -> impl Stream<Item = Result<sse::Event, Infallible>> + use<K>
where
    K: Fn(&Event) -> bool + Send + 'static,
{
    let shutdown = s.shutdown.clone();
    BroadcastStream::new(s.hive.bus.subscribe())
        .filter_map(move |item| {
            let out = match item {
                Ok(event) if keep(&event) => Some(to_sse(&event)),
                Ok(_) => None,
                Err(BroadcastStreamRecvError::Lagged(n)) => Some(
                    sse::Event::default()
                        .event("lagged")
                        .data(format!("{{\"missed\":{n}}}")),
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
        .unwrap_or_else(|_| sse::Event::default().event("error"))
}
