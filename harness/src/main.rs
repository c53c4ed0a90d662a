//! `hive-agent`: the in-container side of hyperhive. Parses the command line and hands off.

mod bridge;
mod serve;

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
    /// Run as the agent's payload: connect to the hive's harness socket, then stay until
    /// SIGTERM/SIGHUP/SIGINT (exit 0) or until the hive closes the connection (exit 1)
    Serve {
        /// The directory holding the agent's sockets (`harness.sock`)
        #[arg(long, default_value = "/run/hive")]
        socket_dir: PathBuf,
        /// The agent's resolved config
        #[arg(long, default_value = "/etc/hyperhive/agent.json")]
        config: PathBuf,
    },
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
        Command::Serve { socket_dir, config } => runtime.block_on(serve::run(&socket_dir, &config)),
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
