//! Approvals (DESIGN §7): the manager asks, the operator decides. States
//! `pending → approved → building → deployed | failed` and `pending → denied` ([`crate::status`]);
//! rows are never deleted. Exactly one of two concurrent decisions wins (a conditional UPDATE on
//! `pending`). What the operator is shown is what applies: `show` and `approve` compare the
//! request's base with the applied HEAD of that moment, and a request whose base moved is shown
//! against today's HEAD, flagged stale, and refused at approve ("stale: ask again").
//!
//! The store is the truth and git follows it: a decision commits its row, its deploy and its audit
//! row in one transaction, then moves the applied repo. If the daemon dies between the two,
//! [`Hive::reconcile_applied`] at the next start moves the repo to where the store says it is.
//!
//! These are `Hive`'s own use cases, not a service: request, approve, deny, spawn and rollback
//! each combine the store, the config repos, the registry, the review's check, the lifecycle and
//! the containers under `config_lock`, which is the composition root's job.

use std::collections::BTreeMap;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::json;

use crate::audit;
use crate::bus::Event;
use crate::error::{Error, Result};
use crate::hive::Hive;
use crate::lifecycle::NewAgent;
use crate::mailbox::{Message, insert_messages};
use crate::names::AgentName;
use crate::registry::{AgentKind, AgentRecord};
pub use crate::review::Confirm;
use crate::status::{ApprovalStatus, DeployStatus, Lifecycle, Stored, transition};
use crate::store::unix_millis;

pub use proto::approval::{Approval, Check, CheckStatus, Deploy, RiskFlag, RiskKind};

/// What `request_spawn(name)` without a commit answers.
#[derive(Debug, Clone, Serialize)]
pub struct Draft {
    pub agent: String,
    /// The proposed repo as the manager sees it inside its container.
    pub repo: String,
    pub head: String,
    pub next: String,
}

/// The columns [`approval_from_row`] reads, in order: the approval's (`ap`), then its check's
/// (`ch`, from [`APPROVALS_WITH_CHECKS`]).
fn approval_columns() -> String {
    format!(
        "ap.id, ap.kind, ap.agent, ap.requester, ap.commit_sha, ap.base_sha, ap.description, \
         ap.stat, ap.status, ap.note, ap.created_at, ap.resolved_at, {}",
        crate::review::CHECK_COLUMNS
    )
}

/// Approvals with their check rows (if any).
const APPROVALS_WITH_CHECKS: &str =
    "approvals ap LEFT JOIN approval_checks ch ON ch.approval_id = ap.id";

fn approval_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Approval> {
    let (check, risk) = crate::review::check_from_row(r, 12)?;
    Ok(Approval {
        id: r.get(0)?,
        kind: r.get(1)?,
        agent: r.get(2)?,
        requester: r.get(3)?,
        commit: r.get(4)?,
        base: r.get(5)?,
        description: r.get(6)?,
        stat: r.get(7)?,
        status: r.get::<_, Stored<ApprovalStatus>>(8)?.0,
        note: r.get(9)?,
        created_at: r.get(10)?,
        resolved_at: r.get(11)?,
        diff: None,
        files: None,
        stale: false,
        applied_head: None,
        deploy: None,
        risk,
        check,
    })
}

/// The columns [`deploy_from_row`] reads, in order.
pub(crate) const DEPLOY_COLUMNS: &str =
    "id, agent, commit_sha, approval_id, kind, status, created_at, log_tail";

pub(crate) fn deploy_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Deploy> {
    Ok(Deploy {
        id: r.get(0)?,
        agent: r.get(1)?,
        commit: r.get(2)?,
        approval: r.get(3)?,
        kind: r.get(4)?,
        status: r.get::<_, Stored<DeployStatus>>(5)?.0,
        created_at: r.get(6)?,
        message: r.get(7)?,
    })
}

pub(crate) fn get_approval(c: &Connection, id: i64) -> Result<Approval> {
    c.prepare_cached(&format!(
        "SELECT {} FROM {APPROVALS_WITH_CHECKS} WHERE ap.id = ?1",
        approval_columns()
    ))?
    .query_row([id], approval_from_row)
    .optional()?
    .ok_or_else(|| Error::NotFound {
        what: format!("approval {id}"),
    })
}

pub(crate) fn insert_deploy(
    c: &Connection,
    agent: &str,
    commit: &str,
    approval: Option<i64>,
    kind: &str,
) -> Result<Deploy> {
    let now = unix_millis();
    c.prepare_cached(
        "INSERT INTO deploys (agent, commit_sha, approval_id, kind, status, created_at, incarnation)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, (SELECT incarnation FROM agents WHERE name = ?1))",
    )?
    .execute(params![
        agent,
        commit,
        approval,
        kind,
        DeployStatus::Applied.as_str(),
        now
    ])?;
    Ok(Deploy {
        id: c.last_insert_rowid(),
        agent: agent.to_owned(),
        commit: commit.to_owned(),
        approval,
        kind: kind.to_owned(),
        status: DeployStatus::Applied,
        created_at: now,
        message: None,
    })
}

/// Decides a pending approval (`approved` or `denied`), inside the caller's transaction: the one
/// place a decision is taken, through the one conditional [`transition`], so of two deciders
/// exactly one wins. Returns the approval as it was before.
fn decide(c: &Connection, id: i64, to: ApprovalStatus, note: Option<&str>) -> Result<Approval> {
    let a = get_approval(c, id)?;
    transition(c, id, ApprovalStatus::Pending, to)?;
    c.execute(
        "UPDATE approvals SET note = ?1 WHERE id = ?2",
        params![note, id],
    )?;
    Ok(a)
}

/// The `approval_resolved` message to the requester, inside the caller's transaction.
fn tell_requester(
    c: &Connection,
    a: &Approval,
    status: ApprovalStatus,
    note: Option<&str>,
) -> Result<Message> {
    let body = json!({
        "event": "approval_resolved",
        "id": a.id,
        "kind": a.kind,
        "agent": a.agent,
        "commit": a.commit,
        "status": status,
        "note": note,
    })
    .to_string();
    Ok(insert_messages(c, "system", std::slice::from_ref(&a.requester), &body, None)?.remove(0))
}

impl Hive {
    /// The manager's `request_spawn`: without a commit, creates the draft repo from the default
    /// template (or shows the existing draft); with one, queues a Spawn approval for it.
    pub async fn request_spawn(
        self: &Arc<Self>,
        requester: &AgentName,
        name: &str,
        commit: Option<&str>,
    ) -> Result<SpawnRequest> {
        let agent = AgentName::parse(name)?;
        if self.registry.get(&agent).is_some() {
            return Err(Error::Conflict(format!(
                "agent '{agent}' exists already; to change it, commit in /agents/{agent}/config and use request_apply_commit"
            )));
        }
        let _config = self.config_lock.lock().await;
        let Some(commit) = commit else {
            let created = !self.repos.proposed_exists(&agent);
            let head = if created {
                self.repos.create_proposed(&agent, None)?
            } else {
                self.repos.proposed_head(&agent)?
            };
            return Ok(SpawnRequest::Draft(Draft {
                repo: format!("/agents/{agent}/config"),
                next: format!(
                    "{} Edit agent.nix and prompt.md there, commit with git, then call request_spawn(name: \"{agent}\", commit: \"<sha>\") to ask the operator to create it.",
                    if created {
                        "Created a draft config repo from the default template."
                    } else {
                        "The draft exists already."
                    }
                ),
                agent: agent.to_string(),
                head,
            }));
        };
        let approval = self
            .queue_approval(requester, &agent, commit, "spawn", String::new())
            .await?;
        Ok(SpawnRequest::Queued(Box::new(approval)))
    }

    /// The manager's `request_apply_commit`: pins the commit and queues an Apply approval with its
    /// diff against the applied HEAD.
    pub async fn request_apply(
        self: &Arc<Self>,
        requester: &AgentName,
        agent: &str,
        commit: &str,
        description: String,
    ) -> Result<Approval> {
        let agent = AgentName::parse(agent)?;
        self.registry.require(&agent)?;
        if description.trim().is_empty() || description.len() > 4096 {
            return Err(Error::invalid(
                "description",
                "say in 1–4096 bytes what the change does; the operator reads it before approving",
            ));
        }
        let _config = self.config_lock.lock().await;
        self.queue_approval(requester, &agent, commit, "apply", description)
            .await
    }

    /// Pins `commit` as `proposal/<id>` and stores the pending approval with its diff. The caller
    /// holds the config lock, so the id read here is the id inserted.
    async fn queue_approval(
        self: &Arc<Self>,
        requester: &AgentName,
        agent: &AgentName,
        commit: &str,
        kind: &str,
        description: String,
    ) -> Result<Approval> {
        crate::config_repo::check_sha(commit)?;
        let id: i64 = self
            .store
            .read(|c| {
                Ok(
                    c.query_row("SELECT coalesce(max(id), 0) + 1 FROM approvals", [], |r| {
                        r.get(0)
                    })?,
                )
            })
            .await?;
        let (caps, name, commit) = (
            self.config.approvals.clone(),
            agent.clone(),
            commit.to_owned(),
        );
        let change = self
            .git(move |repos| {
                let sha = repos.pin(&name, &commit, &format!("refs/tags/proposal/{id}"), &caps)?;
                repos.change(&name, &sha)
            })
            .await?;
        let sha = change.commit.clone();
        let plan = self.checks.plan();
        let checking = matches!(plan, crate::review::Plan::Check);
        let (requester, name, agent, kind) = (
            requester.to_string(),
            agent.clone(),
            agent.to_string(),
            kind.to_owned(),
        );
        let approval = self
            .store
            .write(move |c| {
                c.execute(
                    "INSERT INTO approvals (id, kind, agent, requester, commit_sha, base_sha,
                                            description, diff, stat, created_at, incarnation)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10,
                             (SELECT incarnation FROM agents WHERE name = ?3))",
                    params![
                        id,
                        kind,
                        agent,
                        requester,
                        sha,
                        change.base,
                        description,
                        change.diff,
                        change.stat,
                        unix_millis()
                    ],
                )?;
                audit::append(
                    c,
                    &requester,
                    &format!("request_{kind}"),
                    Some(&agent),
                    json!({"approval": id, "commit": sha}),
                )?;
                crate::review::insert_check(c, id, &plan)?;
                let mut a = get_approval(c, id)?;
                a.diff = Some(change.diff);
                a.files = Some(change.files);
                Ok(a)
            })
            .await?;
        if checking {
            self.checks.start(
                id,
                name,
                approval.commit.clone(),
                approval.kind.clone(),
                approval.base.clone(),
            );
        }
        let mut summary = approval.clone();
        summary.diff = None;
        self.bus.publish(Event::ApprovalRequested {
            approval: Arc::new(summary),
        });
        Ok(approval)
    }

    /// Approvals, newest last: all, or those in one status, or of one agent.
    pub async fn approvals(
        &self,
        status: Option<String>,
        agent: Option<String>,
    ) -> Result<Vec<Approval>> {
        let status = status.map(|s| ApprovalStatus::parse(&s)).transpose()?;
        self.store
            .read(move |c| {
                let rows = c
                    .prepare_cached(&format!(
                        "SELECT {} FROM {APPROVALS_WITH_CHECKS}
                         WHERE (?1 IS NULL OR ap.status = ?1) AND (?2 IS NULL OR ap.agent = ?2)
                         ORDER BY ap.id DESC LIMIT 500",
                        approval_columns()
                    ))?
                    .query_map(params![status.map(Stored), agent], approval_from_row)?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows.into_iter().rev().collect())
            })
            .await
    }

    /// The latest deploy of each approval whose id is in `first..=last` (the history pages
    /// show how each approved change built), newest deploys first, at most `limit` read.
    pub async fn deploys_of_approvals(
        &self,
        first: i64,
        last: i64,
        limit: usize,
    ) -> Result<std::collections::HashMap<i64, Deploy>> {
        self.store
            .read(move |c| {
                let mut latest = std::collections::HashMap::new();
                let rows = c
                    .prepare_cached(&format!(
                        "SELECT {DEPLOY_COLUMNS} FROM deploys
                         WHERE approval_id BETWEEN ?1 AND ?2 ORDER BY id DESC LIMIT ?3"
                    ))?
                    .query_map(params![first, last, limit as i64], deploy_from_row)?
                    .collect::<Result<Vec<_>, _>>()?;
                for d in rows {
                    if let Some(approval) = d.approval {
                        latest.entry(approval).or_insert(d);
                    }
                }
                Ok(latest)
            })
            .await
    }

    /// One approval with its diff and its files. A pending one is diffed against the applied HEAD
    /// now; if that is not the base it was asked against, it is flagged stale.
    pub async fn approval(&self, id: i64) -> Result<Approval> {
        let mut a = self
            .store
            .read(move |c| {
                let mut a = get_approval(c, id)?;
                a.diff = Some(c.query_row(
                    "SELECT diff FROM approvals WHERE id = ?1",
                    [id],
                    |r| r.get(0),
                )?);
                a.deploy = c
                    .prepare_cached(&format!(
                        "SELECT {DEPLOY_COLUMNS} FROM deploys WHERE approval_id = ?1
                         ORDER BY id DESC LIMIT 1"
                    ))?
                    .query_row([id], deploy_from_row)
                    .optional()?;
                Ok(a)
            })
            .await?;
        let (name, commit, base, pending) = (
            AgentName::parse(&a.agent)?,
            a.commit.clone(),
            a.base.clone(),
            a.status == ApprovalStatus::Pending,
        );
        let change = self
            .git(move |repos| {
                if pending {
                    repos.change(&name, &commit)
                } else {
                    repos.change_from(&name, base.as_deref(), &commit)
                }
            })
            .await;
        match change {
            Ok(change) => {
                if change.base != a.base {
                    a.stale = true;
                    a.applied_head = change.base;
                    a.stat = change.stat;
                    a.diff = Some(change.diff);
                }
                a.files = Some(change.files);
            }
            // A decided approval of a destroyed agent has no repo to diff in: the stored diff
            // is still shown.
            Err(e) if !pending => tracing::debug!(id, error = %e, "no live diff"),
            Err(e) => return Err(e),
        }
        Ok(a)
    }

    /// Refuses to approve a request whose base is not the applied HEAD now: approving it would
    /// silently revert what was applied since. The caller holds the config lock.
    async fn refuse_stale(&self, id: i64) -> Result<()> {
        let a = self.store.read(move |c| get_approval(c, id)).await?;
        if a.status != ApprovalStatus::Pending {
            return Ok(());
        }
        let name = AgentName::parse(&a.agent)?;
        let head = self.git(move |repos| repos.applied_head(&name)).await?;
        if head == a.base {
            return Ok(());
        }
        let short = |s: &Option<String>| {
            s.as_deref()
                .map_or("nothing".to_owned(), |s| s.chars().take(12).collect())
        };
        Err(Error::Stale(format!(
            "approval {id} was asked against {} but the applied config of '{}' is at {} now; approving it would undo what was applied since. Nothing was changed: deny it and ask the manager to request again (`hive show {id}` shows it against today's config)",
            short(&a.base),
            a.agent,
            short(&head)
        )))
    }

    /// The operator approves with no confirmation: see [`Hive::approve_with`].
    pub async fn approve(self: &Arc<Self>, id: i64) -> Result<Approval> {
        self.approve_with(id, Confirm::default()).await
    }

    /// The operator approves: the applied repo moves to the pinned commit (tagged
    /// `approved/<id>`), a spawn creates the agent, and the requester is told. Waits for a
    /// running check build first; a change that widens isolation needs `yes_widen`, one whose
    /// check failed `override_failed_build` (else nothing changes).
    pub async fn approve_with(self: &Arc<Self>, id: i64, confirm: Confirm) -> Result<Approval> {
        self.checks.wait(id).await?;
        let _config = self.config_lock.lock().await;
        self.refuse_stale(id).await?;
        let pending = self.store.read(move |c| get_approval(c, id)).await?;
        if pending.status != "pending" {
            return Err(Error::Conflict(format!(
                "approval {id} is {} already; nothing was changed",
                pending.status
            )));
        }
        crate::review::refuse_unconfirmed(&pending, confirm)?;
        let name = AgentName::parse(&pending.agent)?;
        // The pinned commit must still be in the applied repo: a destroy since the request took
        // that repo (and the pin) into a tombstone.
        let (agent, commit) = (name.clone(), pending.commit.clone());
        let pinned = self
            .git(move |repos| Ok(repos.applied_has_commit(&agent, &commit)))
            .await?;
        if !pinned {
            return Err(Error::Conflict(format!(
                "approval {id}: the commit it pinned is no longer in applied/{name} (the agent was destroyed since the request); nothing was changed, ask for it again"
            )));
        }
        let tags = vec![format!("approved/{id}")];
        let decision = move |c: &Connection| -> Result<(Approval, Deploy, Message)> {
            let a = decide(c, id, ApprovalStatus::Approved, None)?;
            let deploy = insert_deploy(c, &a.agent, &a.commit, Some(id), &a.kind)?;
            audit::append(
                c,
                "operator",
                "approve",
                Some(&a.agent),
                json!({"approval": id, "commit": a.commit, "deploy": deploy.id}),
            )?;
            let message = tell_requester(c, &a, ApprovalStatus::Approved, None)?;
            Ok((get_approval(c, id)?, deploy, message))
        };
        if pending.kind == "spawn" {
            let new = NewAgent {
                name,
                kind: AgentKind::Agent,
                revive: None,
                deploy: Some((pending.commit.clone(), tags)),
            };
            let created = self
                .create_agent(new, move |c, record| {
                    let decided = decision(c)?;
                    c.execute(
                        "UPDATE approvals SET incarnation = ?1 WHERE id = ?2",
                        params![record.incarnation, id],
                    )?;
                    Ok(decided)
                })
                .await?;
            let (approval, deploy, message) = created.with;
            self.mailbox.announce(vec![message]);
            self.publish_resolved(&approval);
            let deploy_id = deploy.id;
            self.bus.publish(Event::Deploy { deploy });
            self.checks.remove(&created.record.name, id).await;
            created.applied?;
            self.deploy_in_background(created.record.name.clone(), deploy_id);
            return Ok(approval);
        }
        let (approval, deploy, message) = self
            .store
            .write(move |c| {
                // An apply belongs to the incarnation it was asked for; a later agent of the
                // same name does not inherit it.
                let current: Option<i64> = c
                    .prepare_cached(
                        "SELECT 1 FROM approvals ap JOIN agents a ON a.incarnation = ap.incarnation
                         WHERE ap.id = ?1",
                    )?
                    .query_row([id], |r| r.get(0))
                    .optional()?;
                if current.is_none() {
                    return Err(Error::Conflict(format!(
                        "approval {id} was asked for an agent '{}' that no longer exists (a later agent of that name does not inherit it); nothing was changed",
                        pending.agent
                    )));
                }
                decision(c)
            })
            .await?;
        self.mailbox.announce(vec![message]);
        self.publish_resolved(&approval);
        self.bus.publish(Event::Deploy {
            deploy: deploy.clone(),
        });
        self.checks.remove(&name, id).await;
        self.move_applied(&name, deploy.commit, vec![format!("approved/{id}")])
            .await?;
        self.deploy_in_background(name, deploy.id);
        Ok(approval)
    }

    /// The operator denies, with a note (required unless the config says otherwise).
    pub async fn deny(&self, id: i64, note: Option<String>) -> Result<Approval> {
        let note = note.filter(|n| !n.trim().is_empty());
        if note.is_none() && self.config.approvals.deny_requires_note {
            return Err(Error::invalid(
                "note",
                "say why you deny it (--note TEXT): the manager reads it",
            ));
        }
        if note.as_ref().is_some_and(|n| n.len() > 4096) {
            return Err(Error::invalid("note", "at most 4096 bytes"));
        }
        let _config = self.config_lock.lock().await;
        let (approval, message) = self
            .store
            .write(move |c| {
                let a = decide(c, id, ApprovalStatus::Denied, note.as_deref())?;
                audit::append(
                    c,
                    "operator",
                    "deny",
                    Some(&a.agent),
                    json!({"approval": id, "commit": a.commit, "note": note}),
                )?;
                let message = tell_requester(c, &a, ApprovalStatus::Denied, note.as_deref())?;
                Ok((get_approval(c, id)?, message))
            })
            .await?;
        self.mailbox.announce(vec![message]);
        self.publish_resolved(&approval);
        let name = AgentName::parse(&approval.agent)?;
        self.checks.remove(&name, id).await;
        let (tag, commit) = (format!("denied/{id}"), approval.commit.clone());
        if let Err(e) = self.git(move |repos| repos.tag(&name, &tag, &commit)).await {
            tracing::warn!(id, error = %e, "cannot tag a denied approval; retried at the next start");
        }
        Ok(approval)
    }

    /// The operator creates an agent directly (audited, no approval): from its draft repo if the
    /// manager made one, else from the template, or with `agent_nix` as its agent.nix.
    pub async fn spawn(
        self: &Arc<Self>,
        name: &str,
        agent_nix: Option<String>,
    ) -> Result<AgentRecord> {
        let agent = AgentName::parse(name)?;
        if self.registry.get(&agent).is_some() {
            return Err(Error::Conflict(format!("agent '{agent}' exists already")));
        }
        let _config = self.config_lock.lock().await;
        let draft = agent.clone();
        let caps = self.config.approvals.clone();
        let sha = self
            .git(move |repos| {
                let head = match (repos.proposed_exists(&draft), agent_nix) {
                    (true, Some(_)) => {
                        return Err(Error::Conflict(format!(
                            "agent '{draft}' has a draft config repo already; spawn it without --from, or commit your agent.nix there"
                        )));
                    }
                    (true, None) => repos.proposed_head(&draft)?,
                    (false, own) => repos.create_proposed(&draft, own.as_deref())?,
                };
                repos.pin(&draft, &head, "refs/hyperhive/incoming", &caps)
            })
            .await?;
        let new = NewAgent {
            name: agent,
            kind: AgentKind::Agent,
            revive: None,
            deploy: Some((sha.clone(), Vec::new())),
        };
        let created = self
            .create_agent(new, move |c, record| {
                let deploy = insert_deploy(c, record.name.as_str(), &sha, None, "spawn")?;
                audit::append(
                    c,
                    "operator",
                    "spawn",
                    Some(record.name.as_str()),
                    json!({"commit": sha, "deploy": deploy.id, "incarnation": record.incarnation}),
                )?;
                Ok(deploy)
            })
            .await?;
        let deploy_id = created.with.id;
        self.bus.publish(Event::Deploy {
            deploy: created.with,
        });
        created.applied?;
        self.deploy_in_background(created.record.name.clone(), deploy_id);
        Ok(created.record)
    }

    /// The deploys of an agent, newest last.
    pub async fn deploys(&self, agent: &AgentName) -> Result<Vec<Deploy>> {
        let key = agent.to_string();
        self.store
            .read(move |c| {
                Ok(c.prepare_cached(&format!(
                    "SELECT {DEPLOY_COLUMNS} FROM deploys
                     WHERE incarnation = (SELECT incarnation FROM agents WHERE name = ?1)
                     ORDER BY id"
                ))?
                .query_map([key], deploy_from_row)?
                .collect::<Result<_, _>>()?)
            })
            .await
    }

    /// The operator rolls an agent back: a new deploy of the commit of an earlier one.
    pub async fn rollback(self: &Arc<Self>, agent: &AgentName, deploy_id: i64) -> Result<Deploy> {
        self.registry.require(agent)?;
        let _config = self.config_lock.lock().await;
        let key = agent.to_string();
        let deploy = self
            .store
            .write(move |c| {
                let commit: String = c
                    // Only a deploy of this incarnation: an earlier agent of the same name had
                    // its own repo, and its commits are not in this one.
                    .prepare_cached(
                        "SELECT commit_sha FROM deploys WHERE id = ?1 AND agent = ?2
                         AND incarnation = (SELECT incarnation FROM agents WHERE name = ?2)",
                    )?
                    .query_row(params![deploy_id, key], |r| r.get(0))
                    .optional()?
                    .ok_or_else(|| Error::NotFound {
                        what: format!("deploy {deploy_id} of '{key}' (see `hive history {key}`)"),
                    })?;
                let deploy = insert_deploy(c, &key, &commit, None, "rollback")?;
                audit::append(
                    c,
                    "operator",
                    "rollback",
                    Some(&key),
                    json!({"to_deploy": deploy_id, "commit": commit, "deploy": deploy.id}),
                )?;
                Ok(deploy)
            })
            .await?;
        self.bus.publish(Event::Deploy {
            deploy: deploy.clone(),
        });
        self.move_applied(agent, deploy.commit.clone(), Vec::new())
            .await?;
        self.deploy_in_background(agent.clone(), deploy.id);
        Ok(deploy)
    }

    /// Makes every applied repo agree with the store: HEAD at the latest deploy's commit and the
    /// tags of decided approvals present. Run at start, after a crash may have cut a decision
    /// between its commit and its git step. Only rows of the live incarnations count, and an
    /// agent whose repo cannot be made to agree is reported (kept stopped), never the end of the
    /// start.
    pub async fn reconcile_applied(&self) -> Result<()> {
        for (agent, e) in self.make_applied_agree(None).await? {
            self.fault(&agent, &e);
        }
        Ok(())
    }

    /// Makes the applied repos agree with the store (of `only`, or of every agent not kept
    /// stopped); the agents whose repo cannot be made to agree, and why.
    pub(crate) async fn make_applied_agree(
        &self,
        only: Option<&AgentName>,
    ) -> Result<Vec<(AgentName, Error)>> {
        let mut failed = Vec::new();
        let (heads, decided) = self
            .store
            .read(|c| {
                let heads: Vec<(String, String)> = c
                    .prepare(
                        "SELECT a.name, d.commit_sha FROM agents a
                         JOIN deploys d ON d.id = (SELECT max(id) FROM deploys
                                                   WHERE incarnation = a.incarnation)",
                    )?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()?;
                let decided: Vec<(i64, String, String, String)> = c
                    .prepare(
                        "SELECT ap.id, a.name, ap.commit_sha, ap.status FROM approvals ap
                         JOIN agents a ON a.incarnation = ap.incarnation
                         WHERE ap.status != 'pending'",
                    )?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                    .collect::<Result<_, _>>()?;
                Ok((heads, decided))
            })
            .await?;
        let mut plans: BTreeMap<String, RepoPlan> = BTreeMap::new();
        for (agent, commit) in heads {
            plans.entry(agent).or_default().head = Some(commit);
        }
        for (id, agent, commit, status) in decided {
            let tag = if status == "denied" {
                format!("denied/{id}")
            } else {
                format!("approved/{id}")
            };
            plans.entry(agent).or_default().tags.push((tag, commit));
        }
        for (agent, RepoPlan { head, tags }) in plans {
            let Ok(name) = AgentName::parse(&agent) else {
                continue; // the registry refused to load such a row already
            };
            let wanted = match only {
                Some(only) => *only == name,
                None => !self.is_faulted(&name),
            };
            if !wanted {
                continue;
            }
            let target = name.clone();
            let agreed = self
                .git(move |repos| {
                    if let Some(commit) = head
                        && repos.applied_head(&target)?.as_deref() != Some(commit.as_str())
                    {
                        tracing::warn!(agent = %target, %commit, "applied repo behind the store; moving it");
                        repos.apply(&target, &commit, &[])?;
                    }
                    for (tag, commit) in tags {
                        repos.tag(&target, &tag, &commit)?;
                    }
                    Ok(())
                })
                .await;
            if let Err(e) = agreed {
                failed.push((name, e));
            }
        }
        Ok(failed)
    }

    /// Gives the manager its config repos on first start.
    pub(crate) async fn ensure_manager_config(&self) -> Result<()> {
        let manager = AgentName::manager();
        let target = manager.clone();
        if self
            .git(move |repos| repos.applied_head(&target))
            .await?
            .is_some()
        {
            return Ok(());
        }
        let _config = self.config_lock.lock().await;
        let caps = self.config.approvals.clone();
        let sha = self
            .git(move |repos| {
                let head = if repos.proposed_exists(&manager) {
                    repos.proposed_head(&manager)?
                } else {
                    repos.create_proposed(&manager, None)?
                };
                repos.pin(&manager, &head, "refs/hyperhive/incoming", &caps)
            })
            .await?;
        let deploy = self
            .store
            .write(move |c| {
                let deploy = insert_deploy(c, "manager", &sha, None, "spawn")?;
                audit::append(
                    c,
                    "system",
                    "spawn",
                    Some("manager"),
                    json!({"commit": sha, "deploy": deploy.id}),
                )?;
                Ok(deploy)
            })
            .await?;
        self.move_applied(&AgentName::manager(), deploy.commit, Vec::new())
            .await
    }
}

impl Hive {
    fn publish_resolved(&self, a: &Approval) {
        self.bus.publish(Event::ApprovalResolved {
            id: a.id,
            kind: a.kind.clone(),
            agent: a.agent.clone(),
            requester: a.requester.clone(),
            commit: a.commit.clone(),
            status: a.status,
            note: a.note.clone(),
        });
    }
}

/// Where the store says one applied repo should be: its HEAD and its (tag, commit) pairs.
#[derive(Default)]
struct RepoPlan {
    head: Option<String>,
    tags: Vec<(String, String)>,
}

/// What `request_spawn` did.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum SpawnRequest {
    Draft(Draft),
    Queued(Box<Approval>),
}
