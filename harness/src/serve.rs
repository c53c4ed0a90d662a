//! `hive-agent serve`: the payload of an agent's container. It reads the agent's resolved config,
//! connects to the hive's harness socket as an MCP client, completes `initialize`, says so in one
//! line, and then runs the turn loop (`turn.rs`) until it is told to go (SIGTERM, SIGHUP — what
//! nspawn sends the payload at stop — or SIGINT: exit 0) or the hive closes the connection (an
//! error: the hive's restart policy decides what comes next). It never writes outside the state
//! dir and root's home.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use proto::AgentConfig;
use proto::agent_config::Driver;
use rmcp::ServiceExt;
use tokio::net::UnixStream;
use tokio::signal::unix::{SignalKind, signal};

/// How long a missing or refusing socket is retried: the hive may still be opening it.
pub const CONNECT_RETRY: Duration = Duration::from_secs(5);

/// Reads and checks `agent.json`; a bad one is refused with the file and the reason.
pub fn read_config(path: &Path) -> anyhow::Result<AgentConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the agent config {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "the agent config {} is not a valid agent.json (rebuild the agent's image)",
            path.display()
        )
    })
}

/// What `serve` runs with besides the config.
pub struct Settings {
    pub socket_dir: std::path::PathBuf,
    pub config: std::path::PathBuf,
    pub state_dir: std::path::PathBuf,
    pub claude: std::path::PathBuf,
    pub idle_timeout: Duration,
    pub max_turns: u32,
    /// One claude process per turn instead of a warm one.
    pub claude_per_turn: bool,
    /// Model calls per turn of the openai driver.
    pub openai_max_rounds: u32,
    /// The openai driver's context window in tokens, when known.
    pub openai_context_window: Option<u64>,
    /// When the notes are checkpointed and rewritten.
    pub notes: crate::notes::NotesLimits,
    /// The first pause after a turn the model upstream could not be reached for.
    pub unreachable_pause: std::time::Duration,
}

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let socket_dir = settings.socket_dir.as_path();
    let config = read_config(&settings.config)?;
    // Signals are caught before connecting: a stop that comes early still exits cleanly.
    let mut term = signal(SignalKind::terminate()).context("cannot catch SIGTERM")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot catch SIGHUP")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot catch SIGINT")?;
    let socket = socket_dir.join("harness.sock");
    let stream = tokio::select! {
        stream = connect(&socket) => stream?,
        _ = term.recv() => return Ok(()),
        _ = hup.recv() => return Ok(()),
        _ = int.recv() => return Ok(()),
    };
    let client = ().serve(stream).await.map_err(|e| {
        anyhow::anyhow!(
            "the hive closed the harness connection at {} during the handshake ({e}); \
             is this container bound to its own agent's socket directory?",
            socket.display()
        )
    })?;
    let gateway = socket_dir.join("gateway.sock");
    if gateway.exists() {
        match crate::relay::start(gateway).await {
            Ok(address) => eprintln!("hive-agent: egress relay on {address}"),
            Err(e) => eprintln!("hive-agent: no egress relay ({e}); CONNECT goes nowhere"),
        }
    }
    let server = client
        .peer_info()
        .and_then(|i| i.server_info.clone())
        .map(|s| format!("{} {}", s.name, s.version))
        .unwrap_or_else(|| "the hive".into());
    eprintln!(
        "hive-agent: connected to {server} at {} (driver {}, network {})",
        socket.display(),
        serde_json::to_value(config.driver).unwrap_or_default(),
        serde_json::to_value(config.network).unwrap_or_default(),
    );
    let peer = client.peer().clone();
    let turns = async {
        let mut model = match config.driver {
            Driver::Claude => crate::driver::Driver::Claude(Box::new(crate::claude::Claude::new(
                crate::claude::Options {
                    bin: settings.claude.clone(),
                    socket_dir: socket_dir.to_owned(),
                    state_dir: settings.state_dir.clone(),
                    idle_timeout: settings.idle_timeout,
                    per_turn: settings.claude_per_turn,
                    hive_agent: std::env::current_exe().context("cannot find this binary")?,
                    max_turns: settings.max_turns,
                },
                config.clone(),
            ))),
            Driver::Openai => crate::driver::Driver::OpenAi(Box::new(crate::openai::OpenAi::new(
                crate::openai::Options {
                    socket_dir: socket_dir.to_owned(),
                    state_dir: settings.state_dir.clone(),
                    max_rounds: settings.openai_max_rounds,
                    context_window: settings.openai_context_window,
                },
                config.clone(),
            ))),
        };
        // A model the operator chose (`/model`) outlives restarts.
        if let Some(chosen) = crate::commands::stored_model(&settings.state_dir) {
            model.set_model(Some(chosen));
        }
        let unreachable = crate::turn::Backoff::new(settings.unreachable_pause);
        crate::turn::run(
            peer,
            model,
            &settings.state_dir,
            settings.notes,
            unreachable,
        )
        .await
    };
    let closed = client.waiting();
    tokio::pin!(closed, turns);
    tokio::select! {
        _ = term.recv() => {}
        _ = hup.recv() => {}
        _ = int.recv() => {}
        failed = &mut turns => {
            let e = failed.err().unwrap_or_else(|| anyhow::anyhow!("the turn loop ended"));
            // A call that failed because the hive is going away: say that, not the call.
            if let Ok(closed) = tokio::time::timeout(CLOSE_GRACE, &mut closed).await {
                bail!("the hive closed the harness connection ({}); exiting so the hive's restart policy can act", why(closed));
            }
            bail!("{e:#}; exiting so the hive's restart policy can act");
        }
        closed = &mut closed => {
            bail!("the hive closed the harness connection ({}); exiting so the hive's restart policy can act", why(closed));
        }
    }
    Ok(())
}

/// How long a failed harness call waits to see whether the connection is closing.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

fn why(closed: Result<rmcp::service::QuitReason, tokio::task::JoinError>) -> String {
    match closed {
        Ok(reason) => format!("{reason:?}"),
        Err(e) => e.to_string(),
    }
}

/// Connects, retrying for [`CONNECT_RETRY`] while the socket is missing or refuses.
async fn connect(socket: &Path) -> anyhow::Result<UnixStream> {
    let deadline = Instant::now() + CONNECT_RETRY;
    let mut pause = Duration::from_millis(5);
    loop {
        match UnixStream::connect(socket).await {
            Ok(stream) => return Ok(stream),
            Err(e)
                if Instant::now() < deadline
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    ) =>
            {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "cannot connect to the hive's harness socket {}",
                        socket.display()
                    )
                });
            }
        }
    }
}
