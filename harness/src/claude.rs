//! The warm claude driver: one `claude --print --input-format stream-json --output-format
//! stream-json` process per agent, kept between turns (one stdin line starts a turn, stdout is read
//! up to its `result`), stopped after an idle timeout and brought back with `--resume` on the
//! session id kept in the state dir. It owns the process's command line and environment (FACTS A
//! and D) and the reading of its events; it never talks to the hive (the turn loop does) and never
//! writes outside the state dir and the model's HOME/TMPDIR.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use proto::{AgentConfig, Usage};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

/// How long a closed stdin may take to end the process before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(5);
/// `CLAUDE_CODE_MAX_RETRIES` unless the harness's environment sets it: a failing provider is
/// reported within seconds instead of retried for minutes.
const DEFAULT_MAX_RETRIES: &str = "3";
/// Variables passed through from the harness's environment to claude when set.
const PASSED_THROUGH: [&str; 6] = [
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "API_TIMEOUT_MS",
    "LANG",
    "CLAUDE_CONFIG_DIR",
    "CLAUDE_CODE_MAX_RETRIES",
];

/// Where claude runs and what it may use.
#[derive(Debug, Clone)]
pub struct Options {
    /// The claude executable.
    pub bin: PathBuf,
    /// The agent's socket directory (`mcp.sock`, maybe `gateway.sock`).
    pub socket_dir: PathBuf,
    /// The agent's writable state (`claude-session`, the model's working directory).
    pub state_dir: PathBuf,
    /// How long an idle process is kept.
    pub idle_timeout: Duration,
    /// One process per turn: stopped after each turn, the next resumes the session.
    pub per_turn: bool,
    /// This binary, the `hive` MCP server (`hive-agent mcp`).
    pub hive_agent: PathBuf,
    /// `--max-turns`: the most model calls one turn may make (a model that never stops calling
    /// tools is cut there).
    pub max_turns: u32,
}

/// How a turn ended, when claude answered it.
#[derive(Debug)]
pub struct Answered {
    /// `ok` or `error`.
    pub ok: bool,
    pub usage: Usage,
    /// Why it is an error.
    pub error: Option<String>,
    /// The result's `terminal_reason` (e.g. `max_turns`), when it gives one.
    pub terminal_reason: Option<String>,
    /// How full the model's context was after the turn's last model call, when the driver
    /// knows.
    pub context: Option<ContextFill>,
}

impl Answered {
    /// A step done without a model call (nothing used, nothing to report).
    pub fn quietly_ok() -> Self {
        Self {
            ok: true,
            usage: Usage::default(),
            error: None,
            terminal_reason: None,
            context: None,
        }
    }
}

/// The tokens the conversation takes against the model's context window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextFill {
    pub used: u64,
    pub window: u64,
}

impl ContextFill {
    pub fn percent(self) -> u64 {
        self.used.saturating_mul(100) / self.window.max(1)
    }
}

/// A turn claude did not answer: the turn loop releases it or retries.
#[derive(Debug)]
pub enum Failure {
    /// No credentials, or the provider refused them.
    NeedsLogin(String),
    /// The session no longer fits the model: start a fresh one.
    PromptTooLong(String),
    /// The process died or could not be started.
    Died(String),
    /// A `--resume` found no conversation (claude was killed before it wrote its transcript):
    /// the session is gone, the turn is tried again in a fresh one.
    CannotResume(String),
    /// The model upstream could not be reached: no connection, no answer in time, a 5xx (not
    /// 529, the provider busy), the gateway's own 502 or its open breaker's 503. The turn is
    /// given back and taken again after a pause (`retry_in`, when the error says how long).
    Unreachable {
        why: String,
        retry_in: Option<Duration>,
    },
}

/// claude's typed `api_error` kinds that say the model upstream was not reached or stopped
/// answering mid-call.
const UNREACHABLE_KINDS: [&str; 3] = ["connection_failed", "no_response", "stream_idle_timeout"];

/// Whether an HTTP status from the model's upstream says it cannot answer now: a 5xx other than
/// 529 (overloaded: the provider is up but busy, which the turn loop retries on its own).
pub fn unreachable_status(status: u16) -> bool {
    (500..600).contains(&status) && status != 529
}

/// The pause the model gateway's open breaker asks for (`… it tries again in N s`), in `text`.
pub fn breaker_retry_in(text: &str) -> Option<Duration> {
    let at = text.find(proto::BREAKER_RETRY_IN)? + proto::BREAKER_RETRY_IN.len();
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok().map(Duration::from_secs)
}

/// Why a failed turn's `result` says the model upstream could not be reached, if it does:
/// claude's typed `api_error` for a connection that failed or stalled, else its HTTP status
/// (`api_error_status`, or the one in `API Error: NNN …` from a CLI that does not give it) when
/// [`unreachable_status`], else a request that timed out. A 429 (rate limited, or the hive's
/// spent daily budget), a 529 and any other 4xx are not: the provider answered.
fn unreachable(result: &Value, text: &str) -> Option<Failure> {
    let kind = result["api_error"].as_str();
    let status = result["api_error_status"]
        .as_u64()
        .and_then(|s| u16::try_from(s).ok())
        .or_else(|| {
            let rest = text.strip_prefix("API Error: ")?;
            rest.get(..3)?.parse().ok()
        });
    let unreachable = match (kind, status) {
        (Some(kind), _) if UNREACHABLE_KINDS.contains(&kind) => true,
        (_, Some(status)) => unreachable_status(status),
        (_, None) => {
            text.starts_with("Request timed out") || text.starts_with("API Error: Connection")
        }
    };
    unreachable.then(|| Failure::Unreachable {
        why: text.to_owned(),
        retry_in: breaker_retry_in(text),
    })
}

struct Running {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    idle_since: Instant,
    /// Started with `--resume` and not yet past its first `system/init`.
    resuming: bool,
}

pub struct Claude {
    opts: Options,
    config: AgentConfig,
    /// The agent config's model, which `/model default` goes back to.
    configured_model: Option<String>,
    running: Option<Running>,
}

impl Claude {
    pub fn new(opts: Options, config: AgentConfig) -> Self {
        Self {
            opts,
            configured_model: config.model.clone(),
            config,
            running: None,
        }
    }

    fn session_file(&self) -> PathBuf {
        self.opts.state_dir.join("claude-session")
    }

    /// The session to resume: the one kept, if it began under today's system prompt. claude's
    /// `--resume` keeps the prompt a session began with and ignores a new
    /// `--append-system-prompt`, so after a config change the session is not resumed: the
    /// agent starts a new conversation under its new prompt (its notes carry what it must keep).
    fn session(&self) -> Option<String> {
        let s = std::fs::read_to_string(self.session_file()).ok()?;
        let s = s.trim();
        // A session id is a UUID; anything else in the file is not passed to claude.
        let id = (!s.is_empty()
            && s.len() <= 64
            && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-'))
        .then(|| s.to_owned())?;
        let began_with = std::fs::read_to_string(session_prompt_file(&self.opts.state_dir)).ok();
        if began_with.as_deref() != Some(self.system_prompt().as_str()) {
            eprintln!(
                "hive-agent: session {id} began under another system prompt; starting a new session"
            );
            return None;
        }
        Some(id)
    }

    /// The system prompt claude gets after its own (`--append-system-prompt`).
    fn system_prompt(&self) -> String {
        crate::prompt::system(
            &self.opts.state_dir.join(crate::prompt::NOTES_FILE),
            &self.config.prompt,
        )
    }

    /// Forgets the session: the next start is a fresh conversation.
    pub async fn start_fresh(&mut self) {
        self.stop().await;
        let _ = std::fs::remove_file(self.session_file());
    }

    /// The model claude is started with (`--model`), `None` for the CLI's default.
    pub fn model(&self) -> Option<&str> {
        self.config.model.as_deref()
    }

    /// The agent config's model.
    pub fn configured_model(&self) -> Option<String> {
        self.configured_model.clone()
    }

    /// Sets the model for the next start (the caller stops a running process).
    pub fn set_model(&mut self, model: Option<String>) {
        self.config.model = model;
    }

    /// Kills a running process at once (a cancelled turn); the session is kept for `--resume`.
    pub async fn kill(&mut self) {
        if let Some(mut running) = self.running.take() {
            let _ = running.child.kill().await;
        }
    }

    /// When the idle process should be stopped, if one runs.
    pub fn idle_deadline(&self) -> Option<Instant> {
        self.running
            .as_ref()
            .map(|r| r.idle_since + self.opts.idle_timeout)
    }

    /// Ends the process: stdin closed (claude exits on its own), killed after a grace period.
    pub async fn stop(&mut self) {
        let Some(Running {
            mut child, stdin, ..
        }) = self.running.take()
        else {
            return;
        };
        drop(stdin);
        if tokio::time::timeout(EXIT_GRACE, child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }

    /// The MCP servers claude gets: `hive` (this binary bridging to `mcp.sock`) and the agent's
    /// extra servers.
    pub fn mcp_config(&self) -> Value {
        let mut servers = serde_json::Map::new();
        servers.insert(
            "hive".into(),
            json!({
                "command": self.opts.hive_agent,
                "args": ["mcp", "--socket", self.opts.socket_dir.join("mcp.sock")],
            }),
        );
        for (name, s) in &self.config.extra_mcp_servers {
            servers.insert(
                name.clone(),
                json!({"command": s.command, "args": s.args, "env": s.env}),
            );
        }
        json!({ "mcpServers": servers })
    }

    /// `--allowedTools`: the whole hive server, reading and editing `notes.md` (and no other
    /// file), each extra server's allowed tools (all of them when it names none), and
    /// `Bash(CMD:*)` per allowed command.
    pub fn allowed_tools(&self) -> Vec<String> {
        // `//PATH` is an absolute path in claude's permission rules; `Edit` covers `Write`.
        let notes = self.opts.state_dir.join(crate::prompt::NOTES_FILE);
        let mut tools = vec![
            "mcp__hive".to_owned(),
            format!("Read(/{})", notes.display()),
            format!("Edit(/{})", notes.display()),
        ];
        for (name, s) in &self.config.extra_mcp_servers {
            if s.allowed_tools.is_empty() {
                tools.push(format!("mcp__{name}"));
            }
            for t in &s.allowed_tools {
                tools.push(if t.starts_with("mcp__") {
                    t.clone()
                } else {
                    format!("mcp__{name}__{t}")
                });
            }
        }
        for c in &self.config.allowed_commands {
            tools.push(format!("Bash({c}:*)"));
        }
        tools
    }

    /// claude with the harness's environment (FACTS A and D), run in `<state>/work`.
    fn base_command(&self) -> std::io::Result<Command> {
        let state = &self.opts.state_dir;
        let work = state.join("work");
        // Only inside an existing state dir: a missing one is an error, never created here.
        match std::fs::create_dir(&work) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!(
                        "cannot make {} (is the state dir bound?): {e}",
                        work.display()
                    ),
                ));
            }
            _ => {}
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
        let tmp = std::env::var_os("TMPDIR").unwrap_or_else(|| "/tmp".into());
        let mut cmd = Command::new(&self.opts.bin);
        cmd.current_dir(&work).env_clear();
        // The agent's own variables first: the ones below are the harness's and win.
        cmd.envs(&self.config.env);
        cmd.env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .env("HOME", home)
        .env("TMPDIR", tmp)
        .env("ENABLE_TOOL_SEARCH", "false")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_TELEMETRY", "1")
        .env("CLAUDE_CODE_MAX_RETRIES", DEFAULT_MAX_RETRIES);
        for var in PASSED_THROUGH {
            if let Some(v) = std::env::var_os(var) {
                cmd.env(var, v);
            }
        }
        let gateway = self.opts.socket_dir.join("gateway.sock");
        if gateway.exists() {
            let proxy = crate::relay::proxy_url();
            // FACTS D: claude speaks HTTP over the socket itself; the gateway adds the
            // credentials. `HIVE_MODEL_ROUTE=relay` is the fallback for a CLI that stops
            // honouring ANTHROPIC_UNIX_SOCKET: the model is reached through the loopback relay.
            match (std::env::var("HIVE_MODEL_ROUTE").as_deref(), &proxy) {
                (Ok("relay"), Some(relay)) => {
                    cmd.env("ANTHROPIC_BASE_URL", relay);
                }
                _ => {
                    cmd.env("ANTHROPIC_UNIX_SOCKET", &gateway)
                        .env("ANTHROPIC_BASE_URL", "http://model-gateway");
                }
            }
            if std::env::var_os("ANTHROPIC_API_KEY").is_none() {
                cmd.env("ANTHROPIC_API_KEY", "hive-gateway");
            }
            // The agent's tools reach its egress list through the relay (CONNECT only); the
            // model route itself never goes through the proxy.
            if let Some(proxy) = &proxy {
                for var in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"] {
                    cmd.env(var, proxy);
                }
                cmd.env("NO_PROXY", "model-gateway,127.0.0.1")
                    .env("no_proxy", "model-gateway,127.0.0.1");
            }
        } else if let Some(url) = std::env::var_os("ANTHROPIC_BASE_URL") {
            cmd.env("ANTHROPIC_BASE_URL", url);
        }
        if let Some(model) = &self.config.model {
            cmd.arg("--model").arg(model);
        }
        cmd.kill_on_drop(true);
        Ok(cmd)
    }

    /// The warm process: stream-json both ways, the hive's MCP servers, the agent's tools.
    fn command(&self, resume: Option<&str>) -> std::io::Result<Command> {
        let mut cmd = self.base_command()?;
        cmd.args([
            "--print",
            "--verbose",
            "--input-format",
            "stream-json",
            "--output-format",
            "stream-json",
            "--strict-mcp-config",
            "--mcp-config",
        ])
        .arg(self.mcp_config().to_string())
        .arg("--allowedTools")
        .arg(self.allowed_tools().join(","))
        .arg("--max-turns")
        .arg(self.opts.max_turns.to_string());
        if self.config.allowed_commands.is_empty() {
            cmd.args(["--disallowedTools", "Bash"]);
        }
        cmd.arg("--append-system-prompt").arg(self.system_prompt());
        if let Some(session) = resume {
            cmd.arg("--resume").arg(session);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        Ok(cmd)
    }

    /// A separate one-shot session beside the warm one (e.g. the notes rewrite): `system` as
    /// the whole system prompt, `prompt` the one user message, no tools, nothing kept. Every
    /// event goes to `events`; the answer's text is returned.
    pub async fn one_shot(
        &self,
        system: &str,
        prompt: &str,
        events: &UnboundedSender<Value>,
    ) -> Result<String, Failure> {
        let mut cmd = self
            .base_command()
            .map_err(|e| Failure::Died(e.to_string()))?;
        cmd.args([
            "--print",
            "--verbose",
            "--output-format",
            "stream-json",
            "--no-session-persistence",
            "--strict-mcp-config",
            "--mcp-config",
            r#"{"mcpServers":{}}"#,
            "--tools",
            "",
            "--max-turns",
            "1",
            "--system-prompt",
        ])
        .arg(system)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        let mut child = cmd.spawn().map_err(|e| {
            Failure::Died(format!(
                "cannot start claude ({}): {e}",
                self.opts.bin.display()
            ))
        })?;
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(Failure::Died("claude started without its pipes".into()));
        };
        // Written while the output is read: a long prompt must not fill the pipe unread.
        let prompt = prompt.to_owned();
        let writer = tokio::spawn(async move {
            let _ = stdin.write_all(prompt.as_bytes()).await;
        });
        let mut lines = BufReader::new(stdout).lines();
        let mut result = None;
        while let Ok(Some(line)) = lines.next_line().await {
            let Ok(event) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let is_result = event["type"] == "result";
            let _ = events.send(event.clone());
            if is_result {
                result = Some(event);
                break;
            }
        }
        let _ = writer.await;
        let _ = child.wait().await;
        let result = result.ok_or_else(|| Failure::Died("claude ended without a result".into()))?;
        let text = result["result"].as_str().unwrap_or_default().to_owned();
        if result["is_error"] == true {
            return Err(unreachable(&result, &text)
                .unwrap_or_else(|| Failure::Died(format!("claude ended with an error: {text}"))));
        }
        Ok(text)
    }

    fn start(&mut self) -> Result<&mut Running, Failure> {
        if self.running.is_none() {
            let resume = self.session();
            let mut child = self
                .command(resume.as_deref())
                .and_then(|mut c| c.spawn())
                .map_err(|e| {
                    Failure::Died(format!(
                        "cannot start claude ({}): {e}",
                        self.opts.bin.display()
                    ))
                })?;
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                return Err(Failure::Died("claude started without its pipes".into()));
            };
            eprintln!(
                "hive-agent: claude started (pid {}){}",
                child.id().unwrap_or_default(),
                resume
                    .as_deref()
                    .map(|s| format!(", resuming session {s}"))
                    .unwrap_or_default()
            );
            self.running = Some(Running {
                child,
                stdin,
                stdout: BufReader::new(stdout).lines(),
                idle_since: Instant::now(),
                resuming: resume.is_some(),
            });
        }
        Ok(self.running.as_mut().expect("started"))
    }

    /// Runs one turn: writes `prompt`, sends every event to `events`, and reads up to `result`.
    pub async fn turn(
        &mut self,
        prompt: &str,
        events: &UnboundedSender<Value>,
    ) -> Result<Answered, Failure> {
        let mut out = self.turn_inner(prompt, events).await;
        if let Err(Failure::CannotResume(why)) = &out {
            let _ = events.send(json!({"type": "harness", "subtype": "fresh_session", "message": format!("{why}; starting a fresh session")}));
            self.start_fresh().await;
            out = match self.turn_inner(prompt, events).await {
                // A fresh start resumes nothing; should it say so anyway, it is a death.
                Err(Failure::CannotResume(why)) => Err(Failure::Died(why)),
                other => other,
            };
        }
        match &out {
            Err(Failure::Died(_)) => {
                // A resumed process that died before its first init could not resume: the next
                // start is a fresh session instead of the same failure again.
                let failed_resume = self.running.as_ref().is_some_and(|r| r.resuming);
                self.stop().await;
                if failed_resume {
                    let _ = std::fs::remove_file(self.session_file());
                }
            }
            _ if self.opts.per_turn => self.stop().await,
            _ => {
                if let Some(r) = self.running.as_mut() {
                    r.idle_since = Instant::now();
                }
            }
        }
        out
    }

    async fn turn_inner(
        &mut self,
        prompt: &str,
        events: &UnboundedSender<Value>,
    ) -> Result<Answered, Failure> {
        let line = json!({"type": "user", "message": {"role": "user", "content": [{"type": "text", "text": prompt}]}});
        let state_dir = self.opts.state_dir.clone();
        let system = self.system_prompt();
        let running = self.start()?;
        let mut line = line.to_string();
        line.push('\n');
        if let Err(e) = running.stdin.write_all(line.as_bytes()).await {
            return Err(Failure::Died(format!("claude is gone (its stdin: {e})")));
        }
        let _ = running.stdin.flush().await;
        let mut tool_calls = 0u64;
        let mut context_used = None;
        let mut failed_servers: Vec<String> = Vec::new();
        let result = loop {
            let line = match running.stdout.next_line().await {
                Ok(Some(line)) => line,
                Ok(None) => {
                    let status = running
                        .child
                        .wait()
                        .await
                        .map(|s| s.to_string())
                        .unwrap_or_else(|e| e.to_string());
                    return Err(Failure::Died(format!("claude exited mid-turn ({status})")));
                }
                Err(e) => return Err(Failure::Died(format!("cannot read claude's output: {e}"))),
            };
            let Ok(event) = serde_json::from_str::<Value>(&line) else {
                let _ = events.send(json!({"type": "harness", "subtype": "output", "text": line}));
                continue;
            };
            match (event["type"].as_str(), event["subtype"].as_str()) {
                (Some("system"), Some("init")) => {
                    running.resuming = false;
                    // Kept at once: a process killed mid-turn is resumed, not started over.
                    if let Some(id) = event["session_id"].as_str() {
                        keep_session(&state_dir, id, &system);
                    }
                    failed_servers = event["mcp_servers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|s| s["status"].as_str() != Some("connected"))
                        .map(|s| {
                            format!(
                                "{} ({})",
                                s["name"].as_str().unwrap_or("?"),
                                s["status"].as_str().unwrap_or("?")
                            )
                        })
                        .collect();
                }
                (Some("assistant"), _) => {
                    tool_calls += event["message"]["content"].as_array().map_or(0, |c| {
                        c.iter().filter(|b| b["type"] == "tool_use").count() as u64
                    });
                    context_used = context_of(&event["message"]["usage"]).or(context_used);
                }
                _ => {}
            }
            let is_result = event["type"] == "result";
            let _ = events.send(event.clone());
            if is_result {
                break event;
            }
        };
        if let Some(id) = result["session_id"].as_str() {
            keep_session(&state_dir, id, &system);
        }
        let usage = usage_of(&result, tool_calls);
        let text = result["result"].as_str().unwrap_or_default().to_owned();
        if result["is_error"] == true && running.resuming {
            // No init came: claude refused the session itself (`No conversation found`) and
            // ended; the turn never reached the model.
            let errors = result["errors"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("; ");
            return Err(Failure::CannotResume(format!(
                "claude could not resume its session: {}",
                if errors.is_empty() { &text } else { &errors }
            )));
        }
        if result["is_error"] == true {
            if result["terminal_reason"] == "prompt_too_long"
                || text.starts_with("Prompt is too long")
            {
                return Err(Failure::PromptTooLong(text));
            }
            if text.contains("Not logged in")
                || text.contains("Invalid API key")
                || text.contains("/login")
            {
                return Err(Failure::NeedsLogin(text));
            }
            if let Some(unreachable) = unreachable(&result, &text) {
                return Err(unreachable);
            }
        }
        let mut error = (result["is_error"] == true).then(|| {
            format!(
                "claude ended the turn with an error ({}): {text}",
                result["subtype"].as_str().unwrap_or("?")
            )
        });
        if !failed_servers.is_empty() {
            // The model ran without those tools: a configuration fault the operator must see.
            error = Some(format!(
                "MCP server(s) failed to start: {}; check the agent's extraMcpServers",
                failed_servers.join(", ")
            ));
            self.stop().await;
        }
        Ok(Answered {
            ok: error.is_none(),
            usage,
            error,
            terminal_reason: result["terminal_reason"].as_str().map(str::to_owned),
            context: context_used
                .zip(context_window(&result))
                .map(|(used, window)| ContextFill { used, window }),
        })
    }
}

/// The tokens one model call's `usage` says the conversation took (its input, cached or not,
/// and its output, which the next call reads).
fn context_of(usage: &Value) -> Option<u64> {
    [
        "input_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "output_tokens",
    ]
    .iter()
    .filter_map(|k| usage[k].as_u64())
    .reduce(|a, b| a.saturating_add(b))
}

/// The model's context window from the result's `modelUsage` (the largest, when the turn used
/// several models).
fn context_window(result: &Value) -> Option<u64> {
    result["modelUsage"]
        .as_object()?
        .values()
        .filter_map(|m| m["contextWindow"].as_u64())
        .filter(|w| *w > 0)
        .max()
}

/// Where the system prompt the kept session began with is written.
fn session_prompt_file(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("claude-session-prompt")
}

/// Writes the session id to `state/claude-session`, then the system prompt it runs under to
/// `state/claude-session-prompt` (each through a temporary file: never half written). In this
/// order, a harness killed between the two leaves a new id beside an old prompt, which is not
/// resumed; never an old session beside the new prompt.
fn keep_session(state_dir: &std::path::Path, id: &str, system: &str) {
    for (file, text) in [
        (state_dir.join("claude-session"), id),
        (session_prompt_file(state_dir), system),
    ] {
        if std::fs::read_to_string(&file).is_ok_and(|s| s == text) {
            continue;
        }
        let mut tmp = file.clone().into_os_string();
        tmp.push(".tmp");
        let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &file));
        if let Err(e) = written {
            eprintln!(
                "hive-agent: cannot keep the claude session in {}: {e}",
                file.display()
            );
            return;
        }
    }
}

/// The turn's accounting from claude's `result` event.
fn usage_of(result: &Value, tool_calls: u64) -> Usage {
    let u = &result["usage"];
    let input = [
        "input_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    ]
    .iter()
    .filter_map(|k| u[k].as_u64())
    .reduce(|a, b| a + b);
    Usage {
        input_tokens: input,
        output_tokens: u["output_tokens"].as_u64(),
        cache_read_tokens: u["cache_read_input_tokens"].as_u64(),
        cost_usd: result["total_cost_usd"].as_f64(),
        duration_ms: result["duration_ms"].as_u64(),
        tool_calls: Some(tool_calls),
    }
}

/// The claude binary: the flag, else `HIVE_CLAUDE`, else `claude` on PATH.
pub fn default_bin() -> PathBuf {
    std::env::var_os("HIVE_CLAUDE").map_or_else(|| PathBuf::from("claude"), PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parts of a failed turn's `result` the pinned claude CLI wrote against a provider that
    /// refused the connection, dropped it, never answered, or answered with an error status.
    fn result(status: Option<u16>, kind: Option<&str>, text: &str) -> Value {
        json!({"type": "result", "subtype": "success", "is_error": true,
               "terminal_reason": "api_error", "api_error_status": status, "api_error": kind,
               "result": text})
    }

    fn is_unreachable(result: &Value) -> bool {
        let text = result["result"].as_str().unwrap();
        matches!(unreachable(result, text), Some(Failure::Unreachable { .. }))
    }

    #[test]
    fn an_unreachable_upstream_is_told_from_an_answering_one() {
        let down = [
            result(
                None,
                Some("connection_failed"),
                "API Error: Connection refused — a firewall or proxy may be blocking it (ECONNREFUSED)",
            ),
            result(
                None,
                Some("connection_failed"),
                "API Error: Connection dropped (ECONNRESET). Check the gateway set in ANTHROPIC_BASE_URL, then try again.",
            ),
            result(
                None,
                None,
                "Request timed out. If the API is slow to answer, or a proxy or gateway holds responses, set API_TIMEOUT_MS above 3000.",
            ),
            result(
                Some(500),
                None,
                "API Error: 500 Internal server error. This is a server-side issue, usually temporary — try again in a moment.",
            ),
            result(
                Some(502),
                None,
                "API Error: 502 the hive's model gateway cannot reach http://x: client error (Connect)",
            ),
            // A CLI that does not type its errors: the status in the text.
            result(None, None, "API Error: 503 Service Unavailable"),
        ];
        for r in &down {
            assert!(is_unreachable(r), "{r}");
        }
        let answering = [
            result(
                Some(529),
                None,
                "API Error: 529 Overloaded. This is a server-side issue, usually temporary",
            ),
            result(
                Some(429),
                None,
                "API Error: Request rejected (429) · Number of requests",
            ),
            result(
                Some(429),
                None,
                &format!("API Error: 429 the agent's {}", proto::BUDGET_SPENT),
            ),
            result(Some(400), None, "API Error: 400 bad thing"),
            result(None, None, "API Error: 400 bad thing"),
            result(None, Some("max_output_tokens"), "the answer was cut"),
        ];
        for r in &answering {
            assert!(!is_unreachable(r), "{r}");
        }
    }

    #[test]
    fn the_open_breaker_says_when_to_try_again() {
        let text = format!(
            "API Error: 503 the hive's model gateway stopped calling http://x after 5 failures \
             in a row; it {}7 s. This is a server-side issue",
            proto::BREAKER_RETRY_IN
        );
        let Some(Failure::Unreachable { retry_in, .. }) =
            unreachable(&result(Some(503), None, &text), &text)
        else {
            panic!("not unreachable: {text}");
        };
        assert_eq!(retry_in, Some(Duration::from_secs(7)));
        assert_eq!(
            breaker_retry_in("API Error: 500 Internal server error"),
            None
        );
        assert_eq!(breaker_retry_in(proto::BREAKER_RETRY_IN), None);
    }
}
