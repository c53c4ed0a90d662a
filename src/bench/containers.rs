//! Row 9: agents in containers, on the real daemon with the nspawn runtime (root, nix and
//! systemd-nspawn needed). 9a: an image already built → its harness connected (`hive start`
//! answers when the harness is up), beside a bare `systemd-nspawn … busybox true` of the same image
//! with the same isolation flags, measured in the same run. 9b: a deploy of a commit nix has
//! already built (a rollback: nix evaluates and finds the store path) → harness up. 9c: 20 idle
//! agents: memory per agent (the proportional set size of every process in its cgroup) and the
//! broker's RSS.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::Value;

use crate::daemon::{self, Daemon, Memory};
use crate::stats::Samples;

pub struct Figures {
    pub start_to_up: Samples,
    pub bare_nspawn: Samples,
    pub deploy_built: Samples,
    pub agents: usize,
    /// Mean proportional set size of one idle agent's processes, in KiB.
    pub per_agent_pss_kib: u64,
    pub broker: Memory,
}

const UP_LIMIT: Duration = Duration::from_secs(120);

/// Waits until `agent` runs with its harness connected; returns its run.
pub async fn wait_up(d: &Daemon, agent: &str) -> anyhow::Result<Value> {
    let end = Instant::now() + UP_LIMIT;
    loop {
        let (code, a) = d
            .call("GET", &format!("/api/v1/agents/{agent}"), "")
            .await?;
        if code == 200 && a["run"]["up"] == true && a["run"]["state"] == "running" {
            return Ok(a["run"].clone());
        }
        if Instant::now() > end {
            bail!("{agent} did not come up within {UP_LIMIT:?}: {a}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn post(d: &Daemon, path: &str) -> anyhow::Result<Value> {
    let (code, v) = d.call("POST", path, "{}").await?;
    ensure!(code < 300, "POST {path} answered {code}: {v}");
    Ok(v)
}

pub async fn measure(hive: &Path, starts: usize, agents: usize) -> anyhow::Result<Figures> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "needs root (systemd-nspawn)"
    );
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("hive.toml"),
        "[runtime]\nkind = \"nspawn\"\nstop_timeout_seconds = 5\n",
    )?;
    let d = Daemon::start(hive, dir.path())?;
    wait_up(&d, "manager").await?;
    let (code, v) = d
        .call("POST", "/api/v1/agents", r#"{"name":"bench-a"}"#)
        .await?;
    ensure!(code < 300, "spawn answered {code}: {v}");
    let run = wait_up(&d, "bench-a").await?;
    let image = PathBuf::from(run["image"].as_str().context("no image in the run")?);

    // 9a: stop, then time start → harness connected.
    let mut start_to_up = Vec::with_capacity(starts);
    for _ in 0..starts {
        post(&d, "/api/v1/agents/bench-a/stop").await?;
        let t0 = Instant::now();
        let out = post(&d, "/api/v1/agents/bench-a/start").await?;
        start_to_up.push(t0.elapsed());
        ensure!(out["run"]["up"] == true, "started but not up: {out}");
    }
    let mut bare = Vec::with_capacity(starts);
    for _ in 0..starts {
        bare.push(bare_nspawn(&image)?);
    }

    // 9b: a deploy of an already-built commit (a rollback to the running deploy).
    let mut deploy_built = Vec::new();
    for _ in 0..starts.min(5) {
        let (_, history) = d.call("GET", "/api/v1/agents/bench-a/deploys", "").await?;
        let last = history
            .as_array()
            .and_then(|h| h.last())
            .context("no deploys")?["id"]
            .clone();
        let t0 = Instant::now();
        let (code, v) = d
            .call(
                "POST",
                "/api/v1/agents/bench-a/rollback",
                &format!(r#"{{"deploy":{last}}}"#),
            )
            .await?;
        ensure!(code < 300, "rollback answered {code}: {v}");
        let id = v["id"].clone();
        loop {
            let (_, h) = d.call("GET", "/api/v1/agents/bench-a/deploys", "").await?;
            let done = h
                .as_array()
                .into_iter()
                .flatten()
                .find(|x| x["id"] == id)
                .map(|x| x["status"].clone());
            if done == Some(Value::from("deployed")) {
                break;
            }
            ensure!(
                done != Some(Value::from("failed")),
                "the rollback failed: {h}"
            );
            ensure!(t0.elapsed() < UP_LIMIT, "the rollback did not finish");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        wait_up(&d, "bench-a").await?;
        deploy_built.push(t0.elapsed());
    }

    // 9c: `agents` idle agents.
    for i in 1..agents {
        let body = format!(r#"{{"name":"bench-{i}"}}"#);
        let (code, v) = d.call("POST", "/api/v1/agents", &body).await?;
        ensure!(code < 300, "spawn answered {code}: {v}");
    }
    let mut pids = vec![run_pid(&wait_up(&d, "bench-a").await?)?];
    for i in 1..agents {
        pids.push(run_pid(&wait_up(&d, &format!("bench-{i}")).await?)?);
    }
    tokio::time::sleep(daemon::SETTLE * 3).await;
    let mut total = 0;
    for pid in &pids {
        total += cgroup_pss_kib(*pid)?;
    }
    let broker = daemon::memory(d.pid())?;
    d.stop()?;
    Ok(Figures {
        start_to_up: Samples::new(start_to_up),
        bare_nspawn: Samples::new(bare),
        deploy_built: Samples::new(deploy_built),
        agents,
        per_agent_pss_kib: total / pids.len() as u64,
        broker,
    })
}

fn run_pid(run: &Value) -> anyhow::Result<u32> {
    run["pid"]
        .as_u64()
        .map(|p| p as u32)
        .context("a running agent without a pid")
}

/// The same isolation as an agent's container, running busybox `true`: exec → exit.
fn bare_nspawn(image: &Path) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let status = Command::new("systemd-nspawn")
        .args([
            "-q",
            "--register=no",
            "--keep-unit",
            "--console=pipe",
            "--resolv-conf=off",
            "--timezone=off",
            "--link-journal=no",
            "--read-only",
            "--private-users=1879048192:65536",
            "--private-network",
            "--bind-ro=/usr",
            "--kill-signal=SIGRTMIN+3",
            "--as-pid2",
            "-D",
        ])
        .arg(image)
        .args(["/bin/busybox", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("cannot run systemd-nspawn")?;
    ensure!(status.success(), "bare systemd-nspawn failed: {status}");
    Ok(t0.elapsed())
}

/// The proportional set size of every process in the cgroup `pid` is in, in KiB.
fn cgroup_pss_kib(pid: u32) -> anyhow::Result<u64> {
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let line = cgroup
        .lines()
        .find(|l| l.contains(":pids:") || l.starts_with("0::"))
        .context("no pids cgroup")?;
    let mut total = 0;
    for entry in std::fs::read_dir("/proc")? {
        let name = entry?.file_name();
        let Some(p) = name
            .to_str()
            .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(theirs) = std::fs::read_to_string(format!("/proc/{p}/cgroup")) else {
            continue;
        };
        if !theirs.lines().any(|l| l == line) {
            continue;
        }
        let Ok(rollup) = std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")) else {
            continue;
        };
        total += rollup
            .lines()
            .find_map(|l| l.strip_prefix("Pss:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}
