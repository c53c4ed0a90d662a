//! `hive check-config`.

use std::path::PathBuf;
use std::process::ExitCode;

use broker::config::Config;
use broker::paths::StateDir;

#[derive(clap::Args)]
pub struct CheckConfigArgs {
    /// The file to check [default: hive.toml in the state dir]
    file: Option<PathBuf>,
}

pub fn run(state: &StateDir, args: CheckConfigArgs) -> anyhow::Result<ExitCode> {
    let path = args.file.unwrap_or_else(|| state.config_file());
    match Config::load(&path, false) {
        Ok(config) => {
            outln!("{}: ok", path.display());
            outln!(
                "store.synchronous = {}, mailbox.max_body_bytes = {}, mailbox.retention_days = {}",
                config.store.synchronous,
                config.mailbox.max_body_bytes,
                config.mailbox.retention_days
            );
            outln!(
                "mailbox.max_queued_per_inbox = {}, mailbox.max_open_questions_per_agent = {}",
                config.mailbox.max_queued_per_inbox,
                config.mailbox.max_open_questions_per_agent
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            super::output::emit_err(&format!("hive: {e}"));
            Ok(ExitCode::from(1))
        }
    }
}
