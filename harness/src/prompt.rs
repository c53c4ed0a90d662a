//! The wake prompt: what the model reads when a message starts a turn. It owns only the wording;
//! the message itself is hostile text and is quoted, never interpreted.

use proto::tools::LeasedTurn;

/// The text of the user line that starts a turn for `turn`.
pub fn wake(turn: &LeasedTurn) -> String {
    let m = &turn.message;
    let mut text = String::new();
    if m.redelivered {
        text.push_str(
            "Note: this message was delivered before (redelivered): an earlier turn on it did not \
             finish, so you may already have acted on part of it. Check before repeating an action.\n\n",
        );
    }
    text.push_str(&format!("New message {} from {}", m.id, m.from));
    if let Some(r) = m.in_reply_to {
        text.push_str(&format!(" (in reply to message {r})"));
    }
    text.push_str(":\n\n<message>\n");
    text.push_str(&m.body);
    text.push_str("\n</message>\n\n");
    text.push_str(&format!(
        "To answer, call the `send` tool (mcp__hive__send) with to = \"{}\" and in_reply_to = {}. \
         Text you write without the tool reaches no one.",
        m.from, m.id
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::tools::LeasedMessage;

    fn turn(redelivered: bool) -> LeasedTurn {
        LeasedTurn {
            turn: 3,
            message: LeasedMessage {
                id: 7,
                from: "bob".into(),
                body: "hi".into(),
                in_reply_to: None,
                redelivered,
            },
        }
    }

    #[test]
    fn the_prompt_names_the_sender_and_the_redelivery() {
        let p = wake(&turn(false));
        assert!(p.contains("from bob") && p.contains("hi") && p.contains("mcp__hive__send"));
        assert!(!p.contains("redelivered"), "{p}");
        assert!(wake(&turn(true)).contains("delivered before (redelivered)"));
    }
}
