//! A second MCP client, independent of rmcp and of the claude CLI: the Python `mcp` SDK (pinned by
//! scripts/setup in .tools/venv) starts `hive-agent mcp` as its stdio server, lists the tools of an
//! agent's socket and calls `send`. The message must land in the store as the socket's agent.

mod common;

use std::time::Duration;

use common::{AGENT_TOOLS, TestHive, hive_agent};
use serde_json::{Value, json};
use testkit::{process, tools};

/// The client, kept beside this test (see the file for what it prints).
const CLIENT: &str = include_str!("python_sdk_client.py");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_lists_the_agent_tools_and_sends() {
    let Some(python) = tools::require("python mcp", tools::python_mcp()) else {
        return;
    };
    let hive = TestHive::open(&["alice", "bob"]).await;
    let dir = hive.scratch("python");
    let script = dir.join("client.py");
    std::fs::write(&script, CLIENT).unwrap();

    let args = json!({"to": "bob", "body": "hello from python"});
    let mut cmd = tokio::process::Command::new(&python);
    cmd.current_dir(&dir)
        .arg(&script)
        .arg(hive_agent())
        .arg(hive.mcp_socket("alice"))
        .arg("send")
        .arg(args.to_string());
    let out = process::finish(&mut cmd, "the python client", Duration::from_secs(60)).await;
    let describe = out.describe();
    assert!(out.status.success(), "{describe}");
    let lines: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let line = |key: &str| {
        lines
            .iter()
            .find_map(|l| l.get(key))
            .unwrap_or_else(|| panic!("no {key} line in {describe}"))
    };

    assert_eq!(line("server")["name"], "hyperhive", "{describe}");
    assert_eq!(line("tools"), &json!(AGENT_TOOLS), "{describe}");
    let call = line("call");
    assert_eq!(call["is_error"], false, "{describe}");

    // Stored once, from the socket's agent to bob; the result names it.
    let msg = hive.only_message("alice", "bob", "hello from python").await;
    let answer: Value = serde_json::from_str(call["text"].as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("the send result is not JSON ({e}): {describe}"));
    assert_eq!(answer, json!({"sent": [msg.id]}));
}
