//! The watcher (DESIGN §9): per agent the axes **running**, **logged_in** and **up_to_date**, the
//! helper events their changes become (a message from `system` into the manager's inbox, JSON
//! with `event` and `agent`; the same on the bus; schemas in docs/events.md), and the restart
//! policy with its crash-loop stop.
//!
//! An agent is up to date when it runs its applied HEAD built with today's builder (the deploy's
//! recorded `Builder::fingerprint` equals today's: the Nix code, harness and busybox an image
//! carries). Fed by events: the runtime's exit notification (handed over by the containers
//! component once it recorded the exit), a start on an earlier deploy's image, an inotify watch
//! on each agent's credentials dirs, the bus (deploys, agents created and removed), and a
//! reconcile tick (`[watcher] reconcile_seconds`) as the safety net — never a poll as the main
//! path. What was last recorded per incarnation and axis
//! is in `events_sent`: a first look only seeds it (nothing is told about a state that already
//! held), a state equal to the stored one is never told again (across restarts too), and the
//! message and its row commit in one transaction.
//!
//! This module decides when to restart and what to tell; it never starts a container itself
//! (the containers' `start_agent` and `update_agent` do) and never follows a path an agent could
//! plant out of the state dir (credentials are looked at with `lstat`, never read).

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::helper::{self, HelperBody, HelperEvent};
use rusqlite::{OptionalExtension, params};
use tokio::sync::mpsc;

use crate::bus::{Bus, Event};
use crate::components::Scope;
use crate::config::Config;
use crate::config_repo::ConfigRepos;
use crate::containers::{Actor, Containers, MAX_LOG_LINES};
use crate::error::{Error, Result};
use crate::hive::Hive;
use crate::lifecycle::off_runtime;
use crate::liveness::LivenessJudge;
use crate::mailbox::{Mailbox, Message, insert_messages};
use crate::names::AgentName;
use crate::paths::StateDir;
use crate::registry::{AgentKind, Registry};
use crate::runtime::ContainerExit;
use crate::status::DeployStatus;
use crate::store::{Store, unix_millis};

/// More crashes than this within [`CRASH_WINDOW`] is a crash loop: no more restarts.
pub const MAX_CRASHES: usize = 5;
/// The window crashes are counted in.
pub const CRASH_WINDOW: Duration = Duration::from_secs(10 * 60);
/// The longest wait before a restart.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How many of the log's last lines a `container_crash` carries.
pub const CRASH_LOG_LINES: usize = 20;
/// The most bytes of one log line a `container_crash` carries.
const MAX_LOG_LINE_BYTES: usize = 512;

const _: () = assert!(CRASH_LOG_LINES <= MAX_LOG_LINES);

/// The axes `events_sent` keys states by.
const RUNNING: &str = "running";
const CRASH_LOOP: &str = "crash_loop";
const LOGGED_IN: &str = "logged_in";
const UP_TO_DATE: &str = "up_to_date";
const DEPLOY: &str = "deploy";
const EXISTS: &str = "exists";
/// The liveness axis: `ok` or `stuck` (told once per episode).
const LIVENESS: &str = "liveness";

/// The helper event told when an agent's login appears (the harness's `wait_login` waits for it).
pub(crate) const LOGGED_IN_EVENT: &str = "logged_in";

/// What the watcher is told by the rest of the hive.
enum Kick {
    /// A container ended on its own; `image` is what it ran (its agent.json has the policy).
    Exited {
        exit: ContainerExit,
        image: Option<PathBuf>,
    },
    /// Something changed under `secrets/<name>/`.
    Credentials(AgentName),
    /// An operator or the manager started the agent: its crash count starts again.
    StartedByHand(AgentName),
    /// A container started on an earlier deploy's image (no deploy event tells of it).
    Started(AgentName),
}

/// One agent's axes as `hive agents` shows them (`None`: not known yet).
pub use proto::agent::Axes;

/// A helper event to tell and (for `rebuilt`) a message to the agent itself.
struct Tell {
    event: HelperEvent,
    to_agent: Option<String>,
}

impl From<HelperEvent> for Tell {
    fn from(event: HelperEvent) -> Self {
        Self {
            event,
            to_agent: None,
        }
    }
}

/// When each agent's harness last reported anything (a state, turn events), from the bus: what
/// the liveness judge reads and the watcher feeds.
pub(crate) struct HarnessActivity {
    heard: Mutex<HashMap<String, Instant>>,
    /// `[watcher] stuck_after_seconds`.
    stuck_after: Duration,
    /// When this daemon started: the quiet time of an agent not heard from since.
    opened: Instant,
}

impl HarnessActivity {
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            heard: Mutex::default(),
            stuck_after: Duration::from_secs(config.watcher.stuck_after_seconds.max(1)),
            opened: Instant::now(),
        }
    }

    /// How long `agent`'s harness has said nothing (since this daemon started, at most).
    pub(crate) fn quiet_for(&self, agent: &AgentName) -> Option<Duration> {
        let heard = self.heard.lock().expect("activity");
        Some(
            heard
                .get(agent.as_str())
                .copied()
                .unwrap_or(self.opened)
                .elapsed(),
        )
    }

    pub(crate) fn stuck_after(&self) -> Duration {
        self.stuck_after
    }

    fn heard_from(&self, agent: &str) {
        self.heard
            .lock()
            .expect("activity")
            .insert(agent.to_owned(), Instant::now());
    }
}

/// The handles the watcher reads and tells through, given in `Hive::open`.
pub(crate) struct WatcherHandles {
    pub store: Store,
    pub mailbox: Mailbox,
    pub bus: Bus,
    pub registry: Arc<Registry>,
    /// Read only: what runs (`run_of`) and today's builder.
    pub containers: Arc<Containers>,
    /// Read only: the applied repos' HEADs (git runs on blocking threads).
    pub repos: ConfigRepos,
    pub liveness: Arc<LivenessJudge>,
    pub activity: Arc<HarnessActivity>,
}

/// The watcher's state and its checks, built in `Hive::open`; its task runs as the `watcher`
/// component (on `Hive`, which does the restarts and updates the checks ask for).
pub struct Watcher {
    store: Store,
    mailbox: Mailbox,
    bus: Bus,
    registry: Arc<Registry>,
    containers: Arc<Containers>,
    repos: ConfigRepos,
    liveness: Arc<LivenessJudge>,
    activity: Arc<HarnessActivity>,
    paths: StateDir,
    reconcile: Duration,
    auto_update: bool,
    /// `[model] api_key_file` is set: the gateway logs every agent in.
    hive_api_key: bool,
    kicks: mpsc::UnboundedSender<Kick>,
    kicked: Mutex<Option<mpsc::UnboundedReceiver<Kick>>>,
    /// Per agent, when it crashed within the window (restart-worthy exits only).
    crashes: Mutex<HashMap<AgentName, VecDeque<Instant>>>,
    /// Agents stopped by a crash loop (from `events_sent` at open, so a daemon restart does not
    /// start them either).
    looping: Mutex<HashSet<AgentName>>,
    /// The last state recorded per incarnation and axis: a repeat costs no store round trip.
    recorded: Mutex<HashMap<(i64, &'static str), String>>,
    /// `[watcher] auto_update` rebuilds one agent at a time.
    auto_updates: tokio::sync::Semaphore,
}

impl Watcher {
    pub(crate) async fn open(
        config: &Config,
        paths: &StateDir,
        handles: WatcherHandles,
    ) -> Result<Self> {
        let WatcherHandles {
            store,
            mailbox,
            bus,
            registry,
            containers,
            repos,
            liveness,
            activity,
        } = handles;
        let looping: HashSet<AgentName> = store
            .read(|c| {
                let mut stmt = c.prepare(
                    "SELECT a.name FROM events_sent e JOIN agents a ON a.incarnation = e.incarnation
                     WHERE e.axis = 'crash_loop' AND e.state = 'looping'",
                )?;
                let names = stmt
                    .query_map([], |r| r.get::<_, String>(0))?
                    .filter_map(|n| n.ok())
                    .filter_map(|n| AgentName::parse(&n).ok())
                    .collect();
                Ok(names)
            })
            .await?;
        let (kicks, kicked) = mpsc::unbounded_channel();
        Ok(Self {
            store,
            mailbox,
            bus,
            registry,
            containers,
            repos,
            liveness,
            activity,
            paths: paths.clone(),
            reconcile: Duration::from_secs(config.watcher.reconcile_seconds.max(1)),
            auto_update: config.watcher.auto_update,
            hive_api_key: config.model.api_key_file.is_some(),
            kicks,
            kicked: Mutex::new(Some(kicked)),
            crashes: Mutex::default(),
            looping: Mutex::new(looping),
            recorded: Mutex::default(),
            auto_updates: tokio::sync::Semaphore::new(1),
        })
    }

    /// The containers component recorded that `exit.agent`'s container ended on its own.
    pub(crate) fn container_exited(&self, exit: ContainerExit, image: Option<PathBuf>) {
        let _ = self.kicks.send(Kick::Exited { exit, image });
    }

    /// An operator or the manager started `agent`: a crash loop ends, the count starts again.
    pub(crate) fn started_by_hand(&self, agent: &AgentName) {
        self.crashes.lock().expect("crashes").remove(agent);
        if self.looping.lock().expect("looping").remove(agent) {
            let _ = self.kicks.send(Kick::StartedByHand(agent.clone()));
        }
    }

    /// `agent`'s container started on an earlier deploy's image: is it up to date?
    pub(crate) fn container_started(&self, agent: &AgentName) {
        let _ = self.kicks.send(Kick::Started(agent.clone()));
    }

    /// Whether `agent` is kept stopped by a crash loop (the daemon's start leaves it stopped).
    pub(crate) fn holds_stopped(&self, agent: &AgentName) -> bool {
        self.looping.lock().expect("looping").contains(agent)
    }

    /// Counts a crash of `agent` now: the crashes within the window, and whether that is a loop.
    fn count_crash(&self, agent: &AgentName) -> (usize, bool) {
        let now = Instant::now();
        let mut crashes = self.crashes.lock().expect("crashes");
        let times = crashes.entry(agent.clone()).or_default();
        times.push_back(now);
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) > CRASH_WINDOW)
        {
            times.pop_front();
        }
        let count = times.len();
        let looping = count > MAX_CRASHES;
        if looping {
            self.looping.lock().expect("looping").insert(agent.clone());
        }
        (count, looping)
    }

    fn cached(&self, incarnation: i64, axis: &'static str) -> Option<String> {
        self.recorded
            .lock()
            .expect("recorded")
            .get(&(incarnation, axis))
            .cloned()
    }

    /// Whether `agent` is logged in: a key for the whole hive, a key stored for it, or the
    /// claude CLI's credentials file — each a plain non-empty file reached through real dirs
    /// (`lstat` only: an agent's symlink in its home is not followed).
    fn logged_in(&self, agent: &AgentName) -> bool {
        if self.hive_api_key || plain_file(&self.paths.agent_api_key(agent)) {
            return true;
        }
        let home = self.paths.agent_home(agent);
        let claude = home.join(".claude");
        real_dir(&self.paths.secrets_dir(agent))
            && real_dir(&home)
            && real_dir(&claude)
            && plain_file(&claude.join(".credentials.json"))
    }

    /// Stores `state` for `agent`'s `axis` and, when it changed (or `always`), tells the manager
    /// `tell` in the same transaction. A first look (no row yet) only seeds the row unless
    /// `always`. Returns whether the state changed.
    async fn record(
        &self,
        agent: &str,
        incarnation: i64,
        axis: &'static str,
        state: String,
        tell: Option<Tell>,
        always: bool,
    ) -> Result<bool> {
        if !always && self.cached(incarnation, axis).as_deref() == Some(state.as_str()) {
            return Ok(false);
        }
        let (name, stored) = (agent.to_owned(), state.clone());
        let event = tell.as_ref().map(|t| t.event.name());
        let (body, to_agent) = match tell {
            Some(Tell { event, to_agent }) => {
                let body = HelperBody {
                    agent: agent.to_owned(),
                    event,
                };
                // Through a `Value`: its keys in sorted order, as helper bodies always were.
                let body = serde_json::to_value(&body)
                    .map_err(|e| Error::Internal(format!("cannot encode a helper event: {e}")))?;
                (Some(body), to_agent)
            }
            None => (None, None),
        };
        let text = body.as_ref().map(|b| b.to_string());
        let (changed, messages) = self
            .store
            .write(move |c| {
                let before: Option<String> = c
                    .prepare_cached(
                        "SELECT state FROM events_sent WHERE incarnation = ?1 AND axis = ?2",
                    )?
                    .query_row(params![incarnation, axis], |r| r.get(0))
                    .optional()?;
                if !always && before.as_deref() == Some(stored.as_str()) {
                    return Ok((false, Vec::new()));
                }
                let mut messages: Vec<Message> = Vec::new();
                let fire = text.is_some() && (always || before.is_some());
                if fire && let Some(text) = &text {
                    messages.extend(insert_messages(
                        c,
                        "system",
                        &[AgentName::manager().to_string()],
                        text,
                        None,
                    )?);
                    if let Some(own) = &to_agent {
                        messages.extend(insert_messages(
                            c,
                            "system",
                            std::slice::from_ref(&name),
                            own,
                            None,
                        )?);
                    }
                }
                c.prepare_cached(
                    "INSERT INTO events_sent (incarnation, agent, axis, state, event, message_id, at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (incarnation, axis) DO UPDATE SET state = excluded.state,
                        event = excluded.event, message_id = excluded.message_id, at = excluded.at",
                )?
                .execute(params![
                    incarnation,
                    name,
                    axis,
                    stored,
                    if fire { event } else { None },
                    messages.first().map(|m| m.id),
                    unix_millis()
                ])?;
                Ok((true, messages))
            })
            .await?;
        self.recorded
            .lock()
            .expect("recorded")
            .insert((incarnation, axis), state);
        if !messages.is_empty() {
            if let (Some(event), Some(body)) = (event, body) {
                tracing::info!(agent, event, "helper event");
                self.bus.publish(Event::Helper {
                    agent: agent.to_owned(),
                    name: event.to_owned(),
                    body: Arc::new(body),
                });
            }
            self.mailbox.announce(messages);
        }
        Ok(changed)
    }
}

fn plain_file(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file() && m.len() > 0)
}

fn real_dir(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_dir())
}

/// The wait before restart number `crashes` (1, 2, 4 … 60 s).
pub fn backoff(crashes: usize) -> Duration {
    let exp = crashes.saturating_sub(1).min(6) as u32;
    Duration::from_secs(1u64 << exp).min(MAX_BACKOFF)
}

/// The restart policy in an image's agent.json (the default when it cannot be read).
fn restart_policy(image: Option<&Path>) -> proto::agent_config::Restart {
    image
        .and_then(|i| std::fs::read(i.join("etc/hyperhive/agent.json")).ok())
        .and_then(|bytes| serde_json::from_slice::<proto::AgentConfig>(&bytes).ok())
        .map(|c| c.restart)
        .unwrap_or_default()
}

/// The inotify watches on the credentials dirs: `secrets/`, and per agent `secrets/<name>/`,
/// its `home/` and `home/.claude/`, each non-recursive (the CLI's transcripts deeper down wake
/// nothing) and each only while it is a real dir.
struct CredentialWatch {
    watcher: notify::RecommendedWatcher,
    watched: HashSet<PathBuf>,
    secrets: PathBuf,
}

impl CredentialWatch {
    fn new(paths: &StateDir, kicks: mpsc::UnboundedSender<Kick>) -> Result<Self> {
        let secrets = paths.root().join("secrets");
        // Made here when missing, so the first agent dir in it is seen at once.
        if !secrets.exists() {
            crate::paths::make_dir(&secrets, 0o700)?;
        }
        let under = secrets.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            let mut seen = HashSet::new();
            for path in event.paths {
                let agent = path
                    .strip_prefix(&under)
                    .ok()
                    .and_then(|rest| rest.components().next())
                    .and_then(|c| c.as_os_str().to_str())
                    .and_then(|n| AgentName::parse(n).ok());
                if let Some(agent) = agent
                    && seen.insert(agent.clone())
                {
                    let _ = kicks.send(Kick::Credentials(agent));
                }
            }
        })
        .map_err(|e| Error::Internal(format!("cannot watch the credentials dirs: {e}")))?;
        let mut watch = Self {
            watcher,
            watched: HashSet::new(),
            secrets,
        };
        let root = watch.secrets.clone();
        watch.ensure(&root);
        Ok(watch)
    }

    /// Watches `dir` when it is a real dir not watched yet; forgets it when it is gone.
    fn ensure(&mut self, dir: &Path) {
        use notify::Watcher as _;
        if !real_dir(dir) {
            if self.watched.remove(dir) {
                let _ = self.watcher.unwatch(dir);
            }
            return;
        }
        if self.watched.contains(dir) {
            return;
        }
        match self.watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
            Ok(()) => {
                self.watched.insert(dir.to_owned());
            }
            Err(e) => tracing::debug!(dir = %dir.display(), error = %e, "cannot watch"),
        }
    }

    fn ensure_agent(&mut self, paths: &StateDir, agent: &AgentName) {
        let root = self.secrets.clone();
        self.ensure(&root);
        let home = paths.agent_home(agent);
        for dir in [paths.secrets_dir(agent), home.clone(), home.join(".claude")] {
            self.ensure(&dir);
        }
    }
}

/// The checks and what they tell: each reads the registry, the containers, the store and the
/// applied repos through the watcher's own handles and asks `Hive` (by what it returns) for any
/// restart or rebuild.
impl Watcher {
    /// Tells the manager `event` about `agent` (a helper event, and on the bus), recorded under
    /// the agent's `axis` with `state`; each call tells (the caller decides when it is news).
    pub(crate) async fn tell_manager_of(
        &self,
        agent: &AgentName,
        axis: &'static str,
        state: String,
        event: HelperEvent,
    ) -> Result<()> {
        let Some(record) = self.registry.get(agent) else {
            return Ok(());
        };
        self.record(
            agent.as_str(),
            record.incarnation,
            axis,
            state,
            Some(event.into()),
            true,
        )
        .await
        .map(drop)
    }

    /// Each agent's axes as the watcher last saw them.
    pub(crate) fn axes(&self, agent: &AgentName) -> Axes {
        let run = self.containers.run_of(agent);
        let Some(record) = self.registry.get(agent) else {
            return Axes::default();
        };
        let cached = |axis| self.cached(record.incarnation, axis);
        Axes {
            running: run.up,
            logged_in: cached(LOGGED_IN).map(|s| s == "yes"),
            up_to_date: run
                .pid
                .and_then(|_| cached(UP_TO_DATE))
                .map(|s| s == "current"),
            crash_loop: self.holds_stopped(agent),
        }
    }

    /// Tells the manager `stuck` when `agent` became stuck (once per episode: the axis goes back
    /// to `ok` when it moves again).
    async fn check_liveness(&self, agent: &AgentName) -> Result<()> {
        let Some(record) = self.registry.get(agent) else {
            return Ok(());
        };
        let liveness = self.liveness.of(agent).await?;
        let stuck = liveness == crate::liveness::Liveness::Stuck;
        let tell = stuck.then(|| {
            let run = self.containers.run_of(agent);
            HelperEvent::Stuck(helper::Stuck {
                turn_state: run.turn_state,
                quiet_seconds: self.activity.quiet_for(agent).map(|q| q.as_secs()),
                how: format!("`restart` {agent}: its harness is stopped before a new one starts"),
            })
            .into()
        });
        let state = if stuck { "stuck" } else { "ok" };
        self.record(
            agent.as_str(),
            record.incarnation,
            LIVENESS,
            state.into(),
            tell,
            false,
        )
        .await
        .map(drop)
    }

    async fn check_login(&self, agent: &AgentName) -> Result<()> {
        let Some(record) = self.registry.get(agent) else {
            return Ok(());
        };
        let yes = self.logged_in(agent);
        let event = if yes {
            HelperEvent::LoggedIn(helper::LoggedIn {})
        } else {
            HelperEvent::NeedsLogin(helper::NeedsLogin {
                how: format!("the operator runs `hive login {agent}`"),
            })
        };
        let state = if yes { "yes" } else { "no" };
        self.record(
            agent.as_str(),
            record.incarnation,
            LOGGED_IN,
            state.into(),
            Some(event.into()),
            false,
        )
        .await
        .map(drop)
    }

    /// `current` when what runs is the applied HEAD built with today's builder (its Nix code,
    /// harness and busybox: `Builder::fingerprint`); when not and no deploy is under way,
    /// `stale:<head>` (the commit differs) or `stale:<head>:builder:<today's fingerprint>` (only
    /// the builder does: a newer builder is a new staleness); nothing while the agent does not run
    /// or is between states. With `[watcher] auto_update`, a new staleness is not told but
    /// returned: the caller rebuilds the agent.
    async fn check_up_to_date(&self, agent: &AgentName) -> Result<Option<helper::NeedsUpdate>> {
        let Some(record) = self.registry.get(agent) else {
            return Ok(None);
        };
        // A container runs (also while a failed deploy's guard is still held); the deploys
        // table says whether a build is under way.
        let run = self.containers.run_of(agent);
        let Some(running) = run.commit.clone() else {
            return Ok(None);
        };
        let (repos, name) = (self.repos.clone(), agent.clone());
        let Some(head) = off_runtime(move || repos.applied_head(&name)).await? else {
            return Ok(None);
        };
        let builder_changed = self.built_with_another_builder(&run).await?;
        if head == running && builder_changed.is_none() {
            self.record(
                agent.as_str(),
                record.incarnation,
                UP_TO_DATE,
                "current".into(),
                None,
                false,
            )
            .await?;
            return Ok(None);
        }
        let incarnation = record.incarnation;
        let pending: bool = self
            .store
            .read(move |c| {
                Ok(c.prepare_cached(
                    "SELECT 1 FROM deploys WHERE incarnation = ?1 AND status IN ('applied', 'building')",
                )?
                .exists([incarnation])?)
            })
            .await?;
        if pending {
            return Ok(None);
        }
        let state = match &builder_changed {
            Some(today) if head == running => format!("stale:{head}:builder:{today}"),
            _ => format!("stale:{head}"),
        };
        let details = helper::NeedsUpdate {
            running_commit: running,
            applied_commit: head,
            builder_changed: builder_changed.is_some(),
        };
        if self.auto_update {
            let changed = self
                .record(agent.as_str(), incarnation, UP_TO_DATE, state, None, false)
                .await?;
            return Ok(changed.then_some(details));
        }
        self.record(
            agent.as_str(),
            incarnation,
            UP_TO_DATE,
            state,
            Some(HelperEvent::NeedsUpdate(details).into()),
            false,
        )
        .await
        .map(|_| None)
    }

    /// Today's builder fingerprint ([`crate::build::Builder::fingerprint`]) when the image `run`
    /// runs was built with another builder, Nix code, harness or busybox (a deploy from before
    /// fingerprints were recorded counts as another). `None` when it was not, when nothing runs,
    /// or when today's cannot be known (no builder, the harness binary unreadable): then there is
    /// nothing to rebuild with either.
    pub(crate) async fn built_with_another_builder(
        &self,
        run: &crate::containers::AgentRun,
    ) -> Result<Option<String>> {
        let (Some(deploy), Ok(builder)) = (run.deploy, self.containers.builder()) else {
            return Ok(None);
        };
        let today = match off_runtime(move || builder.fingerprint()).await {
            Ok(today) => today,
            Err(e) => {
                tracing::debug!(error = %e, "no builder fingerprint to compare with");
                return Ok(None);
            }
        };
        let recorded: Option<String> = self
            .store
            .read(move |c| {
                Ok(
                    c.prepare_cached("SELECT builder FROM deploys WHERE id = ?1")?
                        .query_row([deploy], |r| r.get(0))
                        .optional()?
                        .flatten(),
                )
            })
            .await?;
        Ok((recorded.as_deref() != Some(today.as_str())).then_some(today))
    }

    /// An automatic rebuild of `agent` did not deploy: tells `needs_update` after all.
    async fn tell_update_failed(&self, agent: &AgentName, details: helper::NeedsUpdate) {
        let Some(record) = self.registry.get(agent) else {
            return;
        };
        let state = self
            .cached(record.incarnation, UP_TO_DATE)
            .unwrap_or_default();
        let told = self
            .record(
                agent.as_str(),
                record.incarnation,
                UP_TO_DATE,
                state,
                Some(HelperEvent::NeedsUpdate(details).into()),
                true,
            )
            .await;
        if let Err(e) = told {
            tracing::warn!(%agent, error = %e, "cannot tell needs_update");
        }
    }

    /// An operator or the manager started `agent`: its crash loop is over.
    async fn clear_crash_loop(&self, agent: &AgentName) {
        if let Some(record) = self.registry.get(agent) {
            let cleared = self
                .record(
                    agent.as_str(),
                    record.incarnation,
                    CRASH_LOOP,
                    "clear".into(),
                    None,
                    false,
                )
                .await;
            if let Err(e) = cleared {
                tracing::warn!(%agent, error = %e, "cannot record the end of a crash loop");
            }
        }
    }

    /// A container ended on its own: tells `container_crash` (status, log tail, what happens
    /// next) and, past [`MAX_CRASHES`] in the window, `crash_loop` once. Returns the wait before
    /// the restart the caller does (`None`: no restart).
    async fn crashed(
        &self,
        exit: ContainerExit,
        image: Option<PathBuf>,
    ) -> Result<Option<Duration>> {
        let agent = exit.agent.clone();
        let Some(record) = self.registry.get(&agent) else {
            return Ok(None);
        };
        let log = self.paths.agent_log(&agent);
        let root = self.paths.root().to_owned();
        let (policy, tail) = off_runtime(move || {
            let policy = restart_policy(image.as_deref());
            let log = crate::paths::checked_within(&root, &log)?;
            let (tail, _) = crate::containers::tail_lines(&log, CRASH_LOG_LINES)?;
            Ok((policy, tail))
        })
        .await?;
        use proto::agent_config::Restart;
        let failed = !(exit.code == Some(0) && exit.signal.is_none());
        let wanted = match policy {
            Restart::Never => false,
            Restart::OnFailure => failed,
            Restart::Always => true,
        };
        let (crashes, looping) = if wanted {
            self.count_crash(&agent)
        } else {
            (0, false)
        };
        let wait = (wanted && !looping).then(|| backoff(crashes));
        let lines: Vec<String> = tail
            .lines()
            .map(|l| {
                let mut cut = l.len().min(MAX_LOG_LINE_BYTES);
                while !l.is_char_boundary(cut) {
                    cut -= 1;
                }
                l[..cut].to_owned()
            })
            .collect();
        let crash = HelperEvent::ContainerCrash(helper::ContainerCrash {
            code: exit.code,
            signal: exit.signal,
            how: match (exit.code, exit.signal) {
                (_, Some(sig)) => format!("killed by signal {sig}"),
                (Some(code), None) => format!("exited with code {code}"),
                (None, None) => "ended".to_owned(),
            },
            log_tail: lines,
            restart: policy,
            restart_in_seconds: wait.map(|w| w.as_secs()),
            crashes_in_window: crashes as u64,
        });
        self.record(
            agent.as_str(),
            record.incarnation,
            RUNNING,
            format!("crashed at {}", unix_millis()),
            Some(crash.into()),
            true,
        )
        .await?;
        if looping {
            let tell = HelperEvent::CrashLoop(helper::CrashLoop {
                crashes: crashes as u64,
                window_seconds: CRASH_WINDOW.as_secs(),
                how_to_resume: format!("`hive start {agent}` or the manager's start"),
            });
            self.record(
                agent.as_str(),
                record.incarnation,
                CRASH_LOOP,
                "looping".into(),
                Some(tell.into()),
                true,
            )
            .await?;
            return Ok(None);
        }
        Ok(wait)
    }

    /// Agent `agent` (incarnation `incarnation`) was destroyed: its crash count goes, and the
    /// manager is told `destroyed`.
    async fn destroyed(&self, agent: &str, incarnation: i64) -> Result<()> {
        if let Ok(name) = AgentName::parse(agent) {
            self.crashes.lock().expect("crashes").remove(&name);
            self.looping.lock().expect("looping").remove(&name);
        }
        let tell = HelperEvent::Destroyed(helper::Destroyed { incarnation });
        self.record(
            agent,
            incarnation,
            EXISTS,
            "destroyed".into(),
            Some(tell.into()),
            true,
        )
        .await
        .map(drop)
    }

    /// Tells `spawned` for `agent`, whose axes were just seeded: with whether it is logged in.
    async fn spawned(&self, agent: &AgentName, incarnation: i64) -> Result<()> {
        let tell = HelperEvent::Spawned(helper::Spawned {
            incarnation,
            logged_in: self.logged_in(agent),
        });
        self.record(
            agent.as_str(),
            incarnation,
            EXISTS,
            "live".into(),
            Some(tell.into()),
            true,
        )
        .await
        .map(drop)
    }

    /// A deploy finished: `rebuilt` when it replaced an earlier one (the agent also gets a
    /// message naming the commit). Returns the agent whose up_to_date axis to look at again.
    async fn deployed(&self, deploy: crate::approvals::Deploy) -> Result<Option<AgentName>> {
        let Ok(agent) = AgentName::parse(&deploy.agent) else {
            return Ok(None);
        };
        let Some(record) = self.registry.get(&agent) else {
            return Ok(None);
        };
        match deploy.status {
            DeployStatus::Deployed => {}
            DeployStatus::Failed => return Ok(Some(agent)),
            _ => return Ok(None),
        }
        let (id, incarnation) = (deploy.id, record.incarnation);
        let replaced: bool = self
            .store
            .read(move |c| {
                Ok(c.prepare_cached(
                    "SELECT 1 FROM deploys WHERE incarnation = ?1 AND id < ?2 AND status = 'deployed'",
                )?
                .exists(params![incarnation, id])?)
            })
            .await?;
        let tell = replaced.then(|| Tell {
            to_agent: Some(format!(
                "Your container was rebuilt from commit {} (deploy {id}) and restarted.",
                deploy.commit
            )),
            event: HelperEvent::Rebuilt(helper::Rebuilt {
                commit: deploy.commit,
                deploy: id,
                kind: deploy.kind,
            }),
        });
        self.record(
            agent.as_str(),
            incarnation,
            DEPLOY,
            id.to_string(),
            tell,
            true,
        )
        .await?;
        Ok(Some(agent))
    }
}

/// The watcher's reactions that act: the restarts after a crash and the automatic rebuilds,
/// which only the composition root can do.
impl Hive {
    /// The watcher component: its task takes the kicks, the bus and the reconcile tick in turn
    /// until the scope stops; restarts wait their backoff on tasks of the same scope.
    pub fn run_watcher(self: &Arc<Self>, scope: &Scope) -> Result<()> {
        let Some(mut kicked) = self.watcher.kicked.lock().expect("kicked").take() else {
            return Err(Error::Internal("the watcher runs once per hive".into()));
        };
        let mut creds = CredentialWatch::new(&self.paths, self.watcher.kicks.clone())?;
        let mut bus = self.bus.subscribe();
        let (hive, stop, tasks) = (self.clone(), scope.stopping().clone(), scope.clone());
        scope.spawn(async move {
            let mut tick = tokio::time::interval(hive.watcher.reconcile);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    // The first tick is at once: the first pass seeds what already holds.
                    _ = tick.tick() => hive.reconcile_all(&mut creds, &tasks).await,
                    kick = kicked.recv() => match kick {
                        Some(kick) => hive.on_kick(kick, &mut creds, &tasks).await,
                        None => break,
                    },
                    event = bus.recv() => match event {
                        Ok(event) => hive.on_bus(event, &mut creds, &tasks).await,
                        // Messages may outrun it; what it missed the next tick sees.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            tracing::debug!(missed = n, "the watcher lagged behind the bus");
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    },
                }
            }
        });
        Ok(())
    }

    /// Each agent's axes as the watcher last saw them.
    pub fn agent_axes(&self, agent: &AgentName) -> Axes {
        self.watcher.axes(agent)
    }

    async fn reconcile_all(self: &Arc<Self>, creds: &mut CredentialWatch, tasks: &Scope) {
        for agent in self.registry.names() {
            creds.ensure_agent(&self.paths, &agent);
            self.check_agent(&agent, tasks).await;
            if let Err(e) = self.watcher.check_liveness(&agent).await {
                tracing::warn!(%agent, error = %e, "cannot judge the agent's liveness");
            }
        }
    }

    /// Recomputes `agent`'s logged_in and up_to_date axes.
    async fn check_agent(self: &Arc<Self>, agent: &AgentName, tasks: &Scope) {
        if let Err(e) = self.watcher.check_login(agent).await {
            tracing::warn!(%agent, error = %e, "cannot check the login");
        }
        if let Err(e) = self.check_up_to_date(agent, tasks).await {
            tracing::warn!(%agent, error = %e, "cannot check whether the agent is up to date");
        }
    }

    /// The watcher's up_to_date check, and the automatic rebuild it asks for.
    async fn check_up_to_date(self: &Arc<Self>, agent: &AgentName, tasks: &Scope) -> Result<()> {
        if let Some(details) = self.watcher.check_up_to_date(agent).await? {
            self.auto_update(agent.clone(), details, tasks);
        }
        Ok(())
    }

    /// `[watcher] auto_update`: rebuilds a stale agent; a rebuild that fails tells the manager
    /// `needs_update` after all.
    fn auto_update(
        self: &Arc<Self>,
        agent: AgentName,
        details: helper::NeedsUpdate,
        tasks: &Scope,
    ) {
        let (hive, stop) = (self.clone(), tasks.stopping().clone());
        tasks.spawn(async move {
            let updated = tokio::select! {
                _ = stop.cancelled() => return,
                r = async {
                    // One automatic rebuild at a time: a new builder or harness makes every
                    // agent stale at once, and a build each in parallel would swamp the host.
                    let _turn = hive.watcher.auto_updates.acquire().await;
                    hive.update_agent(Actor::System, &agent).await
                } => r,
            };
            let failed = match updated {
                Ok(o) => o.deploy.is_some_and(|d| d.status != DeployStatus::Deployed),
                Err(e) => {
                    tracing::warn!(%agent, error = %e, "automatic update did not run");
                    true
                }
            };
            if failed {
                hive.watcher.tell_update_failed(&agent, details).await;
            }
        });
    }

    async fn on_kick(self: &Arc<Self>, kick: Kick, creds: &mut CredentialWatch, tasks: &Scope) {
        match kick {
            Kick::Exited { exit, image } => {
                let agent = exit.agent.clone();
                if let Err(e) = self.on_exit(exit, image, tasks).await {
                    tracing::warn!(%agent, error = %e, "cannot handle a container's end");
                }
            }
            Kick::Credentials(agent) => {
                if self.registry.get(&agent).is_some() {
                    creds.ensure_agent(&self.paths, &agent);
                    if let Err(e) = self.watcher.check_login(&agent).await {
                        tracing::warn!(%agent, error = %e, "cannot check the login");
                    }
                }
            }
            Kick::Started(agent) => {
                if let Err(e) = self.check_up_to_date(&agent, tasks).await {
                    tracing::warn!(%agent, error = %e, "cannot check whether the agent is up to date");
                }
            }
            Kick::StartedByHand(agent) => self.watcher.clear_crash_loop(&agent).await,
        }
    }

    /// A container ended on its own: the watcher tells it, then it is restarted after its
    /// backoff — or, past [`MAX_CRASHES`] in the window, left stopped.
    async fn on_exit(
        self: &Arc<Self>,
        exit: ContainerExit,
        image: Option<PathBuf>,
        tasks: &Scope,
    ) -> Result<()> {
        let agent = exit.agent.clone();
        let Some(wait) = self.watcher.crashed(exit, image).await? else {
            return Ok(());
        };
        let (hive, stop) = (self.clone(), tasks.stopping().clone());
        tasks.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            if hive.watcher.holds_stopped(&agent) || hive.registry.get(&agent).is_none() {
                return;
            }
            let started = tokio::select! {
                _ = stop.cancelled() => return,
                r = hive.start_agent(Actor::System, &agent) => r,
            };
            match started {
                Ok(o) => tracing::info!(%agent, result = %o.result, "restarted after a crash"),
                Err(e) => tracing::warn!(%agent, error = %e, "cannot restart after a crash"),
            }
        });
        Ok(())
    }

    async fn on_bus(self: &Arc<Self>, event: Event, creds: &mut CredentialWatch, tasks: &Scope) {
        let done = match event {
            Event::Deploy { deploy } => match self.watcher.deployed(deploy).await {
                Ok(Some(agent)) => self.check_up_to_date(&agent, tasks).await,
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            },
            Event::AgentCreated { agent } if agent.kind != AgentKind::Manager => {
                self.on_created(&agent, creds, tasks).await
            }
            Event::AgentRemoved { agent, incarnation } => {
                self.watcher.destroyed(&agent, incarnation).await
            }
            Event::TurnEvents { agent, .. } | Event::TurnState { agent, .. } => {
                self.watcher.activity.heard_from(&agent);
                Ok(())
            }
            _ => Ok(()),
        };
        if let Err(e) = done {
            tracing::warn!(error = %e, "the watcher cannot handle an event");
        }
    }

    /// An agent came into being: its axes are seeded now (nothing told): `spawned` carries
    /// whether it is logged in; a login from here on is a change.
    async fn on_created(
        self: &Arc<Self>,
        agent: &proto::AgentRecord,
        creds: &mut CredentialWatch,
        tasks: &Scope,
    ) -> Result<()> {
        // The record came from the registry, whose names all parsed.
        let name = AgentName::parse(&agent.name)?;
        creds.ensure_agent(&self.paths, &name);
        self.check_agent(&name, tasks).await;
        self.watcher.spawned(&name, agent.incarnation).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checks read through the watcher's own handles: what is left on `Hive` runs the task
    /// and acts (restarts, rebuilds), and reads nothing the checks read nor tells anything itself.
    #[test]
    fn the_hive_side_only_acts() {
        let source = include_str!("watcher.rs");
        let start = source
            .find("\nimpl Hive {")
            .expect("the watcher's impl Hive");
        let end = source.find("\n#[cfg(test)]").expect("the tests");
        let hive_side = &source[start..end];
        for read in [
            "containers.run_of",
            ".git(",
            "applied_head",
            "built_with_another_builder",
            ".store",
            "agent_liveness",
            "liveness.of",
            ".record(",
            "HelperEvent::",
        ] {
            assert!(
                !hive_side.contains(read),
                "the watcher's `impl Hive` has `{read}`: that belongs to `Watcher`"
            );
        }
    }

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        let waits: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }
}
