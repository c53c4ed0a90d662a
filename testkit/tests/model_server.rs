//! The scripted model server over plain HTTP/1.1, without any model client: the wire format of
//! each reply, the recording, the script order and shutdown.

use std::time::Duration;

use serde_json::{Value, json};
use testkit::model_server::{ModelServer, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// `(event name, data)` of an SSE body; `data: [DONE]` gives `Value::Null`.
    fn sse(&self) -> Vec<(String, Value)> {
        self.body
            .split("\n\n")
            .filter(|e| !e.trim().is_empty())
            .map(|e| {
                let mut name = String::new();
                let mut data = Value::Null;
                for line in e.lines() {
                    if let Some(n) = line.strip_prefix("event: ") {
                        name = n.to_owned();
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data = serde_json::from_str(d).unwrap_or(Value::Null);
                    }
                }
                (name, data)
            })
            .collect()
    }
}

async fn post(
    server: &ModelServer,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> HttpResponse {
    let mut stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let body = body.to_string();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n",
        server.addr(),
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("response within 10 s")
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    }
}

fn messages_body(prompt: &str) -> Value {
    json!({
        "model": "claude-test-model",
        "stream": true,
        "max_tokens": 100,
        "system": [{"type": "text", "text": "be brief"}],
        "tools": [{"name": "mcp__probe__echo", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "<system-reminder>\nnoise\n</system-reminder>"},
            {"type": "text", "text": prompt}]}],
    })
}

#[tokio::test]
async fn anthropic_stream_of_tool_use_then_text_then_done() {
    let server = ModelServer::start(vec![
        Reply::tool_use("mcp__probe__echo", json!({"text": "hi"})),
        Reply::text("a reply long enough to be split into several text deltas"),
    ])
    .await;
    let hdrs = [
        ("x-api-key", "sk-test"),
        ("anthropic-version", "2023-06-01"),
    ];

    let r = post(
        &server,
        "/v1/messages?beta=true",
        &hdrs,
        &messages_body("first"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let events = r.sse();
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[..3], ["message_start", "ping", "content_block_start"]);
    assert_eq!(
        names[names.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    for (name, data) in &events {
        assert_eq!(
            data["type"],
            name.as_str(),
            "event name and data type agree"
        );
    }
    assert_eq!(events[0].1["message"]["model"], "claude-test-model");
    let block = &events[2].1["content_block"];
    assert_eq!(block["type"], "tool_use");
    assert_eq!(block["id"], "toolu_testkit_1");
    assert_eq!(block["name"], "mcp__probe__echo");
    let json_text: String = events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| {
            assert_eq!(d["delta"]["type"], "input_json_delta");
            d["delta"]["partial_json"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&json_text).unwrap(),
        json!({"text": "hi"})
    );
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    assert!(delta["usage"]["output_tokens"].as_u64().unwrap() > 0);

    let r = post(&server, "/v1/messages", &hdrs, &messages_body("second")).await;
    let events = r.sse();
    let deltas: Vec<&Value> = events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| &d["delta"])
        .collect();
    assert!(deltas.len() > 1, "text comes in several deltas");
    let text: String = deltas
        .iter()
        .map(|d| {
            assert_eq!(d["type"], "text_delta");
            d["text"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        text,
        "a reply long enough to be split into several text deltas"
    );
    assert_eq!(
        events[events.len() - 2].1["delta"]["stop_reason"],
        "end_turn"
    );

    // The script is used up: "done", and a non-streaming request gets one JSON message.
    let mut body = messages_body("third");
    body["stream"] = json!(false);
    let r = post(&server, "/v1/messages", &hdrs, &body).await;
    let msg = r.json();
    assert_eq!(msg["type"], "message");
    assert_eq!(msg["content"], json!([{"type": "text", "text": "done"}]));
    assert_eq!(msg["stop_reason"], "end_turn");

    let reqs = server.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0].query.as_deref(), Some("beta=true"));
    assert_eq!(reqs[1].query, None);
    assert_eq!(reqs[0].api_key(), Some("sk-test"));
    assert_eq!(reqs[0].header("Anthropic-Version"), Some("2023-06-01"));
    assert_eq!(reqs[0].tool_names(), vec!["mcp__probe__echo"]);
    assert_eq!(reqs[0].last_user_text().as_deref(), Some("first"));
    assert_eq!(server.last_user_text().as_deref(), Some("third"));
    assert_eq!(server.remaining(), 0);
}

#[tokio::test]
async fn errors_carry_status_body_and_retry_after() {
    let server = ModelServer::start(vec![
        Reply::rate_limited(Some(7)),
        Reply::overloaded(),
        Reply::prompt_too_long(),
        Reply::Error {
            status: 500,
            body_json: json!({"anything": true}),
            retry_after: None,
        },
    ])
    .await;
    let body = messages_body("x");
    let r = post(&server, "/v1/messages", &[], &body).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("7"));
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    let r = post(&server, "/v1/messages", &[], &body).await;
    assert_eq!(r.status, 529);
    assert_eq!(r.header("retry-after"), None);
    assert_eq!(r.json()["error"]["type"], "overloaded_error");
    let r = post(&server, "/v1/messages", &[], &body).await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("prompt is too long")
    );
    let r = post(&server, "/v1/messages", &[], &body).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json(), json!({"anything": true}));
}

#[tokio::test]
async fn other_paths_do_not_consume_the_script() {
    let server = ModelServer::start(vec![Reply::text("scripted")]).await;
    let r = post(
        &server,
        "/v1/messages/count_tokens",
        &[],
        &messages_body("x"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.json()["input_tokens"].as_u64().unwrap() > 0);
    let r = post(&server, "/v1/nothing", &[], &json!({})).await;
    assert_eq!(r.status, 404);
    assert_eq!(server.remaining(), 1);
    assert_eq!(server.requests().len(), 2);
    assert!(server.model_requests().is_empty());
}

#[tokio::test]
async fn openai_chat_completions_from_the_same_script() {
    let server = ModelServer::start(vec![
        Reply::tool_use("send", json!({"to": "bob"})),
        Reply::text("hello"),
        Reply::text("streamed"),
    ])
    .await;
    let body = json!({
        "model": "gpt-test",
        "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "send", "parameters": {}}}],
    });
    let auth = [("authorization", "Bearer sk-oai")];

    let r = post(&server, "/v1/chat/completions", &auth, &body).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["id"], "call_testkit_1");
    assert_eq!(call["function"]["name"], "send");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"to": "bob"}));

    let mut next = body.clone();
    next["messages"]
        .as_array_mut()
        .unwrap()
        .push(json!({"role": "tool", "tool_call_id": "call_testkit_1", "content": "sent"}));
    let r = post(&server, "/v1/chat/completions", &auth, &next).await;
    let v = r.json();
    assert_eq!(v["choices"][0]["message"]["content"], "hello");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    next["stream"] = json!(true);
    let r = post(&server, "/v1/chat/completions", &auth, &next).await;
    let chunks = r.sse();
    assert_eq!(chunks.last().unwrap().1, Value::Null, "ends with [DONE]");
    assert_eq!(chunks[0].1["choices"][0]["delta"]["content"], "streamed");
    assert_eq!(chunks[1].1["choices"][0]["finish_reason"], "stop");

    let reqs = server.requests();
    assert!(reqs.iter().all(|r| r.is_chat_completions()));
    assert_eq!(reqs[0].api_key(), Some("sk-oai"));
    assert_eq!(reqs[0].tool_names(), vec!["send"]);
    assert_eq!(reqs[1].last_user_text().as_deref(), Some("hi"));
    let results = reqs[1].tool_results();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].tool_use_id, "call_testkit_1");
    assert_eq!(results[0].text, "sent");
}

/// A connection to `addr` that has sent one `POST /v1/messages` with an empty JSON body.
async fn posted(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = "{}";
    let req = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    s
}

#[tokio::test]
async fn hang_holds_the_request_until_drop() {
    let server = ModelServer::start(vec![Reply::Hang]).await;
    let addr = server.addr();
    let pending = tokio::spawn(async move {
        let mut s = posted(addr).await;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map(|_| buf)
    });
    assert!(
        server
            .wait_for_requests(1, Duration::from_secs(5))
            .await
            .is_some()
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!pending.is_finished(), "a hung request gets no answer");
    drop(server);
    let got = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("the connection closes when the server is dropped")
        .unwrap();
    assert!(got.map(|b| b.is_empty()).unwrap_or(true), "no answer bytes");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "nothing listens after drop"
    );
}

/// `Disconnect` reads the request and closes the connection without a byte of answer; the
/// script then goes on.
#[tokio::test]
async fn disconnect_closes_the_connection_without_an_answer() {
    let server = ModelServer::start(vec![Reply::Disconnect, Reply::text("next")]).await;
    let mut s = posted(server.addr()).await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("the connection is closed");
    assert!(read.is_err() || buf.is_empty(), "no answer bytes: {buf:?}");
    assert_eq!(server.model_requests().len(), 1);
    assert_eq!(server.remaining(), 1);
}

#[test]
fn works_without_a_runtime() {
    let server = ModelServer::start_blocking(vec![]);
    assert!(server.base_url().starts_with("http://127.0.0.1:"));
    server.push([Reply::text("later")]);
    assert_eq!(server.remaining(), 1);
}

#[tokio::test]
async fn a_responder_answers_each_request_by_what_it_says() {
    let server = ModelServer::start_responding(|req| match req.last_user_text().as_deref() {
        Some("from alice") => Reply::text("hello alice"),
        Some(other) => Reply::tool_use("mcp__hive__send", json!({"echo": other})),
        None => Reply::text("nothing"),
    });
    let mut body = messages_body("from bob");
    body["stream"] = json!(false);
    let r = post(&server, "/v1/messages", &[], &body).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["content"][0]["input"], json!({"echo": "from bob"}));
    let mut body = messages_body("from alice");
    body["stream"] = json!(false);
    let r = post(&server, "/v1/messages", &[], &body).await;
    assert_eq!(r.json()["content"][0]["text"], "hello alice");
    // Other paths do not reach the responder.
    let r = post(&server, "/v1/nothing", &[], &json!({})).await;
    assert_eq!(r.status, 404);
    assert_eq!(server.model_requests().len(), 2);
}
