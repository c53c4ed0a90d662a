//! The helper events' bodies (docs/events.md): what the hive tells the manager about an agent
//! without being asked, as a message from `system` and as the bus's `helper` event. A body is
//! one JSON object: `event` (the name), `agent`, and the fields of its kind.
//!
//! The hive writes a body through [`serde_json::Value`] (`serde_json::to_value(&body)`, then its
//! text), whose object keys are in sorted order: that text is what messages have always held.

use serde::{Deserialize, Serialize};

use crate::agent_config::Restart;
use crate::tools::TurnState;

/// A whole helper event body: the agent it is about and the event with its fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HelperBody {
    /// The agent it is about (the manager's own crash is about `manager`).
    pub agent: String,
    #[serde(flatten)]
    pub event: HelperEvent,
}

/// One helper event, tagged by its name (`event`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum HelperEvent {
    ContainerCrash(ContainerCrash),
    CrashLoop(CrashLoop),
    NeedsLogin(NeedsLogin),
    LoggedIn(LoggedIn),
    NeedsUpdate(NeedsUpdate),
    Rebuilt(Rebuilt),
    Spawned(Spawned),
    Destroyed(Destroyed),
    BudgetExhausted(BudgetExhausted),
    ModelUnreachable(ModelUnreachable),
    ModelReachable(ModelReachable),
    Stuck(Stuck),
}

impl HelperEvent {
    /// The event's name: its `event` field, and what `events_sent` records.
    pub fn name(&self) -> &'static str {
        match self {
            Self::ContainerCrash(_) => "container_crash",
            Self::CrashLoop(_) => "crash_loop",
            Self::NeedsLogin(_) => "needs_login",
            Self::LoggedIn(_) => "logged_in",
            Self::NeedsUpdate(_) => "needs_update",
            Self::Rebuilt(_) => "rebuilt",
            Self::Spawned(_) => "spawned",
            Self::Destroyed(_) => "destroyed",
            Self::BudgetExhausted(_) => "budget_exhausted",
            Self::ModelUnreachable(_) => "model_unreachable",
            Self::ModelReachable(_) => "model_reachable",
            Self::Stuck(_) => "stuck",
        }
    }
}

/// `container_crash`: the agent's container ended on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerCrash {
    /// The exit code, when it exited.
    pub code: Option<i32>,
    /// The signal that ended it.
    pub signal: Option<i32>,
    /// The same in words: `killed by signal 9`, `exited with code 1`, `ended`.
    pub how: String,
    /// The last lines of its container log, each cut.
    pub log_tail: Vec<String>,
    /// Its restart policy.
    pub restart: Restart,
    /// When it is started again; `None`: it is not.
    pub restart_in_seconds: Option<u64>,
    /// Restart-worthy ends within the crash window, this one included.
    pub crashes_in_window: u64,
}

/// `crash_loop`: too many restart-worthy ends within the window; the agent is left stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashLoop {
    pub crashes: u64,
    pub window_seconds: u64,
    /// What starts it again.
    pub how_to_resume: String,
}

/// `needs_login`: the agent's model login went away (or was never there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeedsLogin {
    /// What the operator runs.
    pub how: String,
}

/// `logged_in`: the agent's model login appeared. No fields of its own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedIn {}

/// `needs_update`: what runs is not the applied HEAD, or was built with another builder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeedsUpdate {
    /// The commit the container runs.
    pub running_commit: String,
    /// The applied HEAD.
    pub applied_commit: String,
    /// The image was built with another builder, harness or busybox than today's.
    pub builder_changed: bool,
}

/// `rebuilt`: a deploy replaced an earlier one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rebuilt {
    /// The commit now running.
    pub commit: String,
    /// The deploy's id.
    pub deploy: i64,
    /// `apply`, `update` or `rollback`.
    pub kind: String,
}

/// `spawned`: an agent came into being.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spawned {
    pub incarnation: i64,
    /// Whether it has a model login yet.
    pub logged_in: bool,
}

/// `destroyed`: an agent was destroyed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destroyed {
    /// The incarnation that ended.
    pub incarnation: i64,
}

/// `budget_exhausted`: the agent's model calls used up its daily token budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetExhausted {
    pub tokens_per_day: u64,
    /// Tokens used today (UTC) when it was spent.
    pub used_today: u64,
    /// When calls are allowed again.
    pub how: String,
}

/// `model_unreachable`: a model upstream's circuit breaker opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelUnreachable {
    /// The upstream's base URL.
    pub upstream: String,
    /// Failures in a row.
    pub failures: u32,
    /// The cool-down before a call goes through again.
    pub retry_in_seconds: u64,
}

/// `model_reachable`: a model upstream's circuit breaker closed again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelReachable {
    /// The upstream's base URL.
    pub upstream: String,
}

/// `stuck`: the agent's liveness turned `stuck`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stuck {
    /// What its harness last reported.
    pub turn_state: Option<TurnState>,
    /// Since its harness last reported anything.
    pub quiet_seconds: Option<u64>,
    /// What the manager does about it.
    pub how: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body's text as the hive writes it, and the body read back from that text.
    fn written(event: HelperEvent) -> String {
        let name = event.name();
        let body = HelperBody {
            agent: "bob".into(),
            event,
        };
        let value = serde_json::to_value(&body).unwrap();
        assert_eq!(value["event"], name, "the name is the tag");
        let text = value.to_string();
        let back: HelperBody = serde_json::from_str(&text).unwrap();
        assert_eq!(back, body, "{text} does not read back as what was written");
        text
    }

    #[test]
    fn container_crash() {
        let text = written(HelperEvent::ContainerCrash(ContainerCrash {
            code: None,
            signal: Some(9),
            how: "killed by signal 9".into(),
            log_tail: vec!["starting".into(), "oops".into()],
            restart: Restart::OnFailure,
            restart_in_seconds: Some(2),
            crashes_in_window: 2,
        }));
        assert_eq!(
            text,
            r#"{"agent":"bob","code":null,"crashes_in_window":2,"event":"container_crash","how":"killed by signal 9","log_tail":["starting","oops"],"restart":"on-failure","restart_in_seconds":2,"signal":9}"#
        );
        let text = written(HelperEvent::ContainerCrash(ContainerCrash {
            code: Some(1),
            signal: None,
            how: "exited with code 1".into(),
            log_tail: Vec::new(),
            restart: Restart::Never,
            restart_in_seconds: None,
            crashes_in_window: 0,
        }));
        assert_eq!(
            text,
            r#"{"agent":"bob","code":1,"crashes_in_window":0,"event":"container_crash","how":"exited with code 1","log_tail":[],"restart":"never","restart_in_seconds":null,"signal":null}"#
        );
    }

    #[test]
    fn crash_loop() {
        let text = written(HelperEvent::CrashLoop(CrashLoop {
            crashes: 6,
            window_seconds: 600,
            how_to_resume: "`hive start bob` or the manager's start".into(),
        }));
        assert_eq!(
            text,
            r#"{"agent":"bob","crashes":6,"event":"crash_loop","how_to_resume":"`hive start bob` or the manager's start","window_seconds":600}"#
        );
    }

    #[test]
    fn needs_login_and_logged_in() {
        let text = written(HelperEvent::NeedsLogin(NeedsLogin {
            how: "the operator runs `hive login bob`".into(),
        }));
        assert_eq!(
            text,
            r#"{"agent":"bob","event":"needs_login","how":"the operator runs `hive login bob`"}"#
        );
        let text = written(HelperEvent::LoggedIn(LoggedIn {}));
        assert_eq!(text, r#"{"agent":"bob","event":"logged_in"}"#);
    }

    #[test]
    fn needs_update() {
        let text = written(HelperEvent::NeedsUpdate(NeedsUpdate {
            running_commit: "aaa".into(),
            applied_commit: "bbb".into(),
            builder_changed: false,
        }));
        assert_eq!(
            text,
            r#"{"agent":"bob","applied_commit":"bbb","builder_changed":false,"event":"needs_update","running_commit":"aaa"}"#
        );
    }

    #[test]
    fn rebuilt() {
        let text = written(HelperEvent::Rebuilt(Rebuilt {
            commit: "ccc".into(),
            deploy: 7,
            kind: "update".into(),
        }));
        assert_eq!(
            text,
            r#"{"agent":"bob","commit":"ccc","deploy":7,"event":"rebuilt","kind":"update"}"#
        );
    }

    #[test]
    fn spawned_and_destroyed() {
        let text = written(HelperEvent::Spawned(Spawned {
            incarnation: 3,
            logged_in: true,
        }));
        assert_eq!(
            text,
            r#"{"agent":"bob","event":"spawned","incarnation":3,"logged_in":true}"#
        );
        let text = written(HelperEvent::Destroyed(Destroyed { incarnation: 3 }));
        assert_eq!(
            text,
            r#"{"agent":"bob","event":"destroyed","incarnation":3}"#
        );
    }

    #[test]
    fn budget_exhausted() {
        let text = written(HelperEvent::BudgetExhausted(BudgetExhausted {
            tokens_per_day: 1000,
            used_today: 1042,
            how: "until 00:00 UTC".into(),
        }));
        assert_eq!(
            text,
            r#"{"agent":"bob","event":"budget_exhausted","how":"until 00:00 UTC","tokens_per_day":1000,"used_today":1042}"#
        );
    }

    #[test]
    fn model_unreachable_and_reachable() {
        let text = written(HelperEvent::ModelUnreachable(ModelUnreachable {
            upstream: "http://127.0.0.1:9/".into(),
            failures: 5,
            retry_in_seconds: 30,
        }));
        assert_eq!(
            text,
            r#"{"agent":"bob","event":"model_unreachable","failures":5,"retry_in_seconds":30,"upstream":"http://127.0.0.1:9/"}"#
        );
        let text = written(HelperEvent::ModelReachable(ModelReachable {
            upstream: "http://127.0.0.1:9/".into(),
        }));
        assert_eq!(
            text,
            r#"{"agent":"bob","event":"model_reachable","upstream":"http://127.0.0.1:9/"}"#
        );
    }

    #[test]
    fn stuck() {
        let text = written(HelperEvent::Stuck(Stuck {
            turn_state: Some(TurnState::Thinking),
            quiet_seconds: Some(601),
            how: "`restart` bob: its harness is stopped before a new one starts".into(),
        }));
        assert_eq!(
            text,
            r#"{"agent":"bob","event":"stuck","how":"`restart` bob: its harness is stopped before a new one starts","quiet_seconds":601,"turn_state":"thinking"}"#
        );
        let text = written(HelperEvent::Stuck(Stuck {
            turn_state: None,
            quiet_seconds: None,
            how: "h".into(),
        }));
        assert_eq!(
            text,
            r#"{"agent":"bob","event":"stuck","how":"h","quiet_seconds":null,"turn_state":null}"#
        );
    }
}
