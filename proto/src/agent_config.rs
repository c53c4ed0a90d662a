//! An agent's resolved configuration: what the builder writes to `/etc/hyperhive/agent.json` in
//! the image (every `hyperhive.*` option of `nixos-module/agent-module.nix`, defaults applied) and
//! what the broker (limits, network) and the harness (driver, model, prompt) read back. The field
//! names are the Nix option names; unknown fields are refused so a renamed option is an error on
//! both sides instead of a silently dropped setting.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `/etc/hyperhive/agent.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentConfig {
    /// The model name passed to the driver; `None`: the hive's default model.
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub driver: Driver,
    /// The system prompt appended for this agent.
    #[serde(default)]
    pub prompt: String,
    #[serde(default)]
    pub network: Network,
    /// Whom the agent may message besides the manager and the operator; empty: anyone.
    #[serde(default)]
    pub allowed_recipients: Vec<String>,
    /// Shell commands the model may run.
    #[serde(default)]
    pub allowed_commands: Vec<String>,
    #[serde(default)]
    pub extra_mcp_servers: BTreeMap<String, McpServer>,
    /// `host:port` pairs the gateway lets the agent reach.
    #[serde(default)]
    pub egress: Vec<String>,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub restart: Restart,
    /// Environment for the harness.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub budget: Budget,
}

/// Which model driver the harness uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    #[default]
    Claude,
    Openai,
}

/// The container's network: `none` is only `lo` (the gateway socket is the way out).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    #[default]
    None,
    Host,
}

/// When the watcher restarts a container that stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    #[default]
    OnFailure,
    Always,
    Never,
}

/// cgroup limits of the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    #[serde(rename = "memoryMB")]
    pub memory_mb: u64,
    pub pids: u64,
    /// Relative CPU share, 1–10000 (100 is one agent's fair share).
    pub cpu_weight: u64,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            memory_mb: 2048,
            pids: 512,
            cpu_weight: 100,
        }
    }
}

/// One more MCP server the agent's model may use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct McpServer {
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub allowed_tools: Vec<String>,
}

/// Spending limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Budget {
    pub tokens_per_day: Option<u64>,
}

/// The longest model name accepted.
pub const MAX_MODEL_LEN: usize = 100;

/// A model name a driver is given (`--model NAME` on claude's command line, `model` of a hive
/// default): 1 to [`MAX_MODEL_LEN`] of letters, digits and `._:@/-`, starting with a letter or
/// digit — never a flag.
pub fn check_model_name(name: &str) -> Result<(), String> {
    let ok = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.len() <= MAX_MODEL_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:@/-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{name}' is not a model name (1 to {MAX_MODEL_LEN} of letters, digits and ._:@/-, \
             starting with a letter or digit)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_names_are_the_nix_ones() {
        let json = r#"{"model":null,"driver":"openai","prompt":"p","network":"host",
            "allowedRecipients":["bob"],"allowedCommands":[],"extraMcpServers":{},"egress":[],
            "resources":{"memoryMB":64,"pids":32,"cpuWeight":50},"restart":"on-failure",
            "env":{"A":"1"},"budget":{"tokensPerDay":null}}"#;
        let c: AgentConfig = serde_json::from_str(json).unwrap();
        assert_eq!(c.driver, Driver::Openai);
        assert_eq!(c.resources.memory_mb, 64);
        assert_eq!(c.network, Network::Host);
        assert!(serde_json::from_str::<AgentConfig>(r#"{"memory":1}"#).is_err());
    }
}
