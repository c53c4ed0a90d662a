//! Operator commands: a message from `operator` whose body is `/word …` (one slash, a lower-case
//! word) is run by the harness instead of being shown to the model. It owns the parsing and the
//! `<state>/model` file; the turn loop (`turn.rs`) runs the commands. Anything else — another
//! sender, `/etc/hosts is broken`, plain text — is an ordinary message.

use std::path::{Path, PathBuf};

use proto::message::Message;

/// What the operator asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `/model NAME` sets the model (kept in `<state>/model`); `/model default` forgets it;
    /// `/model` alone says which is in use.
    Model(Option<String>),
    /// `/compact`: claude's own compaction of the session, as a turn of its own.
    Compact,
    /// `/new-session`: forget the session; the next message starts a fresh conversation.
    NewSession,
    /// `/cancel`: stop the running turn (taken while a turn runs; at the head of a turn nothing
    /// runs).
    Cancel,
    /// A `/word` the harness does not know: answered with the list.
    Unknown(String),
}

/// The answer to an unknown command.
pub const KNOWN: &str =
    "known commands: /model NAME (or /model default), /compact, /new-session, /cancel";

/// The command in `m`, if it is one.
pub fn parse(m: &Message) -> Option<Command> {
    if m.from != "operator" {
        return None;
    }
    let text = m.body.trim();
    let rest = text.strip_prefix('/')?;
    let mut words = rest.split_whitespace();
    let word = words.next()?;
    if !word.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
        return None;
    }
    let args: Vec<&str> = words.collect();
    Some(match (word, args.as_slice()) {
        ("model", []) => Command::Model(None),
        ("model", [name]) => Command::Model(Some((*name).to_owned())),
        ("compact", []) => Command::Compact,
        ("new-session", []) => Command::NewSession,
        ("cancel", []) => Command::Cancel,
        _ => Command::Unknown(format!("/{word}")),
    })
}

/// A model name the CLI is given (the one rule, in `proto`: never a flag).
pub use proto::agent_config::check_model_name as check_model;

fn model_file(state_dir: &Path) -> PathBuf {
    state_dir.join("model")
}

/// The model `/model` set, if any (a file that does not hold a model name is ignored).
pub fn stored_model(state_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(model_file(state_dir)).ok()?;
    let name = text.trim();
    check_model(name).ok().map(|()| name.to_owned())
}

/// Keeps `model` in `<state>/model` (through a temporary file), or removes the file for `None`.
pub fn store_model(state_dir: &Path, model: Option<&str>) -> std::io::Result<()> {
    let file = model_file(state_dir);
    match model {
        Some(name) => {
            let tmp = state_dir.join("model.tmp");
            std::fs::write(&tmp, name)?;
            std::fs::rename(&tmp, &file)
        }
        None => match std::fs::remove_file(&file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(from: &str, body: &str) -> Message {
        crate::prompt::leased(1, from, body, false)
    }

    #[test]
    fn only_the_operators_slash_words_are_commands() {
        assert_eq!(
            parse(&msg("operator", " /model claude-x\n")),
            Some(Command::Model(Some("claude-x".into())))
        );
        assert_eq!(
            parse(&msg("operator", "/model")),
            Some(Command::Model(None))
        );
        assert_eq!(parse(&msg("operator", "/cancel")), Some(Command::Cancel));
        assert_eq!(parse(&msg("operator", "/compact")), Some(Command::Compact));
        assert_eq!(
            parse(&msg("operator", "/new-session")),
            Some(Command::NewSession)
        );
        assert_eq!(
            parse(&msg("operator", "/frobnicate now")),
            Some(Command::Unknown("/frobnicate".into()))
        );
        assert_eq!(parse(&msg("bob", "/cancel")), None);
        assert_eq!(parse(&msg("operator", "/etc/hosts is broken")), None);
        assert_eq!(parse(&msg("operator", "please /cancel")), None);
    }

    #[test]
    fn a_model_name_is_checked_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_model("claude-sonnet-4-5").is_ok());
        assert!(check_model("a b").is_err() && check_model("").is_err());
        assert!(check_model("--evil").is_err());
        assert_eq!(stored_model(dir.path()), None);
        store_model(dir.path(), Some("claude-x")).unwrap();
        assert_eq!(stored_model(dir.path()).as_deref(), Some("claude-x"));
        std::fs::write(dir.path().join("model"), "--evil flag").unwrap();
        assert_eq!(stored_model(dir.path()), None);
        store_model(dir.path(), None).unwrap();
        store_model(dir.path(), None).unwrap();
        assert!(!dir.path().join("model").exists());
    }
}
