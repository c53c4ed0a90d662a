//! The tools of each MCP surface. Who calls is fixed when the connection is accepted (the socket's
//! agent and role); no argument can name another caller. Failures the model should read come back
//! as tool results with `is_error` and a text that says what to do; protocol faults (unknown tool,
//! arguments of the wrong shape) are MCP errors from rmcp.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ServerHandler, tool, tool_handler, tool_router};
use tokio_util::sync::CancellationToken;

use super::Role;
use crate::Hive;
use proto::tools::*;

use crate::containers::Actor;
use crate::mailbox::RecvLimits;
use crate::names::{AgentName, Inbox, Recipient, Sender};
use crate::questions::{DEFAULT_TTL_SECONDS, MAX_TTL_SECONDS};
use crate::registry::AgentKind;

/// What one connection owns: the turns it leased (returned to the queue when it drops) and a token
/// cancelled when its peer hangs up, so waits end and take nothing.
#[derive(Default)]
pub(super) struct ConnectionState {
    pub closed: CancellationToken,
    pub leased_turns: Mutex<HashSet<i64>>,
}

#[derive(Clone)]
pub struct HiveMcp {
    hive: Arc<Hive>,
    me: AgentName,
    role: Role,
    conn: Arc<ConnectionState>,
    tool_router: ToolRouter<Self>,
}

type ToolResult = Result<String, String>;

/// A broker error as the text a model reads (secrets masked: an error may quote what it read).
fn explain(e: crate::Error) -> String {
    if e.is_internal() {
        let shown = e.to_string();
        tracing::error!(error = %crate::redact::mask(&shown), "internal error in an MCP tool");
        return "internal error in the hive; the operator can find the details in its log".into();
    }
    crate::redact::mask(&e.to_string()).into_owned()
}

fn to_json(v: &impl serde::Serialize) -> ToolResult {
    serde_json::to_string(v).map_err(|e| e.to_string())
}

impl HiveMcp {
    pub(super) fn new(
        hive: Arc<Hive>,
        me: AgentName,
        role: Role,
        conn: Arc<ConnectionState>,
    ) -> Self {
        let tool_router = match role {
            Role::Agent => Self::agent_tools(),
            Role::Manager => Self::agent_tools() + Self::manager_tools(),
            Role::Harness => Self::harness_tools(),
        };
        Self {
            hive,
            me,
            role,
            conn,
            tool_router,
        }
    }

    /// Names of every tool this surface lists.
    pub fn tool_names(&self) -> Vec<String> {
        self.tool_router
            .list_all()
            .into_iter()
            .map(|t| t.name.to_string())
            .collect()
    }

    /// Waits for `fut` unless the request is cancelled or the peer hangs up first.
    /// `next_turn`, except that nothing is leased while this agent is paused: the wait goes on
    /// until it is resumed (or the wait ends), and a pause that comes mid-wait ends the take
    /// (a lease it was committing is given back).
    async fn next_turn_unless_paused(
        &self,
        wait: Duration,
    ) -> crate::error::Result<Option<crate::mailbox::Turn>> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut pauses = self.hive.pauses.watch();
        loop {
            let Some(incarnation) = self.hive.agent(&self.me).map(|r| r.incarnation) else {
                return Ok(None);
            };
            let paused = pauses.borrow_and_update().contains(&incarnation);
            // A closed watch means the hive is going away: answer nothing.
            if paused {
                tokio::select! {
                    changed = pauses.changed() => match changed {
                        Ok(()) => continue,
                        Err(_) => return Ok(None),
                    },
                    _ = tokio::time::sleep_until(deadline) => return Ok(None),
                }
            }
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let take = self.hive.mailbox.next_turn(&self.me, remaining);
            tokio::pin!(take);
            tokio::select! {
                got = &mut take => return got,
                paused = pauses.wait_for(|set| set.contains(&incarnation)) => match paused {
                    Ok(_) => continue,
                    Err(_) => return Ok(None),
                },
            }
        }
    }

    async fn unless_gone<T>(
        &self,
        ct: &CancellationToken,
        fut: impl Future<Output = T>,
    ) -> Option<T> {
        tokio::select! {
            out = fut => Some(out),
            _ = ct.cancelled() => None,
            _ = self.conn.closed.cancelled() => None,
        }
    }
}

// ---- the agent tools (every agent, the manager too) ----

#[tool_router(router = agent_tools, vis = "pub(super)")]
impl HiveMcp {
    /// Send a message to another agent, the operator, or everyone. Returns the new message id(s)
    /// once stored durably.
    #[tool(
        description = "Send a message to another agent (by name), to the human operator (`operator`), or to every other agent (`*`). The message is stored durably before this returns; the result holds its id. Use `in_reply_to` with a message id to answer one."
    )]
    async fn send(&self, Parameters(args): Parameters<SendArgs>) -> ToolResult {
        let to = Recipient::parse(&args.to).map_err(|e| explain(e.into()))?;
        let ids = self
            .hive
            .mailbox
            .send(
                &Sender::Agent(self.me.clone()),
                &to,
                args.body,
                args.in_reply_to,
            )
            .await
            .map_err(explain)?;
        to_json(&Sent { sent: ids })
    }

    /// Take queued messages from your inbox, optionally waiting for one to arrive.
    #[tool(
        description = "Take the messages waiting in your inbox, oldest first (each is returned once). With `wait_seconds` > 0 and nothing queued, waits up to that long for a message to arrive and returns as soon as one does. Returns a JSON list of {id, from, body, in_reply_to, sent_at}."
    )]
    async fn recv(
        &self,
        Parameters(args): Parameters<RecvArgs>,
        ct: CancellationToken,
    ) -> ToolResult {
        let limits = RecvLimits::new(args.wait_seconds, args.max.unwrap_or(MAX_RECV as u64))
            .map_err(explain)?;
        let inbox = Inbox::Agent(self.me.clone());
        let Some(got) = self
            .unless_gone(&ct, self.hive.mailbox.recv(&inbox, limits))
            .await
        else {
            return Err("cancelled".into());
        };
        to_json(&got.map_err(explain)?)
    }

    /// Ask the human operator a question; the answer arrives later as a message.
    #[tool(
        description = "Ask the human operator a question. Returns at once with the question id; the answer arrives later in your inbox as a message from `operator` replying to it (or, if nobody answers within ttl_seconds, a message from `system` saying it expired). Offer `options` when the answer is a choice."
    )]
    async fn ask_operator(&self, Parameters(args): Parameters<AskArgs>) -> ToolResult {
        let q = self
            .hive
            .ask_operator(
                &self.me,
                args.question,
                args.options,
                args.multi,
                args.ttl_seconds,
            )
            .await
            .map_err(explain)?;
        to_json(&Asked {
            question: q.id,
            expires_at: q.expires_at,
            note: "the answer will arrive in your inbox as a message from `operator`".into(),
        })
    }

    /// Who you are and whom you may write to.
    #[tool(
        description = "Tell who you are in the hive: your name, your role, and whom you may send messages to. (`recv` with wait_seconds 0 shows what waits in your inbox.)"
    )]
    async fn whoami(&self) -> ToolResult {
        let record = self.hive.registry.get(&self.me);
        let may_write_to: Vec<String> = self
            .hive
            .registry
            .names()
            .into_iter()
            .filter(|n| *n != self.me && record.as_ref().is_none_or(|r| r.may_send_to(n)))
            .map(|n| n.to_string())
            .chain(["operator".to_owned()])
            .collect();
        to_json(&Whoami {
            name: self.me.to_string(),
            role: self.role.as_str().into(),
            may_write_to,
        })
    }

    /// Be sent a message from `system` after a delay.
    #[tool(
        description = "Set a reminder: after `in_seconds`, you receive `body` as a message from `system`. Use it to wake yourself later (you cannot send messages to yourself). Survives restarts of the hive."
    )]
    async fn remind(&self, Parameters(args): Parameters<RemindArgs>) -> ToolResult {
        let r = self
            .hive
            .remind(&self.me, args.in_seconds, args.body)
            .await
            .map_err(explain)?;
        to_json(&Reminded {
            reminder: r.id,
            due_at: r.due_at,
        })
    }
}

// ---- the manager's own tools ----

#[tool_router(router = manager_tools, vis = "pub(super)")]
impl HiveMcp {
    /// Create a new agent: first a draft repo, then an approval for a commit of it.
    #[tool(
        description = "Create a new agent in two steps. 1) request_spawn(name) creates a draft config repo at /agents/<name>/config from the default template (agent.nix + prompt.md). 2) Edit and commit there with git, then request_spawn(name, commit) queues a Spawn approval; the operator sees every file of the commit and decides. The result arrives in your inbox as an `approval_resolved` message from `system`."
    )]
    async fn request_spawn(&self, Parameters(args): Parameters<RequestSpawnArgs>) -> ToolResult {
        let done = self
            .hive
            .request_spawn(&self.me, &args.name, args.commit.as_deref())
            .await
            .map_err(explain)?;
        to_json(&done)
    }

    /// Ask the operator to apply a commit of an agent's config.
    #[tool(
        description = "Ask the operator to apply a commit of an agent's config repo (/agents/<agent>/config). The commit is pinned at once (later changes to the repo do not alter it) and queued with its diff for the operator, who approves or denies; the result arrives in your inbox as an `approval_resolved` message from `system`. Nothing changes until then."
    )]
    async fn request_apply_commit(
        &self,
        Parameters(args): Parameters<RequestApplyArgs>,
    ) -> ToolResult {
        let approval = self
            .hive
            .request_apply(&self.me, &args.agent, &args.commit, args.description)
            .await
            .map_err(explain)?;
        to_json(&approval)
    }

    /// The approvals you asked for and how they were resolved.
    #[tool(
        description = "List approvals (newest last): id, kind (spawn/apply), agent, commit, status (pending, approved, building, deployed, failed, denied) and the operator's note."
    )]
    async fn approvals(&self, Parameters(args): Parameters<ApprovalsArgs>) -> ToolResult {
        to_json(
            &self
                .hive
                .approvals(args.status, None)
                .await
                .map_err(explain)?,
        )
    }

    /// The agents of the hive.
    #[tool(
        description = "List the agents of the hive: name, kind (manager or agent), when created, and whom each may write to (empty = anyone)."
    )]
    async fn agents(&self) -> ToolResult {
        to_json(&self.hive.registry.list())
    }

    /// Start an agent's container.
    #[tool(
        description = "Start an agent's container on its last successfully built config (building its applied config first if none was built). Waits until its harness is connected (up to 30 s). Returns {result, run: {state, up, pid, deploy, commit}}."
    )]
    async fn start(&self, Parameters(args): Parameters<AgentArgs>) -> ToolResult {
        let agent = self.other_agent(&args.agent, "start")?;
        to_json(
            &self
                .hive
                .start_agent(Actor::Manager, &agent)
                .await
                .map_err(explain)?,
        )
    }

    /// Stop an agent's container.
    #[tool(
        description = "Stop an agent's container (SIGTERM; after a timeout its processes are killed). Not yourself. Its inbox keeps its messages; `start` brings it back."
    )]
    async fn kill(&self, Parameters(args): Parameters<AgentArgs>) -> ToolResult {
        let agent = self.other_agent(&args.agent, "stop")?;
        to_json(
            &self
                .hive
                .stop_agent(Actor::Manager, &agent)
                .await
                .map_err(explain)?,
        )
    }

    /// Restart an agent's container.
    #[tool(
        description = "Restart an agent's container on the same config (not yourself). Use `update` to run a newly applied config."
    )]
    async fn restart(&self, Parameters(args): Parameters<AgentArgs>) -> ToolResult {
        let agent = self.other_agent(&args.agent, "restart")?;
        to_json(
            &self
                .hive
                .restart_agent(Actor::Manager, &agent)
                .await
                .map_err(explain)?,
        )
    }

    /// Pause an agent: no new turns, its mail waits.
    #[tool(
        description = "Pause an agent (not yourself): it takes no new turn (one already running ends as it would) and the messages sent to it wait, queued; its container keeps running. `resume` lets it take them. Returns {result, run}."
    )]
    async fn pause(&self, Parameters(args): Parameters<AgentArgs>) -> ToolResult {
        let agent = self.other_agent(&args.agent, "pause")?;
        to_json(
            &self
                .hive
                .pause_agent(Actor::Manager, &agent)
                .await
                .map_err(explain)?,
        )
    }

    /// Resume a paused agent.
    #[tool(
        description = "Resume an agent you paused: its queued messages start turns again. An agent the operator paused stays paused until the operator resumes it. Returns {result, run}."
    )]
    async fn resume(&self, Parameters(args): Parameters<AgentArgs>) -> ToolResult {
        let agent = self.other_agent(&args.agent, "resume")?;
        to_json(
            &self
                .hive
                .resume_agent(Actor::Manager, &agent)
                .await
                .map_err(explain)?,
        )
    }

    /// Rebuild and restart an agent whose applied config is not what runs.
    #[tool(
        description = "Rebuild an agent's container from its applied config and restart it, when what runs is not the applied HEAD (e.g. after a failed build) or was built by an older hive (builder, harness); answers `already up to date` and builds nothing otherwise. Waits for the build. A failed build leaves what ran before running and returns nix's message in deploy.message."
    )]
    async fn update(&self, Parameters(args): Parameters<AgentArgs>) -> ToolResult {
        let agent = AgentName::parse(&args.agent).map_err(|e| explain(e.into()))?;
        to_json(
            &self
                .hive
                .update_agent(Actor::Manager, &agent)
                .await
                .map_err(explain)?,
        )
    }

    /// The last lines of an agent's container log.
    #[tool(
        description = "Read the last `lines` lines (default 100, capped at 10000) of an agent's container log: what its harness and model CLI printed."
    )]
    async fn logs(&self, Parameters(args): Parameters<LogsArgs>) -> ToolResult {
        let agent = AgentName::parse(&args.agent).map_err(|e| explain(e.into()))?;
        // More than the cap is capped, not refused.
        let lines = args.lines.unwrap_or(100).min(MAX_LOG_LINES);
        self.hive
            .agent_logs(&agent, lines as usize)
            .await
            .map_err(explain)
    }
}

impl HiveMcp {
    /// The agent a lifecycle tool acts on; never the manager itself (it would cut off its own
    /// turn).
    fn other_agent(&self, name: &str, action: &str) -> Result<AgentName, String> {
        let agent = AgentName::parse(name).map_err(|e| explain(e.into()))?;
        if agent == self.me {
            return Err(format!(
                "you cannot {action} yourself; the operator can (`hive {action} {agent}`)"
            ));
        }
        Ok(agent)
    }
}

// ---- the harness surface ----

/// A harness long-poll's `wait_seconds`, refused past [`MAX_WAIT_SECONDS`].
fn harness_wait(seconds: u64) -> Result<Duration, String> {
    if seconds > MAX_WAIT_SECONDS {
        return Err(format!(
            "wait_seconds: wait at most {MAX_WAIT_SECONDS} seconds"
        ));
    }
    Ok(Duration::from_secs(seconds))
}

#[tool_router(router = harness_tools, vis = "pub(super)")]
impl HiveMcp {
    /// Lease the queued messages of this agent's inbox as one turn.
    #[tool(
        description = "Take the queued messages of this agent (oldest first, at most 16 and 64 KiB of bodies) as one new turn, waiting up to wait_seconds for one. Returns {turn, message (the first), messages} or null. The messages stay leased until finish_turn; if this connection drops first they are delivered again, flagged redelivered."
    )]
    async fn next_turn(
        &self,
        Parameters(args): Parameters<NextTurnArgs>,
        ct: CancellationToken,
    ) -> ToolResult {
        let wait = harness_wait(args.wait_seconds)?;
        let Some(got) = self
            .unless_gone(&ct, self.next_turn_unless_paused(wait))
            .await
        else {
            return Err("cancelled".into());
        };
        let turn = got.map_err(explain)?;
        if let Some(t) = &turn {
            self.conn.leased_turns.lock().expect("turns").insert(t.turn);
            // The peer may have hung up while the lease committed: give it back at once.
            if self.conn.closed.is_cancelled() {
                let _ = self
                    .hive
                    .mailbox
                    .release_turns(&self.me, vec![t.turn])
                    .await;
                return Err("cancelled".into());
            }
        }
        to_json(&turn)
    }

    /// Record events of a turn in progress.
    #[tool(description = "Record events of a turn in progress (shown live to the operator).")]
    async fn turn_events(&self, Parameters(args): Parameters<TurnEventsArgs>) -> ToolResult {
        if args.events.len() > MAX_EVENTS_PER_CALL {
            return Err(format!("events: at most {MAX_EVENTS_PER_CALL} per call"));
        }
        let n = self
            .hive
            .mailbox
            .record_turn_events(&self.me, args.turn, args.events)
            .await
            .map_err(explain)?;
        to_json(&Recorded { recorded: n })
    }

    /// End a turn: its messages are delivered.
    #[tool(description = "End a turn: its messages become delivered and the usage is recorded.")]
    async fn finish_turn(&self, Parameters(args): Parameters<FinishTurnArgs>) -> ToolResult {
        if args.outcome.is_empty() || args.outcome.len() > 64 {
            return Err("outcome: 1 to 64 characters, e.g. ok or error".into());
        }
        self.hive
            .mailbox
            .finish_turn(&self.me, args.turn, &args.outcome, args.usage)
            .await
            .map_err(explain)?;
        self.conn
            .leased_turns
            .lock()
            .expect("turns")
            .remove(&args.turn);
        to_json(&Finished {
            finished: args.turn,
        })
    }

    /// Give a turn back unfinished: its message is delivered again, flagged redelivered.
    #[tool(
        description = "Give back a turn the model could not take (e.g. it needs a login or died): its messages return to the queue, flagged redelivered, and is not marked delivered. Returns {released} (0 if the turn was not open)."
    )]
    async fn release_turn(&self, Parameters(args): Parameters<ReleaseTurnArgs>) -> ToolResult {
        let released = self
            .hive
            .mailbox
            .release_turns(&self.me, vec![args.turn])
            .await
            .map_err(explain)?;
        self.conn
            .leased_turns
            .lock()
            .expect("turns")
            .remove(&args.turn);
        to_json(&Released { released })
    }

    /// Wait for a `/cancel` from the operator while a turn runs.
    #[tool(
        description = "While turn `turn` runs, wait up to wait_seconds for a `/cancel` message from the operator; it is leased into the turn (delivered when the turn finishes) and returned, or null when none came or the turn ended. Other operator commands wait for their turn in order."
    )]
    async fn next_cancel(
        &self,
        Parameters(args): Parameters<NextCancelArgs>,
        ct: CancellationToken,
    ) -> ToolResult {
        let wait = harness_wait(args.wait_seconds)?;
        let Some(got) = self
            .unless_gone(
                &ct,
                self.hive.mailbox.take_cancel(&self.me, args.turn, wait),
            )
            .await
        else {
            return Err("cancelled".into());
        };
        to_json(&got.map_err(explain)?)
    }

    /// Wait for this agent's login after a turn found it logged out.
    #[tool(
        description = "After a turn ended needing a login, wait up to wait_seconds for the operator to log this agent in (`hive login`: claude credentials written, or an API key stored). Returns {logged_in: true} as soon as the hive sees the login, {logged_in: false} when the wait ran out."
    )]
    async fn wait_login(
        &self,
        Parameters(args): Parameters<WaitLoginArgs>,
        ct: CancellationToken,
    ) -> ToolResult {
        use tokio::sync::broadcast::error::RecvError;
        let wait = harness_wait(args.wait_seconds)?;
        // Subscribed before anything else, so a login from here on is not missed.
        let mut bus = self.hive.bus.subscribe();
        let me = self.me.to_string();
        let login = async {
            loop {
                match bus.recv().await {
                    Ok(crate::bus::Event::Helper { agent, name, .. })
                        if agent == me && name == crate::watcher::LOGGED_IN_EVENT =>
                    {
                        return true;
                    }
                    Ok(_) => {}
                    // Events were missed: ask the watcher what it saw instead.
                    Err(RecvError::Lagged(_)) => {
                        if self.hive.agent_axes(&self.me).logged_in == Some(true) {
                            return true;
                        }
                    }
                    Err(RecvError::Closed) => return false,
                }
            }
        };
        let Some(waited) = self
            .unless_gone(&ct, tokio::time::timeout(wait, login))
            .await
        else {
            return Err("cancelled".into());
        };
        to_json(&LoginWaited {
            logged_in: waited.unwrap_or(false),
        })
    }

    /// Answer an operator command, as `system`, in the operator's inbox.
    #[tool(
        description = "Answer the operator's command message `command` (leased to an open turn of this agent): the body goes to the operator's inbox from `system`, prefixed with this agent's name, replying to the command. Returns {sent}."
    )]
    async fn command_reply(&self, Parameters(args): Parameters<CommandReplyArgs>) -> ToolResult {
        let id = self
            .hive
            .mailbox
            .reply_to_command(&self.me, args.command, args.body)
            .await
            .map_err(explain)?;
        to_json(&Sent { sent: vec![id] })
    }

    /// Say what the model is doing, for the operator.
    #[tool(
        description = "Report what this agent's model is doing: idle, thinking, compacting, needs_login or paused. Shown in the agent's run state."
    )]
    async fn report_state(&self, Parameters(args): Parameters<ReportStateArgs>) -> ToolResult {
        // A paused agent's harness waits for nothing but its resume: its idle is `paused`.
        let state = if args.state == TurnState::Idle && self.hive.is_paused(&self.me) {
            TurnState::Paused
        } else {
            args.state
        };
        self.hive.containers.set_turn_state(&self.me, state);
        self.hive.bus.publish(crate::bus::Event::TurnState {
            agent: self.me.to_string(),
            state,
        });
        to_json(&Reported { state })
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for HiveMcp {
    fn get_info(&self) -> ServerConfig {
        let instructions = match self.role {
            Role::Harness => format!(
                "The harness surface of agent {}: next_turn, turn_events, finish_turn, release_turn, report_state, next_cancel, command_reply, wait_login.",
                self.me
            ),
            _ => format!(
                "You are agent '{}' in a hyperhive. Messages to you arrive in your inbox; read them with \
                 `recv`, answer with `send` (to another agent, `operator`, or `*`). Ask the human with \
                 `ask_operator`; wake yourself later with `remind`. Question ttl defaults to {} s (max {} s).",
                self.me, DEFAULT_TTL_SECONDS, MAX_TTL_SECONDS
            ),
        };
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("hyperhive", env!("CARGO_PKG_VERSION")))
            .with_instructions(instructions)
    }
}

impl Role {
    /// The role of an agent's model-facing socket.
    pub fn for_agent(kind: AgentKind) -> Self {
        match kind {
            AgentKind::Manager => Self::Manager,
            AgentKind::Agent => Self::Agent,
        }
    }
}
