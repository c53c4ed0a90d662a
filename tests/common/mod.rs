//! What the daemon tests share: a real `hive serve` process in a temp state dir, its readiness
//! learned from a fake systemd notify socket, a raw HTTP client for the admin socket, and direct
//! looks into the sqlite file.
#![allow(dead_code)]

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;

pub const HIVE: &str = env!("CARGO_BIN_EXE_hive");

/// A copy of the `hive` binary that another uid can execute: the build tree may sit under a home
/// directory only its owner can enter (root's is 0700). Keep the returned dir alive while used.
pub fn hive_for_other_uids() -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.path().join("hive");
    // Copied by a child process: a write descriptor open in this (multi-threaded) test process
    // would be inherited by any child another test forks meanwhile, and exec of the copy would
    // fail with ETXTBSY until that child execs.
    let status = std::process::Command::new("install")
        .args(["-m", "0755", HIVE])
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success(), "install {HIVE}: {status}");
    (dir, copy)
}

/// A running `hive serve`.
pub struct Daemon {
    pub state: PathBuf,
    child: Option<Child>,
    notify: UnixDatagram,
    _notify_dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts `hive serve` on `state` with `config` as its hive.toml and waits for READY=1.
    /// Unless `config` has a `[runtime]` section, the hive runs no agents (`kind = "none"`):
    /// the tests of mail, approvals and the API do not build or start containers; the container
    /// tests say which runtime they want. Unless it has a `[dashboard]` section, the dashboard is
    /// off.
    pub fn start(state: &Path, config: &str) -> Self {
        Self::start_with_env(state, config, &[])
    }

    pub fn start_with_env(state: &Path, config: &str, env: &[(&str, &str)]) -> Self {
        Self::start_logging_to(state, config, env, None)
    }

    /// As `start_with_env`, with the daemon's stderr written to `stderr` when given.
    pub fn start_logging_to(
        state: &Path,
        config: &str,
        env: &[(&str, &str)],
        stderr: Option<&Path>,
    ) -> Self {
        std::fs::create_dir_all(state).unwrap();
        let config = if config.contains("[runtime]") {
            config.to_owned()
        } else {
            format!("{config}\n[runtime]\nkind = \"none\"\n")
        };
        // The dashboard listens on TCP: off unless a test asks for it (then on port 0).
        let config = if config.contains("[dashboard]") {
            config
        } else {
            format!("{config}\n[dashboard]\nenabled = false\n")
        };
        std::fs::write(state.join("hive.toml"), config).unwrap();
        let notify_dir = tempfile::tempdir().unwrap();
        let notify_path = notify_dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let child = Command::new(HIVE)
            .args(["serve", "--state-dir"])
            .arg(state)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stderr(match stderr {
                Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
                None => Stdio::inherit(),
            })
            .spawn()
            .unwrap();
        let daemon = Self {
            state: state.to_owned(),
            child: Some(child),
            notify,
            _notify_dir: notify_dir,
        };
        let mut daemon = daemon;
        let first = match daemon.notification() {
            Ok(first) => first,
            Err(e) => {
                let exited = daemon.child.as_mut().unwrap().try_wait().unwrap();
                panic!(
                    "the daemon said nothing to systemd ({e}; exit: {exited:?}); its stderr is above"
                )
            }
        };
        assert!(
            first.lines().any(|l| l == "READY=1"),
            "first notification: {first:?}"
        );
        daemon
    }

    /// The next message the daemon sent to its notify socket, if one comes within 30 s.
    pub fn next_notification(&self) -> Option<String> {
        self.notification().ok()
    }

    /// The daemon's next message to systemd, or why none came. A signal handled in this process
    /// cuts a socket read with a timeout short even under SA_RESTART: that read is tried again.
    fn notification(&self) -> std::io::Result<String> {
        let mut buf = [0u8; 4096];
        loop {
            match self.notify.recv(&mut buf) {
                Ok(n) => return Ok(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    pub fn sigterm(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        signal(child.id(), nix::sys::signal::Signal::SIGTERM);
        child.wait().unwrap()
    }

    pub fn db(&self) -> rusqlite::Connection {
        open_db(&self.state)
    }
}

impl Drop for Daemon {
    /// SIGTERM (so a hive running containers stops them and removes their cgroups), then
    /// SIGKILL after 20 s.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let end = std::time::Instant::now() + Duration::from_secs(20);
            while std::time::Instant::now() < end {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
}

pub fn open_db(state: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(state.join("hive.db")).unwrap()
}

/// (messages rows, agents rows, every message as `id:sender:recipient:state`).
pub fn db_snapshot(state: &Path) -> (i64, i64, String) {
    let db = open_db(state);
    let count = |t: &str| {
        db.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
            .unwrap()
    };
    let rows: String = db
        .query_row(
            "SELECT coalesce(group_concat(id||':'||sender||':'||recipient||':'||state, ','), '')
             FROM messages",
            [],
            |r| r.get(0),
        )
        .unwrap();
    (count("messages"), count("agents"), rows)
}

/// The `hive` CLI against `state`, to run.
fn hive_cli(state: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(HIVE);
    command
        .args(args)
        .env("HIVE_STATE_DIR", state)
        .env_remove("RUST_LOG");
    command
}

/// Runs the `hive` CLI against `state`.
pub fn cli(state: &Path, args: &[&str]) -> Output {
    hive_cli(state, args).stdin(Stdio::null()).output().unwrap()
}

/// Runs the `hive` CLI against `state` with `input` on its stdin.
pub fn cli_with_stdin(state: &Path, args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = hive_cli(state, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// Runs `hive ARGS`, which must succeed, and returns its stdout.
pub fn cli_ok(state: &Path, args: &[&str]) -> String {
    let out = cli(state, args);
    assert!(out.status.success(), "hive {args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// One HTTP request on the admin socket; the raw body lets tests send malformed JSON. `None` when
/// the daemon is not there or went away mid-request.
pub async fn try_api(state: &Path, method: &str, path: &str, body: &str) -> Option<(u16, Value)> {
    let stream = tokio::net::UnixStream::connect(state.join("run/admin.sock"))
        .await
        .ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "hive")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .ok()?;
    let resp = sender.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.ok()?.to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::String(text(&bytes)));
    Some((status, value))
}

/// [`try_api`] against a daemon that must answer.
pub async fn api(state: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    try_api(state, method, path, body.unwrap_or(""))
        .await
        .unwrap_or_else(|| panic!("the hive did not answer {method} {path}"))
}

/// Runs git in `repo` as the manager would and returns its stdout; fails the test on error.
pub fn git(repo: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["-c", "user.name=manager", "-c", "user.email=manager@hive"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", text(&out.stderr));
    text(&out.stdout).trim().to_owned()
}

/// Sends as the operator over the admin socket and returns the id, once acknowledged.
pub async fn send(state: &Path, to: &str, body: &str) -> i64 {
    let req = serde_json::json!({"to": to, "body": body}).to_string();
    let (status, v) = api(state, "POST", "/api/v1/messages", Some(&req)).await;
    assert_eq!(status, 201, "{v}");
    v["ids"][0].as_i64().unwrap()
}

/// Waits until `f` holds, at most `limit`.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

/// The lines `out` prints, as they come, on a channel (read on a thread of its own: a test waits
/// for the next line with a timeout instead of sleeping).
pub fn lines_of(out: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    lines
}

/// A real rmcp client on one of an agent's sockets.
pub type McpClient = rmcp::service::RunningService<rmcp::service::RoleClient, ()>;

/// Connects to `run/agents/<agent>/<socket>` and finishes the MCP handshake.
pub fn mcp_connect(
    rt: &tokio::runtime::Runtime,
    state: &Path,
    agent: &str,
    socket: &str,
) -> McpClient {
    use rmcp::ServiceExt;
    let path = state.join("run/agents").join(agent).join(socket);
    let stream = rt.block_on(tokio::net::UnixStream::connect(path)).unwrap();
    rt.block_on(().serve(stream)).unwrap()
}

/// Calls a tool: (is_error, text).
pub async fn mcp_try(client: &McpClient, tool: &str, args: Value) -> (bool, String) {
    let result = client
        .call_tool(
            rmcp::model::CallToolRequestParams::new(tool.to_owned())
                .with_arguments(args.as_object().cloned().unwrap()),
        )
        .await
        .unwrap();
    let text = result.content[0].as_text().unwrap().text.clone();
    (result.is_error.unwrap_or(false), text)
}

/// Calls a tool that must succeed and returns its JSON result.
pub async fn mcp_ok(client: &McpClient, tool: &str, args: Value) -> Value {
    let (failed, text) = mcp_try(client, tool, args).await;
    assert!(!failed, "{tool}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// When the system started `agent` (the audit rows a restart writes), unix ms, oldest first.
pub fn system_starts(state: &Path, agent: &str) -> Vec<i64> {
    let db = open_db(state);
    let mut stmt = db
        .prepare(
            "SELECT ts FROM audit WHERE action = 'start' AND actor = 'system' AND agent = ?1
             ORDER BY id",
        )
        .unwrap();
    stmt.query_map([agent], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The processes of `agent`'s container in this hive (other tests' hives run their own agents of
/// the same name in the same uid range): every descendant of the nspawn whose command line binds
/// this state dir's socket directory of `agent`.
pub fn container_pids(state: &Path, agent: &str) -> Vec<u32> {
    let bound = state.join("run/agents").join(agent).display().to_string();
    let roots: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|pid: &u32| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("systemd-nspawn") && c.contains(&bound)
            })
        })
        .collect();
    let mut out = Vec::new();
    let mut todo = roots;
    while let Some(pid) = todo.pop() {
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                out.push(child);
                todo.push(child);
            }
        }
    }
    out
}

/// The host pid of `agent`'s payload (`hive-agent serve`) in its container in this hive.
pub fn harness_pid(state: &Path, agent: &str) -> Option<u32> {
    container_pids(state, agent).into_iter().find(|pid| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("hive-agent\0serve"))
    })
}
