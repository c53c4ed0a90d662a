//! `probe`: a tiny stdio MCP server (python3, standard library only) with one tool, `echo`, that
//! records every call, for tests that need a real MCP server next to the real claude CLI.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// The server's source (newline-delimited JSON-RPC on stdio; argv[1] = the calls file).
pub const SCRIPT: &str = include_str!("probe_mcp.py");

/// A probe written into a directory.
#[derive(Debug, Clone)]
pub struct ProbeMcp {
    /// The python script.
    pub script: PathBuf,
    /// Where it appends one JSON line `{"name":…,"arguments":…}` per `tools/call`.
    pub calls_file: PathBuf,
}

impl ProbeMcp {
    /// Writes the script into `dir` (as `probe_mcp.py`; calls go to `probe_calls.jsonl`).
    pub fn write(dir: &Path) -> std::io::Result<ProbeMcp> {
        let script = dir.join("probe_mcp.py");
        std::fs::write(&script, SCRIPT)?;
        Ok(ProbeMcp {
            script,
            calls_file: dir.join("probe_calls.jsonl"),
        })
    }

    /// The `mcpServers` entry that runs it with `python3`.
    pub fn server_entry(&self, python3: &Path) -> Value {
        json!({
            "command": python3,
            "args": [&self.script, &self.calls_file],
        })
    }

    /// A whole claude `--mcp-config` document with this probe as the server `name`.
    pub fn mcp_config(&self, name: &str, python3: &Path) -> Value {
        json!({ "mcpServers": { name: self.server_entry(python3) } })
    }

    /// The calls recorded so far, oldest first.
    pub fn calls(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.calls_file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}
