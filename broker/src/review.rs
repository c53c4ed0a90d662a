//! What the operator is shown before deciding a config request (DESIGN §7): the **check build**
//! of the requested commit and the **risk flags** of its evaluated config.
//!
//! When a request is queued (and the hive serves), a background task on this component's scope
//! builds the pinned commit with the same [`crate::build::Builder`] a deploy uses (restricted
//! eval, the build timeout), into `build/<name>/check-<approval id>/`, reads the image's
//! agent.json and its closure size, and compares that config with what runs
//! ([`risk_flags`]). The result is one `approval_checks` row: `checking → ok | failed`, or
//! `unavailable` (no builder here) with the reason. A check interrupted by a stop is started
//! again at the next start. The deploy after approval builds the same derivation: a cache hit.
//!
//! Owns `approval_checks` and the `check-<id>` build dirs (removed once the approval is decided).
//! Never starts a container, moves the applied repo or touches a deploy's paths. A service
//! ([`Checks`]) built in `Hive::open` holding its own handles (store, bus, state dir, and the
//! containers' builder, read only); `Hive` delegates to it, and `approvals` asks it for a
//! request's check and waits on it before an approve.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::{AgentConfig, Approval, ApprovalStatus, Check, CheckStatus, RiskFlag, RiskKind};
use rusqlite::{Connection, OptionalExtension, params};

use crate::bus::Bus;
use crate::components::Scope;
use crate::containers::Containers;
use crate::error::{Error, Result};
use crate::lifecycle::off_runtime;
use crate::names::AgentName;
use crate::paths::StateDir;
use crate::store::{Store, unix_millis};

/// How long `approve` waits beyond the build timeout for a running check.
const WAIT_MARGIN: Duration = Duration::from_secs(30);

/// The review service: its handles, the scope its checks run on (none until the hive serves) and
/// a counter bumped at each finished check, which `approve` waits on.
pub struct Checks {
    store: Store,
    bus: Bus,
    paths: StateDir,
    /// Read only: the builder a check builds with, and what runs.
    containers: Arc<Containers>,
    /// `[build] timeout_seconds`: how long a check may build.
    build_timeout: Duration,
    scope: Mutex<Option<Scope>>,
    finished: tokio::sync::watch::Sender<u64>,
    /// One check build at a time: a manager asking many times queues them instead of running
    /// that many nix builds at once.
    one_at_a_time: tokio::sync::Mutex<()>,
    /// The start's look for requests to check again is done (until then `approve` waits: a
    /// request it would restart has no `checking` row yet).
    resumed: std::sync::atomic::AtomicBool,
}

/// A request to check: (approval id, agent, pinned commit, kind, base).
type Request = (i64, String, String, String, Option<String>);

/// What a new request's check row starts as.
pub(crate) enum Plan {
    /// The hive is not serving (a tool or test opened it): no row; the next start checks it.
    Later,
    Check,
    Unavailable(String),
}

/// Inserts the check row of a new approval, inside the request's transaction.
pub(crate) fn insert_check(c: &Connection, approval: i64, plan: &Plan) -> Result<()> {
    let (status, message) = match plan {
        Plan::Later => return Ok(()),
        Plan::Check => (CheckStatus::Checking, None),
        Plan::Unavailable(why) => (CheckStatus::Unavailable, Some(why.as_str())),
    };
    let now = unix_millis();
    c.prepare_cached(
        "INSERT INTO approval_checks (approval_id, status, message, started_at, finished_at)
         VALUES (?1, ?2, ?3, ?4, CASE WHEN ?2 = 'checking' THEN NULL ELSE ?4 END)
         ON CONFLICT (approval_id) DO UPDATE SET status = ?2, message = ?3, started_at = ?4,
             finished_at = CASE WHEN ?2 = 'checking' THEN NULL ELSE ?4 END",
    )?
    .execute(params![approval, status.as_str(), message, now])?;
    Ok(())
}

/// The check columns an approval query selects (after the approval's own), from `ch`.
pub(crate) const CHECK_COLUMNS: &str =
    "ch.status, ch.message, ch.closure_bytes, ch.risk, ch.started_at, ch.finished_at";

/// Reads [`CHECK_COLUMNS`] starting at column `at` into the approval's `check` and `risk`.
pub(crate) fn check_from_row(
    r: &rusqlite::Row<'_>,
    at: usize,
) -> rusqlite::Result<(Option<Check>, Option<Vec<RiskFlag>>)> {
    let Some(status) = r.get::<_, Option<String>>(at)? else {
        return Ok((None, None));
    };
    let status = CheckStatus::parse(&status).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            at,
            rusqlite::types::Type::Text,
            format!("unknown check status {status:?}").into(),
        )
    })?;
    let risk = r
        .get::<_, Option<String>>(at + 3)?
        .map(|json| serde_json::from_str::<Vec<RiskFlag>>(&json))
        .transpose()
        .map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(at + 3, rusqlite::types::Type::Text, e.into())
        })?;
    let check = Check {
        status,
        message: r.get(at + 1)?,
        closure_bytes: r.get::<_, Option<i64>>(at + 2)?.map(|n| n.max(0) as u64),
        started_at: r.get(at + 4)?,
        finished_at: r.get(at + 5)?,
    };
    Ok((Some(check), risk))
}

/// What `new` widens or raises against `base`, each flag with its details, in a fixed order.
pub fn risk_flags(base: &AgentConfig, new: &AgentConfig) -> Vec<RiskFlag> {
    use proto::agent_config::Network;
    let added = |old: &[String], now: &[String]| -> Vec<String> {
        now.iter().filter(|x| !old.contains(x)).cloned().collect()
    };
    let mut flags = Vec::new();
    if new.network == Network::Host && base.network != Network::Host {
        flags.push(RiskFlag::new(RiskKind::NetworkHost, Vec::new()));
    }
    let egress = added(&base.egress, &new.egress);
    if !egress.is_empty() {
        flags.push(RiskFlag::new(RiskKind::EgressAdded, egress));
    }
    let servers: Vec<String> = new
        .extra_mcp_servers
        .iter()
        .filter_map(|(name, server)| match base.extra_mcp_servers.get(name) {
            None => Some(name.clone()),
            Some(old) if old != server => Some(format!("{name} (changed)")),
            Some(_) => None,
        })
        .collect();
    if !servers.is_empty() {
        flags.push(RiskFlag::new(RiskKind::McpServerAdded, servers));
    }
    let commands = added(&base.allowed_commands, &new.allowed_commands);
    if !commands.is_empty() {
        flags.push(RiskFlag::new(RiskKind::CommandsWidened, commands));
    }
    let (b, n) = (base.resources, new.resources);
    let raised: Vec<String> = [
        ("memoryMB", b.memory_mb, n.memory_mb),
        ("pids", b.pids, n.pids),
        ("cpuWeight", b.cpu_weight, n.cpu_weight),
    ]
    .into_iter()
    .filter(|(_, old, now)| now > old)
    .map(|(what, old, now)| format!("{what} {old} → {now}"))
    .collect();
    if !raised.is_empty() {
        flags.push(RiskFlag::new(RiskKind::ResourcesRaised, raised));
    }
    match (base.budget.tokens_per_day, new.budget.tokens_per_day) {
        (Some(old), None) => flags.push(RiskFlag::new(
            RiskKind::BudgetRaised,
            vec![format!("tokensPerDay {old} → unlimited")],
        )),
        (Some(old), Some(now)) if now > old => flags.push(RiskFlag::new(
            RiskKind::BudgetRaised,
            vec![format!("tokensPerDay {old} → {now}")],
        )),
        _ => {}
    }
    // Empty means anyone: widened when a list becomes empty or gains a name.
    let (old, now) = (&base.allowed_recipients, &new.allowed_recipients);
    if !old.is_empty() {
        let more = if now.is_empty() {
            vec!["anyone".to_owned()]
        } else {
            added(old, now)
        };
        if !more.is_empty() {
            flags.push(RiskFlag::new(RiskKind::RecipientsWidened, more));
        }
    }
    if new.prompt != base.prompt {
        flags.push(RiskFlag::new(RiskKind::PromptChanged, Vec::new()));
    }
    flags
}

/// What the operator must confirm to approve: the second confirmation of a change that widens
/// isolation, the override of a failed check build.
#[derive(Debug, Clone, Copy, Default)]
pub struct Confirm {
    pub yes_widen: bool,
    pub override_failed_build: bool,
}

/// Refuses (changing nothing) an approval the operator has not confirmed enough.
pub(crate) fn refuse_unconfirmed(a: &Approval, confirm: Confirm) -> Result<()> {
    if let Some(check) = &a.check
        && check.status == CheckStatus::Failed
        && !confirm.override_failed_build
    {
        return Err(Error::CheckFailed(format!(
            "approval {}: its check build failed, so this config cannot build (`hive show {}` shows nix's message). Nothing was changed; deny it, or approve with --override-failed-build if you mean to",
            a.id, a.id
        )));
    }
    if a.widens_isolation() && !confirm.yes_widen {
        let flags: Vec<&str> = a
            .risk
            .iter()
            .flatten()
            .filter(|f| f.widening)
            .map(|f| f.flag.as_str())
            .collect();
        return Err(Error::WidensIsolation(format!(
            "approval {} widens the isolation of '{}' ({}). Nothing was changed; read `hive show {}`, then approve with --yes-widen to confirm",
            a.id,
            a.agent,
            flags.join(", "),
            a.id
        )));
    }
    Ok(())
}

impl Checks {
    pub(crate) fn new(
        store: Store,
        bus: Bus,
        paths: StateDir,
        containers: Arc<Containers>,
        build_timeout: Duration,
    ) -> Self {
        Self {
            store,
            bus,
            paths,
            containers,
            build_timeout,
            scope: Mutex::default(),
            finished: Default::default(),
            one_at_a_time: Default::default(),
            resumed: Default::default(),
        }
    }

    /// The review component: from now on requests are checked, and the requests a stop cut (or
    /// that came while no daemon served) are checked again.
    pub fn run(self: &Arc<Self>, scope: &Scope) -> Result<()> {
        *self.scope.lock().expect("checks") = Some(scope.clone());
        let checks = self.clone();
        scope.spawn(async move {
            let due: Result<Vec<Request>> = checks
                .store
                .read(|c| {
                    Ok(c.prepare(
                        "SELECT ap.id, ap.agent, ap.commit_sha, ap.kind, ap.base_sha FROM approvals ap
                         LEFT JOIN approval_checks ch ON ch.approval_id = ap.id
                         WHERE ap.status = 'pending' AND (ch.status IS NULL OR ch.status = 'checking')
                         ORDER BY ap.id",
                    )?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?
                    .collect::<Result<_, _>>()?)
                })
                .await;
            match due {
                Ok(due) => {
                    for (id, agent, sha, kind, base) in due {
                        let Ok(agent) = AgentName::parse(&agent) else {
                            continue;
                        };
                        let plan = checks.plan();
                        let checking = matches!(plan, Plan::Check);
                        let inserted = checks
                            .store
                            .write(move |c| insert_check(c, id, &plan))
                            .await;
                        match inserted {
                            Ok(()) if checking => checks.start(id, agent, sha, kind, base),
                            Ok(()) => {}
                            Err(e) => tracing::warn!(id, error = %e, "cannot restart a check"),
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the requests to check"),
            }
            checks
                .resumed
                .store(true, std::sync::atomic::Ordering::Release);
            checks.finished.send_modify(|n| *n += 1);
        });
        Ok(())
    }

    /// What the check of a request made now starts as.
    pub(crate) fn plan(&self) -> Plan {
        if self.scope.lock().expect("checks").is_none() {
            return Plan::Later;
        }
        match self.containers.builder() {
            Ok(_) => Plan::Check,
            Err(e) => Plan::Unavailable(e.to_string()),
        }
    }

    /// Starts the check build of approval `id` (its row is `checking`) on the review scope.
    pub(crate) fn start(
        self: &Arc<Self>,
        id: i64,
        agent: AgentName,
        sha: String,
        kind: String,
        base: Option<String>,
    ) {
        let Some(scope) = self.scope.lock().expect("checks").clone() else {
            return;
        };
        let checks = self.clone();
        let stop = scope.stopping().clone();
        scope.spawn(async move {
            tokio::select! {
                // Left `checking`: the next start checks it again.
                _ = stop.cancelled() => {}
                () = checks.run_check(id, agent, sha, kind, base) => {}
            }
        });
    }

    async fn run_check(
        self: &Arc<Self>,
        id: i64,
        agent: AgentName,
        sha: String,
        kind: String,
        base: Option<String>,
    ) {
        let outcome = self.check_build(id, &agent, sha, &kind, base).await;
        let finished = unix_millis();
        let (status, message, closure, config, risk) = match outcome {
            Ok((config, closure, risk)) => (
                CheckStatus::Ok,
                None,
                closure.map(|n| n as i64),
                serde_json::to_string(&config).ok(),
                serde_json::to_string(&risk).ok(),
            ),
            Err(Error::BuildFailed(message)) => {
                (CheckStatus::Failed, Some(message), None, None, None)
            }
            // No builder here: approvals work as before.
            Err(Error::Unavailable(why)) => (CheckStatus::Unavailable, Some(why), None, None, None),
            // Anything else fails closed: nobody knows what this config would do, so approving
            // it needs the override like a failed build.
            Err(e) => (
                CheckStatus::Failed,
                Some(format!("the check could not finish: {e}")),
                None,
                None,
                None,
            ),
        };
        let stored = self
            .store
            .write(move |c| {
                c.execute(
                    "UPDATE approval_checks SET status = ?1, message = ?2, closure_bytes = ?3,
                         config = ?4, risk = ?5, finished_at = ?6
                     WHERE approval_id = ?7 AND status = 'checking'",
                    params![
                        status.as_str(),
                        message,
                        closure,
                        config,
                        risk,
                        finished,
                        id
                    ],
                )?;
                crate::approvals::get_approval(c, id)
            })
            .await;
        self.finished.send_modify(|n| *n += 1);
        match stored {
            // Decided while it built: nobody needs its build dir any more.
            Ok(approval) if approval.status != ApprovalStatus::Pending => {
                self.remove(&agent, id).await
            }
            Ok(approval) => {
                if let Some(check) = approval.check {
                    self.bus.publish(crate::bus::Event::ApprovalChecked {
                        id,
                        agent: approval.agent,
                        requester: approval.requester,
                        check: Arc::new(check),
                        risk: approval.risk.map(Arc::new),
                    });
                }
            }
            Err(e) => tracing::warn!(id, error = %e, "cannot store a check's result"),
        }
    }

    /// Builds the pinned commit and compares its config with the base: (config, closure, flags).
    async fn check_build(
        &self,
        id: i64,
        agent: &AgentName,
        sha: String,
        kind: &str,
        base: Option<String>,
    ) -> Result<(AgentConfig, Option<u64>, Vec<RiskFlag>)> {
        let builder = self.containers.builder()?;
        let (b, name, repo) = (
            builder.clone(),
            agent.clone(),
            self.paths.applied_repo(agent),
        );
        let turn = self.one_at_a_time.lock().await;
        let (image, closure) = off_runtime(move || {
            let image = b.build_check(&name, id, &repo, &sha)?;
            let closure = b
                .closure_size(&image.path)
                .inspect_err(|e| tracing::warn!(id, error = %e, "no closure size"))
                .ok();
            Ok((image, closure))
        })
        .await?;
        drop(turn);
        let base = if kind == "spawn" {
            AgentConfig::default()
        } else {
            self.base_config(agent, base).await?
        };
        let risk = risk_flags(&base, &image.config);
        Ok((image.config, closure, risk))
    }

    /// What an apply is compared with: the image of the agent's last deployed deploy, else the
    /// checked config of the applied HEAD it was asked against, else the defaults.
    async fn base_config(&self, agent: &AgentName, base: Option<String>) -> Result<AgentConfig> {
        let key = agent.to_string();
        let (deployed, checked) = self
            .store
            .read(move |c| {
                let deployed =
                    crate::containers::latest_deploy(c, &key, &[proto::DeployStatus::Deployed])?
                        .map(|d| d.id);
                let checked: Option<String> = c
                    .prepare_cached(
                        "SELECT ch.config FROM approval_checks ch
                         JOIN approvals ap ON ap.id = ch.approval_id
                         WHERE ap.agent = ?1 AND ap.commit_sha = ?2 AND ch.config IS NOT NULL
                         ORDER BY ap.id DESC LIMIT 1",
                    )?
                    .query_row(params![key, base], |r| r.get(0))
                    .optional()?;
                Ok((deployed, checked))
            })
            .await?;
        if let Some(deploy) = deployed {
            let (builder, name) = (self.containers.builder()?, agent.clone());
            if let Some(image) = off_runtime(move || Ok(builder.image(&name, deploy))).await? {
                return Ok(image.config);
            }
        }
        if let Some(config) = checked.and_then(|json| serde_json::from_str(&json).ok()) {
            return Ok(config);
        }
        Ok(AgentConfig::default())
    }

    /// Waits while approval `id`'s check is `checking`, at most the build timeout and a margin.
    /// A hive that checks nothing (opened by a tool, not serving) does not wait.
    pub(crate) async fn wait(&self, id: i64) -> Result<()> {
        if self.scope.lock().expect("checks").is_none() {
            return Ok(());
        }
        let limit = self.build_timeout + WAIT_MARGIN;
        let deadline = tokio::time::Instant::now() + limit;
        let mut finished = self.finished.subscribe();
        loop {
            let status: Option<String> = self
                .store
                .read(move |c| {
                    Ok(c.query_row(
                        "SELECT status FROM approval_checks WHERE approval_id = ?1",
                        [id],
                        |r| r.get(0),
                    )
                    .optional()?)
                })
                .await?;
            let resumed = self.resumed.load(std::sync::atomic::Ordering::Acquire);
            if resumed && status.as_deref() != Some("checking") {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, finished.changed())
                .await
                .is_err()
            {
                return Err(Error::Conflict(format!(
                    "approval {id}: its check build is still running after {} s; nothing was changed, try again in a moment",
                    limit.as_secs()
                )));
            }
        }
    }

    /// Removes the check build dir of a decided approval (a failure is only logged).
    pub(crate) async fn remove(&self, agent: &AgentName, id: i64) {
        let Ok(builder) = self.containers.builder() else {
            return;
        };
        let name = agent.clone();
        if let Err(e) = off_runtime(move || builder.remove_check(&name, id)).await {
            tracing::warn!(id, error = %e, "cannot remove a check build's dir");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::agent_config::{Budget, McpServer, Network};

    fn kinds(flags: &[RiskFlag]) -> Vec<RiskKind> {
        flags.iter().map(|f| f.flag).collect()
    }

    #[test]
    fn the_same_config_has_no_flags() {
        let c = AgentConfig::default();
        assert!(risk_flags(&c, &c).is_empty());
    }

    #[test]
    fn each_widening_is_flagged_with_its_details() {
        let base = AgentConfig {
            allowed_recipients: vec!["bob".into()],
            egress: vec!["a.example:443".into()],
            budget: Budget {
                tokens_per_day: Some(1000),
            },
            ..AgentConfig::default()
        };
        let mut new = base.clone();
        new.network = Network::Host;
        new.egress.push("b.example:443".into());
        new.extra_mcp_servers.insert(
            "fs".into(),
            McpServer {
                command: "/bin/fs".into(),
                args: vec![],
                env: Default::default(),
                allowed_tools: vec![],
            },
        );
        new.allowed_commands.push("rm".into());
        new.resources.memory_mb += 1;
        new.budget.tokens_per_day = None;
        new.allowed_recipients.clear();
        new.prompt = "new".into();
        let flags = risk_flags(&base, &new);
        assert_eq!(
            kinds(&flags),
            [
                RiskKind::NetworkHost,
                RiskKind::EgressAdded,
                RiskKind::McpServerAdded,
                RiskKind::CommandsWidened,
                RiskKind::ResourcesRaised,
                RiskKind::BudgetRaised,
                RiskKind::RecipientsWidened,
                RiskKind::PromptChanged,
            ]
        );
        assert_eq!(flags[1].details, ["b.example:443"]);
        assert_eq!(flags[4].details, ["memoryMB 2048 → 2049"]);
        assert_eq!(flags[5].details, ["tokensPerDay 1000 → unlimited"]);
        assert_eq!(flags[6].details, ["anyone"]);
        let widening: Vec<bool> = flags.iter().map(|f| f.widening).collect();
        assert_eq!(
            widening,
            [true, true, true, true, false, false, true, false]
        );
    }

    #[test]
    fn narrowing_is_not_flagged() {
        let base = AgentConfig {
            network: Network::Host,
            egress: vec!["a:1".into(), "b:2".into()],
            allowed_commands: vec!["ls".into()],
            ..AgentConfig::default()
        };
        let mut new = AgentConfig {
            egress: vec!["a:1".into()],
            allowed_recipients: vec!["bob".into()],
            budget: Budget {
                tokens_per_day: Some(5),
            },
            ..AgentConfig::default()
        };
        new.resources.pids -= 1;
        assert!(risk_flags(&base, &new).is_empty());
    }

    #[test]
    fn an_unconfirmed_widening_or_failed_build_is_refused() {
        let mut a: Approval = serde_json::from_value(serde_json::json!({
            "id": 3, "kind": "apply", "agent": "bob", "requester": "manager", "commit": "abc",
            "description": "d", "stat": "", "status": "pending", "created_at": 1
        }))
        .unwrap();
        refuse_unconfirmed(&a, Confirm::default()).unwrap();
        a.risk = Some(vec![RiskFlag::new(
            RiskKind::EgressAdded,
            vec!["x:1".into()],
        )]);
        let e = refuse_unconfirmed(&a, Confirm::default()).unwrap_err();
        assert_eq!(e.code(), "widens_isolation");
        assert!(e.to_string().contains("egress_added"), "{e}");
        let yes = Confirm {
            yes_widen: true,
            ..Confirm::default()
        };
        refuse_unconfirmed(&a, yes).unwrap();
        a.check = Some(Check {
            status: CheckStatus::Failed,
            message: Some("error: x".into()),
            closure_bytes: None,
            started_at: 1,
            finished_at: Some(2),
        });
        assert_eq!(
            refuse_unconfirmed(&a, yes).unwrap_err().code(),
            "build_check_failed"
        );
        refuse_unconfirmed(
            &a,
            Confirm {
                yes_widen: true,
                override_failed_build: true,
            },
        )
        .unwrap();
    }
}
