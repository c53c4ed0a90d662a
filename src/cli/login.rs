//! `hive login AGENT`: the claude CLI's own login (interactive OAuth, in the operator's terminal)
//! with HOME at that agent's home on the host, so the credentials land where its container finds
//! them; `--api-key-file F` stores an API key for the agent instead (0600 in `secrets/<name>/`,
//! out of the agent's reach). The daemon's watcher sees either and tells the manager `logged_in`.
//! There is no MCP tool for this: only the operator logs an agent in.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use broker::names::AgentName;
use broker::paths::{self, StateDir};

use super::client::{AdminClient, encode};

/// The largest API key accepted, in bytes.
const MAX_KEY_BYTES: usize = 4096;

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
        store_key(root, &state.secrets_dir(&agent), &key)?;
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

/// The key in `file`: one line of printable ASCII without spaces, at most [`MAX_KEY_BYTES`].
fn read_key(file: &Path) -> anyhow::Result<String> {
    let mut bytes = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_KEY_BYTES as u64 + 1).read_to_end(&mut bytes))
        .with_context(|| format!("cannot read {}", file.display()))?;
    if bytes.len() > MAX_KEY_BYTES {
        bail!(
            "{}: longer than {MAX_KEY_BYTES} bytes; is it an API key?",
            file.display()
        );
    }
    let text = String::from_utf8(bytes)
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
        .with_context(|| {
            format!(
                "{}: not an API key (one line of printable characters without spaces)",
                file.display()
            )
        })?;
    Ok(text)
}

/// Writes `key` to `<secrets>/api-key` (0600) through a temporary file and a rename, so a reader
/// never sees half a key; nothing on the way may be a symlink.
fn store_key(root: &Path, secrets: &Path, key: &str) -> anyhow::Result<()> {
    let secrets = paths::checked_within(root, secrets)?;
    paths::make_dir(&secrets, 0o700)?;
    let target = secrets.join("api-key");
    let temp = secrets.join(".api-key.tmp");
    let _ = std::fs::remove_file(&temp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc_nofollow())
        .open(&temp)
        .with_context(|| format!("cannot create {}", temp.display()))?;
    file.write_all(format!("{key}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", temp.display()))?;
    std::fs::rename(&temp, &target)
        .with_context(|| format!("cannot write {}", target.display()))?;
    Ok(())
}

fn libc_nofollow() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits()
}
