//! Messages, the operator's inbox, and questions.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use broker::mailbox::{Message, RecvLimits};
use broker::names::{Inbox, Recipient, Sender};
use broker::questions::{Answer, Question};
use serde::{Deserialize, Serialize};

use super::{ApiJson, ApiPath, ApiQuery, ApiState, MAX_LIST, event_stream};
use crate::error::ApiError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SendRequest {
    to: String,
    body: String,
    #[serde(default)]
    in_reply_to: Option<i64>,
}

/// Sends a message as the operator.
pub(super) async fn send(
    State(s): State<ApiState>,
    ApiJson(req): ApiJson<SendRequest>,
) -> Result<(StatusCode, Json<proto::message::Posted>), ApiError> {
    let to = Recipient::parse(&req.to).map_err(broker::Error::from)?;
    let ids = s
        .hive
        .send(&Sender::Operator, &to, req.body, req.in_reply_to)
        .await?;
    Ok((StatusCode::CREATED, Json(proto::message::Posted { ids })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
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
pub(super) async fn messages(
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
    Ok(Json(s.hive.message_history(agent, limit).await?).into_response())
}

/// One message with its receipt (`sent_at`, `leased_at` and `turn`, `delivered_at`).
pub(super) async fn message(
    State(s): State<ApiState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Message>, ApiError> {
    Ok(Json(s.hive.message(id).await?))
}

/// Sent → picked up and sent → delivered, p50/p99 over the last hour.
pub(super) async fn delivery_latency(
    State(s): State<ApiState>,
) -> Json<broker::mailbox::DeliveryLatency> {
    Json(s.hive.delivery_latency())
}

/// The operator's inbox, newest last. Marks nothing read; `inbox/recv` does.
pub(super) async fn inbox(
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
    Ok(Json(s.hive.operator_inbox(q.limit()?).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RecvRequest {
    #[serde(default)]
    wait_seconds: u64,
    #[serde(default = "default_max")]
    max: u64,
}

fn default_max() -> u64 {
    broker::mailbox::MAX_RECV as u64
}

#[derive(Serialize)]
pub(super) struct RecvResponse {
    messages: Vec<Message>,
}

/// Takes the operator's queued messages, waiting up to `wait_seconds` for one to arrive.
pub(super) async fn inbox_recv(
    State(s): State<ApiState>,
    ApiJson(req): ApiJson<RecvRequest>,
) -> Result<Json<RecvResponse>, ApiError> {
    let limits = RecvLimits::new(req.wait_seconds, req.max)?;
    let messages = tokio::select! {
        got = s.hive.recv(&Inbox::Operator, limits) => got?,
        _ = s.shutdown.cancelled() => return Err(broker::Error::ShuttingDown.into()),
    };
    Ok(Json(RecvResponse { messages }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct QuestionsQuery {
    #[serde(default)]
    all: Option<u8>,
}

/// Open questions to the operator (`all=1`: answered and expired ones too).
pub(super) async fn questions(
    State(s): State<ApiState>,
    ApiQuery(q): ApiQuery<QuestionsQuery>,
) -> Result<Json<Vec<Question>>, ApiError> {
    Ok(Json(s.hive.questions(q.all.unwrap_or(0) != 0).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AnswerRequest {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    choices: Option<Vec<String>>,
}

/// The operator answers a question; the asker gets the answer as a message.
pub(super) async fn answer(
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

/// The dead letters: messages queued too long for agents that cannot take them.
pub(super) async fn dead_letters(
    State(s): State<ApiState>,
) -> Result<Json<Vec<proto::DeadLetter>>, ApiError> {
    let letters = s.hive.dead_letters().await?;
    Ok(Json(
        letters.into_iter().map(proto::DeadLetter::from).collect(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RedirectRequest {
    /// An agent, or `operator`.
    to: String,
}

/// Sends a dead letter to another inbox instead; answers the new message.
pub(super) async fn redirect_dead_letter(
    State(s): State<ApiState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(req): ApiJson<RedirectRequest>,
) -> Result<Json<Message>, ApiError> {
    Ok(Json(s.hive.redirect_dead_letter(id, &req.to).await?))
}

/// Drops a dead letter.
pub(super) async fn drop_dead_letter(
    State(s): State<ApiState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<proto::Dropped>, ApiError> {
    s.hive.drop_dead_letter(id).await?;
    Ok(Json(proto::Dropped { dropped: id }))
}
