//! Resource bounds of a real `hive serve` under hostile clients: connection floods on the admin
//! and MCP sockets, a 100 MB body, a 100 MB MCP line, JSON nested 10 000 deep, and clients that
//! send one byte a second. The daemon keeps answering others within 100 ms, cuts the bad clients
//! off after its documented limits, and its open fds and memory come back.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// One `GET /api/v1/status` on a fresh connection: how long it took.
fn status_latency(state: &Path) -> Duration {
    let started = Instant::now();
    let mut s = UnixStream::connect(state.join("run/admin.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /api/v1/status HTTP/1.1\r\nhost: hive\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    started.elapsed()
}

/// Keeps asking for the status while `busy` runs; returns the slowest answer.
fn slowest_status_during(state: &Path, busy: impl FnOnce() + Send) -> Duration {
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let prober = s.spawn(|| {
            let mut slowest = Duration::ZERO;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                slowest = slowest.max(status_latency(state));
                std::thread::sleep(Duration::from_millis(20));
            }
            slowest
        });
        busy();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        prober.join().unwrap()
    })
}

/// Reads until the peer closes or `limit` passes; returns whether it closed and what came.
fn read_until_closed(s: &mut UnixStream, limit: Duration) -> (bool, String) {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (true, String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (true, String::from_utf8_lossy(&got).into_owned());
            }
            Err(_) => return (false, String::from_utf8_lossy(&got).into_owned()),
        }
    }
}

#[test]
fn connection_floods_leave_no_fds_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let daemon = Daemon::start(state, "");
    assert!(cli(state, &["spawn", "alice"]).status.success());
    let pid = daemon.pid();
    status_latency(state); // warm up
    let (fds_before, rss_before) = (open_fds(pid), rss_kib(pid));

    let slowest = slowest_status_during(state, || {
        for socket in ["run/admin.sock", "run/agents/alice/mcp.sock"] {
            for i in 0..1000 {
                let mut s = UnixStream::connect(state.join(socket)).unwrap();
                if i % 3 == 0 {
                    let _ = s.write_all(b"half a request");
                }
            }
        }
    });
    // A bound against starvation (a flood that held the daemon would take seconds), not a
    // speed figure: it must hold on a loaded 2-core machine too.
    assert!(
        slowest < Duration::from_millis(300),
        "status took {slowest:?} during the flood"
    );
    let settled = eventually(Duration::from_secs(15), || open_fds(pid) <= fds_before);
    assert!(settled, "fds: {fds_before} before, {} after", open_fds(pid));
    let rss_after = rss_kib(pid);
    assert!(
        rss_after < rss_before + 8 * 1024,
        "RSS {rss_before} KiB → {rss_after} KiB"
    );
}

#[test]
fn huge_deep_and_slow_requests_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let daemon = Daemon::start(state, "");
    assert!(cli(state, &["spawn", "alice"]).status.success());
    let pid = daemon.pid();
    status_latency(state);
    let (fds_before, rss_before) = (open_fds(pid), rss_kib(pid));

    let slowest = slowest_status_during(state, || {
        std::thread::scope(|s| {
            // Slow clients: one byte a second of a request head, and of an MCP handshake.
            let slow_admin = s.spawn(|| {
                let mut c = UnixStream::connect(state.join("run/admin.sock")).unwrap();
                let started = Instant::now();
                for b in b"POST /api/v1/messages HTTP/1.1\r\nhost: hive\r\n".iter() {
                    if c.write_all(&[*b]).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                    if started.elapsed() > Duration::from_secs(14) {
                        break;
                    }
                }
                let (closed, _) = read_until_closed(&mut c, Duration::from_secs(2));
                (closed, started.elapsed())
            });
            let slow_mcp = s.spawn(|| {
                let mut c = UnixStream::connect(state.join("run/agents/alice/mcp.sock")).unwrap();
                let started = Instant::now();
                let _ = c.write_all(b"{\"jsonrpc\":");
                let (closed, _) = read_until_closed(&mut c, Duration::from_secs(14));
                (closed, started.elapsed())
            });

            // 100 MB of body on the admin socket: refused once past the limit, not buffered.
            let mut c = UnixStream::connect(state.join("run/admin.sock")).unwrap();
            let head = "POST /api/v1/messages HTTP/1.1\r\nhost: hive\r\ncontent-type: application/json\r\ncontent-length: 104857600\r\n\r\n{\"to\":\"manager\",\"body\":\"";
            c.write_all(head.as_bytes()).unwrap();
            let chunk = vec![b'x'; 1 << 20];
            let mut sent = 0;
            while sent < 100 && c.write_all(&chunk).is_ok() {
                sent += 1;
            }
            let (_, answer) = read_until_closed(&mut c, Duration::from_secs(5));
            assert!(
                answer.starts_with("HTTP/1.1 413"),
                "100 MB body: {:.200}",
                answer
            );
            assert!(answer.contains("request_too_large"), "{answer}");

            // 100 MB on one MCP line: dropped past the line limit; the connection and the daemon
            // carry on.
            let mut m = UnixStream::connect(state.join("run/agents/alice/mcp.sock")).unwrap();
            let mut written = 0;
            while written < 100 && m.write_all(&chunk).is_ok() {
                written += 1;
            }
            let _ = m.write_all(b"\n");
            drop(m);

            // JSON nested 10 000 deep, on both surfaces.
            let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
            let mut c = UnixStream::connect(state.join("run/admin.sock")).unwrap();
            let req = format!(
                "POST /api/v1/messages HTTP/1.1\r\nhost: hive\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{deep}",
                deep.len()
            );
            c.write_all(req.as_bytes()).unwrap();
            let (_, answer) = read_until_closed(&mut c, Duration::from_secs(5));
            assert!(answer.starts_with("HTTP/1.1 422"), "{:.200}", answer);
            let mut m = UnixStream::connect(state.join("run/agents/alice/mcp.sock")).unwrap();
            let _ = m.write_all(format!("{deep}\n").as_bytes());
            drop(m);

            let (closed, after) = slow_admin.join().unwrap();
            assert!(closed, "the slow admin client was not cut off");
            assert!(after < Duration::from_secs(13), "cut off after {after:?}");
            let (closed, after) = slow_mcp.join().unwrap();
            assert!(closed, "the slow MCP client was not cut off");
            assert!(after < Duration::from_secs(13), "cut off after {after:?}");
        });
    });
    assert!(
        slowest < Duration::from_millis(300),
        "status took {slowest:?} meanwhile"
    );
    let settled = eventually(Duration::from_secs(15), || open_fds(pid) <= fds_before);
    assert!(settled, "fds: {fds_before} before, {} after", open_fds(pid));
    let rss_after = rss_kib(pid);
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS {rss_before} KiB → {rss_after} KiB"
    );
    // Nothing was stored by any of it: the only message is the watcher's `spawned` for alice.
    let stored: Vec<(String, String)> = common::open_db(state)
        .prepare("SELECT sender, body FROM messages")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(
        stored
            .iter()
            .all(|(from, body)| from == "system" && body.contains("\"spawned\"")),
        "{stored:?}"
    );
}
