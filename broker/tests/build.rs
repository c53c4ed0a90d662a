//! The minimal builder with real nix: an applied repo (bare, committed into with the git CLI)
//! becomes an image in the store, kept by a gcroot under `build/<name>/`; bad configs fail with
//! nix's message naming the option and `agent.nix:LINE`; nothing outside the exported tree is
//! readable from agent.nix; `collect` drops only the images of the deploys it is told to drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use broker::build::{Builder, Image};
use broker::config::BuilderKind;
use broker::names::AgentName;
use broker::paths::StateDir;
use proto::AgentConfig;
use proto::agent_config::{Budget, Driver, Network, Resources, Restart};
use testkit::tools;

/// A state dir, a builder, and per agent a bare applied repo with a work tree to commit from.
struct Setup {
    dir: tempfile::TempDir,
    paths: StateDir,
    builder: Builder,
    harness: PathBuf,
}

fn setup(timeout: Duration) -> Option<Setup> {
    tools::require("nix-build", tools::nix_build())?;
    tools::require("busybox", tools::busybox())?;
    let harness = tools::require("hive-agent", tools::hive_agent_bin())?;
    let dir = tempfile::tempdir().unwrap();
    let paths = StateDir::new(dir.path());
    paths.create().unwrap();
    let builder = Builder::new(
        BuilderKind::Minimal,
        paths.clone(),
        harness.clone(),
        timeout,
    )
    .unwrap();
    Some(Setup {
        dir,
        paths,
        builder,
        harness,
    })
}

fn name(s: &str) -> AgentName {
    AgentName::parse(s).unwrap()
}

fn git(args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=manager",
            "-c",
            "user.email=manager@hive",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

impl Setup {
    fn repo(&self, agent: &str) -> PathBuf {
        self.paths.applied_repo(&name(agent))
    }

    fn work(&self, agent: &str) -> PathBuf {
        self.dir.path().join("work").join(agent)
    }

    /// Commits `files` (path, content) into the agent's applied repo, replacing what was there;
    /// a content starting with `-> ` is a symlink to the rest. Returns the commit.
    fn commit(&self, agent: &str, files: &[(&str, &str)]) -> String {
        let repo = self.repo(agent);
        let work = self.work(agent);
        if !repo.exists() {
            git(&["init", "-q", "--bare", repo.to_str().unwrap()]);
        }
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        for (path, content) in files {
            let at = work.join(path);
            std::fs::create_dir_all(at.parent().unwrap()).unwrap();
            match content.strip_prefix("-> ") {
                Some(target) => std::os::unix::fs::symlink(target, &at).unwrap(),
                None => std::fs::write(&at, content).unwrap(),
            }
        }
        let dirs = [
            "--git-dir",
            repo.to_str().unwrap(),
            "--work-tree",
            work.to_str().unwrap(),
        ];
        git(&[&dirs[..], &["add", "-A"]].concat());
        git(&[
            &dirs[..],
            &["commit", "-q", "--allow-empty", "-m", "change"],
        ]
        .concat());
        git(&[&dirs[..], &["rev-parse", "HEAD"]].concat())
    }

    fn build(&self, agent: &str, deploy_id: i64, sha: &str) -> broker::Result<Image> {
        self.builder
            .build(&name(agent), deploy_id, &self.repo(agent), sha)
    }

    /// Builds `agent.nix` (with the default template's prompt.md beside it) and returns the error.
    fn build_error(&self, agent: &str, deploy_id: i64, agent_nix: &str) -> broker::Error {
        let sha = self.commit(
            agent,
            &[("agent.nix", agent_nix), ("prompt.md", "the prompt\n")],
        );
        let err = self
            .build(agent, deploy_id, &sha)
            .expect_err("the build must fail");
        assert_eq!(err.code(), "build_failed", "{err}");
        assert!(
            std::fs::symlink_metadata(self.gcroot(agent, deploy_id)).is_err(),
            "a failed build leaves no gcroot"
        );
        err
    }

    fn gcroot(&self, agent: &str, deploy_id: i64) -> PathBuf {
        self.paths
            .build_dir(&name(agent))
            .join(format!("result-{deploy_id}"))
    }
}

fn template(agent: &str) -> Vec<(&'static str, String)> {
    let dir = tools::workspace_root().join("agents").join(agent);
    ["agent.nix", "prompt.md"]
        .into_iter()
        .map(|f| (f, std::fs::read_to_string(dir.join(f)).unwrap()))
        .collect()
}

fn roots_of(path: &Path) -> String {
    let out = Command::new("nix-store")
        .args(["-q", "--roots"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn image_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.path().symlink_metadata().unwrap();
        total += if meta.is_dir() {
            image_bytes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

/// Where `needle` appears on a line of `text`, 1-based.
fn line_of(text: &str, needle: &str) -> usize {
    1 + text
        .lines()
        .position(|l| l.contains(needle))
        .expect("the needle is in the text")
}

#[test]
fn each_template_builds_into_an_image_with_the_layout_and_the_defaults() {
    let Some(s) = setup(Duration::from_secs(120)) else {
        return;
    };
    let before: Vec<_> = std::fs::read_dir(s.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    for (id, agent) in [(1, "manager"), (2, "default")] {
        let files = template(agent);
        let borrowed: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
        let sha = s.commit(agent, &borrowed);
        let image = s.build(agent, id, &sha).unwrap();

        // The layout both the builder and the runtimes rely on.
        let root = &image.path;
        assert!(root.starts_with("/nix/store"), "{}", root.display());
        assert_eq!(image.gcroot, s.gcroot(agent, id));
        assert_eq!(std::fs::read_link(&image.gcroot).unwrap(), *root);
        let harness = std::fs::read(&s.harness).unwrap();
        assert!(std::fs::read(root.join("bin/hive-agent")).unwrap() == harness);
        assert!(root.join("bin/busybox").is_file());
        assert_eq!(
            std::fs::read_link(root.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        assert_eq!(
            std::fs::read_link(root.join("lib")).unwrap(),
            Path::new("usr/lib")
        );
        assert_eq!(
            std::fs::read_link(root.join("lib64")).unwrap(),
            Path::new("usr/lib64")
        );
        for dir in [
            "root",
            "var",
            "proc",
            "sys",
            "dev",
            "tmp",
            "run",
            "state",
            "usr",
            "nix/store",
            "agents",
            "etc",
        ] {
            let d = root.join(dir);
            assert!(d.is_dir(), "{}", d.display());
        }
        // busybox runs from the image as `sh`.
        let out = Command::new(root.join("bin/sh"))
            .args(["-c", "echo up"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "up");

        // agent.json: every option present, defaults applied, the prompt read from its file.
        let json = std::fs::read(root.join("etc/hyperhive/agent.json")).unwrap();
        let raw: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let mut keys: Vec<_> = raw.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "allowedCommands",
                "allowedRecipients",
                "budget",
                "driver",
                "egress",
                "env",
                "extraMcpServers",
                "model",
                "network",
                "prompt",
                "resources",
                "restart"
            ]
        );
        let parsed: AgentConfig = serde_json::from_slice(&json).unwrap();
        let prompt = &files.iter().find(|(f, _)| *f == "prompt.md").unwrap().1;
        let expected = AgentConfig {
            model: None,
            driver: Driver::Claude,
            prompt: prompt.clone(),
            network: Network::None,
            resources: Resources::default(),
            restart: Restart::OnFailure,
            budget: Budget::default(),
            ..AgentConfig::default()
        };
        assert_eq!(parsed, expected);
        assert_eq!(image.config, expected);

        // The gcroot is what keeps it, and the tree it was built from is beside it.
        let roots = roots_of(root);
        assert!(
            roots.contains(image.gcroot.to_str().unwrap()),
            "nix-store -q --roots {}: {roots}",
            root.display()
        );
        let src = s
            .paths
            .build_dir(&name(agent))
            .join(format!("src-{id}/agent.nix"));
        assert_eq!(
            std::fs::read_to_string(src).unwrap(),
            files[0].1,
            "the exported agent.nix"
        );
        // A restarted daemon finds it again.
        let again = s.builder.image(&name(agent), id).unwrap();
        assert_eq!(again.path, image.path);
        assert_eq!(again.config, expected);
        eprintln!("image of {agent}: {} bytes", image_bytes(root));
    }
    assert!(s.builder.image(&name("manager"), 99).is_none());
    // Nothing but build/ was written (the applied repos and the work trees are the test's own).
    let mut after: Vec<_> = std::fs::read_dir(s.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    after.retain(|n| !before.contains(n) && n != "work" && n != "applied");
    assert_eq!(after, ["build"]);
}

#[test]
fn options_are_resolved_into_agent_json() {
    let Some(s) = setup(Duration::from_secs(120)) else {
        return;
    };
    let agent_nix = r#"{ config, lib, pkgs, ... }:
{
  environment.systemPackages = [ pkgs.git ];
  hyperhive = {
    model = "m-1";
    driver = "openai";
    prompt = "inline";
    network = "host";
    allowedRecipients = [ "bob" "carol-2" ];
    allowedCommands = [ "ls" ];
    extraMcpServers.files = { command = "mcp-files"; args = [ "--ro" ]; };
    egress = [ "api.example.com:443" "[::1]:8080" ];
    resources = { memoryMB = 64; cpuWeight = lib.mkDefault 50; };
    restart = "never";
    env.MODEL = config.hyperhive.model;
    budget.tokensPerDay = 1000;
  };
}
"#;
    let sha = s.commit("alice", &[("agent.nix", agent_nix)]);
    let image = s.build("alice", 1, &sha).unwrap();
    let c = image.config;
    assert_eq!(c.model.as_deref(), Some("m-1"));
    assert_eq!(c.driver, Driver::Openai);
    assert_eq!(c.prompt, "inline");
    assert_eq!(c.network, Network::Host);
    assert_eq!(c.allowed_recipients, ["bob", "carol-2"]);
    assert_eq!(c.allowed_commands, ["ls"]);
    let files = &c.extra_mcp_servers["files"];
    assert_eq!(files.command, "mcp-files");
    assert_eq!(files.args, ["--ro"]);
    assert!(files.env.is_empty() && files.allowed_tools.is_empty());
    assert_eq!(c.egress, ["api.example.com:443", "[::1]:8080"]);
    assert_eq!(
        c.resources,
        Resources {
            memory_mb: 64,
            pids: 512,
            cpu_weight: 50
        }
    );
    assert_eq!(c.restart, Restart::Never);
    assert_eq!(c.env["MODEL"], "m-1");
    assert_eq!(c.budget.tokens_per_day, Some(1000));
}

#[test]
fn a_second_build_of_the_same_commit_reuses_the_store_path() {
    let Some(s) = setup(Duration::from_secs(120)) else {
        return;
    };
    // A prompt no earlier run built, so the first build is a real (cold) one.
    let nonce = format!("{:?} {}", std::time::SystemTime::now(), std::process::id());
    let sha = s.commit(
        "alice",
        &[
            (
                "agent.nix",
                "{ ... }: { hyperhive.prompt = ./prompt.md; }\n",
            ),
            ("prompt.md", &nonce),
        ],
    );
    let started = Instant::now();
    let first = s.build("alice", 1, &sha).unwrap();
    let cold = started.elapsed();
    let started = Instant::now();
    let second = s.build("alice", 2, &sha).unwrap();
    let cached = started.elapsed();
    eprintln!("build wall time: cold {cold:?}, cached {cached:?}");
    assert_eq!(first.path, second.path);
    assert_eq!(first.config.prompt, nonce);
    let roots = roots_of(&first.path);
    for gcroot in [&first.gcroot, &second.gcroot] {
        assert!(roots.contains(gcroot.to_str().unwrap()), "{roots}");
    }
}

#[test]
fn a_syntax_error_fails_with_nix_message_and_keeps_the_earlier_image() {
    let Some(s) = setup(Duration::from_secs(120)) else {
        return;
    };
    let good = s.commit("alice", &[("agent.nix", "{ ... }: { hyperhive = { }; }\n")]);
    let earlier = s.build("alice", 1, &good).unwrap();
    let err = s.build_error("alice", 2, "{ ... }:\n{\n  hyperhive = { x = 1 };\n}\n");
    let msg = err.to_string();
    assert!(msg.contains("syntax error, unexpected '}'"), "{msg}");
    assert!(msg.contains("agent.nix:3:"), "{msg}");
    assert!(!msg.contains(s.dir.path().to_str().unwrap()), "{msg}");
    assert!(!msg.contains("these derivations"), "{msg}");
    // The earlier deploy's image is untouched.
    let still = s.builder.image(&name("alice"), 1).unwrap();
    assert_eq!(still.path, earlier.path);
    assert!(earlier.path.join("bin/hive-agent").is_file());
}

#[test]
fn a_wrong_type_names_the_option_and_the_line() {
    let Some(s) = setup(Duration::from_secs(120)) else {
        return;
    };
    let agent_nix = "{ ... }:\n{\n  hyperhive = {\n    driver = \"claude\";\n    resources.memoryMB = \"x\";\n  };\n}\n";
    let msg = s.build_error("alice", 1, agent_nix).to_string();
    let line = line_of(agent_nix, "memoryMB");
    assert!(
        msg.contains(&format!(
            "hyperhive.resources.memoryMB (agent.nix:{line}): expected an integer"
        )),
        "{msg}"
    );
    assert!(msg.contains(r#"got the string "x""#), "{msg}");

    let agent_nix = "{ ... }:\n{\n  hyperhive.driver = \"gpt\";\n}\n";
    let msg = s.build_error("alice", 2, agent_nix).to_string();
    assert!(
        msg.contains(r#"hyperhive.driver (agent.nix:3): expected one of "claude", "openai""#),
        "{msg}"
    );

    // A string that names a store path is not plain text.
    let agent_nix = "{ ... }:\n{\n  hyperhive.prompt = \"${./prompt.md}\";\n}\n";
    let msg = s.build_error("alice", 3, agent_nix).to_string();
    assert!(
        msg.contains("hyperhive.prompt (agent.nix:3): must be plain text"),
        "{msg}"
    );
}

#[test]
fn an_unknown_option_names_itself_and_the_line() {
    let Some(s) = setup(Duration::from_secs(120)) else {
        return;
    };
    let agent_nix =
        "{ ... }:\n{\n  hyperhive.driver = \"claude\";\n  hyperhive.modle = \"x\";\n}\n";
    let msg = s.build_error("alice", 1, agent_nix).to_string();
    assert!(
        msg.contains("hyperhive.modle (agent.nix:4): no such option"),
        "{msg}"
    );
    assert!(msg.contains("model"), "the options are listed: {msg}");

    let agent_nix =
        "{ ... }:\n{\n  hyperhive.extraMcpServers.files = {\n    args = [ ];\n  };\n}\n";
    let msg = s.build_error("alice", 2, agent_nix).to_string();
    assert!(
        msg.contains("hyperhive.extraMcpServers.files.command (agent.nix:3): must be set"),
        "{msg}"
    );
}

/// A host file with a secret in it, outside the state dir.
fn planted_host_file() -> (tempfile::TempDir, PathBuf) {
    let host = tempfile::tempdir().unwrap();
    let file = host.path().join("secret.nix");
    std::fs::write(&file, "\"host-secret-7f3a\"").unwrap();
    (host, file)
}

#[test]
fn agent_nix_cannot_read_a_host_file() {
    let Some(s) = setup(Duration::from_secs(120)) else {
        return;
    };
    let (_host, secret) = planted_host_file();
    let secret = secret.canonicalize().unwrap();
    let secret = secret.to_str().unwrap();
    let cases = [
        format!("{{ ... }}: {{ hyperhive.prompt = builtins.readFile {secret}; }}\n"),
        format!("{{ ... }}: {{ hyperhive.prompt = import {secret}; }}\n"),
        "{ ... }: { hyperhive.prompt = builtins.readFile /etc/passwd; }\n".to_owned(),
        format!(
            "{{ ... }}: {{ hyperhive.prompt = builtins.readFile ./prompt.md + builtins.readFile (./. + \"/../../../..{secret}\"); }}\n"
        ),
        format!("{{ ... }}: {{ hyperhive.prompt = builtins.fetchurl \"file://{secret}\"; }}\n"),
    ];
    for (id, agent_nix) in cases.iter().enumerate() {
        let msg = s.build_error("alice", id as i64, agent_nix).to_string();
        assert!(
            msg.contains("is forbidden in restricted mode"),
            "{agent_nix}: {msg}"
        );
        assert!(!msg.contains("host-secret"), "{msg}");
        assert!(!msg.contains("root:"), "{msg}");
    }
}

#[test]
fn agent_nix_cannot_run_a_builder_of_its_own() {
    let Some(s) = setup(Duration::from_secs(120)) else {
        return;
    };
    let (host, _secret) = planted_host_file();
    let marker = host.path().join("ran");
    let drv = format!(
        "derivation {{ name = \"x\"; system = builtins.currentSystem; builder = \"/bin/sh\"; args = [ \"-c\" \"echo ran > {} ; echo '\\\"x\\\"' > $out\" ]; }}",
        marker.display()
    );
    // Imported while evaluating (import from derivation): nix would build it on the host.
    let agent_nix = format!("{{ ... }}: {{ hyperhive.prompt = import ({drv}); }}\n");
    let msg = s.build_error("alice", 1, &agent_nix).to_string();
    assert!(msg.contains("allow-import-from-derivation"), "{msg}");
    // Named in an option's text: the image would depend on it and nix would build it first.
    let agent_nix = format!("{{ ... }}: {{ hyperhive.prompt = \"${{{drv}}}\"; }}\n");
    let msg = s.build_error("alice", 2, &agent_nix).to_string();
    assert!(
        msg.contains("hyperhive.prompt (agent.nix:1): must be plain text"),
        "{msg}"
    );
    assert!(!marker.exists(), "the agent's builder ran on the host");
}

#[test]
fn a_symlink_out_of_the_tree_is_refused() {
    let Some(s) = setup(Duration::from_secs(120)) else {
        return;
    };
    let (_host, secret) = planted_host_file();
    let secret = secret.canonicalize().unwrap();
    let link = format!("-> {}", secret.display());
    let dir_link = format!("-> {}", secret.parent().unwrap().display());
    for (id, agent_nix) in [
        "{ ... }: { hyperhive.prompt = builtins.readFile ./leak; }\n",
        "{ ... }: { hyperhive.prompt = import ./leak; }\n",
        "{ ... }: { hyperhive.prompt = builtins.readFile ./d/secret.nix; }\n",
        "{ ... }: { hyperhive.prompt = ./leak; }\n",
    ]
    .into_iter()
    .enumerate()
    {
        let sha = s.commit(
            "alice",
            &[("agent.nix", agent_nix), ("leak", &link), ("d", &dir_link)],
        );
        let err = s.build("alice", id as i64, &sha).unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.code(), "build_failed", "{msg}");
        assert!(
            msg.contains("access to canonical path")
                && msg.contains("is forbidden in restricted mode"),
            "{agent_nix}: {msg}"
        );
        assert!(!msg.contains("host-secret"), "{msg}");
    }
    // The symlinks were written as symlinks (not followed, nothing copied from the host).
    let src = s.paths.build_dir(&name("alice")).join("src-0");
    assert_eq!(std::fs::read_link(src.join("leak")).unwrap(), secret);
}

#[test]
fn nixpkgs_is_not_there() {
    let Some(s) = setup(Duration::from_secs(120)) else {
        return;
    };
    let agent_nix = "{ ... }: { hyperhive.prompt = (import <nixpkgs> { }).hello; }\n";
    let msg = s.build_error("alice", 1, agent_nix).to_string();
    assert!(
        msg.contains("file 'nixpkgs' was not found in the Nix search path"),
        "{msg}"
    );
    let agent_nix = "{ ... }: { hyperhive.prompt = builtins.readFile <hyperhive-nothing/x>; }\n";
    let msg = s.build_error("alice", 2, agent_nix).to_string();
    assert!(
        msg.contains("was not found in the Nix search path"),
        "{msg}"
    );
}

/// `nixpkgs_from_nix_path_is_not_reachable` runs this in a child test process whose `NIX_PATH`
/// names a planted nixpkgs (the test process's own environment is left alone).
#[test]
#[ignore = "run by nixpkgs_from_nix_path_is_not_reachable with NIX_PATH set"]
fn nixpkgs_from_nix_path_inner() {
    let Some(s) = setup(Duration::from_secs(120)) else {
        return;
    };
    let agent_nix = "{ ... }: { hyperhive.prompt = import <nixpkgs>; }\n";
    let msg = s.build_error("alice", 1, agent_nix).to_string();
    assert!(
        msg.contains("file 'nixpkgs' was not found in the Nix search path"),
        "{msg}"
    );
    assert!(!msg.contains("planted-nixpkgs"), "{msg}");
}

#[test]
fn nixpkgs_from_nix_path_is_not_reachable() {
    let planted = tempfile::tempdir().unwrap();
    std::fs::write(planted.path().join("default.nix"), "\"planted-nixpkgs\"").unwrap();
    // Without the builder's care this is what nix would read.
    let direct = Command::new("nix-instantiate")
        .args(["--eval", "-E", "import <nixpkgs>"])
        .env("NIX_PATH", format!("nixpkgs={}", planted.path().display()))
        .output();
    if let Ok(direct) = direct {
        assert!(
            String::from_utf8_lossy(&direct.stdout).contains("planted-nixpkgs"),
            "the planted nixpkgs is reachable from a plain nix"
        );
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "nixpkgs_from_nix_path_inner",
            "--ignored",
            "--nocapture",
        ])
        .env("NIX_PATH", format!("nixpkgs={}", planted.path().display()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn collect_keeps_the_kept_deploys_and_removes_the_others() {
    let Some(s) = setup(Duration::from_secs(120)) else {
        return;
    };
    let nonce = format!("{:?} {}", std::time::SystemTime::now(), std::process::id());
    let mut images = Vec::new();
    for id in 1..=3 {
        let sha = s.commit(
            "alice",
            &[(
                "agent.nix",
                &format!("{{ ... }}: {{ hyperhive.prompt = \"{nonce} {id}\"; }}\n"),
            )],
        );
        images.push(s.build("alice", id, &sha).unwrap());
    }
    // Deploy 4 rebuilds deploy 3's commit: the same store path under two roots.
    let head = s.commit(
        "alice",
        &[(
            "agent.nix",
            &format!("{{ ... }}: {{ hyperhive.prompt = \"{nonce} 3\"; }}\n"),
        )],
    );
    let fourth = s.build("alice", 4, &head).unwrap();
    assert_eq!(fourth.path, images[2].path);
    // Another agent's image in the same hive.
    let bob_sha = s.commit(
        "bob",
        &[(
            "agent.nix",
            &format!("{{ ... }}: {{ hyperhive.prompt = \"{nonce} bob\"; }}\n"),
        )],
    );
    let bob = s.build("bob", 1, &bob_sha).unwrap();

    let removed = s.builder.collect(&name("alice"), &[2, 4]).unwrap();
    assert_eq!(removed, 2, "the roots of deploys 1 and 3");
    let dir = s.paths.build_dir(&name("alice"));
    for gone in ["result-1", "src-1", "result-3", "src-3"] {
        assert!(
            std::fs::symlink_metadata(dir.join(gone)).is_err(),
            "{gone} is removed"
        );
    }
    for kept in ["result-2", "src-2", "result-4", "src-4", "nix"] {
        assert!(dir.join(kept).exists(), "{kept} is kept");
    }
    assert!(!images[0].path.exists(), "deploy 1's image left the store");
    assert!(images[1].path.join("bin/hive-agent").is_file());
    assert!(
        fourth.path.join("bin/hive-agent").is_file(),
        "deploy 3's image is deploy 4's too: kept"
    );
    assert!(bob.path.join("bin/hive-agent").is_file());
    assert!(s.builder.image(&name("bob"), 1).is_some());
    assert!(s.builder.image(&name("alice"), 1).is_none());

    // Nothing more to do the second time.
    assert_eq!(s.builder.collect(&name("alice"), &[2, 4]).unwrap(), 0);
    assert_eq!(s.builder.collect(&name("carol"), &[]).unwrap(), 0);
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) {
                found.push(format!(
                    "{}: {cmdline}",
                    entry.file_name().to_string_lossy()
                ));
            }
        }
    }
    found
}

#[test]
fn a_build_past_the_timeout_is_killed() {
    let Some(s) = setup(Duration::from_secs(2)) else {
        return;
    };
    // Exponential evaluation in constant depth: runs far longer than the timeout.
    let agent_nix = "let f = n: if n == 0 then 1 else f (n - 1) + f (n - 1); in\n{ ... }: { hyperhive.resources.pids = f 60; }\n";
    let started = Instant::now();
    let msg = s.build_error("alice", 1, agent_nix).to_string();
    let took = started.elapsed();
    assert!(msg.contains("nix was stopped after 2 s"), "{msg}");
    assert!(took < Duration::from_secs(30), "{took:?}");
    let src = s.paths.build_dir(&name("alice")).join("src-1");
    let src = src.canonicalize().unwrap();
    let left = processes_mentioning(src.to_str().unwrap());
    assert!(left.is_empty(), "nix is still running: {left:?}");
}

#[test]
fn the_exported_tree_keeps_exec_bits_and_subdirectories() {
    let Some(s) = setup(Duration::from_secs(120)) else {
        return;
    };
    let sha = s.commit(
        "alice",
        &[
            (
                "agent.nix",
                "{ ... }: { hyperhive.prompt = import ./lib/prompt.nix; }\n",
            ),
            ("lib/prompt.nix", "builtins.readFile ./text.md"),
            ("lib/text.md", "from a subdirectory"),
            ("run.sh", "#!/bin/sh\n"),
        ],
    );
    let work = s.work("alice");
    let dirs = [
        "--git-dir",
        s.repo("alice").to_str().unwrap().to_owned().leak() as &str,
        "--work-tree",
        work.to_str().unwrap().to_owned().leak(),
    ];
    git(&[&dirs[..], &["update-index", "--chmod=+x", "run.sh"]].concat());
    git(&[&dirs[..], &["commit", "-q", "-m", "exec"]].concat());
    let sha2 = git(&[&dirs[..], &["rev-parse", "HEAD"]].concat());
    assert_ne!(sha, sha2);
    let image = s.build("alice", 1, &sha2).unwrap();
    assert_eq!(image.config.prompt, "from a subdirectory");
    use std::os::unix::fs::PermissionsExt as _;
    let src = s.paths.build_dir(&name("alice")).join("src-1");
    let mode = |p: &str| std::fs::metadata(src.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("run.sh"), 0o755);
    assert_eq!(mode("agent.nix"), 0o644);
    assert_eq!(mode("lib"), 0o755);
}

/// Runs git in the bare repo `repo` with `stdin`; returns stdout.
fn git_in(repo: &Path, args: &[&str], stdin: &str) -> String {
    use std::io::Write as _;
    let mut child = Command::new("git")
        .arg("--git-dir")
        .arg(repo)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "git {args:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn a_hostile_tree_cannot_write_outside_its_directory() {
    let Some(s) = setup(Duration::from_secs(120)) else {
        return;
    };
    s.commit("alice", &[("agent.nix", "{ ... }: { }\n")]);
    let repo = s.repo("alice");
    let host = tempfile::tempdir().unwrap();
    let host_dir = host.path().canonicalize().unwrap();
    let blob = |content: &str| git_in(&repo, &["hash-object", "-w", "--stdin"], content);
    let agent_nix = blob("{ ... }: { }\n");
    let payload = blob("written through a symlink\n");
    let link = blob(host_dir.to_str().unwrap());
    let sub = git_in(
        &repo,
        &["mktree"],
        &format!("100644 blob {payload}\tpwned\n"),
    );
    let commit_of = |tree_lines: String| {
        let tree = git_in(&repo, &["mktree"], &tree_lines);
        git_in(
            &repo,
            &[
                "-c",
                "user.name=m",
                "-c",
                "user.email=m@h",
                "commit-tree",
                &tree,
                "-m",
                "hostile",
            ],
            "",
        )
    };
    // "d" twice: a symlink out, then a directory whose file would be written through it.
    let twice = commit_of(format!(
        "100644 blob {agent_nix}\tagent.nix\n120000 blob {link}\td\n040000 tree {sub}\td\n"
    ));
    let err = s.build("alice", 1, &twice).unwrap_err();
    assert_eq!(err.code(), "build_failed", "{err}");
    assert!(err.to_string().contains("'d' appears twice"), "{err}");
    // A name that is not a plain file name.
    let dotdot = commit_of(format!(
        "100644 blob {agent_nix}\tagent.nix\n040000 tree {sub}\t..\n"
    ));
    let err = s.build("alice", 2, &dotdot).unwrap_err();
    assert_eq!(err.code(), "build_failed", "{err}");
    assert!(err.to_string().contains("not a plain file name"), "{err}");
    // Nothing reached the host dir, nor the build dir's parent.
    assert_eq!(std::fs::read_dir(&host_dir).unwrap().count(), 0);
    assert!(!s.paths.build_dir(&name("alice")).join("pwned").exists());
    assert!(!s.dir.path().join("build/pwned").exists());
}

#[test]
fn the_nixos_builder_says_it_needs_nixpkgs() {
    let dir = tempfile::tempdir().unwrap();
    let err = Builder::new(
        BuilderKind::Nixos,
        StateDir::new(dir.path()),
        PathBuf::from("/nonexistent"),
        Duration::from_secs(1),
    )
    .unwrap_err();
    assert_eq!(err.code(), "build_failed");
    assert!(err.to_string().contains("needs nixpkgs"), "{err}");
}

/// A stand-in for nixpkgs' `lib`, enough to evaluate the agent module's declarations here (the
/// machines that run the tests have no nixpkgs): each type is a plain record of what it was made
/// from.
const STUB_LIB: &str = r#"
let ty = name: args: { _type = "option-type"; inherit name args; };
in {
  mkOption = a: a // { _type = "option"; };
  mapAttrs = builtins.mapAttrs;
  optionalAttrs = c: a: if c then a else { };
  types = {
    str = ty "str" [ ]; path = ty "path" [ ]; int = ty "int" [ ];
    either = a: b: ty "either" [ a b ];
    strMatching = p: ty "strMatching" [ p ];
    enum = v: ty "enum" v;
    addCheck = t: f: ty "addCheck" [ t ];
    ints.between = a: b: ty "between" [ a b ];
    nullOr = t: ty "nullOr" [ t ];
    listOf = t: ty "listOf" [ t ];
    attrsOf = t: ty "attrsOf" [ t ];
    submodule = m: ty "submodule" [ m ];
  };
}
"#;

#[test]
fn the_nixos_module_declares_the_options_agent_json_holds() {
    if tools::require("nix-build", tools::nix_build()).is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("lib.nix");
    std::fs::write(&lib, STUB_LIB).unwrap();
    let module = tools::workspace_root().join("nixos-module/agent-module.nix");
    let defaults = serde_json::to_string(&AgentConfig::default()).unwrap();
    let expr = format!(
        r#"let
  m = import {module} {{
    lib = import {lib};
    config.hyperhive = builtins.fromJSON {defaults};
  }};
in {{
  options = m.options.hyperhive;
  json = m.config.environment.etc."hyperhive/agent.json".text;
}}"#,
        module = module.display(),
        lib = lib.display(),
        defaults = serde_json::to_string(&defaults).unwrap(),
    );
    let out = Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json", "-E", &expr])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Every option of agent.json is declared, with a default the hive applies too.
    let json_keys = serde_json::to_value(AgentConfig::default()).unwrap();
    let declared = v["options"].as_object().unwrap();
    let mut names: Vec<_> = declared.keys().collect();
    names.sort();
    let mut expected: Vec<_> = json_keys.as_object().unwrap().keys().collect();
    expected.sort();
    assert_eq!(names, expected);
    for (name, option) in declared {
        assert_eq!(option["_type"], "option", "{name}");
        assert!(option["description"].is_string(), "{name}");
        assert!(option.get("default").is_some(), "{name} has a default");
    }
    let resources = &declared["resources"]["type"];
    assert_eq!(resources["name"], "submodule");
    let cpu = &resources["args"][0]["options"]["cpuWeight"];
    assert_eq!(cpu["type"]["name"], "between");
    assert_eq!(cpu["default"], 100);
    // What it writes to /etc/hyperhive/agent.json is what the harness reads.
    let written: AgentConfig = serde_json::from_str(v["json"].as_str().unwrap()).unwrap();
    assert_eq!(written, AgentConfig::default());
}

/// `missing_nix_says_what_to_install` runs this in a child test process whose `PATH` is empty.
#[test]
#[ignore = "run by missing_nix_says_what_to_install with an empty PATH"]
fn missing_nix_inner() {
    // Only meaningful where nix is not on PATH (the outer test empties it).
    if tools::nix_build().is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let harness = dir.path().join("hive-agent");
    std::fs::write(&harness, "").unwrap();
    let err = Builder::new(
        BuilderKind::Minimal,
        StateDir::new(dir.path()),
        harness,
        Duration::from_secs(1),
    )
    .unwrap_err();
    assert_eq!(err.code(), "build_failed");
    assert!(err.to_string().contains("apt-get install nix-bin"), "{err}");
}

#[test]
fn missing_nix_says_what_to_install() {
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "missing_nix_inner", "--ignored", "--nocapture"])
        .env("PATH", empty.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_fingerprint_follows_the_harness_bytes_not_its_path() {
    let Some(s) = setup(Duration::from_secs(60)) else {
        return;
    };
    let bin = s.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let copy = bin.join("hive-agent");
    std::fs::copy(&s.harness, &copy).unwrap();
    let builder = Builder::new(
        BuilderKind::Minimal,
        s.paths.clone(),
        copy.clone(),
        Duration::from_secs(60),
    )
    .unwrap();
    let original = s.builder.fingerprint().unwrap();
    assert_eq!(original.len(), 64, "{original}");
    // The same bytes at another path: the same fingerprint; asked again: unchanged.
    assert_eq!(builder.fingerprint().unwrap(), original);
    assert_eq!(builder.fingerprint().unwrap(), original);

    // One byte more: another; the bytes back (a new file over it): the first again.
    let mut bytes = std::fs::read(&copy).unwrap();
    bytes.push(b'\n');
    std::fs::write(&copy, &bytes).unwrap();
    let changed = builder.fingerprint().unwrap();
    assert_ne!(changed, original);
    bytes.pop();
    let fresh = bin.join("fresh");
    std::fs::write(&fresh, &bytes).unwrap();
    std::fs::rename(&fresh, &copy).unwrap();
    assert_eq!(builder.fingerprint().unwrap(), original);

    // Gone: no fingerprint (nothing to compare with), and no stale one from the cache.
    std::fs::remove_file(&copy).unwrap();
    let e = builder.fingerprint().unwrap_err();
    assert!(e.to_string().contains("hive-agent"), "{e}");
}

/// The hive's `[defaults]` (and `[manager] model`) fill what an agent.nix leaves unset, what it
/// sets wins, and they are part of the fingerprint: a changed default makes images out of date.
#[test]
fn the_hives_defaults_fill_what_agent_nix_leaves_unset() {
    let Some(s) = setup(Duration::from_secs(120)) else {
        return;
    };
    let config = broker::config::Config::from_toml(
        "[defaults]\nmodel = \"hive-model\"\n[defaults.resources]\nmemory_mb = 1024\ncpu_weight = 30\n\
         [manager]\nmodel = \"manager-model\"\n",
    )
    .unwrap();
    let builder = s.builder.clone().with_defaults(&config);
    assert_ne!(
        builder.fingerprint().unwrap(),
        s.builder.fingerprint().unwrap(),
        "the defaults are in the fingerprint"
    );
    let bare = "{ ... }: { hyperhive = { }; }\n";
    let sets = "{ ... }: { hyperhive = { model = \"own\"; resources.memoryMB = 64; }; }\n";
    let built = |agent: &str, id: i64, agent_nix: &str| {
        let sha = s.commit(agent, &[("agent.nix", agent_nix)]);
        builder
            .build(&name(agent), id, &s.repo(agent), &sha)
            .unwrap()
            .config
    };

    let alice = built("alice", 1, bare);
    assert_eq!(alice.model.as_deref(), Some("hive-model"));
    assert_eq!(
        alice.resources,
        Resources {
            memory_mb: 1024,
            pids: 512,
            cpu_weight: 30
        }
    );
    let manager = built("manager", 2, bare);
    assert_eq!(manager.model.as_deref(), Some("manager-model"));
    assert_eq!(manager.resources.memory_mb, 1024);
    let own = built("bob", 3, sets);
    assert_eq!(own.model.as_deref(), Some("own"));
    assert_eq!(
        own.resources,
        Resources {
            memory_mb: 64,
            pids: 512,
            cpu_weight: 30
        }
    );
    // Without defaults: the option table's own.
    let sha = s.commit("carol", &[("agent.nix", bare)]);
    let plain = s.build("carol", 4, &sha).unwrap().config;
    assert_eq!(plain.model, None);
    assert_eq!(plain.resources.memory_mb, 2048);
}
