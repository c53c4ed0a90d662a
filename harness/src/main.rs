//! `hive-agent`: the in-container side of hyperhive. Parses the command line and hands off.

mod bridge;
mod claude;
mod commands;
mod driver;
mod notes;
mod openai;
mod prompt;
mod relay;
mod serve;
mod turn;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "hive-agent",
    version,
    about = "The in-container side of a hyperhive agent"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Bridge standard input/output to the hive's MCP socket, for stdio MCP clients such as the
    /// claude CLI (`"command": "hive-agent", "args": ["mcp"]` in an MCP config)
    Mcp {
        /// The agent's MCP socket
        #[arg(long, default_value = "/run/hive/mcp.sock", env = "HIVE_MCP_SOCKET")]
        socket: PathBuf,
    },
    /// Run as the agent's payload: connect to the hive's harness socket and take turns (each
    /// message wakes a warm claude process) until SIGTERM/SIGHUP/SIGINT (exit 0) or until the hive
    /// closes the connection (exit 1)
    Serve {
        /// The directory holding the agent's sockets (`harness.sock`)
        #[arg(long, default_value = "/run/hive")]
        socket_dir: PathBuf,
        /// The agent's resolved config
        #[arg(long, default_value = "/etc/hyperhive/agent.json")]
        config: PathBuf,
        /// The agent's writable state (the claude session id, the model's working directory)
        #[arg(long, default_value = "/state")]
        state_dir: PathBuf,
        /// The claude executable (default: `claude` on PATH)
        #[arg(long, env = "HIVE_CLAUDE")]
        claude: Option<PathBuf>,
        /// Seconds an idle claude process is kept before it is stopped (resumed at the next
        /// message)
        #[arg(long, default_value_t = 600, env = "HIVE_CLAUDE_IDLE_SECONDS")]
        idle_seconds: u64,
        /// The most model calls one turn may make before it is cut (`tool_loop_cut`)
        #[arg(long, default_value_t = 100, env = "HIVE_MAX_TURNS")]
        max_turns: u32,
        /// `warm`: one claude process kept between turns; `per-turn`: one process per turn,
        /// each resuming the session (slower; the fallback)
        #[arg(long, value_enum, default_value_t = ClaudeMode::Warm, env = "HIVE_CLAUDE_MODE")]
        claude_mode: ClaudeMode,
        /// Model calls per turn of the openai driver before its tool loop is cut
        #[arg(long, default_value_t = 32, env = "HIVE_OPENAI_MAX_ROUNDS")]
        openai_max_rounds: u32,
        /// The openai driver's model's context window in tokens, for the notes checkpoint (the
        /// claude CLI reports its own); unset: no checkpoint under the openai driver
        #[arg(long, env = "HIVE_CONTEXT_WINDOW")]
        context_window: Option<u64>,
        /// How full the context (percent) may get before the model is asked for a notes
        /// checkpoint and the session is compacted; 0 never
        #[arg(long, default_value_t = 75, env = "HIVE_NOTES_CHECKPOINT_PERCENT",
              value_parser = clap::value_parser!(u64).range(0..=100))]
        notes_checkpoint_percent: u64,
        /// The size in bytes past which `notes.md` is rewritten shorter in a separate session
        #[arg(long, default_value_t = 16 * 1024, env = "HIVE_NOTES_MAX_BYTES",
              value_parser = clap::value_parser!(u64).range(1024..))]
        notes_max_bytes: u64,
        /// Milliseconds to wait after a turn the model upstream could not be reached for (the
        /// turn is given back), doubled for each such turn in a row up to 60 s; the gateway's
        /// open breaker says its own time instead
        #[arg(long, default_value_t = turn::UNREACHABLE_PAUSE.as_millis() as u64,
              env = "HIVE_UNREACHABLE_PAUSE_MS")]
        unreachable_pause_ms: u64,
    },
}

/// How the claude driver runs claude.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ClaudeMode {
    Warm,
    PerTurn,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hive-agent: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Mcp { socket } => runtime.block_on(bridge::run(&socket)),
        Command::Serve {
            socket_dir,
            config,
            state_dir,
            claude,
            idle_seconds,
            max_turns,
            claude_mode,
            openai_max_rounds,
            context_window,
            notes_checkpoint_percent,
            notes_max_bytes,
            unreachable_pause_ms,
        } => runtime.block_on(serve::run(serve::Settings {
            socket_dir,
            config,
            state_dir,
            claude: claude.unwrap_or_else(claude::default_bin),
            idle_timeout: std::time::Duration::from_secs(idle_seconds),
            max_turns,
            claude_per_turn: claude_mode == ClaudeMode::PerTurn,
            openai_max_rounds: openai_max_rounds.max(1),
            openai_context_window: context_window.filter(|w| *w > 0),
            notes: notes::NotesLimits {
                checkpoint_percent: notes_checkpoint_percent,
                max_bytes: notes_max_bytes,
            },
            unreachable_pause: std::time::Duration::from_millis(unreachable_pause_ms),
        })),
    };
    // Standard input is read on a blocking thread that may never return; do not wait for it.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hive-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
