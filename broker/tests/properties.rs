//! Property tests (the fuzzing of this suite; cargo-fuzz needs a nightly toolchain): every input
//! either succeeds or gets a clear error, nothing panics, and nothing outside the state dir is
//! touched. Inputs: agent names, tombstone ids, hive.toml, and MCP tool arguments.

use std::sync::Arc;

use broker::Hive;
use broker::config::{Config, MAX_BODY_CEILING};
use broker::names::{AgentName, MAX_NAME_LEN, RESERVED, Recipient};
use broker::paths::StateDir;
use broker::registry::AgentKind;
use broker::tombstones::TombstoneId;
use proptest::prelude::*;
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use serde_json::{Value, json};

/// Strings near the edges of the name grammar, and anything at all.
fn name_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9-]{0,40}",
        "[a-zA-Z0-9_./ -]{0,40}",
        "(\\.\\./)*[a-z]{1,5}(/\\.\\.)*",
        any::<String>(),
        prop::sample::select(RESERVED.to_vec()).prop_map(str::to_owned),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn a_parsed_name_is_always_safe(raw in name_like()) {
        match AgentName::parse(&raw) {
            Ok(name) => {
                let s = name.as_str();
                prop_assert!(!s.is_empty() && s.len() <= MAX_NAME_LEN);
                prop_assert!(s.as_bytes()[0].is_ascii_lowercase());
                prop_assert!(!s.ends_with('-'));
                prop_assert!(s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
                prop_assert!(!RESERVED.contains(&s));
                prop_assert!(!s.contains('/') && !s.contains(".."));
            }
            Err(e) => {
                let text = e.to_string();
                prop_assert!(text.contains("invalid agent name") || text.contains("reserved"), "{}", text);
                prop_assert!(text.len() < 300);
            }
        }
        // Recipients add exactly `operator` and `*`.
        if let Ok(r) = Recipient::parse(&raw) {
            prop_assert!(raw == "operator" || raw == "*" || matches!(r, Recipient::Agent(_)));
        }
    }

    #[test]
    fn a_parsed_tombstone_id_names_a_safe_agent(raw in prop_oneof![
        "[a-z][a-z0-9-]{0,10}-[0-9]{8}T[0-9]{6}Z",
        "[a-z./-]{0,12}-[0-9T]{8,17}Z?",
        any::<String>(),
    ]) {
        if let Ok((id, agent)) = TombstoneId::parse(&raw) {
            prop_assert_eq!(id.as_str(), raw.as_str());
            prop_assert!(raw.starts_with(agent.as_str()));
            prop_assert!(!raw.contains('/') && !raw.contains(".."));
        }
    }

    #[test]
    fn any_hive_toml_is_a_config_or_a_clear_error(text in prop_oneof![
        any::<String>(),
        "\\[(store|mailbox|approvals|runtime)\\]\n[a-z_]{1,20} = (\"[a-z]{0,8}\"|[0-9-]{1,12}|true|false)\n",
    ]) {
        match Config::from_toml(&text) {
            Ok(c) => {
                prop_assert!(c.mailbox.max_body_bytes >= 1 && c.mailbox.max_body_bytes <= MAX_BODY_CEILING);
                prop_assert!(c.mailbox.retention_days >= 1);
            }
            Err(e) => prop_assert!(!e.is_empty()),
        }
    }
}

/// Arbitrary JSON, shallow, with keys that the tools know mixed in.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (-1e12f64..1e12).prop_map(|n| json!(n)),
        prop_oneof![
            "[a-z]{0,8}",
            "\\PC{0,20}",
            Just("manager".to_owned()),
            Just("*".to_owned()),
            Just("../x".to_owned())
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(known_key(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn known_key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "to",
            "body",
            "in_reply_to",
            "wait_seconds",
            "max",
            "question",
            "options",
            "multi",
            "ttl_seconds",
            "in_seconds",
            "name",
            "commit",
            "agent",
            "description",
            "status",
            "turn",
            "events",
            "outcome",
            "usage",
        ])
        .prop_map(str::to_owned),
        "[a-z_]{1,8}",
    ]
}

const TOOLS: &[&str] = &[
    "send",
    "recv",
    "ask_operator",
    "whoami",
    "remind",
    "agents",
    "request_spawn",
    "request_apply_commit",
    "approvals",
    "next_turn",
    "turn_events",
    "finish_turn",
    "release_turn",
    "report_state",
    "next_cancel",
    "command_reply",
    "wait_login",
    "no_such_tool",
];

#[test]
fn mcp_tools_answer_any_arguments_with_a_result_or_a_clear_error() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("precious"), "keep me").unwrap();
    let (hive, token, manager, alice) = rt.block_on(async {
        let state = StateDir::new(dir.path());
        state.create().unwrap();
        let hive: Arc<Hive> = Hive::open(state, Config::default()).await.unwrap();
        let token = tokio_util::sync::CancellationToken::new();
        hive.serve_mcp(&broker::components::Scope::new(token.clone()))
            .unwrap();
        hive.add_agent(AgentName::parse("alice").unwrap(), AgentKind::Agent)
            .await
            .unwrap();
        let connect = |who: &str| {
            let path = dir.path().join("run/agents").join(who).join("mcp.sock");
            async move {
                ().serve(tokio::net::UnixStream::connect(path).await.unwrap())
                    .await
                    .unwrap()
            }
        };
        (
            hive.clone(),
            token,
            connect("manager").await,
            connect("alice").await,
        )
    });
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 400,
        ..ProptestConfig::default()
    });
    let strategy = (
        prop::sample::select(TOOLS.to_vec()),
        arb_json(),
        any::<bool>(),
    );
    let (succeeded, refused) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
    runner
        .run(&strategy, |(tool, args, as_manager)| {
            let client = if as_manager { &manager } else { &alice };
            let args = match args {
                Value::Object(m) => m,
                other => [("value".to_owned(), other)].into_iter().collect(),
            };
            // Keep waits short: the property is about answers, not about waiting.
            let mut args = args;
            for key in ["wait_seconds", "in_seconds", "ttl_seconds"] {
                if let Some(Value::Number(n)) = args.get(key)
                    && n.as_u64().is_some_and(|n| n > 0 && n <= 180)
                {
                    args.insert(key.to_owned(), json!(0));
                }
            }
            let answer = rt.block_on(async {
                tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    client.call_tool(
                        CallToolRequestParams::new(tool.to_owned()).with_arguments(args),
                    ),
                )
                .await
            });
            let answer = answer.map_err(|_| TestCaseError::fail(format!("{tool} hung")))?;
            match answer {
                Ok(result) => {
                    let text: String = result
                        .content
                        .iter()
                        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
                        .collect();
                    if result.is_error.unwrap_or(false) {
                        refused.set(refused.get() + 1);
                        prop_assert!(!text.is_empty(), "{} gave an empty error", tool);
                        prop_assert!(!text.contains("internal error"), "{}: {}", tool, text);
                    } else {
                        succeeded.set(succeeded.get() + 1);
                    }
                }
                Err(e) => {
                    refused.set(refused.get() + 1);
                    prop_assert!(!e.to_string().is_empty());
                }
            }
            Ok(())
        })
        .unwrap();
    println!(
        "{} calls succeeded, {} refused",
        succeeded.get(),
        refused.get()
    );
    assert!(
        succeeded.get() > 10 && refused.get() > 100,
        "the inputs reach both outcomes"
    );
    // Still serving, nothing outside touched, no stray paths created outside the state dir.
    rt.block_on(async {
        let me = alice
            .call_tool(CallToolRequestParams::new("whoami"))
            .await
            .unwrap();
        assert!(!me.is_error.unwrap_or(false));
    });
    assert_eq!(
        std::fs::read_to_string(outside.path().join("precious")).unwrap(),
        "keep me"
    );
    for entry in std::fs::read_dir(dir.path().join("agents"))
        .unwrap()
        .flatten()
    {
        let name = entry.file_name().into_string().unwrap();
        assert!(
            AgentName::parse(&name).is_ok(),
            "a directory named {name:?} was created"
        );
    }
    token.cancel();
    drop(hive);
}

#[test]
fn tombstone_operations_on_any_id_touch_nothing_outside() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let precious = outside.path().join("precious");
    std::fs::write(&precious, "keep me").unwrap();
    let hive = rt.block_on(async {
        let state = StateDir::new(dir.path());
        state.create().unwrap();
        Hive::open(state, Config::default()).await.unwrap()
    });
    // Plant a tombstone-shaped symlink pointing outside, and the outside dir's own path.
    std::fs::create_dir_all(dir.path().join("tombstones")).unwrap();
    std::os::unix::fs::symlink(
        outside.path(),
        dir.path().join("tombstones/eve-20260101T000000Z"),
    )
    .unwrap();
    let outside_path = outside.path().to_str().unwrap().to_owned();
    let strategy = prop_oneof![
        "[a-z][a-z0-9-]{0,6}-[0-9]{8}T[0-9]{6}Z",
        "(\\.\\./){0,3}[a-z]{0,5}(/\\.\\.){0,3}",
        Just("eve-20260101T000000Z".to_owned()),
        Just(outside_path),
        any::<String>(),
    ];
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 300,
        ..ProptestConfig::default()
    });
    runner
        .run(&strategy, |raw| {
            let restored = rt.block_on(hive.restore(&raw));
            let purged = rt.block_on(hive.purge(&raw));
            prop_assert!(restored.is_err() && purged.is_err(), "{:?}", raw);
            prop_assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
            Ok(())
        })
        .unwrap();
    assert!(dir.path().join("tombstones/eve-20260101T000000Z").exists());
}
