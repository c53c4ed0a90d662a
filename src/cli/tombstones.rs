//! `hive destroy`, `tombstones`, `restore` and `purge`.

use std::process::ExitCode;

use broker::paths::StateDir;
use proto::{Destroyed, Purged, Restored, Tombstone};
use serde_json::json;

use super::client::encode;
use super::{output, post_action_of, print_listing_of};

#[derive(clap::Args)]
pub struct DestroyArgs {
    /// The agent to destroy (its files go to a tombstone)
    name: String,
    /// Delete its files at once instead of keeping a tombstone
    #[arg(long)]
    purge: bool,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct ListArgs {
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct TombstoneArgs {
    /// The tombstone, as `hive tombstones` lists it (<agent>-<YYYYMMDDTHHMMSSZ>)
    tombstone: String,
}

pub fn destroy(state: &StateDir, args: DestroyArgs) -> anyhow::Result<ExitCode> {
    let path = format!("/api/v1/agents/{}/destroy", encode(&args.name));
    let body = json!({"purge": args.purge});
    post_action_of(state, &path, &body, args.json, |d: &Destroyed| {
        if args.purge {
            outln!(
                "destroyed {} and deleted its files",
                output::one_line(&args.name)
            );
        } else {
            outln!(
                "destroyed {}; its files are kept in tombstone {} (`hive restore` brings it back)",
                output::one_line(&args.name),
                output::one_line(&d.tombstone)
            );
        }
    })
}

pub fn tombstones(state: &StateDir, args: ListArgs) -> anyhow::Result<ExitCode> {
    print_listing_of(
        state,
        "/api/v1/tombstones",
        args.json,
        "no tombstones",
        &["TOMBSTONE", "AGENT"],
        |t: &Tombstone| vec![t.id.clone(), t.agent.clone()],
    )
}

pub fn restore(state: &StateDir, args: TombstoneArgs) -> anyhow::Result<ExitCode> {
    let path = format!("/api/v1/tombstones/{}/restore", encode(&args.tombstone));
    post_action_of(state, &path, &json!({}), false, |r: &Restored| {
        outln!("restored {}", output::one_line(&r.agent));
    })
}

pub fn purge(state: &StateDir, args: TombstoneArgs) -> anyhow::Result<ExitCode> {
    let path = format!("/api/v1/tombstones/{}/purge", encode(&args.tombstone));
    post_action_of(state, &path, &json!({}), false, |p: &Purged| {
        outln!("purged {}", output::one_line(&p.purged));
    })
}
