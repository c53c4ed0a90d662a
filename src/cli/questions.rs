//! `hive questions`, `hive answer` and `hive dead-letters`: what waits on the operator.

use std::process::ExitCode;

use broker::paths::StateDir;
use proto::{DeadLetter, Dropped, Message, Question};
use serde_json::json;

use super::{get_answer, output, post_action_of};

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
    let Some(items) = get_answer::<Vec<Question>>(state, path, args.json)? else {
        return Ok(ExitCode::SUCCESS);
    };
    if items.is_empty() {
        outln!("no open questions");
        return Ok(ExitCode::SUCCESS);
    }
    for q in items {
        outln!(
            "#{} from {} [{}] asked {}, expires {}",
            q.id,
            output::one_line(&q.asker),
            output::one_line(&q.status),
            output::time_ms(q.asked_at),
            output::time_ms(q.expires_at),
        );
        outln!("{}", output::indented(&q.question, "    "));
        if !q.options.is_empty() {
            let names: Vec<String> = q
                .options
                .iter()
                .map(|o| output::one_line(o).into_owned())
                .collect();
            let how = if q.multi {
                "choose one or more"
            } else {
                "choose one"
            };
            outln!("    options ({how}): {}", names.join(" | "));
        }
        if let Some(answer) = &q.answer {
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
    post_action_of(state, &path, &body, args.json, |q: &Question| {
        outln!(
            "answered question #{} from {}: {}",
            q.id,
            output::one_line(&q.asker),
            output::one_line(q.answer.as_deref().unwrap_or_default())
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
            post_action_of(
                state,
                &path,
                &json!({"to": to}),
                args.json,
                |m: &Message| {
                    outln!(
                        "message {id} redirected: now message {} to {}",
                        m.id,
                        output::one_line(&m.to)
                    );
                },
            )
        }
        Some(DeadLetterAction::Drop { id }) => {
            let path = format!("/api/v1/dead-letters/{id}/drop");
            post_action_of(state, &path, &json!({}), args.json, |d: &Dropped| {
                outln!("message {} dropped", d.dropped);
            })
        }
        None => {
            let path = "/api/v1/dead-letters";
            let Some(items) = get_answer::<Vec<DeadLetter>>(state, path, args.json)? else {
                return Ok(ExitCode::SUCCESS);
            };
            if items.is_empty() {
                outln!("no dead letters");
                return Ok(ExitCode::SUCCESS);
            }
            for d in items {
                outln!(
                    "#{} from {} to {} ({}), queued {} ({} s ago)",
                    d.message.id,
                    output::one_line(&d.message.from),
                    output::one_line(&d.message.to),
                    output::one_line(&d.why),
                    output::time_ms(d.message.sent_at),
                    d.waited_seconds
                );
                outln!("{}", output::indented(&d.message.body, "    "));
            }
            outln!("redirect one with `hive dead-letters redirect ID --to NAME`, or drop it");
            Ok(ExitCode::SUCCESS)
        }
    }
}
