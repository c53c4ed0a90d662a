//! A running `hive-agent serve` against a [`TestHive`] and the waits the turn tests share.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use broker::mailbox::{Message, RecvLimits};
use broker::names::{Inbox, Recipient, Sender};
use serde_json::Value;
use testkit::model_server::ModelServer;
use testkit::tools;

use super::{TestHive, hive_agent, name};

/// How long any one wait in these tests may take.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A running `hive-agent serve` for agent `alice`, its stderr in a file; killed on drop.
pub struct Harness {
    pub child: Child,
    pub stderr: PathBuf,
    pub state: PathBuf,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Harness {
    pub fn start(hive: &TestHive, server: &ModelServer, config: Value, idle_seconds: u64) -> Self {
        Self::start_with_env(hive, server, config, idle_seconds, &[])
    }

    pub fn start_with_env(
        hive: &TestHive,
        server: &ModelServer,
        config: Value,
        idle_seconds: u64,
        env: &[(&str, &str)],
    ) -> Self {
        let claude = tools::claude_bin().expect("claude");
        let dir = hive.scratch("harness");
        let (home, tmp, state) = (dir.join("home"), dir.join("tmp"), dir.join("state"));
        for d in [&home, &tmp, &state] {
            std::fs::create_dir_all(d).unwrap();
        }
        let config_file = dir.join("agent.json");
        std::fs::write(&config_file, config.to_string()).unwrap();
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let stderr = dir.join(format!("stderr-{started}"));
        let socket_dir = hive.hive.state_dir().agent_run_dir(&name("alice"));
        let child = Command::new(hive_agent())
            .arg("serve")
            .arg("--socket-dir")
            .arg(&socket_dir)
            .arg("--config")
            .arg(&config_file)
            .arg("--state-dir")
            .arg(&state)
            .arg("--claude")
            .arg(&claude)
            .arg("--idle-seconds")
            .arg(idle_seconds.to_string())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("TMPDIR", &tmp)
            .env("ANTHROPIC_BASE_URL", server.base_url())
            .env("ANTHROPIC_API_KEY", "sk-test")
            .env("CLAUDE_CODE_MAX_RETRIES", "0")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Self {
            child,
            stderr,
            state,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// How many times the harness started claude (each start prints one line).
    pub fn claude_starts(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("claude started"))
            .map(str::to_owned)
            .collect()
    }

    /// Waits until the harness's log satisfies `done`.
    pub async fn wait_log(&self, what: &str, done: impl Fn(&str) -> bool) {
        until(what, || done(&self.log())).await;
        assert!(done(&self.log()), "{what}:\n{}", self.log());
    }

    /// The pid of the claude child of this harness, when one runs.
    pub fn claude_pid(&self) -> Option<u32> {
        children_of(self.child.id())
            .into_iter()
            .find(|pid| argv(*pid).iter().any(|a| a == "--input-format"))
    }
}

pub fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid …: comm may hold spaces, so read after its last ')'.
        let after = &stat[stat.rfind(')').unwrap_or(0) + 1..];
        let ppid = after.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

pub fn argv(pid: u32) -> Vec<String> {
    nul_separated(&format!("/proc/{pid}/cmdline"))
}

/// The environment of process `pid`, `NAME=value` each.
pub fn environ(pid: u32) -> Vec<String> {
    nul_separated(&format!("/proc/{pid}/environ"))
}

fn nul_separated(path: &str) -> Vec<String> {
    std::fs::read(path)
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Polls `done` (cheap reads of observable state) until it holds or [`DEADLINE`] passes.
pub async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn send(hive: &TestHive, from: &str, to: &str, body: &str) -> i64 {
    let from = if from == "operator" {
        Sender::Operator
    } else {
        Sender::Agent(name(from))
    };
    hive.hive
        .send(&from, &Recipient::parse(to).unwrap(), body.into(), None)
        .await
        .unwrap()[0]
}

/// Asserts that nothing (more) waits in `agent`'s inbox.
pub async fn nothing_more_for(hive: &TestHive, agent: &str) {
    let more = hive
        .hive
        .recv(&Inbox::Agent(name(agent)), RecvLimits::new(0, 32).unwrap())
        .await
        .unwrap();
    assert!(more.is_empty(), "{more:?}");
}

/// Waits for the next message in `inbox` and takes it.
pub async fn receive(hive: &TestHive, inbox: Inbox) -> Message {
    let got = hive
        .hive
        .recv(&inbox, RecvLimits::new(60, 1).unwrap())
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "no message in time: {got:?}");
    got.into_iter().next().unwrap()
}
