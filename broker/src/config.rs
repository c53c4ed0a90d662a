//! `hive.toml`: every key optional, unknown keys refused, defaults in one place ([`Config::default`]).
//! `hive check-config` parses a file with [`Config::from_toml`] and prints the error it returns.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The whole configuration of one hive.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub store: StoreConfig,
    pub mailbox: MailboxConfig,
    pub approvals: ApprovalsConfig,
    pub runtime: RuntimeConfig,
    pub build: BuildConfig,
    pub model: ModelConfig,
    pub watcher: WatcherConfig,
    pub dashboard: DashboardConfig,
    pub notify: NotifyConfig,
    pub defaults: DefaultsConfig,
    pub manager: ManagerConfig,
}

/// `[defaults]`: what an agent gets for an option its `agent.nix` leaves unset, in place of the
/// option table's own default. Applied when the image is built (they are in its `agent.json`
/// and in the builder's fingerprint: a change makes running agents out of date, not changed).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DefaultsConfig {
    /// `hyperhive.model` (default: none, the driver's own).
    pub model: Option<String>,
    pub resources: ResourceDefaults,
}

/// `[defaults.resources]`: `hyperhive.resources` (the table's defaults: 2048 MiB, 512, 100).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResourceDefaults {
    pub memory_mb: Option<u32>,
    pub pids: Option<u32>,
    pub cpu_weight: Option<u32>,
}

/// `[manager]`: the manager's own defaults, over `[defaults]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManagerConfig {
    /// The manager's `hyperhive.model` when its agent.nix sets none.
    pub model: Option<String>,
}

impl Config {
    /// The hive's defaults for `agent`'s options, by option name (`{"model": …, "resources":
    /// {"memoryMB": …}}`), as the builder hands them to the evaluation.
    pub fn agent_defaults(&self, is_manager: bool) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        let model = is_manager
            .then_some(self.manager.model.as_ref())
            .flatten()
            .or(self.defaults.model.as_ref());
        if let Some(model) = model {
            out.insert("model".into(), model.clone().into());
        }
        let r = &self.defaults.resources;
        let mut resources = serde_json::Map::new();
        for (option, value) in [
            ("memoryMB", r.memory_mb),
            ("pids", r.pids),
            ("cpuWeight", r.cpu_weight),
        ] {
            if let Some(v) = value {
                resources.insert(option.into(), v.into());
            }
        }
        if !resources.is_empty() {
            out.insert("resources".into(), resources.into());
        }
        out.into()
    }
}

/// A model name a default may set: what a driver's `--model` takes, never a flag.
fn check_model(key: &str, model: &str) -> Result<(), String> {
    proto::agent_config::check_model_name(model).map_err(|e| format!("{key}: {e}"))
}

/// `[notify]`: alerts sent when a human is needed (a pending approval, a question to the
/// operator, a crash loop, a spent budget, a login needed), and for nothing else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    /// Where to POST them: an ntfy topic URL (`https://ntfy.sh/my-hive`) or a webhook. Unset: no
    /// alerts.
    pub url: Option<String>,
    /// `ntfy` (the text as the body; `Title`, `Click`, `Tags` headers) or `webhook` (one JSON
    /// object: `title`, `items`, `link`).
    pub format: NotifyFormat,
    /// Alerts within this many seconds of the first go out as one notification.
    pub batch_seconds: u64,
    /// The dashboard's address as the operator's browser reaches it, for the login links in
    /// alerts (e.g. `https://hive.example.org`). Unset: the dashboard's own listening address.
    pub dashboard_url: Option<String>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            url: None,
            format: NotifyFormat::Ntfy,
            batch_seconds: 10,
            dashboard_url: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyFormat {
    Ntfy,
    Webhook,
}

/// `[watcher]`: the helper events and restarts (DESIGN §9).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatcherConfig {
    /// How often every agent's axes are recomputed as a safety net, in seconds (default 30);
    /// changes are seen at once through events, this only catches what no event announced.
    pub reconcile_seconds: u64,
    /// Rebuild an agent whose running deploy is not its applied HEAD by itself (default false:
    /// the manager gets `needs_update` and calls `update`).
    pub auto_update: bool,
    /// A turn with no event for this long, or a queue not moving this long while the harness is
    /// connected, makes the agent `stuck` (told to the manager once). Default 600.
    pub stuck_after_seconds: u64,
}

impl Default for WatcherConfig {
    fn default() -> Self {
        Self {
            reconcile_seconds: 30,
            auto_update: false,
            stuck_after_seconds: 600,
        }
    }
}

/// `[dashboard]`: the operator's web dashboard, served by `hive serve` over TCP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DashboardConfig {
    /// Whether `hive serve` serves the dashboard (default true).
    pub enabled: bool,
    /// The address to listen on (default `127.0.0.1`: this host only).
    pub address: std::net::IpAddr,
    /// The TCP port (default 7000; 0 picks a free one, written to `run/dashboard.addr`).
    pub port: u16,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            address: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            port: 7000,
        }
    }
}

/// `[model]`: where each agent's `gateway.sock` forwards its model requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// The Anthropic API the gateway forwards `/v1/messages` to (default
    /// `https://api.anthropic.com`); `http` or `https`, optionally with a path prefix.
    pub anthropic_base_url: String,
    /// An OpenAI-compatible API (the path before `/v1/chat/completions`; a trailing `/v1` is
    /// accepted), where the gateway forwards the openai driver's requests (unset: none).
    pub openai_base_url: Option<String>,
    /// A file holding the API key, read at start; it must not be readable by group or others.
    /// When set, the gateway sends it as `x-api-key` in place of whatever the agent sent, so the
    /// key never enters a container. Unset: the agent's own headers pass through.
    pub api_key_file: Option<std::path::PathBuf>,
    /// The same for `openai_base_url`, sent as `authorization: Bearer KEY`.
    pub openai_api_key_file: Option<std::path::PathBuf>,
    /// The circuit breaker of each upstream opens after this many failures in a row (no
    /// connection, a timeout, a 5xx answer); while open, model calls are answered 503 at once.
    pub breaker_failures: u32,
    /// How long an open breaker waits before letting one call through to try the upstream again.
    pub breaker_cooldown_secs: u64,
    /// USD per million tokens, by model name (a key also prices every model whose name starts
    /// with it; the longest such key wins): each call's cost is stored with its usage. A model
    /// without a price has its tokens counted and no cost.
    pub prices: std::collections::BTreeMap<String, Price>,
}

/// A model's price in USD per million tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    /// Cache reads (default: the input price).
    pub cache_read: Option<f64>,
    /// Cache writes (default: the input price).
    pub cache_write: Option<f64>,
}

impl ModelConfig {
    /// The price of `model`: its own key, else the longest key it starts with.
    pub fn price_of(&self, model: &str) -> Option<&Price> {
        self.prices.get(model).or_else(|| {
            self.prices
                .iter()
                .filter(|(k, _)| model.starts_with(k.as_str()))
                .max_by_key(|(k, _)| k.len())
                .map(|(_, p)| p)
        })
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            anthropic_base_url: "https://api.anthropic.com".to_owned(),
            openai_base_url: None,
            api_key_file: None,
            openai_api_key_file: None,
            breaker_failures: 5,
            breaker_cooldown_secs: 30,
            prices: Default::default(),
        }
    }
}

/// Checks a `[model]` base URL: absolute, `http` or `https`, a host, no query or fragment.
fn check_base_url(key: &str, url: &str) -> Result<(), String> {
    check_url(&format!("model.{key}"), url)
}

/// Checks a URL setting (`key` is its full name): absolute, `http` or `https`, a host, no query
/// or fragment.
fn check_url(key: &str, url: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{key} = {url:?}: {why}"));
    if url.contains(['?', '#']) {
        return bad("must not have a query or fragment");
    }
    let Ok(uri) = url.parse::<hyper::Uri>() else {
        return bad("is not a URL (write it as https://host[:port][/prefix])");
    };
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return bad("must start with http:// or https://"),
    }
    if uri.authority().is_none_or(|a| a.host().is_empty()) {
        return bad("has no host");
    }
    Ok(())
}

/// `[runtime]`: how agents' containers run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// `nspawn` (a systemd-nspawn container per agent), `process` (the harness as a plain child,
    /// no isolation; for development) or `none` (no agent is run). Unset: nspawn when
    /// `systemd-nspawn` is on PATH and the daemon is root, else process.
    pub kind: Option<RuntimeKind>,
    /// The `hive-agent` binary put in images and run by the process runtime. Unset: the one next
    /// to the running `hive`.
    pub harness_binary: Option<std::path::PathBuf>,
    /// The claude CLI the agents' claude driver runs (bound read-only into nspawn containers).
    /// Unset: `HIVE_CLAUDE` from the daemon's environment, else `claude` on its PATH.
    pub claude: Option<std::path::PathBuf>,
    /// How long a stop waits after SIGTERM before it kills the agent's cgroup (default 10).
    pub stop_timeout_seconds: u64,
    /// The first user-namespace range handed to an agent; each agent gets 65536 uids from a
    /// multiple of 65536 at or above it (default 0x4000_0000: far above host users).
    pub uid_base_start: u32,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            kind: None,
            harness_binary: None,
            claude: None,
            stop_timeout_seconds: 10,
            uid_base_start: 0x4000_0000,
        }
    }
}

/// `[runtime] kind`.
pub use proto::agent::RuntimeKind;

/// `[build]`: how an applied `agent.nix` becomes an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BuildConfig {
    /// `minimal` (a builtins-only image; any Linux with nix) or `nixos` (a NixOS container
    /// system; needs nixpkgs). Default: minimal.
    pub builder: BuilderKind,
    /// How long one build may take before it is stopped and the deploy fails (default 600).
    pub timeout_seconds: u64,
}

impl Default for BuildConfig {
    fn default() -> Self {
        Self {
            builder: BuilderKind::Minimal,
            timeout_seconds: 600,
        }
    }
}

/// `[build] builder`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuilderKind {
    #[default]
    Minimal,
    Nixos,
}

/// `[approvals]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// Whether denying needs a note for the manager (default true).
    pub deny_requires_note: bool,
    /// The largest file a requested commit may hold, in bytes (default 1 MiB).
    pub max_file_bytes: u64,
    /// The most all files of a requested commit may hold together, in bytes (default 8 MiB).
    pub max_commit_bytes: u64,
    /// The most a proposed repo's object store may hold for a request to be read (default
    /// 256 MiB); the broker copies it before reading it.
    pub max_repo_bytes: u64,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        Self {
            deny_requires_note: true,
            max_file_bytes: 1024 * 1024,
            max_commit_bytes: 8 * 1024 * 1024,
            max_repo_bytes: 256 * 1024 * 1024,
        }
    }
}

/// `[store]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `normal` (default): an acknowledged write survives a crash of the daemon.
    /// `full`: it also survives a power loss, at the cost of an fsync per commit.
    pub synchronous: Synchronous,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    #[default]
    Normal,
    Full,
}

impl Synchronous {
    pub fn pragma(self) -> &'static str {
        match self {
            Self::Normal => "NORMAL",
            Self::Full => "FULL",
        }
    }
}

impl std::fmt::Display for Synchronous {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Normal => "normal",
            Self::Full => "full",
        })
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Normal,
        }
    }
}

/// `[mailbox]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MailboxConfig {
    /// The largest message body accepted, in bytes (default 65536).
    pub max_body_bytes: usize,
    /// Delivered messages older than this many days are deleted by the daily vacuum (default 30).
    /// Queued messages are never deleted.
    pub retention_days: u32,
    /// The most unread (queued) messages one inbox holds; a send past it is refused with
    /// `inbox_full`, so one agent cannot flood another or the operator (default 10000).
    pub max_queued_per_inbox: u64,
    /// The most open questions one agent may have asked the operator (default 100).
    pub max_open_questions_per_agent: u64,
    /// A message queued this long for an agent that cannot take it (not running, paused, kept
    /// stopped after a crash loop) is a dead letter the operator redirects or drops (default
    /// 3600).
    pub dead_letter_after_seconds: u64,
}

/// The most a hive may be configured to accept in one message body.
pub const MAX_BODY_CEILING: usize = 16 * 1024 * 1024;

impl Default for MailboxConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            retention_days: 30,
            max_queued_per_inbox: 10_000,
            max_open_questions_per_agent: 100,
            dead_letter_after_seconds: 3600,
        }
    }
}

/// The largest configuration file read.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// The first `MAX_CONFIG_BYTES + 1` bytes of `path` (one more tells that it is too large).
fn read_capped(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = vec![];
    std::fs::File::open(path)?
        .take(MAX_CONFIG_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// A configuration that could not be used, with the key and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl Config {
    /// Reads `path`; a missing file means the defaults only when `missing_ok`. At most
    /// [`MAX_CONFIG_BYTES`] are read (`--config /dev/zero` must not read until out of memory).
    pub fn load(path: &Path, missing_ok: bool) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.display().to_string(),
            message,
        };
        match read_capped(path) {
            Ok(bytes) if bytes.len() > MAX_CONFIG_BYTES => Err(invalid(format!(
                "larger than {MAX_CONFIG_BYTES} bytes; a hive.toml is a few lines"
            ))),
            Ok(bytes) => {
                let text = String::from_utf8(bytes)
                    .map_err(|_| invalid("is not UTF-8 text".to_owned()))?;
                Self::from_toml(&text).map_err(invalid)
            }
            Err(e) if missing_ok && e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Parses and checks a configuration; the error names the key and the reason.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let config: Self = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        let max = self.mailbox.max_body_bytes;
        if max == 0 || max > MAX_BODY_CEILING {
            return Err(format!(
                "mailbox.max_body_bytes = {max}: must be between 1 and {MAX_BODY_CEILING}"
            ));
        }
        let a = &self.approvals;
        if a.max_file_bytes == 0 || a.max_file_bytes > a.max_commit_bytes {
            return Err(format!(
                "approvals.max_file_bytes = {}: must be between 1 and approvals.max_commit_bytes ({})",
                a.max_file_bytes, a.max_commit_bytes
            ));
        }
        if a.max_commit_bytes > a.max_repo_bytes {
            return Err(format!(
                "approvals.max_commit_bytes = {}: must be at most approvals.max_repo_bytes ({})",
                a.max_commit_bytes, a.max_repo_bytes
            ));
        }
        if self.watcher.reconcile_seconds == 0 {
            return Err("watcher.reconcile_seconds = 0: must be at least 1".into());
        }
        if self.watcher.stuck_after_seconds == 0 {
            return Err("watcher.stuck_after_seconds = 0: must be at least 1".into());
        }
        if self.mailbox.retention_days == 0 {
            return Err("mailbox.retention_days = 0: must be at least 1".into());
        }
        for (key, value) in [
            ("max_queued_per_inbox", self.mailbox.max_queued_per_inbox),
            (
                "max_open_questions_per_agent",
                self.mailbox.max_open_questions_per_agent,
            ),
        ] {
            if value == 0 || value > i64::MAX as u64 {
                return Err(format!("mailbox.{key} = {value}: must be at least 1"));
            }
        }
        if self.runtime.stop_timeout_seconds == 0 {
            return Err("runtime.stop_timeout_seconds = 0: must be at least 1".into());
        }
        if self.build.timeout_seconds == 0 {
            return Err("build.timeout_seconds = 0: must be at least 1".into());
        }
        if self.runtime.uid_base_start < 65536 || !self.runtime.uid_base_start.is_multiple_of(65536)
        {
            return Err(format!(
                "runtime.uid_base_start = {}: must be a multiple of 65536, at least 65536",
                self.runtime.uid_base_start
            ));
        }
        check_base_url("anthropic_base_url", &self.model.anthropic_base_url)?;
        if let Some(url) = &self.notify.url {
            check_url("notify.url", url)?;
        }
        if let Some(url) = &self.notify.dashboard_url {
            check_url("notify.dashboard_url", url)?;
        }
        if self.notify.batch_seconds > 3600 {
            return Err(format!(
                "notify.batch_seconds = {}: must be at most 3600",
                self.notify.batch_seconds
            ));
        }
        for (model, p) in &self.model.prices {
            let all = [Some(p.input), Some(p.output), p.cache_read, p.cache_write];
            if all.iter().flatten().any(|v| !v.is_finite() || *v < 0.0) {
                return Err(format!(
                    "model.prices.\"{model}\": prices must be finite and not negative"
                ));
            }
        }
        if self.model.breaker_failures == 0 {
            return Err("model.breaker_failures = 0: must be at least 1".into());
        }
        if self.model.breaker_cooldown_secs == 0 || self.model.breaker_cooldown_secs > 86_400 {
            return Err(format!(
                "model.breaker_cooldown_secs = {}: must be between 1 and 86400",
                self.model.breaker_cooldown_secs
            ));
        }
        for (key, model) in [
            ("defaults.model", &self.defaults.model),
            ("manager.model", &self.manager.model),
        ] {
            if let Some(model) = model {
                check_model(key, model)?;
            }
        }
        // The ranges of the option table (nixos-module/lib/options.nix).
        let r = &self.defaults.resources;
        for (key, value, min, max) in [
            ("memory_mb", r.memory_mb, 16, 1_048_576),
            ("pids", r.pids, 8, 1_048_576),
            ("cpu_weight", r.cpu_weight, 1, 10_000),
        ] {
            if let Some(v) = value
                && !(min..=max).contains(&v)
            {
                return Err(format!(
                    "defaults.resources.{key} = {v}: must be between {min} and {max}"
                ));
            }
        }
        if let Some(url) = &self.model.openai_base_url {
            check_base_url("openai_base_url", url)?;
        }
        if self
            .model
            .api_key_file
            .as_ref()
            .is_some_and(|p| !p.is_absolute())
        {
            return Err("model.api_key_file: must be an absolute path".into());
        }
        if self
            .model
            .openai_api_key_file
            .as_ref()
            .is_some_and(|p| !p.is_absolute())
        {
            return Err("model.openai_api_key_file: must be an absolute path".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_price_is_found_by_name_or_longest_prefix_and_bad_ones_are_refused() {
        let c = Config::from_toml(
            "[model.prices.\"claude-\"]\ninput = 1.0\noutput = 2.0\n\
             [model.prices.\"claude-opus\"]\ninput = 5.0\noutput = 25.0\ncache_read = 0.5\n",
        )
        .unwrap();
        assert_eq!(c.model.price_of("claude-opus-4-5").unwrap().input, 5.0);
        assert_eq!(c.model.price_of("claude-sonnet-4-5").unwrap().input, 1.0);
        assert!(c.model.price_of("gpt-5").is_none());
        let err = Config::from_toml("[model.prices.m]\ninput = -1.0\noutput = 1.0\n").unwrap_err();
        assert!(err.contains("model.prices.\"m\""), "{err}");
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
    }

    #[test]
    fn keys_are_read() {
        let c = Config::from_toml(
            "[store]\nsynchronous = \"full\"\n[mailbox]\nmax_body_bytes = 100\nretention_days = 2\n",
        )
        .unwrap();
        assert_eq!(c.store.synchronous, Synchronous::Full);
        assert_eq!(c.mailbox.max_body_bytes, 100);
        assert_eq!(c.mailbox.retention_days, 2);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let e = Config::from_toml("[store]\nsynchronus = \"full\"\n").unwrap_err();
        assert!(e.contains("synchronus"), "{e}");
        let e = Config::from_toml("[store]\nsynchronous = \"off\"\n").unwrap_err();
        assert!(e.contains("off"), "{e}");
        let e = Config::from_toml("[mailbox]\nmax_body_bytes = 0\n").unwrap_err();
        assert!(e.contains("mailbox.max_body_bytes"), "{e}");
        // A wrong value shows the line and the values allowed.
        let e = Config::from_toml("[runtime]\nkind = \"x\"\n").unwrap_err();
        assert!(
            e.contains("kind = \"x\"") && e.contains("`nspawn`, `process`, `none`"),
            "{e}"
        );
        let e = Config::from_toml("[runtime]\nstop_timeout_seconds = 0\n").unwrap_err();
        assert!(e.contains("runtime.stop_timeout_seconds"), "{e}");
        let e = Config::from_toml("[runtime]\nuid_base_start = 100\n").unwrap_err();
        assert!(e.contains("runtime.uid_base_start"), "{e}");
        let e = Config::from_toml("[mailbox]\nmax_queued_per_inbox = 0\n").unwrap_err();
        assert!(e.contains("mailbox.max_queued_per_inbox"), "{e}");
        let e = Config::from_toml("[mailbox]\nmax_open_questions_per_agent = 0\n").unwrap_err();
        assert!(e.contains("mailbox.max_open_questions_per_agent"), "{e}");
    }

    #[test]
    fn defaults_are_checked_and_given_by_option_name() {
        for (toml, key) in [
            (
                "[defaults]\nmodel = \"--dangerously-skip\"\n",
                "defaults.model",
            ),
            ("[manager]\nmodel = \"a b\"\n", "manager.model"),
            (
                "[defaults.resources]\nmemory_mb = 8\n",
                "defaults.resources.memory_mb",
            ),
            (
                "[defaults.resources]\ncpu_weight = 0\n",
                "defaults.resources.cpu_weight",
            ),
            (
                "[defaults.resources]\npids = 2000000\n",
                "defaults.resources.pids",
            ),
        ] {
            let e = Config::from_toml(toml).unwrap_err();
            assert!(e.contains(key), "{toml}: {e}");
        }
        let e = Config::from_toml("[defaults]\nmemory_mb = 64\n").unwrap_err();
        assert!(e.contains("memory_mb"), "{e}");

        assert_eq!(
            Config::default().agent_defaults(true),
            serde_json::json!({})
        );
        let c = Config::from_toml(
            "[defaults]\nmodel = \"claude-sonnet-4-5\"\n[defaults.resources]\npids = 64\n",
        )
        .unwrap();
        let agent = serde_json::json!({"model": "claude-sonnet-4-5", "resources": {"pids": 64}});
        assert_eq!(c.agent_defaults(false), agent);
        assert_eq!(
            c.agent_defaults(true),
            agent,
            "no [manager] model: the hive's"
        );
        let c = Config::from_toml("[manager]\nmodel = \"claude-opus-4-1\"\n").unwrap();
        assert_eq!(c.agent_defaults(false), serde_json::json!({}));
        assert_eq!(
            c.agent_defaults(true),
            serde_json::json!({"model": "claude-opus-4-1"})
        );
    }

    #[test]
    fn model_urls_are_checked() {
        assert_eq!(
            Config::default().model.anthropic_base_url,
            "https://api.anthropic.com"
        );
        let c = Config::from_toml(
            "[model]\nanthropic_base_url = \"http://127.0.0.1:8080/prefix\"\n\
             openai_base_url = \"https://api.openai.com\"\napi_key_file = \"/etc/key\"\n",
        )
        .unwrap();
        assert_eq!(c.model.anthropic_base_url, "http://127.0.0.1:8080/prefix");
        assert_eq!(c.model.api_key_file.as_deref(), Some(Path::new("/etc/key")));
        for bad in [
            "ftp://host",
            "api.anthropic.com",
            "http://",
            "https://host/?x=1",
            "not a url",
        ] {
            let e =
                Config::from_toml(&format!("[model]\nanthropic_base_url = {bad:?}\n")).unwrap_err();
            assert!(e.contains("model.anthropic_base_url"), "{bad}: {e}");
        }
        let e = Config::from_toml("[model]\nopenai_base_url = \"file:///x\"\n").unwrap_err();
        assert!(e.contains("model.openai_base_url"), "{e}");
        let e = Config::from_toml("[model]\napi_key_file = \"key\"\n").unwrap_err();
        assert!(e.contains("model.api_key_file"), "{e}");
    }

    #[test]
    fn approval_caps_must_nest() {
        let c =
            Config::from_toml("[approvals]\nmax_file_bytes = 10\nmax_commit_bytes = 20\n").unwrap();
        assert_eq!(c.approvals.max_file_bytes, 10);
        let e = Config::from_toml("[approvals]\nmax_file_bytes = 0\n").unwrap_err();
        assert!(e.contains("approvals.max_file_bytes"), "{e}");
        let e = Config::from_toml("[approvals]\nmax_file_bytes = 9000000\n").unwrap_err();
        assert!(e.contains("approvals.max_file_bytes"), "{e}");
        let e = Config::from_toml("[approvals]\nmax_repo_bytes = 100\n").unwrap_err();
        assert!(e.contains("approvals.max_commit_bytes"), "{e}");
    }
}
