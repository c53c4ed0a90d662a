//! `hive questions`, `hive answer` and `hive dead-letters`: what waits on the operator.

use std::process::ExitCode;

use broker::paths::StateDir;
use serde_json::json;

use super::client::AdminClient;
use super::{output, post_action};

#[derive(clap::Args)]
pub struct QuestionsArgs {
    /// Also show answered and expired questions
    #[arg(long)]
    all: bool,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct AnswerArgs {
    /// The question's id (see `hive questions`)
    id: i64,
    /// The answer: free text, or one of the question's options
    #[arg(required_unless_present = "choose", conflicts_with = "choose")]
    text: Option<String>,
    /// Pick an option (repeat for a question that takes several)
    #[arg(long, value_name = "OPTION")]
    choose: Vec<String>,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

pub fn questions(state: &StateDir, args: QuestionsArgs) -> anyhow::Result<ExitCode> {
    let path = if args.all {
        "/api/v1/questions?all=1"
    } else {
        "/api/v1/questions"
    };
    let list = super::client_runtime()?.block_on(AdminClient::new(state).get(path))?;
    if args.json {
        output::json(&list);
        return Ok(ExitCode::SUCCESS);
    }
    let items = list.as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        outln!("no open questions");
        return Ok(ExitCode::SUCCESS);
    }
    for q in items {
        outln!(
            "#{} from {} [{}] asked {}, expires {}",
            q["id"],
            output::field(&q["asker"], "?"),
            output::field(&q["status"], "?"),
            output::time(&q["asked_at"]),
            output::time(&q["expires_at"]),
        );
        outln!(
            "{}",
            output::indented(q["question"].as_str().unwrap_or_default(), "    ")
        );
        if let Some(options) = q["options"].as_array().filter(|o| !o.is_empty()) {
            let names: Vec<String> = options
                .iter()
                .filter_map(|o| o.as_str())
                .map(|o| output::one_line(o).into_owned())
                .collect();
            let how = if q["multi"] == true {
                "choose one or more"
            } else {
                "choose one"
            };
            outln!("    options ({how}): {}", names.join(" | "));
        }
        if let Some(answer) = q["answer"].as_str() {
            outln!("    answer: {}", output::one_line(answer));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn answer(state: &StateDir, args: AnswerArgs) -> anyhow::Result<ExitCode> {
    let body = match args.text {
        Some(text) => json!({"text": text}),
        None => json!({"choices": args.choose}),
    };
    let path = format!("/api/v1/questions/{}/answer", args.id);
    post_action(state, &path, &body, args.json, |q| {
        outln!(
            "answered question #{} from {}: {}",
            q["id"],
            output::field(&q["asker"], "?"),
            output::field(&q["answer"], "")
        );
    })
}

#[derive(clap::Args)]
pub struct DeadLettersArgs {
    #[command(subcommand)]
    action: Option<DeadLetterAction>,
    /// Print JSON
    #[arg(long, global = true)]
    json: bool,
}

#[derive(clap::Subcommand)]
enum DeadLetterAction {
    /// Send a dead letter to another inbox instead (an agent, or `operator`)
    Redirect {
        /// The message's id (see `hive dead-letters`)
        id: i64,
        /// Where it goes now
        #[arg(long)]
        to: String,
    },
    /// Drop a dead letter: it counts as delivered, unread
    Drop {
        /// The message's id (see `hive dead-letters`)
        id: i64,
    },
}

pub fn dead_letters(state: &StateDir, args: DeadLettersArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        Some(DeadLetterAction::Redirect { id, to }) => {
            let path = format!("/api/v1/dead-letters/{id}/redirect");
            post_action(state, &path, &json!({"to": to}), args.json, |m| {
                outln!(
                    "message {id} redirected: now message {} to {}",
                    m["id"],
                    output::field(&m["to"], "?")
                );
            })
        }
        Some(DeadLetterAction::Drop { id }) => {
            let path = format!("/api/v1/dead-letters/{id}/drop");
            post_action(state, &path, &json!({}), args.json, |_| {
                outln!("message {id} dropped");
            })
        }
        None => {
            let list = super::client_runtime()?
                .block_on(AdminClient::new(state).get("/api/v1/dead-letters"))?;
            if args.json {
                output::json(&list);
                return Ok(ExitCode::SUCCESS);
            }
            let items = list.as_array().cloned().unwrap_or_default();
            if items.is_empty() {
                outln!("no dead letters");
                return Ok(ExitCode::SUCCESS);
            }
            for d in items {
                outln!(
                    "#{} from {} to {} ({}), queued {} ({} s ago)",
                    d["id"],
                    output::field(&d["from"], "?"),
                    output::field(&d["to"], "?"),
                    output::field(&d["why"], "?"),
                    output::time(&d["sent_at"]),
                    d["waited_seconds"]
                );
                outln!(
                    "{}",
                    output::indented(d["body"].as_str().unwrap_or_default(), "    ")
                );
            }
            outln!("redirect one with `hive dead-letters redirect ID --to NAME`, or drop it");
            Ok(ExitCode::SUCCESS)
        }
    }
}
