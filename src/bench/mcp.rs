//! Rows 6 and 7: the MCP surfaces over their real unix sockets. The hive (with `serve_mcp`) runs on
//! this process's tokio runtime; the rmcp clients run, by default, in a second `hive-bench`
//! process (this executable re-run with the hidden `--mcp-client TASK` flag, TASK as JSON; it
//! prints its figures as JSON on stdout), as an agent's MCP client would: in another process. With
//! `--mcp-clients thread` they run on a second tokio runtime in this process instead.
//!
//! - Row 6: agent `alice` calls `send` on her socket; agent `bob` waits in `recv`
//!   (wait_seconds 60) on his; time from just before the `send` call to the return of bob's
//!   `recv` call (6b: to the return of the `send` call). Both clients are in the client process,
//!   so both instants are read from one clock.
//! - Row 7: tool calls per second, each client calling one tool back to back (the next call when
//!   the previous one has returned) on its own connection; with 16 clients, one per agent socket.
//!   Its limit, `echo`, is the same traffic without MCP: the client process writes a 200-byte line
//!   and reads it back from a tokio echo server in this process, over the same kind of socket.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use broker::config::Synchronous;
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::service::{RoleClient, RunningService};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::inproc::{REARM, TempHive, body};
use crate::limits::BODY_BYTES;
use crate::stats::{Samples, count_over_window};

/// Where the MCP clients of rows 6 and 7 run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Place {
    /// A second `hive-bench` process (this executable, re-run as a client).
    Process,
    /// A second tokio runtime (two worker threads), in this process.
    Thread,
}

impl Place {
    pub fn describe(self) -> &'static str {
        match self {
            Self::Process => "clients in a second process",
            Self::Thread => "clients on a second runtime in this process",
        }
    }
}

/// What a client process is asked to do (passed as JSON to `--mcp-client`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "snake_case")]
pub enum ClientTask {
    /// Row 6: `samples` sends on `sender`'s socket, each to `to`, whose waiting `recv` runs on
    /// `receiver`'s socket.
    Latency {
        sender: PathBuf,
        receiver: PathBuf,
        to: String,
        samples: usize,
    },
    /// Row 7: one client per socket, each making `call` back to back.
    Calls {
        sockets: Vec<PathBuf>,
        call: Call,
        warmup_ms: u64,
        window_ms: u64,
    },
}

/// The call row 7 repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Call {
    /// MCP `whoami`: no store access, a registry read.
    Whoami,
    /// MCP `send` of 200 bytes to the manager: one durable commit.
    Send,
    /// Not MCP: a 200-byte line to an echo server and back (the transport alone).
    Echo,
}

/// What a client process reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientReport {
    /// Row 6: `send` called → the waiting `recv` returned, in ns.
    #[serde(default)]
    pub wake_ns: Vec<u64>,
    /// Row 6: `send` called → `send` returned, in ns.
    #[serde(default)]
    pub ack_ns: Vec<u64>,
    /// Row 7: calls completed in the window, and the window's exact length.
    #[serde(default)]
    pub calls: u64,
    #[serde(default)]
    pub seconds: f64,
}

impl ClientReport {
    pub fn per_second(&self) -> f64 {
        self.calls as f64 / self.seconds
    }
}

fn samples(ns: &[u64]) -> Samples {
    Samples::new(ns.iter().map(|&n| Duration::from_nanos(n)).collect())
}

// ---- the client side ----

type Client = RunningService<RoleClient, ()>;

async fn connect(socket: &Path) -> anyhow::Result<Client> {
    let stream = UnixStream::connect(socket)
        .await
        .with_context(|| format!("cannot connect to {}", socket.display()))?;
    Ok(().serve(stream).await?)
}

/// One tool call; its text, or an error when the call or the tool failed.
async fn call(
    client: &Client,
    tool: &'static str,
    args: &Map<String, Value>,
) -> anyhow::Result<String> {
    let params = CallToolRequestParams::new(tool).with_arguments(args.clone());
    let result = client.call_tool(params).await?;
    let text: String = result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.as_str()))
        .collect();
    if result.is_error == Some(true) {
        bail!("{tool} failed: {text}");
    }
    Ok(text)
}

fn object(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

/// The entry point of `hive-bench --mcp-client TASK`: runs the task, prints its report as JSON.
pub fn client_main(task: &str) -> anyhow::Result<()> {
    let task: ClientTask = serde_json::from_str(task).context("a bad --mcp-client task")?;
    let report = run_task(task)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Runs a client task on a fresh multi-thread runtime with two workers (the hive's runtime has as
/// many as the machine has cores: two on the machines of §19), blocking this thread.
fn run_task(task: ClientTask) -> anyhow::Result<ClientReport> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("hive-bench-client")
        .build()?;
    // The work runs on the workers (as the hive's tasks do), not on this thread.
    let work = runtime.spawn(async move {
        match task {
            ClientTask::Latency {
                sender,
                receiver,
                to,
                samples,
            } => latency(&sender, &receiver, &to, samples).await,
            ClientTask::Calls {
                sockets,
                call,
                warmup_ms,
                window_ms,
            } => {
                calls(
                    &sockets,
                    call,
                    Duration::from_millis(warmup_ms),
                    Duration::from_millis(window_ms),
                )
                .await
            }
        }
    });
    let report = runtime
        .block_on(work)
        .unwrap_or_else(|e| Err(anyhow::anyhow!("the client task panicked: {e}")));
    runtime.shutdown_timeout(Duration::from_secs(5));
    report
}

async fn latency(
    sender: &Path,
    receiver: &Path,
    to: &str,
    n: usize,
) -> anyhow::Result<ClientReport> {
    let alice = connect(sender).await?;
    let bob = connect(receiver).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, mut woke) = tokio::sync::mpsc::unbounded_channel();
    let waiter = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let wait = object(json!({"wait_seconds": 60}));
            while !stop.load(Ordering::Relaxed) {
                let got = call(&bob, "recv", &wait).await?;
                if got.trim() == "[]" {
                    continue;
                }
                if tx.send(Instant::now()).is_err() {
                    break;
                }
            }
            anyhow::Ok(bob)
        })
    };
    let send = object(json!({"to": to, "body": body()}));
    let warmup = (n / 10).max(20);
    let mut report = ClientReport::default();
    for i in 0..n + warmup {
        tokio::time::sleep(REARM).await;
        let t0 = Instant::now();
        call(&alice, "send", &send).await?;
        let acked = t0.elapsed();
        let at = woke.recv().await.context("the waiting recv stopped")?;
        if i >= warmup {
            report
                .wake_ns
                .push(at.saturating_duration_since(t0).as_nanos() as u64);
            report.ack_ns.push(acked.as_nanos() as u64);
        }
    }
    stop.store(true, Ordering::Relaxed);
    // One more message lets the waiter see `stop`.
    call(&alice, "send", &send).await?;
    let bob = waiter.await.context("the waiter panicked")??;
    let _ = bob.cancel().await;
    let _ = alice.cancel().await;
    Ok(report)
}

async fn calls(
    sockets: &[PathBuf],
    what: Call,
    warmup: Duration,
    window: Duration,
) -> anyhow::Result<ClientReport> {
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(sockets.len());
    for socket in sockets {
        let (count, stop) = (count.clone(), stop.clone());
        if what == Call::Echo {
            let stream = UnixStream::connect(socket).await?;
            tasks.push(tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut read = BufReader::new(read);
                let mut line = "x".repeat(BODY_BYTES - 1);
                line.push('\n');
                let mut back = String::with_capacity(BODY_BYTES);
                while !stop.load(Ordering::Relaxed) {
                    write.write_all(line.as_bytes()).await?;
                    back.clear();
                    if read.read_line(&mut back).await? == 0 {
                        bail!("the echo server hung up");
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }));
            continue;
        }
        let client = connect(socket).await?;
        let (tool, args) = match what {
            Call::Whoami => ("whoami", Map::new()),
            _ => ("send", object(json!({"to": "manager", "body": body()}))),
        };
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                call(&client, tool, &args).await?;
                count.fetch_add(1, Ordering::Relaxed);
            }
            let _ = client.cancel().await;
            Ok(())
        }));
    }
    let (calls, seconds) = count_over_window(&count, &stop, tasks, warmup, window).await?;
    Ok(ClientReport {
        calls,
        seconds,
        ..ClientReport::default()
    })
}

// ---- the hive side ----

/// Runs `task` where `place` says and returns its report.
async fn run_clients(place: Place, task: ClientTask) -> anyhow::Result<ClientReport> {
    match place {
        Place::Process => {
            let me = std::env::current_exe().context("cannot find this executable")?;
            let output = tokio::process::Command::new(me)
                .arg("--mcp-client")
                .arg(serde_json::to_string(&task)?)
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::inherit())
                .kill_on_drop(true)
                .output()
                .await
                .context("cannot start the client process")?;
            if !output.status.success() {
                bail!("the client process failed ({})", output.status);
            }
            serde_json::from_slice(&output.stdout).context("a bad report from the client process")
        }
        Place::Thread => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::Builder::new()
                .name("hive-bench-clients".into())
                .spawn(move || {
                    let _ = tx.send(run_task(task));
                })?;
            rx.await.context("the client thread panicked")?
        }
    }
}

/// A hive serving MCP on its agents' sockets until dropped.
struct McpHive {
    h: TempHive,
    shutdown: CancellationToken,
}

impl McpHive {
    async fn open(agents: &[String]) -> anyhow::Result<Self> {
        let h = TempHive::open(Synchronous::Normal).await?;
        for a in agents {
            h.agent(a).await?;
        }
        let shutdown = CancellationToken::new();
        h.hive
            .serve_mcp(&broker::components::Scope::new(shutdown.clone()))?;
        Ok(Self { h, shutdown })
    }

    fn socket(&self, agent: &str) -> anyhow::Result<PathBuf> {
        let name = broker::names::AgentName::parse(agent)?;
        Ok(self
            .h
            .hive
            .state_dir()
            .agent_run_dir(&name)
            .join("mcp.sock"))
    }
}

impl Drop for McpHive {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Row 6's two figures.
#[derive(Debug, Clone)]
pub struct McpLatency {
    /// `send` called → the waiting `recv` returned.
    pub wake: Samples,
    /// `send` called → `send` returned.
    pub ack: Samples,
}

/// Row 6: `n` MCP sends from `alice` to `bob`, whose `recv` waits on his own socket.
pub async fn send_to_waiting_recv(place: Place, n: usize) -> anyhow::Result<McpLatency> {
    let hive = McpHive::open(&["alice".into(), "bob".into()]).await?;
    let report = run_clients(
        place,
        ClientTask::Latency {
            sender: hive.socket("alice")?,
            receiver: hive.socket("bob")?,
            to: "bob".into(),
            samples: n,
        },
    )
    .await?;
    Ok(McpLatency {
        wake: samples(&report.wake_ns),
        ack: samples(&report.ack_ns),
    })
}

/// Row 7's figures for one number of connections, in calls per second.
#[derive(Debug, Clone, Copy)]
pub struct McpRates {
    pub connections: usize,
    pub whoami: f64,
    pub send: f64,
    /// The same number of connections echoing 200-byte lines, without MCP.
    pub echo: f64,
}

/// Row 7: calls per second on 1 and on `many` connections (one agent socket each).
pub async fn calls_per_second(
    place: Place,
    many: usize,
    warmup: Duration,
    window: Duration,
) -> anyhow::Result<Vec<McpRates>> {
    let agents: Vec<String> = (0..many).map(|i| format!("agent-{i:02}")).collect();
    let hive = McpHive::open(&agents).await?;
    let sockets = agents
        .iter()
        .map(|a| hive.socket(a))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let echo = EchoServer::start(hive.h.dir.path().join("bench-echo.sock"))?;
    let mut out = Vec::new();
    for connections in [1, many] {
        let rate = |call: Call| {
            let sockets = if call == Call::Echo {
                vec![echo.socket.clone(); connections]
            } else {
                sockets[..connections].to_vec()
            };
            run_clients(
                place,
                ClientTask::Calls {
                    sockets,
                    call,
                    warmup_ms: warmup.as_millis() as u64,
                    window_ms: window.as_millis() as u64,
                },
            )
        };
        let whoami = rate(Call::Whoami).await?.per_second();
        let send = rate(Call::Send).await?.per_second();
        let echo = rate(Call::Echo).await?.per_second();
        out.push(McpRates {
            connections,
            whoami,
            send,
            echo,
        });
    }
    Ok(out)
}

/// A line echo server on a unix socket, on this process's runtime, until dropped.
struct EchoServer {
    socket: PathBuf,
    shutdown: CancellationToken,
}

impl EchoServer {
    fn start(socket: PathBuf) -> anyhow::Result<Self> {
        let listener = UnixListener::bind(&socket)?;
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => return,
                    },
                };
                tokio::spawn(stop.clone().run_until_cancelled_owned(echo(stream)));
            }
        });
        Ok(Self { socket, shutdown })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn echo(stream: UnixStream) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut line = String::with_capacity(BODY_BYTES);
    loop {
        line.clear();
        if read.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        write.write_all(line.as_bytes()).await?;
    }
}
