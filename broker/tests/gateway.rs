//! The model route: each agent's `gateway.sock` forwards `/v1/messages` to `[model]
//! anthropic_base_url`, here testkit's scripted model server, streaming both ways.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use broker::config::Config;
use broker::registry::AgentKind;
use common::{Fixture, name};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use testkit::model_server::{ModelServer, Reply};
use testkit::tools;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A hive forwarding to `upstream`, with the agent `alice`.
async fn hive_with(upstream: &str, api_key_file: Option<PathBuf>) -> Fixture {
    let mut config = Config::default();
    config.model.anthropic_base_url = upstream.to_owned();
    config.model.api_key_file = api_key_file;
    let f = common::open(tempfile::tempdir().unwrap(), config).await;
    f.hive
        .add_agent(name("alice"), AgentKind::Agent)
        .await
        .unwrap();
    f
}

fn socket(f: &Fixture) -> PathBuf {
    f.hive
        .state_dir()
        .agent_run_dir(&name("alice"))
        .join("gateway.sock")
}

/// An HTTP/1.1 connection on the gateway socket.
async fn connect(sock: &Path) -> SendRequest<Full<Bytes>> {
    let stream = tokio::net::UnixStream::connect(sock).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

fn messages_body(stream: bool) -> Bytes {
    Bytes::from(
        json!({"model": "claude-test", "max_tokens": 16, "stream": stream,
               "messages": [{"role": "user", "content": "hello"}]})
        .to_string(),
    )
}

fn post(path: &str) -> hyper::http::request::Builder {
    Request::post(path)
        .header("host", "model-gateway")
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
}

async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    req: hyper::http::request::Builder,
    body: Bytes,
) -> Response<Incoming> {
    sender.ready().await.unwrap();
    sender
        .send_request(req.body(Full::new(body)).unwrap())
        .await
        .unwrap()
}

async fn text(resp: Response<Incoming>) -> String {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

async fn json_error(resp: Response<Incoming>) -> Value {
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: Value = serde_json::from_str(&text(resp).await).unwrap();
    assert_eq!(body["type"], "error", "{body}");
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_answer_comes_through_with_the_agents_headers_on_a_kept_alive_connection() {
    let server =
        ModelServer::start(vec![Reply::text("hi from upstream"), Reply::text("again")]).await;
    let f = hive_with(&format!("{}/", server.base_url()), None).await;
    let sock = socket(&f);
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660, "gateway.sock is 0660");

    let mut conn = connect(&sock).await;
    let req = post("/v1/messages?beta=true")
        .header("x-api-key", "sk-agent")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "one hop only");
    let resp = send(&mut conn, req, messages_body(true)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["request-id"], "req_testkit_1");
    let sse = text(resp).await;
    assert!(sse.contains(r#""text":"hi from upstream""#), "{sse}");
    assert!(
        sse.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"),
        "{sse}"
    );

    // The same connection carries the next request.
    let resp = send(&mut conn, post("/v1/messages"), messages_body(true)).await;
    assert_eq!(resp.status(), 200);
    assert!(text(resp).await.contains("again"));

    let seen = server.requests();
    assert_eq!(seen.len(), 2);
    let first = &seen[0];
    assert_eq!(first.path, "/v1/messages");
    assert_eq!(first.query.as_deref(), Some("beta=true"));
    assert_eq!(
        first.api_key(),
        Some("sk-agent"),
        "no key file: the agent's passes"
    );
    assert_eq!(first.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(first.body["messages"][0]["content"], "hello");
    assert_eq!(
        first.header("host"),
        Some(server.addr().to_string().as_str()),
        "the upstream's host, not the agent's"
    );
    assert_eq!(
        first.header("x-hop"),
        None,
        "named in connection: hop-by-hop"
    );
    assert_ne!(first.header("connection"), Some("keep-alive, x-hop"));

    // Removing the agent closes its gateway with its other sockets.
    f.hive.close_agent_sockets(&name("alice"));
    assert!(!sock.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_first_event_reaches_the_agent_before_the_upstream_has_finished() {
    let server = ModelServer::start(vec![Reply::Held("slowly, then all".into())]).await;
    let f = hive_with(&server.base_url(), None).await;
    let mut conn = connect(&socket(&f)).await;
    let resp = send(&mut conn, post("/v1/messages"), messages_body(true)).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // The upstream holds the rest until released: this frame can only come if the gateway passes
    // frames on as they arrive.
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the first event did not arrive while the upstream was still answering")
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    let first = String::from_utf8(first.to_vec()).unwrap();
    assert!(first.starts_with("event: message_start\n"), "{first}");
    assert!(!first.contains("message_stop"), "{first}");
    server.release();
    let mut rest = String::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            rest.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
    assert!(rest.contains("slowly, then"), "{rest}");
    assert!(rest.contains("message_stop"), "{rest}");
}

fn key_file(dir: &Path, mode: u32, key: &str) -> PathBuf {
    let path = dir.join("anthropic.key");
    std::fs::write(&path, key).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn the_hives_api_key_replaces_the_agents() {
    let keys = tempfile::tempdir().unwrap();
    let server = ModelServer::start(vec![]).await;
    let f = hive_with(
        &server.base_url(),
        Some(key_file(keys.path(), 0o600, "sk-hive-secret\n")),
    )
    .await;
    let mut conn = connect(&socket(&f)).await;
    let req = post("/v1/messages")
        .header("x-api-key", "sk-agent")
        .header("authorization", "Bearer agent-token");
    let resp = send(&mut conn, req, messages_body(false)).await;
    assert_eq!(resp.status(), 200);
    let seen = &server.requests()[0];
    assert_eq!(seen.header("x-api-key"), Some("sk-hive-secret"));
    assert_eq!(seen.header("authorization"), None);
}

/// The agent's own stored key wins over the hive's; a stored key that is a symlink (planted to
/// point out of the state dir) is refused with 401, nothing forwarded, the target unread.
#[tokio::test(flavor = "multi_thread")]
async fn the_agents_stored_key_wins_and_a_planted_symlink_is_refused() {
    let keys = tempfile::tempdir().unwrap();
    let server = ModelServer::start(vec![]).await;
    let f = hive_with(
        &server.base_url(),
        Some(key_file(keys.path(), 0o600, "sk-hive-secret\n")),
    )
    .await;
    f.hive
        .store_api_key(&name("alice"), b"sk-ant-alice-own-key\n")
        .await
        .unwrap();
    let mut conn = connect(&socket(&f)).await;
    let req = post("/v1/messages").header("x-api-key", "sk-agent");
    let resp = send(&mut conn, req, messages_body(false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        server.requests()[0].header("x-api-key"),
        Some("sk-ant-alice-own-key")
    );

    let stored = f.hive.state_dir().agent_api_key(&name("alice"));
    let outside = keys.path().join("outside-key");
    std::fs::write(&outside, "sk-outside-0123456789").unwrap();
    std::fs::remove_file(&stored).unwrap();
    std::os::unix::fs::symlink(&outside, &stored).unwrap();
    let req = post("/v1/messages").header("x-api-key", "sk-agent");
    let resp = send(&mut conn, req, messages_body(false)).await;
    assert_eq!(resp.status(), 401);
    let body = text(resp).await;
    assert!(body.contains("hive login alice --api-key-file"), "{body}");
    assert!(!body.contains("sk-outside"), "{body}");
    assert_eq!(server.requests().len(), 1, "nothing more was forwarded");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_key_file_others_can_read_stops_the_start() {
    let keys = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.model.api_key_file = Some(key_file(keys.path(), 0o640, "sk-hive"));
    let dir = tempfile::tempdir().unwrap();
    let state = broker::paths::StateDir::new(dir.path());
    state.create().unwrap();
    let e = match broker::Hive::open(state, config).await {
        Ok(_) => panic!("a group-readable key file was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("model.api_key_file") && e.contains("chmod 600"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn other_paths_are_404_and_never_forwarded() {
    let server = ModelServer::start(vec![]).await;
    let f = hive_with(&server.base_url(), None).await;
    let mut conn = connect(&socket(&f)).await;
    // Without [model] openai_base_url, chat completions are refused, saying what to set.
    let resp = send(
        &mut conn,
        post("/v1/chat/completions"),
        messages_body(false),
    )
    .await;
    assert_eq!(resp.status(), 404);
    let message = json_error(resp).await["error"]["message"].to_string();
    assert!(message.contains("openai_base_url"), "{message}");
    for path in [
        "/v1/models",
        "/v1/messages/",
        "/v1/messages/../../admin",
        "/",
    ] {
        let resp = send(&mut conn, post(path), messages_body(false)).await;
        assert_eq!(resp.status(), 404, "{path}");
        let body = json_error(resp).await;
        assert_eq!(body["error"]["type"], "not_found_error");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("/v1/messages"), "{message}");
    }
    assert!(server.requests().is_empty(), "{:?}", server.requests());
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_completions_go_to_the_openai_base_url_with_the_hives_bearer_key() {
    let keys = tempfile::tempdir().unwrap();
    let anthropic = ModelServer::start(vec![]).await;
    let openai = ModelServer::start(vec![Reply::text("from openai")]).await;
    let mut config = Config::default();
    config.model.anthropic_base_url = anthropic.base_url();
    // Written with its `/v1`, as OpenAI-compatible base URLs usually are.
    config.model.openai_base_url = Some(format!("{}/v1", openai.base_url()));
    let key = keys.path().join("openai.key");
    std::fs::write(&key, "sk-openai-hive\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    config.model.openai_api_key_file = Some(key);
    let f = common::open(tempfile::tempdir().unwrap(), config).await;
    f.hive
        .add_agent(name("alice"), AgentKind::Agent)
        .await
        .unwrap();
    let mut conn = connect(&socket(&f)).await;
    let body = Bytes::from(
        json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}).to_string(),
    );
    let req = post("/v1/chat/completions").header("authorization", "Bearer sk-agent");
    let resp = send(&mut conn, req, body.clone()).await;
    assert_eq!(resp.status(), 200);
    let answer: Value = serde_json::from_str(&text(resp).await).unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], "from openai");
    let seen = &openai.requests()[0];
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(seen.header("authorization"), Some("Bearer sk-openai-hive"));
    assert!(anthropic.requests().is_empty());
    // The Anthropic paths still go to their own provider; other paths nowhere.
    let resp = send(&mut conn, post("/v1/messages"), messages_body(false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(anthropic.requests().len(), 1);
    let resp = send(&mut conn, post("/v1/models"), body).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(openai.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_body_is_413() {
    let server = ModelServer::start(vec![]).await;
    let f = hive_with(&server.base_url(), None).await;
    let big = Bytes::from(vec![b' '; broker::gateway::MAX_REQUEST_BYTES + 1]);
    // Declared with its length: answered before the body is read or anything forwarded.
    let mut raw = tokio::net::UnixStream::connect(socket(&f)).await.unwrap();
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: model-gateway\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        big.len()
    );
    raw.write_all(head.as_bytes()).await.unwrap();
    let mut answer = String::new();
    raw.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(answer.contains(r#""type":"request_too_large""#), "{answer}");
    assert!(server.requests().is_empty());

    // Sent in chunks with no length: cut off at the cap. Written raw, as a client that goes on
    // sending would: the gateway answers and closes while chunks are still coming, so a write
    // may fail (broken pipe) and the answer is read after it.
    let mut raw = tokio::net::UnixStream::connect(socket(&f)).await.unwrap();
    raw.write_all(
        b"POST /v1/messages HTTP/1.1\r\nhost: model-gateway\r\ncontent-type: application/json\r\n\
          transfer-encoding: chunked\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    for chunk in big.chunks(1024 * 1024) {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
        if raw.write_all(&framed).await.is_err() {
            break;
        }
    }
    let _ = raw.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(answer.contains(r#""type":"request_too_large""#), "{answer}");
    assert!(
        server.model_requests().iter().all(|r| r.body.is_null()),
        "no whole body reached it"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_upstream_is_a_502_the_cli_can_show() {
    // A port that was just free: nothing listens on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let f = hive_with(&base, None).await;
    let mut conn = connect(&socket(&f)).await;
    let resp = send(&mut conn, post("/v1/messages"), messages_body(true)).await;
    assert_eq!(resp.status(), 502);
    let body = json_error(resp).await;
    assert_eq!(body["error"]["type"], "api_error");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("cannot reach") && message.contains(&base),
        "{message}"
    );
}

/// `curl` as `uid` on the socket; its exit code and what it printed.
fn curl_as(uid: u32, sock: &Path) -> (i32, String) {
    let out = std::process::Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .args(["curl", "-sS", "--max-time", "20", "--unix-socket"])
        .arg(sock)
        .arg("http://model-gateway/v1/models")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_outside_the_agents_uid_range_is_refused() {
    let Some(_) = tools::require("setpriv", tools::which("setpriv")) else {
        return;
    };
    let Some(_) = tools::require("curl", tools::which("curl")) else {
        return;
    };
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test changes uids: run it as root"
    );
    let server = ModelServer::start(vec![]).await;
    let f = hive_with(&server.base_url(), None).await;
    f.hive
        .add_agent(name("bob"), AgentKind::Agent)
        .await
        .unwrap();
    let paths = f.hive.state_dir();
    let alice = f.hive.agent(&name("alice")).unwrap();
    let bob = f.hive.agent(&name("bob")).unwrap();
    let run = paths.agent_run_dir(&alice.name);
    // Open the file modes on the way, so that only the peer check decides.
    for dir in [
        paths.root(),
        &paths.run_dir(),
        &paths.run_dir().join("agents"),
        &run,
    ] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let sock = run.join("gateway.sock");
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    for (uid, allowed) in [
        (12345, false),
        (bob.uid_base, false),
        (alice.uid_base + 65536, false),
        (alice.uid_base, true),
        (alice.uid_base + 65535, true),
    ] {
        let (code, out) = tokio::task::block_in_place(|| curl_as(uid, &sock));
        if allowed {
            assert_eq!(code, 0, "uid {uid}: {out}");
            assert!(out.contains("not_found_error"), "uid {uid}: {out}");
        } else {
            // Closed before any answer: curl sees the close as a failed connect, a failed send,
            // an empty reply or a reset, depending on when it looks.
            assert!(
                matches!(code, 7 | 52 | 55 | 56),
                "uid {uid} got an answer ({code}): {out}"
            );
            assert!(
                !out.contains("not_found_error"),
                "uid {uid} got an answer: {out}"
            );
        }
    }
    assert!(server.requests().is_empty());
}

/// The real claude CLI reaches the model through the gateway with `ANTHROPIC_UNIX_SOCKET` and
/// `ANTHROPIC_BASE_URL=http://model-gateway`, as it does inside a container with no network
/// (FACTS D). `ANTHROPIC_UNIX_SOCKET` is undocumented (found in the binary): this test is what
/// catches a claude release that drops it — then agents need the in-container TCP relay instead.
#[tokio::test(flavor = "multi_thread")]
async fn the_claude_cli_completes_a_turn_through_the_gateway_socket() {
    let Some(claude) = tools::require("claude", tools::claude_bin()) else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let server = ModelServer::start(vec![Reply::text("answered through the gateway")]).await;
    let f = hive_with(
        &server.base_url(),
        Some(key_file(keys.path(), 0o600, "sk-hive-secret")),
    )
    .await;
    let run_dir = tempfile::tempdir().unwrap();
    let mut cmd: tokio::process::Command = {
        let mut cmd = testkit::claude::Claude::new(&claude, &server, run_dir.path())
            .std_command("say something");
        cmd.env("ANTHROPIC_BASE_URL", "http://model-gateway")
            .env("ANTHROPIC_UNIX_SOCKET", socket(&f));
        cmd.into()
    };
    let out = testkit::process::finish(&mut cmd, "claude", testkit::claude::TIMEOUT).await;
    let run = testkit::claude::ClaudeRun::parse(out.code(), out.stdout, out.stderr);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let result = run.result();
    assert_eq!(result["is_error"], false, "{}", run.describe());
    assert_eq!(result["result"], "answered through the gateway");
    let model = server.model_requests();
    assert!(!model.is_empty());
    for req in &model {
        assert_eq!(
            req.header("x-api-key"),
            Some("sk-hive-secret"),
            "the hive's key, not the CLI's {}",
            testkit::claude::API_KEY
        );
    }
}

/// The agent's own stored key goes to the OpenAI-compatible route too, as its bearer token.
#[tokio::test(flavor = "multi_thread")]
async fn the_agents_stored_key_is_the_bearer_token_of_the_openai_route() {
    let anthropic = ModelServer::start(vec![]).await;
    let openai = ModelServer::start(vec![Reply::text("from openai")]).await;
    let mut config = Config::default();
    config.model.anthropic_base_url = anthropic.base_url();
    config.model.openai_base_url = Some(openai.base_url());
    let f = common::open(tempfile::tempdir().unwrap(), config).await;
    f.hive
        .add_agent(name("alice"), AgentKind::Agent)
        .await
        .unwrap();
    f.hive
        .store_api_key(&name("alice"), b"sk-alice-openai-key-0123\n")
        .await
        .unwrap();
    let mut conn = connect(&socket(&f)).await;
    let body = Bytes::from(
        json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}).to_string(),
    );
    let req = post("/v1/chat/completions").header("authorization", "Bearer sk-agent");
    let resp = send(&mut conn, req, body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        openai.requests()[0].header("authorization"),
        Some("Bearer sk-alice-openai-key-0123")
    );
}

/// The rows of `model_calls`: (agent, upstream, model, status, input, output).
type CallRow = (String, String, Option<String>, i64, i64, i64);

fn model_calls(f: &Fixture) -> Vec<CallRow> {
    let db = common::open_db(&f.hive);
    let mut q = db
        .prepare(
            "SELECT agent, upstream, model, status, input_tokens, output_tokens FROM model_calls
             ORDER BY id",
        )
        .unwrap();
    q.query_map([], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
        ))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// Waits (bounded) until `model_calls` holds `n` rows: each is written once its answer ended.
async fn wait_for_calls(f: &Fixture, n: usize) -> Vec<CallRow> {
    common::until("the model calls are stored", || model_calls(f).len() >= n).await;
    model_calls(f)
}

/// Each forwarded call is stored with the usage its answer reported: streamed and whole, both
/// providers, an error answer with none; a request the gateway answers itself is not a call.
#[tokio::test(flavor = "multi_thread")]
async fn each_forwarded_call_is_stored_with_the_usage_its_answer_reported() {
    let anthropic = ModelServer::start(vec![
        Reply::text("a streamed answer of some length"),
        Reply::text("whole"),
        Reply::invalid_api_key(),
    ])
    .await;
    let openai = ModelServer::start(vec![Reply::text("from openai")]).await;
    let mut config = Config::default();
    config.model.anthropic_base_url = anthropic.base_url();
    config.model.openai_base_url = Some(openai.base_url());
    // A price for the Anthropic model (by its prefix), none for the OpenAI one.
    config.model.prices.insert(
        "claude-".into(),
        broker::config::Price {
            input: 3.0,
            output: 15.0,
            cache_read: None,
            cache_write: None,
        },
    );
    let f = common::open(tempfile::tempdir().unwrap(), config).await;
    f.hive
        .add_agent(name("alice"), AgentKind::Agent)
        .await
        .unwrap();
    let mut conn = connect(&socket(&f)).await;
    let streamed = text(send(&mut conn, post("/v1/messages"), messages_body(true)).await).await;
    let whole = text(send(&mut conn, post("/v1/messages"), messages_body(false)).await).await;
    let refused = send(&mut conn, post("/v1/messages"), messages_body(false)).await;
    assert_eq!(refused.status(), 401);
    text(refused).await;
    let body = Bytes::from(
        json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}).to_string(),
    );
    let chat = text(send(&mut conn, post("/v1/chat/completions"), body).await).await;
    let not_a_call = send(&mut conn, post("/v1/models"), messages_body(false)).await;
    assert_eq!(not_a_call.status(), 404);

    let rows = wait_for_calls(&f, 4).await;
    // What each answer itself said its usage was.
    let said = |answer: &str, input: &str, output: &str| -> (i64, i64) {
        let numbers = |key: &str| -> i64 {
            let at = answer
                .rfind(&format!("\"{key}\":"))
                .unwrap_or_else(|| panic!("{answer}"));
            answer[at + key.len() + 3..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .unwrap()
        };
        (numbers(input), numbers(output))
    };
    let (si, so) = said(&streamed, "input_tokens", "output_tokens");
    let (wi, wo) = said(&whole, "input_tokens", "output_tokens");
    let (ci, co) = said(&chat, "prompt_tokens", "completion_tokens");
    assert!(
        si > 0 && so > 1 && wi > 0 && ci > 0,
        "{streamed}\n{whole}\n{chat}"
    );
    let model = Some("claude-test".to_owned());
    assert_eq!(
        rows,
        vec![
            (
                "alice".into(),
                "anthropic".into(),
                model.clone(),
                200,
                si,
                so
            ),
            ("alice".into(), "anthropic".into(), model, 200, wi, wo),
            ("alice".into(), "anthropic".into(), None, 401, 0, 0),
            (
                "alice".into(),
                "openai".into(),
                Some("gpt-test".into()),
                200,
                ci,
                co
            ),
        ]
    );
    // In nano-dollars, rounded: float sums need not match to the last bit.
    let costs: Vec<Option<i64>> = f
        .hive
        .model_calls(&name("alice"), 10)
        .await
        .unwrap()
        .iter()
        .map(|c| c.cost_usd.map(|usd| (usd * 1e9).round() as i64))
        .collect();
    let priced = |i: i64, o: i64| Some(i * 3_000 + o * 15_000);
    assert_eq!(costs, [priced(si, so), priced(wi, wo), None, None]);
    // Nothing more is written later (the 404 was no call).
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(model_calls(&f).len(), 4);
}

/// The helper events in the manager's inbox, as (event, body) pairs.
fn helper_events(f: &Fixture) -> Vec<(String, Value)> {
    let db = common::open_db(&f.hive);
    let mut q = db
        .prepare("SELECT body FROM messages WHERE recipient = 'manager' AND sender = 'system' ORDER BY id")
        .unwrap();
    q.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|b| serde_json::from_str::<Value>(&b.unwrap()).unwrap())
        .map(|v| (v["event"].as_str().unwrap_or_default().to_owned(), v))
        .filter(|(e, _)| e.starts_with("model_"))
        .collect()
}

/// After `breaker_failures` upstream failures in a row the breaker opens: the next call is
/// answered 503 at once with a readable reason and never reaches the upstream, and the manager
/// is told `model_unreachable` once; after the cool-down one call goes through, its success
/// closes the breaker and the manager is told `model_reachable`.
#[tokio::test(flavor = "multi_thread")]
async fn the_breaker_opens_after_n_upstream_failures_and_closes_after_its_cooldown() {
    let server = ModelServer::start(vec![
        Reply::overloaded(),
        Reply::api_error(500, "api_error", "internal"),
        Reply::overloaded(),
        Reply::text("back"),
    ])
    .await;
    let mut config = Config::default();
    config.model.anthropic_base_url = server.base_url();
    config.model.breaker_failures = 3;
    config.model.breaker_cooldown_secs = 1;
    let f = common::open(tempfile::tempdir().unwrap(), config).await;
    f.hive
        .add_agent(name("alice"), AgentKind::Agent)
        .await
        .unwrap();
    let mut conn = connect(&socket(&f)).await;
    for expected in [529, 500, 529] {
        let resp = send(&mut conn, post("/v1/messages"), messages_body(false)).await;
        assert_eq!(resp.status(), expected);
        text(resp).await;
    }
    let opened = std::time::Instant::now();
    let resp = send(&mut conn, post("/v1/messages"), messages_body(false)).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body = json_error(resp).await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("after 3 failures in a row") && message.contains(&server.base_url()),
        "{message}"
    );
    assert_eq!(
        server.requests().len(),
        3,
        "refused without calling the upstream"
    );

    common::until("the manager is told", || !helper_events(&f).is_empty()).await;
    let events = helper_events(&f);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "model_unreachable");
    assert_eq!(events[0].1["failures"], 3);
    assert_eq!(events[0].1["agent"], "alice");

    // Refused until the cool-down has passed; then the probe goes through and closes it.
    let mut status = 503;
    for _ in 0..300 {
        let resp = send(&mut conn, post("/v1/messages"), messages_body(false)).await;
        status = resp.status().as_u16();
        text(resp).await;
        if status != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 200);
    assert!(
        opened.elapsed() >= Duration::from_secs(1),
        "{:?}",
        opened.elapsed()
    );
    assert_eq!(server.requests().len(), 4);
    common::until("the manager is told again", || helper_events(&f).len() >= 2).await;
    let events = helper_events(&f);
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(names, ["model_unreachable", "model_reachable"]);
}

/// A breaker setting of 0 is refused with the key named.
#[test]
fn breaker_settings_of_zero_are_refused() {
    let err = Config::from_toml("[model]\nbreaker_failures = 0\n").unwrap_err();
    assert!(err.contains("model.breaker_failures"), "{err}");
    let err = Config::from_toml("[model]\nbreaker_cooldown_secs = 0\n").unwrap_err();
    assert!(err.contains("model.breaker_cooldown_secs"), "{err}");
}
