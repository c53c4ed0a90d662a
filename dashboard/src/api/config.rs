//! Config changes, operator side: approvals, spawn, deploy history, rollback, destroy, tombstones
//! and the audit chain. None of these is reachable from any agent socket.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use broker::approvals::{Approval, Deploy};
use broker::audit::{AuditEntry, Verification};
use broker::names::AgentName;
use proto::{AgentRecord, Destroyed, Purged, Restored, Tombstone};
use serde::Deserialize;

use super::{ApiJson, ApiPath, ApiQuery, ApiState, MAX_LIST};
use crate::error::ApiError;

fn agent_name(raw: &str) -> Result<AgentName, ApiError> {
    Ok(AgentName::parse(raw).map_err(broker::Error::from)?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ApprovalsQuery {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    agent: Option<String>,
}

pub(super) async fn approvals(
    State(s): State<ApiState>,
    ApiQuery(q): ApiQuery<ApprovalsQuery>,
) -> Result<Json<Vec<Approval>>, ApiError> {
    let agent = q.agent.as_deref().map(agent_name).transpose()?;
    Ok(Json(
        s.hive
            .approvals(q.status, agent.map(|a| a.to_string()))
            .await?,
    ))
}

pub(super) async fn approval(
    State(s): State<ApiState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Approval>, ApiError> {
    Ok(Json(s.hive.approval(id).await?))
}

/// The approve body: the second confirmation of a change that widens isolation and the override
/// of a failed check build. An empty body confirms nothing.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ApproveRequest {
    #[serde(default)]
    yes_widen: bool,
    #[serde(default)]
    override_failed_build: bool,
}

pub(super) async fn approve(
    State(s): State<ApiState>,
    ApiPath(id): ApiPath<i64>,
    body: axum::body::Bytes,
) -> Result<Json<Approval>, ApiError> {
    let req: ApproveRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ApproveRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                format!(
                    "the approve body is {{\"yes_widen\": bool, \"override_failed_build\": bool}}: {e}"
                ),
            )
        })?
    };
    let confirm = broker::approvals::Confirm {
        yes_widen: req.yes_widen,
        override_failed_build: req.override_failed_build,
    };
    Ok(Json(s.hive.approve_with(id, confirm).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DenyRequest {
    #[serde(default)]
    note: Option<String>,
}

pub(super) async fn deny(
    State(s): State<ApiState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(req): ApiJson<DenyRequest>,
) -> Result<Json<Approval>, ApiError> {
    Ok(Json(s.hive.deny(id, req.note).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SpawnRequest {
    name: String,
    /// The new agent's agent.nix; the template's when absent.
    #[serde(default)]
    agent_nix: Option<String>,
}

/// The operator creates an agent directly (audited, no approval).
pub(super) async fn spawn(
    State(s): State<ApiState>,
    ApiJson(req): ApiJson<SpawnRequest>,
) -> Result<(StatusCode, Json<AgentRecord>), ApiError> {
    if req.agent_nix.as_ref().is_some_and(|n| n.len() > 256 * 1024) {
        return Err(broker::Error::invalid("agent_nix", "at most 256 KiB").into());
    }
    Ok((
        StatusCode::CREATED,
        Json(AgentRecord::from(
            &s.hive.spawn(&req.name, req.agent_nix).await?,
        )),
    ))
}

pub(super) async fn deploys(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Vec<Deploy>>, ApiError> {
    Ok(Json(s.hive.deploys(&agent_name(&name)?).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RollbackRequest {
    deploy: i64,
}

pub(super) async fn rollback(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<RollbackRequest>,
) -> Result<Json<Deploy>, ApiError> {
    Ok(Json(
        s.hive.rollback(&agent_name(&name)?, req.deploy).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DestroyRequest {
    #[serde(default)]
    purge: bool,
}

pub(super) async fn destroy(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<DestroyRequest>,
) -> Result<Json<Destroyed>, ApiError> {
    let id = s.hive.destroy(&agent_name(&name)?, req.purge).await?;
    Ok(Json(Destroyed {
        tombstone: id.to_string(),
        purged: req.purge,
    }))
}

pub(super) async fn tombstones(
    State(s): State<ApiState>,
) -> Result<Json<Vec<Tombstone>>, ApiError> {
    Ok(Json(
        s.hive
            .tombstones()?
            .into_iter()
            .map(Tombstone::from)
            .collect(),
    ))
}

pub(super) async fn restore(
    State(s): State<ApiState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Restored>, ApiError> {
    let agent = s.hive.restore(&id).await?;
    Ok(Json(Restored {
        agent: agent.to_string(),
    }))
}

pub(super) async fn purge(
    State(s): State<ApiState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Purged>, ApiError> {
    s.hive.purge(&id).await?;
    Ok(Json(Purged { purged: id }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
    #[serde(default)]
    agent: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

pub(super) async fn audit(
    State(s): State<ApiState>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    let agent = q.agent.as_deref().map(agent_name).transpose()?;
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_LIST);
    Ok(Json(
        s.hive.audit(agent.map(|a| a.to_string()), limit).await?,
    ))
}

pub(super) async fn verify_audit(
    State(s): State<ApiState>,
) -> Result<Json<Verification>, ApiError> {
    Ok(Json(s.hive.verify_audit().await?))
}
