//! `hive login AGENT`: the claude CLI's own login (interactive OAuth, in the operator's terminal)
//! with HOME at that agent's home on the host, so the credentials land where its container finds
//! them; `--api-key-file F` stores an API key for the agent instead (0600 in `secrets/<name>/`,
//! out of the agent's reach). The daemon's watcher sees either and tells the manager `logged_in`.
//! There is no MCP tool for this: only the operator logs an agent in.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use broker::api_key;
use broker::names::AgentName;
use broker::paths::{self, StateDir};

use super::client::{AdminClient, encode};

#[derive(clap::Args)]
pub struct LoginArgs {
    /// The agent to log in
    name: String,
    /// Store the API key in this file for the agent instead of the interactive login
    #[arg(long, value_name = "FILE")]
    api_key_file: Option<PathBuf>,
    /// The claude CLI to run (default: `claude` on PATH)
    #[arg(long, env = "HIVE_CLAUDE", value_name = "PATH")]
    claude: Option<PathBuf>,
    /// Print the command the login would run, and run nothing
    #[arg(long)]
    print_command: bool,
}

pub fn run(state: &StateDir, args: LoginArgs) -> anyhow::Result<ExitCode> {
    let agent = AgentName::parse(&args.name)?;
    // The daemon says whether the agent exists (and that this is the hive it runs).
    let path = format!("/api/v1/agents/{}", encode(agent.as_str()));
    super::client_runtime()?.block_on(AdminClient::new(state).get(&path))?;
    let root = state.root();
    if let Some(file) = &args.api_key_file {
        let key = read_key(file)?;
        api_key::store(state, &agent, &key)?;
        outln!("{agent}: API key stored; the manager is told it is logged in");
        return Ok(ExitCode::SUCCESS);
    }
    let home = paths::checked_within(root, &state.agent_home(&agent))?;
    let claude = args.claude.unwrap_or_else(|| PathBuf::from("claude"));
    if args.print_command {
        outln!("HOME={} {} auth login", home.display(), claude.display());
        return Ok(ExitCode::SUCCESS);
    }
    paths::make_dir(&home, 0o700)?;
    let status = std::process::Command::new(&claude)
        .args(["auth", "login"])
        .env("HOME", &home)
        .current_dir(&home)
        .status()
        .with_context(|| {
            format!(
                "cannot run {} (install the claude CLI or pass --claude PATH)",
                claude.display()
            )
        })?;
    if !status.success() {
        bail!("the claude login ended with {status}; {agent} is not logged in");
    }
    Ok(ExitCode::SUCCESS)
}

/// The key in `file`, validated as the dashboard's login panel validates it
/// ([`broker::api_key::validate`]).
fn read_key(file: &Path) -> anyhow::Result<String> {
    let mut bytes = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| {
            f.take(api_key::MAX_KEY_BYTES as u64 + 1)
                .read_to_end(&mut bytes)
        })
        .with_context(|| format!("cannot read {}", file.display()))?;
    api_key::validate(&bytes).with_context(|| file.display().to_string())
}
