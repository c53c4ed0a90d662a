//! The hive's live events as its server-sent event streams carry them (DESIGN §13): the bus's
//! [`Event`] (`/events`, `GET /api/v1/messages?follow=1`), and what a stream adds itself
//! ([`Lagged`], an agent log's [`LogText`]); [`StreamEvent`] reads any of them by its SSE name.
//!
//! The SSE event's name is the event's `event` tag, and its data the event's JSON (the tag in it
//! too), so a client may read either.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::agent::AgentRecord;
use crate::approval::{Approval, ApprovalStatus, Check, Deploy, RiskFlag};
use crate::message::Message;
use crate::tools::TurnState;

/// One thing that happened in the hive, published after the change it describes committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A message was accepted (committed) into an inbox.
    MessageSent { message: Arc<Message> },
    /// Messages were taken out of an inbox (by `recv` or a finished turn).
    MessageDelivered { ids: Vec<i64>, to: String },
    /// A harness reported events of a turn in progress (the harness's own JSON, passed on).
    TurnEvents {
        agent: String,
        turn: i64,
        events: Arc<Vec<serde_json::Value>>,
    },
    /// A harness reported what its model is doing (`report_state`).
    TurnState { agent: String, state: TurnState },
    /// The manager asked for an approval (without its diff: `hive show` has it).
    ApprovalRequested { approval: Arc<Approval> },
    /// The operator approved or denied.
    ApprovalResolved {
        id: i64,
        kind: String,
        agent: String,
        requester: String,
        commit: String,
        status: ApprovalStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// The check build of a pending approval finished (`review`): its status, risk flags.
    ApprovalChecked {
        id: i64,
        agent: String,
        requester: String,
        check: Arc<Check>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        risk: Option<Arc<Vec<RiskFlag>>>,
    },
    /// An applied HEAD moved (spawn, approved apply, rollback), or a deploy changed status.
    Deploy { deploy: Deploy },
    /// An agent came into being: spawned, approved, or restored (a restore brings back its old
    /// incarnation).
    AgentCreated { agent: AgentRecord },
    /// An agent was destroyed; rows of `incarnation` are no longer anyone's.
    AgentRemoved { agent: String, incarnation: i64 },
    /// An agent asked the operator a question (`ask_operator`); its message is in the operator's
    /// inbox too.
    QuestionAsked {
        id: i64,
        asker: String,
        question: String,
    },
    /// The watcher told the manager a helper event (docs/events.md); `body` is the message's JSON.
    Helper {
        agent: String,
        name: String,
        body: Arc<serde_json::Value>,
    },
}

impl Event {
    /// The event's name on SSE streams (its `event` tag).
    pub fn name(&self) -> &'static str {
        match self {
            Self::MessageSent { .. } => "message_sent",
            Self::MessageDelivered { .. } => "message_delivered",
            Self::TurnEvents { .. } => "turn_events",
            Self::TurnState { .. } => "turn_state",
            Self::ApprovalRequested { .. } => "approval_requested",
            Self::ApprovalResolved { .. } => "approval_resolved",
            Self::ApprovalChecked { .. } => "approval_checked",
            Self::Deploy { .. } => "deploy",
            Self::AgentCreated { .. } => "agent_created",
            Self::AgentRemoved { .. } => "agent_removed",
            Self::QuestionAsked { .. } => "question_asked",
            Self::Helper { .. } => "helper",
        }
    }

    /// Whether the event concerns agent `who` (or `operator`), for `--agent` filters.
    pub fn concerns(&self, who: &str) -> bool {
        match self {
            Self::MessageSent { message } => message.from == who || message.to == who,
            Self::MessageDelivered { to, .. } => to == who,
            Self::TurnEvents { agent, .. } => agent == who,
            Self::TurnState { agent, .. } => agent == who,
            Self::ApprovalRequested { approval } => {
                approval.agent == who || approval.requester == who
            }
            Self::ApprovalResolved {
                agent, requester, ..
            } => agent == who || requester == who,
            Self::ApprovalChecked {
                agent, requester, ..
            } => agent == who || requester == who,
            Self::Deploy { deploy } => deploy.agent == who,
            Self::AgentCreated { agent } => agent.name == who,
            Self::AgentRemoved { agent, .. } => agent == who,
            Self::QuestionAsked { asker, .. } => asker == who || who == "operator",
            Self::Helper { agent, .. } => agent == who || who == "manager",
        }
    }
}

/// The SSE name of [`Lagged`].
pub const LAGGED: &str = "lagged";
/// The SSE name of [`LogText`].
pub const LOG: &str = "log";
/// The SSE name of an event the hive could not encode (it has no data).
pub const ERROR: &str = "error";

/// A subscriber fell behind the bus and missed `missed` events: re-read the listing to catch up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lagged {
    pub missed: u64,
}

/// A chunk of an agent's log (`GET /api/v1/agents/{name}/logs?follow=1`): one or more whole
/// lines, as the container wrote them (escape before printing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogText {
    pub text: String,
}

/// Any event of the hive's SSE streams, read by its SSE name.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    Bus(Event),
    Lagged(Lagged),
    Log(LogText),
    /// The hive could not encode an event (it is lost to this stream).
    Error,
}

impl StreamEvent {
    /// Reads the SSE event `name` with `data`. An error means this side does not know the event
    /// or its fields (a daemon of another version): never a reason to drop it silently.
    pub fn parse(name: &str, data: &str) -> Result<Self, serde_json::Error> {
        if name == ERROR {
            return Ok(Self::Error);
        }
        Self::read(name, &serde_json::from_str(data)?)
    }

    /// [`StreamEvent::parse`] of data already read as JSON (what a client that also keeps the
    /// JSON reads once); `name` is not [`ERROR`], whose data is no JSON.
    pub fn read(name: &str, data: &serde_json::Value) -> Result<Self, serde_json::Error> {
        Ok(match name {
            LAGGED => Self::Lagged(Lagged::deserialize(data)?),
            LOG => Self::Log(LogText::deserialize(data)?),
            ERROR => Self::Error,
            _ => {
                let event = Event::deserialize(data)?;
                if event.name() != name {
                    return Err(serde::de::Error::custom(format!(
                        "an SSE event named {name:?} holds a {:?} event",
                        event.name()
                    )));
                }
                Self::Bus(event)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::agent::AgentKind;
    use crate::approval::{CheckStatus, DeployStatus, RiskKind};
    use crate::message::MessageState;

    fn message() -> Message {
        Message {
            id: 7,
            from: "manager".into(),
            to: "bob".into(),
            body: "hello".into(),
            in_reply_to: None,
            sent_at: 1000,
            state: MessageState::Queued,
            delivered_at: None,
            leased_at: None,
            turn: None,
            redelivered: false,
        }
    }

    fn approval() -> Approval {
        Approval {
            id: 3,
            kind: "apply".into(),
            agent: "bob".into(),
            requester: "manager".into(),
            commit: "abc".into(),
            base: Some("def".into()),
            description: "more memory".into(),
            stat: "1 file changed".into(),
            status: ApprovalStatus::Pending,
            note: None,
            created_at: 2000,
            resolved_at: None,
            diff: None,
            files: None,
            stale: false,
            applied_head: None,
            deploy: None,
            risk: None,
            check: None,
        }
    }

    /// Every variant and the JSON the broker's bus event put on the wire for it, literally.
    fn every_event() -> Vec<(Event, serde_json::Value)> {
        vec![
            (
                Event::MessageSent {
                    message: Arc::new(message()),
                },
                json!({"event": "message_sent", "message": {"id": 7, "from": "manager",
                    "to": "bob", "body": "hello", "sent_at": 1000, "state": "queued",
                    "redelivered": false}}),
            ),
            (
                Event::MessageDelivered {
                    ids: vec![7, 8],
                    to: "bob".into(),
                },
                json!({"event": "message_delivered", "ids": [7, 8], "to": "bob"}),
            ),
            (
                Event::TurnEvents {
                    agent: "bob".into(),
                    turn: 4,
                    events: Arc::new(vec![json!({"type": "text", "text": "hi"})]),
                },
                json!({"event": "turn_events", "agent": "bob", "turn": 4,
                    "events": [{"type": "text", "text": "hi"}]}),
            ),
            (
                Event::TurnState {
                    agent: "bob".into(),
                    state: TurnState::Thinking,
                },
                json!({"event": "turn_state", "agent": "bob", "state": "thinking"}),
            ),
            (
                Event::ApprovalRequested {
                    approval: Arc::new(approval()),
                },
                json!({"event": "approval_requested", "approval": {"id": 3, "kind": "apply",
                    "agent": "bob", "requester": "manager", "commit": "abc", "base": "def",
                    "description": "more memory", "stat": "1 file changed",
                    "status": "pending", "created_at": 2000}}),
            ),
            (
                Event::ApprovalResolved {
                    id: 3,
                    kind: "apply".into(),
                    agent: "bob".into(),
                    requester: "manager".into(),
                    commit: "abc".into(),
                    status: ApprovalStatus::Denied,
                    note: Some("too much".into()),
                },
                json!({"event": "approval_resolved", "id": 3, "kind": "apply", "agent": "bob",
                    "requester": "manager", "commit": "abc", "status": "denied",
                    "note": "too much"}),
            ),
            (
                Event::ApprovalResolved {
                    id: 4,
                    kind: "spawn".into(),
                    agent: "carol".into(),
                    requester: "manager".into(),
                    commit: "fed".into(),
                    status: ApprovalStatus::Approved,
                    note: None,
                },
                json!({"event": "approval_resolved", "id": 4, "kind": "spawn",
                    "agent": "carol", "requester": "manager", "commit": "fed",
                    "status": "approved"}),
            ),
            (
                Event::ApprovalChecked {
                    id: 3,
                    agent: "bob".into(),
                    requester: "manager".into(),
                    check: Arc::new(Check {
                        status: CheckStatus::Ok,
                        message: None,
                        closure_bytes: Some(42),
                        started_at: 10,
                        finished_at: Some(20),
                    }),
                    risk: Some(Arc::new(vec![RiskFlag::new(
                        RiskKind::EgressAdded,
                        vec!["example.org:443".into()],
                    )])),
                },
                json!({"event": "approval_checked", "id": 3, "agent": "bob",
                    "requester": "manager", "check": {"status": "ok", "closure_bytes": 42,
                    "started_at": 10, "finished_at": 20}, "risk": [{"flag": "egress_added",
                    "widening": true, "details": ["example.org:443"]}]}),
            ),
            (
                Event::ApprovalChecked {
                    id: 5,
                    agent: "bob".into(),
                    requester: "manager".into(),
                    check: Arc::new(Check {
                        status: CheckStatus::Unavailable,
                        message: Some("no nix".into()),
                        closure_bytes: None,
                        started_at: 10,
                        finished_at: None,
                    }),
                    risk: None,
                },
                json!({"event": "approval_checked", "id": 5, "agent": "bob",
                    "requester": "manager", "check": {"status": "unavailable",
                    "message": "no nix", "started_at": 10}}),
            ),
            (
                Event::Deploy {
                    deploy: Deploy {
                        id: 9,
                        agent: "bob".into(),
                        commit: "abc".into(),
                        approval: Some(3),
                        kind: "apply".into(),
                        status: DeployStatus::Failed,
                        created_at: 3000,
                        message: Some("build failed".into()),
                    },
                },
                json!({"event": "deploy", "deploy": {"id": 9, "agent": "bob", "commit": "abc",
                    "approval": 3, "kind": "apply", "status": "failed", "created_at": 3000,
                    "message": "build failed"}}),
            ),
            (
                Event::AgentCreated {
                    agent: AgentRecord {
                        name: "bob".into(),
                        kind: AgentKind::Agent,
                        incarnation: 2,
                        uid_base: 131072,
                        created_at: 4000,
                        allowed_recipients: vec!["carol".into()],
                    },
                },
                json!({"event": "agent_created", "agent": {"name": "bob", "kind": "agent",
                    "incarnation": 2, "uid_base": 131072, "created_at": 4000,
                    "allowed_recipients": ["carol"]}}),
            ),
            (
                Event::AgentRemoved {
                    agent: "bob".into(),
                    incarnation: 2,
                },
                json!({"event": "agent_removed", "agent": "bob", "incarnation": 2}),
            ),
            (
                Event::QuestionAsked {
                    id: 11,
                    asker: "bob".into(),
                    question: "which key?".into(),
                },
                json!({"event": "question_asked", "id": 11, "asker": "bob",
                    "question": "which key?"}),
            ),
            (
                Event::Helper {
                    agent: "bob".into(),
                    name: "crashed".into(),
                    body: Arc::new(json!({"event": "crashed", "agent": "bob"})),
                },
                json!({"event": "helper", "agent": "bob", "name": "crashed",
                    "body": {"event": "crashed", "agent": "bob"}}),
            ),
        ]
    }

    #[test]
    fn every_event_is_the_json_the_bus_sent_and_reads_back_equal() {
        let events = every_event();
        let mut named: Vec<&str> = events.iter().map(|(e, _)| e.name()).collect();
        named.dedup();
        assert_eq!(named.len(), 12, "a variant is missing: {named:?}");
        for (event, expected) in events {
            let text = serde_json::to_string(&event).unwrap();
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(&text).unwrap(),
                expected
            );
            assert_eq!(expected["event"], event.name());
            let back: Event = serde_json::from_str(&text).unwrap();
            assert_eq!(back, event);
            assert_eq!(
                StreamEvent::parse(event.name(), &text).unwrap(),
                StreamEvent::Bus(event)
            );
        }
    }

    /// Field order too: the wire is byte-for-byte what it was.
    #[test]
    fn the_four_the_cli_prints_are_exactly_these_bytes() {
        let by_name = |name: &str| {
            every_event()
                .into_iter()
                .find(|(e, _)| e.name() == name)
                .map(|(e, _)| serde_json::to_string(&e).unwrap())
                .unwrap()
        };
        assert_eq!(
            by_name("message_sent"),
            r#"{"event":"message_sent","message":{"id":7,"from":"manager","to":"bob","body":"hello","sent_at":1000,"state":"queued","redelivered":false}}"#
        );
        assert_eq!(
            by_name("message_delivered"),
            r#"{"event":"message_delivered","ids":[7,8],"to":"bob"}"#
        );
        assert_eq!(
            by_name("approval_resolved"),
            r#"{"event":"approval_resolved","id":3,"kind":"apply","agent":"bob","requester":"manager","commit":"abc","status":"denied","note":"too much"}"#
        );
        assert_eq!(
            by_name("agent_created"),
            r#"{"event":"agent_created","agent":{"name":"bob","kind":"agent","incarnation":2,"uid_base":131072,"created_at":4000,"allowed_recipients":["carol"]}}"#
        );
    }

    #[test]
    fn stream_events_the_streams_add_read_by_their_names() {
        assert_eq!(
            serde_json::to_string(&Lagged { missed: 5 }).unwrap(),
            r#"{"missed":5}"#
        );
        assert_eq!(
            StreamEvent::parse("lagged", r#"{"missed":5}"#).unwrap(),
            StreamEvent::Lagged(Lagged { missed: 5 })
        );
        assert_eq!(
            serde_json::to_string(&LogText {
                text: "a\nb\n".into()
            })
            .unwrap(),
            r#"{"text":"a\nb\n"}"#
        );
        assert_eq!(
            StreamEvent::parse("log", r#"{"text":"a\n"}"#).unwrap(),
            StreamEvent::Log(LogText { text: "a\n".into() })
        );
        assert_eq!(StreamEvent::parse("error", "").unwrap(), StreamEvent::Error);
    }

    #[test]
    fn an_event_this_side_does_not_know_is_an_error_not_nothing() {
        // A renamed field, an unknown event, a name that disagrees with the data's tag.
        for (name, data) in [
            (
                "message_delivered",
                r#"{"event":"message_delivered","ids":[1],"recipient":"bob"}"#,
            ),
            ("agent_paused", r#"{"event":"agent_paused","agent":"bob"}"#),
            (
                "message_sent",
                r#"{"event":"message_delivered","ids":[1],"to":"bob"}"#,
            ),
            ("lagged", r#"{"behind":5}"#),
            ("log", "not json"),
        ] {
            assert!(
                StreamEvent::parse(name, data).is_err(),
                "{name} {data} read"
            );
        }
    }
}
