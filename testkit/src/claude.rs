//! The real claude CLI, run headless as FACTS A measured it, against a [`ModelServer`], and its
//! `stream-json` output read back.
//!
//! [`Claude`] makes the command: `claude --print --verbose --output-format stream-json`, HOME, cwd
//! and TMPDIR fresh directories in the run's directory, and only the environment the run needs
//! (the server's URL, a test API key, no telemetry or other traffic, no tool search, no retries).
//! [`Claude::run`] runs it to its end and gives a [`ClaudeRun`]: the exit code, the output and the
//! parsed events.
//!
//! ```no_run
//! # async fn demo(claude: &std::path::Path, dir: &std::path::Path) {
//! use testkit::claude::Claude;
//! use testkit::model_server::{ModelServer, Reply};
//! let server = ModelServer::start(vec![Reply::text("done")]).await;
//! let run = Claude::new(claude, &server, dir).run("hello").await;
//! assert_eq!(run.code, Some(0), "{}", run.describe());
//! assert_eq!(run.result()["result"], "done");
//! # }
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::model_server::ModelServer;
use crate::process;

/// How long one run may take before it is killed and the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// The API key claude sends to the [`ModelServer`].
pub const API_KEY: &str = "sk-test";

/// One headless claude run to make: the binary, the server it talks to, the directory that holds
/// its HOME (`home/`), cwd (`work/`), TMPDIR (`tmp/`) and MCP config (`mcp.json`), and its options.
#[derive(Debug, Clone)]
pub struct Claude<'a> {
    bin: PathBuf,
    server: &'a ModelServer,
    dir: PathBuf,
    mcp_config: Option<Value>,
    allowed_tools: Option<String>,
}

impl<'a> Claude<'a> {
    /// A run of `bin` against `server`, with its files in `dir`.
    pub fn new(bin: impl Into<PathBuf>, server: &'a ModelServer, dir: impl Into<PathBuf>) -> Self {
        Claude {
            bin: bin.into(),
            server,
            dir: dir.into(),
            mcp_config: None,
            allowed_tools: None,
        }
    }

    /// Gives claude exactly the MCP servers of `config` (an `{"mcpServers": …}` document, written
    /// to `mcp.json` in the run's directory): `--mcp-config mcp.json --strict-mcp-config`.
    pub fn mcp_config(mut self, config: Value) -> Self {
        self.mcp_config = Some(config);
        self
    }

    /// `--allowedTools TOOLS`: the tools claude may call without asking.
    pub fn allowed_tools(mut self, tools: impl Into<String>) -> Self {
        self.allowed_tools = Some(tools.into());
        self
    }

    /// The path `--mcp-config` names.
    pub fn mcp_config_path(&self) -> PathBuf {
        self.dir.join("mcp.json")
    }

    /// The command for one turn with `prompt`. Makes the HOME, cwd and TMPDIR directories and
    /// writes the MCP config; stdio is left to the caller.
    pub fn std_command(&self, prompt: &str) -> std::process::Command {
        let (home, cwd, tmp) = (
            self.dir.join("home"),
            self.dir.join("work"),
            self.dir.join("tmp"),
        );
        for d in [&home, &cwd, &tmp] {
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
        }
        let mut cmd = std::process::Command::new(&self.bin);
        cmd.current_dir(&cwd)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("TMPDIR", &tmp)
            .env("ANTHROPIC_BASE_URL", self.server.base_url())
            .env("ANTHROPIC_API_KEY", API_KEY)
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
            .env("DISABLE_TELEMETRY", "1")
            .env("ENABLE_TOOL_SEARCH", "false")
            .env("CLAUDE_CODE_MAX_RETRIES", "0")
            .args(["--print", "--verbose", "--output-format", "stream-json"]);
        if let Some(config) = &self.mcp_config {
            let path = self.mcp_config_path();
            std::fs::write(&path, config.to_string())
                .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            cmd.arg("--mcp-config").arg(path).arg("--strict-mcp-config");
        }
        if let Some(tools) = &self.allowed_tools {
            cmd.arg("--allowedTools").arg(tools);
        }
        cmd.args(["--", prompt]);
        cmd
    }

    /// [`Claude::std_command`] for tokio.
    pub fn command(&self, prompt: &str) -> tokio::process::Command {
        self.std_command(prompt).into()
    }

    /// Runs one turn with `prompt` to its end (at most [`TIMEOUT`]) and parses its events. With
    /// `TESTKIT_DUMP=1` (and `--nocapture`) it prints the run and every request the server saw.
    pub async fn run(&self, prompt: &str) -> ClaudeRun {
        let out = process::finish(&mut self.command(prompt), "claude", TIMEOUT).await;
        let run = ClaudeRun::parse(out.code(), out.stdout, out.stderr);
        if std::env::var_os("TESTKIT_DUMP").is_some() {
            eprintln!("{}\n{:#?}", run.describe(), self.server.requests());
        }
        run
    }
}

/// A finished claude run: its exit code, what it printed and the `stream-json` events of stdout.
#[derive(Debug)]
pub struct ClaudeRun {
    pub code: Option<i32>,
    pub events: Vec<Value>,
    pub stdout: String,
    pub stderr: String,
}

impl ClaudeRun {
    /// Reads the events, one JSON object a line of `stdout`; panics on a line that is not JSON.
    pub fn parse(code: Option<i32>, stdout: String, stderr: String) -> Self {
        let events = stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        ClaudeRun {
            code,
            events,
            stdout,
            stderr,
        }
    }

    /// The first event of type `kind` (and `subtype`, when given).
    pub fn event(&self, kind: &str, subtype: Option<&str>) -> Option<&Value> {
        self.events
            .iter()
            .find(|e| e["type"] == kind && subtype.is_none_or(|s| e["subtype"].as_str() == Some(s)))
    }

    /// What the run printed, for assertion messages.
    pub fn describe(&self) -> String {
        process::describe(self.code, &self.stdout, &self.stderr)
    }

    /// The `result` event; panics when there is none.
    pub fn result(&self) -> &Value {
        self.event("result", None)
            .unwrap_or_else(|| panic!("no result event in {}", self.describe()))
    }

    /// The `system/init` event; panics when there is none.
    pub fn init(&self) -> &Value {
        self.event("system", Some("init"))
            .unwrap_or_else(|| panic!("no system/init event in {}", self.describe()))
    }

    /// The `system/init` event; asserts that the MCP server `server` is `connected` in it (a
    /// failed MCP server is otherwise silent: FACTS A pitfall 5).
    pub fn init_with_connected(&self, server: &str) -> &Value {
        let init = self.init();
        let servers = init["mcp_servers"].as_array().expect("init.mcp_servers");
        assert!(
            servers
                .iter()
                .any(|s| s["name"] == server && s["status"] == "connected"),
            "the MCP server {server} did not connect: {servers:?}\n{}",
            self.describe()
        );
        init
    }

    /// The tool names the `system/init` event lists.
    pub fn init_tools(&self) -> Vec<&str> {
        self.init()["tools"]
            .as_array()
            .expect("init.tools")
            .iter()
            .filter_map(Value::as_str)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;

    fn run_of(events: &[Value]) -> ClaudeRun {
        let stdout: String = events.iter().map(|e| format!("{e}\n\n")).collect();
        ClaudeRun::parse(Some(0), stdout, String::new())
    }

    fn init(status: &str) -> Value {
        json!({"type": "system", "subtype": "init", "tools": ["Bash", "mcp__probe__echo"],
               "mcp_servers": [{"name": "probe", "status": status}]})
    }

    #[test]
    fn events_by_type_and_subtype() {
        let run = run_of(&[
            json!({"type": "system", "subtype": "hook"}),
            init("connected"),
            json!({"type": "result", "result": "done"}),
        ]);
        assert_eq!(run.events.len(), 3);
        assert_eq!(run.event("system", None).unwrap()["subtype"], "hook");
        assert_eq!(run.init()["subtype"], "init");
        assert_eq!(run.result()["result"], "done");
        assert_eq!(run.init_tools(), ["Bash", "mcp__probe__echo"]);
        assert_eq!(run.init_with_connected("probe")["subtype"], "init");
        assert!(run.describe().starts_with("exit Some(0)\n--- stdout\n{"));
    }

    #[test]
    #[should_panic(expected = "the MCP server probe did not connect")]
    fn a_failed_mcp_server_is_an_assertion() {
        run_of(&[init("failed")]).init_with_connected("probe");
    }

    #[test]
    #[should_panic(expected = "the MCP server hive did not connect")]
    fn an_absent_mcp_server_is_an_assertion() {
        run_of(&[init("connected")]).init_with_connected("hive");
    }

    #[test]
    #[should_panic(expected = "no result event")]
    fn no_result_is_an_assertion() {
        run_of(&[init("connected")]).result();
    }

    #[test]
    #[should_panic(expected = "not JSON")]
    fn a_line_that_is_not_json_is_an_assertion() {
        ClaudeRun::parse(Some(0), "{}\nnope\n".into(), String::new());
    }

    #[test]
    fn the_command_holds_only_what_the_run_needs() {
        let server = ModelServer::start_blocking(vec![]);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let claude = Claude::new("claude", &server, dir)
            .mcp_config(json!({"mcpServers": {}}))
            .allowed_tools("mcp__probe");
        let cmd = claude.std_command("hi");

        let config = claude.mcp_config_path();
        let config = config.to_str().unwrap();
        let args: Vec<&str> = cmd.get_args().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "--print",
                "--verbose",
                "--output-format",
                "stream-json",
                "--mcp-config",
                config,
                "--strict-mcp-config",
                "--allowedTools",
                "mcp__probe",
                "--",
                "hi"
            ]
        );
        assert_eq!(
            std::fs::read_to_string(config).unwrap(),
            r#"{"mcpServers":{}}"#
        );
        assert_eq!(cmd.get_current_dir(), Some(dir.join("work").as_path()));
        for d in ["home", "work", "tmp"] {
            assert!(dir.join(d).is_dir(), "{d}");
        }

        let envs: BTreeMap<&str, &str> = cmd
            .get_envs()
            .map(|(k, v)| (k.to_str().unwrap(), v.unwrap().to_str().unwrap()))
            .collect();
        let (home, tmpdir) = (dir.join("home"), dir.join("tmp"));
        let base_url = server.base_url();
        let want = BTreeMap::from([
            ("HOME", home.to_str().unwrap()),
            ("TMPDIR", tmpdir.to_str().unwrap()),
            ("ANTHROPIC_BASE_URL", base_url.as_str()),
            ("ANTHROPIC_API_KEY", "sk-test"),
            ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
            ("DISABLE_TELEMETRY", "1"),
            ("ENABLE_TOOL_SEARCH", "false"),
            ("CLAUDE_CODE_MAX_RETRIES", "0"),
        ]);
        let without_path: BTreeMap<&str, &str> =
            envs.into_iter().filter(|(k, _)| *k != "PATH").collect();
        assert_eq!(without_path, want);
    }

    #[test]
    fn without_options_only_the_prompt_follows() {
        let server = ModelServer::start_blocking(vec![]);
        let tmp = tempfile::tempdir().unwrap();
        let cmd = Claude::new("claude", &server, tmp.path()).std_command("hello");
        let args: Vec<&str> = cmd.get_args().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(args[4..], ["--", "hello"], "{args:?}");
        assert!(!tmp.path().join("mcp.json").exists());
    }
}
