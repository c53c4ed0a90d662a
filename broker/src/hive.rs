//! `Hive`: the service object that owns the store, the registry, the mailbox and the bus. The admin
//! API, the MCP surfaces and the CLI call this and nothing beneath it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::bus::Bus;
use crate::components::{Components, Scope};
use crate::config::Config;
use crate::config_repo::ConfigRepos;
use crate::due::DueJobs;
use crate::error::{Error, Result};
use crate::mailbox::{Mailbox, MessageCounts};
use crate::mcp::McpSockets;
use crate::names::AgentName;
use crate::paths::StateDir;
use crate::registry::Registry;
use crate::store::Store;

/// How often delivered messages past their retention are deleted.
const VACUUM_EVERY: Duration = Duration::from_secs(24 * 60 * 60);

pub struct Hive {
    pub paths: StateDir,
    pub config: Config,
    pub store: Store,
    pub registry: Arc<Registry>,
    pub mailbox: Mailbox,
    pub bus: Bus,
    pub due: DueJobs,
    pub mcp: McpSockets,
    pub repos: ConfigRepos,
    /// Serializes the operations that touch config repos, so git and the store move together.
    pub(crate) config_lock: tokio::sync::Mutex<()>,
    /// Agents found inconsistent at start (their repo could not be made to agree with the store):
    /// kept stopped, and reported, while the rest of the hive runs.
    faults: Mutex<BTreeMap<AgentName, String>>,
    started: Instant,
}

/// An agent kept stopped because the hive found it inconsistent.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    pub agent: String,
    pub reason: String,
}

/// What `hive status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub pid: u32,
    pub uptime_seconds: u64,
    pub state_dir: String,
    pub synchronous: String,
    pub agents: usize,
    pub messages: MessageCounts,
    /// Agents kept stopped, and why; empty when all is well.
    pub faulted: Vec<Fault>,
}

impl Hive {
    /// Opens the hive in `paths` (which must exist): runs migrations, loads the registry, makes sure
    /// the manager exists, and returns the leases of a previous run to their queues.
    pub async fn open(paths: StateDir, config: Config) -> Result<Arc<Self>> {
        let store = Store::open(&paths.db(), config.store.synchronous)?;
        let registry = Arc::new(Registry::load(store.clone()).await?);
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
        let hive = Arc::new(Self {
            paths: paths.clone(),
            config,
            store,
            registry,
            mailbox,
            bus,
            due: DueJobs::default(),
            mcp: McpSockets::default(),
            repos: ConfigRepos::new(paths.clone()),
            config_lock: tokio::sync::Mutex::new(()),
            faults: Mutex::default(),
            started: Instant::now(),
        });
        hive.finish_removals().await?;
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
            version: env!("CARGO_PKG_VERSION"),
            pid: std::process::id(),
            uptime_seconds: self.started.elapsed().as_secs(),
            state_dir: self.paths.root().display().to_string(),
            synchronous: self.config.store.synchronous.to_string(),
            agents: self.registry.len(),
            messages: self.mailbox.counts().await?,
            faulted: self.faults(),
        })
    }

    /// Starts the hive's own components in order — the due jobs, the upkeep, the MCP sockets —
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
        parts.start("mcp", |s| self.serve_mcp(s))?;
        Ok(parts)
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
