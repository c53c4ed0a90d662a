//! Agents as the admin API serves them: the record, what its container does ([`AgentRun`]), the
//! watcher's [`Axes`], its [`Liveness`], the listing row ([`AgentView`]), one agent in full
//! ([`AgentDetail`]: isolation and confinement), and the answers of lifecycle actions and gc.

use serde::{Deserialize, Serialize};

use crate::approval::Deploy;
use crate::tools::TurnState;

/// The manager, or an agent it spawned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentKind {
    Manager,
    Agent,
}

impl AgentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manager => "manager",
            Self::Agent => "agent",
        }
    }
}

/// An agent's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub name: String,
    pub kind: AgentKind,
    /// This spawn of the name: rows about the agent are keyed by it.
    pub incarnation: i64,
    /// The first host uid of the incarnation's 65536-uid user-namespace range.
    pub uid_base: u32,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Empty = may write to anyone (DESIGN §6).
    pub allowed_recipients: Vec<String>,
}

/// What an agent's container is doing, as `hive agents` and the API show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRun {
    pub agent: String,
    /// `stopped`, `running` (the container runs), or a transient state.
    pub state: String,
    /// The harness is connected: the agent can take turns.
    pub up: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The deploy the container runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// How the last run ended, when it ended on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exited: Option<String>,
    /// What the harness last reported about its model (`idle`, `thinking`, `needs_login`, …),
    /// while a harness is connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_state: Option<TurnState>,
    /// The claude driver's executable, or why it is missing (`claude not found …`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Paused by the operator (`hive pause`): no new turns.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
}

/// One agent's axes as `hive agents` shows them (`None`: not known yet).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Axes {
    /// The container runs and its harness is connected.
    pub running: bool,
    pub logged_in: Option<bool>,
    /// The running deploy is the applied HEAD, built with today's builder (`None` while it does
    /// not run or a deploy is under way).
    pub up_to_date: Option<bool>,
    /// Stopped after a crash loop until started by hand.
    pub crash_loop: bool,
}

/// What an agent is doing, in one word a person can act on (DESIGN §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    Working,
    WaitingOnHuman,
    Idle,
    Stuck,
    Dead,
}

impl Liveness {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Working => "working",
            Self::WaitingOnHuman => "waiting_on_human",
            Self::Idle => "idle",
            Self::Stuck => "stuck",
            Self::Dead => "dead",
        }
    }
}

/// One agent as `hive agents` lists it (`/api/v1/agents`): its record, what its container does
/// and the watcher's axes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentView {
    #[serde(flatten)]
    pub record: AgentRecord,
    pub run: AgentRun,
    pub axes: Axes,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<Liveness>,
}

/// `[runtime] kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    Nspawn,
    Process,
    /// `none`: this hive runs no agents (no builds, no containers): mail, approvals and config
    /// repos only — for hives whose agents run elsewhere, and tests of those parts.
    #[serde(rename = "none")]
    Off,
}

/// What the kernel says of a running container's isolation — read, never assumed from config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Isolation {
    pub runtime: Option<RuntimeKind>,
    /// false for the process runtime.
    pub isolated: bool,
    /// `/proc/<payload>/uid_map`, trimmed.
    pub uid_map: Option<String>,
    /// Network interfaces in the payload's network namespace (`lo` alone for `network = "none"`).
    pub net_links: Option<Vec<String>>,
    /// Whether `/` is mounted read-only for the payload.
    pub read_only_root: Option<bool>,
    /// The cgroup limits in force.
    pub memory_max_bytes: Option<u64>,
    pub pids_max: Option<u64>,
    pub cpu_weight: Option<u64>,
}

/// A running agent's confinement: network, egress, tokens against its budget, the key search.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confinement {
    /// `none` (only `lo`; the gateway socket is the one way out) or `host`.
    pub network: String,
    /// The `host:port` pairs CONNECT may reach.
    pub egress: Vec<String>,
    /// CONNECTs refused since the daemon started.
    pub egress_denied: u64,
    /// Model tokens used today (UTC), and the daily budget (`null`: none).
    pub tokens_today: u64,
    pub tokens_per_day: Option<u64>,
    /// Whether a key the hive holds was found inside: `null` when it could not be checked.
    pub key_inside: Option<bool>,
    /// Where it was found (a process's environment, a file), when it was.
    pub key_found_in: Vec<String>,
    /// How many files were searched, and whether the search stopped at its bound.
    pub files_searched: usize,
    pub search_cut_short: bool,
    /// What the operator should know: `network = "host"`, keys found.
    pub warnings: Vec<String>,
}

/// One agent in full (`/api/v1/agents/{name}`): its record, its container, and (when it runs) its
/// isolation as the kernel reports it and its confinement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentDetail {
    #[serde(flatten)]
    pub record: AgentRecord,
    pub run: AgentRun,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<Isolation>,
    /// Why the isolation could not be read (e.g. the agent is not running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confinement: Option<Confinement>,
}

/// What a lifecycle action (start, stop, restart, update, pause, resume) did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// What happened, in words (`started`, `already running`, `already up to date`, …).
    pub result: String,
    pub run: AgentRun,
    /// The deploy an update or a start had to build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<Deploy>,
}

/// What `hive gc` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    /// Image gcroots removed (their store paths deleted when nothing else holds them).
    pub removed: usize,
    /// Per agent, the deploys kept (the running one and the one before it).
    pub kept: Vec<(String, Vec<i64>)>,
}

/// The last lines of an agent's container log (`/api/v1/agents/{name}/logs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentLog {
    pub agent: String,
    pub log: String,
}
