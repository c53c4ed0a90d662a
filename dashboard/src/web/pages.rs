//! The dashboard's pages (askama, every value escaped) and the form actions behind them. Each
//! action calls one `Hive` method as the operator and redirects back to a page; its errors are
//! shown as a page with the broker's message (internal errors only as "internal error").
//!
//! The agent page's chart series come from [`turn_series`], the one place that reads them.

use askama::Template;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use broker::approvals::{Approval, Deploy};
use broker::containers::{Actor, AgentRun};
use broker::mailbox::{Message, MessageState};
use broker::names::{AgentName, Recipient, Sender};
use broker::questions::{Answer, Question};
use broker::status::{ApprovalStatus, DeployStatus};
use serde::{Deserialize, Serialize};

use super::WebState;
use super::auth::SessionInfo;
use crate::error::ApiError;

/// How many rows a listing page shows.
const PAGE_ROWS: usize = 200;
/// How many lines of a failed build the approvals history shows.
const BUILD_TAIL_LINES: usize = 4;
/// How many log lines the agent page shows.
const LOG_LINES: usize = 100;
/// How many finished turns the agent page charts.
const CHART_TURNS: usize = 500;

pub(super) fn routes() -> Router<WebState> {
    Router::new()
        .route("/", get(hive))
        .route("/spawn", post(spawn))
        .route("/approvals", get(approvals))
        .route("/approvals/{id}", get(approval))
        .route("/approvals/{id}/approve", post(approve))
        .route("/approvals/{id}/deny", post(deny))
        .route("/questions", get(questions))
        .route("/questions/{id}/answer", post(answer))
        .route("/inbox", get(inbox))
        .route("/dead-letters/{id}/redirect", post(redirect_dead_letter))
        .route("/dead-letters/{id}/drop", post(drop_dead_letter))
        .route("/send", post(send))
        .route("/messages", get(messages))
        .route("/agents/{name}", get(agent))
        .route("/agents/{name}/api-key", post(store_api_key))
        .route("/agents/{name}/{action}", post(agent_action))
        .route("/tombstones", get(tombstones))
        .route("/tombstones/{id}/{action}", post(tombstone_action))
        .route("/audit", get(audit))
}

/// An error shown as a page: the status and the (already safe) message.
pub(crate) struct PageError(ApiError);

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl From<broker::Error> for PageError {
    fn from(e: broker::Error) -> Self {
        Self(e.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        error_page(self.0.status(), self.0.message())
    }
}

type PageResult = Result<Response, PageError>;

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    message: &'a str,
}

pub(crate) fn error_page(status: StatusCode, message: &str) -> Response {
    let html = ErrorPage {
        status: status.as_u16(),
        message,
    }
    .render()
    .unwrap_or_else(|_| "error".to_owned());
    (status, Html(html)).into_response()
}

pub(super) async fn not_found() -> Response {
    error_page(StatusCode::NOT_FOUND, "There is no such page.")
}

fn render(t: &impl Template) -> PageResult {
    match t.render() {
        Ok(html) => Ok(Html(html).into_response()),
        Err(e) => {
            tracing::error!(error = %e, "cannot render a dashboard page");
            Err(broker::Error::Internal("render".into()).into())
        }
    }
}

fn agent_name(raw: &str) -> Result<AgentName, PageError> {
    Ok(AgentName::parse(raw).map_err(broker::Error::from)?)
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS` UTC.
fn when(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|_| ms.to_string())
}

/// The steps of a message after it was sent, each at its time: `leased 12:00:01 (turn 5)`,
/// `delivered 12:00:04`.
fn receipt(m: &Message) -> Vec<String> {
    let mut steps = Vec::new();
    if let (Some(at), Some(turn)) = (m.leased_at, m.turn) {
        steps.push(format!("leased {} (turn {turn})", when(at)));
    }
    if let Some(at) = m
        .delivered_at
        .filter(|_| m.state == MessageState::Delivered)
    {
        steps.push(format!("delivered {}", when(at)));
    }
    steps
}

fn message_state(s: MessageState) -> &'static str {
    match s {
        MessageState::Queued => "queued",
        MessageState::Leased => "leased",
        MessageState::Delivered => "delivered",
    }
}

/// A message as the pages show it.
struct MessageView {
    id: i64,
    from: String,
    to: String,
    body: String,
    in_reply_to: Option<i64>,
    sent: String,
    state: &'static str,
    /// Its receipt past the sending: `leased …` (to which turn) and `delivered …`, as far as it got.
    receipt: Vec<String>,
}

impl From<Message> for MessageView {
    fn from(m: Message) -> Self {
        Self {
            id: m.id,
            sent: when(m.sent_at),
            receipt: receipt(&m),
            state: message_state(m.state),
            from: m.from,
            to: m.to,
            body: m.body,
            in_reply_to: m.in_reply_to,
        }
    }
}

/// An agent as the hive page shows it.
struct AgentRow {
    name: String,
    kind: String,
    run: AgentRun,
    turn_state: &'static str,
    /// The isolation the kernel reports, in a few words.
    isolation: String,
    /// The watcher's axes: `yes`, `no` or `—` (not known).
    logged_in: &'static str,
    up_to_date: &'static str,
    /// `working`, `waiting_on_human`, `idle`, `stuck`, `dead` (`—`: unknown).
    liveness: &'static str,
}

fn axis(known: Option<bool>) -> &'static str {
    match known {
        Some(true) => "yes",
        Some(false) => "no",
        None => "—",
    }
}

fn isolation_summary(i: &broker::runtime::Isolation) -> String {
    if !i.isolated {
        return "none (process runtime)".into();
    }
    let mut parts = vec!["container".to_owned()];
    if let Some(map) = &i.uid_map {
        parts.push(format!(
            "uids {}",
            map.split_whitespace().collect::<Vec<_>>().join(" ")
        ));
    }
    if let Some(links) = &i.net_links {
        parts.push(format!("net {}", links.join(",")));
    }
    if i.read_only_root == Some(true) {
        parts.push("read-only /".into());
    }
    parts.join("; ")
}

fn confinement_summary(c: &broker::confinement::Confinement) -> String {
    let egress = if c.egress.is_empty() {
        "no egress".to_owned()
    } else {
        format!("egress {}", c.egress.join(", "))
    };
    let budget = match c.tokens_per_day {
        Some(limit) => format!("{} of {limit} tokens today", c.tokens_today),
        None => format!("{} tokens today (no budget)", c.tokens_today),
    };
    let key = match c.key_inside {
        Some(false) => "no key inside",
        Some(true) => "A KEY IS INSIDE",
        None => "keys: `hive show-agent` searches",
    };
    format!(
        "network {}; {egress}; {} denied; {budget}; {key}",
        c.network, c.egress_denied
    )
}

async fn isolation_of(s: &WebState, name: &AgentName, run: &AgentRun) -> String {
    if run.pid.is_none() {
        return "not running".into();
    }
    match s.hive.agent_isolation(name).await {
        Ok(i) => isolation_summary(&i),
        Err(_) => "unknown".into(),
    }
}

#[derive(Template)]
#[template(path = "hive.html")]
struct HivePage {
    csrf: String,
    agents: Vec<AgentRow>,
    pending: usize,
    open_questions: usize,
    faults: Vec<String>,
    /// Sent → picked up and sent → delivered over the last hour: `p50 …, p99 …`, `None` when
    /// nothing was delivered in it.
    picked_up: Option<String>,
    delivered: Option<String>,
    delivered_count: u64,
}

/// A latency's percentiles as the hive page shows them.
fn percentiles(l: &broker::mailbox::LatencySummary) -> Option<String> {
    Some(format!(
        "p50 {}, p99 {}",
        millis(l.p50_ms?),
        millis(l.p99_ms?)
    ))
}

/// A duration in milliseconds, short: `12 ms`, `3.1 s`, `4 min 5 s`.
fn millis(ms: i64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{} min {} s", ms / 60_000, ms % 60_000 / 1000)
    }
}

async fn hive(State(s): State<WebState>, Extension(session): Extension<SessionInfo>) -> PageResult {
    let mut agents = vec![];
    for record in s.hive.agents() {
        let Ok(run) = s.hive.agent_run(&record.name) else {
            continue;
        };
        let isolation = isolation_of(&s, &record.name, &run).await;
        let axes = s.hive.agent_axes(&record.name);
        let liveness = s
            .hive
            .agent_liveness(&record.name)
            .await
            .map_or("—", |l| l.as_str());
        agents.push(AgentRow {
            liveness,
            logged_in: axis(axes.logged_in),
            up_to_date: axis(axes.up_to_date),
            name: record.name.to_string(),
            kind: serde_json::to_value(record.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            turn_state: run.turn_state.map(|t| t.as_str()).unwrap_or("—"),
            run,
            isolation,
        });
    }
    let pending = s.hive.approvals(Some("pending".into()), None).await?.len();
    let open_questions = s.hive.questions(false).await?.len();
    let faults = s.hive.faults().into_iter().map(|f| f.agent).collect();
    let latency = s.hive.delivery_latency();
    render(&HivePage {
        csrf: session.csrf,
        agents,
        pending,
        open_questions,
        faults,
        picked_up: percentiles(&latency.picked_up),
        delivered: percentiles(&latency.delivered),
        delivered_count: latency.delivered.count,
    })
}

#[derive(Deserialize)]
struct SpawnForm {
    name: String,
    #[serde(default)]
    agent_nix: String,
}

async fn spawn(State(s): State<WebState>, Form(f): Form<SpawnForm>) -> PageResult {
    let nix = (!f.agent_nix.trim().is_empty()).then_some(f.agent_nix);
    let record = s.hive.spawn(f.name.trim(), nix).await?;
    Ok(Redirect::to(&format!("/agents/{}", record.name)).into_response())
}

/// One risk flag as shown: its name, its CSS class (`risk-widening` or `risk-raised`), details.
struct RiskView {
    flag: &'static str,
    class: &'static str,
    details: String,
}

struct ApprovalRow {
    a: Approval,
    /// The risk flags, widening ones first.
    risk: Vec<RiskView>,
    widens: bool,
    /// The check build: `ok (closure 12.3 MiB)`, `failed`, `checking`, `not checked (why)`.
    check: String,
    /// `check-ok`, `check-failed`, `check-checking`, `check-none`.
    check_class: &'static str,
    check_failed: bool,
    created: String,
    resolved: String,
    /// How the approved change built (`deployed`, `failed`, `building` …), when it was built.
    build: Option<String>,
    /// The last lines of a failed build's message.
    build_tail: Option<String>,
}

impl From<Approval> for ApprovalRow {
    fn from(a: Approval) -> Self {
        use broker::approvals::CheckStatus;
        let mut risk: Vec<RiskView> = a
            .risk
            .iter()
            .flatten()
            .map(|f| RiskView {
                flag: f.flag.as_str(),
                class: if f.widening {
                    "risk-widening"
                } else {
                    "risk-raised"
                },
                details: f.details.join(", "),
            })
            .collect();
        risk.sort_by_key(|r| r.class != "risk-widening");
        let (check, check_class) = match &a.check {
            Some(c) => match c.status {
                CheckStatus::Ok => (
                    match c.closure_bytes {
                        Some(n) => format!("ok (closure {:.1} MiB)", n as f64 / (1024.0 * 1024.0)),
                        None => "ok".to_owned(),
                    },
                    "check-ok",
                ),
                CheckStatus::Failed => ("failed".to_owned(), "check-failed"),
                CheckStatus::Checking => ("checking".to_owned(), "check-checking"),
                CheckStatus::Unavailable => (
                    format!(
                        "not checked ({})",
                        c.message.as_deref().unwrap_or("no reason given")
                    ),
                    "check-none",
                ),
            },
            None => ("not checked".to_owned(), "check-none"),
        };
        Self {
            widens: a.widens_isolation(),
            check_failed: a
                .check
                .as_ref()
                .is_some_and(|c| c.status == CheckStatus::Failed),
            risk,
            check,
            check_class,
            created: when(a.created_at),
            resolved: a.resolved_at.map(when).unwrap_or_default(),
            build: None,
            build_tail: None,
            a,
        }
    }
}

/// The last `BUILD_TAIL_LINES` lines of a build message.
fn tail(message: &str) -> String {
    let lines: Vec<&str> = message.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(BUILD_TAIL_LINES)..].join("\n")
}

#[derive(Template)]
#[template(path = "approvals.html")]
struct ApprovalsPage {
    csrf: String,
    pending: Vec<ApprovalRow>,
    history: Vec<ApprovalRow>,
}

async fn approvals(
    State(s): State<WebState>,
    Extension(session): Extension<SessionInfo>,
) -> PageResult {
    // Every pending approval however many were resolved after it; then the newest of the rest.
    let pending = s
        .hive
        .approvals(Some("pending".into()), None)
        .await?
        .into_iter()
        .map(ApprovalRow::from)
        .collect();
    let mut history: Vec<ApprovalRow> = s
        .hive
        .approvals(None, None)
        .await?
        .into_iter()
        .filter(|a| a.status != ApprovalStatus::Pending)
        .map(ApprovalRow::from)
        .collect();
    history.reverse();
    history.truncate(PAGE_ROWS);
    if let (Some(newest), Some(oldest)) = (history.first(), history.last()) {
        let builds = s
            .hive
            .deploys_of_approvals(oldest.a.id, newest.a.id, PAGE_ROWS * 4)
            .await?;
        for row in &mut history {
            if let Some(d) = builds.get(&row.a.id) {
                row.build = Some(d.status.to_string());
                row.build_tail = d
                    .message
                    .as_deref()
                    .filter(|_| d.status == DeployStatus::Failed)
                    .map(tail);
            }
        }
    }
    render(&ApprovalsPage {
        csrf: session.csrf,
        pending,
        history,
    })
}

/// One line of a diff with its class (`add`, `del`, `hunk`, `meta` or empty).
struct DiffLine {
    class: &'static str,
    text: String,
}

fn diff_lines(diff: &str) -> Vec<DiffLine> {
    diff.lines()
        .map(|l| DiffLine {
            class: if l.starts_with("+++") || l.starts_with("---") || l.starts_with("diff ") {
                "meta"
            } else if l.starts_with('+') {
                "add"
            } else if l.starts_with('-') {
                "del"
            } else if l.starts_with("@@") {
                "hunk"
            } else {
                ""
            },
            text: l.to_owned(),
        })
        .collect()
}

#[derive(Template)]
#[template(path = "approval.html")]
struct ApprovalPage {
    csrf: String,
    row: ApprovalRow,
    diff: Vec<DiffLine>,
    pending: bool,
    note_required: bool,
}

async fn approval(
    State(s): State<WebState>,
    Extension(session): Extension<SessionInfo>,
    Path(id): Path<i64>,
) -> PageResult {
    let mut a = s.hive.approval(id).await?;
    let diff = diff_lines(a.diff.take().as_deref().unwrap_or(""));
    let pending = a.status == ApprovalStatus::Pending;
    render(&ApprovalPage {
        csrf: session.csrf,
        row: a.into(),
        diff,
        pending,
        note_required: s.hive.config().approvals.deny_requires_note,
    })
}

/// The approve form: the "widens isolation" and "override a failed build" checkboxes (checked
/// again by the broker, whatever the browser did).
#[derive(Deserialize)]
struct ApproveForm {
    #[serde(default)]
    yes_widen: Option<String>,
    #[serde(default)]
    override_failed_build: Option<String>,
}

async fn approve(
    State(s): State<WebState>,
    Path(id): Path<i64>,
    Form(f): Form<ApproveForm>,
) -> PageResult {
    let confirm = broker::approvals::Confirm {
        yes_widen: f.yes_widen.is_some(),
        override_failed_build: f.override_failed_build.is_some(),
    };
    s.hive.approve_with(id, confirm).await?;
    Ok(Redirect::to(&format!("/approvals/{id}")).into_response())
}

#[derive(Deserialize)]
struct DenyForm {
    #[serde(default)]
    note: String,
}

async fn deny(
    State(s): State<WebState>,
    Path(id): Path<i64>,
    Form(f): Form<DenyForm>,
) -> PageResult {
    let note = (!f.note.trim().is_empty()).then_some(f.note);
    s.hive.deny(id, note).await?;
    Ok(Redirect::to(&format!("/approvals/{id}")).into_response())
}

struct QuestionRow {
    q: Question,
    asked: String,
}

#[derive(Template)]
#[template(path = "questions.html")]
struct QuestionsPage {
    csrf: String,
    open: Vec<QuestionRow>,
    closed: Vec<QuestionRow>,
}

async fn questions(
    State(s): State<WebState>,
    Extension(session): Extension<SessionInfo>,
) -> PageResult {
    let (open, mut closed): (Vec<_>, Vec<_>) = s
        .hive
        .questions(true)
        .await?
        .into_iter()
        .map(|q| QuestionRow {
            asked: when(q.asked_at),
            q,
        })
        .partition(|r| r.q.status == "open");
    closed.reverse();
    closed.truncate(PAGE_ROWS);
    render(&QuestionsPage {
        csrf: session.csrf,
        open,
        closed,
    })
}

/// `POST /questions/{id}/answer`: `choice` fields (one per ticked option), else `text`.
async fn answer(
    State(s): State<WebState>,
    Path(id): Path<i64>,
    Form(fields): Form<Vec<(String, String)>>,
) -> PageResult {
    let choices: Vec<String> = fields
        .iter()
        .filter(|(k, _)| k == "choice")
        .map(|(_, v)| v.clone())
        .collect();
    let text = fields
        .iter()
        .find(|(k, _)| k == "text")
        .map(|(_, v)| v.trim().to_owned())
        .filter(|t| !t.is_empty());
    let answer = match (text, choices.is_empty()) {
        (None, false) => Answer::Choices(choices),
        (Some(text), true) => Answer::Text(text),
        (None, true) => {
            return Err(
                broker::Error::invalid("answer", "tick an option or write an answer").into(),
            );
        }
        (Some(_), false) => {
            return Err(
                broker::Error::invalid("answer", "tick options or write text, not both").into(),
            );
        }
    };
    s.hive.answer_question(id, answer).await?;
    Ok(Redirect::to("/questions").into_response())
}

#[derive(Template)]
#[template(path = "inbox.html")]
struct InboxPage {
    csrf: String,
    messages: Vec<MessageView>,
    agents: Vec<String>,
    reply_to: Option<i64>,
    to: String,
    /// Messages queued too long for agents that cannot take them, and why each.
    dead_letters: Vec<(MessageView, &'static str)>,
}

#[derive(Deserialize)]
struct InboxQuery {
    #[serde(default)]
    reply: Option<i64>,
}

async fn inbox(
    State(s): State<WebState>,
    Extension(session): Extension<SessionInfo>,
    Query(q): Query<InboxQuery>,
) -> PageResult {
    let messages: Vec<MessageView> = s
        .hive
        .operator_inbox(PAGE_ROWS)
        .await?
        .into_iter()
        .rev()
        .map(MessageView::from)
        .collect();
    let to = q
        .reply
        .and_then(|id| messages.iter().find(|m| m.id == id))
        .map(|m| m.from.clone())
        .unwrap_or_default();
    let dead_letters = s
        .hive
        .dead_letters()
        .await?
        .into_iter()
        .map(|d| (MessageView::from(d.message), d.why))
        .collect();
    render(&InboxPage {
        csrf: session.csrf,
        messages,
        agents: s.hive.agents().iter().map(|a| a.name.to_string()).collect(),
        reply_to: q.reply,
        to,
        dead_letters,
    })
}

#[derive(Deserialize)]
struct RedirectForm {
    to: String,
}

/// `POST /dead-letters/{id}/redirect`: the operator sends a dead letter to another inbox.
async fn redirect_dead_letter(
    State(s): State<WebState>,
    Path(id): Path<i64>,
    Form(f): Form<RedirectForm>,
) -> PageResult {
    s.hive.redirect_dead_letter(id, f.to.trim()).await?;
    Ok(Redirect::to("/inbox").into_response())
}

/// `POST /dead-letters/{id}/drop`: the operator drops a dead letter.
async fn drop_dead_letter(State(s): State<WebState>, Path(id): Path<i64>) -> PageResult {
    s.hive.drop_dead_letter(id).await?;
    Ok(Redirect::to("/inbox").into_response())
}

#[derive(Deserialize)]
struct SendForm {
    to: String,
    body: String,
    #[serde(default)]
    in_reply_to: Option<String>,
    /// Where to go afterwards: `inbox` (default) or `agent`.
    #[serde(default)]
    back: Option<String>,
}

/// `POST /send`: the operator sends a message (operator commands such as `/compact` are messages
/// too; the harness acts on them).
async fn send(State(s): State<WebState>, Form(f): Form<SendForm>) -> PageResult {
    let to = Recipient::parse(f.to.trim()).map_err(broker::Error::from)?;
    let in_reply_to = match f.in_reply_to.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(raw) => Some(
            raw.parse::<i64>()
                .map_err(|_| broker::Error::invalid("in_reply_to", "must be a message id"))?,
        ),
    };
    s.hive
        .send(&Sender::Operator, &to, f.body, in_reply_to)
        .await?;
    let back = match (f.back.as_deref(), &to) {
        (Some("agent"), Recipient::Agent(name)) => format!("/agents/{name}"),
        (Some("messages"), _) => "/messages".to_owned(),
        _ => "/inbox".to_owned(),
    };
    Ok(Redirect::to(&back).into_response())
}

#[derive(Template)]
#[template(path = "messages.html")]
struct MessagesPage {
    csrf: String,
    agent: String,
    messages: Vec<MessageView>,
}

#[derive(Deserialize)]
struct MessagesQuery {
    #[serde(default)]
    agent: Option<String>,
}

async fn messages(
    State(s): State<WebState>,
    Extension(session): Extension<SessionInfo>,
    Query(q): Query<MessagesQuery>,
) -> PageResult {
    let agent = match q.agent.as_deref().map(str::trim) {
        None | Some("") => None,
        Some("operator") => Some("operator".to_owned()),
        Some(raw) => Some(agent_name(raw)?.to_string()),
    };
    let messages = s
        .hive
        .message_history(agent.clone(), PAGE_ROWS)
        .await?
        .into_iter()
        .rev()
        .map(MessageView::from)
        .collect();
    render(&MessagesPage {
        csrf: session.csrf,
        agent: agent.unwrap_or_default(),
        messages,
    })
}

/// The agent page's chart data: one array per series, x in unix seconds (uPlot's layout).
#[derive(Serialize, Default)]
struct Series {
    /// When each turn finished.
    at: Vec<f64>,
    input_tokens: Vec<Option<u64>>,
    output_tokens: Vec<Option<u64>>,
    cost_usd: Vec<Option<f64>>,
    duration_s: Vec<Option<f64>>,
    /// Turns finished so far, counting from the first charted.
    turns: Vec<u64>,
}

/// The one source of the agent page's charts: the per-turn stats of the agent's newest finished
/// turns (the same rows `GET /api/v1/agents/{name}/stats` serves).
async fn turn_series(s: &WebState, agent: &AgentName) -> Result<Series, PageError> {
    let stats = s.hive.agent_stats(agent, None).await?;
    let turns = &stats.turns[stats.turns.len().saturating_sub(CHART_TURNS)..];
    let mut out = Series::default();
    for (i, t) in turns.iter().enumerate() {
        out.at.push(t.finished_at as f64 / 1000.0);
        out.input_tokens.push(Some(t.input_tokens));
        out.output_tokens.push(Some(t.output_tokens));
        out.cost_usd.push(Some(t.cost_usd));
        out.duration_s.push(Some(t.duration_ms as f64 / 1000.0));
        out.turns.push(i as u64 + 1);
    }
    Ok(out)
}

struct DeployRow {
    d: Deploy,
    created: String,
    current: bool,
}

#[derive(Template)]
#[template(path = "agent.html")]
struct AgentPage {
    csrf: String,
    name: String,
    kind: String,
    run: AgentRun,
    turn_state: &'static str,
    isolation: String,
    /// The confinement summary, and its warnings (`network = "host"`, a key found inside).
    confinement: String,
    confinement_warnings: Vec<String>,
    agent_nix: Option<String>,
    deploys: Vec<DeployRow>,
    log: String,
    messages: Vec<MessageView>,
    /// The series as JSON, put in a non-executable `application/json` block for the chart script.
    series_json: String,
    /// The newest model calls through the gateway (at, input, output, cache read), the same way.
    calls_json: String,
    turns: usize,
    cost: String,
    /// The watcher's logged_in axis (`None`: not looked at yet).
    logged_in: Option<bool>,
    /// Show the login panel: the watcher or the harness says the model has no login.
    needs_login: bool,
}

async fn agent(
    State(s): State<WebState>,
    Extension(session): Extension<SessionInfo>,
    Path(raw): Path<String>,
) -> PageResult {
    let name = agent_name(&raw)?;
    let record = s.hive.agent(&name).ok_or_else(|| broker::Error::NotFound {
        what: format!("agent '{name}'"),
    })?;
    let run = s.hive.agent_run(&name)?;
    let isolation = isolation_of(&s, &name, &run).await;
    let (confinement, confinement_warnings) = if run.pid.is_none() {
        ("not running".to_owned(), Vec::new())
    } else {
        // No key search here: the page is rendered again at each event of the agent.
        match s
            .hive
            .agent_confinement(&name, broker::confinement::KeySearch::Skip)
            .await
        {
            Ok(c) => (confinement_summary(&c), c.warnings),
            Err(_) => ("unknown".to_owned(), Vec::new()),
        }
    };
    let agent_nix = s.hive.applied_agent_nix(&name).await?;
    let deploys: Vec<DeployRow> = s
        .hive
        .deploys(&name)
        .await?
        .into_iter()
        .rev()
        .map(|d| DeployRow {
            created: when(d.created_at),
            current: run.deploy == Some(d.id),
            d,
        })
        .collect();
    let log = s
        .hive
        .agent_logs(&name, LOG_LINES)
        .await
        .unwrap_or_default();
    let messages = s
        .hive
        .message_history(Some(name.to_string()), 50)
        .await?
        .into_iter()
        .rev()
        .map(MessageView::from)
        .collect();
    let series = turn_series(&s, &name).await?;
    let logged_in = s.hive.agent_axes(&name).logged_in;
    let needs_login =
        logged_in == Some(false) || run.turn_state.map(|t| t.as_str()) == Some("needs_login");
    let cost: f64 = series.cost_usd.iter().flatten().sum();
    // Numbers only; `<` is escaped anyway so nothing can close the JSON block.
    let series_json = serde_json::to_string(&series)
        .unwrap_or_else(|_| "{}".into())
        .replace('<', "\\u003c");
    let calls = s.hive.model_calls(&name, CHART_TURNS).await?;
    let calls_json = serde_json::json!({
        "at": calls.iter().map(|c| c.at as f64 / 1000.0).collect::<Vec<_>>(),
        "input_tokens": calls.iter().map(|c| c.input_tokens + c.cache_creation_tokens).collect::<Vec<_>>(),
        "cache_read_tokens": calls.iter().map(|c| c.cache_read_tokens).collect::<Vec<_>>(),
        "output_tokens": calls.iter().map(|c| c.output_tokens).collect::<Vec<_>>(),
    })
    .to_string();
    render(&AgentPage {
        csrf: session.csrf,
        name: name.to_string(),
        kind: serde_json::to_value(record.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        turn_state: run.turn_state.map(|t| t.as_str()).unwrap_or("—"),
        run,
        isolation,
        confinement,
        confinement_warnings,
        agent_nix,
        deploys,
        log,
        messages,
        turns: series.at.len(),
        cost: format!("{cost:.4}"),
        series_json,
        calls_json,
        logged_in,
        needs_login,
    })
}

#[derive(Deserialize)]
struct ApiKeyForm {
    #[serde(default)]
    api_key: String,
}

/// `POST /agents/{name}/api-key`: the login panel stores an API key for the agent exactly as
/// `hive login NAME --api-key-file F` does (the broker validates and writes it; a refused key
/// writes nothing). The key is never echoed back.
async fn store_api_key(
    State(s): State<WebState>,
    Path(raw): Path<String>,
    Form(f): Form<ApiKeyForm>,
) -> PageResult {
    let name = agent_name(&raw)?;
    s.hive.store_api_key(&name, f.api_key.as_bytes()).await?;
    Ok(Redirect::to(&format!("/agents/{name}")).into_response())
}

#[derive(Deserialize)]
struct ActionForm {
    #[serde(default)]
    deploy: Option<i64>,
    #[serde(default)]
    back: Option<String>,
}

/// `POST /agents/{name}/{start|stop|restart|update|pause|resume|recheck|destroy|rollback}`.
async fn agent_action(
    State(s): State<WebState>,
    Path((raw, action)): Path<(String, String)>,
    Form(f): Form<ActionForm>,
) -> PageResult {
    let name = agent_name(&raw)?;
    let page = format!("/agents/{name}");
    let back = if f.back.as_deref() == Some("hive") {
        "/".to_owned()
    } else {
        page
    };
    match action.as_str() {
        "start" => {
            s.hive.start_agent(Actor::Operator, &name).await?;
        }
        "stop" => {
            s.hive.stop_agent(Actor::Operator, &name).await?;
        }
        "restart" => {
            s.hive.restart_agent(Actor::Operator, &name).await?;
        }
        "update" => {
            s.hive.update_agent(Actor::Operator, &name).await?;
        }
        "pause" => {
            s.hive.pause_agent(Actor::Operator, &name).await?;
        }
        "resume" => {
            s.hive.resume_agent(Actor::Operator, &name).await?;
        }
        "recheck" => {
            s.hive.recheck(&name).await?;
        }
        "destroy" => {
            s.hive.destroy(&name, false).await?;
            return Ok(Redirect::to("/tombstones").into_response());
        }
        "rollback" => {
            let Some(deploy) = f.deploy else {
                return Err(broker::Error::invalid("deploy", "choose a deploy").into());
            };
            s.hive.rollback(&name, deploy).await?;
        }
        _ => return Ok(not_found().await),
    }
    Ok(Redirect::to(&back).into_response())
}

struct TombstoneRow {
    id: String,
    agent: String,
}

#[derive(Template)]
#[template(path = "tombstones.html")]
struct TombstonesPage {
    csrf: String,
    tombstones: Vec<TombstoneRow>,
}

async fn tombstones(
    State(s): State<WebState>,
    Extension(session): Extension<SessionInfo>,
) -> PageResult {
    let tombstones = s
        .hive
        .tombstones()?
        .into_iter()
        .map(|t| TombstoneRow {
            id: t.id.to_string(),
            agent: t.agent,
        })
        .collect();
    render(&TombstonesPage {
        csrf: session.csrf,
        tombstones,
    })
}

/// `POST /tombstones/{id}/{restore|purge}`.
async fn tombstone_action(
    State(s): State<WebState>,
    Path((id, action)): Path<(String, String)>,
) -> PageResult {
    match action.as_str() {
        "restore" => {
            let name = s.hive.restore(&id).await?;
            Ok(Redirect::to(&format!("/agents/{name}")).into_response())
        }
        "purge" => {
            s.hive.purge(&id).await?;
            Ok(Redirect::to("/tombstones").into_response())
        }
        _ => Ok(not_found().await),
    }
}

struct AuditRow {
    e: broker::audit::AuditEntry,
    at: String,
    detail: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    csrf: String,
    verification: broker::audit::Verification,
    rows: Vec<AuditRow>,
}

async fn audit(
    State(s): State<WebState>,
    Extension(session): Extension<SessionInfo>,
) -> PageResult {
    let verification = s.hive.verify_audit().await?;
    let mut rows: Vec<AuditRow> = s
        .hive
        .audit(None, PAGE_ROWS)
        .await?
        .into_iter()
        .map(|e| AuditRow {
            at: when(e.ts),
            detail: e.detail.to_string(),
            e,
        })
        .collect();
    rows.reverse();
    render(&AuditPage {
        csrf: session.csrf,
        verification,
        rows,
    })
}
