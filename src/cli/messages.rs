//! `hive send`, `hive inbox`, `hive messages` and `hive message`.

use std::process::ExitCode;

use broker::paths::StateDir;
use proto::message::Posted;
use proto::{Event, Lagged, Message, MessageState, StreamEvent};
use serde_json::{Value, json};

use super::client::{AdminClient, encode};
use super::{output, read_answer};

#[derive(clap::Args)]
pub struct SendArgs {
    /// An agent's name, or `*` for every agent
    to: String,
    /// The message; `-` reads it from standard input
    body: String,
    /// The id of the message this answers
    #[arg(long, value_name = "ID")]
    in_reply_to: Option<i64>,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct InboxArgs {
    /// Keep running and print each new message as it arrives (marking it read)
    #[arg(long, short)]
    follow: bool,
    /// How many recent messages to show
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Print JSON (one object per line with --follow)
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct MessagesArgs {
    /// Only messages from or to this agent (or `operator`)
    #[arg(long, value_name = "NAME")]
    agent: Option<String>,
    /// Keep running and print messages and deliveries as they happen
    #[arg(long, short)]
    follow: bool,
    /// How many recent messages to show
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Print JSON (one object per line with --follow)
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct MessageArgs {
    /// The message's id
    id: i64,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

pub fn send(state: &StateDir, args: SendArgs) -> anyhow::Result<ExitCode> {
    let body = if args.body == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        args.body
    };
    let mut request = json!({"to": args.to, "body": body});
    if let Some(id) = args.in_reply_to {
        request["in_reply_to"] = json!(id);
    }
    super::post_action_of(
        state,
        "/api/v1/messages",
        &request,
        args.json,
        |posted: &Posted| {
            let ids: Vec<String> = posted.ids.iter().map(|id| format!("#{id}")).collect();
            outln!("sent {}", ids.join(", "));
        },
    )
}

/// What `/api/v1/inbox/recv` answers.
#[derive(serde::Deserialize)]
struct Received {
    messages: Value,
}

/// Prints a list of messages the hive answered to `path`: each as a JSON line as it came, or
/// read as a [`Message`] and shown as one line.
fn print_messages(path: &str, list: &Value, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        for m in list.as_array().into_iter().flatten() {
            output::json_line(m);
        }
        return Ok(());
    }
    let messages: Vec<Message> = read_answer(path, list)?;
    for m in &messages {
        outln!("{}", output::message_line(m));
    }
    Ok(())
}

pub fn inbox(state: &StateDir, args: InboxArgs) -> anyhow::Result<ExitCode> {
    let client = AdminClient::new(state);
    super::client_runtime()?.block_on(async {
        if !args.follow {
            let path = format!("/api/v1/inbox?limit={}", args.limit);
            let list = client.get(&path).await?;
            if args.json {
                output::json(&list);
            } else if list.as_array().is_some_and(|l| l.is_empty()) {
                outln!("the operator's inbox is empty");
            } else {
                print_messages(&path, &list, false)?;
            }
            return Ok(ExitCode::SUCCESS);
        }
        // Long-poll: each call waits until a message arrives (or 3 minutes pass), never polling.
        let path = "/api/v1/inbox/recv";
        loop {
            let got = client
                .post(path, &json!({"wait_seconds": 180, "max": 32}))
                .await?;
            let got: Received = read_answer(path, &got)?;
            print_messages(path, &got.messages, args.json)?;
        }
    })
}

/// One message with its receipt, each time on its own line.
pub fn message(state: &StateDir, args: MessageArgs) -> anyhow::Result<ExitCode> {
    let path = format!("/api/v1/messages/{}", args.id);
    let answer = super::client_runtime()?.block_on(AdminClient::new(state).get(&path))?;
    if args.json {
        output::json(&answer);
        return Ok(ExitCode::SUCCESS);
    }
    let m: Message = read_answer(&path, &answer)?;
    outln!(
        "#{}  {} → {}",
        m.id,
        output::one_line(&m.from),
        output::one_line(&m.to)
    );
    if let Some(r) = m.in_reply_to {
        outln!("in reply to #{r}");
    }
    outln!("state:      {}", m.state);
    outln!("queued:     {}", output::time_ms(m.sent_at));
    if let (Some(at), Some(turn)) = (m.leased_at, m.turn) {
        outln!(
            "leased:     {}  {}  to turn {turn}",
            output::time_ms(at),
            output::after(at - m.sent_at)
        );
    }
    if let Some(at) = m
        .delivered_at
        .filter(|_| m.state == MessageState::Delivered)
    {
        outln!(
            "delivered:  {}  {}",
            output::time_ms(at),
            output::after(at - m.sent_at)
        );
    }
    if m.redelivered {
        outln!("(an earlier take of it was given back)");
    }
    outln!();
    for line in m.body.lines() {
        outln!("{}", output::one_line(line));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn messages(state: &StateDir, args: MessagesArgs) -> anyhow::Result<ExitCode> {
    let client = AdminClient::new(state);
    let mut query = format!("/api/v1/messages?limit={}", args.limit);
    if let Some(agent) = &args.agent {
        query.push_str(&format!("&agent={}", encode(agent)));
    }
    super::client_runtime()?.block_on(async {
        if !args.follow {
            let list = client.get(&query).await?;
            if args.json {
                output::json(&list);
            } else {
                print_messages(&query, &list, false)?;
            }
            return Ok(ExitCode::SUCCESS);
        }
        client
            .follow(&format!("{query}&follow=1"), |followed| {
                if args.json {
                    output::json_line(&followed.json);
                    return;
                }
                match followed.event {
                    StreamEvent::Bus(Event::MessageSent { message }) => {
                        outln!("{}", output::message_line(&message))
                    }
                    StreamEvent::Bus(Event::MessageDelivered { ids, to }) => {
                        let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
                        outln!(
                            "        delivered to {}: [{}]",
                            output::one_line(&to),
                            ids.join(",")
                        )
                    }
                    StreamEvent::Lagged(Lagged { missed }) => {
                        outln!("        (missed {missed} events; run without --follow to catch up)")
                    }
                    // The stream carries every bus event; this listing shows the messages'.
                    _ => {}
                }
            })
            .await?;
        output::emit_err("hive: the hive stopped");
        Ok(ExitCode::SUCCESS)
    })
}
