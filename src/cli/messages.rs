//! `hive send`, `hive inbox` and `hive messages`.

use std::process::ExitCode;

use broker::paths::StateDir;
use serde_json::{Value, json};

use super::client::{AdminClient, encode};
use super::output;

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
    let answer = super::client_runtime()?
        .block_on(AdminClient::new(state).post("/api/v1/messages", &request))?;
    if args.json {
        output::json(&answer);
    } else {
        let ids: Vec<String> = answer["ids"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|id| format!("#{id}"))
            .collect();
        outln!("sent {}", ids.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

fn print_messages(list: &Value, as_json: bool) {
    for m in list.as_array().into_iter().flatten() {
        if as_json {
            output::json_line(m);
        } else {
            outln!("{}", output::message_line(m));
        }
    }
}

pub fn inbox(state: &StateDir, args: InboxArgs) -> anyhow::Result<ExitCode> {
    let client = AdminClient::new(state);
    super::client_runtime()?.block_on(async {
        if !args.follow {
            let list = client
                .get(&format!("/api/v1/inbox?limit={}", args.limit))
                .await?;
            if args.json {
                output::json(&list);
            } else if list.as_array().is_none_or(|l| l.is_empty()) {
                outln!("the operator's inbox is empty");
            } else {
                print_messages(&list, false);
            }
            return Ok(ExitCode::SUCCESS);
        }
        // Long-poll: each call waits until a message arrives (or 3 minutes pass), never polling.
        loop {
            let got = client
                .post(
                    "/api/v1/inbox/recv",
                    &json!({"wait_seconds": 180, "max": 32}),
                )
                .await?;
            print_messages(&got["messages"], args.json);
        }
    })
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
                print_messages(&list, false);
            }
            return Ok(ExitCode::SUCCESS);
        }
        client
            .follow(&format!("{query}&follow=1"), |name, event| {
                if args.json {
                    output::json_line(&event);
                    return;
                }
                match name {
                    "message_sent" => outln!("{}", output::message_line(&event["message"])),
                    "message_delivered" => outln!(
                        "        delivered to {}: {}",
                        output::field(&event["to"], "?"),
                        event["ids"]
                    ),
                    "lagged" => outln!(
                        "        (missed {} events; run without --follow to catch up)",
                        event["missed"]
                    ),
                    _ => {}
                }
            })
            .await?;
        output::emit_err("hive: the hive stopped");
        Ok(ExitCode::SUCCESS)
    })
}
