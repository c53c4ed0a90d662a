//! `hive serve`: the daemon. Checks and locks the state dir, opens the hive, serves the admin socket
//! and the dashboard,
//! tells systemd it is ready (and pings its watchdog), and on SIGTERM or SIGINT stops accepting,
//! lets in-flight requests and commits finish, and exits 0.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use broker::components::Scope;
use broker::config::Config;
use broker::lock::DaemonLock;
use broker::paths::StateDir;
use broker::{Hive, paths};
use dashboard::admin_socket;
use dashboard::web::server::{Dashboard, link_routes};
use sd_notify::NotifyState;
use tokio::signal::unix::{SignalKind, signal};

/// How long each component may take to stop (MCP connections end, in-flight admin requests
/// finish) before shutdown goes on without it.
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(clap::Args)]
pub struct ServeArgs {
    /// The configuration file [default: hive.toml in the state dir, if it exists]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

pub fn run(state: StateDir, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = match &args.config {
        Some(file) => Config::load(file, false)?,
        None => Config::load(&state.config_file(), true)?,
    };
    // The root is checked (never chmodded) and locked before anything is created in it.
    state.prepare_root()?;
    let _lock = DaemonLock::acquire(&state.lock_file(), state.root())?;
    state.create()?;
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hive")
        .build()?;
    runtime.block_on(serve(state, config))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(state: StateDir, config: Config) -> anyhow::Result<()> {
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;

    let hive = Hive::open(state.clone(), config)
        .await
        .with_context(|| format!("cannot open the hive in {}", state.root().display()))?;
    paths::make_dir(&state.run_dir(), 0o755)?;
    let admin_path = state.admin_socket();
    let listener = admin_socket::bind(&admin_path)
        .with_context(|| format!("cannot listen on {}", admin_path.display()))?;
    // Bound before READY, so a port in use fails the start with the reason.
    let dashboard = if hive.config().dashboard.enabled {
        Some(Dashboard::open(&hive)?)
    } else {
        let _ = std::fs::remove_file(state.dashboard_addr());
        None
    };
    let admin_extra = match &dashboard {
        Some(d) => d.admin_routes(),
        None => link_routes(None),
    };
    let dashboard_addr = dashboard.as_ref().map(|d| d.addr().to_string());
    let alert_links = dashboard
        .as_ref()
        .map(|d| d.alert_links(hive.config().notify.dashboard_url.as_deref()));
    // Started in order, stopped in reverse: the dashboard and the admin API stop accepting
    // first, then MCP drains, then the due jobs end; the store closes last.
    let mut parts = hive.start()?;
    parts.start("admin api", |s| {
        s.spawn(admin_socket::serve_admin_api(
            hive.clone(),
            listener,
            admin_extra,
            s.stopping().clone(),
        ));
        anyhow::Ok(())
    })?;
    if let Some(dashboard) = dashboard {
        parts.start("dashboard", |s| {
            s.spawn(dashboard.serve(hive.clone(), s.stopping().clone()));
            anyhow::Ok(())
        })?;
    }
    parts.start("notify", |s| hive.run_notifier(s, alert_links))?;
    parts.start("watchdog", |s| {
        spawn_watchdog(s);
        anyhow::Ok(())
    })?;
    tracing::info!(
        state_dir = %state.root().display(),
        admin_socket = %admin_path.display(),
        dashboard = dashboard_addr.as_deref().unwrap_or("off"),
        synchronous = %hive.config().store.synchronous,
        "hive is ready"
    );
    notify_systemd(&[NotifyState::Ready]);

    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
    }
    notify_systemd(&[NotifyState::Stopping]);
    let late = parts.stop(STOP_GRACE).await;
    if !late.is_empty() {
        tracing::warn!(components = ?late, "stopping without waiting longer for these");
    }
    // Commits already queued finish before the writer stops.
    hive.close();
    let _ = std::fs::remove_file(&admin_path);
    let _ = std::fs::remove_file(state.dashboard_addr());
    tracing::info!("hive stopped");
    Ok(())
}

/// Lifts the soft limit on open files to the hard one: every agent holds sockets and every client
/// a connection (systemd's default soft limit, 1024, is below the connection caps).
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(error = %e, soft, hard, "cannot raise the open-files limit");
    }
}

fn notify_systemd(state: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Pings systemd's watchdog at half its interval while the daemon runs.
fn spawn_watchdog(scope: &Scope) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let shutdown = scope.stopping().clone();
    scope.spawn(async move {
        let mut tick = tokio::time::interval(interval / 2);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => notify_systemd(&[NotifyState::Watchdog]),
            }
        }
    });
}
