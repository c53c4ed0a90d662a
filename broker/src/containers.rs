//! What runs (DESIGN §8): the deploy path — an applied commit is built into an image, the agent's
//! container is (re)started on it, and the deploy ends `deployed` (tag `deployed/<deploy id>`) or
//! `failed` (tag `failed/<deploy id>`, nix's message kept, the old container left running) — and
//! the lifecycle actions on top of it: start, stop, restart, update, logs, gc. At daemon start the
//! containers component reaps what a killed daemon left, finishes interrupted deploys and starts
//! every agent on its last good image; at stop it stops them all.
//!
//! Transient states (`building`, `starting`, `stopping`, `rebuilding`) are held by a [`Busy`]
//! guard whose `Drop` clears them, so no error path leaves one stuck. Deploys of one agent run one
//! at a time. An agent is *up* when its harness is connected to `harness.sock`, not when its
//! process started. Builds and runtime calls block: they run off the async workers. Every
//! lifecycle action is audited. This module never chooses flags or paths of a container (the
//! runtime does) and never writes the applied repo except its deploy tags.
//!
//! [`Containers`] holds what runs (the runtime, the builder, each agent's slot); the actions
//! (a deploy, `start_agent`, `stop_agent`, `restart_agent`, `update_agent`, `pause_agent`) are
//! `Hive`'s own use cases, not a service's: each combines it with the store, the registry, the
//! config repos, the pauses, the egress lists and budgets and the watcher.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::approvals::{Deploy, deploy_from_row, insert_deploy};
use crate::audit;
use crate::build::{Builder, Image};
use crate::bus::Event;
use crate::components::Scope;
use crate::config::{Config, RuntimeKind};
use crate::error::{Error, Result};
use crate::hive::Hive;
use crate::lifecycle::off_runtime;
use crate::names::AgentName;
use crate::paths::{self, StateDir};
use crate::runtime::{self, ContainerSpec, ContainerState, Isolation, Runtime};
use crate::status::{ApprovalStatus, DeployStatus, transition};

/// The most lines `logs` returns.
pub const MAX_LOG_LINES: usize = proto::tools::MAX_LOG_LINES as usize;
/// The most bytes of a log `logs` reads from its end.
const MAX_LOG_READ: u64 = 4 * 1024 * 1024;
/// A log file grows to this size before it is rotated to `<name>.log.1`.
pub const LOG_ROTATE_BYTES: u64 = 8 * 1024 * 1024;
/// How often running containers' logs are checked for rotation.
const LOG_CHECK_EVERY: Duration = Duration::from_secs(60);
/// How long `start` waits for the harness to connect before it answers anyway.
pub const UP_WAIT: Duration = Duration::from_secs(30);
/// The most of a failed build's message kept on the deploy.
const MAX_FAILURE_MESSAGE: usize = 8 * 1024;

/// A state an agent passes through; held by a [`Busy`] guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transient {
    Building,
    Starting,
    Stopping,
    Rebuilding,
}

impl Transient {
    fn as_str(self) -> &'static str {
        match self {
            Self::Building => "building",
            Self::Starting => "starting",
            Self::Stopping => "stopping",
            Self::Rebuilding => "rebuilding",
        }
    }
}

/// What an agent's container is doing, what a lifecycle action did, what `hive gc` removed.
pub use proto::agent::{AgentRun, GcReport, Outcome};

/// What runs, per agent.
#[derive(Debug, Clone, Default)]
struct Slot {
    transient: Option<Transient>,
    /// The deploy the container was started from.
    running: Option<(Deploy, PathBuf)>,
    /// Open harness connections.
    harness: usize,
    exited: Option<String>,
    /// The harness's last `report_state`; forgotten when no harness is connected.
    turn_state: Option<proto::tools::TurnState>,
}

/// The containers part of the hive: the runtime, the builder and what each agent is doing.
pub struct Containers {
    runtime: Option<Arc<dyn Runtime>>,
    /// The builder, or why there is none (e.g. nix is missing): deploys then fail saying so.
    builder: std::result::Result<Arc<Builder>, String>,
    slots: Arc<Mutex<HashMap<AgentName, Slot>>>,
    /// Bumped at every change of a slot, so waiters (start waiting for the harness) wake.
    changed: watch::Sender<u64>,
    /// One deploy at a time per agent.
    deploy_locks: Mutex<HashMap<AgentName, Arc<tokio::sync::Mutex<()>>>>,
    /// Deploys started in the background (after an approve).
    deploys: TaskTracker,
    /// The containers component runs: only then do approvals deploy (a hive opened by a tool
    /// or a test without `start` changes no container; the next start finishes its deploys).
    serving: std::sync::atomic::AtomicBool,
    stop_timeout: Duration,
}

impl Containers {
    /// The runtime and builder `config` names. A runtime that cannot be opened is an error (the
    /// operator asked for it); a builder that cannot is reported at each deploy.
    pub fn open(config: &Config, paths: &StateDir) -> Result<Self> {
        let kind = config.runtime.kind;
        let runtime = match kind {
            Some(RuntimeKind::Off) => None,
            _ => Some(runtime::open(config, paths)?),
        };
        let builder = if runtime.is_none() {
            Err("this hive runs no agents ([runtime] kind = \"none\")".to_owned())
        } else {
            harness_binary(config).and_then(|harness| {
                Builder::new(
                    config.build.builder,
                    paths.clone(),
                    harness,
                    Duration::from_secs(config.build.timeout_seconds),
                )
                .map(|b| Arc::new(b.with_defaults(config)))
                .map_err(|e| e.to_string())
            })
        };
        if let Err(why) = &builder
            && runtime.is_some()
        {
            tracing::warn!(%why, "agents cannot be built; deploys will fail until this is fixed");
        }
        Ok(Self {
            runtime,
            builder,
            slots: Arc::default(),
            changed: watch::channel(0).0,
            deploy_locks: Mutex::default(),
            deploys: TaskTracker::new(),
            serving: Default::default(),
            stop_timeout: Duration::from_secs(config.runtime.stop_timeout_seconds),
        })
    }

    /// The runtime's kind, `None` when this hive runs no agents.
    pub fn runtime_kind(&self) -> Option<RuntimeKind> {
        self.runtime.as_ref().map(|r| r.kind())
    }

    pub(crate) fn runtime(&self) -> Result<&Arc<dyn Runtime>> {
        self.runtime.as_ref().ok_or_else(|| {
            Error::Unavailable(
                "this hive runs no agents ([runtime] kind = \"none\" in hive.toml)".into(),
            )
        })
    }

    pub(crate) fn builder(&self) -> Result<Arc<Builder>> {
        self.builder
            .clone()
            .map_err(|why| Error::Unavailable(format!("agents cannot be built here: {why}")))
    }

    fn update_slot<T>(&self, agent: &AgentName, f: impl FnOnce(&mut Slot) -> T) -> T {
        let out = f(self
            .slots
            .lock()
            .expect("slots")
            .entry(agent.clone())
            .or_default());
        self.changed.send_modify(|n| *n += 1);
        out
    }

    fn slot(&self, agent: &AgentName) -> Slot {
        self.slots
            .lock()
            .expect("slots")
            .get(agent)
            .cloned()
            .unwrap_or_default()
    }

    /// Marks `agent` as in `state` until the returned guard drops; refused while another
    /// transient state holds it.
    fn begin(&self, agent: &AgentName, state: Transient) -> Result<Busy> {
        let mut slots = self.slots.lock().expect("slots");
        let slot = slots.entry(agent.clone()).or_default();
        if let Some(now) = slot.transient {
            return Err(Error::Conflict(format!(
                "agent '{agent}' is {} now; try again when that is done",
                now.as_str()
            )));
        }
        slot.transient = Some(state);
        drop(slots);
        self.changed.send_modify(|n| *n += 1);
        Ok(Busy {
            slots: self.slots.clone(),
            changed: self.changed.clone(),
            agent: agent.clone(),
        })
    }

    fn deploy_lock(&self, agent: &AgentName) -> Arc<tokio::sync::Mutex<()>> {
        self.deploy_locks
            .lock()
            .expect("deploy locks")
            .entry(agent.clone())
            .or_default()
            .clone()
    }

    /// Counts a harness connection of `agent` opening or closing.
    pub(crate) fn harness_connected(&self, agent: &AgentName, connected: bool) {
        self.update_slot(agent, |s| {
            if connected {
                s.harness += 1;
            } else {
                s.harness = s.harness.saturating_sub(1);
                if s.harness == 0 {
                    s.turn_state = None;
                }
            }
        });
    }

    /// Keeps what the harness of `agent` reports about its model.
    pub(crate) fn set_turn_state(&self, agent: &AgentName, state: proto::tools::TurnState) {
        self.update_slot(agent, |s| s.turn_state = Some(state));
    }

    /// Waits up to `wait` for the harness of `agent` to connect; true if it is.
    async fn wait_up(&self, agent: &AgentName, wait: Duration) -> bool {
        let mut changed = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.slot(agent).harness > 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                return self.slot(agent).harness > 0;
            }
        }
    }

    pub(crate) fn run_of(&self, agent: &AgentName) -> AgentRun {
        let slot = self.slot(agent);
        let state = self
            .runtime
            .as_ref()
            .map(|r| r.status(agent))
            .unwrap_or(ContainerState::Absent);
        let pid = match state {
            ContainerState::Running { pid } => Some(pid),
            _ => None,
        };
        let word = match (slot.transient, pid) {
            (Some(t), _) => t.as_str(),
            (None, Some(_)) => "running",
            (None, None) => "stopped",
        };
        let running = slot.running.as_ref().filter(|_| pid.is_some());
        AgentRun {
            agent: agent.to_string(),
            state: word.to_owned(),
            up: pid.is_some() && slot.harness > 0,
            pid,
            deploy: running.map(|(d, _)| d.id),
            commit: running.map(|(d, _)| d.commit.clone()),
            image: running.map(|(_, image)| image.display().to_string()),
            exited: slot.exited,
            turn_state: slot.turn_state.filter(|_| slot.harness > 0),
            driver: self.driver(),
            paused: false,
        }
    }

    /// What `hive status` and `hive show-agent` say of the claude driver: where its CLI is, or
    /// why it cannot start (`None` when this hive runs no agents).
    pub fn driver(&self) -> Option<String> {
        self.runtime.as_ref().map(|r| match r.claude() {
            Ok(path) => format!("claude at {}", path.display()),
            Err(why) => why.clone(),
        })
    }
}

/// Holds a transient state; dropping it clears the state, whatever path the holder took.
pub(crate) struct Busy {
    slots: Arc<Mutex<HashMap<AgentName, Slot>>>,
    changed: watch::Sender<u64>,
    agent: AgentName,
}

impl Busy {
    /// Moves to another transient state (building → starting) without letting go.
    fn set(&self, state: Transient) {
        if let Some(slot) = self.slots.lock().expect("slots").get_mut(&self.agent) {
            slot.transient = Some(state);
        }
        self.changed.send_modify(|n| *n += 1);
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Ok(mut slots) = self.slots.lock()
            && let Some(slot) = slots.get_mut(&self.agent)
        {
            slot.transient = None;
        }
        self.changed.send_modify(|n| *n += 1);
    }
}

/// The `hive-agent` binary: `[runtime] harness_binary`, else the one next to this executable.
fn harness_binary(config: &Config) -> std::result::Result<PathBuf, String> {
    if let Some(p) = &config.runtime.harness_binary {
        return Ok(p.clone());
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let beside = exe.with_file_name("hive-agent");
    if beside.is_file() {
        Ok(beside)
    } else {
        Err(format!(
            "no hive-agent binary beside {} (build it with `cargo build -p hyperhive-harness`, or set [runtime] harness_binary)",
            exe.display()
        ))
    }
}

/// Who asked for a lifecycle action, for the audit chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    Operator,
    Manager,
    System,
}

impl Actor {
    fn as_str(self) -> &'static str {
        match self {
            Self::Operator => "operator",
            Self::Manager => "manager",
            Self::System => "system",
        }
    }
}

fn get_deploy(c: &Connection, id: i64) -> Result<Deploy> {
    c.prepare_cached(&format!(
        "SELECT {} FROM deploys WHERE id = ?1",
        crate::approvals::DEPLOY_COLUMNS
    ))?
    .query_row([id], deploy_from_row)
    .optional()?
    .ok_or_else(|| Error::NotFound {
        what: format!("deploy {id}"),
    })
}

/// The newest deploy of the live incarnation of `agent` whose status is one of `statuses`.
pub(crate) fn latest_deploy(
    c: &Connection,
    agent: &str,
    statuses: &[DeployStatus],
) -> Result<Option<Deploy>> {
    let wanted: Vec<&str> = statuses.iter().map(|s| s.as_str()).collect();
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {} FROM deploys
         WHERE incarnation = (SELECT incarnation FROM agents WHERE name = ?1)
         ORDER BY id DESC",
        crate::approvals::DEPLOY_COLUMNS
    ))?;
    let rows = stmt.query_map([agent], deploy_from_row)?;
    for row in rows {
        let d = row?;
        if wanted.contains(&d.status.as_str()) {
            return Ok(Some(d));
        }
    }
    Ok(None)
}

impl Hive {
    /// What one agent's container is doing.
    pub fn agent_run(&self, agent: &AgentName) -> Result<AgentRun> {
        self.registry.require(agent)?;
        Ok(self.run_of(agent))
    }

    /// What the container runs, and whether the agent is paused.
    fn run_of(&self, agent: &AgentName) -> AgentRun {
        let mut run = self.containers.run_of(agent);
        run.paused = self.is_paused(agent);
        run
    }

    /// The runtime agents run in (`None`: this hive runs none).
    pub fn runtime_kind(&self) -> Option<RuntimeKind> {
        self.containers.runtime_kind()
    }

    /// The isolation of a running agent, read from the kernel.
    pub async fn agent_isolation(&self, agent: &AgentName) -> Result<Isolation> {
        self.registry.require(agent)?;
        let runtime = self.containers.runtime()?.clone();
        let name = agent.clone();
        off_runtime(move || runtime.isolation(&name)).await
    }

    /// Starts a deploy in the background (after an approve, a spawn or a rollback): the caller
    /// answers at once, the deploy's status and the bus tell the rest. Does nothing when this
    /// hive runs no agents.
    pub(crate) fn deploy_in_background(self: &Arc<Self>, agent: AgentName, deploy_id: i64) {
        use std::sync::atomic::Ordering;
        if self.containers.runtime.is_none() || !self.containers.serving.load(Ordering::Acquire) {
            return;
        }
        let hive = self.clone();
        self.containers.deploys.spawn(async move {
            if let Err(e) = hive.run_deploy(&agent, deploy_id).await {
                tracing::warn!(%agent, deploy = deploy_id, error = %e, "deploy did not finish");
            }
            give_memory_back().await;
        });
    }

    /// Starts `agent` in the background (after a restore, as a spawned agent is started): the
    /// caller answers at once; the run state and the bus tell the rest. Does nothing when this
    /// hive runs no agents.
    pub(crate) fn start_in_background(self: &Arc<Self>, agent: AgentName) {
        use std::sync::atomic::Ordering;
        if self.containers.runtime.is_none() || !self.containers.serving.load(Ordering::Acquire) {
            return;
        }
        let hive = self.clone();
        self.containers.deploys.spawn(async move {
            if let Err(e) = hive.start_agent(Actor::System, &agent).await {
                tracing::warn!(%agent, error = %e, "the restored agent did not start");
            }
        });
    }

    /// Builds deploy `deploy_id` of `agent` and (re)starts the agent on it. A failed build or
    /// start ends the deploy `failed` with the message (returned, not an error: the deploy ran)
    /// and leaves what ran before running.
    pub(crate) async fn run_deploy(
        self: &Arc<Self>,
        agent: &AgentName,
        deploy_id: i64,
    ) -> Result<Deploy> {
        let lock = self.containers.deploy_lock(agent);
        let _one_at_a_time = lock.lock().await;
        let running = self.containers.run_of(agent).pid.is_some();
        let busy = self.containers.begin(
            agent,
            if running {
                Transient::Rebuilding
            } else {
                Transient::Building
            },
        )?;
        let deploy = self
            .store
            .write(move |c| {
                let d = get_deploy(c, deploy_id)?;
                transition(c, deploy_id, DeployStatus::Applied, DeployStatus::Building)?;
                if let Some(a) = d.approval {
                    transition(c, a, ApprovalStatus::Approved, ApprovalStatus::Building)?;
                }
                get_deploy(c, deploy_id)
            })
            .await?;
        self.bus.publish(Event::Deploy {
            deploy: deploy.clone(),
        });
        let built = match self.containers.builder() {
            Ok(builder) => {
                let (name, sha) = (agent.clone(), deploy.commit.clone());
                let repo = self.paths.applied_repo(agent);
                off_runtime(move || {
                    // What the image is built with, taken before nix reads it; a harness that
                    // cannot be read fails the build below with nix's own message.
                    let fingerprint = builder.fingerprint().ok();
                    Ok((builder.build(&name, deploy_id, &repo, &sha)?, fingerprint))
                })
                .await
            }
            Err(e) => Err(e),
        };
        let (image, fingerprint) = match built {
            Ok(built) => built,
            Err(e) => return self.finish_deploy(&deploy, Err(e), None).await,
        };
        if running && let Err(e) = self.stop_container(agent).await {
            return self.finish_deploy(&deploy, Err(e), None).await;
        }
        if !self
            .containers
            .serving
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(Error::ShuttingDown);
        }
        busy.set(Transient::Starting);
        let started = self.start_container(agent, &deploy, &image).await;
        drop(busy);
        let finished = self
            .finish_deploy(&deploy, started.map(|_| ()), fingerprint)
            .await?;
        if finished.status == DeployStatus::Deployed {
            self.containers.wait_up(agent, UP_WAIT).await;
        }
        Ok(finished)
    }

    /// Ends a building deploy: `deployed` or `failed` (with the message), its approval too, the
    /// builder fingerprint its image was built with, the tag, the audit row, the bus.
    async fn finish_deploy(
        &self,
        deploy: &Deploy,
        outcome: Result<()>,
        builder: Option<String>,
    ) -> Result<Deploy> {
        let (id, agent) = (deploy.id, deploy.agent.clone());
        let (to, message) = match &outcome {
            Ok(()) => (DeployStatus::Deployed, None),
            Err(e) => {
                let mut text = e.to_string();
                if text.len() > MAX_FAILURE_MESSAGE {
                    let mut cut = MAX_FAILURE_MESSAGE;
                    while !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    text.truncate(cut);
                    text.push_str(" …");
                }
                (DeployStatus::Failed, Some(text))
            }
        };
        let approval_to = match to {
            DeployStatus::Deployed => ApprovalStatus::Deployed,
            _ => ApprovalStatus::Failed,
        };
        let detail_message = message.clone();
        let finished = self
            .store
            .write(move |c| {
                transition(c, id, DeployStatus::Building, to)?;
                c.execute(
                    "UPDATE deploys SET log_tail = ?1, builder = ?2 WHERE id = ?3",
                    params![detail_message, builder, id],
                )?;
                let d = get_deploy(c, id)?;
                if let Some(a) = d.approval {
                    transition(c, a, ApprovalStatus::Building, approval_to)?;
                }
                audit::append(
                    c,
                    "system",
                    if to == DeployStatus::Deployed {
                        "deployed"
                    } else {
                        "deploy_failed"
                    },
                    Some(&agent),
                    json!({"deploy": id, "commit": d.commit, "message": detail_message}),
                )?;
                Ok(d)
            })
            .await?;
        match &message {
            None => tracing::info!(agent = %finished.agent, deploy = id, "deployed"),
            Some(m) => {
                tracing::warn!(agent = %finished.agent, deploy = id, error = %m, "deploy failed")
            }
        }
        let name = AgentName::parse(&finished.agent)?;
        let (tag, commit) = (
            format!("{}/{id}", finished.status.as_str()),
            finished.commit.clone(),
        );
        if let Err(e) = self.git(move |repos| repos.tag(&name, &tag, &commit)).await {
            tracing::warn!(deploy = id, error = %e, "cannot tag the deploy");
        }
        self.bus.publish(Event::Deploy {
            deploy: finished.clone(),
        });
        Ok(finished)
    }

    /// Starts `agent`'s container on `image` (the deploy it was built for).
    async fn start_container(
        &self,
        agent: &AgentName,
        deploy: &Deploy,
        image: &Image,
    ) -> Result<u32> {
        let runtime = self.containers.runtime()?.clone();
        let record = self.registry.require(agent)?;
        let spec = ContainerSpec {
            agent: agent.clone(),
            manager: (record.kind == crate::registry::AgentKind::Manager),
            image: image.path.clone(),
            config: image.config.clone(),
            uid_base: record.uid_base,
            run_dir: self.paths.agent_run_dir(agent),
            state_dir: self.paths.agent_state_dir(agent),
            home_dir: self.paths.agent_home(agent),
            agents_dir: (record.kind == crate::registry::AgentKind::Manager)
                .then(|| self.paths.root().join("agents")),
            log_file: self.paths.agent_log(agent),
        };
        // The gateway's CONNECT and budget follow the image that runs (an approved commit's).
        self.egress.set(agent, &image.config.egress);
        let used = crate::model_calls::used_today(&self.store, agent).await?;
        self.budgets
            .set(agent, image.config.budget.tokens_per_day, used);
        if image.config.network == proto::agent_config::Network::Host {
            tracing::warn!(%agent, "network = \"host\": the container shares the host's network; \
                its egress is not confined to hyperhive.egress");
        }
        let root = self.paths.root().to_path_buf();
        let pid = off_runtime(move || {
            // The runtime creates the bound dirs; they must not lead out of the state dir.
            for dir in [
                &spec.run_dir,
                &spec.state_dir,
                &spec.home_dir,
                &spec.log_file,
            ] {
                paths::checked_within(&root, dir)?;
            }
            paths::make_dir(&root.join("logs"), 0o700)?;
            rotate_log(&spec.log_file)?;
            runtime.start(&spec)
        })
        .await?;
        self.containers.update_slot(agent, |s| {
            s.running = Some((deploy.clone(), image.path.clone()));
            s.exited = None;
        });
        Ok(pid)
    }

    /// Stops `agent`'s container if it runs (no transient state: the caller holds one).
    async fn stop_container(&self, agent: &AgentName) -> Result<()> {
        let Some(runtime) = self.containers.runtime.clone() else {
            return Ok(());
        };
        let (name, timeout) = (agent.clone(), self.containers.stop_timeout);
        off_runtime(move || runtime.stop(&name, timeout)).await?;
        self.containers.update_slot(agent, |s| s.running = None);
        self.egress.set(agent, &[]);
        Ok(())
    }

    fn refuse_faulted(&self, agent: &AgentName) -> Result<()> {
        match self
            .faults()
            .into_iter()
            .find(|f| f.agent == agent.as_str())
        {
            Some(f) => Err(Error::Conflict(format!(
                "agent '{agent}' is kept stopped: {} (fix it and restart the hive)",
                f.reason
            ))),
            None => Ok(()),
        }
    }

    /// Starts `agent` on its last good image (building it again if its gcroot is gone, or
    /// building the applied commit if nothing was deployed yet). Waits for its harness to
    /// connect (up to [`UP_WAIT`]).
    pub async fn start_agent(self: &Arc<Self>, actor: Actor, agent: &AgentName) -> Result<Outcome> {
        self.registry.require(agent)?;
        self.refuse_faulted(agent)?;
        self.containers.runtime()?;
        if actor != Actor::System {
            self.watcher.started_by_hand(agent);
        }
        if self.containers.run_of(agent).pid.is_some() {
            return Ok(self.outcome("already running", agent, None));
        }
        let key = agent.to_string();
        let last = self
            .store
            .read(move |c| latest_deploy(c, &key, &[DeployStatus::Deployed]))
            .await?;
        let image = match &last {
            Some(d) => {
                let builder = self.containers.builder()?;
                let (name, id) = (agent.clone(), d.id);
                off_runtime(move || Ok(builder.image(&name, id))).await?
            }
            None => None,
        };
        let (Some(deploy), Some(image)) = (last, image) else {
            // Nothing built to start from: build the applied HEAD.
            let deploy = self.new_update_deploy(actor, agent).await?;
            let done = self.run_deploy(agent, deploy.id).await?;
            let result = if done.status == DeployStatus::Deployed {
                "built and started"
            } else {
                "the build failed; see the deploy's message"
            };
            return Ok(self.outcome(result, agent, Some(done)));
        };
        {
            let _busy = self.containers.begin(agent, Transient::Starting)?;
            self.start_container(agent, &deploy, &image).await?;
        }
        // Started on an earlier image (after a daemon start, a crash, a stop): the watcher looks
        // at once whether it is up to date; a deploy tells it through the bus instead.
        self.watcher.container_started(agent);
        self.audit_action(actor, "start", agent, json!({"deploy": deploy.id}))
            .await?;
        let up = self.containers.wait_up(agent, UP_WAIT).await;
        Ok(self.outcome(
            if up {
                "started"
            } else {
                "started; its harness has not connected yet"
            },
            agent,
            None,
        ))
    }

    /// Stops `agent`'s container (SIGTERM, then its cgroup killed after the stop timeout).
    pub async fn stop_agent(self: &Arc<Self>, actor: Actor, agent: &AgentName) -> Result<Outcome> {
        self.registry.require(agent)?;
        self.containers.runtime()?;
        if self.containers.run_of(agent).pid.is_none() {
            return Ok(self.outcome("not running", agent, None));
        }
        {
            let _busy = self.containers.begin(agent, Transient::Stopping)?;
            self.stop_container(agent).await?;
        }
        self.audit_action(actor, "stop", agent, json!({})).await?;
        Ok(self.outcome("stopped", agent, None))
    }

    /// Stops and starts `agent` on the same image.
    pub async fn restart_agent(
        self: &Arc<Self>,
        actor: Actor,
        agent: &AgentName,
    ) -> Result<Outcome> {
        self.stop_agent(actor, agent).await?;
        let mut out = self.start_agent(actor, agent).await?;
        out.result = format!("restarted ({})", out.result);
        Ok(out)
    }

    /// Rebuilds and restarts `agent` when its applied HEAD is not what runs or what runs was
    /// built with another builder than today's; "already up to date" (building nothing)
    /// otherwise.
    pub async fn update_agent(
        self: &Arc<Self>,
        actor: Actor,
        agent: &AgentName,
    ) -> Result<Outcome> {
        self.registry.require(agent)?;
        self.refuse_faulted(agent)?;
        self.containers.runtime()?;
        let name = agent.clone();
        let head = self.git(move |repos| repos.applied_head(&name)).await?;
        let run = self.containers.run_of(agent);
        if run.pid.is_some()
            && run.commit.is_some()
            && run.commit == head
            && self
                .watcher
                .built_with_another_builder(&run)
                .await?
                .is_none()
        {
            return Ok(self.outcome("already up to date", agent, None));
        }
        let deploy = self.new_update_deploy(actor, agent).await?;
        let done = self.run_deploy(agent, deploy.id).await?;
        let result = if done.status == DeployStatus::Deployed {
            "updated"
        } else {
            "the build failed; what ran before still runs"
        };
        Ok(self.outcome(result, agent, Some(done)))
    }

    /// A new `update` deploy of the applied HEAD, audited.
    async fn new_update_deploy(&self, actor: Actor, agent: &AgentName) -> Result<Deploy> {
        let name = agent.clone();
        let head = self
            .git(move |repos| repos.applied_head(&name))
            .await?
            .ok_or_else(|| {
                Error::Conflict(format!(
                    "agent '{agent}' has no applied config yet; nothing to build"
                ))
            })?;
        let key = agent.to_string();
        let deploy = self
            .store
            .write(move |c| {
                let d = insert_deploy(c, &key, &head, None, "update")?;
                audit::append(
                    c,
                    actor.as_str(),
                    "update",
                    Some(&key),
                    json!({"deploy": d.id, "commit": head}),
                )?;
                Ok(d)
            })
            .await?;
        self.bus.publish(Event::Deploy {
            deploy: deploy.clone(),
        });
        Ok(deploy)
    }

    /// Pauses `agent`: no new turn starts (a running one ends as it would); its mail queues.
    pub async fn pause_agent(&self, actor: Actor, agent: &AgentName) -> Result<Outcome> {
        let record = self.registry.require(agent)?;
        let changed = self
            .pauses
            .set(agent.as_str(), record.incarnation, true, actor.as_str())
            .await?;
        if !changed {
            return Ok(self.outcome("already paused", agent, None));
        }
        // Shown at once while a harness is connected (it reports nothing while it waits).
        if self.containers.run_of(agent).turn_state.is_some() {
            self.containers
                .set_turn_state(agent, proto::tools::TurnState::Paused);
        }
        self.bus.publish(crate::bus::Event::TurnState {
            agent: agent.to_string(),
            state: proto::tools::TurnState::Paused,
        });
        Ok(self.outcome("paused", agent, None))
    }

    /// Resumes a paused `agent`: its queued mail starts turns again. What the operator paused
    /// only the operator resumes.
    pub async fn resume_agent(&self, actor: Actor, agent: &AgentName) -> Result<Outcome> {
        let record = self.registry.require(agent)?;
        if actor == Actor::Manager {
            let incarnation = record.incarnation;
            let by = self
                .store
                .read(move |c| crate::pause::paused_by(c, incarnation))
                .await?;
            if by.as_deref() == Some(Actor::Operator.as_str()) {
                return Err(Error::Conflict(format!(
                    "the operator paused '{agent}'; only the operator resumes it (`hive resume {agent}`)"
                )));
            }
        }
        let changed = self
            .pauses
            .set(agent.as_str(), record.incarnation, false, actor.as_str())
            .await?;
        if !changed {
            return Ok(self.outcome("not paused", agent, None));
        }
        if self.containers.run_of(agent).turn_state == Some(proto::tools::TurnState::Paused) {
            self.containers
                .set_turn_state(agent, proto::tools::TurnState::Idle);
            self.bus.publish(crate::bus::Event::TurnState {
                agent: agent.to_string(),
                state: proto::tools::TurnState::Idle,
            });
        }
        Ok(self.outcome("resumed", agent, None))
    }

    /// Whether `agent` is paused.
    pub fn is_paused(&self, agent: &AgentName) -> bool {
        self.registry
            .get(agent)
            .is_some_and(|r| self.pauses.is_paused(r.incarnation))
    }

    async fn audit_action(
        &self,
        actor: Actor,
        action: &'static str,
        agent: &AgentName,
        detail: serde_json::Value,
    ) -> Result<()> {
        let key = agent.to_string();
        self.store
            .write(move |c| audit::append(c, actor.as_str(), action, Some(&key), detail))
            .await
            .map(drop)
    }

    pub(crate) fn outcome(
        &self,
        result: &str,
        agent: &AgentName,
        deploy: Option<Deploy>,
    ) -> Outcome {
        Outcome {
            result: result.to_owned(),
            run: self.run_of(agent),
            deploy,
        }
    }

    /// The last `lines` lines of `agent`'s container log (capped at [`MAX_LOG_LINES`]).
    pub async fn agent_logs(&self, agent: &AgentName, lines: usize) -> Result<String> {
        self.registry.require(agent)?;
        let lines = lines.min(MAX_LOG_LINES);
        let path = paths::checked_within(self.paths.root(), &self.paths.agent_log(agent))?;
        off_runtime(move || tail_lines(&path, lines).map(|(text, _)| text)).await
    }

    /// Follows `agent`'s container log: the last `lines` lines, then every line appended, as
    /// they come (inotify, no polling). A rotation (copy-truncate) is followed to the new start.
    /// The stream ends when the receiver is dropped or `stop` is cancelled.
    pub async fn follow_log(
        &self,
        agent: &AgentName,
        lines: usize,
        stop: tokio_util::sync::CancellationToken,
    ) -> Result<tokio::sync::mpsc::Receiver<String>> {
        self.registry.require(agent)?;
        let logs = paths::checked_within(self.paths.root(), &self.paths.logs_dir())?;
        let path = paths::checked_within(self.paths.root(), &self.paths.agent_log(agent))?;
        let tail = path.clone();
        let lines = lines.min(MAX_LOG_LINES);
        // The last lines and the offset they end at, from one read: nothing is lost or repeated.
        let (first, mut at) = off_runtime(move || tail_lines(&tail, lines)).await?;
        let dir = logs.clone();
        off_runtime(move || paths::make_dir(&dir, 0o700)).await?;
        let (tx, rx) = tokio::sync::mpsc::channel::<String>(64);
        let (wake_tx, mut wake) = tokio::sync::mpsc::channel::<()>(1);
        let mut watcher = notify::recommended_watcher(move |_event| {
            let _ = wake_tx.try_send(());
        })
        .map_err(|e| Error::Internal(format!("cannot watch the logs: {e}")))?;
        notify::Watcher::watch(&mut watcher, &logs, notify::RecursiveMode::NonRecursive)
            .map_err(|e| Error::Internal(format!("cannot watch {}: {e}", logs.display())))?;
        tokio::spawn(async move {
            let _watching = watcher;
            if !first.is_empty() && tx.send(first).await.is_err() {
                return;
            }
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tx.closed() => return,
                    woke = wake.recv() => if woke.is_none() { return },
                }
                let (from, path2) = (at, path.clone());
                let read = off_runtime(move || read_from(&path2, from)).await;
                match read {
                    Ok((text, next)) => {
                        at = next;
                        if !text.is_empty() && tx.send(text).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "cannot read a followed log"),
                }
            }
        });
        Ok(rx)
    }

    /// Removes the images of old deploys: per agent, the running deploy and the one deployed
    /// before it are kept.
    pub async fn gc(&self, actor: Actor) -> Result<GcReport> {
        let builder = self.containers.builder()?;
        let mut report = GcReport::default();
        for agent in self.registry.names() {
            let key = agent.to_string();
            let mut keep: Vec<i64> = self
                .store
                .read(move |c| {
                    Ok(c.prepare_cached(
                        "SELECT id FROM deploys WHERE status = 'deployed'
                         AND incarnation = (SELECT incarnation FROM agents WHERE name = ?1)
                         ORDER BY id DESC LIMIT 2",
                    )?
                    .query_map([key], |r| r.get(0))?
                    .collect::<Result<_, _>>()?)
                })
                .await?;
            if let Some(running) = self.containers.run_of(&agent).deploy
                && !keep.contains(&running)
            {
                keep.push(running);
            }
            let (b, name, kept) = (builder.clone(), agent.clone(), keep.clone());
            report.removed += off_runtime(move || b.collect(&name, &kept)).await?;
            report.kept.push((agent.to_string(), keep));
        }
        let removed = report.removed;
        self.store
            .write(move |c| {
                audit::append(c, actor.as_str(), "gc", None, json!({"removed": removed}))
            })
            .await?;
        Ok(report)
    }

    /// The containers component: reaps what a killed daemon left, then brings every agent to
    /// its last good image (finishing deploys a stop interrupted); on stop, stops them all.
    pub fn run_containers(self: &Arc<Self>, scope: &Scope) -> Result<()> {
        let Some(runtime) = self.containers.runtime.clone() else {
            return Ok(());
        };
        self.containers
            .serving
            .store(true, std::sync::atomic::Ordering::Release);
        let known = self.registry.names();
        let hive = self.clone();
        let stop = scope.stopping().clone();
        let mut exits = runtime.exits();
        scope.spawn(async move {
            let names = known.clone();
            match off_runtime(move || runtime.adopt(&names)).await {
                Ok(found) => {
                    for (agent, what) in found {
                        tracing::warn!(%agent, ?what, "found a container a previous daemon left");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot look for containers a previous daemon left")
                }
            }
            for agent in known {
                // A crash loop keeps an agent stopped until it is started by hand.
                if hive.is_faulted(&agent) || hive.watcher.holds_stopped(&agent) {
                    continue;
                }
                if let Err(e) = hive.boot_agent(&agent).await {
                    tracing::warn!(%agent, error = %e, "cannot start the agent");
                }
            }
            give_memory_back().await;
            // Logs are rotated at each start and, while containers run, checked once a minute.
            let mut rotate = tokio::time::interval(LOG_CHECK_EVERY);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = rotate.tick() => hive.rotate_logs().await,
                    exit = exits.recv() => match exit {
                        Ok(exit) => {
                            let how = match (exit.code, exit.signal) {
                                (_, Some(sig)) => format!("killed by signal {sig}"),
                                (Some(code), None) => format!("exited with code {code}"),
                                (None, None) => "ended".to_owned(),
                            };
                            tracing::warn!(agent = %exit.agent, %how, "container ended");
                            let ran = hive.containers.update_slot(&exit.agent, |s| {
                                s.exited = Some(how);
                                s.running.take()
                            });
                            // The watcher tells the manager and restarts it by its policy.
                            hive.watcher.container_exited(exit, ran.map(|(_, image)| image));
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            stop.cancelled().await;
                            break;
                        }
                    },
                }
            }
            hive.containers
                .serving
                .store(false, std::sync::atomic::Ordering::Release);
            // Deploys still building are not waited for (a build may take minutes): one that
            // finishes now sees the hive stopping and starts nothing; the next start rebuilds it.
            hive.stop_all_containers().await;
        });
        Ok(())
    }

    /// At start: the agent's last deploy decides — an unfinished one is built now, a deployed
    /// one is started from its image.
    async fn boot_agent(self: &Arc<Self>, agent: &AgentName) -> Result<()> {
        let key = agent.to_string();
        let last = self
            .store
            .read(move |c| {
                latest_deploy(
                    c,
                    &key,
                    &[
                        DeployStatus::Applied,
                        DeployStatus::Building,
                        DeployStatus::Deployed,
                    ],
                )
            })
            .await?;
        match last {
            None => Ok(()),
            Some(d) if d.status == DeployStatus::Applied => {
                self.run_deploy(agent, d.id).await.map(|_| ())
            }
            Some(d) if d.status == DeployStatus::Building => {
                // The daemon stopped during this build: it failed; build the applied HEAD anew.
                self.finish_deploy(
                    &d,
                    Err(Error::Internal(
                        "the hive stopped during the build; it was started again".into(),
                    )),
                    None,
                )
                .await?;
                let again = self.new_update_deploy(Actor::System, agent).await?;
                self.run_deploy(agent, again.id).await.map(|_| ())
            }
            Some(_) => self.start_agent(Actor::System, agent).await.map(|_| ()),
        }
    }

    async fn rotate_logs(&self) {
        let logs: Vec<PathBuf> = self
            .registry
            .names()
            .iter()
            .map(|a| self.paths.agent_log(a))
            .collect();
        let rotated = off_runtime(move || {
            for log in logs {
                rotate_log(&log)?;
            }
            Ok(())
        })
        .await;
        if let Err(e) = rotated {
            tracing::warn!(error = %e, "cannot rotate the agents' logs");
        }
    }

    async fn stop_all_containers(&self) {
        let Some(runtime) = self.containers.runtime.clone() else {
            return;
        };
        let timeout = self.containers.stop_timeout;
        let mut stops = tokio::task::JoinSet::new();
        for agent in self.registry.names() {
            if !matches!(runtime.status(&agent), ContainerState::Running { .. }) {
                continue;
            }
            let runtime = runtime.clone();
            stops.spawn_blocking(move || (runtime.stop(&agent, timeout), agent));
        }
        while let Some(done) = stops.join_next().await {
            if let Ok((Err(e), agent)) = done {
                tracing::warn!(%agent, error = %e, "cannot stop the container");
            }
        }
    }

    /// Stops a container before its agent is removed; the returned guard keeps the agent in
    /// `stopping` (no start) until the removal is done.
    pub(crate) async fn stop_for_removal(&self, agent: &AgentName) -> Result<Option<Busy>> {
        if self.containers.runtime.is_none() {
            return Ok(None);
        }
        let busy = self.containers.begin(agent, Transient::Stopping)?;
        self.stop_container(agent).await?;
        Ok(Some(busy))
    }
}

/// Builds read nix's output on blocking threads, each of which may leave freed memory in its own
/// malloc arena: after deploys the heap is trimmed (rare, a few ms).
async fn give_memory_back() {
    let _ = off_runtime(|| {
        crate::store::heap::trim();
        Ok(())
    })
    .await;
}

/// Rotates `log` to `log.1` when it is over [`LOG_ROTATE_BYTES`], by copy and truncate: the
/// running container keeps its `O_APPEND` descriptor and writes on at the new end.
pub(crate) fn rotate_log(log: &std::path::Path) -> Result<()> {
    let io = |what: &str, e| Error::io(format!("cannot {what} {}", log.display()), e);
    let size = match std::fs::symlink_metadata(log) {
        Ok(m) if m.file_type().is_file() => m.len(),
        Ok(_) => {
            return Err(Error::UnsafePath(format!(
                "{}: not a plain file",
                log.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("inspect", e)),
    };
    if size <= LOG_ROTATE_BYTES {
        return Ok(());
    }
    let mut old = log.as_os_str().to_owned();
    old.push(".1");
    std::fs::copy(log, &old).map_err(|e| io("rotate", e))?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(log)
        .and_then(|f| f.set_len(0))
        .map_err(|e| io("truncate", e))
}

/// Up to [`MAX_LOG_READ`] bytes of the file at `path` from the offset `start` picks for its
/// length, cut after the last newline (a line being written is read by the next call), with the
/// offset they start at; nothing when there is no file yet.
fn read_whole_lines(
    path: &std::path::Path,
    start: impl FnOnce(u64) -> u64,
) -> Result<(Vec<u8>, u64)> {
    let io = |e| Error::io(format!("cannot read {}", path.display()), e);
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(io(e)),
    };
    let from = start(file.metadata().map_err(io)?.len());
    file.seek(SeekFrom::Start(from)).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(MAX_LOG_READ)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    bytes.truncate(whole);
    Ok((bytes, from))
}

/// What was appended to `path` since byte `from` (whole lines only), and where to read next; a
/// file shorter than `from` was rotated and is read from its start.
fn read_from(path: &std::path::Path, from: u64) -> Result<(String, u64)> {
    let (bytes, from) = read_whole_lines(path, |len| if len < from { 0 } else { from })?;
    let next = from + bytes.len() as u64;
    Ok((String::from_utf8_lossy(&bytes).into_owned(), next))
}

/// The last `n` lines of the file at `path` (read from its last [`MAX_LOG_READ`] bytes) and
/// the offset they end at; empty when there is no log yet.
pub(crate) fn tail_lines(path: &std::path::Path, n: usize) -> Result<(String, u64)> {
    let (bytes, from) = read_whole_lines(path, |len| len.saturating_sub(MAX_LOG_READ))?;
    let end = from + bytes.len() as u64;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.lines().collect();
    if from > 0 && !lines.is_empty() {
        lines.remove(0); // cut mid-line
    }
    let start = lines.len().saturating_sub(n);
    let mut out = lines[start..].join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    Ok((out, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_takes_the_last_lines_and_rotation_keeps_one() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        assert_eq!(tail_lines(&log, 5).unwrap(), (String::new(), 0));
        std::fs::write(&log, "1\n2\n3\npart").unwrap();
        assert_eq!(tail_lines(&log, 2).unwrap(), ("2\n3\n".to_owned(), 6));
        assert_eq!(tail_lines(&log, 0).unwrap().0, "");
        // What follows an offset, whole lines only; a shorter file was rotated.
        std::fs::write(&log, "1\n2\n3\npart of 4\n5").unwrap();
        assert_eq!(read_from(&log, 6).unwrap(), ("part of 4\n".to_owned(), 16));
        std::fs::write(&log, "new\n").unwrap();
        assert_eq!(read_from(&log, 16).unwrap(), ("new\n".to_owned(), 4));
        rotate_log(&log).unwrap();
        assert!(!dir.path().join("a.log.1").exists(), "small logs stay");
        let big = vec![b'x'; LOG_ROTATE_BYTES as usize + 1];
        std::fs::write(&log, &big).unwrap();
        rotate_log(&log).unwrap();
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
        assert_eq!(
            std::fs::metadata(dir.path().join("a.log.1")).unwrap().len(),
            big.len() as u64
        );
    }

    #[test]
    fn a_busy_guard_clears_its_state_on_every_path() {
        let c = Containers {
            runtime: None,
            builder: Err("none".into()),
            slots: Arc::default(),
            changed: watch::channel(0).0,
            deploy_locks: Mutex::default(),
            deploys: TaskTracker::new(),
            serving: Default::default(),
            stop_timeout: Duration::from_secs(1),
        };
        let a = AgentName::parse("alice").unwrap();
        {
            let busy = c.begin(&a, Transient::Building).unwrap();
            assert_eq!(c.run_of(&a).state, "building");
            let again = c.begin(&a, Transient::Starting).err().expect("refused");
            assert_eq!(again.code(), "conflict");
            assert!(again.to_string().contains("building"), "{again}");
            busy.set(Transient::Starting);
            assert_eq!(c.run_of(&a).state, "starting");
            let fails = || -> Result<()> {
                let _held = busy;
                Err(Error::Internal("a build error".into()))
            };
            assert!(fails().is_err());
        }
        assert_eq!(c.run_of(&a).state, "stopped");
        assert!(c.begin(&a, Transient::Stopping).is_ok());
    }
}
