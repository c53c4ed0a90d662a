//! The scripted model provider: the only fake in hyperhive's tests.
//!
//! [`ModelServer`] is a real HTTP/1.1 server on `127.0.0.1` that speaks the Anthropic Messages
//! protocol (`POST /v1/messages`, SSE streaming, as the `claude` CLI uses it) and a small subset of
//! the OpenAI chat-completions protocol (`POST /v1/chat/completions`). Its answers come from a
//! script: one [`Reply`] per model request, in order; when the script is used up every request is
//! answered with `Text("done")`. Every request is recorded ([`ModelServer::requests`]) so a test can
//! assert on what the client sent.
//!
//! The server runs on a thread of its own with its own tokio runtime, so it keeps answering while
//! the test blocks (for instance on `std::process::Command::output`), whatever runtime the test
//! uses. Dropping the [`ModelServer`] stops it and closes every connection.
//!
//! ```no_run
//! # async fn demo() {
//! use testkit::model_server::{ModelServer, Reply};
//! let server = ModelServer::start(vec![
//!     Reply::tool_use("mcp__probe__echo", serde_json::json!({"text": "hi"})),
//!     Reply::text("done"),
//! ])
//! .await;
//! // run a client with ANTHROPIC_BASE_URL=server.base_url() ...
//! assert_eq!(server.requests().len(), 2);
//! # }
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// One scripted answer of the model; each model request consumes one.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A text answer; stop reason `end_turn` (OpenAI: `finish_reason: "stop"`).
    Text(String),
    /// A call of the tool `name` with `input`; stop reason `tool_use` (OpenAI: `tool_calls`). The
    /// tool-use id is generated (`toolu_testkit_N`, OpenAI `call_testkit_N`).
    ToolUse { name: String, input: Value },
    /// An HTTP error: `status` with `body_json` as the body and an optional `retry-after` header
    /// (seconds). See [`Reply::api_error`] and its shorthands for the Anthropic error shape.
    Error {
        status: u16,
        body_json: Value,
        retry_after: Option<u32>,
    },
    /// Read the request and never answer (until the server is dropped): for client timeouts.
    Hang,
    /// Read the request and close the connection without an answer: a provider that cannot be
    /// reached mid-call (through the hive's gateway the client gets its 502).
    Disconnect,
    /// A streamed text answer (as [`Reply::Text`]) held after its first events: `message_start`
    /// and `ping` are sent at once, the rest only after [`ModelServer::release`] (one call per
    /// held reply). For proving that a proxy streams instead of buffering the whole answer.
    Held(String),
}

impl Reply {
    /// A text answer.
    pub fn text(text: impl Into<String>) -> Self {
        Reply::Text(text.into())
    }

    /// A tool call.
    pub fn tool_use(name: impl Into<String>, input: Value) -> Self {
        Reply::ToolUse {
            name: name.into(),
            input,
        }
    }

    /// An Anthropic-shaped error:
    /// `{"type":"error","error":{"type":error_type,"message":message}}`.
    pub fn api_error(status: u16, error_type: &str, message: &str) -> Self {
        Reply::Error {
            status,
            body_json: json!({
                "type": "error",
                "error": {"type": error_type, "message": message},
            }),
            retry_after: None,
        }
    }

    /// 401 `authentication_error` "invalid x-api-key" (the CLI retries it).
    pub fn invalid_api_key() -> Self {
        Reply::api_error(401, "authentication_error", "invalid x-api-key")
    }

    /// 429 `rate_limit_error`, with an optional `retry-after` in seconds (the CLI retries it).
    pub fn rate_limited(retry_after: Option<u32>) -> Self {
        let mut reply = Reply::api_error(
            429,
            "rate_limit_error",
            "Number of requests has exceeded your rate limit",
        );
        if let Reply::Error { retry_after: r, .. } = &mut reply {
            *r = retry_after;
        }
        reply
    }

    /// 529 `overloaded_error` "Overloaded" (the CLI retries it).
    pub fn overloaded() -> Self {
        Reply::api_error(529, "overloaded_error", "Overloaded")
    }

    /// 400 `invalid_request_error` "prompt is too long: 210000 tokens > 200000 maximum" (the CLI
    /// does not retry it and ends with `terminal_reason: "prompt_too_long"`).
    pub fn prompt_too_long() -> Self {
        Reply::api_error(
            400,
            "invalid_request_error",
            "prompt is too long: 210000 tokens > 200000 maximum",
        )
    }
}

/// One request the server received, whatever its path.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// `POST`, `GET`, …
    pub method: String,
    /// The path without the query, e.g. `/v1/messages`.
    pub path: String,
    /// The query string without `?`, e.g. `beta=true`.
    pub query: Option<String>,
    /// Every header, names in lower case (a repeated header keeps its last value).
    pub headers: BTreeMap<String, String>,
    /// The body parsed as JSON; `Value::Null` when it was empty or not JSON.
    pub body: Value,
}

/// A `tool_result` the client sent back (Anthropic `tool_result` block or OpenAI `role: "tool"`
/// message).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolResult {
    /// The id of the tool use it answers.
    pub tool_use_id: String,
    /// The text content, text blocks joined with `\n`.
    pub text: String,
    /// Whether the client marked it as an error (always false for OpenAI).
    pub is_error: bool,
}

impl RecordedRequest {
    /// A header by (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// The API key: `x-api-key`, or the token of `authorization: Bearer …`.
    pub fn api_key(&self) -> Option<&str> {
        self.header("x-api-key").or_else(|| {
            self.header("authorization")
                .and_then(|v| v.strip_prefix("Bearer "))
        })
    }

    /// Whether this is an Anthropic Messages request (`POST /v1/messages`).
    pub fn is_messages(&self) -> bool {
        self.method == "POST" && self.path == "/v1/messages"
    }

    /// Whether this is an OpenAI chat-completions request (`POST /v1/chat/completions`).
    pub fn is_chat_completions(&self) -> bool {
        self.method == "POST" && self.path == "/v1/chat/completions"
    }

    /// The `model` the client asked for.
    pub fn model(&self) -> Option<&str> {
        self.body.get("model").and_then(Value::as_str)
    }

    /// The names in the request's `tools` (Anthropic `name`, OpenAI `function.name`).
    pub fn tool_names(&self) -> Vec<String> {
        tool_names(self)
    }

    /// The text of the last user message; see [`last_user_text`].
    pub fn last_user_text(&self) -> Option<String> {
        last_user_text(self)
    }

    /// Every tool result in the request's messages, oldest first.
    pub fn tool_results(&self) -> Vec<ToolResult> {
        let mut out = Vec::new();
        for msg in messages(self) {
            match msg.get("role").and_then(Value::as_str) {
                Some("user") => {
                    let Some(blocks) = msg.get("content").and_then(Value::as_array) else {
                        continue;
                    };
                    for b in blocks {
                        if b.get("type").and_then(Value::as_str) != Some("tool_result") {
                            continue;
                        }
                        out.push(ToolResult {
                            tool_use_id: str_field(b, "tool_use_id"),
                            text: content_text(b.get("content")),
                            is_error: b.get("is_error").and_then(Value::as_bool).unwrap_or(false),
                        });
                    }
                }
                Some("tool") => out.push(ToolResult {
                    tool_use_id: str_field(msg, "tool_call_id"),
                    text: content_text(msg.get("content")),
                    is_error: false,
                }),
                _ => {}
            }
        }
        out
    }
}

/// The names in `req`'s `tools` (Anthropic `tools[].name`, OpenAI `tools[].function.name`).
pub fn tool_names(req: &RecordedRequest) -> Vec<String> {
    let Some(tools) = req.body.get("tools").and_then(Value::as_array) else {
        return Vec::new();
    };
    tools
        .iter()
        .filter_map(|t| {
            t.get("name")
                .or_else(|| t.get("function").and_then(|f| f.get("name")))
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect()
}

/// The text of the last `role: "user"` message that has any text, with `<system-reminder>…
/// </system-reminder>` sections removed, text blocks joined with `\n` and trimmed. User messages
/// holding only tool results (or only reminders) are skipped, so on the request that carries a
/// tool result this is still the prompt of the turn. Works for Anthropic and OpenAI bodies.
pub fn last_user_text(req: &RecordedRequest) -> Option<String> {
    messages(req)
        .iter()
        .rev()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .map(|m| {
            let parts: Vec<String> = match m.get("content") {
                Some(Value::String(s)) => vec![strip_reminders(s)],
                Some(Value::Array(blocks)) => blocks
                    .iter()
                    .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
                    .filter_map(|b| b.get("text").and_then(Value::as_str))
                    .map(strip_reminders)
                    .collect(),
                _ => Vec::new(),
            };
            parts
                .iter()
                .map(|p| p.trim())
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .find(|t| !t.is_empty())
}

fn messages(req: &RecordedRequest) -> &[Value] {
    req.body
        .get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn str_field(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// Text of a `content` that is a string or a list of blocks.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn strip_reminders(text: &str) -> String {
    const OPEN: &str = "<system-reminder>";
    const CLOSE: &str = "</system-reminder>";
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        out.push_str(&rest[..start]);
        match rest[start..].find(CLOSE) {
            Some(end) => rest = &rest[start + end + CLOSE.len()..],
            None => {
                rest = "";
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Chooses the answer to each model request from the request itself (see
/// [`ModelServer::start_responding`]).
pub type Responder = Box<dyn FnMut(&RecordedRequest) -> Reply + Send>;

struct State {
    script: VecDeque<Reply>,
    /// When set, answers every model request instead of the script.
    responder: Option<Responder>,
    requests: Vec<RecordedRequest>,
    /// Model requests answered so far; numbers the generated ids.
    answered: u64,
    /// Permits for [`Reply::Held`] answers to go on.
    released: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("script", &self.script)
            .field("responder", &self.responder.is_some())
            .field("requests", &self.requests.len())
            .field("answered", &self.answered)
            .finish()
    }
}

/// The scripted model server; see the module docs. Stops when dropped.
#[derive(Debug)]
pub struct ModelServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ModelServer {
    /// Starts a server on `127.0.0.1:0` answering with `script`, in order.
    pub async fn start(script: Vec<Reply>) -> ModelServer {
        Self::start_blocking(script)
    }

    /// [`ModelServer::start`] for tests without a tokio runtime.
    pub fn start_blocking(script: Vec<Reply>) -> ModelServer {
        Self::serve(script, None)
    }

    /// A server that answers each model request with `responder(request)` (the script is not
    /// used): for one server behind several agents, each scripted by what its requests say (the
    /// system prompt, the last user text, the tool result it carries). The responder runs on the
    /// server's thread with the server's state locked: it must not call this server's methods.
    pub fn start_responding(
        responder: impl FnMut(&RecordedRequest) -> Reply + Send + 'static,
    ) -> ModelServer {
        Self::serve(Vec::new(), Some(Box::new(responder)))
    }

    fn serve(script: Vec<Reply>, responder: Option<Responder>) -> ModelServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("model server: bind");
        listener
            .set_nonblocking(true)
            .expect("model server: set_nonblocking");
        let addr = listener.local_addr().expect("model server: local_addr");
        let state = Arc::new(Mutex::new(State {
            script: script.into(),
            responder,
            requests: Vec::new(),
            answered: 0,
            released: Arc::new(tokio::sync::Semaphore::new(0)),
        }));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name(format!("model-server-{}", addr.port()))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("model server: runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)
                        .expect("model server: listener");
                    tokio::select! {
                        _ = rx => {}
                        () = accept_loop(listener, st) => {}
                    }
                });
                // Dropping the runtime cancels every connection task, hanging ones included.
            })
            .expect("model server: spawn thread");
        ModelServer {
            addr,
            state,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`, for `ANTHROPIC_BASE_URL` (OpenAI clients want
    /// `{base_url}/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// The model requests (`/v1/messages` and `/v1/chat/completions`) received so far.
    pub fn model_requests(&self) -> Vec<RecordedRequest> {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.is_messages() || r.is_chat_completions())
            .cloned()
            .collect()
    }

    /// [`last_user_text`] of the last request received.
    pub fn last_user_text(&self) -> Option<String> {
        self.lock().requests.last().and_then(last_user_text)
    }

    /// The names in `req`'s tools; same as [`tool_names`].
    pub fn tool_names(&self, req: &RecordedRequest) -> Vec<String> {
        tool_names(req)
    }

    /// Lets one [`Reply::Held`] answer (the one held now, or the next) send the rest of its events.
    pub fn release(&self) {
        self.lock().released.add_permits(1);
    }

    /// Appends replies to the script.
    pub fn push(&self, replies: impl IntoIterator<Item = Reply>) {
        self.lock().script.extend(replies);
    }

    /// How many scripted replies have not been used yet.
    pub fn remaining(&self) -> usize {
        self.lock().script.len()
    }

    /// Waits until at least `n` requests arrived; returns them, or `None` after `timeout`.
    pub async fn wait_for_requests(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Option<Vec<RecordedRequest>> {
        let deadline = Instant::now() + timeout;
        loop {
            let reqs = self.requests();
            if reqs.len() >= n {
                return Some(reqs);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, state: Arc<Mutex<State>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(req, state.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type Resp = Response<UnsyncBoxBody<Bytes, Infallible>>;

/// The service's error for [`Reply::Disconnect`]: hyper closes the connection without an answer.
#[derive(Debug)]
struct Disconnected;

impl std::fmt::Display for Disconnected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the script says: close without an answer")
    }
}

impl std::error::Error for Disconnected {}

async fn handle(req: Request<Incoming>, state: Arc<Mutex<State>>) -> Result<Resp, Disconnected> {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let bytes = match req.into_body().collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let input_tokens = (bytes.len() / 4).max(1) as u64;
    let recorded = RecordedRequest {
        method,
        path,
        query,
        headers,
        body,
    };

    enum Route {
        Messages,
        Chat,
        CountTokens,
        NotFound,
    }
    let route = match (recorded.method.as_str(), recorded.path.as_str()) {
        ("POST", "/v1/messages") => Route::Messages,
        ("POST", "/v1/chat/completions") => Route::Chat,
        ("POST", "/v1/messages/count_tokens") => Route::CountTokens,
        _ => Route::NotFound,
    };
    let stream = recorded.body.get("stream").and_then(Value::as_bool) == Some(true);
    let model = recorded.model().unwrap_or("claude-testkit").to_owned();
    let (reply, n, released) = {
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        let released = s.released.clone();
        s.requests.push(recorded);
        match route {
            Route::Messages | Route::Chat => {
                s.answered += 1;
                let s = &mut *s;
                let reply = match (&mut s.responder, s.requests.last()) {
                    (Some(respond), Some(request)) => respond(request),
                    _ => s.script.pop_front().unwrap_or_else(|| Reply::text("done")),
                };
                (Some(reply), s.answered, released)
            }
            _ => (None, s.answered, released),
        }
    };

    let resp = match (route, reply) {
        (Route::CountTokens, _) => json_response(200, &json!({"input_tokens": input_tokens})),
        (Route::NotFound, _) | (_, None) => json_response(
            404,
            &json!({"type":"error","error":{"type":"not_found_error","message":"not found"}}),
        ),
        (_, Some(Reply::Hang)) => match std::future::pending::<Infallible>().await {},
        (_, Some(Reply::Disconnect)) => return Err(Disconnected),
        (
            _,
            Some(Reply::Error {
                status,
                body_json,
                retry_after,
            }),
        ) => {
            let mut resp = json_response(status, &body_json);
            if let Some(secs) = retry_after {
                resp.headers_mut()
                    .insert("retry-after", HeaderValue::from(secs));
            }
            resp
        }
        (Route::Messages, Some(Reply::Held(text))) => {
            held(
                anthropic(&Reply::Text(text), n, &model, input_tokens, stream),
                released,
            )
            .await
        }
        (Route::Messages, Some(reply)) => anthropic(&reply, n, &model, input_tokens, stream),
        (Route::Chat, Some(Reply::Held(text))) => {
            openai(&Reply::Text(text), n, &model, input_tokens, stream)
        }
        (Route::Chat, Some(reply)) => openai(&reply, n, &model, input_tokens, stream),
    };
    Ok(with_request_id(resp, n))
}

/// `resp` (an SSE answer) sent in two parts: its first two events at once, the rest after a
/// permit of `released`.
async fn held(resp: Resp, released: Arc<tokio::sync::Semaphore>) -> Resp {
    let (parts, body) = resp.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let split = bytes
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w == b"\n\n")
        .nth(1)
        .map_or(bytes.len(), |(i, _)| i + 2);
    let (tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(2);
    let (first, rest) = (bytes.slice(..split), bytes.slice(split..));
    tokio::spawn(async move {
        let mut tx = tx;
        if tx.send_data(first).await.is_err() {
            return;
        }
        if let Ok(permit) = released.acquire().await {
            permit.forget();
            let _ = tx.send_data(rest).await;
        }
    });
    Response::from_parts(parts, body.boxed_unsync())
}

fn with_request_id(mut resp: Resp, n: u64) -> Resp {
    if let Ok(v) = HeaderValue::from_str(&format!("req_testkit_{n}")) {
        resp.headers_mut().insert("request-id", v);
    }
    resp
}

fn json_response(status: u16, body: &Value) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())).boxed_unsync());
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn sse_response(body: String) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    resp
}

/// Splits `s` into pieces of at most `n` chars (at least one piece), so clients see several deltas.
fn chunks(s: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    if chars.is_empty() {
        return vec![String::new()];
    }
    chars.chunks(n).map(|c| c.iter().collect()).collect()
}

fn output_tokens(s: &str) -> u64 {
    (s.len() / 4).max(1) as u64
}

/// An Anthropic Messages answer: SSE events when `stream`, else one JSON message.
fn anthropic(reply: &Reply, n: u64, model: &str, input_tokens: u64, stream: bool) -> Resp {
    let (block, stop_reason, out_tokens) = match reply {
        Reply::ToolUse { name, input } => (
            json!({"type":"tool_use","id":format!("toolu_testkit_{n}"),"name":name,"input":input}),
            "tool_use",
            output_tokens(&input.to_string()),
        ),
        Reply::Text(text) => (
            json!({"type":"text","text":text}),
            "end_turn",
            output_tokens(text),
        ),
        Reply::Error { .. } | Reply::Hang | Reply::Disconnect | Reply::Held(_) => {
            unreachable!("handled by the caller")
        }
    };
    let usage_start = json!({
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 1,
    });
    let id = format!("msg_testkit_{n}");
    if !stream {
        return json_response(
            200,
            &json!({
                "id": id, "type": "message", "role": "assistant", "model": model,
                "content": [block], "stop_reason": stop_reason, "stop_sequence": null,
                "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": 0,
                          "cache_read_input_tokens": 0, "output_tokens": out_tokens},
            }),
        );
    }

    let mut events: Vec<(&str, Value)> = vec![
        (
            "message_start",
            json!({"type":"message_start","message":{
                "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": null, "stop_sequence": null, "usage": usage_start}}),
        ),
        ("ping", json!({"type":"ping"})),
    ];
    match reply {
        Reply::Text(text) => {
            events.push((
                "content_block_start",
                json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
            ));
            for piece in chunks(text, 16) {
                events.push((
                    "content_block_delta",
                    json!({"type":"content_block_delta","index":0,
                           "delta":{"type":"text_delta","text":piece}}),
                ));
            }
        }
        Reply::ToolUse { name, input } => {
            events.push((
                "content_block_start",
                json!({"type":"content_block_start","index":0,"content_block":{
                    "type":"tool_use","id":format!("toolu_testkit_{n}"),"name":name,"input":{}}}),
            ));
            let mut pieces = vec![String::new()];
            pieces.extend(chunks(&input.to_string(), 16));
            for piece in pieces {
                events.push((
                    "content_block_delta",
                    json!({"type":"content_block_delta","index":0,
                           "delta":{"type":"input_json_delta","partial_json":piece}}),
                ));
            }
        }
        Reply::Error { .. } | Reply::Hang | Reply::Disconnect | Reply::Held(_) => {
            unreachable!("handled by the caller")
        }
    }
    events.push((
        "content_block_stop",
        json!({"type":"content_block_stop","index":0}),
    ));
    events.push((
        "message_delta",
        json!({"type":"message_delta",
               "delta":{"stop_reason":stop_reason,"stop_sequence":null},
               "usage":{"output_tokens":out_tokens}}),
    ));
    events.push(("message_stop", json!({"type":"message_stop"})));

    let mut body = String::new();
    for (name, data) in events {
        body.push_str(&format!("event: {name}\ndata: {data}\n\n"));
    }
    sse_response(body)
}

/// An OpenAI chat-completions answer: one JSON object, or `data:` chunks and `[DONE]` when
/// `stream`.
fn openai(reply: &Reply, n: u64, model: &str, input_tokens: u64, stream: bool) -> Resp {
    let id = format!("chatcmpl-testkit-{n}");
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (message, finish_reason, out_tokens) = match reply {
        Reply::Text(text) => (
            json!({"role":"assistant","content":text}),
            "stop",
            output_tokens(text),
        ),
        Reply::ToolUse { name, input } => {
            let args = input.to_string();
            (
                json!({"role":"assistant","content":null,"tool_calls":[{
                    "id": format!("call_testkit_{n}"), "type": "function",
                    "function": {"name": name, "arguments": args}}]}),
                "tool_calls",
                output_tokens(&args),
            )
        }
        Reply::Error { .. } | Reply::Hang | Reply::Disconnect | Reply::Held(_) => {
            unreachable!("handled by the caller")
        }
    };
    let usage = json!({"prompt_tokens": input_tokens, "completion_tokens": out_tokens,
                       "total_tokens": input_tokens + out_tokens});
    if !stream {
        return json_response(
            200,
            &json!({"id": id, "object": "chat.completion", "created": created, "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
                    "usage": usage}),
        );
    }
    let chunk = |delta: Value, finish: Value| {
        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut delta = message;
    if let Some(calls) = delta.get_mut("tool_calls").and_then(Value::as_array_mut) {
        for (i, call) in calls.iter_mut().enumerate() {
            call["index"] = json!(i);
        }
    }
    let mut chunks_out = vec![
        chunk(delta, Value::Null),
        chunk(json!({}), json!(finish_reason)),
    ];
    chunks_out[1]["usage"] = usage;
    let mut body = String::new();
    for c in chunks_out {
        body.push_str(&format!("data: {c}\n\n"));
    }
    body.push_str("data: [DONE]\n\n");
    sse_response(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(body: Value) -> RecordedRequest {
        RecordedRequest {
            method: "POST".into(),
            path: "/v1/messages".into(),
            query: None,
            headers: BTreeMap::new(),
            body,
        }
    }

    #[test]
    fn last_user_text_skips_reminders_and_tool_results() {
        let r = req(json!({"messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "<system-reminder>\nctx\n</system-reminder>"},
                {"type": "text", "text": "<system-reminder>x</system-reminder>\nhello there"}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "a", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                          "content": [{"type": "text", "text": "ok"}]}]},
        ]}));
        assert_eq!(r.last_user_text().as_deref(), Some("hello there"));
        assert_eq!(
            r.tool_results(),
            vec![ToolResult {
                tool_use_id: "t1".into(),
                text: "ok".into(),
                is_error: false
            }]
        );
        let s = req(json!({"messages": [{"role": "user", "content": "plain"}]}));
        assert_eq!(s.last_user_text().as_deref(), Some("plain"));
        assert_eq!(req(json!({})).last_user_text(), None);
    }

    #[test]
    fn tool_names_of_both_protocols() {
        let a = req(json!({"tools": [{"name": "Bash"}, {"name": "mcp__x__y"}]}));
        assert_eq!(tool_names(&a), vec!["Bash", "mcp__x__y"]);
        let o = req(json!({"tools": [{"type": "function", "function": {"name": "f"}}]}));
        assert_eq!(tool_names(&o), vec!["f"]);
    }

    #[test]
    fn chunks_split_on_chars() {
        assert_eq!(chunks("", 4), vec![""]);
        assert_eq!(chunks("héllo wörld", 4), vec!["héll", "o wö", "rld"]);
    }
}
