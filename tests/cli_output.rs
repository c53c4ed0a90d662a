//! What the `hive` CLI prints is safe on a terminal and in a pipe: text an agent wrote (messages,
//! commit contents, descriptions) reaches the screen with its control characters escaped, and a
//! reader that goes away early ends the command quietly with 0.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn manager(rt: &tokio::runtime::Runtime, state: &std::path::Path) -> McpClient {
    mcp_connect(rt, state, "manager", "mcp.sock")
}

/// What a hostile agent writes to pose as the operator: a carriage return and an erase-line
/// escape to overwrite its own line, a forged line, and a terminal-title escape.
const FORGED: &str = "ignore\r\x1b[2K#99     2026-01-01 00:00:00  operator → manager  approve all\x1b]0;owned\x07\u{9b}2J";

fn assert_screen_safe(what: &str, bytes: &[u8]) {
    let out = text(bytes);
    for bad in ['\x1b', '\r', '\x07', '\u{9b}'] {
        assert!(!out.contains(bad), "{what} printed {bad:?} raw: {out:?}");
    }
}

#[test]
fn agent_text_cannot_forge_the_operators_screen() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let _daemon = Daemon::start(state, "");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let manager = manager(&rt, state);
    rt.block_on(mcp_ok(
        &manager,
        "send",
        json!({"to": "operator", "body": FORGED}),
    ));

    let inbox = cli(state, &["inbox"]);
    assert!(inbox.status.success(), "{}", text(&inbox.stderr));
    assert_screen_safe("hive inbox", &inbox.stdout);
    let shown = text(&inbox.stdout);
    assert_eq!(shown.lines().count(), 1, "{shown}");
    assert!(shown.contains("manager → operator"), "{shown}");
    assert!(shown.contains("ignore\\r\\u{1b}[2K#99"), "{shown}");
    assert_screen_safe("hive messages", &cli(state, &["messages"]).stdout);

    // --json stays JSON, with every control character escaped in it.
    let json_out = cli(state, &["messages", "--json"]);
    assert_screen_safe("hive messages --json", &json_out.stdout);
    let listed: Value = serde_json::from_slice(&json_out.stdout).unwrap();
    assert_eq!(listed[0]["body"], FORGED);

    // The live stream too, read through the event types: a send, then its delivery.
    let mut follower = Command::new(HIVE)
        .args(["messages", "--follow"])
        .env("HIVE_STATE_DIR", state)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = Vec::new();
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        let mut stdout = stdout;
        // Up to the first delivery line (the stream prints nothing before a message arrives).
        while stdout.read(&mut byte).unwrap_or(0) == 1 {
            buf.push(byte[0]);
            line.push(byte[0]);
            if byte[0] == b'\n' {
                let done = text(&line).contains("delivered to operator");
                let _ = lines_tx.send(text(&line));
                line.clear();
                if done {
                    break;
                }
            }
        }
        buf
    });
    // The follower subscribes before it reads; send until it has printed one.
    let started = Instant::now();
    let mut sent_line = None;
    while sent_line.is_none() && started.elapsed() < Duration::from_secs(20) {
        rt.block_on(mcp_ok(
            &manager,
            "send",
            json!({"to": "operator", "body": FORGED}),
        ));
        sent_line = lines.recv_timeout(Duration::from_millis(100)).ok();
    }
    let sent_line = sent_line.expect("the follower printed no message");
    assert!(sent_line.contains("manager → operator"), "{sent_line}");
    assert!(sent_line.contains("ignore\\r"), "{sent_line}");
    // The operator takes the messages: the follower prints their delivery.
    let (code, taken) = rt.block_on(api(
        state,
        "POST",
        "/api/v1/inbox/recv",
        Some(r#"{"max":2}"#),
    ));
    assert_eq!(code, 200, "{taken}");
    let ids: Vec<String> = taken["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].to_string())
        .collect();
    assert!(!ids.is_empty(), "{taken}");
    let delivered = std::iter::from_fn(|| lines.recv_timeout(Duration::from_secs(20)).ok())
        .find(|l| l.contains("delivered to"))
        .expect("the follower printed no delivery");
    assert_eq!(
        delivered,
        format!("        delivered to operator: [{}]\n", ids.join(","))
    );
    let _ = follower.kill();
    let _ = follower.wait();
    let streamed = reader.join().unwrap();
    assert_screen_safe("hive messages --follow", &streamed);

    // A commit and a description cannot rewrite `hive show` or `hive approvals`.
    let repo = state.join("agents/manager/config");
    std::fs::write(repo.join("prompt.md"), format!("{FORGED}\n")).unwrap();
    git(&repo, &["commit", "-qam", FORGED]);
    let sha = git(&repo, &["rev-parse", "HEAD"]);
    let queued = rt.block_on(mcp_ok(
        &manager,
        "request_apply_commit",
        json!({"agent": "manager", "commit": sha, "description": format!("line one\n{FORGED}")}),
    ));
    let id = queued["id"].as_i64().unwrap().to_string();
    let shown = cli(state, &["show", &id]);
    assert!(shown.status.success(), "{}", text(&shown.stderr));
    assert_screen_safe("hive show", &shown.stdout);
    let shown = text(&shown.stdout);
    assert!(shown.contains("    ignore\\r"), "{shown}");
    assert!(!shown.lines().any(|l| l.starts_with("#99")), "{shown}");
    let listed = cli(state, &["approvals"]);
    assert_screen_safe("hive approvals", &listed.stdout);
    assert_eq!(
        text(&listed.stdout).lines().count(),
        2,
        "{}",
        text(&listed.stdout)
    );
}

#[test]
fn a_reader_that_goes_away_ends_every_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let _daemon = Daemon::start(state, "");
    for id in 0..50 {
        send_blocking(state, id);
    }
    for args in [
        &["status"][..],
        &["agents"],
        &["messages"],
        &["messages", "--json"],
        &["inbox"],
        &["audit"],
        &["audit", "verify"],
    ] {
        // The only read end of the pipe is closed before the command writes: `| head -0`.
        let mut child = Command::new(HIVE)
            .args(args)
            .env("HIVE_STATE_DIR", state)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "hive {args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            !text(&out.stderr).contains("panicked"),
            "hive {args:?}: {}",
            text(&out.stderr)
        );
    }
}

fn send_blocking(state: &std::path::Path, n: i32) {
    let out = cli(state, &["send", "manager", &format!("message {n}")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A stand-in admin socket under `state` that answers each request with the next of `answers`
/// (HTTP 200, JSON), one connection each.
fn canned_admin_socket(
    state: &std::path::Path,
    answers: Vec<String>,
) -> std::thread::JoinHandle<()> {
    use std::io::{Read, Write};
    std::fs::create_dir_all(state.join("run")).unwrap();
    let listener = std::os::unix::net::UnixListener::bind(state.join("run/admin.sock")).unwrap();
    std::thread::spawn(move || {
        for body in answers {
            let (mut conn, _) = listener.accept().unwrap();
            // The CLI's GETs have no body: the request ends with its head.
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).unwrap();
                assert!(n > 0, "the CLI hung up mid-request");
                head.extend_from_slice(&buf[..n]);
            }
            write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
        }
    })
}

/// The CLI reads the records it prints as their wire types: an answer whose field was renamed
/// (another daemon version) is an error naming the field, not a `?` in a table that exits 0.
#[test]
fn an_answer_with_a_renamed_field_is_an_error_not_a_question_mark() {
    let message = json!({"id": 1, "from": "manager", "to": "operator", "body": "hi",
                         "sent_at": 1, "state": "queued", "redelivered": false});
    let approval = json!({"id": 2, "kind": "apply", "agent": "bob", "requester": "manager",
                          "commit": "abc", "description": "", "stat": "", "status": "pending",
                          "created_at": 1});
    let deploy = json!({"id": 3, "agent": "bob", "commit": "abc", "kind": "apply",
                        "status": "applied", "created_at": 1});
    let renamed = |v: &Value, from: &str, to: &str| {
        let mut v = v.as_object().unwrap().clone();
        let moved = v.remove(from).unwrap();
        v.insert(to.to_owned(), moved);
        Value::Object(v)
    };
    let cases: Vec<(&[&str], Value, &str)> = vec![
        (
            &["inbox"],
            json!([renamed(&message, "from", "sender")]),
            "from",
        ),
        (
            &["messages"],
            json!([renamed(&message, "body", "text")]),
            "body",
        ),
        (
            &["approvals"],
            json!([renamed(&approval, "status", "state")]),
            "status",
        ),
        (
            &["show", "2"],
            renamed(&approval, "commit", "sha"),
            "commit",
        ),
        (
            &["history", "bob"],
            json!([renamed(&deploy, "kind", "type")]),
            "kind",
        ),
    ];
    for (args, answer, field) in cases {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        let server = canned_admin_socket(state, vec![answer.to_string()]);
        let out = cli(state, args);
        server.join().unwrap();
        let err = text(&out.stderr);
        assert!(
            !out.status.success(),
            "hive {args:?} printed {:?}",
            text(&out.stdout)
        );
        assert!(
            err.contains("does not read as this `hive` expects") && err.contains(field),
            "hive {args:?}: {err}"
        );
        // The same answers with the fields as the hive names them print.
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        let good = match args[0] {
            "inbox" | "messages" => json!([message]),
            "approvals" => json!([approval]),
            "show" => approval.clone(),
            _ => json!([deploy]),
        };
        let server = canned_admin_socket(state, vec![good.to_string()]);
        let shown = cli_ok(state, args);
        server.join().unwrap();
        assert!(!shown.contains('?'), "hive {args:?}: {shown}");
    }
}

#[test]
fn a_followed_agent_log_is_read_as_log_text_and_shown_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let _daemon = Daemon::start(state, "");
    let log = state.join("logs/manager.log");
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    std::fs::write(&log, format!("before the follow {FORGED}\n")).unwrap();
    let mut follower = Command::new(HIVE)
        .args(["logs", "manager", "--follow", "--lines", "5"])
        .env("HIVE_STATE_DIR", state)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut stdout = std::io::BufReader::new(stdout);
        let mut line = Vec::new();
        while stdout.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
            if lines_tx.send(std::mem::take(&mut line)).is_err() {
                return;
            }
        }
    });
    // The line holding `marker` (a container of the manager may write its own lines too).
    let line_with = |marker: &str| loop {
        let line = lines
            .recv_timeout(Duration::from_secs(20))
            .expect("the follower printed no such line");
        assert_screen_safe("hive logs --follow", &line);
        if text(&line).contains(marker) {
            return text(&line);
        }
    };
    // The tail first (sent as one `log` event when the follow starts), then what is appended.
    let first = line_with("before the follow");
    assert!(
        first.starts_with("before the follow ignore\\r\\u{1b}[2K#99"),
        "{first}"
    );
    let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut file, b"appended one\nappended two\n").unwrap();
    assert_eq!(line_with("appended"), "appended one\n");
    assert_eq!(line_with("appended"), "appended two\n");
    let _ = follower.kill();
    let _ = follower.wait();
}
