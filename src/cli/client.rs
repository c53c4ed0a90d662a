//! The admin-socket client the CLI commands share: JSON requests, SSE streams, and errors that say
//! what to do ("hive is not running …") instead of a raw io error.

use std::io::ErrorKind;
use std::path::PathBuf;

use anyhow::{Context, anyhow, bail};
use broker::paths::StateDir;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::UnixStream;

pub struct AdminClient {
    socket: PathBuf,
}

impl AdminClient {
    pub fn new(state: &StateDir) -> Self {
        Self {
            socket: state.admin_socket(),
        }
    }

    async fn connect(
        &self,
    ) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
        let stream = UnixStream::connect(&self.socket).await.map_err(|e| {
            let at = self.socket.display();
            match e.kind() {
                ErrorKind::NotFound | ErrorKind::ConnectionRefused => anyhow!(
                    "hive is not running (no socket at {at}); start it with `hive serve`"
                ),
                ErrorKind::PermissionDenied => anyhow!(
                    "permission denied on {at}: the admin socket is for root and the hive's own user"
                ),
                _ => anyhow!("cannot connect to {at}: {e}"),
            }
        })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("the admin socket did not speak HTTP")?;
        tokio::spawn(conn);
        Ok(sender)
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Response<Incoming>> {
        let mut sender = self.connect().await?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "hive");
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Full::new(Bytes::from(serde_json::to_vec(v)?))
            }
            None => Full::new(Bytes::new()),
        };
        Ok(sender.send_request(req.body(body)?).await?)
    }

    /// Sends a request and returns its JSON answer; an API error becomes its message.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let resp = self.request(method, path, body).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        let value: Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("the hive answered {status} with no JSON"))?;
        if !status.is_success() {
            bail!("{}", api_error_text(status, &value));
        }
        Ok(value)
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.call(Method::POST, path, Some(body)).await
    }

    /// Follows a server-sent event stream, calling `on_event(name, data)` per event until the
    /// stream ends (the hive stopped).
    pub async fn follow(
        &self,
        path: &str,
        mut on_event: impl FnMut(&str, Value),
    ) -> anyhow::Result<()> {
        let resp = self.request(Method::GET, path, None).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        if status != StatusCode::OK {
            let bytes = body.collect().await?.to_bytes();
            let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            bail!("{}", api_error_text(status, &value));
        }
        let mut buffer = String::new();
        while let Some(frame) = body.frame().await {
            let Ok(chunk) = frame?.into_data() else {
                continue;
            };
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let (mut name, mut data) = ("message", String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if !data.is_empty()
                    && let Ok(value) = serde_json::from_str(&data)
                {
                    on_event(name, value);
                }
            }
        }
        Ok(())
    }
}

/// Percent-encodes `raw` for a URL path segment or query value: whatever a user typed (`/`, `?`,
/// `&`, `..`) stays inside its one segment and cannot reach another endpoint.
pub fn encode(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn api_error_text(status: StatusCode, value: &Value) -> String {
    match value["error"]["message"].as_str() {
        Some(message) => message.to_owned(),
        None => format!("the hive answered {status}"),
    }
}
