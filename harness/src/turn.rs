//! The turn loop: lease the queued messages (`next_turn`, a long poll the hive's send wakes), wake
//! the model with them, stream every event to `turn_events`, and end the turn: `finish_turn` when
//! the model answered, `release_turn` (delivered again later, flagged) when it could not — it
//! needs a login, it died, or its upstream could not be reached (then the loop pauses before the
//! next turn, which tries the upstream again). Operator
//! commands among the messages (`commands.rs`) run in their place, in order, each answered in the
//! operator's inbox (`command_reply`). It owns the order of harness calls and the turn state the
//! hive shows; it never reads the store or decides who may write to whom (the hive does).
//!
//! `/cancel` while the model works: the loop is not in `next_turn` then, so each wake of the model
//! races a second long poll, `next_cancel`, which the hive answers with a queued `/cancel` leased
//! into the running turn. That is the simplest sound design: no second connection, no flag to keep
//! in sync — the command is an ordinary message, delivered with the turn it cancelled or given
//! back with it, and other commands keep their order in the queue. The cancelled model is killed
//! (its session is resumed at the next message).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use proto::Usage;
use proto::message::{Message, Turn};
use proto::tools::{MAX_EVENTS_PER_CALL, TurnState};
use rmcp::model::CallToolRequestParams;
use rmcp::service::{Peer, RoleClient};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::claude::{Answered, ContextFill, Failure};
use crate::commands::{self, Command};
use crate::driver::Driver;
use crate::notes::{self, NotesLimits};
use crate::prompt;

/// How long one `next_turn` waits for a message before it is asked again.
pub const WAIT_SECONDS: u64 = 60;
/// After the model said it needs a login, the next message is tried as soon as the hive sees the
/// login (`wait_login`), or after this long (a login the hive cannot see, e.g. a key fixed at the
/// provider).
const LOGIN_RETRY: Duration = Duration::from_secs(60);
/// The longest pause after the model died, or could not be reached, on consecutive turns.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The first pause after a turn the model upstream could not be reached for, unless the error
/// says how long (the gateway's open breaker does); doubled for each such turn in a row.
pub const UNREACHABLE_PAUSE: Duration = Duration::from_secs(5);
/// How often a turn the provider refused as busy (429/529, after the CLI's own retries, which
/// follow the server's `retry-after`) is tried again, and the first pause (doubled each time).
const BUSY_RETRIES: u32 = 2;
const BUSY_BACKOFF: Duration = Duration::from_secs(1);

/// Whether a turn's error is the provider being busy: rate limited (429) or overloaded (529) —
/// not the hive's refusal for a spent daily budget, which no retry today can help.
fn provider_busy(error: &str) -> bool {
    error.contains("API Error")
        && (error.contains("429") || error.contains("529"))
        && !error.contains(proto::BUDGET_SPENT)
}

/// Calls a harness tool; a tool error is an error naming the tool.
async fn call(peer: &Peer<RoleClient>, tool: &str, args: Value) -> anyhow::Result<String> {
    let params = CallToolRequestParams::new(tool.to_owned())
        .with_arguments(args.as_object().cloned().unwrap_or_default());
    let result = peer
        .call_tool(params)
        .await
        .with_context(|| format!("the hive did not answer {tool}"))?;
    let text: String = result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect();
    if result.is_error == Some(true) {
        bail!("{tool}: {text}");
    }
    Ok(text)
}

/// Tells the hive what the model is doing; a refusal is only logged (the turn goes on).
async fn report(peer: &Peer<RoleClient>, state: TurnState) {
    if let Err(e) = call(peer, "report_state", json!({"state": state})).await {
        eprintln!("hive-agent: cannot report state {}: {e:#}", state.as_str());
    }
}

/// Sends the events of `turn` as they come, at most [`MAX_EVENTS_PER_CALL`] a call.
async fn forward(peer: Peer<RoleClient>, turn: i64, mut events: mpsc::UnboundedReceiver<Value>) {
    let mut batch = Vec::with_capacity(MAX_EVENTS_PER_CALL);
    while events.recv_many(&mut batch, MAX_EVENTS_PER_CALL).await > 0 {
        let sent = std::mem::take(&mut batch);
        if let Err(e) = call(&peer, "turn_events", json!({"turn": turn, "events": sent})).await {
            eprintln!("hive-agent: events of turn {turn} lost: {e:#}");
        }
    }
}

/// Pauses that grow with each failure in a row: the time a failure gives (the gateway's open
/// breaker says when it lets a call through again), else `first` doubled for each failure
/// before it; never more than [`MAX_BACKOFF`]. For turns the model upstream could not be
/// reached for, and for a model that keeps dying.
pub struct Backoff {
    first: Duration,
    in_a_row: u32,
}

impl Backoff {
    pub fn new(first: Duration) -> Self {
        Self { first, in_a_row: 0 }
    }

    /// The pause after one more failure in a row.
    fn next(&mut self, retry_in: Option<Duration>) -> Duration {
        let doubled = self.first.saturating_mul(1 << self.in_a_row.min(16));
        self.in_a_row += 1;
        retry_in.unwrap_or(doubled).min(MAX_BACKOFF)
    }

    /// Whether a failure came before this one (since the last success).
    fn again(&self) -> bool {
        self.in_a_row > 0
    }

    /// The model answered: the next failure starts from `first` again.
    fn reset(&mut self) {
        self.in_a_row = 0;
    }
}

/// Runs turns until the hive goes away (an error) — the caller races it against stop signals.
pub async fn run(
    peer: Peer<RoleClient>,
    mut model: Driver,
    state_dir: &Path,
    notes: NotesLimits,
    mut unreachable: Backoff,
) -> anyhow::Result<()> {
    report(&peer, TurnState::Idle).await;
    let mut died = Backoff::new(Duration::from_secs(1));
    loop {
        let next = call(&peer, "next_turn", json!({"wait_seconds": WAIT_SECONDS}));
        tokio::pin!(next);
        let text = loop {
            let idle = model.idle_deadline();
            tokio::select! {
                text = &mut next => break text?,
                _ = tokio::time::sleep_until(idle.unwrap_or_else(tokio::time::Instant::now)), if idle.is_some() => {
                    eprintln!("hive-agent: claude idle; stopping it until the next message");
                    model.stop().await;
                }
            }
        };
        let Some(turn) = serde_json::from_str::<Option<Turn>>(&text)
            .with_context(|| format!("next_turn answered something unexpected: {text}"))?
        else {
            continue;
        };
        report(&peer, TurnState::Thinking).await;
        let end = one_turn(&peer, &mut model, state_dir, notes, &turn, &mut unreachable).await?;
        match end {
            End::Finished => {
                died.reset();
                unreachable.reset();
                report(&peer, TurnState::Idle).await;
            }
            End::Unreachable(pause) => {
                // No turn runs and no message is held while it waits (its messages are queued
                // again); the next turn is what tries the upstream again.
                report(&peer, TurnState::Idle).await;
                eprintln!(
                    "hive-agent: the model could not be reached; the turn was given back, the \
                     next one in {:.1} s",
                    pause.as_secs_f64()
                );
                tokio::time::sleep(pause).await;
            }
            End::NeedsLogin => {
                report(&peer, TurnState::NeedsLogin).await;
                let waited = call(
                    &peer,
                    "wait_login",
                    json!({"wait_seconds": LOGIN_RETRY.as_secs()}),
                )
                .await;
                if let Err(e) = waited {
                    eprintln!("hive-agent: wait_login failed ({e:#}); trying again later");
                    tokio::time::sleep(LOGIN_RETRY).await;
                }
                report(&peer, TurnState::Idle).await;
            }
            End::Died => {
                report(&peer, TurnState::Idle).await;
                // The first restart is at once; a model that keeps dying is not restarted hot.
                let again = died.again();
                let pause = died.next(None);
                if again {
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

enum End {
    Finished,
    NeedsLogin,
    Died,
    /// The model upstream could not be reached: the next turn after this pause.
    Unreachable(Duration),
}

/// How one part of a turn went.
enum Part {
    /// The model answered (`ok` false: it ended with an error; `cut`: at the bound of model
    /// calls).
    Answered {
        ok: bool,
        cut: bool,
        usage: Usage,
        context: Option<ContextFill>,
    },
    /// The operator cancelled it.
    Cancelled,
    /// The model could not take it: the whole turn is given back.
    GiveBack(End),
}

/// What a turn adds up to.
#[derive(Default)]
struct Tally {
    errors: bool,
    cancelled: bool,
    cut: bool,
    usage: Usage,
    /// How full the context was after the last model answer.
    context: Option<ContextFill>,
}

impl Tally {
    fn add(&mut self, ok: bool, usage: Usage) {
        self.errors |= !ok;
        let sum = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        };
        let u = &mut self.usage;
        u.input_tokens = sum(u.input_tokens, usage.input_tokens);
        u.output_tokens = sum(u.output_tokens, usage.output_tokens);
        u.cache_read_tokens = sum(u.cache_read_tokens, usage.cache_read_tokens);
        u.duration_ms = sum(u.duration_ms, usage.duration_ms);
        u.tool_calls = sum(u.tool_calls, usage.tool_calls);
        u.cost_usd = match (u.cost_usd, usage.cost_usd) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
        };
    }

    fn outcome(&self) -> &'static str {
        if self.cancelled {
            "cancelled"
        } else if self.cut {
            "tool_loop_cut"
        } else if self.errors {
            "error"
        } else {
            "ok"
        }
    }
}

/// The turn loop's view of one turn: the hive, the model, the turn, and where its events go.
struct TurnCtx<'a> {
    peer: &'a Peer<RoleClient>,
    model: &'a mut Driver,
    state_dir: &'a Path,
    notes: NotesLimits,
    turn: i64,
    events: &'a mpsc::UnboundedSender<Value>,
    unreachable: &'a mut Backoff,
}

async fn one_turn(
    peer: &Peer<RoleClient>,
    model: &mut Driver,
    state_dir: &Path,
    notes: NotesLimits,
    turn: &Turn,
    unreachable: &mut Backoff,
) -> anyhow::Result<End> {
    let (tx, rx) = mpsc::unbounded_channel();
    let forwarder = tokio::spawn(forward(peer.clone(), turn.turn, rx));
    let mut ctx = TurnCtx {
        peer,
        model,
        state_dir,
        notes,
        turn: turn.turn,
        events: &tx,
        unreachable,
    };
    // Messages run in order: ordinary ones in runs, each run one wake of the model; a command
    // between two runs acts after the first and before the second.
    let mut tally = Tally::default();
    let mut run: Vec<Message> = Vec::new();
    let mut given_back = None;
    for item in turn.messages.iter().map(Some).chain([None]) {
        let command = item.and_then(|m| commands::parse(m).map(|c| (m, c)));
        if let Some(m) = item
            && command.is_none()
        {
            run.push(m.clone());
            continue;
        }
        if !run.is_empty() && !tally.cancelled {
            match ctx.wake(&std::mem::take(&mut run)).await {
                Part::Answered {
                    ok,
                    cut,
                    usage,
                    context,
                } => {
                    tally.cut |= cut;
                    tally.add(ok, usage);
                    tally.context = context.or(tally.context);
                }
                Part::Cancelled => tally.cancelled = true,
                Part::GiveBack(end) => {
                    given_back = Some(end);
                    break;
                }
            }
        }
        run.clear();
        if let Some((m, command)) = command {
            if tally.cancelled {
                ctx.reply(m.id, "not run: the turn was cancelled before it".into())
                    .await;
                continue;
            }
            ctx.command(m, command, &mut tally).await;
        }
    }
    if given_back.is_none() && !tally.cancelled {
        ctx.keep_notes(&mut tally).await;
    }
    // Every event is stored before the turn ends (finish refuses events after it).
    drop(tx);
    let _ = forwarder.await;
    match given_back {
        None => {
            call(
                peer,
                "finish_turn",
                json!({"turn": turn.turn, "outcome": tally.outcome(), "usage": tally.usage}),
            )
            .await?;
            Ok(End::Finished)
        }
        Some(end) => {
            call(peer, "release_turn", json!({"turn": turn.turn})).await?;
            Ok(end)
        }
    }
}

impl TurnCtx<'_> {
    fn note(&self, subtype: &str, message: impl Into<String>) {
        let _ = self
            .events
            .send(json!({"type": "harness", "subtype": subtype, "message": message.into()}));
    }

    /// Answers operator command `command` in the operator's inbox; a refusal is only logged.
    async fn reply(&self, command: i64, body: String) {
        self.note("command", body.clone());
        if let Err(e) = call(
            self.peer,
            "command_reply",
            json!({"command": command, "body": body}),
        )
        .await
        {
            eprintln!("hive-agent: cannot answer command {command}: {e:#}");
        }
    }

    /// Wakes the model with `messages`, racing a `/cancel` from the operator.
    async fn wake(&mut self, messages: &[Message]) -> Part {
        let prompt = prompt::wake_for(messages);
        let first = {
            let attempt = self.model.turn(&prompt, self.events);
            let cancel = wait_for_cancel(self.peer, self.turn);
            tokio::pin!(attempt, cancel);
            tokio::select! {
                attempt = &mut attempt => Ok(attempt),
                cancel = &mut cancel => Err(cancel),
            }
        };
        let mut attempt = match first {
            Ok(attempt) => attempt,
            Err(cancel) => return self.cancelled(cancel).await,
        };
        if let Err(Failure::PromptTooLong(why)) = &attempt {
            // The session outgrew the model: compact it once and try again; a fresh session
            // only when that does not help.
            let why = why.clone();
            self.note(
                "compacting",
                format!("{why}; compacting the session and trying once more"),
            );
            match self.compact().await {
                // Nothing to learn about the session while its model cannot be reached: the
                // turn is given back as it is.
                Err(unreachable @ Failure::Unreachable { .. }) => attempt = Err(unreachable),
                compacted => {
                    let compacted = matches!(compacted, Ok(Answered { ok: true, .. }));
                    if compacted {
                        attempt = self.model.turn(&prompt, self.events).await;
                    }
                    if !compacted || matches!(attempt, Err(Failure::PromptTooLong(_))) {
                        self.note(
                            "fresh_session",
                            format!("{why}; compacting did not help: starting a fresh session and trying once more"),
                        );
                        self.model.start_fresh().await;
                        attempt = self.model.turn(&prompt, self.events).await;
                    }
                }
            }
        }
        let mut pause = BUSY_BACKOFF;
        for _ in 0..BUSY_RETRIES {
            let Ok(Answered {
                error: Some(error), ..
            }) = &attempt
            else {
                break;
            };
            if !provider_busy(error) {
                break;
            }
            self.note(
                "retry",
                format!(
                    "the provider is busy ({error}); trying again in {} s",
                    pause.as_secs()
                ),
            );
            tokio::time::sleep(pause).await;
            pause *= 2;
            attempt = self
                .model
                .turn(
                    &format!(
                        "(The last attempt failed because the model provider was busy; \
                         here are the same messages again.)\n\n{prompt}"
                    ),
                    self.events,
                )
                .await;
        }
        match attempt {
            Ok(answered) => {
                if let Some(error) = &answered.error {
                    self.note("error", error.clone());
                }
                let cut = answered.terminal_reason.as_deref() == Some("max_turns");
                if cut {
                    self.note(
                        "tool_loop_cut",
                        "the model kept calling tools past the bound of model calls per turn; the turn was cut",
                    );
                }
                Part::Answered {
                    ok: answered.ok,
                    cut,
                    usage: answered.usage,
                    context: answered.context,
                }
            }
            Err(Failure::PromptTooLong(why)) => {
                self.note(
                    "error",
                    format!("the message does not fit the model even in a fresh session: {why}"),
                );
                Part::Answered {
                    ok: false,
                    cut: false,
                    usage: Usage::default(),
                    context: None,
                }
            }
            Err(Failure::NeedsLogin(why)) => {
                self.note("needs_login", why);
                Part::GiveBack(End::NeedsLogin)
            }
            Err(Failure::Unreachable { why, retry_in }) => {
                let pause = self.unreachable.next(retry_in);
                self.note(
                    "model_unreachable",
                    format!(
                        "the model could not be reached ({why}); the turn is given back and \
                         taken again in {:.1} s",
                        pause.as_secs_f64()
                    ),
                );
                Part::GiveBack(End::Unreachable(pause))
            }
            Err(Failure::Died(why) | Failure::CannotResume(why)) => {
                self.note("model_died", why);
                Part::GiveBack(End::Died)
            }
        }
    }

    /// After a turn's work: a notes checkpoint then a compaction when the context is nearly
    /// full, and a rewrite of `notes.md` in a separate session when it grew past its bound.
    /// Each step is a turn event; a failure is noted and the turn still ends as it was.
    async fn keep_notes(&mut self, tally: &mut Tally) {
        let path = self.state_dir.join(prompt::NOTES_FILE);
        if let Some(fill) = tally.context
            && self.notes.checkpoint_due(fill)
        {
            self.note(
                "notes_checkpoint",
                format!(
                    "the context is {}% full ({} of {} tokens): asking for a notes checkpoint, \
                     then compacting",
                    fill.percent(),
                    fill.used,
                    fill.window
                ),
            );
            report(self.peer, TurnState::Compacting).await;
            let prompt = prompt::notes_checkpoint(&path, fill.percent());
            match self.model.turn(&prompt, self.events).await {
                Ok(answered) => tally.add(answered.ok, answered.usage),
                Err(f) => self.note("error", format!("the notes checkpoint failed: {f:?}")),
            }
            self.note(
                "compacting",
                "compacting the session after the notes checkpoint",
            );
            match self.compact().await {
                Ok(answered) => tally.add(answered.ok, answered.usage),
                Err(f) => self.note("error", format!("the compaction failed: {f:?}")),
            }
            tally.context = None;
        }
        let Some((size, old)) = notes::overgrown(&path, self.notes.max_bytes) else {
            return;
        };
        self.note(
            "notes_rewrite",
            format!(
                "{} is {size} bytes, past its bound of {}: rewriting it in a separate session",
                path.display(),
                self.notes.max_bytes
            ),
        );
        report(self.peer, TurnState::Compacting).await;
        let system = prompt::notes_rewrite(self.notes.max_bytes);
        let rewritten = self.model.one_shot(&system, &old, self.events).await;
        report(self.peer, TurnState::Thinking).await;
        match rewritten {
            Ok(new) if !new.trim().is_empty() && (new.trim().len() as u64) < size => {
                match notes::replace(&path, &new) {
                    Ok(()) => self.note(
                        "notes_rewritten",
                        format!("{size} → {} bytes", new.trim().len() + 1),
                    ),
                    Err(e) => self.note("error", format!("cannot replace {}: {e}", path.display())),
                }
            }
            Ok(_) => self.note(
                "error",
                "the notes rewrite was empty or not shorter; notes.md is kept as it was",
            ),
            Err(f) => self.note("error", format!("the notes rewrite failed: {f:?}")),
        }
    }

    /// Compacts the session (`/compact`), reported as `compacting` while it runs.
    async fn compact(&mut self) -> Result<Answered, Failure> {
        report(self.peer, TurnState::Compacting).await;
        let compacted = self.model.turn("/compact", self.events).await;
        report(self.peer, TurnState::Thinking).await;
        compacted
    }

    /// The operator's `/cancel` (message `cancel`) stopped the model mid-turn: the process is
    /// killed (its session is kept and resumed at the next message).
    async fn cancelled(&mut self, cancel: i64) -> Part {
        self.model.kill().await;
        self.reply(cancel, format!("cancelled turn {}", self.turn))
            .await;
        Part::Cancelled
    }

    /// Runs an operator command and answers it.
    async fn command(&mut self, m: &Message, command: Command, tally: &mut Tally) {
        let answer = match command {
            Command::Model(None) => match self.model.model() {
                Some(name) => format!("model is {name}"),
                None => "model is the CLI's default".to_owned(),
            },
            Command::Model(Some(name)) => self.set_model(&name).await,
            Command::NewSession => {
                self.model.start_fresh().await;
                "new session: the next message starts a fresh conversation".to_owned()
            }
            Command::Compact => match self.compact().await {
                Ok(answered) => {
                    tally.add(answered.ok, answered.usage);
                    match answered.error {
                        None => "compacted the session".to_owned(),
                        Some(e) => format!("compaction failed: {e}"),
                    }
                }
                Err(
                    Failure::PromptTooLong(why) | Failure::Died(why) | Failure::CannotResume(why),
                ) => {
                    tally.errors = true;
                    format!("compaction failed: {why}")
                }
                Err(Failure::NeedsLogin(why)) => {
                    tally.errors = true;
                    format!("compaction failed, the model needs a login: {why}")
                }
                Err(Failure::Unreachable { why, .. }) => {
                    tally.errors = true;
                    format!("compaction failed, the model could not be reached: {why}")
                }
            },
            Command::Cancel => "nothing to cancel: no turn was running".to_owned(),
            Command::Unknown(word) => format!("unknown command {word}; {}", commands::KNOWN),
        };
        self.reply(m.id, answer).await;
    }

    async fn set_model(&mut self, name: &str) -> String {
        let model = if name == "default" {
            None
        } else if let Err(e) = commands::check_model(name) {
            return format!("model not changed: {e}");
        } else {
            Some(name.to_owned())
        };
        if let Err(e) = commands::store_model(self.state_dir, model.as_deref()) {
            return format!("model not changed: cannot keep it in the state dir: {e}");
        }
        let model = model.or_else(|| self.model.configured_model());
        self.model.set_model(model);
        // The next turn starts claude with the new model, resuming the session.
        self.model.stop().await;
        match self.model.model() {
            Some(name) => format!("model set to {name}"),
            None => "model set to the CLI's default".to_owned(),
        }
    }
}

/// Long-polls the hive for a `/cancel` of `turn`; returns the command's message id. Never returns
/// when the hive refuses (the turn runs to its end).
async fn wait_for_cancel(peer: &Peer<RoleClient>, turn: i64) -> i64 {
    loop {
        let got = call(
            peer,
            "next_cancel",
            json!({"turn": turn, "wait_seconds": WAIT_SECONDS}),
        )
        .await;
        match got.map(|text| serde_json::from_str::<Option<Message>>(&text)) {
            Ok(Ok(Some(m))) => return m.id,
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                eprintln!("hive-agent: next_cancel answered something unexpected: {e}");
                return std::future::pending().await;
            }
            Err(e) => {
                eprintln!("hive-agent: cannot watch for /cancel: {e:#}");
                return std::future::pending().await;
            }
        }
    }
}
