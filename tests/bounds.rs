//! Bounds every client meets on a real `hive serve`: a line on an MCP socket that rmcp cannot
//! take gets a JSON-RPC error instead of silence, and an inbox (or an agent's open questions)
//! has a quota past which nothing is stored.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// Sends `line` on a raw connection and returns the next line the hive writes back.
fn exchange(reader: &mut BufReader<UnixStream>, line: &[u8]) -> Value {
    reader.get_mut().write_all(line).unwrap();
    let mut answer = String::new();
    reader.read_line(&mut answer).unwrap();
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer:?}"))
}

#[test]
fn a_line_rmcp_cannot_take_gets_a_json_rpc_error() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let _daemon = Daemon::start(state, "[mailbox]\nmax_body_bytes = 1024\n");
    for socket in ["mcp.sock", "harness.sock"] {
        let stream = UnixStream::connect(state.join("run/agents/manager").join(socket)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut reader = BufReader::new(stream);

        let reply = exchange(&mut reader, b"this is not json\n");
        assert_eq!(reply["id"], Value::Null, "{reply}");
        assert_eq!(reply["error"]["code"], -32700, "{reply}");
        let reply = exchange(&mut reader, b"{\"jsonrpc\": \"2.0\", \"id\": 1, \"meth\n");
        assert_eq!(reply["error"]["code"], -32700, "{reply}");
        let reply = exchange(&mut reader, b"\xff\xfe\r\n");
        assert_eq!(reply["error"]["code"], -32700, "{reply}");
        // JSON that is no JSON-RPC message.
        let reply = exchange(&mut reader, b"{\"hello\": 1}\n");
        assert_eq!(reply["error"]["code"], -32600, "{reply}");
        // A request that is no message keeps its id in the answer.
        let reply = exchange(&mut reader, b"{\"jsonrpc\": \"2.0\", \"id\": 9}\n");
        assert_eq!(reply["error"]["code"], -32600, "{reply}");
        assert_eq!(reply["id"], 9, "{reply}");
        // Over the line limit (1024 * 6 + 64 KiB here).
        let long = format!("{{\"x\":\"{}\"}}\n", "y".repeat(200 * 1024));
        let reply = exchange(&mut reader, long.as_bytes());
        assert_eq!(reply["error"]["code"], -32600, "{reply}");

        // The connection still serves: a real handshake answers with the hive's info.
        let init = json!({"jsonrpc": "2.0", "id": 7, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"}}});
        let reply = exchange(&mut reader, format!("{init}\n").as_bytes());
        assert_eq!(reply["id"], 7, "{reply}");
        assert!(reply["result"]["serverInfo"].is_object(), "{reply}");
    }
    assert_eq!(db_snapshot(state).0, 0);
}

fn table_rows(state: &Path, table: &str) -> String {
    open_db(state)
        .query_row(
            &format!("SELECT coalesce(group_concat(id, ','), '') FROM {table}"),
            [],
            |r| r.get(0),
        )
        .unwrap()
}

#[test]
fn an_inbox_and_an_agents_questions_have_a_quota() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let _daemon = Daemon::start(
        state,
        "[mailbox]\nmax_queued_per_inbox = 3\nmax_open_questions_per_agent = 2\n",
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let manager = mcp_connect(&rt, state, "manager", "mcp.sock");

    // The manager fills the operator's inbox; the next send is refused and stores nothing.
    for n in 0..3 {
        let (failed, said) = rt.block_on(mcp_try(
            &manager,
            "send",
            json!({"to": "operator", "body": format!("flood {n}")}),
        ));
        assert!(!failed, "{said}");
    }
    let before = db_snapshot(state);
    let (failed, said) = rt.block_on(mcp_try(
        &manager,
        "send",
        json!({"to": "operator", "body": "one too many"}),
    ));
    assert!(failed);
    assert!(
        said.contains("inbox of 'operator'") && said.contains("max_queued_per_inbox"),
        "{said}"
    );
    assert_eq!(db_snapshot(state), before);

    // The operator hits the same quota on the manager's inbox, with the code `inbox_full`.
    for n in 0..3 {
        rt.block_on(send(state, "manager", &format!("to manager {n}")));
    }
    let before = db_snapshot(state);
    for to in ["manager", "*"] {
        let req = json!({"to": to, "body": "over"}).to_string();
        let (status, v) = rt.block_on(api(state, "POST", "/api/v1/messages", Some(&req)));
        assert_eq!(status, 429, "{v}");
        assert_eq!(v["error"]["code"], "inbox_full", "{v}");
    }
    let out = cli(state, &["send", "manager", "over"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("inbox of 'manager'"));
    assert_eq!(db_snapshot(state), before);

    // Reading makes room again.
    let (status, v) = rt.block_on(api(
        state,
        "POST",
        "/api/v1/inbox/recv",
        Some(r#"{"max": 1}"#),
    ));
    assert_eq!(status, 200, "{v}");
    let (failed, said) = rt.block_on(mcp_try(
        &manager,
        "send",
        json!({"to": "operator", "body": "room again"}),
    ));
    assert!(!failed, "{said}");

    // Questions: two open at most per agent.
    for n in 0..2 {
        let (failed, said) = rt.block_on(mcp_try(
            &manager,
            "ask_operator",
            json!({"question": format!("question {n}?")}),
        ));
        assert!(!failed, "{said}");
    }
    let (questions, messages) = (
        table_rows(state, "questions"),
        table_rows(state, "messages"),
    );
    let (failed, said) = rt.block_on(mcp_try(
        &manager,
        "ask_operator",
        json!({"question": "a third?"}),
    ));
    assert!(failed);
    assert!(said.contains("2 open questions"), "{said}");
    assert_eq!(table_rows(state, "questions"), questions);
    assert_eq!(table_rows(state, "messages"), messages);
}
