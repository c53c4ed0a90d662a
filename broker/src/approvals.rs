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

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::json;

use crate::audit;
use crate::bus::Event;
use crate::config_repo::ChangedFile;
use crate::error::{Error, Result};
use crate::hive::Hive;
use crate::mailbox::{Message, insert_messages};
use crate::names::AgentName;
use crate::registry::{self, AgentKind, AgentRecord};
use crate::status::{ApprovalStatus, DeployStatus, Lifecycle, transition};
use crate::store::unix_millis;

#[derive(Debug, Clone, Serialize)]
pub struct Approval {
    pub id: i64,
    pub kind: String,
    pub agent: String,
    pub requester: String,
    pub commit: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    pub description: String,
    pub stat: String,
    pub status: ApprovalStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub created_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<i64>,
    /// The unified diff of every file (for a spawn, every file as added); only in
    /// single-approval views. For a pending approval, taken against the applied HEAD now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    /// Every file the commit changes, with modes, symlink targets and a binary flag; only in
    /// single-approval views.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<ChangedFile>>,
    /// The applied config moved since the request: `diff` is against `applied_head`, not
    /// `base`, and approving is refused until the manager asks again.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
    /// The applied HEAD when the view was taken, when it is not `base`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied_head: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Deploy {
    pub id: i64,
    pub agent: String,
    pub commit: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<i64>,
    pub kind: String,
    pub status: DeployStatus,
    pub created_at: i64,
}

/// What `request_spawn(name)` without a commit answers.
#[derive(Debug, Clone, Serialize)]
pub struct Draft {
    pub agent: String,
    /// The proposed repo as the manager sees it inside its container.
    pub repo: String,
    pub head: String,
    pub next: String,
}

const APPROVAL_COLUMNS: &str = "id, kind, agent, requester, commit_sha, base_sha, description, stat, \
                                status, note, created_at, resolved_at";

fn approval_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Approval> {
    Ok(Approval {
        id: r.get(0)?,
        kind: r.get(1)?,
        agent: r.get(2)?,
        requester: r.get(3)?,
        commit: r.get(4)?,
        base: r.get(5)?,
        description: r.get(6)?,
        stat: r.get(7)?,
        status: r.get(8)?,
        note: r.get(9)?,
        created_at: r.get(10)?,
        resolved_at: r.get(11)?,
        diff: None,
        files: None,
        stale: false,
        applied_head: None,
    })
}

fn deploy_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Deploy> {
    Ok(Deploy {
        id: r.get(0)?,
        agent: r.get(1)?,
        commit: r.get(2)?,
        approval: r.get(3)?,
        kind: r.get(4)?,
        status: r.get(5)?,
        created_at: r.get(6)?,
    })
}

fn get_approval(c: &Connection, id: i64) -> Result<Approval> {
    c.prepare_cached(&format!(
        "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE id = ?1"
    ))?
    .query_row([id], approval_from_row)
    .optional()?
    .ok_or_else(|| Error::NotFound {
        what: format!("approval {id}"),
    })
}

fn insert_deploy(
    c: &Connection,
    agent: &str,
    commit: &str,
    approval: Option<i64>,
    kind: &str,
) -> Result<Deploy> {
    let now = unix_millis();
    c.prepare_cached(
        "INSERT INTO deploys (agent, commit_sha, approval_id, kind, status, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        agent,
        commit,
        approval,
        kind,
        DeployStatus::Applied,
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

/// Runs git work off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Internal(format!("a git task failed: {e}")))?
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
        &self,
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
        &self,
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
        &self,
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
        let (repos, caps, name, commit) = (
            self.repos.clone(),
            self.config.approvals.clone(),
            agent.clone(),
            commit.to_owned(),
        );
        let change = blocking(move || {
            let sha = repos.pin(&name, &commit, &format!("refs/tags/proposal/{id}"), &caps)?;
            repos.change(&name, &sha)
        })
        .await?;
        let sha = change.commit.clone();
        let (requester, agent, kind) = (requester.to_string(), agent.to_string(), kind.to_owned());
        let approval = self
            .store
            .write(move |c| {
                c.execute(
                    "INSERT INTO approvals (id, kind, agent, requester, commit_sha, base_sha,
                                            description, diff, stat, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
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
                let mut a = get_approval(c, id)?;
                a.diff = Some(change.diff);
                a.files = Some(change.files);
                Ok(a)
            })
            .await?;
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
                        "SELECT {APPROVAL_COLUMNS} FROM approvals
                         WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR agent = ?2)
                         ORDER BY id DESC LIMIT 500"
                    ))?
                    .query_map(params![status, agent], approval_from_row)?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows.into_iter().rev().collect())
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
                Ok(a)
            })
            .await?;
        let (repos, name, commit, base, pending) = (
            self.repos.clone(),
            AgentName::parse(&a.agent)?,
            a.commit.clone(),
            a.base.clone(),
            a.status == ApprovalStatus::Pending,
        );
        let change = blocking(move || {
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
        let (repos, name) = (self.repos.clone(), AgentName::parse(&a.agent)?);
        let head = blocking(move || repos.applied_head(&name)).await?;
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

    /// The operator approves: the applied repo moves to the pinned commit (tagged
    /// `approved/<id>`), a spawn creates the agent, and the requester is told.
    pub async fn approve(self: &Arc<Self>, id: i64) -> Result<Approval> {
        let _config = self.config_lock.lock().await;
        self.refuse_stale(id).await?;
        let (approval, deploy, created, message) = self
            .store
            .write(move |c| {
                let a = decide(c, id, ApprovalStatus::Approved, None)?;
                let name = AgentName::parse(&a.agent)?;
                let exists = c
                    .prepare_cached("SELECT 1 FROM agents WHERE name = ?1")?
                    .exists([name.as_str()])?;
                let created = match (a.kind.as_str(), exists) {
                    ("spawn", false) => {
                        let record = registry::new_record(name, AgentKind::Agent);
                        registry::insert_row(c, &record)?;
                        Some(record)
                    }
                    ("spawn", true) => {
                        return Err(Error::Conflict(format!(
                            "agent '{}' exists already; nothing was changed",
                            a.agent
                        )));
                    }
                    (_, false) => {
                        return Err(Error::Conflict(format!(
                            "agent '{}' no longer exists; nothing was changed",
                            a.agent
                        )));
                    }
                    _ => None,
                };
                let deploy = insert_deploy(c, &a.agent, &a.commit, Some(id), &a.kind)?;
                audit::append(
                    c,
                    "operator",
                    "approve",
                    Some(&a.agent),
                    json!({"approval": id, "commit": a.commit, "deploy": deploy.id}),
                )?;
                let message = tell_requester(c, &a, ApprovalStatus::Approved, None)?;
                Ok((get_approval(c, id)?, deploy, created, message))
            })
            .await?;
        if let Some(record) = created {
            self.registry.remember(record.clone());
            self.open_agent_sockets(&record)?;
        }
        self.mailbox.announce(vec![message]);
        self.publish_resolved(&approval);
        self.bus.publish(Event::Deploy {
            deploy: deploy.clone(),
        });
        let name = AgentName::parse(&approval.agent)?;
        self.repos
            .apply(&name, &deploy.commit, &[format!("approved/{id}")])
            .map_err(|e| {
                Error::Internal(format!("approval {id} is recorded, but the applied repo could not be moved ({e}); it is retried at the next start"))
            })?;
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
        if let Err(e) = self
            .repos
            .tag(&name, &format!("denied/{id}"), &approval.commit)
        {
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
        let head = match (self.repos.proposed_exists(&agent), agent_nix) {
            (true, Some(_)) => {
                return Err(Error::Conflict(format!(
                    "agent '{agent}' has a draft config repo already; spawn it without --from, or commit your agent.nix there"
                )));
            }
            (true, None) => self.repos.proposed_head(&agent)?,
            (false, own) => self.repos.create_proposed(&agent, own.as_deref())?,
        };
        let sha = self.repos.pin(
            &agent,
            &head,
            "refs/hyperhive/incoming",
            &self.config.approvals,
        )?;
        let record = registry::new_record(agent.clone(), AgentKind::Agent);
        let row = record.clone();
        let deploy = self
            .store
            .write(move |c| {
                registry::insert_row(c, &row)?;
                let deploy = insert_deploy(c, row.name.as_str(), &sha, None, "spawn")?;
                audit::append(
                    c,
                    "operator",
                    "spawn",
                    Some(row.name.as_str()),
                    json!({"commit": sha, "deploy": deploy.id}),
                )?;
                Ok(deploy)
            })
            .await?;
        self.registry.remember(record.clone());
        self.open_agent_sockets(&record)?;
        self.bus.publish(Event::Deploy {
            deploy: deploy.clone(),
        });
        self.repos.apply(&agent, &deploy.commit, &[])?;
        Ok(record)
    }

    /// The deploys of an agent, newest last.
    pub async fn deploys(&self, agent: &AgentName) -> Result<Vec<Deploy>> {
        let key = agent.to_string();
        self.store
            .read(move |c| {
                Ok(c.prepare_cached(
                    "SELECT id, agent, commit_sha, approval_id, kind, status, created_at
                     FROM deploys WHERE agent = ?1 ORDER BY id",
                )?
                .query_map([key], deploy_from_row)?
                .collect::<Result<_, _>>()?)
            })
            .await
    }

    /// The operator rolls an agent back: a new deploy of the commit of an earlier one.
    pub async fn rollback(&self, agent: &AgentName, deploy_id: i64) -> Result<Deploy> {
        self.registry.require(agent)?;
        let _config = self.config_lock.lock().await;
        let key = agent.to_string();
        let deploy = self
            .store
            .write(move |c| {
                let commit: String = c
                    .prepare_cached("SELECT commit_sha FROM deploys WHERE id = ?1 AND agent = ?2")?
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
        self.repos.apply(agent, &deploy.commit, &[])?;
        Ok(deploy)
    }

    /// Makes every applied repo agree with the store: HEAD at the latest deploy's commit and the
    /// tags of decided approvals present. Run at start, after a crash may have cut a decision
    /// between its commit and its git step.
    pub async fn reconcile_applied(&self) -> Result<()> {
        let (heads, decided) = self
            .store
            .read(|c| {
                let heads: Vec<(String, String)> = c
                    .prepare(
                        "SELECT d.agent, d.commit_sha FROM deploys d
                         JOIN agents a ON a.name = d.agent
                         WHERE d.id = (SELECT max(id) FROM deploys WHERE agent = d.agent)",
                    )?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()?;
                let decided: Vec<(i64, String, String, String)> = c
                    .prepare(
                        "SELECT ap.id, ap.agent, ap.commit_sha, ap.status FROM approvals ap
                         JOIN agents a ON a.name = ap.agent WHERE ap.status != 'pending'",
                    )?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                    .collect::<Result<_, _>>()?;
                Ok((heads, decided))
            })
            .await?;
        for (agent, commit) in heads {
            let name = AgentName::parse(&agent)?;
            if self.repos.applied_head(&name)?.as_deref() != Some(commit.as_str()) {
                tracing::warn!(%agent, %commit, "applied repo behind the store; moving it");
                self.repos.apply(&name, &commit, &[])?;
            }
        }
        for (id, agent, commit, status) in decided {
            let name = AgentName::parse(&agent)?;
            let tag = if status == "denied" {
                format!("denied/{id}")
            } else {
                format!("approved/{id}")
            };
            self.repos.tag(&name, &tag, &commit)?;
        }
        Ok(())
    }

    /// Gives the manager its config repos on first start.
    pub(crate) async fn ensure_manager_config(&self) -> Result<()> {
        let manager = AgentName::manager();
        if self.repos.applied_head(&manager)?.is_some() {
            return Ok(());
        }
        let _config = self.config_lock.lock().await;
        let head = if self.repos.proposed_exists(&manager) {
            self.repos.proposed_head(&manager)?
        } else {
            self.repos.create_proposed(&manager, None)?
        };
        let sha = self.repos.pin(
            &manager,
            &head,
            "refs/hyperhive/incoming",
            &self.config.approvals,
        )?;
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
        self.repos.apply(&manager, &deploy.commit, &[])
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

/// What `request_spawn` did.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum SpawnRequest {
    Draft(Draft),
    Queued(Box<Approval>),
}
