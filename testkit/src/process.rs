//! Running a real program to its end under a deadline, and describing what it printed.
//!
//! ```no_run
//! # async fn demo() {
//! use std::time::Duration;
//! let mut cmd = tokio::process::Command::new("python3");
//! cmd.args(["-c", "print(1)"]);
//! let out = testkit::process::finish(&mut cmd, "python3", Duration::from_secs(10)).await;
//! assert!(out.status.success(), "{}", out.describe());
//! # }
//! ```

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

/// A child that ran to its end: its exit status and what it printed, as text.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// The exit code; `None` when a signal ended the child.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// What the child printed, for assertion messages.
    pub fn describe(&self) -> String {
        describe(self.code(), &self.stdout, &self.stderr)
    }
}

/// `exit CODE`, then stdout and stderr under a header each: the text assertion messages show.
pub fn describe(code: Option<i32>, stdout: &str, stderr: &str) -> String {
    format!("exit {code:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}")
}

/// Runs `cmd` with stdin closed and stdout and stderr captured, and waits for its end. Panics,
/// naming the program as `what`, when it cannot be spawned or is still running after `limit`
/// (the child is killed then).
pub async fn finish(cmd: &mut tokio::process::Command, what: &str, limit: Duration) -> Finished {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {} s", limit.as_secs()))
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    Finished {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
