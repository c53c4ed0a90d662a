//! `Hive`: the composition root. It owns the parts (store, registry, mailbox, bus, containers,
//! watcher, …), builds the services in [`Hive::open`] with clones of the handles each needs, and
//! delegates to them in one line; the use cases that combine several parts (approvals, lifecycle,
//! tombstones, the container actions) are its own. The admin API, the MCP surfaces and the CLI
//! call this and nothing beneath it. No service holds the `Hive`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use crate::api_key::ApiKeys;
use crate::audit::{AuditEntry, AuditLog, Verification};
use crate::bus::{Bus, Event};
use crate::components::{Components, Scope};
use crate::config::Config;
use crate::config_repo::ConfigRepos;
use crate::confinement::{Confinement, ConfinementReader, KeySearch};
use crate::containers::Containers;
use crate::dead_letters::{DeadLetter, DeadLetters};
use crate::due::DueJobs;
use crate::error::{Error, Result};
use crate::liveness::{Liveness, LivenessJudge};
use crate::mailbox::{Mailbox, Message, MessageCounts, RecvLimits, Turn};
use crate::mcp::McpSockets;
use crate::names::{AgentName, Inbox, Recipient, Sender};
use crate::notify::{LinkMinter, Notifier};
use crate::paths::StateDir;
use crate::questions::{Answer, Question, Questions};
use crate::registry::{AgentRecord, Registry};
use crate::reminders::{Reminder, Reminders};
use crate::stats::{AgentStats, StatsReader};
use crate::store::Store;

/// How often delivered messages past their retention are deleted.
const VACUUM_EVERY: Duration = Duration::from_secs(24 * 60 * 60);

/// Callers outside the broker use its methods; its parts are the broker's own.
pub struct Hive {
    pub(crate) paths: StateDir,
    pub(crate) config: Config,
    pub(crate) store: Store,
    pub(crate) registry: Arc<Registry>,
    pub(crate) mailbox: Mailbox,
    pub(crate) bus: Bus,
    pub(crate) due: DueJobs,
    reminders: Reminders,
    questions: Questions,
    pub(crate) mcp: McpSockets,
    pub(crate) gateway: crate::gateway::Gateway,
    /// Each running agent's egress allow-list (its deployed image's).
    pub(crate) egress: Arc<crate::egress::EgressLists>,
    /// Each agent's tokens today against its deployed image's daily budget.
    pub(crate) budgets: Arc<crate::model_calls::Budgets>,
    pub(crate) repos: ConfigRepos,
    pub(crate) containers: Arc<Containers>,
    pub(crate) watcher: Arc<crate::watcher::Watcher>,
    pub(crate) pauses: Arc<crate::pause::Pauses>,
    /// The check builds of config requests (`review`).
    pub(crate) checks: Arc<crate::review::Checks>,
    dead_letters: DeadLetters,
    liveness: Arc<LivenessJudge>,
    stats: StatsReader,
    audit_log: AuditLog,
    confinement: ConfinementReader,
    api_keys: ApiKeys,
    notifier: Notifier,
    /// Serializes the operations that touch config repos, so git and the store move together.
    pub(crate) config_lock: tokio::sync::Mutex<()>,
    /// Agents found inconsistent at start (their repo could not be made to agree with the store):
    /// kept stopped, and reported, while the rest of the hive runs.
    faults: Mutex<BTreeMap<AgentName, String>>,
    started: Instant,
}

/// What `hive status` shows, and an agent kept stopped because the hive found it inconsistent.
pub use proto::status::{Fault, Status};

impl Hive {
    /// Opens the hive in `paths` (which must exist): runs migrations, loads the registry, makes sure
    /// the manager exists, and returns the leases of a previous run to their queues.
    pub async fn open(paths: StateDir, config: Config) -> Result<Arc<Self>> {
        let store = Store::open(&paths.db(), config.store.synchronous)?;
        let registry =
            Arc::new(Registry::load(store.clone(), config.runtime.uid_base_start).await?);
        registry.ensure_manager().await?;
        let bus = Bus::default();
        let mailbox = Mailbox::new(
            store.clone(),
            registry.clone(),
            bus.clone(),
            &config.mailbox,
        );
        let released = mailbox.release_all_leases().await?;
        if released > 0 {
            tracing::info!(released, "returned unfinished turns to their inboxes");
        }
        let due = DueJobs::new(store.clone(), mailbox.clone());
        let reminders = Reminders::new(store.clone(), due.clone(), config.mailbox.max_body_bytes);
        let questions = Questions::new(
            store.clone(),
            mailbox.clone(),
            bus.clone(),
            due.clone(),
            config.mailbox.max_open_questions_per_agent,
        );
        let containers = Arc::new(Containers::open(&config, &paths)?);
        let gateway = crate::gateway::Gateway::new(&config.model)?;
        let repos = ConfigRepos::new(paths.clone());
        let activity = Arc::new(crate::watcher::HarnessActivity::new(&config));
        let liveness = Arc::new(LivenessJudge::new(
            store.clone(),
            registry.clone(),
            containers.clone(),
            activity.clone(),
        ));
        let watcher = Arc::new(
            crate::watcher::Watcher::open(
                &config,
                &paths,
                crate::watcher::WatcherHandles {
                    store: store.clone(),
                    mailbox: mailbox.clone(),
                    bus: bus.clone(),
                    registry: registry.clone(),
                    containers: containers.clone(),
                    repos: repos.clone(),
                    liveness: liveness.clone(),
                    activity,
                },
            )
            .await?,
        );
        let pauses = Arc::new(crate::pause::Pauses::load(store.clone()).await?);
        let egress = Arc::<crate::egress::EgressLists>::default();
        let budgets = Arc::<crate::model_calls::Budgets>::default();
        let dead_letters = DeadLetters::new(
            store.clone(),
            mailbox.clone(),
            registry.clone(),
            containers.clone(),
            watcher.clone(),
            pauses.clone(),
            config.mailbox.dead_letter_after_seconds,
        );
        let stats = StatsReader::new(store.clone(), registry.clone());
        let audit_log = AuditLog::new(store.clone(), &paths);
        let confinement = ConfinementReader::new(
            paths.clone(),
            registry.clone(),
            containers.clone(),
            egress.clone(),
            budgets.clone(),
        );
        let api_keys = ApiKeys::new(paths.clone(), registry.clone());
        let notifier = Notifier::new(config.notify.clone(), bus.clone());
        let checks = Arc::new(crate::review::Checks::new(
            store.clone(),
            bus.clone(),
            paths.clone(),
            containers.clone(),
            Duration::from_secs(config.build.timeout_seconds),
        ));
        let hive = Arc::new(Self {
            paths: paths.clone(),
            config,
            store,
            registry,
            mailbox,
            bus,
            due,
            reminders,
            questions,
            mcp: McpSockets::default(),
            gateway,
            egress,
            budgets,
            repos,
            containers,
            watcher,
            pauses,
            checks,
            dead_letters,
            liveness,
            stats,
            audit_log,
            confinement,
            api_keys,
            notifier,
            config_lock: tokio::sync::Mutex::new(()),
            faults: Mutex::default(),
            started: Instant::now(),
        });
        hive.finish_removals().await?;
        hive.finish_restores().await?;
        // Copies of proposed repos' objects a killed daemon left while reading a request.
        match hive.git(|repos| repos.clear_staging()).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                removed = n,
                "cleared staging copies left by a killed daemon"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot clear staging/"),
        }
        // A daemon killed in the middle of a ref update left its lock files: clear them before
        // any git work, the manager's first-start setup included. From here on, what goes wrong
        // with one agent's files stops that agent, not the hive.
        for agent in hive.registry.names() {
            let target = agent.clone();
            let cleared = hive
                .git(move |repos| repos.clear_stale_locks(&target))
                .await;
            if let Err(e) = cleared {
                hive.fault(&agent, &e);
            }
        }
        let manager = AgentName::manager();
        if !hive.is_faulted(&manager)
            && let Err(e) = hive.ensure_manager_config().await
        {
            hive.fault(&manager, &e);
        }
        hive.reconcile_applied().await?;
        hive.anchor_audit_head().await?;
        Ok(hive)
    }

    /// Keeps `agent` stopped and reports why (the log now, `hive status` from then on).
    pub(crate) fn fault(&self, agent: &AgentName, error: &Error) {
        tracing::error!(%agent, %error, "agent is inconsistent; it is kept stopped, the rest of the hive starts");
        self.faults
            .lock()
            .expect("faults")
            .insert(agent.clone(), error.to_string());
    }

    /// Checks `agent`, kept stopped at start, again as the start did (its repos' stale locks, the
    /// manager's config repos, its applied repo against the store). When it agrees now it is no
    /// longer kept stopped: its sockets open, it starts, and the check is audited. When it still
    /// does not, it stays stopped and nothing else changes; the error says why.
    pub async fn recheck(
        self: &Arc<Self>,
        agent: &AgentName,
    ) -> Result<crate::containers::Outcome> {
        let record = self.registry.require(agent)?;
        let was = self.faults.lock().expect("faults").get(agent).cloned();
        let Some(was) = was else {
            return Err(Error::Conflict(format!(
                "{agent} is not kept stopped: there is nothing to check again"
            )));
        };
        let still = |e: Error| {
            Error::Conflict(format!(
                "{agent} is still inconsistent and stays stopped: {e}"
            ))
        };
        // Under the config lock: no git work of another operation is cut by the lock clearing.
        {
            let _config = self.config_lock.lock().await;
            let target = agent.clone();
            self.git(move |repos| repos.clear_stale_locks(&target))
                .await
                .map_err(still)?;
        }
        if agent.is_manager() {
            self.ensure_manager_config().await.map_err(still)?;
        }
        {
            let _config = self.config_lock.lock().await;
            if !self.is_faulted(agent) {
                return Err(Error::Conflict(format!(
                    "{agent} was just checked again by another request"
                )));
            }
            if let Some((_, e)) = self
                .make_applied_agree(Some(agent))
                .await?
                .into_iter()
                .next()
            {
                return Err(still(e));
            }
            let key = agent.to_string();
            self.store
                .write(move |c| {
                    crate::audit::append(
                        c,
                        "operator",
                        "recheck",
                        Some(&key),
                        serde_json::json!({"was": was}),
                    )
                })
                .await?;
            self.faults.lock().expect("faults").remove(agent);
        }
        tracing::info!(%agent, "checked again: no longer kept stopped");
        self.open_agent_sockets(&record)?;
        self.start_in_background(agent.clone());
        Ok(self.outcome("checked again; starting", agent, None))
    }

    pub fn is_faulted(&self, agent: &AgentName) -> bool {
        self.faults.lock().expect("faults").contains_key(agent)
    }

    /// The agents kept stopped, and why.
    pub fn faults(&self) -> Vec<Fault> {
        self.faults
            .lock()
            .expect("faults")
            .iter()
            .map(|(agent, reason)| Fault {
                agent: agent.to_string(),
                reason: reason.clone(),
            })
            .collect()
    }

    pub async fn status(&self) -> Result<Status> {
        Ok(Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            uptime_seconds: self.started.elapsed().as_secs(),
            state_dir: self.paths.root().display().to_string(),
            synchronous: self.config.store.synchronous.to_string(),
            agents: self.registry.len(),
            messages: self.mailbox.counts().await?,
            delivery_latency: self.mailbox.delivery_latency(),
            faulted: self.faults(),
            runtime: match self.containers.runtime_kind() {
                Some(crate::config::RuntimeKind::Nspawn) => "nspawn",
                Some(crate::config::RuntimeKind::Process) => "process (no isolation)",
                Some(crate::config::RuntimeKind::Off) | None => "none (this hive runs no agents)",
            }
            .to_owned(),
            driver: self.containers.driver(),
        })
    }

    /// Starts the hive's own components in order — the due jobs, the upkeep, the containers, the
    /// review (check builds of config requests), the MCP sockets, the watcher —
    /// and returns them; the caller adds its own (the admin API) and stops them all in reverse.
    pub fn start(self: &Arc<Self>) -> Result<Components> {
        let mut parts = Components::default();
        parts.start("due jobs", |s| {
            self.spawn_due_jobs(s);
            Ok::<_, crate::Error>(())
        })?;
        parts.start("upkeep", |s| {
            self.spawn_upkeep(s);
            Ok::<_, crate::Error>(())
        })?;
        // Before MCP, so that it stops after MCP drained: stop accepting → drain MCP → stop
        // containers. Its task starts agents once MCP listens (the harness retries its connect).
        parts.start("containers", |s| self.run_containers(s))?;
        // Before MCP, so that every request that arrives is checked.
        parts.start("review", |s| self.checks.run(s))?;
        parts.start("mcp", |s| self.serve_mcp(s))?;
        // Last, so that it stops first: the harnesses' ends while MCP drains and the containers
        // stop are no crashes to act on.
        parts.start("watcher", |s| self.run_watcher(s))?;
        Ok(parts)
    }

    /// Runs the due task (reminders, question expiries) until `scope` stops.
    pub fn spawn_due_jobs(&self, scope: &Scope) {
        self.due.run(scope)
    }

    /// Fires everything due now; returns when the next job is due.
    pub async fn fire_due_jobs(&self) -> Result<Option<i64>> {
        self.due.fire().await
    }

    /// Background upkeep until `scope` stops: the daily retention vacuum (a due job, not a poll).
    pub fn spawn_upkeep(self: &Arc<Self>, scope: &Scope) {
        let hive = self.clone();
        let shutdown = scope.stopping().clone();
        let retention =
            Duration::from_secs(u64::from(self.config.mailbox.retention_days) * 24 * 60 * 60);
        scope.spawn(async move {
            let mut every = tokio::time::interval(VACUUM_EVERY);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = every.tick() => {}
                }
                match hive.mailbox.vacuum(retention).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "retention vacuum"),
                    Err(e) => tracing::warn!(error = %e, "retention vacuum failed"),
                }
            }
        });
    }

    /// Finishes every write already accepted and closes the store.
    pub fn close(&self) {
        self.store.close();
    }
}

/// What callers outside the broker use instead of reaching into the hive's parts: thin
/// delegations to the mailbox, the registry and the bus.
impl Hive {
    /// The state directory the hive runs in.
    pub fn state_dir(&self) -> &StateDir {
        &self.paths
    }

    /// The configuration the hive was opened with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Stores a message and returns the ids of the rows it became (one, or one per agent for
    /// `*`), after they committed.
    pub async fn send(
        &self,
        from: &Sender,
        to: &Recipient,
        body: String,
        in_reply_to: Option<i64>,
    ) -> Result<Vec<i64>> {
        self.mailbox.send(from, to, body, in_reply_to).await
    }

    /// Takes up to `limits.max` queued messages of `inbox`, oldest first, marking them delivered;
    /// with none queued, waits up to `limits.wait` for a send.
    pub async fn recv(&self, inbox: &Inbox, limits: RecvLimits) -> Result<Vec<Message>> {
        self.mailbox.recv(inbox, limits).await
    }

    /// How many receivers wait on `inbox` right now (tests wait for this instead of sleeping).
    pub fn waiting_receivers(&self, inbox: &Inbox) -> usize {
        self.mailbox.waiting_receivers(inbox)
    }

    /// The newest `limit` messages to `inbox`, oldest first, whatever their state. Marks nothing.
    pub async fn inbox_messages(&self, inbox: &Inbox, limit: usize) -> Result<Vec<Message>> {
        self.mailbox.inbox(inbox, limit).await
    }

    /// The operator's inbox: its newest `limit` messages, oldest first. Marks nothing.
    pub async fn operator_inbox(&self, limit: usize) -> Result<Vec<Message>> {
        self.mailbox.inbox(&Inbox::Operator, limit).await
    }

    /// The newest `limit` messages, oldest first; only those from or to `agent` when given.
    pub async fn message_history(
        &self,
        agent: Option<String>,
        limit: usize,
    ) -> Result<Vec<Message>> {
        self.mailbox.history(agent, limit).await
    }

    /// The `agent.nix` of `agent`'s applied HEAD (`None` before anything was applied).
    pub async fn applied_agent_nix(&self, agent: &AgentName) -> Result<Option<String>> {
        let name = agent.clone();
        self.git(move |repos| repos.applied_agent_nix(&name)).await
    }

    /// Message `id` with its receipt (sent, leased to which turn, delivered).
    pub async fn message(&self, id: i64) -> Result<Message> {
        self.mailbox.message(id).await
    }

    /// The delivery latency of the last hour (p50/p99), from the mailbox's memory.
    pub fn delivery_latency(&self) -> proto::message::DeliveryLatency {
        self.mailbox.delivery_latency()
    }

    /// Counts of the stored messages by state.
    pub async fn message_counts(&self) -> Result<MessageCounts> {
        self.mailbox.counts().await
    }

    /// Deletes delivered messages older than `retention`; returns how many went.
    pub async fn vacuum_messages(&self, retention: Duration) -> Result<usize> {
        self.mailbox.vacuum(retention).await
    }

    /// The largest message body the hive accepts, in bytes.
    pub fn max_body_bytes(&self) -> usize {
        self.mailbox.max_body_bytes()
    }

    /// The harness's take: leases the oldest queued message of `agent` to a new turn; with none
    /// queued, waits up to `wait`.
    pub async fn next_turn(&self, agent: &AgentName, wait: Duration) -> Result<Option<Turn>> {
        self.mailbox.next_turn(agent, wait).await
    }

    /// Ends a turn of `agent`: its message becomes delivered.
    pub async fn finish_turn(
        &self,
        agent: &AgentName,
        turn: i64,
        outcome: &str,
        usage: Option<proto::Usage>,
    ) -> Result<()> {
        self.mailbox.finish_turn(agent, turn, outcome, usage).await
    }

    /// Returns every message leased to `agent`'s unfinished turns to its queue; returns how many.
    pub async fn release_leases(&self, agent: &AgentName) -> Result<usize> {
        self.mailbox.release_leases(agent).await
    }

    /// The record of agent `name`, if there is one.
    pub fn agent(&self, name: &AgentName) -> Option<AgentRecord> {
        self.registry.get(name)
    }

    /// Every agent's record.
    pub fn agents(&self) -> Vec<AgentRecord> {
        self.registry.list()
    }

    /// Sets whom `agent` may write to (empty = anyone).
    pub async fn set_allowed_recipients(
        &self,
        agent: &AgentName,
        allowed: Vec<AgentName>,
    ) -> Result<()> {
        self.registry.set_allowed_recipients(agent, allowed).await
    }

    /// Sets a reminder for `agent` in `in_seconds` (1 s to 30 days): a message from `system` then.
    pub async fn remind(
        &self,
        agent: &AgentName,
        in_seconds: u64,
        body: String,
    ) -> Result<Reminder> {
        self.reminders.set(agent, in_seconds, body).await
    }

    /// Stores a question from `asker` for the operator and puts it in the operator's inbox.
    pub async fn ask_operator(
        &self,
        asker: &AgentName,
        question: String,
        options: Vec<String>,
        multi: bool,
        ttl_seconds: Option<u64>,
    ) -> Result<Question> {
        self.questions
            .ask(asker, question, options, multi, ttl_seconds)
            .await
    }

    /// Open questions (all when `all`), newest last.
    pub async fn questions(&self, all: bool) -> Result<Vec<Question>> {
        self.questions.list(all).await
    }

    /// The operator answers question `id`; the answer reaches the asker as a message from
    /// `operator` replying to the question.
    pub async fn answer_question(&self, id: i64, answer: Answer) -> Result<Question> {
        self.questions.answer(id, answer).await
    }

    /// A receiver of the committed events from now on (SSE, `--follow`).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.bus.subscribe()
    }

    /// The dead letters now, oldest first (at most [`crate::dead_letters::MAX_LISTED`]).
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        self.dead_letters.list().await
    }

    /// The operator sends dead letter `id` to `to` instead (an agent or `operator`): a new
    /// message from its sender with its body; the dead letter counts as delivered. Audited.
    pub async fn redirect_dead_letter(&self, id: i64, to: &str) -> Result<Message> {
        self.dead_letters.redirect(id, to).await
    }

    /// The operator drops dead letter `id`: it counts as delivered, unread. Audited.
    pub async fn drop_dead_letter(&self, id: i64) -> Result<()> {
        self.dead_letters.drop_letter(id).await
    }

    /// `agent`'s liveness now.
    pub async fn agent_liveness(&self, agent: &AgentName) -> Result<Liveness> {
        self.liveness.of(agent).await
    }

    /// `agent`'s stats: its current incarnation's turns that finished at or after `since`
    /// (RFC 3339 or a span such as `24h`; all of them when absent).
    pub async fn agent_stats(&self, agent: &AgentName, since: Option<&str>) -> Result<AgentStats> {
        self.stats.of(agent, since).await
    }

    /// The newest `limit` audit rows (of one agent when given), oldest first.
    pub async fn audit(&self, agent: Option<String>, limit: usize) -> Result<Vec<AuditEntry>> {
        self.audit_log.newest(agent, limit).await
    }

    /// Recomputes the whole audit chain and names the first row that does not match; then
    /// checks the chain against its head file (deleted newest rows, or every hash recomputed).
    pub async fn verify_audit(&self) -> Result<Verification> {
        self.audit_log.verify().await
    }

    /// Anchors the audit chain's head at start (see [`AuditLog::anchor_head`]).
    pub(crate) async fn anchor_audit_head(&self) -> Result<()> {
        self.audit_log.anchor_head().await
    }

    /// The confinement of `agent`, whose container runs; with [`KeySearch::Skip`], `key_inside`
    /// is `None` (not checked) and nothing is read from its processes or files.
    pub async fn agent_confinement(
        &self,
        agent: &AgentName,
        keys: KeySearch,
    ) -> Result<Confinement> {
        self.confinement.of(agent, keys).await
    }

    /// The operator stores an API key for `agent` (validated first; nothing is written when it
    /// is refused). The watcher then reports the agent `logged_in`.
    pub async fn store_api_key(&self, agent: &AgentName, key: &[u8]) -> Result<()> {
        self.api_keys.store(agent, key).await
    }

    /// The notify component: reads the bus until `scope` stops, batching alerts. Does nothing
    /// without `[notify] url`.
    pub fn run_notifier(&self, scope: &Scope, minter: Option<LinkMinter>) -> Result<()> {
        self.notifier.run(scope, minter)
    }

    /// Test support only: runs `job` on the store's writer thread, as a request of its own inside
    /// the next group commit. A test holds the writer with it to shape a batch; it cannot write.
    #[doc(hidden)]
    pub fn run_on_writer_for_tests(&self, job: impl FnOnce() + Send + 'static) {
        self.store.write_detached(
            "a test's job on the writer",
            move |_| {
                job();
                Ok(())
            },
            || {},
        );
    }
}

#[cfg(test)]
mod tests {
    /// The services built in `Hive::open`: each owns its handles, so none reaches back into the
    /// hive (no `impl Hive` block, no `Hive` handle); `Hive` delegates to them.
    const SERVICES: [(&str, &str); 11] = [
        ("due", include_str!("due.rs")),
        ("reminders", include_str!("reminders.rs")),
        ("questions", include_str!("questions.rs")),
        ("dead_letters", include_str!("dead_letters.rs")),
        ("liveness", include_str!("liveness.rs")),
        ("stats", include_str!("stats.rs")),
        ("audit", include_str!("audit.rs")),
        ("confinement", include_str!("confinement.rs")),
        ("api_key", include_str!("api_key.rs")),
        ("notify", include_str!("notify.rs")),
        ("review", include_str!("review.rs")),
    ];

    #[test]
    fn services_own_their_handles_and_hold_no_hive() {
        for (module, source) in SERVICES {
            for reach in ["impl Hive", "hive::Hive", "Arc<Hive>", "crate::Hive"] {
                assert!(
                    !source.contains(reach),
                    "{module}.rs has `{reach}`: a service is given the handles it needs, never the hive"
                );
            }
        }
    }
}
