//! `hive-agent`: the in-container side of hyperhive. Parses the command line and hands off.

mod bridge;

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
