//! `hive-agent mcp`, the stdio ↔ unix-socket bridge, against a plain socket: bytes pass both ways
//! untouched, and the bridge exits when either side closes.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BRIDGE: &str = env!("CARGO_BIN_EXE_hive-agent");

fn wait_exit(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// A socket standing in for the hive, and a bridge connected to it with piped stdin and stdout.
fn bridge_to_a_socket() -> (
    tempfile::TempDir,
    std::process::Child,
    std::os::unix::net::UnixStream,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mcp.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let bridge = Command::new(BRIDGE)
        .args(["mcp", "--socket"])
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (hive, _) = listener.accept().unwrap();
    (dir, bridge, hive)
}

/// Everything the bridge wrote to its standard output.
fn all_stdout(bridge: &mut std::process::Child) -> String {
    let mut out = String::new();
    bridge
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    out
}

#[test]
fn the_hive_hanging_up_ends_the_bridge_even_with_stdin_open() {
    let (_dir, mut bridge, mut hive) = bridge_to_a_socket();
    bridge
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"{\"ping\":1}\n")
        .unwrap();
    let mut line = String::new();
    BufReader::new(&mut hive).read_line(&mut line).unwrap();
    assert_eq!(line, "{\"ping\":1}\n");
    hive.write_all(b"{\"pong\":1}\n").unwrap();
    drop(hive);
    let status = wait_exit(&mut bridge, Duration::from_secs(5)).expect("the bridge kept running");
    assert!(status.success(), "{status:?}");
    let out = all_stdout(&mut bridge);
    assert_eq!(out, "{\"pong\":1}\n");
}

#[test]
fn stdin_closing_lets_the_hive_answer_then_ends_the_bridge() {
    let (_dir, mut bridge, mut hive) = bridge_to_a_socket();
    bridge
        .stdin
        .take()
        .unwrap()
        .write_all(b"last request\n")
        .unwrap(); // and closes stdin
    let mut got = String::new();
    hive.read_to_string(&mut got).unwrap(); // EOF: the bridge shut its write side
    assert_eq!(got, "last request\n");
    hive.write_all(b"last answer\n").unwrap();
    drop(hive);
    let status = wait_exit(&mut bridge, Duration::from_secs(5)).expect("the bridge kept running");
    assert!(status.success());
    let out = all_stdout(&mut bridge);
    assert_eq!(out, "last answer\n");
}

#[test]
fn no_hive_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BRIDGE)
        .args(["mcp", "--socket"])
        .arg(dir.path().join("missing.sock"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect to the hive at"), "{err}");
}
