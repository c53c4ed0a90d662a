//! Counts this process's open fds, so it runs alone in its own test binary: tests that open fds
//! in parallel threads would move the count.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rmcp::ServiceExt;
use serde_json::json;
use tokio::net::UnixStream;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_dropped_connections_leak_no_fd() {
    let f = fixture(&["alice"]).await;
    let path = f.dir.path().join("run/agents/alice/mcp.sock");
    // Warm up: one full session, so lazily opened things (read connections) are counted before.
    let c = connect(&f, "alice", "mcp.sock").await;
    ok(&c, "whoami", json!({})).await;
    let connected = open_fds();
    drop(c);
    // Both ends of the warm-up connection closed.
    until("the warm-up connection is closed", || {
        open_fds() <= connected - 2
    })
    .await;
    let before = open_fds();
    for i in 0..500 {
        let stream = UnixStream::connect(&path).await.unwrap();
        if i % 2 == 0 {
            // Half of them finish the handshake first.
            let client = ().serve(stream).await.unwrap();
            drop(client);
        } else {
            drop(stream);
        }
    }
    let settled = {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let now = open_fds();
            if now <= before || Instant::now() > end {
                break now;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert!(settled <= before, "fds: {before} before, {settled} after");
    // Still serving.
    let c = connect(&f, "alice", "mcp.sock").await;
    assert_eq!(ok(&c, "whoami", json!({})).await["name"], "alice");
}
