//! The line framing in front of rmcp on every MCP socket. It reads the client's lines itself,
//! bounded, and answers the ones rmcp would silently drop (leaving the client waiting forever)
//! with a JSON-RPC error, `id: null`: a line that is not JSON gets `-32700` (parse error), a line
//! over the size limit `-32600` (invalid request). Every other line goes on to rmcp unchanged
//! through an in-memory pipe, and rmcp's replies come back through another; one task writes both
//! kinds of reply to the socket, a whole line at a time, so they never interleave.
//! It never interprets a message beyond "is this JSON".

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

/// JSON-RPC 2.0: invalid JSON was received.
const PARSE_ERROR: i64 = -32700;
/// JSON-RPC 2.0: the JSON sent is not a valid request.
const INVALID_REQUEST: i64 = -32600;

/// The error reply for a line that cannot be answered by id.
fn error_line(code: i64, message: &str) -> Vec<u8> {
    let mut line = serde_json::to_vec(&serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {"code": code, "message": message},
    }))
    .expect("a JSON value serializes");
    line.push(b'\n');
    line
}

/// Whether `line` (without its newline) is JSON; rmcp decides what kind of message it is.
fn is_json(line: &[u8]) -> bool {
    const BOM: &[u8] = b"\xEF\xBB\xBF";
    let line = line.strip_prefix(BOM).unwrap_or(line);
    // Skipping a string does not check its UTF-8; rmcp's parse does.
    std::str::from_utf8(line)
        .is_ok_and(|text| serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok())
}

/// Reads the client's lines (each at most `max_line` bytes) until it hangs up, passing JSON lines
/// to rmcp and sending an error reply for the others. Dropping `to_rmcp` at the end is rmcp's EOF.
pub(super) async fn pump_requests(
    read: impl AsyncRead + Unpin,
    mut to_rmcp: impl AsyncWrite + Unpin,
    errors: mpsc::Sender<Vec<u8>>,
    max_line: usize,
) {
    let mut read = BufReader::new(read);
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let buf = match read.fill_buf().await {
            Ok([]) | Err(_) => return,
            Ok(buf) => buf,
        };
        let (take, complete) = match buf.iter().position(|&b| b == b'\n') {
            Some(end) => (end + 1, true),
            None => (buf.len(), false),
        };
        if !too_long && line.len() + take > max_line.saturating_add(1) {
            too_long = true;
            line = Vec::new();
        }
        if !too_long {
            line.extend_from_slice(&buf[..take]);
        }
        read.consume(take);
        if !complete {
            continue;
        }
        let reply = if std::mem::take(&mut too_long) {
            Some(error_line(
                INVALID_REQUEST,
                &format!("Invalid request: a message is at most {max_line} bytes on one line"),
            ))
        } else {
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            if text.iter().all(u8::is_ascii_whitespace) {
                None
            } else if is_json(text) {
                if to_rmcp.write_all(&line).await.is_err() {
                    return;
                }
                None
            } else {
                Some(error_line(
                    PARSE_ERROR,
                    "Parse error: a message is one line of JSON (JSON-RPC 2.0)",
                ))
            }
        };
        line.clear();
        if let Some(reply) = reply
            && errors.send(reply).await.is_err()
        {
            return;
        }
    }
}

/// Writes rmcp's replies and the framing's error replies to the client, each a whole line, until
/// rmcp is done (its end of the pipe closed) or the client is gone.
pub(super) async fn pump_replies(
    from_rmcp: impl AsyncRead + Unpin,
    mut errors: mpsc::Receiver<Vec<u8>>,
    mut write: impl AsyncWrite + Unpin,
) {
    let mut from_rmcp = BufReader::new(from_rmcp);
    // Kept across loop turns: a line half read when an error reply went first is finished later.
    let mut line = Vec::new();
    loop {
        tokio::select! {
            read = from_rmcp.read_until(b'\n', &mut line) => {
                match read {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if write.write_all(&line).await.is_err() {
                            return;
                        }
                        line.clear();
                    }
                }
            }
            Some(reply) = errors.recv() => {
                if write.write_all(&reply).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = write.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_told_from_garbage() {
        assert!(is_json(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#));
        assert!(is_json(b"\xEF\xBB\xBF{}"));
        assert!(!is_json(b"garbage"));
        assert!(!is_json(br#"{"unterminated":"#));
        assert!(!is_json(b"{\"a\":\"\xff\"}"));
    }
}
