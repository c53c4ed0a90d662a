//! The one name validator of the hive. Every entry point (admin API, MCP, CLI, paths) parses names
//! here; nothing else decides what a valid agent name is, and no path is ever built from a string that
//! did not pass through [`AgentName::parse`].

use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest agent name, in characters.
pub const MAX_NAME_LEN: usize = 32;

/// Names that can never be agents: they mean something else to the hive.
pub const RESERVED: &[&str] = &["operator", "system", "hive", "all", "root", "admin", "api"];

/// The one manager agent; it exists from the first start.
pub const MANAGER: &str = "manager";

/// Why a name was refused. The `Display` text is what a user reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error(
        "invalid agent name '{0}': use 1–32 of a-z, 0-9 and '-', starting with a letter and not ending with '-'"
    )]
    Malformed(String),
    #[error("'{0}' is reserved and cannot be an agent name (reserved: {list})", list = RESERVED.join(", "))]
    Reserved(String),
}

/// A validated agent name: 1–32 of `a-z 0-9 -`, starting with a letter, not ending with `-`,
/// and not one of [`RESERVED`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct AgentName(String);

impl AgentName {
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        if !is_well_formed(raw) {
            return Err(NameError::Malformed(shorten(raw)));
        }
        if RESERVED.contains(&raw) {
            return Err(NameError::Reserved(raw.to_owned()));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The manager's name.
    pub fn manager() -> Self {
        Self(MANAGER.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_manager(&self) -> bool {
        self.0 == MANAGER
    }
}

impl<'de> Deserialize<'de> for AgentName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for AgentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for AgentName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

fn is_well_formed(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_NAME_LEN
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1] != b'-'
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// Error messages echo the name back; a 100 MB "name" must not become a 100 MB error.
fn shorten(raw: &str) -> String {
    const SHOWN: usize = 40;
    match raw.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}…", &raw[..cut]),
        None => raw.to_owned(),
    }
}

/// Who may stand in the `to` of a send: an agent, the operator's inbox, or everyone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Recipient {
    Agent(AgentName),
    Operator,
    /// `*`: one copy to every other agent.
    Broadcast,
}

impl Recipient {
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        match raw {
            "operator" => Ok(Self::Operator),
            "*" => Ok(Self::Broadcast),
            other => AgentName::parse(other).map(Self::Agent),
        }
    }
}

/// Who a message is from. Agents are named by their socket; the operator by the admin socket or the
/// dashboard session; `system` by the broker itself (helper events, reminders, approvals).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Sender {
    Agent(AgentName),
    Operator,
    System,
}

impl Sender {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Agent(name) => name.as_str(),
            Self::Operator => "operator",
            Self::System => "system",
        }
    }
}

/// An inbox owner: the key of the mailbox's queues and notifiers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Inbox {
    Agent(AgentName),
    Operator,
}

impl Inbox {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Agent(name) => name.as_str(),
            Self::Operator => "operator",
        }
    }
}

impl fmt::Display for Inbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names() {
        for ok in ["a", "alice", "bob-2", "x1", "manager", &"a".repeat(32)] {
            assert_eq!(AgentName::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_everything_else_with_a_reason() {
        for bad in [
            "",
            "../x",
            "a/b",
            "..",
            "Manager",
            "1abc",
            "-a",
            "a-",
            "a_b",
            "a b",
            "ä",
            "a\0",
            &"a".repeat(33),
            &"a".repeat(300),
        ] {
            let err = AgentName::parse(bad).unwrap_err();
            assert!(
                err.to_string().contains("invalid agent name"),
                "{bad:?}: {err}"
            );
        }
        for reserved in RESERVED {
            let err = AgentName::parse(reserved).unwrap_err();
            assert!(err.to_string().contains("reserved"), "{err}");
        }
    }

    #[test]
    fn long_names_are_shortened_in_errors() {
        let err = AgentName::parse(&"x".repeat(100_000))
            .unwrap_err()
            .to_string();
        assert!(err.len() < 300, "{}", err.len());
    }

    #[test]
    fn recipients_add_operator_and_broadcast() {
        assert_eq!(Recipient::parse("operator").unwrap(), Recipient::Operator);
        assert_eq!(Recipient::parse("*").unwrap(), Recipient::Broadcast);
        assert!(matches!(
            Recipient::parse("bob").unwrap(),
            Recipient::Agent(_)
        ));
        assert!(Recipient::parse("system").is_err());
        assert!(Recipient::parse("**").is_err());
    }
}
