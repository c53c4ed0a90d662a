//! Alerts only when a human is needed (`[notify]`): a question to the operator reaches a local
//! ntfy-style receiver as one notification, with a one-time link that opens the questions page
//! (through the login page: the link alone grants no session); messages between agents, to the
//! operator and from the operator send nothing.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use serde_json::json;

/// One request the receiver got: its head (lowercased) and its body.
type Received = (String, String);

/// A receiver on the host's loopback that answers 200 to each POST and hands it over.
fn receiver() -> (u16, mpsc::Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let mut reader = BufReader::new(stream);
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let head = head.to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let mut body = vec![0u8; length];
            let _ = reader.read_exact(&mut body);
            let mut stream = reader.into_inner();
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = tx.send((head, String::from_utf8_lossy(&body).into_owned()));
        }
    });
    (port, rx)
}

/// `GET path` on the dashboard: the status line and the body.
fn get(addr: &str, path: &str) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer.lines().next().unwrap_or_default().to_owned();
    (status, answer)
}

#[test]
fn a_question_alerts_once_with_a_one_time_link_and_messages_alert_nothing() {
    let (port, received) = receiver();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let config = format!(
        "[dashboard]\nport = 0\n\n[notify]\nurl = \"http://127.0.0.1:{port}/hive-topic\"\nbatch_seconds = 1\n"
    );
    let _daemon = Daemon::start(state, &config);
    let dashboard = std::fs::read_to_string(state.join("run/dashboard.addr"))
        .unwrap()
        .trim()
        .to_owned();
    cli_ok(state, &["spawn", "alice"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let manager = mcp_connect(&rt, state, "manager", "mcp.sock");
    // None of these needs a human.
    rt.block_on(mcp_ok(
        &manager,
        "send",
        json!({"to": "alice", "body": "hello alice"}),
    ));
    rt.block_on(mcp_ok(
        &manager,
        "send",
        json!({"to": "operator", "body": "fyi"}),
    ));
    cli_ok(state, &["send", "alice", "from the operator"]);
    // This one does; its text is the agent's, escaped.
    rt.block_on(mcp_ok(
        &manager,
        "ask_operator",
        json!({"question": "May I deploy?\u{1b}[2J"}),
    ));

    let (head, body) = received
        .recv_timeout(Duration::from_secs(60))
        .expect("no alert arrived");
    assert!(head.starts_with("post /hive-topic http/1.1"), "{head}");
    assert!(
        head.contains("\r\ntitle: hyperhive: question needs you\r\n"),
        "{head}"
    );
    assert_eq!(body, "manager asks: May I deploy?\\u{1b}[2J");
    let click = head
        .lines()
        .find_map(|l| l.strip_prefix("click: "))
        .expect("a click link")
        .trim()
        .to_owned();
    let prefix = format!("http://{dashboard}/go?t=");
    assert!(click.starts_with(&prefix), "{click}");
    // The three messages before it were on the bus before the question: had any alerted, it
    // would have been in this batch or an earlier one.
    assert!(
        received.recv_timeout(Duration::from_secs(3)).is_err(),
        "a second alert"
    );

    // The link opens the login page going on to the questions; it works once.
    let path = &click[format!("http://{dashboard}").len()..];
    let (status, page) = get(&dashboard, path);
    assert!(status.contains(" 200 "), "{status}");
    assert!(
        page.contains(r#"<input type="hidden" name="next" value="/questions">"#),
        "{page}"
    );
    assert!(
        !page.to_ascii_lowercase().contains("hive_session="),
        "no session from the link alone"
    );
    let (status, _) = get(&dashboard, path);
    assert!(status.contains(" 404 "), "{status}");
}

#[test]
fn a_bad_notify_url_is_refused_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hive.toml");
    std::fs::write(&file, "[notify]\nurl = \"ftp://example.org/x\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hive"))
        .args(["check-config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("notify.url"), "{err}");
}
