//! The transport of every MCP connection: JSON-RPC, one message per line, read and answered here
//! so that no line goes unanswered. rmcp's own line transport ignores a line that is not JSON and
//! drops one that is too long, and the client then waits forever; this one answers those with a
//! JSON-RPC error, `id: null`: `-32700` (parse error) for a line that is not JSON, `-32600`
//! (invalid request) for one over the size limit or JSON that is no message (with the request's
//! id when it has one). A notification is never answered. Replies, rmcp's and these, go through
//! rmcp's writer, one whole line at a time, so they never interleave.
//! It reads lines bounded and never interprets a message beyond parsing it.

use std::borrow::Cow;

use rmcp::RoleServer;
use rmcp::model::{ErrorData, RequestId};
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use rmcp::transport::async_rw::AsyncRwTransport;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, BufReader};
use tokio_util::sync::CancellationToken;

/// What a line from the client is.
#[derive(Debug)]
enum Line {
    Message(Box<RxJsonRpcMessage<RoleServer>>),
    Answer(Box<TxJsonRpcMessage<RoleServer>>),
    Skip,
}

/// One connection's transport: our line reader, rmcp's writer.
pub(super) struct LineTransport<R, W: AsyncWrite + Send + Unpin + 'static> {
    read: BufReader<R>,
    /// The line read so far; kept across a cancelled `receive` (rmcp polls it in a `select!`).
    line: Vec<u8>,
    too_long: bool,
    max_line: usize,
    hung_up: CancellationToken,
    /// rmcp's line writer (its reading half is never used).
    replies: AsyncRwTransport<RoleServer, tokio::io::Empty, W>,
}

impl<R, W> LineTransport<R, W>
where
    R: AsyncRead + Send + Unpin,
    W: AsyncWrite + Send + Unpin + 'static,
{
    /// Lines over `max_line` bytes are refused; `hung_up` is cancelled when the client hangs up.
    pub(super) fn new(read: R, write: W, max_line: usize, hung_up: CancellationToken) -> Self {
        Self {
            read: BufReader::new(read),
            line: Vec::new(),
            too_long: false,
            max_line,
            hung_up,
            replies: AsyncRwTransport::new(tokio::io::empty(), write),
        }
    }

    /// Reads up to the end of the next line, never holding more than `max_line` bytes of it.
    /// `false` at EOF or on a read error. Cancel-safe: what was read stays in `self.line`.
    async fn read_line(&mut self) -> bool {
        loop {
            let buf = match self.read.fill_buf().await {
                Ok([]) | Err(_) => return false,
                Ok(buf) => buf,
            };
            let (take, complete) = match buf.iter().position(|&b| b == b'\n') {
                Some(end) => (end + 1, true),
                None => (buf.len(), false),
            };
            if !self.too_long && self.line.len() + take > self.max_line.saturating_add(1) {
                self.too_long = true;
                self.line = Vec::new();
            }
            if !self.too_long {
                self.line.extend_from_slice(&buf[..take]);
            }
            self.read.consume(take);
            if complete {
                return true;
            }
        }
    }

    fn answer(&mut self, reply: TxJsonRpcMessage<RoleServer>) {
        // rmcp's send future is 'static and takes its writer's lock: the reply goes out whole,
        // and a `receive` cancelled meanwhile cannot lose or repeat it.
        let sending = self.replies.send(reply);
        tokio::spawn(async move {
            let _ = sending.await;
        });
    }
}

fn error_reply(error: ErrorData, id: Option<RequestId>) -> Line {
    Line::Answer(Box::new(TxJsonRpcMessage::<RoleServer>::error(error, id)))
}

/// Classifies one line (without its newline).
fn parse(line: &[u8]) -> Line {
    const BOM: &[u8] = b"\xEF\xBB\xBF";
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = line.strip_prefix(BOM).unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return Line::Skip;
    }
    let parse_error = || {
        error_reply(
            ErrorData::parse_error(
                "Parse error: a message is one line of JSON (JSON-RPC 2.0)",
                None,
            ),
            None,
        )
    };
    let Ok(text) = std::str::from_utf8(line) else {
        return parse_error();
    };
    let error = match serde_json::from_str::<RxJsonRpcMessage<RoleServer>>(text) {
        Ok(message) => return Line::Message(Box::new(message)),
        Err(e) => e,
    };
    if matches!(
        error.classify(),
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof
    ) {
        return parse_error();
    }
    let value: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    if value.get("method").is_some() && value.get("id").is_none() {
        // A notification rmcp does not know: JSON-RPC never answers one.
        return Line::Skip;
    }
    let id = value
        .get("id")
        .and_then(|id| serde_json::from_value::<RequestId>(id.clone()).ok());
    error_reply(
        ErrorData::invalid_request(Cow::Owned(format!("Invalid request: {error}")), None),
        id,
    )
}

impl<R, W> Transport<RoleServer> for LineTransport<R, W>
where
    R: AsyncRead + Send + Unpin,
    W: AsyncWrite + Send + Unpin + 'static,
{
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleServer>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.replies.send(item)
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleServer>> {
        loop {
            if !self.read_line().await {
                self.hung_up.cancel();
                return None;
            }
            let parsed = if std::mem::take(&mut self.too_long) {
                error_reply(
                    ErrorData::invalid_request(
                        Cow::Owned(format!(
                            "Invalid request: a message is at most {} bytes on one line",
                            self.max_line
                        )),
                        None,
                    ),
                    None,
                )
            } else {
                parse(self.line.strip_suffix(b"\n").unwrap_or(&self.line))
            };
            self.line.clear();
            match parsed {
                Line::Message(message) => return Some(*message),
                Line::Answer(reply) => self.answer(*reply),
                Line::Skip => {}
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.replies.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(line: &[u8]) -> Option<i32> {
        match parse(line) {
            Line::Answer(reply) => Some(
                serde_json::to_value(&*reply).unwrap()["error"]["code"]
                    .as_i64()
                    .unwrap() as i32,
            ),
            _ => None,
        }
    }

    #[test]
    fn lines_are_told_apart() {
        assert!(matches!(
            parse(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#),
            Line::Message(_)
        ));
        assert!(matches!(parse(b"  \r"), Line::Skip));
        // A notification is never answered, known or not.
        assert_eq!(
            code(br#"{"jsonrpc":"2.0","method":"x/unknown","params":7}"#),
            None
        );
        assert_eq!(code(b"garbage"), Some(-32700));
        assert_eq!(code(br#"{"unterminated":"#), Some(-32700));
        assert_eq!(code(b"{\"a\":\"\xff\"}"), Some(-32700));
        assert_eq!(code(br#"{"hello":1}"#), Some(-32600));
    }
}
