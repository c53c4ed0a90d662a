//! What `hive serve` does with a state dir and a config file before it runs: one daemon per state
//! dir (also with `hive.lock` deleted), a dir it did not create keeps its mode and is refused when
//! others can write it, and a config file is read up to a cap.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

/// Runs `hive serve` that is expected to refuse, giving it at most 30 s (a daemon that starts
/// instead is killed and its output returned, so the test fails instead of hanging).
fn serve_refused(state: &Path, extra: &[&str]) -> Output {
    let mut child = Command::new(HIVE)
        .args(["serve", "--state-dir"])
        .arg(state)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let exited = eventually(Duration::from_secs(30), || {
        child.try_wait().unwrap().is_some()
    });
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert!(exited, "hive serve kept running: {}", text(&out.stderr));
    out
}

#[test]
fn a_second_daemon_is_refused_even_with_the_lock_file_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let daemon = Daemon::start(state, "");
    std::fs::remove_file(state.join("hive.lock")).unwrap();
    let socket = std::fs::metadata(state.join("run/admin.sock"))
        .unwrap()
        .ino();

    let out = serve_refused(state, &[]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("another hive is already running"), "{err}");
    // The first daemon keeps its socket, and still answers on it.
    assert_eq!(
        std::fs::metadata(state.join("run/admin.sock"))
            .unwrap()
            .ino(),
        socket
    );
    let status = cli(state, &["status", "--json"]);
    assert!(status.status.success(), "{}", text(&status.stderr));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["pid"], daemon.pid());
}

#[test]
fn a_dir_others_can_write_keeps_its_mode_and_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for mode in [0o1777, 0o770] {
        let shared = dir.path().join(format!("shared-{mode:o}"));
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(mode)).unwrap();
        let planted = shared.join("someone-elses-file");
        std::fs::write(&planted, "theirs").unwrap();

        let out = serve_refused(&shared, &[]);
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert!(err.contains("can be written by others"), "{err}");
        assert_eq!(
            std::fs::metadata(&shared).unwrap().permissions().mode() & 0o7777,
            mode
        );
        let entries: Vec<_> = std::fs::read_dir(&shared)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(entries, ["someone-elses-file"]);
        assert_eq!(std::fs::read_to_string(&planted).unwrap(), "theirs");
    }
}

#[test]
fn a_symlinked_state_dir_is_followed_and_locked_once() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
    let _daemon = Daemon::start(&dir.path().join("link"), "");
    let out = serve_refused(&real, &[]);
    assert!(
        text(&out.stderr).contains("another hive is already running"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn an_existing_dir_of_ours_keeps_its_mode() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o750)).unwrap();
    let _daemon = Daemon::start(&state, "");
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o7777,
        0o750
    );
}

#[test]
fn an_oversized_or_endless_config_file_is_refused_fast() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // 2 MiB of a valid comment: readable, parseable, and past the cap.
    let big = dir.path().join("big.toml");
    std::fs::write(&big, format!("#{}\n", "x".repeat(2 * 1024 * 1024))).unwrap();
    for file in [big.to_str().unwrap(), "/dev/zero"] {
        let out = serve_refused(&state, &["--config", file]);
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert!(err.contains("larger than 1048576 bytes"), "{file}: {err}");

        let out = Command::new(HIVE)
            .args(["check-config", file])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = text(&out.stderr);
        assert!(err.contains("larger than 1048576 bytes"), "{file}: {err}");
    }
    assert!(!state.exists(), "a refused config created the state dir");
}
