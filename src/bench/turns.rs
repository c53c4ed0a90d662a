//! Row 11: agents act.
//! - 11a: a message sent → the claude process's stdin written, through the real daemon and the real
//!   harness (`[runtime] kind = "process"`), with this executable standing in for claude (it notes
//!   when each stdin line arrives and answers at once), so only the hive's own path is measured.
//! - 11b: a warm turn of the real claude CLI (one process kept between turns, one stdin line per
//!   turn) against a per-turn process (`--print PROMPT`, one process per turn), both against a local
//!   model stand-in that answers at once.
//! - 11c: `hive-agent`'s idle RSS (from 11a) and the warm claude process's RSS (from 11b).
//! - 11d: the model route's added latency: the first byte of a streamed answer through the agent's
//!   `gateway.sock` against a direct connection to the same upstream.
//! - 11e: the model route's streamed throughput: a 32 MiB answer of small SSE events (each scanned
//!   by the gateway for usage) through `gateway.sock` against the same answer direct.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::containers::wait_up;
use crate::daemon::{self, Daemon, Memory};
use crate::stats::Samples;

pub struct Figures {
    pub to_stdin: Samples,
    pub warm_turn: Samples,
    pub per_turn: Samples,
    pub harness: Memory,
    pub claude_warm: Memory,
    pub gateway_first_byte: Samples,
    pub direct_first_byte: Samples,
    /// 11e: MiB/s of each bulk answer, through the gateway and direct.
    pub gateway_mib_s: Vec<f64>,
    pub direct_mib_s: Vec<f64>,
}

/// The size of 11e's bulk answer.
const BULK_BYTES: usize = 32 * 1024 * 1024;

/// 11e's answer: text deltas of 64 characters as the provider streams them, then the usage.
fn bulk_body() -> Bytes {
    static BODY: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    BODY.get_or_init(|| {
        let delta = format!(
            "event: content_block_delta\ndata: {}\n\n",
            json!({"type":"content_block_delta","index":0,
                   "delta":{"type":"text_delta","text":"x".repeat(64)}})
        );
        let mut body = String::with_capacity(BULK_BYTES + 1024);
        body.push_str("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-bench\",\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n");
        while body.len() < BULK_BYTES {
            body.push_str(&delta);
        }
        body.push_str("event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":500000}}\n\n");
        Bytes::from(body)
    })
    .clone()
}

/// The file the stand-in claude looks for, walking up from its working directory.
const STAND_IN_SOCKET: &str = "bench-claude.sock";

/// Whether this process was started as claude by a harness (its stream-json flags).
pub fn is_stand_in_claude() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .any(|w| w[0] == "--input-format" && w[1] == "stream-json")
}

/// The stand-in claude: for each stdin line, sends the wall-clock time it arrived (ns since the
/// epoch) to the bench's socket, then prints `system/init` (first line only) and a `result`.
pub fn stand_in_claude_main() -> anyhow::Result<()> {
    let mut dir = std::env::current_dir()?;
    let socket = loop {
        let candidate = dir.join(STAND_IN_SOCKET);
        if candidate.exists() {
            break candidate;
        }
        if !dir.pop() {
            bail!("no {STAND_IN_SOCKET} above the working directory");
        }
    };
    let mut report = std::os::unix::net::UnixStream::connect(&socket)?;
    let stdout = std::io::stdout();
    let mut first = true;
    for line in std::io::stdin().lock().lines() {
        let _line = line?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
        writeln!(report, "{now}")?;
        let mut out = stdout.lock();
        if first {
            first = false;
            let init = json!({"type": "system", "subtype": "init", "session_id": "bench",
                "mcp_servers": [{"name": "hive", "status": "connected"}]});
            writeln!(out, "{init}")?;
        }
        let result = json!({"type": "result", "subtype": "success", "is_error": false,
            "result": "ok", "session_id": "bench", "duration_ms": 0,
            "usage": {"input_tokens": 1, "output_tokens": 1}});
        writeln!(out, "{result}")?;
        out.flush()?;
    }
    Ok(())
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// 11a and `hive-agent`'s idle RSS.
async fn to_stdin(hive: &Path, samples: usize) -> anyhow::Result<(Samples, Memory)> {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state)?;
    std::fs::write(
        state.join("hive.toml"),
        "[runtime]\nkind = \"process\"\nstop_timeout_seconds = 5\n",
    )?;
    let listener = tokio::net::UnixListener::bind(dir.path().join(STAND_IN_SOCKET))?;
    let me = std::env::current_exe()?;
    let d = Daemon::start_with_env(hive, &state, &[("HIVE_CLAUDE", me.as_os_str())])?;
    // The manager would take turns on the watcher's events (`spawned` …) with a stand-in of its
    // own, talking to the same socket: paused, it takes none.
    let (code, v) = d.call("POST", "/api/v1/agents/manager/pause", "{}").await?;
    ensure!(code < 300, "pausing the manager answered {code}: {v}");
    let (code, v) = d
        .call("POST", "/api/v1/agents", r#"{"name":"bench-t"}"#)
        .await?;
    ensure!(code < 300, "spawn answered {code}: {v}");
    let run = wait_up(&d, "bench-t").await?;
    let pid = run["pid"].as_u64().context("no pid in the run")? as u32;

    // The harness starts its claude at the first message: one turn to warm up.
    let send = r#"{"to":"bench-t","body":"ping"}"#;
    let (code, v) = d.call("POST", "/api/v1/messages", send).await?;
    ensure!(code < 300, "send answered {code}: {v}");
    let (stream, _) = tokio::time::timeout(Duration::from_secs(60), listener.accept())
        .await
        .context("the harness did not start the stand-in claude within 60 s")??;
    let mut lines = BufReader::new(stream).lines();
    lines.next_line().await?.context("the stand-in closed")?;
    let idle = wait_idle(&d).await?;
    ensure!(idle, "the first turn did not end");
    let harness = daemon::memory(pid)?;

    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t0 = now_ns();
        let (code, v) = d.call("POST", "/api/v1/messages", send).await?;
        ensure!(code < 300, "send answered {code}: {v}");
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .context("no stdin line within 10 s")??
            .context("the stand-in closed")?;
        let at: u128 = line.trim().parse()?;
        out.push(Duration::from_nanos(at.saturating_sub(t0) as u64));
        wait_idle(&d).await?;
    }
    d.stop()?;
    Ok((Samples::new(out), harness))
}

/// Waits until the agent's turn ended (`idle`) and its harness is back in `next_turn`.
async fn wait_idle(d: &Daemon) -> anyhow::Result<bool> {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, a) = d.call("GET", "/api/v1/agents/bench-t", "").await?;
        if a["run"]["turn_state"] == "idle" {
            // The harness reports idle, then asks for the next turn: leave it that moment.
            tokio::time::sleep(Duration::from_millis(2)).await;
            return Ok(true);
        }
        if Instant::now() > end {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The model stand-in: every POST gets one streamed text answer ("ok"), whole, at once.
async fn upstream() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(answer);
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let post = req.method() == hyper::Method::POST;
    let bulk = req.uri().query() == Some("bulk");
    let _ = req.into_body().collect().await;
    if post && bulk {
        let mut r = Response::new(Full::new(bulk_body()));
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/event-stream"),
        );
        return Ok(r);
    }
    if !post {
        let mut r = Response::new(Full::new(Bytes::from_static(b"{}")));
        *r.status_mut() = hyper::StatusCode::NOT_FOUND;
        return Ok(r);
    }
    let events = [
        (
            "message_start",
            json!({"type":"message_start","message":{"id":"msg_bench","type":"message",
                "role":"assistant","model":"claude-bench","content":[],"stop_reason":null,
                "stop_sequence":null,"usage":{"input_tokens":10,"output_tokens":1}}}),
        ),
        (
            "content_block_start",
            json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
        ),
        (
            "content_block_delta",
            json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"ok"}}),
        ),
        (
            "content_block_stop",
            json!({"type":"content_block_stop","index":0}),
        ),
        (
            "message_delta",
            json!({"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},
                "usage":{"output_tokens":1}}),
        ),
        ("message_stop", json!({"type":"message_stop"})),
    ];
    let body: String = events
        .iter()
        .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
        .collect();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    Ok(r)
}

/// The pinned claude CLI: `HIVE_CLAUDE`, else the one `scripts/setup` installs.
fn claude_bin() -> anyhow::Result<PathBuf> {
    let bin = std::env::var_os("HIVE_CLAUDE").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/node_modules/.bin/claude"),
        PathBuf::from,
    );
    ensure!(
        bin.exists(),
        "no claude CLI at {} (run scripts/setup, or set HIVE_CLAUDE)",
        bin.display()
    );
    Ok(bin)
}

/// A claude command as the harness runs it, against `model`.
fn claude(bin: &Path, home: &Path, model: SocketAddr) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("TMPDIR", home)
        .env("ENABLE_TOOL_SEARCH", "false")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_TELEMETRY", "1")
        .env("CLAUDE_CODE_MAX_RETRIES", "0")
        .env("ANTHROPIC_BASE_URL", format!("http://{model}"))
        .env("ANTHROPIC_API_KEY", "bench")
        .current_dir(home)
        .args(["--print", "--verbose", "--output-format", "stream-json"])
        .args([
            "--strict-mcp-config",
            "--mcp-config",
            r#"{"mcpServers":{}}"#,
        ])
        .args(["--disallowedTools", "Bash"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Reads stream-json lines until `result`; fails on an error result.
async fn until_result<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut tokio::io::Lines<R>,
) -> anyhow::Result<()> {
    while let Some(line) = lines.next_line().await? {
        let Ok(event) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if event["type"] == "result" {
            ensure!(event["is_error"] != true, "claude's turn failed: {line}");
            return Ok(());
        }
    }
    bail!("claude exited before its result")
}

/// 11b and the warm claude's RSS.
async fn warm_and_per_turn(
    warm_samples: usize,
    per_turn_samples: usize,
) -> anyhow::Result<(Samples, Samples, Memory)> {
    let bin = claude_bin()?;
    let model = upstream().await?;
    let home = tempfile::tempdir()?;
    let prompt = |i: usize| {
        json!({"type": "user", "message": {"role": "user",
            "content": [{"type": "text", "text": format!("ping {i}")}]}})
        .to_string()
            + "\n"
    };

    let mut cmd = claude(&bin, home.path(), model);
    cmd.args(["--input-format", "stream-json"])
        .stdin(Stdio::piped());
    let mut child = cmd.spawn().context("cannot start claude")?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
    let limit = Duration::from_secs(60);
    // The first turn starts the process: not a warm turn.
    stdin.write_all(prompt(0).as_bytes()).await?;
    tokio::time::timeout(limit, until_result(&mut lines)).await??;
    let mut warm = Vec::with_capacity(warm_samples);
    for i in 1..=warm_samples {
        let t0 = Instant::now();
        stdin.write_all(prompt(i).as_bytes()).await?;
        tokio::time::timeout(limit, until_result(&mut lines)).await??;
        warm.push(t0.elapsed());
    }
    let claude_warm = daemon::memory(child.id().context("claude has no pid")?)?;
    drop(stdin);
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;

    let mut per_turn = Vec::with_capacity(per_turn_samples);
    for i in 0..per_turn_samples {
        let t0 = Instant::now();
        let mut cmd = claude(&bin, home.path(), model);
        // The prompt on stdin: the variadic flags before would take it as theirs.
        cmd.stdin(Stdio::piped());
        let mut child = cmd.spawn().context("cannot start claude")?;
        let mut stdin = child.stdin.take().context("no stdin")?;
        stdin.write_all(format!("ping {i}").as_bytes()).await?;
        drop(stdin);
        let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
        tokio::time::timeout(limit, until_result(&mut lines)).await??;
        per_turn.push(t0.elapsed());
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    }
    Ok((Samples::new(warm), Samples::new(per_turn), claude_warm))
}

/// Sends a streamed `POST path` on an open HTTP/1.1 connection: the answer's body, once its
/// head is in, and when the request went out.
async fn post_messages(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    path: &str,
) -> anyhow::Result<(Incoming, Instant)> {
    let body = r#"{"model":"claude-bench","max_tokens":16,"stream":true,"messages":[{"role":"user","content":"ping"}]}"#;
    let request = Request::post(path)
        .header("host", "model")
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .header("x-api-key", "bench")
        .body(Full::new(Bytes::from_static(body.as_bytes())))?;
    sender.ready().await?;
    let t0 = Instant::now();
    let response = sender.send_request(request).await?;
    ensure!(
        response.status().is_success(),
        "the model answered {}",
        response.status()
    );
    Ok((response.into_body(), t0))
}

/// One request's time to the first byte of the answer's body, on an open HTTP/1.1 connection.
async fn first_byte(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
) -> anyhow::Result<Duration> {
    let (mut body, t0) = post_messages(sender, "/v1/messages").await?;
    let first = body.frame().await.context("an empty answer")??;
    let took = t0.elapsed();
    drop(first);
    while body.frame().await.transpose()?.is_some() {}
    Ok(took)
}

async fn open<S>(stream: S) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One bulk answer read to its end: MiB/s.
async fn bulk(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
) -> anyhow::Result<f64> {
    let (mut body, t0) = post_messages(sender, "/v1/messages?bulk").await?;
    let mut bytes = 0usize;
    while let Some(frame) = body.frame().await.transpose()? {
        bytes += frame.data_ref().map_or(0, |d| d.len());
    }
    ensure!(bytes >= BULK_BYTES, "only {bytes} bytes arrived");
    Ok(bytes as f64 / (1024.0 * 1024.0) / t0.elapsed().as_secs_f64())
}

/// 11d and 11e: alternating requests through the gateway and direct, on one kept-alive
/// connection each.
async fn gateway(
    hive: &Path,
    samples: usize,
    bulks: usize,
) -> anyhow::Result<(Samples, Samples, Vec<f64>, Vec<f64>)> {
    let model = upstream().await?;
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("hive.toml"),
        format!("[runtime]\nkind = \"none\"\n\n[model]\nanthropic_base_url = \"http://{model}\"\n"),
    )?;
    let d = Daemon::start(hive, dir.path())?;
    let (code, v) = d
        .call("POST", "/api/v1/agents", r#"{"name":"bench-g"}"#)
        .await?;
    ensure!(code < 300, "spawn answered {code}: {v}");
    let socket = dir.path().join("run/agents/bench-g/gateway.sock");
    let mut via = open(
        tokio::net::UnixStream::connect(&socket)
            .await
            .with_context(|| format!("cannot connect to {}", socket.display()))?,
    )
    .await?;
    let tcp = tokio::net::TcpStream::connect(model).await?;
    tcp.set_nodelay(true)?;
    let mut direct = open(tcp).await?;
    for _ in 0..20 {
        first_byte(&mut via).await?;
        first_byte(&mut direct).await?;
    }
    let (mut g, mut t) = (Vec::with_capacity(samples), Vec::with_capacity(samples));
    for _ in 0..samples {
        g.push(first_byte(&mut via).await?);
        t.push(first_byte(&mut direct).await?);
    }
    let (mut gb, mut tb) = (Vec::with_capacity(bulks), Vec::with_capacity(bulks));
    for _ in 0..bulks {
        gb.push(bulk(&mut via).await?);
        tb.push(bulk(&mut direct).await?);
    }
    drop(via);
    d.stop()?;
    Ok((Samples::new(g), Samples::new(t), gb, tb))
}

pub async fn measure(hive: &Path, quick: bool) -> anyhow::Result<Figures> {
    let (to_stdin, harness) = to_stdin(hive, if quick { 50 } else { 300 }).await?;
    let (warm_turn, per_turn, claude_warm) =
        warm_and_per_turn(if quick { 5 } else { 20 }, if quick { 2 } else { 5 }).await?;
    let (gateway_first_byte, direct_first_byte, gateway_mib_s, direct_mib_s) = gateway(
        hive,
        if quick { 300 } else { 2000 },
        if quick { 2 } else { 5 },
    )
    .await?;
    Ok(Figures {
        to_stdin,
        warm_turn,
        per_turn,
        harness,
        claude_warm,
        gateway_first_byte,
        direct_first_byte,
        gateway_mib_s,
        direct_mib_s,
    })
}
