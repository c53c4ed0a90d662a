//! Row 5: the resident memory of the real daemon — `hive serve` started from the `hive` binary
//! beside this one, readiness learned from a notify socket (as systemd would), VmRSS read from
//! /proc, stopped with SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// When run by `cargo run`, builds the `hive` and `hive-agent` binaries first with the same
/// profile (a no-op when they are up to date), so no row measures a missing or stale daemon.
pub fn build_hive() -> anyhow::Result<()> {
    let Some(cargo) = std::env::var_os("CARGO") else {
        return Ok(());
    };
    let mut build = Command::new(cargo);
    build.args([
        "build",
        "--quiet",
        "-p",
        "hyperhive",
        "-p",
        "hyperhive-harness",
        "--bin",
        "hive",
        "--bin",
        "hive-agent",
        "--manifest-path",
    ]);
    build.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
    if !cfg!(debug_assertions) {
        build.arg("--release");
    }
    let status = build
        .stdin(Stdio::null())
        .status()
        .context("cannot run cargo to build `hive`")?;
    if !status.success() {
        bail!("`cargo build --bin hive` failed ({status})");
    }
    Ok(())
}

/// The `hive` binary next to this executable (both are built into the same target dir).
pub fn hive_binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("cannot find this executable")?;
    let hive = me
        .parent()
        .context("this executable has no directory")?
        .join("hive");
    if !hive.is_file() {
        bail!(
            "no `hive` binary at {}: build it first with `cargo build --release --bin hive` \
             (same CARGO_TARGET_DIR)",
            hive.display()
        );
    }
    Ok(hive)
}

/// Memory figures of one process, in kibibytes.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        let kib = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()?;
        Ok(kib)
    };
    Ok(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// A running `hive serve`; killed if still running when dropped.
pub struct Daemon {
    child: Option<Child>,
    state: PathBuf,
    /// Kept open until the daemon is gone: it also says STOPPING=1 at shutdown.
    _notify: UnixDatagram,
    _notify_dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts `hive serve --state-dir state` and waits (at most 30 s) for READY=1. Unless the
    /// state dir has a hive.toml, the hive runs no agents (`[runtime] kind = "none"`): these
    /// rows measure the broker, the container rows start their own. Unless the hive.toml says
    /// otherwise, its dashboard listens on a free port: a hive already serving on this machine
    /// does not keep it from starting.
    pub fn start(hive: &Path, state: &Path) -> anyhow::Result<Self> {
        Self::start_with_env(hive, state, &[])
    }

    /// [`Daemon::start`] with extra environment variables (its children inherit them).
    pub fn start_with_env(
        hive: &Path,
        state: &Path,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> anyhow::Result<Self> {
        let config = state.join("hive.toml");
        std::fs::create_dir_all(state)?;
        let mut toml = match std::fs::read_to_string(&config) {
            Ok(toml) => toml,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                "[runtime]\nkind = \"none\"\n".into()
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", config.display())),
        };
        if !toml.lines().any(|l| l.trim() == "[dashboard]") {
            toml.push_str("\n[dashboard]\nport = 0\n");
        }
        std::fs::write(&config, toml)?;
        let notify_dir = tempfile::tempdir()?;
        let notify_path = notify_dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path)?;
        let child = Command::new(hive)
            .arg("serve")
            .arg("--state-dir")
            .arg(state)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("RUST_LOG", "warn")
            .env_remove("WATCHDOG_USEC")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", hive.display()))?;
        let mut daemon = Self {
            child: Some(child),
            state: state.to_owned(),
            _notify: notify.try_clone()?,
            _notify_dir: notify_dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("`hive serve` did not say READY=1 within 30 s");
            }
            if let Some(child) = daemon.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("`hive serve` exited with {status} before it was ready");
            }
            notify.set_read_timeout(Some(left.min(Duration::from_millis(200))))?;
            let n = match notify.recv(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(e) => {
                    return Err(e).context("cannot read the notify socket");
                }
            };
            if String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1")
            {
                return Ok(daemon);
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// One request on the daemon's admin socket; returns the status code and the JSON answer.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: &str,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let stream = tokio::net::UnixStream::connect(self.state.join("run/admin.sock")).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let conn = tokio::spawn(conn);
        let body = body.to_owned();
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "hive")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        drop(sender);
        let _ = conn.await;
        Ok((status, serde_json::from_slice(&bytes)?))
    }

    /// One `GET path` on the daemon's admin socket; returns the status code.
    pub async fn get(&self, path: &str) -> anyhow::Result<u16> {
        let stream = tokio::net::UnixStream::connect(self.state.join("run/admin.sock")).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let conn = tokio::spawn(conn);
        let request = hyper::Request::get(path)
            .header("host", "hive")
            .body(Full::new(Bytes::new()))?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        response.into_body().collect().await?;
        drop(sender);
        let _ = conn.await;
        Ok(status)
    }

    /// SIGTERM, then waits (at most 10 s, then SIGKILL).
    pub fn stop(mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!("`hive serve` exited with {status} after SIGTERM");
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!("`hive serve` did not stop within 10 s of SIGTERM")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// How long after READY=1 the memory is read: the daemon has nothing left to do at start-up.
pub const SETTLE: Duration = Duration::from_millis(300);
