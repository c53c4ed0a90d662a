//! The `hive` command line: the clap definitions and the dispatch, one file per command group.
//! Every command but `serve` and `check-config` is a client of the admin socket.

#[macro_use]
mod output;

mod agents;
mod approvals;
mod audit;
mod client;
mod config;
mod dashboard;
mod login;
mod messages;

mod questions;
mod serve;
mod stats;
mod status;
mod tombstones;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "hive",
    version,
    about = "Run and steer a hive of AI agents",
    long_about = "hyperhive runs a hive of AI agents, each in its own container, talking through a \
durable mailbox. `hive serve` is the daemon; every other command talks to it over its admin socket \
(run/admin.sock in the state dir).",
    after_help = "Start a hive:   hive serve\nIn another shell:  hive status; hive send manager 'hello'"
)]
pub struct Cli {
    /// The hive's state dir [default: /var/lib/hyperhive as root, else $XDG_STATE_HOME/hyperhive]
    #[arg(long, global = true, env = "HIVE_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,

    /// Log format of the daemon and of client diagnostics (filter with RUST_LOG)
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hive daemon in the foreground
    Serve(serve::ServeArgs),
    /// Check a hive.toml and exit non-zero with the key and the reason when it is wrong
    CheckConfig(config::CheckConfigArgs),
    /// Show whether the hive is running, and its counts
    Status(status::StatusArgs),
    /// List the agents and what their containers do
    Agents(status::AgentsArgs),
    /// Show one agent: its container, its isolation as the kernel reports it, and its confinement
    /// (network, egress, tokens against the budget, whether a key is inside)
    ShowAgent(agents::AgentArgs),
    /// Start an agent's container on its last good build (building it if there is none)
    Start(agents::AgentArgs),
    /// Stop an agent's container (SIGTERM, then its processes are killed after a timeout)
    Stop(agents::AgentArgs),
    /// Stop and start an agent's container on the same build
    Restart(agents::AgentArgs),
    /// Pause an agent: no new turns (a running one finishes); its messages queue until `resume`
    Pause(agents::AgentArgs),
    /// Resume a paused agent: its queued messages start turns again
    Resume(agents::AgentArgs),
    /// Rebuild and restart an agent whose applied config is not what runs
    Update(agents::AgentArgs),
    /// Check an agent kept stopped at start (FAULTED in `hive status`) again, after its repo was
    /// mended; when it agrees with the store now, it starts
    Recheck(agents::AgentArgs),
    /// Print the last lines of an agent's container log
    Logs(agents::LogsArgs),
    /// Show an agent's turns: tokens, cost, time, tool calls and sends, totals and the last turns
    Stats(stats::StatsArgs),
    /// Log an agent in: the claude CLI's login for its home, in this terminal (or --api-key-file)
    Login(login::LoginArgs),
    /// Remove old images: the running and the previous deploy of each agent are kept
    Gc(agents::GcArgs),
    /// Send a message as the operator (TO: an agent, or `*` for every agent)
    Send(messages::SendArgs),
    /// Show the operator's inbox; --follow waits for new messages and marks them read
    Inbox(messages::InboxArgs),
    /// Show the message flow between agents; --follow streams it live
    Messages(messages::MessagesArgs),
    /// Show one message with its receipt: sent, leased (to which turn), delivered
    Message(messages::MessageArgs),
    /// List the questions agents asked the operator
    Questions(questions::QuestionsArgs),
    /// Answer an agent's question; the answer reaches it as a message from `operator`
    Answer(questions::AnswerArgs),
    /// List messages queued too long for agents that cannot take them (not running, paused, crash
    /// loop); `redirect ID --to NAME` or `drop ID` decides one
    DeadLetters(questions::DeadLettersArgs),
    /// List the approvals the manager asked for
    Approvals(approvals::ApprovalsArgs),
    /// Show one approval with its diff
    Show(approvals::IdArgs),
    /// Approve: the agent's applied config moves to the pinned commit
    Approve(approvals::ApproveArgs),
    /// Deny, with a note the manager reads
    Deny(approvals::DenyArgs),
    /// Create an agent directly (audited; no approval)
    Spawn(approvals::SpawnArgs),
    /// Show an agent's deploys (every move of its applied config)
    History(approvals::HistoryArgs),
    /// Go back to an earlier deploy of an agent
    Rollback(approvals::RollbackArgs),
    /// Remove an agent (its sockets close, it gets no more mail) and move its files into a tombstone
    Destroy(tombstones::DestroyArgs),
    /// List the tombstones of destroyed agents
    Tombstones(tombstones::ListArgs),
    /// Bring a destroyed agent back from its tombstone (and start it, when this hive runs agents)
    Restore(tombstones::TombstoneArgs),
    /// Delete a tombstone for good
    Purge(tombstones::TombstoneArgs),
    /// Show the audit chain, or verify it (`hive audit verify`)
    Audit(audit::AuditArgs),
    /// Print the dashboard's URL and a one-time login link
    Dashboard(dashboard::DashboardArgs),
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, matches!(cli.command, Command::Serve(_)));
    let state_dir = cli
        .state_dir
        .unwrap_or_else(broker::paths::StateDir::default_root);
    let state = broker::paths::StateDir::new(state_dir);
    let result = match cli.command {
        Command::Serve(args) => serve::run(state, args),
        Command::CheckConfig(args) => config::run(&state, args),
        Command::Status(args) => status::status(&state, args),
        Command::Agents(args) => status::agents(&state, args),
        Command::ShowAgent(args) => agents::show_agent(&state, args),
        Command::Start(args) => agents::start(&state, args),
        Command::Stop(args) => agents::stop(&state, args),
        Command::Restart(args) => agents::restart(&state, args),
        Command::Pause(args) => agents::pause(&state, args),
        Command::Resume(args) => agents::resume(&state, args),
        Command::Update(args) => agents::update(&state, args),
        Command::Recheck(args) => agents::recheck(&state, args),
        Command::Logs(args) => agents::logs(&state, args),
        Command::Stats(args) => stats::stats(&state, args),
        Command::Login(args) => login::run(&state, args),
        Command::Gc(args) => agents::gc(&state, args),
        Command::Send(args) => messages::send(&state, args),
        Command::Inbox(args) => messages::inbox(&state, args),
        Command::Messages(args) => messages::messages(&state, args),
        Command::Message(args) => messages::message(&state, args),
        Command::Questions(args) => questions::questions(&state, args),
        Command::Answer(args) => questions::answer(&state, args),
        Command::DeadLetters(args) => questions::dead_letters(&state, args),
        Command::Approvals(args) => approvals::approvals(&state, args),
        Command::Show(args) => approvals::show(&state, args),
        Command::Approve(args) => approvals::approve(&state, args),
        Command::Deny(args) => approvals::deny(&state, args),
        Command::Spawn(args) => approvals::spawn(&state, args),
        Command::History(args) => approvals::history(&state, args),
        Command::Rollback(args) => approvals::rollback(&state, args),
        Command::Destroy(args) => tombstones::destroy(&state, args),
        Command::Tombstones(args) => tombstones::tombstones(&state, args),
        Command::Restore(args) => tombstones::restore(&state, args),
        Command::Purge(args) => tombstones::purge(&state, args),
        Command::Audit(args) => audit::audit(&state, args),
        Command::Dashboard(args) => dashboard::dashboard(&state, args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            output::emit_err(&format!("hive: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat, daemon: bool) {
    use tracing_subscriber::EnvFilter;
    // rmcp logs every connection at info; the daemon's own lines are what an operator reads.
    let default = if daemon { "info,rmcp=warn" } else { "warn" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Keys and tokens are masked in every line (DESIGN §16).
        .with_writer(|| broker::redact::MaskingWriter(std::io::stderr()))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// GETs a JSON list from the hive and prints it: as JSON with `--json` (the answer as it came),
/// else as a table under `header` with a row per item, each read as wire type `T` first (see
/// [`read_answer`]), or `empty` when there is none.
fn print_listing_of<T: serde::de::DeserializeOwned>(
    state: &broker::paths::StateDir,
    path: &str,
    json: bool,
    empty: &str,
    header: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<ExitCode> {
    let Some(items) = get_answer::<Vec<T>>(state, path, json)? else {
        return Ok(ExitCode::SUCCESS);
    };
    let rows: Vec<Vec<String>> = items.iter().map(row).collect();
    if rows.is_empty() {
        outln!("{empty}");
    } else {
        output::table(header, &rows);
    }
    Ok(ExitCode::SUCCESS)
}

/// POSTs an action to the hive and prints its answer: as JSON with `--json` (as it came), else
/// read as wire type `T` (see [`read_answer`]) and printed with `human`.
fn post_action_of<T: serde::de::DeserializeOwned>(
    state: &broker::paths::StateDir,
    path: &str,
    body: &serde_json::Value,
    json: bool,
    human: impl FnOnce(&T),
) -> anyhow::Result<ExitCode> {
    let answer = client_runtime()?.block_on(client::AdminClient::new(state).post(path, body))?;
    if json {
        output::json(&answer);
    } else {
        human(&read_answer(path, &answer)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// GETs `path` and reads the answer as wire type `T` (see [`read_answer`]); with `json` the answer
/// is printed as it came instead, and `None` returned.
fn get_answer<T: serde::de::DeserializeOwned>(
    state: &broker::paths::StateDir,
    path: &str,
    json: bool,
) -> anyhow::Result<Option<T>> {
    let answer = client_runtime()?.block_on(client::AdminClient::new(state).get(path))?;
    if json {
        output::json(&answer);
        return Ok(None);
    }
    read_answer(path, &answer).map(Some)
}

/// Reads the hive's answer to `path` as its wire type (`proto`): a field missing or of another
/// type is an error that says so, never a `?` on the screen. Fields this CLI does not know are
/// ignored (a newer daemon may add some).
fn read_answer<T: serde::de::DeserializeOwned>(
    path: &str,
    answer: &serde_json::Value,
) -> anyhow::Result<T> {
    T::deserialize(answer).map_err(|e| {
        anyhow::anyhow!(
            "the hive's answer to {path} does not read as this `hive` expects it ({e}); \
             are the CLI and the daemon the same version?"
        )
    })
}

/// A tokio runtime for one client command.
fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}
