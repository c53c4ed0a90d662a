//! The bus: an in-memory broadcast of what happens in the hive, for SSE streams and `--follow`
//! (DESIGN §13). It is a view, never a source of truth: a subscriber that lags is told so and
//! re-reads the store. Events are published only after the change they describe has committed.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::broadcast;

use crate::approvals::{Approval, Deploy};
use crate::mailbox::Message;
use crate::registry::AgentRecord;
use crate::status::ApprovalStatus;

/// How many events a slow subscriber may fall behind before it is told it lagged.
const CAPACITY: usize = 4096;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A message was accepted (committed) into an inbox.
    MessageSent { message: Arc<Message> },
    /// Messages were taken out of an inbox (by `recv` or a finished turn).
    MessageDelivered { ids: Vec<i64>, to: String },
    /// A harness reported events of a turn in progress.
    TurnEvents {
        agent: String,
        turn: i64,
        events: Arc<Vec<serde_json::Value>>,
    },
    /// A harness reported what its model is doing (`report_state`).
    TurnState {
        agent: String,
        state: proto::tools::TurnState,
    },
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
        #[serde(skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// The check build of a pending approval finished (`review`): its status, risk flags.
    ApprovalChecked {
        id: i64,
        agent: String,
        requester: String,
        check: Arc<proto::Check>,
        #[serde(skip_serializing_if = "Option::is_none")]
        risk: Option<Arc<Vec<proto::RiskFlag>>>,
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
    /// The agents (or `operator`) an event concerns, for `--agent` filters.
    /// The event's name on SSE streams.
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
            Self::AgentCreated { agent } => agent.name.as_str() == who,
            Self::AgentRemoved { agent, .. } => agent == who,
            Self::QuestionAsked { asker, .. } => asker == who || who == "operator",
            Self::Helper { agent, .. } => agent == who || who == "manager",
        }
    }
}

#[derive(Clone)]
pub struct Bus {
    tx: broadcast::Sender<Event>,
}

impl Default for Bus {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(CAPACITY).0,
        }
    }
}

impl Bus {
    pub fn publish(&self, event: Event) {
        // No subscriber is not an error: nobody is watching.
        let _ = self.tx.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
