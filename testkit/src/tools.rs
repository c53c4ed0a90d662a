//! Finding the real components the tests drive, and failing loudly in CI when one is missing.
//!
//! Tests use real programs (the `claude` CLI, python3, …). A missing one FAILS the test with a panic
//! naming the component and the command that installs it. Only a person who sets
//! `HYPERHIVE_ALLOW_SKIP=1` by hand gets a note on stderr and an early return instead; CI never sets
//! it (and with `CI=true` it is ignored), so no run passes by skipping.

use std::path::{Path, PathBuf};

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// The real claude CLI: `$HYPERHIVE_CLAUDE` when set, else the pinned one `scripts/setup` installs
/// in `.tools/node_modules/.bin/claude`, else `claude` on `PATH`.
pub fn claude_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HYPERHIVE_CLAUDE").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return is_executable(&p).then_some(p);
    }
    let local = workspace_root().join(".tools/node_modules/.bin/claude");
    if is_executable(&local) {
        return Some(local);
    }
    which("claude")
}

/// `python3` on `PATH`.
pub fn python3() -> Option<PathBuf> {
    which("python3")
}

/// A python that can `import mcp` (the Python MCP SDK): `$HYPERHIVE_PYTHON_MCP` when set, else the
/// venv `scripts/setup` makes in `.tools/venv` with the pinned PyPI `mcp`. `None` when neither
/// imports it.
pub fn python_mcp() -> Option<PathBuf> {
    let python = match std::env::var_os("HYPERHIVE_PYTHON_MCP").filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => workspace_root().join(".tools/venv/bin/python"),
    };
    let imports = is_executable(&python)
        && std::process::Command::new(&python)
            .args(["-c", "import mcp"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    imports.then_some(python)
}

/// The workspace's `hive-agent` binary, built beside the running test: tests live in
/// `target/<profile>/deps/`, binaries in `target/<profile>/`. `$HYPERHIVE_AGENT_BIN` overrides.
/// `None` when it was not built (`cargo build --workspace` builds it; `scripts/test` does).
pub fn hive_agent_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HYPERHIVE_AGENT_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return is_executable(&p).then_some(p);
    }
    let exe = std::env::current_exe().ok()?;
    let profile_dir = exe.parent()?.parent()?;
    let bin = profile_dir.join("hive-agent");
    is_executable(&bin).then_some(bin)
}

/// `nix-build` on `PATH` (Debian: nix-bin).
pub fn nix_build() -> Option<PathBuf> {
    which("nix-build")
}

/// `systemd-nspawn` on `PATH` (Debian: systemd-container), usable only as root.
pub fn systemd_nspawn() -> Option<PathBuf> {
    which("systemd-nspawn").filter(|_| nix::unistd::geteuid().is_root())
}

/// The static busybox the minimal builder puts in images (Debian: busybox-static).
pub fn busybox() -> Option<PathBuf> {
    which("busybox")
}

/// Debian's `chromium` on `PATH` (the dashboard's real-browser tests).
pub fn chromium() -> Option<PathBuf> {
    which("chromium")
}

/// `chromedriver` on `PATH` (Debian: chromium-driver), the WebDriver server for `chromium`.
pub fn chromedriver() -> Option<PathBuf> {
    which("chromedriver")
}

/// The first executable file called `name` in a directory of `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Whether this is a CI run (`CI=true`, or `1`).
pub fn in_ci() -> bool {
    env_is_true("CI")
}

/// Whether a person allowed missing components to skip their tests (`HYPERHIVE_ALLOW_SKIP=1`);
/// never in CI.
pub fn skip_allowed() -> bool {
    env_is_true("HYPERHIVE_ALLOW_SKIP") && !in_ci()
}

fn env_is_true(name: &str) -> bool {
    std::env::var(name)
        .map(|v| v.eq_ignore_ascii_case("true") || v == "1")
        .unwrap_or(false)
}

/// The command that installs the component `name`.
pub fn install_hint(name: &str) -> &'static str {
    match name {
        "claude" => {
            "scripts/setup (installs the pinned npm @anthropic-ai/claude-code into .tools/)"
        }
        "python3" => "apt-get install python3 (or scripts/setup)",
        "python mcp" => "scripts/setup (creates .tools/venv with the pinned PyPI mcp)",
        "node" | "npm" => "apt-get install nodejs npm (or scripts/setup)",
        "hive-agent" => "cargo build --workspace (scripts/test builds it first)",
        "nix-build" | "nix-instantiate" | "nix" => "apt-get install nix-bin (or scripts/setup)",
        "systemd-nspawn" => {
            "apt-get install systemd-container (or scripts/setup); the tests that start containers run as root"
        }
        "busybox" => "apt-get install busybox-static (or scripts/setup)",
        "chromium" | "chromedriver" => {
            "apt-get install chromium chromium-driver (or scripts/setup)"
        }
        _ => "scripts/setup",
    }
}

/// `found` when the component `name` is there. When it is missing this panics, naming the
/// component and the command that installs it, unless [`skip_allowed`]: then it prints a note to
/// stderr and returns `None`, so the test can return early:
///
/// ```no_run
/// let Some(claude) = testkit::tools::require("claude", testkit::tools::claude_bin()) else {
///     return;
/// };
/// ```
pub fn require<T>(name: &str, found: Option<T>) -> Option<T> {
    if found.is_some() {
        return found;
    }
    missing(name, skip_allowed());
    None
}

/// A missing component: a panic, or with `allow_skip` a note on stderr.
fn missing(name: &str, allow_skip: bool) {
    let hint = install_hint(name);
    if !allow_skip {
        panic!(
            "required test component `{name}` is missing; install it with: {hint} \
             (or set HYPERHIVE_ALLOW_SKIP=1 by hand to skip the tests that need it)"
        );
    }
    eprintln!(
        "note: skipping (HYPERHIVE_ALLOW_SKIP=1): test component `{name}` is missing; install it with: {hint}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_passes_found_through() {
        assert_eq!(require("x", Some(3)), Some(3));
    }

    #[test]
    #[should_panic(expected = "required test component `surely-missing` is missing")]
    fn a_missing_component_fails_unless_skips_were_allowed() {
        missing("surely-missing", false);
    }

    #[test]
    fn a_missing_component_is_a_note_when_skips_were_allowed() {
        missing("surely-missing", true);
    }

    #[test]
    fn which_finds_sh() {
        assert!(which("sh").is_some());
        assert!(which("surely-not-a-program-here").is_none());
    }
}
