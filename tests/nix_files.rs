//! The Nix side of the project, checked on machines that cannot fetch nixpkgs (DESIGN §15): every
//! `.nix` file parses, `flake.lock` holds the pinned nixpkgs node, the flake's offline outputs
//! evaluate, the agent module's options evaluate through the minimal builder, and the hive.toml the
//! host module writes (its options plus the `settings` example it documents) passes the real
//! `hive check-config`. The VM test and the full module evaluation are `nix flake check` on a
//! machine with nixpkgs. A missing `nix-instantiate` or `nix` fails these tests unless a person
//! set HYPERHIVE_ALLOW_SKIP=1.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};
use testkit::tools;

const HIVE: &str = env!("CARGO_BIN_EXE_hive");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn nix_instantiate() -> Option<PathBuf> {
    tools::require("nix-instantiate", tools::which("nix-instantiate"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every `.nix` file of the repository, build outputs and installed tools left out.
fn nix_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let name = entry.file_name();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() && ![".git", "target", ".tools"].contains(&name.to_str().unwrap_or("")) {
            nix_files(&path, found);
        } else if kind.is_file() && path.extension().is_some_and(|e| e == "nix") {
            found.push(path);
        }
    }
}

/// `nix-instantiate --eval --strict --json` of an expression; the value, or nix's message.
fn eval_json(nix: &Path, expr: &str) -> Result<Value, String> {
    let out = Command::new(nix)
        .args([
            "--eval",
            "--strict",
            "--json",
            "--option",
            "substituters",
            "",
        ])
        .args(["-E", expr])
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(text(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap())
}

/// A Nix string literal for a path.
fn nix_path(path: &Path) -> String {
    serde_json::to_string(path.to_str().unwrap()).unwrap()
}

#[test]
fn every_nix_file_parses() {
    let Some(nix) = nix_instantiate() else { return };
    let mut files = vec![];
    nix_files(&root(), &mut files);
    for expected in [
        "flake.nix",
        "nixos-module/default.nix",
        "nixos-module/agent-module.nix",
        "nixos-module/lib/minimal.nix",
        "nix/package.nix",
        "nix/tests/vm.nix",
    ] {
        assert!(
            files.contains(&root().join(expected)),
            "{expected} not found"
        );
    }
    for file in &files {
        let out = Command::new(&nix)
            .arg("--parse")
            .arg(file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            file.display(),
            text(&out.stderr)
        );
    }
}

#[test]
fn a_nix_syntax_error_is_caught() {
    // The check above must be able to fail: nix-instantiate --parse exits non-zero on bad syntax.
    let Some(nix) = nix_instantiate() else { return };
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.nix");
    std::fs::write(&bad, "{ a = ; }").unwrap();
    let out = Command::new(&nix)
        .arg("--parse")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("syntax error"), "{out:?}");
}

/// The locked nixpkgs node, exactly as measured (never invented): nixos-25.11.
fn pinned_nixpkgs() -> Value {
    json!({
        "locked": {
            "lastModified": 1772047000,
            "narHash": "sha256-7DaQVv4R97cii/Qdfy4tmDZMB2xxtyIvNGSwXBBhSmo=",
            "owner": "NixOS",
            "repo": "nixpkgs",
            "rev": "1267bb4920d0fc06ea916734c11b0bf004bbe17e",
            "type": "github"
        },
        "original": { "owner": "NixOS", "ref": "nixos-25.11", "repo": "nixpkgs", "type": "github" }
    })
}

#[test]
fn flake_lock_holds_the_pinned_nixpkgs() {
    let lock: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("flake.lock")).unwrap()).unwrap();
    assert_eq!(lock["version"], 7);
    assert_eq!(lock["root"], "root");
    assert_eq!(
        lock["nodes"]["root"],
        json!({"inputs": {"nixpkgs": "nixpkgs"}})
    );
    assert_eq!(lock["nodes"]["nixpkgs"], pinned_nixpkgs());
    assert_eq!(
        lock["nodes"].as_object().unwrap().len(),
        2,
        "only nixpkgs is an input"
    );
}

/// A copy of what the flake reads (not `path:.`, which would copy the build dir into the store).
fn flake_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("cp")
        .args(["-r", "flake.nix", "flake.lock", "nixos-module", "nix"])
        .arg(dir.path())
        .current_dir(root())
        .status()
        .unwrap();
    assert!(status.success());
    dir
}

#[test]
fn the_flake_s_offline_outputs_evaluate_with_the_pinned_lock() {
    let Some(nix) = tools::require("nix", tools::which("nix")) else {
        return;
    };
    let flake = flake_copy();
    let x = ["--extra-experimental-features", "nix-command flakes"];
    let run = |args: &[&str]| {
        let out = Command::new(&nix).args(x).args(args).output().unwrap();
        assert!(out.status.success(), "nix {args:?}: {}", text(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let at = |attr: &str| format!("path:{}#{attr}", flake.path().display());
    let meta = run(&[
        "flake",
        "metadata",
        "--offline",
        "--json",
        &format!("path:{}", flake.path().display()),
    ]);
    assert_eq!(meta["locks"]["nodes"]["nixpkgs"], pinned_nixpkgs());
    let names = "builtins.attrNames";
    let modules = run(&[
        "eval",
        "--offline",
        "--json",
        &at("nixosModules"),
        "--apply",
        names,
    ]);
    assert_eq!(modules, json!(["agent", "default"]));
    let overlays = run(&[
        "eval",
        "--offline",
        "--json",
        &at("overlays"),
        "--apply",
        names,
    ]);
    assert_eq!(overlays, json!(["default"]));
    let checks = run(&[
        "eval",
        "--offline",
        "--json",
        &at("checks"),
        "--apply",
        "builtins.mapAttrs (_: builtins.attrNames)",
    ]);
    for system in ["x86_64-linux", "aarch64-linux"] {
        assert_eq!(
            checks[system],
            json!(["module", "package", "vm"]),
            "{checks}"
        );
    }
}

/// `agent.json` from an agent's config dir, through the minimal builder's own evaluation.
fn agent_json(nix: &Path, src: &Path) -> Result<Value, String> {
    let expr = format!(
        "(import {minimal} {{ name = \"t\"; src = {src}; harness = \"/nonexistent\"; }}).agentJson",
        minimal = nix_path(&root().join("nixos-module/lib/minimal.nix")),
        src = nix_path(src),
    );
    let text = eval_json(nix, &expr)?;
    Ok(serde_json::from_str(text.as_str().unwrap()).unwrap())
}

#[test]
fn the_agent_module_s_options_evaluate_through_the_minimal_builder() {
    let Some(nix) = nix_instantiate() else { return };
    for template in ["agents/default", "agents/manager"] {
        let json = agent_json(&nix, &root().join(template)).unwrap();
        let config: proto::AgentConfig = serde_json::from_value(json.clone())
            .unwrap_or_else(|e| panic!("{template}: {e}: {json}"));
        assert_eq!(
            config.resources.memory_mb, 2048,
            "{template}: defaults applied"
        );
        assert!(!config.prompt.is_empty(), "{template}: prompt.md read");
    }

    // Every option set: each comes through under its agent.json name.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("agent.nix"),
        r#"{ ... }: { hyperhive = {
            model = "m"; driver = "openai"; prompt = "p"; network = "host";
            allowedRecipients = [ "bob" ]; allowedCommands = [ "ls" ];
            extraMcpServers.fs = { command = "fs"; args = [ "-r" ]; env.A = "1"; allowedTools = [ "read" ]; };
            egress = [ "example.org:443" ]; resources = { memoryMB = 512; pids = 64; cpuWeight = 200; };
            restart = "always"; env.X = "y"; budget.tokensPerDay = 1000;
        }; }"#,
    )
    .unwrap();
    let json = agent_json(&nix, dir.path()).unwrap();
    let config: proto::AgentConfig = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(config.model.as_deref(), Some("m"));
    assert_eq!(config.resources.memory_mb, 512);
    assert_eq!(config.resources.cpu_weight, 200);
    assert_eq!(config.egress, ["example.org:443"]);
    assert_eq!(json["budget"]["tokensPerDay"], 1000);
    assert_eq!(
        json["extraMcpServers"]["fs"]["allowedTools"],
        json!(["read"])
    );

    // A wrong type is refused with the option's name.
    std::fs::write(
        dir.path().join("agent.nix"),
        "{ ... }: { hyperhive.resources.memoryMB = \"lots\"; }",
    )
    .unwrap();
    let err = agent_json(&nix, dir.path()).unwrap_err();
    assert!(err.contains("memoryMB"), "{err}");
}

/// The hive.toml the host module writes for these options (nixos-module/hive-toml.nix), as TOML.
fn hive_toml(nix: &Path, options: &str) -> Result<String, String> {
    let expr = format!(
        "import {} ({options})",
        nix_path(&root().join("nixos-module/hive-toml.nix"))
    );
    let value = eval_json(nix, &expr)?;
    Ok(toml::to_string(&value).unwrap())
}

fn check_config(toml: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hive.toml");
    std::fs::write(&file, toml).unwrap();
    Command::new(HIVE)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap()
}

/// The module's option defaults (nixos-module/default.nix).
const DEFAULT_OPTIONS: &str = "dashboard = { address = \"127.0.0.1\"; port = 7000; }; \
     runtime = \"nspawn\"; autoUpdate = false;";

#[test]
fn the_module_s_hive_toml_with_its_documented_example_passes_check_config() {
    let Some(nix) = nix_instantiate() else { return };
    let example = nix_path(&root().join("nixos-module/settings-example.nix"));
    for options in [
        format!("{{ {DEFAULT_OPTIONS} settings = {{ }}; }}"),
        format!("{{ {DEFAULT_OPTIONS} settings = import {example}; }}"),
        format!(
            "{{ dashboard = {{ address = \"0.0.0.0\"; port = 7100; }}; runtime = \"process\"; \
             autoUpdate = true; settings = import {example}; }}"
        ),
    ] {
        let toml = hive_toml(&nix, &options).unwrap();
        let out = check_config(&toml);
        assert!(
            out.status.success(),
            "{options}\n{toml}\n{}",
            text(&out.stderr)
        );
        let parsed = broker::config::Config::from_toml(&toml).unwrap();
        assert_ne!(parsed.runtime.kind, None, "runtime maps to [runtime] kind");
    }

    // The options land on their keys, and `settings` wins over them.
    let toml = hive_toml(
        &nix,
        &format!(
            "{{ dashboard = {{ address = \"0.0.0.0\"; port = 7100; }}; runtime = \"none\"; \
             autoUpdate = true; settings = (import {example}) // {{ dashboard.port = 7200; }}; }}"
        ),
    )
    .unwrap();
    let parsed = broker::config::Config::from_toml(&toml).unwrap();
    assert_eq!(parsed.dashboard.address.to_string(), "0.0.0.0");
    assert_eq!(parsed.dashboard.port, 7200);
    assert_eq!(parsed.runtime.kind, Some(broker::config::RuntimeKind::Off));
    assert!(parsed.watcher.auto_update);
    assert_eq!(parsed.store.synchronous, broker::config::Synchronous::Full);
    assert_eq!(parsed.watcher.reconcile_seconds, 60, "the example's key");

    // The manager's model and the agents' resource defaults land on [manager] and [defaults].
    let toml = hive_toml(
        &nix,
        &format!(
            "{{ {DEFAULT_OPTIONS} settings = {{ }}; manager.model = \"claude-opus-4-1\"; \
             agentDefaults.resources = {{ memoryMB = 1024; pids = null; cpuWeight = 50; }}; }}"
        ),
    )
    .unwrap();
    let parsed = broker::config::Config::from_toml(&toml).unwrap();
    assert_eq!(parsed.manager.model.as_deref(), Some("claude-opus-4-1"));
    assert_eq!(parsed.defaults.resources.memory_mb, Some(1024));
    assert_eq!(parsed.defaults.resources.pids, None);
    assert_eq!(parsed.defaults.resources.cpu_weight, Some(50));
}

#[test]
fn a_bad_setting_fails_check_config_with_its_key() {
    // What fails the system build: an unknown key, or a value out of range.
    let Some(nix) = nix_instantiate() else { return };
    for (settings, key) in [
        ("{ store.synchronus = \"full\"; }", "synchronus"),
        ("{ mailbox.max_body_bytes = 0; }", "mailbox.max_body_bytes"),
        ("{ manager.model = \"--flag\"; }", "manager.model"),
        (
            "{ defaults.resources.pids = 1; }",
            "defaults.resources.pids",
        ),
    ] {
        let toml = hive_toml(
            &nix,
            &format!("{{ {DEFAULT_OPTIONS} settings = {settings}; }}"),
        )
        .unwrap();
        let out = check_config(&toml);
        assert!(!out.status.success(), "{settings} was accepted");
        let err = text(&out.stderr);
        assert!(err.contains(key), "{settings}: {err}");
    }
}

#[test]
fn the_service_units_run_hive_serve_as_scripts_serve_does() {
    // The daemon's own default state dir as root; both units must use it.
    let default_root = "/var/lib/hyperhive";
    if nix::unistd::geteuid().is_root() {
        assert_eq!(
            broker::paths::StateDir::default_root(),
            Path::new(default_root)
        );
    }
    let contrib = std::fs::read_to_string(root().join("contrib/hyperhive.service")).unwrap();
    let lines: Vec<&str> = contrib.lines().map(str::trim).collect();
    for expected in [
        "Type=notify".to_owned(),
        "WatchdogSec=30".to_owned(),
        format!("ExecStart=/usr/local/bin/hive serve --state-dir {default_root}"),
        "StateDirectory=hyperhive".to_owned(),
        "RuntimeDirectory=hyperhive".to_owned(),
    ] {
        assert!(
            lines.contains(&expected.as_str()),
            "contrib unit lacks {expected}"
        );
    }
    let module = std::fs::read_to_string(root().join("nixos-module/default.nix")).unwrap();
    for expected in [
        format!("default = \"{default_root}\";"),
        "Type = \"notify\";".to_owned(),
        "WatchdogSec = 30;".to_owned(),
        "bin/hive serve --state-dir ${cfg.stateDir} --config ${configFile}".to_owned(),
    ] {
        assert!(module.contains(&expected), "module lacks {expected}");
    }
}
