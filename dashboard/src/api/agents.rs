//! Agents' containers, operator side: what each runs, its isolation read from the kernel, start,
//! stop, restart, update, logs and the image gc.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response, sse};
use broker::containers::{Actor, GcReport, Outcome};
use futures_util::StreamExt;
use proto::{AgentDetail, AgentView};
use serde::Deserialize;

use super::{ApiPath, ApiQuery, ApiState};
use crate::error::ApiError;

fn agent_name(raw: &str) -> Result<broker::names::AgentName, ApiError> {
    Ok(broker::names::AgentName::parse(raw).map_err(broker::Error::from)?)
}

pub(super) async fn list(State(s): State<ApiState>) -> Json<Vec<AgentView>> {
    let mut views = Vec::new();
    for record in s.hive.agents() {
        // An agent removed between the reads is left out.
        let Ok(run) = s.hive.agent_run(&record.name) else {
            continue;
        };
        let axes = s.hive.agent_axes(&record.name);
        let liveness = s.hive.agent_liveness(&record.name).await.ok();
        views.push(AgentView {
            record: (&record).into(),
            run,
            axes,
            liveness,
        });
    }
    Json(views)
}

pub(super) async fn show(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<AgentDetail>, ApiError> {
    let agent = agent_name(&name)?;
    let run = s.hive.agent_run(&agent)?;
    let record = s
        .hive
        .agent(&agent)
        .ok_or_else(|| broker::Error::NotFound {
            what: format!("agent '{agent}'"),
        })?;
    let (isolation, isolation_error) = if run.pid.is_some() {
        match s.hive.agent_isolation(&agent).await {
            Ok(i) => (Some(i), None),
            Err(e) => (None, Some(e.to_string())),
        }
    } else {
        (None, Some("not running".to_owned()))
    };
    let confinement = match run.pid {
        Some(_) => s
            .hive
            .agent_confinement(&agent, broker::confinement::KeySearch::Search)
            .await
            .ok(),
        None => None,
    };
    Ok(Json(AgentDetail {
        record: (&record).into(),
        run,
        runtime: s.hive.runtime_kind(),
        isolation,
        isolation_error,
        confinement,
    }))
}

pub(super) async fn start(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Outcome>, ApiError> {
    Ok(Json(
        s.hive
            .start_agent(Actor::Operator, &agent_name(&name)?)
            .await?,
    ))
}

pub(super) async fn stop(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Outcome>, ApiError> {
    Ok(Json(
        s.hive
            .stop_agent(Actor::Operator, &agent_name(&name)?)
            .await?,
    ))
}

pub(super) async fn pause(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Outcome>, ApiError> {
    Ok(Json(
        s.hive
            .pause_agent(Actor::Operator, &agent_name(&name)?)
            .await?,
    ))
}

pub(super) async fn recheck(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Outcome>, ApiError> {
    Ok(Json(s.hive.recheck(&agent_name(&name)?).await?))
}

pub(super) async fn resume(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Outcome>, ApiError> {
    Ok(Json(
        s.hive
            .resume_agent(Actor::Operator, &agent_name(&name)?)
            .await?,
    ))
}

pub(super) async fn restart(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Outcome>, ApiError> {
    Ok(Json(
        s.hive
            .restart_agent(Actor::Operator, &agent_name(&name)?)
            .await?,
    ))
}

pub(super) async fn update(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Outcome>, ApiError> {
    Ok(Json(
        s.hive
            .update_agent(Actor::Operator, &agent_name(&name)?)
            .await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LogsQuery {
    #[serde(default)]
    lines: Option<usize>,
    /// `1`: a stream (server-sent `log` events, `{"text": …}`) of the last lines, then of every
    /// line appended, until the hive stops or the client goes.
    #[serde(default)]
    follow: Option<u8>,
}

pub(super) async fn logs(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> Result<Response, ApiError> {
    let agent = agent_name(&name)?;
    let lines = q.lines.unwrap_or(100);
    if q.follow.unwrap_or(0) != 0 {
        let rx = s.hive.follow_log(&agent, lines, s.shutdown.clone()).await?;
        let events = tokio_stream::wrappers::ReceiverStream::new(rx).map(|text| {
            Ok::<_, std::convert::Infallible>(
                sse::Event::default()
                    .event(proto::event::LOG)
                    .json_data(proto::LogText { text })
                    .unwrap_or_else(|_| sse::Event::default().event(proto::event::ERROR)),
            )
        });
        return Ok(sse::Sse::new(events)
            .keep_alive(sse::KeepAlive::default())
            .into_response());
    }
    let log = s.hive.agent_logs(&agent, lines).await?;
    Ok(Json(proto::AgentLog {
        agent: agent.to_string(),
        log,
    })
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StatsQuery {
    /// RFC 3339 or a span back from now (`1h`, `24h`, `7d`).
    since: Option<String>,
}

pub(super) async fn stats(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<StatsQuery>,
) -> Result<Json<broker::stats::AgentStats>, ApiError> {
    let agent = agent_name(&name)?;
    Ok(Json(s.hive.agent_stats(&agent, q.since.as_deref()).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CallsQuery {
    /// How many of the newest calls (default 200, at most 10 000).
    limit: Option<usize>,
}

/// The agent's newest model calls through its gateway, with their usage.
pub(super) async fn model_calls(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<CallsQuery>,
) -> Result<Json<Vec<broker::model_calls::CallRecord>>, ApiError> {
    let agent = agent_name(&name)?;
    let limit = q.limit.unwrap_or(200);
    Ok(Json(s.hive.model_calls(&agent, limit).await?))
}

pub(super) async fn gc(State(s): State<ApiState>) -> Result<Json<GcReport>, ApiError> {
    Ok(Json(s.hive.gc(Actor::Operator).await?))
}
