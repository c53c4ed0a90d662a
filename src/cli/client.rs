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
use proto::StreamEvent;
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
                Bytes::from(serde_json::to_vec(v)?)
            }
            None => Bytes::new(),
        };
        let len = body.len();
        sender
            .send_request(req.body(Full::new(body))?)
            .await
            .map_err(|e| cut_off(e, len))
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

    /// Reads the SSE stream at `path` until the hive ends it, handing `on_event` each event read
    /// through the wire types. An event that does not read (a daemon of another version) or that
    /// the hive could not encode is said on stderr, never dropped silently.
    pub async fn follow(
        &self,
        path: &str,
        mut on_event: impl FnMut(Followed),
    ) -> anyhow::Result<()> {
        let resp = self.request(Method::GET, path, None).await?;
        let status = resp.status();
        let body = resp.into_body();
        if status != StatusCode::OK {
            let bytes = body.collect().await?.to_bytes();
            let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            bail!("{}", api_error_text(status, &value));
        }
        read_events(body.into_data_stream(), |name, data| {
            match read_followed(name, data) {
                Ok(followed) => on_event(followed),
                Err(text) => super::output::emit_err(&text),
            }
        })
        .await
    }
}

/// One event of a stream, as the hive sent it and read through the wire types.
pub struct Followed {
    /// What the CLI prints from.
    pub event: StreamEvent,
    /// The event's data as sent (what `--json` prints).
    pub json: Value,
}

/// Reads the SSE event `name` with `data`, or says why it cannot be shown.
fn read_followed(name: &str, data: &str) -> Result<Followed, String> {
    let unreadable = |e: serde_json::Error| {
        format!(
            "hive: a {name} event that does not read as this `hive` expects it ({e}); \
             are the CLI and the daemon the same version?"
        )
    };
    if name == proto::event::ERROR {
        return Err(format!(
            "hive: the hive could not send an event (a {name} event); run the command without \
             --follow to see what it missed"
        ));
    }
    let json: Value = serde_json::from_str(data).map_err(unreadable)?;
    let event = StreamEvent::read(name, &json).map_err(unreadable)?;
    Ok(Followed { event, json })
}

/// Reads server-sent events from a stream of body chunks (by `eventsource-stream`, which keeps a
/// UTF-8 character split across chunks whole, joins multi-line `data:` with newlines and takes
/// CRLF, CR and LF line ends) and calls `on_event(name, data)` per event.
async fn read_events<B: AsRef<[u8]>, E: std::error::Error + Send + Sync + 'static>(
    chunks: impl futures_util::Stream<Item = Result<B, E>>,
    mut on_event: impl FnMut(&str, &str),
) -> anyhow::Result<()> {
    use eventsource_stream::Eventsource;
    use futures_util::StreamExt;
    let mut events = std::pin::pin!(chunks.eventsource());
    while let Some(event) = events.next().await {
        let event = event.context("the hive's event stream broke off")?;
        let name = if event.event.is_empty() {
            "message"
        } else {
            &event.event
        };
        on_event(name, &event.data);
    }
    Ok(())
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

/// The hive answers a request over its size limit and closes the connection without reading the
/// rest; a client still writing it sees a broken pipe or a reset instead of the answer. Said as
/// what it is when the request was large enough for that, else the error as it came.
fn cut_off(e: hyper::Error, sent: usize) -> anyhow::Error {
    let closed = std::iter::successors(std::error::Error::source(&e), |e| e.source()).any(|e| {
        e.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                ErrorKind::BrokenPipe | ErrorKind::ConnectionReset
            )
        })
    });
    if closed && sent > 64 * 1024 {
        anyhow!(
            "{} (this request: {sent} bytes; the hive closed the connection while it was sent)",
            dashboard::error::TOO_LARGE
        )
    } else {
        e.into()
    }
}

fn api_error_text(status: StatusCode, value: &Value) -> String {
    match value["error"]["message"].as_str() {
        Some(message) => message.to_owned(),
        None => format!("the hive answered {status}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The events `read_events` makes of these chunks, as (name, data).
    fn events_of(chunks: &[&[u8]]) -> Vec<(String, String)> {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            chunks.iter().map(|c| Ok(c.to_vec())).collect();
        let mut seen = vec![];
        futures_util::FutureExt::now_or_never(read_events(
            futures_util::stream::iter(chunks),
            |name, data| seen.push((name.to_owned(), data.to_owned())),
        ))
        .unwrap()
        .unwrap();
        seen
    }

    fn pair(name: &str, data: &str) -> (String, String) {
        (name.to_owned(), data.to_owned())
    }

    #[test]
    fn each_event_is_read_through_its_type_or_said_unreadable() {
        let sent = r#"{"event":"message_delivered","ids":[3,4],"to":"bob"}"#;
        let read = read_followed("message_delivered", sent).unwrap();
        assert_eq!(
            read.event,
            StreamEvent::Bus(proto::Event::MessageDelivered {
                ids: vec![3, 4],
                to: "bob".into()
            })
        );
        assert_eq!(read.json, serde_json::from_str::<Value>(sent).unwrap());
        assert_eq!(
            read_followed("lagged", r#"{"missed":2}"#).unwrap().event,
            StreamEvent::Lagged(proto::Lagged { missed: 2 })
        );
        // A field renamed on the daemon's side, an event the hive could not encode: each said.
        let renamed = read_followed(
            "message_delivered",
            r#"{"event":"message_delivered","ids":[3],"recipient":"bob"}"#,
        )
        .err()
        .unwrap();
        assert!(renamed.contains("missing field `to`"), "{renamed}");
        assert!(renamed.contains("the same version?"), "{renamed}");
        let lost = read_followed("error", "").err().unwrap();
        assert!(lost.contains("could not send an event"), "{lost}");
    }

    #[test]
    fn a_character_split_across_chunks_stays_whole() {
        let frame = "event: message_sent\ndata: h\u{e9}\u{2192}\n\n".as_bytes();
        let split = frame.iter().position(|&b| b == 0xc3).unwrap() + 1;
        let seen = events_of(&[&frame[..split], &frame[split..]]);
        assert_eq!(seen, [pair("message_sent", "h\u{e9}\u{2192}")]);
    }

    #[test]
    fn multi_line_data_is_joined_with_newlines() {
        let seen = events_of(&[b"data: line one\ndata: line two\n\n"]);
        assert_eq!(seen, [pair("message", "line one\nline two")]);
    }

    #[test]
    fn crlf_line_ends_are_read() {
        let seen = events_of(&[
            b"event: lagged\r\ndata: {\"missed\":3}\r\n\r\nevent: x\r\n",
            b"data: 1\r\n\r\n",
        ]);
        assert_eq!(seen, [pair("lagged", "{\"missed\":3}"), pair("x", "1")]);
    }
}
